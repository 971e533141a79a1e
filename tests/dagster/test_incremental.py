"""incremental_sync end to end on the demo: after a nightly run, a simulated day of edits is found
exactly (a), a three-day backfill equals three daily runs (b), a failed run keeps its watermarks
and the rerun catches up (c), a deleted CRM account is deactivated in the ERP, not lost (d)."""

from __future__ import annotations

import shutil
import sqlite3
from contextlib import closing
from datetime import datetime, timedelta, timezone

import dagster as dg
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from assets.sync import WINDOW_TAG
from pipelines.definitions import build_definitions
from sandbox.changes import simulate_day
from sandbox.score import score
from trueup.crosswalk import CrosswalkStore
from trueup.state import StateStore
from trueup.warehouse import Warehouse

pytestmark = pytest.mark.slow


def _job(home, **sandbox_kw):
    return build_definitions(home=home, **sandbox_kw).resolve_job_def


def _sync(home, raise_on_error=True, **sandbox_kw):
    day = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    return _job(home, **sandbox_kw)("incremental_sync").execute_in_process(
        instance=dg.DagsterInstance.ephemeral(), partition_key=day, tags={WINDOW_TAG: "watermark"},
        raise_on_error=raise_on_error)


def _store(home) -> StateStore:
    return StateStore(f"sqlite:///{home / 'state.db'}")


def _watermarks(home) -> dict:
    with closing(sqlite3.connect(home / "state.db")) as c:
        return {(s, e): hw for s, e, hw in c.execute("SELECT system, entity, high_water FROM watermarks")}


@pytest.fixture(scope="module")
def reconciled(tmp_path_factory, demo_template):
    """The demo after one nightly full run (systems in agreement, crosswalk and watermarks set)."""
    home = tmp_path_factory.mktemp("reconciled") / "home"
    shutil.copytree(demo_template, home / "demo")
    result = _job(home)("nightly_reconciliation").execute_in_process(instance=dg.DagsterInstance.ephemeral())
    assert result.success
    return home


def _copy(reconciled, tmp_path):
    home = tmp_path / "home"
    shutil.copytree(reconciled, home)
    return home


@pytest.fixture(scope="module")
def after_day(reconciled, tmp_path_factory):
    """A day of 1% edits, then one incremental run."""
    home = tmp_path_factory.mktemp("day") / "home"
    shutil.copytree(reconciled, home)
    truth = simulate_day(home / "demo", share=0.01, seed=11)
    before = _watermarks(home)
    result = _sync(home)
    return home, truth, before, result


def test_a_incremental_finds_exactly_the_discrepancies_the_day_caused(after_day, tmp_path):
    home, truth, before, result = after_day
    assert result.success
    assert len(truth) >= 30 and truth["domain"].nunique() == 4
    truth.to_csv(tmp_path / "truth.csv", index=False)
    ledger = _store(home).ledger(result.run_id)
    s = score(tmp_path / "truth.csv", ledger)
    assert s.missed.empty and s.unexpected.empty, (s.missed.head(20), s.unexpected.head(20))
    assert s.recall == 1.0 and s.precision == 1.0
    assert set(ledger.column("status").to_pylist()) == {"applied"}
    # it read the change, not the landscape
    changed = sum(pq.read_table(home / "warehouse" / f"{d}_changes" / f"{result.dagster_run.tags['dagster/partition']}.parquet").num_rows
                  for d in ("customer", "product", "price", "inventory"))
    staged = sum(Warehouse(home / "warehouse").read(f"{d}_staged").num_rows
                 for d in ("customer", "product", "price", "inventory"))
    assert changed < staged / 5
    after = _watermarks(home)
    assert all(after[k] >= before[k] for k in before) and after != before
    run = _store(home).runs().to_pylist()[-1]
    assert run["mode"] == "incremental" and run["status"] == "succeeded"


