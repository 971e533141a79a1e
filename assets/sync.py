"""Incremental sync assets (group `sync`), partitioned by day: per domain, the records changed ->
the plan for the golden records they touch -> write-back per system, then the watermarks.

A run reads one of two windows:
- since the watermark (tag `trueup/window=watermark`: the hourly schedule, the WMS drop sensor,
  `trueup sync`), tagged with today's partition; its final step advances the watermarks;
- the days of its partitions (a backfill, one run for a range: BackfillPolicy.single_run), each
  row tagged with its day so a range run leaves one file per day, as day-by-day runs would.
"""


import json
from datetime import datetime, timedelta, timezone

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc

from assets.reconcile import GATE_KEY, gate_plan, report_outcomes, writeback_targets
from checks.asset_checks import gate_spec
from checks.contracts import Severities, row_issues, warm_up
from trueup import incremental, matching, steps
from trueup.crosswalk import CrosswalkStore
from trueup.incremental import PARTITION

WINDOW_TAG = "trueup/window"
GROUP = "sync"
SINGLE_RUN = dg.BackfillPolicy.single_run()


def sync_partitions(config) -> dg.DailyPartitionsDefinition:
    """One partition per day (UTC), up to and including today (the hourly runs' partition)."""
    return dg.DailyPartitionsDefinition(start_date=config.settings.sync.partitions_start.isoformat(),
                                        end_offset=1)


def watermark_mode(context) -> bool:
    return context.run.tags.get(WINDOW_TAG) == "watermark"


def _label(context) -> str:
    """The partition (or range of partitions) a run covers, for side files."""
    r = context.partition_key_range
    return r.start if r.start == r.end else f"{r.start}..{r.end}"


def _is_dry_run(context) -> bool:
    return context.resources.trueup.is_dry_run(context)


def changes_asset(domain: str, systems: list[str], partitions) -> dg.AssetsDefinition:
    @dg.asset(name=f"{domain}_changes", group_name=GROUP, partitions_def=partitions, backfill_policy=SINGLE_RUN,
              required_resource_keys={*systems, "trueup", "state"}, kinds={"duckdb"},
              description=f"The {domain} records each system changed in the run's window (since the "
                          f"watermark, or the partition's days), canonical, deletes as tombstones.")
    def _changes(context: dg.AssetExecutionContext):
        trueup = context.resources.trueup
        store = context.resources.state.store()
        cfg = trueup.config
        clients = {s: getattr(context.resources, s).client(cfg) for s in systems}
        if watermark_mode(context):
            lookback = timedelta(minutes=cfg.settings.sync.lookback_minutes)
            since = {s: store.since(s, domain, lookback) for s in systems}
            until, pk = None, context.partition_key
        else:
            window = context.partition_time_window
            start = window.start.astimezone(timezone.utc)
            since = {s: start - timedelta(microseconds=1) for s in systems}  # the day's first instant included
            until, pk = window.end.astimezone(timezone.utc), None
        warm_up()  # GX's import goes on while the systems answer
        ch = incremental.read_changes(domain, clients, cfg, since, until, pk, datetime.now(timezone.utc))
        if watermark_mode(context):
            for s, hw in ch.high_water.items():
                store.stage_watermark(context.run_id, s, domain, hw)
        # the nightly's contract clauses a changed record answers alone: held here as there
        issues = pa.concat_tables([ch.issues, row_issues(domain, ch.table, cfg, Severities(trueup.contracts_path))])
        store.record_quarantine(context.run_id, issues)
        trueup.warehouse.write(issues, "quarantine", "sync", domain, _label(context))
        context.add_output_metadata({
            "changed_records": ch.table.num_rows,
            "quarantined_records": issues.filter(pc.equal(issues.column("severity"), "error"))
                                         .group_by(["source_system", "source_key"]).aggregate([]).num_rows,
            "tombstones": int(pc.sum(ch.table.column("deleted")).as_py() or 0),
            **{f"rows_read_{s}": n for s, n in ch.read.items()},
            **{f"since_{s}": str(v) for s, v in since.items()},
        })
        return ch.table

    return _changes


def sync_plan_asset(domain: str, systems: list[str], partitions, config) -> dg.AssetsDefinition:
    ins = {"changes": dg.AssetIn(f"{domain}_changes")}
    dep = incremental.DEPENDS_ON.get(domain)
    if dep:
        ins["upstream"] = dg.AssetIn(f"{dep[0]}_changes")
    name = f"{domain}_sync_plan"
    targets = writeback_targets(domain, config)

    @dg.asset(name=name, group_name=GROUP, ins=ins, partitions_def=partitions,
              backfill_policy=SINGLE_RUN, required_resource_keys={*systems, "trueup", "state"},
              check_specs=[gate_spec(name, s) for s in targets],
              description=f"The corrections for the golden {domain} records the changes touch (and what "
                          f"they depend on), the other side read from the systems by key; gated per "
                          f"system like the nightly plan before anything is written.")
    def _plan(context: dg.AssetExecutionContext, changes: pa.Table, **up):
        trueup = context.resources.trueup
        cfg = trueup.config
        wh = trueup.warehouse
        clients = {s: getattr(context.resources, s).client(cfg) for s in systems}
        depends = incremental.depends_table(domain, {dep[0]: up["upstream"]}) if dep else None
        severities = Severities(trueup.contracts_path)
        links, apart = matching.persisted(wh.read("state", "match_links", domain),
                                          wh.read("match_exceptions", domain))
        xw = CrosswalkStore(wh, domain)
        res = incremental.sync_plan(domain, changes, clients, cfg, xw,
                                    issues=wh.read("quarantine", "sync", domain, _label(context)),
                                    depends=depends, links=links, apart=apart,
                                    extracted_at=datetime.now(timezone.utc),
                                    contract=lambda d, records: row_issues(d, records, cfg, severities))
        xw.add(res.crosswalk)
        if res.counterpart_issues is not None:  # the changes' own were recorded by the changes step
            context.resources.state.store().record_quarantine(context.run_id, res.counterpart_issues)
        # the same gate as the nightly plan; a system's records are every record of it the
        # crosswalk knows (a sync run reads only the changed ones)
        plan, blocked, checks = gate_plan(context, domain, res.plan, xw.keys_of(res.plan), cfg,
                                          record_counts=xw.counts())
        f = res.figures
        yield dg.Output(plan, metadata={
            "changes": plan.num_rows, "golden_records_touched": f["golden_records_touched"],
            "records_reconciled": f["records_reconciled"], "blocked_systems": ", ".join(blocked) or "none",
            **{f"counterparts_read_{s}": n for s, n in f["counterparts_read"].items()}})
        yield from checks

    return _plan


