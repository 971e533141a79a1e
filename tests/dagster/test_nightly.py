"""The nightly job end to end on the demo, on both backend combinations: the ERP in SQLite and
the WMS as export files (the default), and the ERP in PostgreSQL with the WMS as tables in
MariaDB (config/profiles/servers). The CRM sandbox is served over real HTTP on loopback in both.
Scored against the ground truth, then converged."""

from __future__ import annotations

import json
import shutil

import dagster as dg
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from pipelines.definitions import build_definitions
from sandbox.score import score
from tests.conftest import CONFIG_DIR, REPO
from trueup.state import StateStore
from trueup.systems.sql_arrow import read_arrow

pytestmark = pytest.mark.slow

SERVERS_CONFIG = REPO / "config" / "profiles" / "servers"
BACKENDS = ["sqlite+files", "postgresql+mariadb"]


@pytest.fixture(params=BACKENDS)
def landscape(request, tmp_path, monkeypatch):
    """(home, config_dir, urls): a private demo landscape on the backend combination."""
    home = tmp_path / "home"
    if request.param == "sqlite+files":
        shutil.copytree(request.getfixturevalue("demo_template"), home / "demo")
        return home, CONFIG_DIR, {}
    from sandbox.generator import Backends, build

    dbs = request.getfixturevalue("server_dbs")
    urls = {"erp": dbs.new("postgresql"), "wms": dbs.new("mariadb")}
    build(home / "demo", scale=1.0, seed=7,
          backends=Backends(erp_url=urls["erp"], wms_kind="sql", wms_url=urls["wms"]))
    # the definitions read the URLs as Dagster EnvVars, as a deployment would
    monkeypatch.setenv("TRUEUP_ERP_URL", urls["erp"])
    monkeypatch.setenv("TRUEUP_WMS_URL", urls["wms"])
    return home, SERVERS_CONFIG, urls


def _run(home, config_dir, **tags):
    defs = build_definitions(home=home, config_dir=config_dir)
    job = defs.resolve_job_def("nightly_reconciliation")
    result = job.execute_in_process(instance=dg.DagsterInstance.ephemeral(), tags=tags)
    assert result.success
    return result


def _snapshot(home, urls) -> dict:
    """Every table of the ERP and the WMS as they stand (files: the bytes)."""
    if not urls:
        return {"erp": (home / "demo" / "erp.sqlite").read_bytes(),
                "wms": sorted((p.name, p.read_bytes()) for p in (home / "demo" / "wms").rglob("*") if p.is_file())}
    out = {}
    for system, url in urls.items():
        engine = sa.create_engine(url)
        for name in sa.inspect(engine).get_table_names():
            t = read_arrow(engine, sa.select(sa.text("*")).select_from(sa.table(name))).table
            out[(system, name)] = t.sort_by([(c, "ascending") for c in t.column_names[:2]]).to_pylist()
        engine.dispose()
    return out


def _held(home) -> pa.Table:
    """The run's write-back rows waiting for approval, as (system, target_key, field, new_value, action)."""
    parts = [pq.read_table(p) for p in sorted((home / "warehouse").glob("*_writeback.parquet"))]
    rows = pa.concat_tables(parts, promote_options="permissive")
    rows = rows.filter(pc.equal(rows.column("status"), "pending_approval"))
    return rows.rename_columns(["system" if c == "target_system" else c for c in rows.column_names])


