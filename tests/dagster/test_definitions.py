"""The one Definitions loads, validates, and has the nightly job and its schedule."""

from __future__ import annotations

import subprocess
import sys

import dagster as dg

from pipelines.definitions import DOMAINS, build_definitions
from tests.conftest import REPO


def test_definitions_validate_with_the_cli():
    proc = subprocess.run([sys.executable, "-m", "dagster", "definitions", "validate", "-m", "pipelines.definitions"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Validation successful" in proc.stderr + proc.stdout


def test_nightly_job_and_schedule(tmp_path):
    defs = build_definitions(home=tmp_path)
    job = defs.resolve_job_def("nightly_reconciliation")
    schedule = defs.resolve_schedule_def("nightly_reconciliation_schedule")
    assert schedule.cron_schedule == "0 2 * * *"
    assert schedule.execution_timezone == "America/Chicago"
    assert schedule.job_name == job.name
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    keys = {k.to_user_string() for k in job.asset_layer.executable_asset_keys}
    graph = defs.resolve_asset_graph()
    all_keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    for domain in DOMAINS:
        for step in ("staged", "matched", "golden", "plan"):
            assert f"{domain}_{step}" in all_keys
    assert {"erp_customer_extract", "crm_customer_extract", "wms_customer_extract", "customer_erp_writeback",
            "inventory_erp_writeback", "reconciliation_report"} <= all_keys
    sync = {k for k in all_keys if graph.get(dg.AssetKey(k)).group_name == "sync"}
    assert {"customer_changes", "customer_sync_plan", "sync_watermarks"} <= sync
    assert keys == all_keys - sync  # the nightly job covers the whole graph but the sync group


def test_lineage_runs_extract_to_report(tmp_path):
    graph = build_definitions(home=tmp_path).resolve_asset_graph()
    up = {k.to_user_string() for k in graph.get(dg.AssetKey("customer_crm_writeback")).parent_keys}
    assert up == {"customer_plan"}
    parents = {k.to_user_string() for k in graph.get(dg.AssetKey("reconciliation_report")).parent_keys}
    assert {"customer_erp_writeback", "price_crm_writeback", "inventory_erp_writeback"} <= parents


def test_a_sql_wms_gets_a_sql_resource_with_its_url_from_the_environment(tmp_path, monkeypatch):
    from pipelines.definitions import system_resources
    from resources import SqlSystemResource, WmsSandboxResource
    from tests.dagster.test_nightly import SERVERS_CONFIG
    from trueup.config import Config

    config = Config.load(SERVERS_CONFIG)
    monkeypatch.delenv("TRUEUP_WMS_URL", raising=False)
    monkeypatch.delenv("TRUEUP_ERP_URL", raising=False)
    demo = system_resources(tmp_path, config)
    assert isinstance(demo["wms"], SqlSystemResource)
    assert demo["wms"].url == f"sqlite:///{tmp_path / 'demo' / 'wms.sqlite'}"  # the demo's own file
    assert demo["erp"].url == f"sqlite:///{tmp_path / 'demo' / 'erp.sqlite'}"

    secret = "mysql+pymysql://wms_user:s3cret@db.example/wms"
    monkeypatch.setenv("TRUEUP_WMS_URL", secret)
    res = system_resources(tmp_path, config)["wms"]
    assert isinstance(res, SqlSystemResource) and res.system == "wms"
    # an EnvVar, resolved at run time: the URL is not in the resource's config
    assert isinstance(res.url, dg.EnvVar) and res.url.env_var_name == "TRUEUP_WMS_URL"
    assert "s3cret" not in repr(res)

    files = system_resources(tmp_path, Config.load(REPO / "config"))["wms"]
    assert isinstance(files, WmsSandboxResource)  # the default profile keeps the file-drop WMS


def test_the_servers_profile_differs_from_the_default_only_in_the_wms():
    from tests.dagster.test_nightly import SERVERS_CONFIG
    from trueup.config import Config

    default, servers = Config.load(REPO / "config"), Config.load(SERVERS_CONFIG)
    assert servers.rules == default.rules and servers.settings == default.settings
    d, s = default.systems.systems, servers.systems.systems
    assert set(d) == set(s) and all(d[n] == s[n] for n in d if n != "wms")
    assert s["wms"].kind == "sql" and d["wms"].kind == "files"
    # the same fields and keys, read from tables instead of files
    for entity, em in d["wms"].entities.items():
        assert s["wms"].entities[entity].fields == em.fields
        assert s["wms"].entities[entity].key == em.key


def test_incremental_job_schedule_off_by_default_and_drop_sensor(home):
    from sandbox.wms import WmsSandbox

    defs = build_definitions(home=home)
    job = defs.resolve_job_def("incremental_sync")
    assert job.partitions_def is not None
    schedule = defs.resolve_schedule_def("incremental_sync_schedule")
    assert schedule.job_name == "incremental_sync" and schedule.cron_schedule == "0 * * * *"
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    sensor = defs.resolve_sensor_def("wms_drop_sensor")
    repo = defs.get_repository_def()
    assert sensor.default_status == dg.DefaultSensorStatus.STOPPED
    # the nightly job leaves the sync group alone
    nightly = {k.to_user_string() for k in defs.resolve_job_def("nightly_reconciliation").asset_layer.selected_asset_keys}
    assert "customer_sync_plan" not in nightly and "nightly_watermarks" in nightly

    first = sensor.evaluate_tick(dg.build_sensor_context(cursor=None, repository_def=repo))
    assert len(first.run_requests) == 1
    req = first.run_requests[0]
    assert req.tags["trueup/window"] == "watermark" and req.partition_key
    again = sensor.evaluate_tick(dg.build_sensor_context(cursor=first.cursor, repository_def=repo))
    assert not again.run_requests
    WmsSandbox(home / "demo" / "wms").export()  # a new drop arrives
    third = sensor.evaluate_tick(dg.build_sensor_context(cursor=first.cursor, repository_def=repo))
    assert len(third.run_requests) == 1 and third.cursor != first.cursor