def sync_writeback_asset(domain: str, system: str, partitions) -> dg.AssetsDefinition:
    @dg.asset(name=f"{domain}_{system}_sync_writeback", group_name=GROUP,
              ins={"plan": dg.AssetIn(f"{domain}_sync_plan")}, partitions_def=partitions,
              backfill_policy=SINGLE_RUN, required_resource_keys={system, "trueup", "state"},
              description=f"The incremental {domain} corrections for the {system.upper()} applied, "
                          f"every one in the ledger.")
    def _writeback(context: dg.AssetExecutionContext, plan: pa.Table):
        trueup = context.resources.trueup
        cfg = trueup.config
        rows = plan.filter(pc.equal(plan.column("target_system"), system))
        days = rows.select(["change_id", PARTITION])
        resource = getattr(context.resources, system)
        dry = _is_dry_run(context)
        # the same write-back path as the nightly run (live compare, approvals, ledger, retries,
        # dead letters); the whole domain plan goes in so a change that refers to a record another
        # system has yet to create (or that waits for approval) waits with it
        blocked = json.loads((plan.schema.metadata or {}).get(GATE_KEY, b"{}"))
        # whole_plan=False: a sync plans the records it touched, so an approval waiting for another
        # record is not "no longer proposed" (only the nightly's whole plan can say that)
        out = steps.writeback(domain, plan.drop_columns([PARTITION]), {system: resource.client(cfg)}, cfg,
                              context.resources.state.store(), context.run_id, dry_run=dry, systems=[system],
                              blocked={system: f"gate failed: {blocked[system]}"} if system in blocked else None,
                              whole_plan=False)
        if out.num_rows and not dry and system not in blocked:
            resource.after_writeback()
        out = out.join(days, "change_id").sort_by([("target_key", "ascending"), ("field", "ascending")])
        report_outcomes(context, domain, system, out, {"blocked": blocked[system]} if system in blocked else {})
        return out

    return _writeback


def sync_watermarks_asset(writebacks: list[dg.AssetKey], partitions) -> dg.AssetsDefinition:
    @dg.asset(name="sync_watermarks", group_name=GROUP, partitions_def=partitions, backfill_policy=SINGLE_RUN,
              ins={k.path[-1]: dg.AssetIn(key=k) for k in writebacks}, required_resource_keys={"trueup", "state"},
              description="The final step: once every write-back step of the run finished, the watermarks move to "
                          "what the run read (never for a dry-run, a failed run or a backfill; writes "
                          "that failed wait in the dead letters for replay).")
    def sync_watermarks(context: dg.AssetExecutionContext, **outcomes):
        store = context.resources.state.store()
        dry = _is_dry_run(context)
        totals: dict[str, int] = {}
        for t in outcomes.values():
            for k, v in zip(*t.group_by("status").aggregate([("change_id", "count")]).to_pydict().values()):
                totals[k] = totals.get(k, 0) + v
        # a gate that blocked a system leaves the watermarks where they were: the next sync reads the
        # same changes again (and is blocked again until the run is allowed), nothing is skipped
        held_by_gate = totals.get("blocked", 0) > 0
        moved = store.advance_watermarks(context.run_id,
                                         apply=watermark_mode(context) and not dry and not held_by_gate)
        failed = sum(v for k, v in totals.items() if k in ("rejected", "retryable_error", "blocked"))
        store.finish_run(context.run_id, "succeeded" if not failed else "completed_with_failures",
                         {"totals": totals, "partitions": _label(context), "watermarks_moved": len(moved),
                          "held_by_gate": held_by_gate},
                         job=context.job_name, mode="incremental", dry_run=dry)
        context.add_output_metadata({"watermarks_moved": len(moved), **{f"changes_{k}": v for k, v in totals.items()}})
        day = context.partition_key_range.start if watermark_mode(context) else None
        return pa.table({"system": pa.array([m["system"] for m in moved], pa.string()),
                         "entity": pa.array([m["entity"] for m in moved], pa.string()),
                         "high_water": pa.array([m["high_water"] for m in moved], pa.timestamp("us", "UTC")),
                         PARTITION: pa.array([day] * len(moved), pa.string())})

    return sync_watermarks


def nightly_watermarks_asset() -> dg.AssetsDefinition:
    @dg.asset(name="nightly_watermarks", group_name="report", deps=["reconciliation_report"],
              required_resource_keys={"trueup", "state"},
              description="After a full run's write-backs and report: incremental syncs start from what it read.")
    def nightly_watermarks(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        moved = context.resources.state.store().advance_watermarks(
            context.run_id, apply=not _is_dry_run(context))
        return dg.MaterializeResult(metadata={"watermarks_moved": len(moved)})

    return nightly_watermarks