def test_d_deleted_crm_account_is_deactivated_in_the_erp_not_lost(after_day):
    home, truth, _, result = after_day
    deleted = truth[truth["kind"] == "day_crm_account_deleted"]
    assert len(deleted) >= 1
    keys = deleted["key"].tolist()
    with closing(sqlite3.connect(home / "demo" / "erp.sqlite")) as erp:
        rows = erp.execute(f"SELECT customer_number, is_active FROM erp_customer WHERE customer_number IN "
                           f"({','.join('?' * len(keys))})", keys).fetchall()
    assert sorted(rows) == sorted((k, 0) for k in keys)  # still there, inactive
    with closing(sqlite3.connect(home / "demo" / "crm" / "crm.sqlite")) as crm:
        ids = [r[0] for r in crm.execute(f"SELECT id FROM accounts WHERE deleted = 'true' AND erp_number IN "
                                         f"({','.join('?' * len(keys))})", keys)]
    assert len(ids) == len(keys)
    crosswalk = CrosswalkStore(Warehouse(home / "warehouse"), "customer").read().to_pandas()
    assert set(ids) <= set(crosswalk.loc[crosswalk["source_system"] == "crm", "source_key"])
    led = _store(home).ledger(result.run_id).to_pandas()
    deact = led[(led["action"] == "deactivate")]
    assert sorted(deact["target_key"]) == sorted(keys) and set(deact["system"]) == {"erp"}
    assert set(deact["new_value"]) == {"false"} and set(deact["status"]) == {"applied"}


def test_sync_keeps_the_pending_approvals_of_records_it_did_not_touch(reconciled, tmp_path):
    """A sync's plan covers the records it touched, not the domain: an approval waiting for a
    record the sync did not plan stays pending (only a whole plan can tell a proposal is gone)."""
    home = _copy(reconciled, tmp_path)
    store = _store(home)
    waiting = {"change_id": "c-untouched", "approval_id": "a-untouched", "target_system": "erp",
               "target_key": "G-NOT-TOUCHED", "golden_id": "G-NOT-TOUCHED", "field": "name",
               "action": "create", "old_value": None, "new_value": "Untouched Ltd", "rule": "create in erp",
               "severity": "medium", "approval_reason": "creates need approval"}
    store.request_approvals("nightly-before", "customer", [waiting])
    simulate_day(home / "demo", share=0.01, seed=14)
    result = _sync(home)
    assert result.success
    written = {(r["entity"], r["system"]) for r in _store(home).ledger(result.run_id).to_pylist()}
    assert ("customer", "erp") in written  # the sync wrote where the approval waits
    after = {r["change_id"]: r for r in _store(home).approvals().to_pylist()}
    assert after["c-untouched"]["status"] == "pending", after["c-untouched"]


def test_c_failed_run_keeps_watermarks_and_the_rerun_catches_up(reconciled, tmp_path):
    home = _copy(reconciled, tmp_path)
    truth = simulate_day(home / "demo", share=0.01, seed=12)
    truth.to_csv(tmp_path / "truth.csv", index=False)
    before = _watermarks(home)
    failed = _sync(home, raise_on_error=False, crm={"write_fault_rate": 1.0, "fault_seed": 3,
                                                         "write_fault_kinds": ["429", "500"]})
    assert not failed.success
    assert any(ev.is_step_failure and "crm_sync_writeback" in ev.step_key for ev in failed.all_events)
    assert _watermarks(home) == before  # nothing moved
    with closing(sqlite3.connect(home / "state.db")) as c:
        assert c.execute("SELECT count(*) FROM watermark_pending WHERE run_id = ?", [failed.run_id]).fetchone()[0] > 0

    rerun = _sync(home)
    assert rerun.success
    store = _store(home)
    both = pd.concat([store.ledger(failed.run_id).to_pandas(), store.ledger(rerun.run_id).to_pandas()])
    s = score(tmp_path / "truth.csv", pa.Table.from_pandas(both, preserve_index=False))
    assert s.missed.empty and s.unexpected.empty, (s.missed.head(20), s.unexpected.head(20))
    rerun_systems = set(store.ledger(rerun.run_id).column("system").to_pylist())
    assert rerun_systems == {"crm"}  # the ERP and WMS corrections went through the first time
    after = _watermarks(home)
    assert after != before and all(after[k] >= before[k] for k in before)


