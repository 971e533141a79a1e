"""The nightly job end to end on the demo: scored against the ground truth, then converged."""

from __future__ import annotations

import json

import dagster as dg
import pyarrow.parquet as pq
import pytest

from pipelines.definitions import build_definitions
from sandbox.score import score
from trueup.state import StateStore

pytestmark = pytest.mark.slow


def _run(home, **tags):
    defs = build_definitions(home=home)
    job = defs.resolve_job_def("nightly_reconciliation")
    result = job.execute_in_process(instance=dg.DagsterInstance.ephemeral(), tags=tags)
    assert result.success
    return result


def test_nightly_finds_and_fixes_exactly_the_injected_discrepancies_then_converges(home):
    first = _run(home)
    store = StateStore(f"sqlite:///{home / 'state.db'}")
    s = score(home / "demo" / "ground_truth.csv", store.ledger(first.run_id))
    assert s.expected > 200
    assert s.missed.empty and s.unexpected.empty, (s.missed.head(20), s.unexpected.head(20))
    assert s.recall == 1.0 and s.precision == 1.0

    summary = first.output_for_node("reconciliation_report")
    assert summary["totals"] == {"applied": store.ledger(first.run_id).num_rows}
    sizes = json.loads((home / "demo" / "landscape.json").read_text())["sizes"]
    assert summary["domains"]["customer"]["read"] == {
        "crm": sizes["accounts_crm"], "erp": sizes["customers_erp"], "wms": sizes["ship_tos_wms"]}
    report = (home / "reports" / first.run_id / "report.md").read_text()
    assert "| inventory | erp |" in report

    second = _run(home)
    for domain in ("customer", "product", "price", "inventory"):
        plan = pq.read_table(home / "warehouse" / f"{domain}_plan.parquet")
        assert plan.num_rows == 0, plan.slice(0, 10).to_pylist()
    assert store.ledger(second.run_id).num_rows == 0


def test_dry_run_writes_nothing(home):
    before = (home / "demo" / "erp.sqlite").read_bytes()
    result = _run(home, **{"trueup/dry_run": "true"})
    summary = result.output_for_node("reconciliation_report")
    assert summary["dry_run"] is True
    assert set(summary["totals"]) == {"dry_run"} and summary["totals"]["dry_run"] > 200
    assert (home / "demo" / "erp.sqlite").read_bytes() == before
    assert StateStore(f"sqlite:///{home / 'state.db'}").ledger(result.run_id).num_rows == 0
