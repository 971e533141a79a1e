"""Write-back that never loses or doubles a change, against the CRM sandbox over HTTP and the
demo ERP database: faults, dead letters and replay, a run killed mid-apply, dropped connections."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from datetime import datetime, timezone

import pyarrow as pa
import pytest
import pyarrow.compute as pc

from sandbox.crm import Faults, serve
from sandbox.wms import WmsSandbox
from tests.conftest import REPO
from tests.flows.crash_child import DOMAINS, clients
from tests.helpers import Flow, _waiting, check_against_plan, crm_write_counts, fault_drill
from trueup.systems.rest import RestSystem
from trueup.writeback import WriteOp


@pytest.mark.parametrize("in_flight, rate", [(1, 0.2), (4, 0.75)], ids=["one-at-a-time", "four-in-flight"])
def test_faults_end_applied_or_dead_lettered_and_replay_converges(home, config, in_flight, rate):
    f = fault_drill(home, config, rate=rate, seed=11, in_flight=in_flight)
    assert f["faults_429"] + f["faults_500"] + f["faults_drop"] > 0
    assert f["attempted_crm"] > 50 and f["retried"] > 0
    # with max_attempts=2 some batches fail twice: there is something to replay (one at a time, this
    # seed's order; four in flight the order varies, and the rate makes a batch failing twice all
    # but certain: a half of the ~40 batches' attempts answer 429 or 500)
    assert f["dead_lettered"] > 0
    assert f["lost"] == 0 and f["doubled"] == 0
    # the replay re-planned every dead letter: written again, or closed as no longer needed
    assert f["replayed"] + f["replay_found_in_place"] + f["replay_obsolete"] >= f["dead_lettered"]
    assert f["replay_still_failing"] == 0 and f["open_dead_letters_after_replay"] == 0
    assert f["lost_after_replay"] == 0 and f["doubled_after_replay"] == 0
    assert f["still_planned_after_replay"] == 0  # converged: only approvals still wait
    # a replay re-plans a part of the plan: it leaves the approvals waiting as they were
    assert f["approvals_pending_after_replay"] == f["approvals_pending_before_replay"] > 0


def test_dropped_connection_is_a_transport_error_and_the_idempotency_key_prevents_doubling(home, config):
    db = home / "demo" / "crm" / "crm.sqlite"
    with closing(sqlite3.connect(db)) as con:
        acc, city = con.execute("SELECT id, city FROM accounts ORDER BY id LIMIT 1").fetchone()
    op = WriteOp(key=acc, key_values={"id": acc}, action="update", values={"city": f"{city} X"},
                 change_ids=["c1"], idempotency_key="k-drop-1")
    with serve(db, faults=Faults(write_fault_rate=1.0, kinds=("drop",), seed=1)) as srv:
        crm = RestSystem("crm", srv.url, config.systems.systems["crm"], max_attempts=3,
                         backoff_initial=0.001, backoff_max=0.01)
        [res] = crm.write("customer", [op])
        crm.close()
        assert srv.stats["faults"]["drop"] == 3  # every attempt reached the server and was cut off
    assert res.status == "retryable_error" and "disconnected" in res.error.lower()
    with serve(db) as srv:  # the connection is back: the same change, the same key
        crm = RestSystem("crm", srv.url, config.systems.systems["crm"])
        [again] = crm.write("customer", [op])
        crm.close()
    assert again.status == "applied"
    assert crm_write_counts(home)[("accounts", acc, "city")] == 1  # applied once, by the first attempt


def test_run_killed_mid_apply_then_rerun_applies_each_change_exactly_once(home, config):
    flow = Flow(home, config)
    db = home / "demo" / "crm" / "crm.sqlite"
    with serve(db, write_delay=0.05) as srv:
        c = clients(home, config, srv.url)
        plans = {d: flow.plan(d, c)[0] for d in DOMAINS}
        child = subprocess.Popen([sys.executable, "-m", "tests.flows.crash_child", str(home), srv.url, "killed"],
                                 cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
        deadline = time.monotonic() + 120
        def some_landed_and_journalled() -> bool:  # some CRM batches landed and journalled, most not yet
            return sum(crm_write_counts(home).values()) >= 8 and any(
                r["status"] == "applied" and r["system"] == "crm" for r in flow.state.ledger("killed").to_pylist())

        while not some_landed_and_journalled():
            assert child.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        # widen the window so the kill lands while a batch is journalled but not yet answered
        srv.app.state.write_delay = 2.0
        widened = time.monotonic()
        def crm_batch_in_flight() -> bool:  # a CRM batch (now held 2 s by the sandbox) is journalled
            # not one sent before the widening: it is answered at once, and the run may then have
            # no CRM batch left in this domain (seen in CI: killed with every row applied)
            if time.monotonic() - widened < 1.0:
                return False
            led = flow.state.ledger("killed").to_pylist()
            return any(r["status"] == "attempting" and r["system"] == "crm" for r in led)

        while not crm_batch_in_flight():
            assert child.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        srv.app.state.write_delay = 0.0
        # the batch in flight still lands server-side, as in real life, held for the 2 s it arrived
        # under: the rerun's settling look may miss it (not_landed) and its compare then find it in
        # place, or the look may find it; either way each change must end applied exactly once
        killed = flow.state.ledger("killed")
        statuses = killed.column("status").to_pylist()
        assert "attempting" in statuses and "applied" in statuses  # died in the middle, and says so
        written_before = sum(crm_write_counts(home).values())

        from tests.flows.crash_child import run
        run(home, srv.url, "rerun")
        WmsSandbox(home / "demo" / "wms").process_inbound()

        ledger = flow.state.ledger()
        led = ledger.filter(pc.is_in(ledger.column("run_id"), pa.array(["killed", "rerun"])))
        stuck = led.filter(pc.equal(led.column("status"), "attempting"))
        rerun_of_stuck = led.filter(pc.and_(pc.equal(led.column("run_id"), "rerun"),
                                            pc.is_in(led.column("change_id"), stuck.column("change_id"))))
        assert stuck.num_rows == 0, (stuck.to_pylist()[:3], rerun_of_stuck.to_pylist()[:3])  # all settled
        applied = led.filter(pc.equal(led.column("status"), "applied")).column("change_id").to_pylist()
        assert len(applied) == len(set(applied))  # each change applied once across both runs
        held = set(flow.state.approvals().column("change_id").to_pylist())
        wanted = {p["change_id"] for d in DOMAINS for p in plans[d].to_pylist()
                  if p["change_id"] not in held and not _waiting(p, plans)}
        assert set(applied) == wanted  # ... and every planned change was applied (none lost)
        # the killed run's attempts now tell what happened to them
        settled = led.filter(pc.equal(led.column("run_id"), "killed")).column("status").to_pylist()
        assert set(settled) <= {"applied", "interrupted", "unchanged"}
        assert sum(crm_write_counts(home).values()) > written_before
        assert check_against_plan(home, config, c, plans, flow.state) == {"lost": 0, "doubled": 0}
        for d in DOMAINS:  # the exact state the plan asked for: nothing left to change
            left = [p for p in flow.plan(d, c)[0].to_pylist() if p["change_id"] not in held
                    and not _waiting(p, plans)]
            assert left == [], left[:5]
        c["crm"].close()


def test_a_correction_someone_undid_is_written_again_by_the_next_run(home, config):
    """Run 1 corrects a CRM city; a sales rep sets it back; run 2 plans the same change (the same
    change id). Its idempotency key must be new (the record has a new version): keyed by the
    change alone, the CRM answered "duplicate" and kept the rep's value while the ledger said applied."""
    from trueup.model import PLAN_SCHEMA
    from trueup.writeback import apply_plan

    db = home / "demo" / "crm" / "crm.sqlite"
    with closing(sqlite3.connect(db)) as con:
        acc = con.execute("SELECT id FROM accounts ORDER BY id LIMIT 1").fetchone()[0]
        con.execute("UPDATE accounts SET city = 'Lyon' WHERE id = ?", [acc])
        con.commit()
    plan = pa.Table.from_pylist([{
        "change_id": "c-city", "domain": "customer", "target_system": "crm", "action": "update", "golden_id": "G1",
        "target_key": acc, "field": "city", "old_value": "Lyon", "new_value": "Oslo", "source_system": "erp",
        "rule": "customer.city: owner erp", "severity": "medium"}], schema=PLAN_SCHEMA)
    em = config.systems.entity("crm", "customer")
    with serve(db) as srv:
        crm = RestSystem("crm", srv.url, config.systems.systems["crm"])
        first = apply_plan(crm, "crm", "customer", em, plan)
        with closing(sqlite3.connect(db)) as con:  # the rep's undo (the CRM stamps every edit)
            con.execute("UPDATE accounts SET city = 'Lyon', updated_at = ? WHERE id = ?",
                        [datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"), acc])
            con.commit()
        again = apply_plan(crm, "crm", "customer", em, plan)
        retried = apply_plan(crm, "crm", "customer", em, plan)  # in place now: not sent
        crm.close()
    assert first.column("status").to_pylist() == again.column("status").to_pylist() == ["applied"]
    assert retried.column("status").to_pylist() == ["unchanged"]
    with closing(sqlite3.connect(db)) as con:
        assert con.execute("SELECT city FROM accounts WHERE id = ?", [acc]).fetchone()[0] == "Oslo"
    assert crm_write_counts(home)[("accounts", acc, "city")] == 2  # both runs wrote


def test_a_replayed_key_of_a_failed_write_is_still_a_failure(home, config):
    op = WriteOp(key="ACC-NOPE", key_values={"id": "ACC-NOPE"}, action="update", values={"city": "Oslo"},
                 change_ids=["c1"], idempotency_key="k-gone-1")
    with serve(home / "demo" / "crm" / "crm.sqlite") as srv:
        crm = RestSystem("crm", srv.url, config.systems.systems["crm"])
        first, again = crm.write("customer", [op]), crm.write("customer", [op])
        crm.close()
    assert first[0].status == again[0].status == "rejected"  # not "duplicate", taken for applied
    assert "not found" in again[0].error


def test_an_erp_going_away_mid_write_back_fails_only_the_changes_left_without_an_answer(home, config):
    """The ERP takes the first batch, then its connection is gone. The ledger must say exactly
    that: the first batch applied, a correction judged before any send (its record gone) rejected,
    the rest retryable and dead-lettered for replay; nothing the ERP did answer is called a failure."""
    from tests.unit.test_writeback_outcomes import GoesDown
    from trueup import steps

    flow = Flow(home, config)
    with serve(home / "demo" / "crm" / "crm.sqlite") as srv:
        c = clients(home, config, srv.url)
        plan = flow.plan("customer", c)[0]
    plan = plan.filter(pc.and_(pc.equal(plan.column("target_system"), "erp"), pc.equal(plan.column("action"), "update")))
    keys = sorted(set(plan.column("target_key").to_pylist()))
    assert len(keys) > 12
    with closing(sqlite3.connect(home / "demo" / "erp.sqlite")) as erp:  # one record goes after the extract
        erp.execute("DELETE FROM erp_customer WHERE customer_number = ?", [keys[-1]])
        erp.commit()
    c["erp"] = GoesDown("erp", f"sqlite:///{home / 'demo' / 'erp.sqlite'}", config.systems.systems["erp"],
                        write_batch=5, in_flight=1)
    out = steps.writeback("customer", plan, c, config, flow.state, "run-x", systems=["erp"])
    status = dict(zip(out.column("change_id").to_pylist(), out.column("status").to_pylist()))
    by_key = {}
    for r in plan.to_pylist():
        by_key.setdefault(r["target_key"], []).append(status[r["change_id"]])
    assert set(by_key[keys[-1]]) == {"rejected"}  # judged gone before anything was sent
    applied = {k for k, v in by_key.items() if set(v) == {"applied"}}
    assert 0 < len(applied) <= 5  # the first batch of records
    assert {s for k, v in by_key.items() if k not in applied and k != keys[-1] for s in v} <= {
        "retryable_error", "pending_approval", "declined", "unchanged"}
    ledger = {r["change_id"]: r["status"] for r in flow.state.ledger("run-x").to_pylist()}
    assert {cid for cid, s in status.items() if s != "pending_approval"} <= set(ledger)  # every outcome...
    assert all(ledger[cid] == s for cid, s in status.items() if cid in ledger)  # ... as the ledger says
    dead = set(flow.state.dead_letters().column("change_id").to_pylist())
    assert dead == {cid for cid, s in status.items() if s == "retryable_error"} and dead