def test_dry_run_sync_moves_no_watermark(reconciled, tmp_path):
    home = _copy(reconciled, tmp_path)
    simulate_day(home / "demo", share=0.01, seed=13)
    before = _watermarks(home)
    day = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    result = _job(home)("incremental_sync").execute_in_process(
        instance=dg.DagsterInstance.ephemeral(), partition_key=day,
        tags={WINDOW_TAG: "watermark", "trueup/dry_run": "true"})
    assert result.success
    assert _watermarks(home) == before
    assert set(_store(home).ledger(result.run_id).column("status").to_pylist()) <= {"dry_run"}


VOLATILE = {"extracted_at"}


def _partition_files(home) -> dict:
    out = {}
    for path in sorted((home / "warehouse").glob("*/20??-??-??.parquet")):
        t = pq.read_table(path)
        df = t.drop_columns([c for c in t.column_names if c in VOLATILE]).to_pandas()
        out[f"{path.parent.name}/{path.stem}"] = df.sort_values(list(df.columns)).reset_index(drop=True) \
            if len(df) else df
    return out


def test_b_backfill_of_three_days_equals_three_daily_runs(reconciled, tmp_path):
    base = _copy(reconciled, tmp_path / "base")
    today = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    days = [today - timedelta(days=n) for n in (3, 2, 1)]
    truth = pd.concat([simulate_day(base / "demo", share=0.005, seed=20 + i, at=d + timedelta(hours=8),
                                    span=timedelta(hours=10)) for i, d in enumerate(days)])
    keys = [d.strftime("%Y-%m-%d") for d in days]
    one = tmp_path / "one"
    shutil.copytree(base, one)
    daily = tmp_path / "daily"
    shutil.copytree(base, daily)

    backfill = _job(one)("incremental_sync").execute_in_process(
        instance=dg.DagsterInstance.ephemeral(),
        tags={"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]})
    assert backfill.success
    runs = [_job(daily)("incremental_sync").execute_in_process(instance=dg.DagsterInstance.ephemeral(),
                                                                partition_key=k) for k in keys]
    assert all(r.success for r in runs)

    a, b = _partition_files(one), _partition_files(daily)
    assert set(a) == set(b) and {k.split("/")[1] for k in a} == set(keys)
    base_ids = set(_store(base).ledger().to_pandas()["run_id"])
    lb = _store(daily).ledger().to_pandas()
    lb = lb[~lb["run_id"].isin(base_ids)]
    corrected = set(zip(lb["system"], lb["target_key"]))
    for name in a:
        if name.split("/")[0].endswith("_changes"):
            # what the systems said changed that day, as read: run day by day, a correction made
            # for day 1 moves its record's change time to the correction, so a later day no longer
            # lists that record; nothing else may differ
            both = a[name].merge(b[name], how="outer", indicator=True)
            assert (both["_merge"] != "right_only").all(), name
            extra = both[both["_merge"] == "left_only"]
            assert set(zip(extra["source_system"], extra["source_key"])) <= corrected, name
        else:  # the results: plans, outcomes, watermarks
            pd.testing.assert_frame_equal(a[name], b[name], check_dtype=False, obj=name)
    assert sum(len(a[f"{d}_changes/{k}"]) for d in ("customer", "price") for k in keys) > 0
    for domain in ("customer", "product", "price", "inventory"):
        cw = [CrosswalkStore(Warehouse(h / "warehouse"), domain).read().to_pandas()
              .sort_values(["source_system", "source_key"]).reset_index(drop=True) for h in (one, daily)]
        pd.testing.assert_frame_equal(*cw)
    cols = ["change_id", "system", "target_key", "field", "new_value", "status"]
    la = _store(one).ledger().to_pandas()
    la, lb = la[~la["run_id"].isin(base_ids)], lb[~lb["run_id"].isin(base_ids)]
    assert la["change_id"].is_unique and lb["change_id"].is_unique  # no duplicates
    assert la[cols].sort_values(cols).reset_index(drop=True).equals(lb[cols].sort_values(cols).reset_index(drop=True))
    truth.to_csv(tmp_path / "truth.csv", index=False)
    s = score(tmp_path / "truth.csv", pa.Table.from_pandas(la, preserve_index=False))
    assert s.recall == 1.0 and s.precision == 1.0, (s.missed.head(20), s.unexpected.head(20))

    # re-running a day replaces its results: same files, nothing new in the ledger
    again = _job(one)("incremental_sync").execute_in_process(instance=dg.DagsterInstance.ephemeral(),
                                                             partition_key=keys[1])
    assert again.success
    assert _store(one).ledger(again.run_id).num_rows == 0
    assert set(_partition_files(one)) == set(a)


def _checks(result) -> dict:
    return {f"{e.asset_key.to_user_string()}:{e.check_name}": e
            for e in (ev.event_specific_data for ev in result.all_events
                      if ev.event_type_value == "ASSET_CHECK_EVALUATION")}


def test_sync_that_would_change_most_crm_accounts_is_held_by_the_gate(reconciled, tmp_path):
    # a bad ERP job blocks 60% of the customers within the hour: the sync must not carry it on
    home = _copy(reconciled, tmp_path)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")
    with closing(sqlite3.connect(home / "demo" / "erp.sqlite")) as erp:
        erp.execute("UPDATE erp_customer SET credit_status = 'BLOCK', updated_at = ? "
                    "WHERE account_group IN ('SOLD', 'SHIP') AND abs(random()) % 10 < 6", [stamp])
        erp.commit()
    crm_log = home / "demo" / "crm" / "crm.sqlite"
    with closing(sqlite3.connect(crm_log)) as crm:
        writes_before = crm.execute("SELECT count(*) FROM write_log").fetchone()[0]
    before = _watermarks(home)

    held = _sync(home)
    c = _checks(held)["customer_sync_plan:gate_crm"]
    assert not c.passed and "would change" in c.description
    ledger = _store(home).ledger(held.run_id).to_pandas()
    crm_rows = ledger[ledger["system"] == "crm"]
    assert len(crm_rows) > 0 and set(crm_rows["status"]) == {"blocked"}
    with closing(sqlite3.connect(crm_log)) as crm:
        assert crm.execute("SELECT count(*) FROM write_log").fetchone()[0] == writes_before  # nothing sent
    assert _watermarks(home) == before  # the held changes are read again by the next sync
    run = _store(home).runs().to_pylist()[-1]
    assert run["status"] == "completed_with_failures"

    day = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    allowed = _job(home)("incremental_sync").execute_in_process(
        instance=dg.DagsterInstance.ephemeral(), partition_key=day,
        tags={WINDOW_TAG: "watermark", "trueup/allow_large_plan": "crm"})
    assert allowed.success and _checks(allowed)["customer_sync_plan:gate_crm"].passed
    applied = _store(home).ledger(allowed.run_id).to_pandas()
    assert set(applied.loc[applied["system"] == "crm", "status"]) == {"applied"}
    credit = crm_rows[crm_rows["field"] == "credit_status"]
    assert len(credit) > 0
    got = applied[(applied["system"] == "crm") & (applied["field"] == "credit_status")]
    assert set(got["target_key"]) == set(credit["target_key"])  # what was held is what went through
    assert _watermarks(home) != before


def test_sync_keeps_a_wrong_cross_reference_apart_as_the_nightly_did(reconciled, tmp_path):
    # the nightly's matcher found CRM accounts whose ERP number points at another customer and set
    # them apart; when such an account changes its email during the day, the sync must not carry
    # the email to the customer the wrong number points at
    home = _copy(reconciled, tmp_path)
    truth = pd.read_csv(home / "demo" / "match_truth.csv")
    wrong = truth[(truth["kind"] == "xref_wrong") & (truth["domain"] == "customer")]["key"].tolist()[:3]
    assert wrong
    stamp = datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")
    with closing(sqlite3.connect(home / "demo" / "crm" / "crm.sqlite")) as crm:
        crm.executemany("UPDATE accounts SET email = 'ap.' || id || '@moved.example.com', updated_at = ? "
                        "WHERE id = ?", [(stamp, k) for k in wrong])
        crm.commit()
        pointed = [r[0] for r in crm.execute(f"SELECT erp_number FROM accounts WHERE id IN "
                                              f"({','.join('?' * len(wrong))})", wrong)]
    with closing(sqlite3.connect(home / "demo" / "erp.sqlite")) as erp:
        emails_before = erp.execute(f"SELECT customer_number, email FROM erp_customer WHERE customer_number IN "
                                    f"({','.join('?' * len(pointed))})", pointed).fetchall()

    result = _sync(home)
    assert result.success
    ledger = _store(home).ledger(result.run_id).to_pandas()
    assert not ledger["target_key"].isin(wrong + pointed).any(), ledger[ledger["target_key"].isin(wrong + pointed)]
    with closing(sqlite3.connect(home / "demo" / "erp.sqlite")) as erp:
        assert erp.execute(f"SELECT customer_number, email FROM erp_customer WHERE customer_number IN "
                           f"({','.join('?' * len(pointed))})", pointed).fetchall() == emails_before
    changes = pq.read_table(home / "warehouse" / "customer_changes" /
                            f"{result.dagster_run.tags['dagster/partition']}.parquet").to_pandas()
    assert set(wrong) <= set(changes["source_key"])  # the sync did read the edits


def test_sync_holds_a_change_the_nightly_contract_would_quarantine(reconciled, tmp_path):
    # a CRM rep types an email without the domain's dot: the nightly contract (email_format)
    # quarantines such a record; the hourly sync must hold it too, not carry it to the ERP
    home = _copy(reconciled, tmp_path)
    stamp = datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")
    with closing(sqlite3.connect(home / "demo" / "crm" / "crm.sqlite")) as crm:
        good, bad = [r[0] for r in crm.execute(
            "SELECT id FROM accounts WHERE erp_number IS NOT NULL AND coalesce(deleted, 'false') <> 'true' "
            "AND email IS NOT NULL ORDER BY id LIMIT 2")]
        crm.executemany("UPDATE accounts SET email = ?, updated_at = ? WHERE id = ?",
                        [(f"ap.{good.lower()}@fixed.example.com", stamp, good), ("ap@examplecom", stamp, bad)])
        crm.commit()
    result = _sync(home)
    assert result.success
    ledger = _store(home).ledger(result.run_id).to_pandas()
    emails = ledger[ledger["field"] == "email"]
    assert f"ap.{good.lower()}@fixed.example.com" in set(emails["new_value"])  # a valid change still flows
    assert "ap@examplecom" not in set(ledger["new_value"].dropna())
    held = _store(home).quarantined(result.run_id).to_pandas()
    held = held[held["source_key"] == bad]
    assert held["problem"].tolist() == ["contract email_format failed"] and held["severity"].tolist() == ["error"]


def test_sync_holds_a_counterpart_the_nightly_contract_would_quarantine(reconciled, tmp_path):
    # the CRM account's email is unreadable as an email, not changed since the watermark (the
    # nightly held it); the ERP edits the same customer's city: the sync reads the CRM account as
    # the counterpart and must hold it as the nightly did, not carry its email to the ERP
    home = _copy(reconciled, tmp_path)
    with closing(sqlite3.connect(home / "demo" / "crm" / "crm.sqlite")) as crm:
        acc, number = crm.execute(
            "SELECT id, erp_number FROM accounts WHERE erp_number IS NOT NULL AND type = 'Sold To' "
            "AND coalesce(deleted, 'false') <> 'true' AND email IS NOT NULL ORDER BY id LIMIT 1").fetchone()
        crm.execute("UPDATE accounts SET email = 'ap@examplecom' WHERE id = ?", [acc])  # no new updated_at
        crm.commit()
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    with closing(sqlite3.connect(home / "demo" / "erp.sqlite")) as erp:
        email_before = erp.execute("SELECT email FROM erp_customer WHERE customer_number = ?", [number]).fetchone()[0]
        erp.execute("UPDATE erp_customer SET city = 'Springfield', updated_at = ? WHERE customer_number = ?",
                    [now, number])
        erp.commit()
    result = _sync(home)
    assert result.success
    assert "ap@examplecom" not in set(_store(home).ledger(result.run_id).to_pandas()["new_value"].dropna())
    with closing(sqlite3.connect(home / "demo" / "erp.sqlite")) as erp:
        assert erp.execute("SELECT email FROM erp_customer WHERE customer_number = ?", [number]).fetchone()[0] \
            == email_before
    held = _store(home).quarantined(result.run_id).to_pandas()
    assert (held[held["source_key"] == acc]["problem"] == "contract email_format failed").any()
