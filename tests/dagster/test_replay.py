"""A CRM that refuses every write: its write-back steps fail with the reason while the ERP's and
the WMS's complete, every refused change is dead-lettered, and `replay_dead_letters` applies them
once the CRM is back."""

from __future__ import annotations

import dagster as dg
import pyarrow.compute as pc
import pytest

from pipelines.definitions import build_definitions
from sandbox.crm import serve
from tests.helpers import Flow, _waiting
from trueup.state import StateStore

pytestmark = pytest.mark.slow


def test_crm_down_fails_its_own_steps_dead_letters_everything_and_replay_applies_it(home, config):
    down = build_definitions(home=home, crm={"write_fault_rate": 1.0, "fault_seed": 3, "max_attempts": 2})
    customer = [dg.AssetKey(k) for k in (
        "erp_customer_extract", "crm_customer_extract", "wms_customer_extract", "customer_staged",
        "customer_matched", "customer_golden", "customer_plan", "customer_erp_writeback",
        "customer_crm_writeback", "customer_wms_writeback")]
    result = down.resolve_job_def("nightly_reconciliation").execute_in_process(
        instance=dg.DagsterInstance.ephemeral(), raise_on_error=False, asset_selection=customer)
    failed = {e.step_key for e in result.all_events if e.is_step_failure}
    assert failed == {"customer_crm_writeback"}
    ok = {e.step_key for e in result.all_events if e.is_step_success}
    assert {"customer_erp_writeback", "customer_wms_writeback"} <= ok

    store = StateStore(f"sqlite:///{home / 'state.db'}")
    led = store.ledger(result.run_id)
    crm = led.filter(pc.equal(led.column("system"), "crm"))
    # every CRM change the run sent failed after its retries and waits as a dead letter, with why
    sent = crm.filter(pc.equal(crm.column("status"), "retryable_error"))
    assert sent.num_rows == crm.num_rows > 20
    dead = store.dead_letters()
    assert set(dead.column("change_id").to_pylist()) == set(sent.column("change_id").to_pylist())
    assert all("HTTP" in r or "disconnected" in r.lower() for r in dead.column("reason").to_pylist())
    assert set(crm.column("attempts").to_pylist()) == {2}

    back = build_definitions(home=home)
    replay = back.resolve_job_def("replay_dead_letters").execute_in_process(instance=dg.DagsterInstance.ephemeral())
    assert replay.success
    out = replay.output_for_node("replay_changes")
    assert out["still_open"] == 0
    replayed = sum(f["replayed"] + f["found_in_place"] + f["obsolete"] for f in out["domains"].values())
    assert replayed >= dead.num_rows
    closed = store.dead_letters(status=None)
    assert set(closed.column("status").to_pylist()) <= {"resolved", "superseded", "obsolete"}
    # the replay applied them: a fresh plan finds nothing left for the CRM but what waits for approval
    flow = Flow(home, config, state=store)
    with serve(home / "demo" / "crm" / "crm.sqlite") as srv:
        c = flow.clients(srv.url)
        plans = {"customer": flow.plan("customer", c)[0]}
        c["crm"].close()
    left = [p for plan in plans.values() for p in plan.to_pylist()
            if p["target_system"] == "crm" and not _waiting(p, plans)]
    assert left == [], left[:5]
