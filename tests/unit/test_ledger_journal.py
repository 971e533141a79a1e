"""The ledger journal: attempting before a batch is sent, outcomes in place after, a re-executed
step replacing (never doubling) its rows, a killed run's attempts settled by the next run."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta, timezone

import pyarrow as pa
import sqlalchemy as sa

from trueup.model import OUTCOME_SCHEMA
from trueup.state import StateStore, ledger


def _plan(ids):
    n = len(ids)
    return pa.table({"change_id": ids, "target_system": ["erp"] * n, "target_key": [f"K-{i}" for i in ids],
                     "golden_id": [f"G-{i}" for i in ids], "field": ["unit_price"] * n, "action": ["update"] * n,
                     "old_value": ["1.0000"] * n, "new_value": ["2.0000"] * n, "rule": ["price owner"] * n,
                     "severity": ["high"] * n})


def _outcomes(ids, statuses, attempts=1):
    return pa.table({"change_id": ids, "status": statuses,
                     "error": [None if s == "applied" else f"{s}!" for s in statuses],
                     "attempts": [attempts] * len(ids)}, schema=OUTCOME_SCHEMA)


def _journal(store, run, ids, statuses):
    store.begin_journal(run, "price", ids)
    batch = store.record_attempting(run, "price", _plan(ids))
    assert set(store.ledger(run).column("status").to_pylist()) == {"attempting"}
    store.record(run, "price", _plan(ids), _outcomes(ids, statuses), batch_id=batch)


def test_outcomes_land_in_place_and_a_re_executed_step_replaces_its_rows(db_url):
    ids = ["c1", "c2", "c3", "c4"]
    _journal(StateStore(db_url), "run-1", ids, ["applied", "applied", "rejected", "applied"])
    led = {r["change_id"]: r for r in StateStore(db_url).ledger("run-1").to_pylist()}
    assert [led[i]["status"] for i in ids] == ["applied", "applied", "rejected", "applied"]
    assert led["c3"]["error"] == "rejected!" and led["c1"]["error"] is None
    assert len({r["batch_id"] for r in led.values()}) == 1
    assert StateStore(db_url).dead_letters().column("change_id").to_pylist() == ["c3"]  # a rejection after a send

    # the step runs again in a new process (Dagster re-execution): same run, same changes
    _journal(StateStore(db_url), "run-1", ids, ["applied", "applied", "applied", "applied"])
    led = StateStore(db_url).ledger("run-1")
    assert sorted(led.column("change_id").to_pylist()) == ids  # replaced, not doubled
    assert set(led.column("status").to_pylist()) == {"applied"}
    assert StateStore(db_url).dead_letters(status="resolved").column("change_id").to_pylist() == ["c3"]


def test_a_batch_whose_outcome_never_came_is_recorded_once(db_url):
    store = StateStore(db_url)
    store.begin_journal("run-1", "price", ["c1", "c2", "c3"])
    batch = store.record_attempting("run-1", "price", _plan(["c1", "c2"]))
    store.record("run-1", "price", _plan(["c1", "c2"]), _outcomes(["c1", "c2"], ["applied"] * 2), batch_id=batch)
    store.record_attempting("run-1", "price", _plan(["c3"]))  # sent; then the system failed as a whole
    store.record("run-1", "price", _plan(["c3"]), _outcomes(["c3"], ["retryable_error"]))
    led = sorted((r["change_id"], r["status"]) for r in store.ledger("run-1").to_pylist())
    assert led == [("c1", "applied"), ("c2", "applied"), ("c3", "retryable_error")]


def test_a_change_recorded_again_in_the_same_run_keeps_one_row(db_url):
    store = StateStore(db_url)
    store.begin_journal("run-1", "price", ["c1", "c2"])
    store.record("run-1", "price", _plan(["c1"]), _outcomes(["c1"], ["unchanged"], 0))  # not sent: in place
    store.record("run-1", "price", _plan(["c1"]), _outcomes(["c1"], ["applied"]))  # e.g. replayed in the run
    assert [(r["change_id"], r["status"]) for r in store.ledger("run-1").to_pylist()] == [("c1", "applied")]


def test_a_retried_step_finding_its_own_earlier_writes_in_place_keeps_them_applied(db_url):
    """The step's first attempt applied c1 and c2 and died with c3 in flight (it landed); the
    retry, in a new process under the same run, finds all three in place. The ledger must still
    say trueup changed them: `unchanged` would erase the proof of its own writes."""
    first = StateStore(db_url)
    first.begin_journal("run-1", "price", ["c1", "c2", "c3", "c4"])
    batch = first.record_attempting("run-1", "price", _plan(["c1", "c2"]))
    first.record("run-1", "price", _plan(["c1", "c2"]), _outcomes(["c1", "c2"], ["applied"] * 2), batch_id=batch)
    first.record_attempting("run-1", "price", _plan(["c3"]))  # sent; the process died before the answer

    retry = StateStore(db_url)
    retry.begin_journal("run-1", "price", ["c1", "c2", "c3", "c4"])
    retry.record("run-1", "price", _plan(["c1", "c2", "c3"]), _outcomes(["c1", "c2", "c3"], ["unchanged"] * 3, 0))
    batch = retry.record_attempting("run-1", "price", _plan(["c4"]))
    retry.record("run-1", "price", _plan(["c4"]), _outcomes(["c4"], ["applied"]), batch_id=batch)
    led = {r["change_id"]: r for r in retry.ledger("run-1").to_pylist()}
    assert retry.ledger("run-1").num_rows == 4  # one row per change
    assert {c: r["status"] for c, r in led.items()} == {c: "applied" for c in ("c1", "c2", "c3", "c4")}
    assert all("earlier attempt" in led[c]["error"] for c in ("c1", "c2", "c3")) and led["c4"]["error"] is None
    assert retry.unsettled("later", "price", "erp").num_rows == 0


def test_a_killed_runs_attempts_are_settled_by_the_next_runs_outcomes(db_url):
    store = StateStore(db_url)
    store.begin_journal("killed", "price", ["c1", "c2"])
    store.record_attempting("killed", "price", _plan(["c1", "c2"]))  # sent; the run died before the outcome
    assert store.unsettled("next", "price", "erp").num_rows == 2
    # the next run finds c1 already in place (the send had landed) and applies c2 itself
    store.record("next", "price", _plan(["c1", "c2"]), _outcomes(["c1", "c2"], ["unchanged", "applied"], 0))
    killed = {r["change_id"]: r["status"] for r in store.ledger("killed").to_pylist()}
    assert killed == {"c1": "applied", "c2": "interrupted"}
    assert store.unsettled("later", "price", "erp").num_rows == 0


def test_a_send_landing_after_the_look_that_missed_it_ends_applied(db_url):
    """The killed run's request was still held by the server when the next run looked: the look
    finds it missing (`not_landed`), then the write lands, and a run finds it in place."""
    store = StateStore(db_url)
    store.record_attempting("killed", "price", _plan(["c1", "c2", "c3", "c4"]))
    ids = {r["change_id"]: r["id"] for r in store.unsettled("next", "price", "erp").to_pylist()}
    store.settle("next", landed=[], not_landed=list(ids.values()))  # nothing in place yet
    assert set(store.ledger("killed").column("status").to_pylist()) == {"not_landed"}
    # the next write-back looks again at what is still open (c4 is no longer planned: its late
    # landing made the plan drop it, so only such a look can settle it)
    assert sorted(store.unsettled("later", "price", "erp").column("change_id").to_pylist()) == ["c1", "c2", "c3", "c4"]
    store.settle("later", landed=[ids["c4"]], not_landed=[])
    # c1 and c2 landed late; c3 never did, and this run applies it
    store.record("next", "price", _plan(["c1", "c2", "c3"]),
                 _outcomes(["c1", "c2", "c3"], ["unchanged", "unchanged", "applied"], 0))
    killed = {r["change_id"]: r for r in store.ledger("killed").to_pylist()}
    assert {c: r["status"] for c, r in killed.items()} == {
        "c1": "applied", "c2": "applied", "c3": "interrupted", "c4": "applied"}
    assert "landed after the look" in killed["c1"]["error"] and "next applied it" in killed["c3"]["error"]
    # closed now: a later run finding c3 in place does not make the killed run's send applied too
    store.record("later", "price", _plan(["c3"]), _outcomes(["c3"], ["unchanged"], 0))
    assert {r["change_id"]: r["status"] for r in store.ledger("killed").to_pylist()}["c3"] == "interrupted"
    led = store.ledger()
    applied = led.filter(pa.compute.equal(led.column("status"), "applied")).column("change_id").to_pylist()
    assert sorted(applied) == ["c1", "c2", "c3", "c4"]  # each change applied once, by whoever sent it
    assert store.unsettled("again", "price", "erp").num_rows == 0


def test_a_send_missing_for_more_than_a_day_is_not_credited_later(db_url):
    """The same change planned again long after (a change id is its target and new value) and
    found in place was not the dead send landing: that row stays as it was."""
    store = StateStore(db_url)
    store.record_attempting("killed", "price", _plan(["c1"]))
    store.settle("next", landed=[], not_landed=store.unsettled("next", "price", "erp").column("id").to_pylist())
    with store.engine.begin() as c:  # the send was two days ago
        c.execute(sa.update(ledger).values(at=datetime.now(timezone.utc) - timedelta(days=2)))
    assert store.unsettled("later", "price", "erp").num_rows == 0
    store.record("later", "price", _plan(["c1"]), _outcomes(["c1"], ["unchanged"], 0))
    assert store.ledger("killed").column("status").to_pylist() == ["not_landed"]


def test_the_settling_look_probes_the_partial_index(tmp_path):
    store = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    store.record_attempting("killed", "price", _plan(["c1"]))
    looks = []

    @sa.event.listens_for(store.engine, "before_cursor_execute")
    def _seen(conn, cursor, statement, parameters, context, executemany):
        where = statement.partition("WHERE")[2]  # looks by status (not the run's own rows, read by run)
        if statement.lstrip().startswith("SELECT") and "FROM ledger" in statement and "status" in where:
            looks.append((statement, parameters))

    store.unsettled("next", "price", "erp")
    store.record("next", "price", _plan(["c1", "c2"]), _outcomes(["c1", "c2"], ["unchanged", "applied"], 0))
    assert len(looks) == 3, looks  # the write-back's look for attempts to settle; record's probe, then its look
    with store.engine.connect() as c:
        for statement, parameters in looks:
            plan = c.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters).fetchall()
            assert "ix_ledger_unsettled" in " ".join(str(r) for r in plan), (statement, plan)


def test_an_older_store_gains_the_new_indexes_and_loses_the_retired_ones(tmp_path):
    url = f"sqlite:///{tmp_path / 'state.db'}"
    StateStore(url)
    engine = sa.create_engine(url)
    with engine.begin() as c:  # as an earlier trueup left it
        c.exec_driver_sql("DROP INDEX ix_ledger_unsettled")
        c.exec_driver_sql("CREATE INDEX ix_ledger_attempting ON ledger (entity, change_id) WHERE status = 'attempting'")
        c.exec_driver_sql("CREATE INDEX ix_ledger_change_id ON ledger (change_id)")
        c.exec_driver_sql("CREATE INDEX ix_ledger_run_change ON ledger (run_id, change_id)")
    StateStore(url)
    names = {i["name"] for i in sa.inspect(engine).get_indexes("ledger")}
    assert {"ix_ledger_unsettled", "ix_ledger_run_batch"} <= names
    assert not names & {"ix_ledger_change_id", "ix_ledger_run_change", "ix_ledger_attempting"}
    engine.dispose()


def test_a_change_applied_before_a_failed_retry_stays_applied(db_url):
    """The retry could not even read the system (every change `retryable_error`): the change its
    first attempt applied is still applied, not a failure with a dead letter."""
    first = StateStore(db_url)
    first.begin_journal("run-1", "price", ["c1", "c2"])
    batch = first.record_attempting("run-1", "price", _plan(["c1"]))
    first.record("run-1", "price", _plan(["c1"]), _outcomes(["c1"], ["applied"]), batch_id=batch)
    retry = StateStore(db_url)
    retry.begin_journal("run-1", "price", ["c1", "c2"])
    retry.record("run-1", "price", _plan(["c1", "c2"]), _outcomes(["c1", "c2"], ["retryable_error"] * 2))
    led = {r["change_id"]: r for r in retry.ledger("run-1").to_pylist()}
    assert (led["c1"]["status"], led["c2"]["status"]) == ("applied", "retryable_error")
    assert "earlier attempt" in led["c1"]["error"] and "retryable_error" in led["c1"]["error"]
    assert retry.dead_letters().column("change_id").to_pylist() == ["c2"]


def test_a_journalled_write_back_settles_what_other_runs_left_open_when_it_began(db_url):
    store = StateStore(db_url)
    store.record_attempting("killed", "price", _plan(["c1", "c2"]))  # sent; the run died before the outcome
    # the next run's write-back, batch by batch: c1 found in place (the send had landed), c2 applied
    _journal(StateStore(db_url), "next", ["c1", "c2"], ["unchanged", "applied"])
    killed = {r["change_id"]: r["status"] for r in store.ledger("killed").to_pylist()}
    assert killed == {"c1": "applied", "c2": "interrupted"}


def test_a_write_back_with_nothing_left_open_looks_once_not_per_batch(tmp_path):
    store = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    looks = []

    @sa.event.listens_for(store.engine, "before_cursor_execute")
    def _seen(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().startswith("SELECT") and "FROM ledger" in statement and \
                "status IN ('attempting', 'not_landed')" in statement:
            looks.append(statement)

    ids = [f"c{i}" for i in range(6)]
    store.begin_journal("run-1", "price", ids)
    for part in (ids[:2], ids[2:4], ids[4:]):
        batch = store.record_attempting("run-1", "price", _plan(part))
        store.record("run-1", "price", _plan(part), _outcomes(part, ["applied"] * 2), batch_id=batch)
    assert len(looks) == 1, looks  # begin_journal's probe; the three batches trust it
    assert set(store.ledger("run-1").column("status").to_pylist()) == {"applied"}


def test_a_large_record_on_sqlite_lands_every_row_once_in_a_few_multi_row_inserts(tmp_path):
    """More rows than one SQLite statement may bind values for (the connection's own limit, here
    set to the old default of 999): split over statements, none lost or doubled, and no
    executemany (it steps, and hands the interpreter's lock back, per row)."""
    store = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    inserts = []

    @sa.event.listens_for(store.engine, "connect")
    def _limit(dbapi_conn, _):
        dbapi_conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)

    store.engine.dispose()  # the store's first connection was made before the limit

    @sa.event.listens_for(store.engine, "before_cursor_execute")
    def _seen(conn, cursor, statement, parameters, context, executemany):
        if statement.startswith("INSERT INTO ledger"):
            inserts.append(executemany)

    ids = [f"c{i}" for i in range(5000)]
    statuses = ["applied", "unchanged", "rejected", "applied", "retryable_error"] * 1000
    store.record("run-1", "price", _plan(ids), _outcomes(ids, statuses))
    led = {r["change_id"]: r for r in store.ledger("run-1").to_pylist()}
    assert store.ledger("run-1").num_rows == 5000 and sorted(led) == sorted(ids)
    assert [led[i]["status"] for i in ids] == statuses
    assert all(led[i]["target_key"] == f"K-{i}" and led[i]["new_value"] == "2.0000" for i in ids)
    columns = len(ledger.c) - 1  # all but the id
    assert not any(inserts) and len(inserts) == -(-5000 // (999 // columns))