def test_nightly_finds_every_discrepancy_applies_it_or_holds_it_for_approval_then_converges(landscape):
    home, config_dir, urls = landscape
    first = _run(home, config_dir)
    store = StateStore(f"sqlite:///{home / 'state.db'}")
    gt = home / "demo" / "ground_truth.csv"
    pending = store.approvals("pending")
    held = _held(home)  # what waits: the approvals, and the changes that refer to their records
    assert set(pending.column("change_id").to_pylist()) <= set(held.column("change_id").to_pylist())
    s = score(gt, store.ledger(first.run_id), pending=held)
    assert s.expected > 200
    assert s.missed.empty and s.unexpected.empty, (s.missed.head(20), s.unexpected.head(20))
    assert s.found_recall == 1.0 and s.found_precision == 1.0
    # creating the CRM-only customers in the ERP waits for approval (config/rules.yaml): found, not applied
    assert s.pending > 0 and s.corrected + s.pending == s.expected
    assert set(pending.column("action").to_pylist()) == {"create"}

    summary = first.output_for_node("reconciliation_report")
    ledger = store.ledger(first.run_id)
    assert set(ledger.column("status").to_pylist()) == {"applied"}
    assert summary["totals"]["applied"] == ledger.num_rows
    # the creates wait, and so do the CRM cross-references to the ERP numbers they would get
    assert summary["totals"]["pending_approval"] == held.num_rows > pending.num_rows
    sizes = json.loads((home / "demo" / "landscape.json").read_text())["sizes"]
    assert summary["domains"]["customer"]["read"] == {
        "crm": sizes["accounts_crm"], "erp": sizes["customers_erp"], "wms": sizes["ship_tos_wms"]}
    report = (home / "reports" / first.run_id / "report.md").read_text()
    assert "| inventory | erp |" in report and "awaiting approval" in report
    if urls:  # the servers were read by their Arrow-native paths, and no URL leaked into metadata
        methods = {}
        for ev in first.get_asset_materialization_events():
            mat = ev.materialization
            if mat.asset_key.path[0].endswith("_extract") and "read_method" in mat.metadata:
                methods[mat.asset_key.path[0]] = mat.metadata["read_method"].value
            assert not any(u in str(mat.metadata) for u in urls.values())
        assert methods["erp_customer_extract"] == "adbc"
        assert methods["wms_inventory_extract"] == "connectorx"
    # the demo's broken cross-references and duplicate accounts are reported with evidence, not corrected
    exc = summary["matching"]["customer"]["exceptions"]
    held_matches = pd.read_csv(home / "demo" / "match_truth.csv").query("expect == 'held'")
    assert sorted((e["kind"], e["source_key"]) for e in exc) == sorted(zip(held_matches["kind"], held_matches["key"]))
    assert "xref_wrong" in report and "evidence points at" in report

    # someone approves them; the next run applies them, and nothing else
    assert store.decide_all_pending("approved", by="test") == len(set(pending.column("approval_id").to_pylist()))
    second = _run(home, config_dir)
    again = store.ledger(second.run_id)
    s = score(gt, pa.concat_tables([ledger, again], promote_options="permissive"))
    assert s.missed.empty and s.unexpected.empty, (s.missed.head(20), s.unexpected.head(20))
    assert s.recall == 1.0 and s.precision == 1.0
    assert store.approvals("pending").num_rows == 0
    assert set(store.approvals().column("status").to_pylist()) == {"applied"}
    # converged: the other domains planned nothing on the second run, and the customers' plan was
    # exactly what had waited, all of it applied
    for domain in ("product", "price", "inventory"):
        plan = pq.read_table(home / "warehouse" / f"{domain}_plan.parquet")
        assert plan.num_rows == 0, plan.slice(0, 10).to_pylist()
    plan = pq.read_table(home / "warehouse" / "customer_plan.parquet")
    assert set(plan.column("change_id").to_pylist()) == set(held.column("change_id").to_pylist())
    assert set(again.column("status").to_pylist()) == {"applied"} and again.num_rows == plan.num_rows


def test_dry_run_writes_nothing(landscape):
    home, config_dir, urls = landscape
    before = _snapshot(home, urls)
    result = _run(home, config_dir, **{"trueup/dry_run": "true"})
    summary = result.output_for_node("reconciliation_report")
    assert summary["dry_run"] is True
    assert set(summary["totals"]) == {"dry_run"} and summary["totals"]["dry_run"] > 200
    assert _snapshot(home, urls) == before
    assert StateStore(f"sqlite:///{home / 'state.db'}").ledger(result.run_id).num_rows == 0
