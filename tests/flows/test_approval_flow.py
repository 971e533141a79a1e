"""Approvals end to end: the ERP creates wait, `trueup approvals` approves one and rejects one,
the next run applies the approved create (and the CRM's reference to it) and declines the
rejected one without asking again, until the record's data changes."""

from __future__ import annotations

import sqlite3
from contextlib import closing

import pyarrow.compute as pc

from pipelines.cli import main as cli
from tests.helpers import Flow


def _by_key(out, key):
    return out.filter(pc.equal(out.column("target_key"), key))


def test_approve_one_reject_one_then_a_data_change_asks_again(home, config, capsys):
    flow = Flow(home, config)
    first = flow.run("r1", domains=["customer"])["customer"]
    pending = flow.state.approvals("pending")
    keys = sorted(set(pending.column("target_key").to_pylist()))
    assert len(keys) >= 2 and set(pending.column("action").to_pylist()) == {"create"}
    assert set(_by_key(first, keys[0]).column("status").to_pylist()) == {"pending_approval"}

    assert cli(["--home", str(home), "approvals"]) == 0
    listing = capsys.readouterr().out
    assert all(k in listing for k in keys) and "needs approval" in listing
    ids = {r["target_key"]: r["approval_id"] for r in pending.to_pylist()}
    assert cli(["--home", str(home), "approvals", "approve", ids[keys[0]][:12], "--by", "ops"]) == 0
    assert cli(["--home", str(home), "approvals", "reject", ids[keys[1]], "--by", "ops",
                "--note", "a duplicate of an existing account"]) == 0
    assert cli(["--home", str(home), "approvals", "reject", ids[keys[1]], "--note", "again"]) == 1  # decided

    second = flow.run("r2", domains=["customer"])["customer"]
    assert set(_by_key(second, keys[0]).column("status").to_pylist()) == {"applied"}
    with closing(sqlite3.connect(home / "demo" / "erp.sqlite")) as db:
        assert db.execute("SELECT count(*) FROM erp_customer WHERE customer_number = ?", [keys[0]]).fetchone()[0] == 1
        assert db.execute("SELECT count(*) FROM erp_customer WHERE customer_number = ?", [keys[1]]).fetchone()[0] == 0
    xref = second.filter(pc.and_(pc.equal(second.column("field"), "match_key"),
                                 pc.equal(second.column("new_value"), keys[0])))
    assert xref.num_rows == 1 and xref.column("status")[0].as_py() == "applied"  # the CRM now points to it
    declined = _by_key(second, keys[1])
    assert set(declined.column("status").to_pylist()) == {"declined"}
    assert "a duplicate of an existing account" in declined.column("error")[0].as_py()
    statuses = {r["target_key"]: r["status"] for r in flow.state.approvals().to_pylist()}
    assert statuses[keys[0]] == "applied" and statuses[keys[1]] == "rejected"
    assert flow.state.approvals("pending").filter(
        pc.equal(flow.state.approvals("pending").column("target_key"), keys[1])).num_rows == 0

    # the CRM account behind the rejected create changes: that is a new proposal, asked again
    crm_id = flow.crosswalk["customer"].filter(
        pc.equal(flow.crosswalk["customer"].column("golden_id"), keys[1])).column("source_key")[0].as_py()
    with closing(sqlite3.connect(home / "demo" / "crm" / "crm.sqlite")) as db:
        db.execute("UPDATE accounts SET city = 'Springfield' WHERE id = ?", [crm_id])
        db.commit()
    flow.run("r3", domains=["customer"])
    again = flow.state.approvals("pending")
    again = again.filter(pc.equal(again.column("target_key"), keys[1]))
    assert again.num_rows > 0 and set(again.column("approval_id").to_pylist()) != {ids[keys[1]]}
