"""The one Definitions: the asset graph, resources, jobs and schedules.

Where things are comes from the environment, read here (never at engine import):
    TRUEUP_HOME        working folder: demo landscape, warehouse, reports, state (default .trueup)
    TRUEUP_CONFIG_DIR  systems.yaml, rules.yaml, trueup.yaml (default: the repository's config/)
    TRUEUP_ERP_URL     SQLAlchemy URL of the ERP (secret; default: the demo's SQLite file)
    TRUEUP_CRM_URL / TRUEUP_CRM_TOKEN   the CRM's API (secret; default: the CRM sandbox)
    TRUEUP_WMS_DIR     the WMS's file-drop folder (default: the demo's), when the WMS is `kind: files`
    TRUEUP_WMS_URL     SQLAlchemy URL of the WMS (secret; default: the demo's wms.sqlite), when it is `kind: sql`
    TRUEUP_STATE_URL   SQLAlchemy URL of the state store (default: SQLite under TRUEUP_HOME)
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg

from assets.extract import extract_asset
from assets.reconcile import domain_assets, writeback_asset, writeback_targets
from assets.report import report_asset
from checks.freshness import freshness_checks
from assets.sync import (
    WINDOW_TAG, changes_asset, nightly_watermarks_asset, sync_partitions, sync_plan_asset, sync_watermarks_asset,
    sync_writeback_asset,
)
from pipelines.replay import replay_job
from resources import (
    CrmSandboxResource, FileDropResource, RestSystemResource, SqlSystemResource, StateStoreResource,
    TrueupSettings, WarehouseIOManager, WmsSandboxResource,
)
from trueup.config import Config

REPO_CONFIG = Path(__file__).resolve().parent.parent / "config"
DOMAINS = ["customer", "product", "price", "inventory"]


def _secret_or(env: str, default: str) -> str | dg.EnvVar:
    """The environment variable as a Dagster EnvVar (resolved at run time, never shown) when it
    is set, else the demo default."""
    return dg.EnvVar(env) if os.environ.get(env) else default


def system_resources(home: Path, config: Config, **sandbox_kw) -> dict[str, dg.ConfigurableResource]:
    demo = home / "demo"
    res: dict[str, dg.ConfigurableResource] = {}
    for name, system in config.systems.systems.items():
        env = f"TRUEUP_{name.upper()}"
        if system.kind == "sql":
            # any SQL system (the ERP, a WMS with its own database): TRUEUP_<NAME>_URL, else the
            # demo's SQLite file of that name
            res[name] = SqlSystemResource(system=name, url=_secret_or(f"{env}_URL", f"sqlite:///{demo / f'{name}.sqlite'}"))
        elif system.kind == "rest":
            if os.environ.get(f"{env}_URL"):
                res[name] = RestSystemResource(system=name, base_url=dg.EnvVar(f"{env}_URL"),
                                               token=dg.EnvVar(f"{env}_TOKEN"))
            else:
                res[name] = CrmSandboxResource(system=name, db_path=str(demo / "crm" / "crm.sqlite"),
                                               **sandbox_kw.get(name, {}))
        else:
            if os.environ.get(f"{env}_DIR"):
                res[name] = FileDropResource(system=name, root=os.environ[f"{env}_DIR"])
            else:
                res[name] = WmsSandboxResource(system=name, root=str(demo / "wms"))
    return res


def executor(name: str | None = None) -> dg.ExecutorDefinition:
    """The nightly job's executor, by name (env `TRUEUP_EXECUTOR`): `in_process` (default: one
    process, no per-step start-up), `multiprocess` (a process per step, every core), `celery`
    (steps as Celery tasks on workers anywhere; broker and backend from the run config's
    `execution.config`, see docs/scaling.md)."""
    name = name or os.environ.get("TRUEUP_EXECUTOR", "in_process")
    if name == "in_process":
        return dg.in_process_executor
    if name == "multiprocess":
        return dg.multiprocess_executor
    if name == "celery":
        from dagster_celery import celery_executor

        return celery_executor
    raise ValueError(f"TRUEUP_EXECUTOR: unknown executor {name!r} (in_process, multiprocess, celery)")


def build_definitions(home: str | Path | None = None, config_dir: str | Path | None = None,
                      executor_name: str | None = None, **sandbox_kw) -> dg.Definitions:
    home = Path(home or os.environ.get("TRUEUP_HOME", ".trueup")).resolve()
    config_dir = Path(config_dir or os.environ.get("TRUEUP_CONFIG_DIR", REPO_CONFIG))
    config = Config.load(config_dir)

    assets: list = []
    writebacks: list[dg.AssetKey] = []
    for domain in DOMAINS:
        systems = config.systems.systems_with(domain)
        assets += [extract_asset(s, domain, config.systems.systems[s].kind) for s in systems]
        assets += domain_assets(domain, systems, config)
        for target in writeback_targets(domain, config):
            wb = writeback_asset(domain, target)
            assets.append(wb)
            writebacks.append(wb.key)
    assets.append(report_asset(DOMAINS, writebacks))
    assets.append(nightly_watermarks_asset())

    # incremental sync: the same engine over what changed, partitioned by day
    partitions = sync_partitions(config)
    sync_writebacks: list[dg.AssetKey] = []
    for domain in DOMAINS:
        systems = config.systems.systems_with(domain)
        assets += [changes_asset(domain, systems, partitions), sync_plan_asset(domain, systems, partitions, config)]
        for target in writeback_targets(domain, config):
            wb = sync_writeback_asset(domain, target, partitions)
            assets.append(wb)
            sync_writebacks.append(wb.key)
    assets.append(sync_watermarks_asset(sync_writebacks, partitions))

    nightly = dg.define_asset_job(
        "nightly_reconciliation",
        selection=dg.AssetSelection.all() - dg.AssetSelection.groups("sync"),
        description="The nightly full true-up: every domain, every system, corrections written back.",
        executor_def=executor(executor_name),
        tags={"trueup/mode": "full"},
    )
    schedule = dg.ScheduleDefinition(
        name="nightly_reconciliation_schedule",
        job=nightly,
        cron_schedule=config.settings.schedule.nightly_cron,
        execution_timezone=config.settings.schedule.timezone,
        default_status=dg.DefaultScheduleStatus.RUNNING,
    )
    incremental = dg.define_asset_job(
        "incremental_sync",
        selection=dg.AssetSelection.groups("sync"),
        partitions_def=partitions,
        description="Reconcile only the records changed since the watermarks (tag trueup/window=watermark), "
                    "or, as a backfill, those changed on the selected days. The nightly run stays the safety net.",
        executor_def=dg.in_process_executor,
        tags={"trueup/mode": "incremental"},
    )

    @dg.schedule(name="incremental_sync_schedule", job=incremental, cron_schedule=config.settings.sync.incremental_cron,
                 execution_timezone=config.settings.schedule.timezone, default_status=dg.DefaultScheduleStatus.STOPPED)
    def incremental_sync_schedule(context: dg.ScheduleEvaluationContext):
        day = context.scheduled_execution_time.astimezone(timezone.utc).strftime("%Y-%m-%d")
        return dg.RunRequest(partition_key=day, tags={WINDOW_TAG: "watermark"})

    sys_res = system_resources(home, config, **sandbox_kw)
    drop_dirs = {n: r.root for n, r in sys_res.items() if isinstance(r, FileDropResource)}

    @dg.sensor(name="wms_drop_sensor", job=incremental, minimum_interval_seconds=60,
               default_status=dg.DefaultSensorStatus.STOPPED,
               description="Starts incremental_sync when a file-drop system exports a new complete drop.")
    def wms_drop_sensor(context: dg.SensorEvaluationContext):
        from trueup.systems.files import FileSystem

        newest = max((d.name for n, root in drop_dirs.items()
                      for d in FileSystem(n, root, config.systems.systems[n]).drops()), default=None)
        if newest is None or newest == context.cursor:
            return dg.SkipReason("no new drop")
        context.update_cursor(newest)
        day = datetime.now(timezone.utc).strftime("%Y-%m-%d")
        return dg.RunRequest(run_key=f"drop-{newest}", partition_key=day,
                             tags={WINDOW_TAG: "watermark", "trueup/trigger": f"drop {newest}"})

    resources = {
        "trueup": TrueupSettings(config_dir=str(config_dir), home=str(home)),
        "state": StateStoreResource(url=_secret_or("TRUEUP_STATE_URL", f"sqlite:///{home / 'state.db'}")),
        "io_manager": WarehouseIOManager(root=str(home / "warehouse")),
        **sys_res,
        # the replay job's figures: a dict read back in the same process, also in its metadata
        "figures_io_manager": dg.InMemoryIOManager(),
    }
    replay = replay_job(DOMAINS, sorted(config.systems.systems))
    return dg.Definitions(assets=assets, asset_checks=freshness_checks(config), jobs=[nightly, incremental, replay],
                          schedules=[schedule, incremental_sync_schedule], sensors=[wms_drop_sensor],
                          resources=resources)


def nightly_job() -> dg.JobDefinition:
    """The nightly job, rebuilt from the environment: what `dg.reconstructable` points at so a
    step can run in another process or on another machine (multiprocess, Celery workers)."""
    return build_definitions().resolve_job_def("nightly_reconciliation")


def nightly_job_for(home: str, executor_name: str, config_dir: str | None = None) -> dg.JobDefinition:
    """The nightly job of one trueup home, config and executor: the CLI's reconstructable target.
    Its arguments travel with the job to every process that runs a step of it, and Dagster keys
    the rebuilt job on them, so a process that runs several homes (a test session) rebuilds each."""
    return build_definitions(home=home, config_dir=config_dir,
                             executor_name=executor_name).resolve_job_def("nightly_reconciliation")


defs = build_definitions()
