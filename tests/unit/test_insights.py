"""Discrepancy history across runs, PII masking, freshness: the engine parts of the exception report."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from trueup import insights
from trueup.freshness import judge
from trueup.state import StateStore
from trueup.steps import WRITEBACK_SCHEMA
from trueup.systems.files import FileSystem, drop_stamp


def _outcomes(rows: list[dict]) -> pa.Table:
    base = {"change_id": None, "domain": "customer", "target_system": "erp", "action": "update",
            "golden_id": "cus_1", "target_key": "C1", "field": "city", "old_value": "a", "new_value": "b",
            "source_system": "crm", "rule": "r", "severity": "medium", "status": "applied", "error": None,
            "attempts": 1}
    out = []
    for i, r in enumerate(rows):
        row = {**base, **r}
        # like the plan's change_id: it depends on the new value (hashed, as no value may leak)
        row["change_id"] = row["change_id"] or hashlib.md5(f"{i}|{row['new_value']}".encode()).hexdigest()
        out.append(row)
    return pa.Table.from_pylist(out, schema=WRITEBACK_SCHEMA)


def test_discrepancy_key_ignores_the_new_value_and_history_tracks_first_last_seen_and_close(db_url):
    store = StateStore(db_url)  # the state store on SQLite, PostgreSQL and MariaDB
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    city = {"target_key": "C1", "field": "city"}
    phone = {"target_key": "C2", "field": "phone"}
    run1 = _outcomes([{**city, "new_value": "Austin"}, {**phone, "new_value": "+15125550100"}])
    # the same disagreement a day later, with a different value to write: same key, different change_id
    run2 = _outcomes([{**city, "new_value": "Dallas"}])
    k1, k2 = insights.discrepancy_keys(run1), insights.discrepancy_keys(run2)
    assert set(run1.column("change_id").to_pylist()).isdisjoint(run2.column("change_id").to_pylist())
    city_key = [r["discrepancy_key"] for r in k1.to_pylist() if r["field"] == "city"][0]
    assert k2.column("discrepancy_key").to_pylist() == [city_key]

    store.track_discrepancies("r1", k1, at=t0)
    store.track_discrepancies("r1", k1, at=t0)  # a re-executed report step counts once
    store.track_discrepancies("r2", k2, at=t0 + timedelta(days=1))
    h = {r["field"]: r for r in store.discrepancy_history().to_pylist()}
    assert h["city"]["runs_seen"] == 2 and h["city"]["first_seen_run"] == "r1" and h["city"]["last_seen_run"] == "r2"
    assert h["city"]["closed_at"] is None
    assert h["phone"]["closed_at"] is not None  # not seen by the full run r2: corrected
    # an incremental run sees only what changed: it closes nothing
    store.track_discrepancies("r3", k1.slice(0, 0), full=False, at=t0 + timedelta(days=2))
    assert store.discrepancy_history(open_only=True).column("field").to_pylist() == ["city"]
    # seen again after being closed: a new episode
    store.track_discrepancies("r4", k1, at=t0 + timedelta(days=3))
    h = {r["field"]: r for r in store.discrepancy_history().to_pylist()}
    assert h["phone"]["closed_at"] is None and h["phone"]["first_seen_run"] == "r4" and h["phone"]["runs_seen"] == 1


def test_a_report_reads_open_and_just_closed_discrepancies_and_the_store_aggregates_days_to_close(db_url):
    """Closed discrepancies pile up with every nightly: a report reads the open ones and those
    just closed, and the mean days to close (over insights.CLOSED_WINDOW) is aggregated by the
    store on SQLite, PostgreSQL and MariaDB alike."""
    store = StateStore(db_url)
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    rows = _outcomes([{"target_key": "C1", "field": "city"}, {"target_key": "C2", "field": "phone"},
                      {"target_key": "C3", "field": "email"}])
    keys = insights.discrepancy_keys(rows)
    by_field = {r["field"]: i for i, r in enumerate(keys.to_pylist())}
    store.track_discrepancies("r1", keys, at=t0)
    store.track_discrepancies("r2", keys.take([by_field["city"], by_field["email"]]), at=t0 + timedelta(days=2))
    # a fraction of a second: MariaDB keeps whole seconds, the just-closed read must still see it
    at = t0 + timedelta(days=40, hours=12, microseconds=700_000)
    store.track_discrepancies("r3", keys.take([by_field["city"]]), at=at)  # email closed now
    read = store.discrepancy_history(closed_since=at - timedelta(seconds=1))
    assert sorted(read.column("field").to_pylist()) == ["city", "email"]  # phone was closed 38 days back
    assert store.discrepancy_history().num_rows == 3  # all of it is kept
    days = store.mean_days_to_close(at - insights.CLOSED_WINDOW)
    assert days.keys() == {"customer"} and abs(days["customer"] - 40.5) < 2e-5  # phone's 2 days: out of it
    assert abs(store.mean_days_to_close(t0)["customer"] - (40.5 + 2) / 2) < 2e-5
    facts = insights.RunFacts(run_id="r3", at=at, dry_run=False, outcomes=_outcomes([]), matched={}, golden={},
                              quarantined=None, extracts=None, history=read, previous_runs=None,
                              days_to_close=days)
    _, _, kpis = insights.build(facts)
    close = {r["domain"]: r["value"] for r in kpis.to_pylist() if r["kpi"] == "mean_days_to_close"}
    assert close.keys() == {"customer"} and abs(close["customer"] - 40.5) < 2e-5
    open_ = {r["kpi"]: r["value"] for r in kpis.to_pylist() if r["domain"] == "customer"}
    assert open_["open_discrepancies"] == 1  # city


def test_the_report_counts_days_to_close_of_discrepancies_closed_by_earlier_runs(tmp_path, config):
    """The report hands insights only the open and just-closed discrepancies; the mean days to
    close still counts one an earlier run closed, from the store's aggregate."""
    from trueup import report
    from trueup.warehouse import Warehouse

    store = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    t0 = datetime(2026, 3, 1, tzinfo=timezone.utc)
    city, phone = {"target_key": "C1", "field": "city"}, {"target_key": "C2", "field": "phone"}
    for run, rows, day in (("r1", [city, phone], 0), ("r2", [city], 3), ("r3", [city], 5)):  # r2 closes phone
        report.exception_report(store, Warehouse(tmp_path / "wh"), config, {"run_id": run, "dry_run": False},
                                _outcomes(rows), tmp_path / "reports", domains=["customer"],
                                at=t0 + timedelta(days=day))
    kpis = [r for r in store.kpis().to_pylist() if r["kpi"] == "mean_days_to_close"]
    assert {(r["run_id"], r["domain"], r["value"]) for r in kpis} == {("r2", "customer", 3.0), ("r3", "customer", 3.0)}


def test_report_figures_mask_emails_phones_and_tax_ids():
    email, phone, tax = "jane.doe@example.com", "+15125550100", "DE123456789"
    out = _outcomes([{"field": "email", "old_value": "old.name@example.com", "new_value": email},
                     {"field": "phone", "new_value": phone, "target_key": "C2"},
                     {"field": "tax_id", "new_value": tax, "target_key": "C3", "action": "create"}])
    facts = insights.RunFacts(run_id="r1", at=datetime.now(timezone.utc), dry_run=False, outcomes=out,
                              matched={}, golden={}, quarantined=None, extracts=None, history=None,
                              previous_runs=None)
    figures, headline, kpis = insights.build(facts)
    text = "\n".join(str(v) for f in figures.values() for t in (f.data, f.rows)
                     for col in t.columns for v in col.to_pylist())
    for secret in (email, "old.name@example.com", phone, tax):
        assert secret not in text
    assert "j***@example.com" in text and "********0100" in text and "*******6789" in text
    assert headline["applied"] == 3 and headline["discrepancies"] == 3


def test_freshness_of_a_file_drop_is_its_stamp(tmp_path, config):
    wms = FileSystem("wms", tmp_path, config.systems.systems["wms"])
    old = datetime(2026, 1, 1, 22, 0, tzinfo=timezone.utc)
    for at in (old - timedelta(days=1), old):
        d = tmp_path / "exports" / drop_stamp(at)
        d.mkdir(parents=True)
        (d / "_SUCCESS").write_text("")
    (tmp_path / "exports" / drop_stamp(old + timedelta(days=1))).mkdir()  # incomplete: never read
    assert wms.data_as_of("inventory") == old
    sla = config.settings.freshness["wms"].max_age_hours
    assert judge("wms", "inventory", old, sla, now=old + timedelta(hours=sla - 1)).fresh
    late = judge("wms", "inventory", old, sla, now=old + timedelta(hours=sla + 1))
    assert not late.fresh and "OLDER than its SLA" in late.describe()


def test_report_reads_review_queue_dead_letters_and_approvals_when_present_and_degrades_without(tmp_path, config):
    """Tables other parts of trueup keep (review queue, dead letters) and statuses they write
    (pending approval) show up in the report; a run with no warehouse tables still reports."""
    import sqlalchemy as sa

    from trueup import report
    from trueup.warehouse import Warehouse

    store = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    out = _outcomes([{"status": "applied"}, {"status": "pending_approval", "field": "credit_limit"},
                     {"status": "retryable_error", "field": "phone", "new_value": "+15125550100",
                      # a system echoing the record into its error (what PostgreSQL's unique violation does)
                      "error": "erp.customer: Key (email)=(bob.smith@acme.example) already exists; "
                               "failing row contains (C1, +1 (512) 555-0199, 98-7651432)"}])
    summary = {"run_id": "r1", "dry_run": False}
    _, headline, _ = report.exception_report(store, Warehouse(tmp_path / "wh"), config, summary, out,
                                             tmp_path / "reports", domains=["customer"])
    # the state store keeps its dead letters table from the start (write-back safety): none open
    assert headline["review_queue"] is None and headline["dead_letters"] == 0
    assert (headline["applied"], headline["pending_approval"], headline["failed"]) == (1, 1, 1)

    with store.engine.begin() as c:
        c.execute(sa.text("CREATE TABLE review_queue (run_id TEXT, left_key TEXT, right_key TEXT)"))
        c.execute(sa.text("INSERT INTO review_queue VALUES ('r2', 'a', 'b'), ('r2', 'c', 'd'), ('r1', 'e', 'f')"))
        # one open dead letter and one a later run resolved: the report counts what is open
        c.execute(sa.text("INSERT INTO dead_letters (change_id, status) VALUES ('x', 'open'), ('y', 'resolved')"))
    path, headline, _ = report.exception_report(store, Warehouse(tmp_path / "wh"), config,
                                                {"run_id": "r2", "dry_run": False}, out, tmp_path / "reports",
                                                domains=["customer"])
    assert (headline["review_queue"], headline["dead_letters"]) == (2, 1)
    page = path.read_text()
    assert "Review queue" in page and "+15125550100" not in page
    written = page + "".join(f.read_text() for f in (tmp_path / "reports").rglob("*.csv"))
    assert "already exists" in written  # the error is shown, its personal data masked
    for pii in ("bob.smith", "555-0199", "7651432", "5125550100"):
        assert pii not in written, pii
    assert [r["run_id"] for r in store.kpis().to_pylist()].count("r2") > 0


def test_a_freshness_sla_for_an_unknown_system_is_rejected(tmp_path):
    import shutil

    import pytest

    from tests.conftest import CONFIG_DIR
    from trueup.config import Config, ConfigError

    shutil.copytree(CONFIG_DIR, tmp_path / "config")
    f = tmp_path / "config" / "trueup.yaml"
    f.write_text(f.read_text().replace("wms: {max_age_hours: 26}", "wsm: {max_age_hours: 26}"))
    with pytest.raises(ConfigError, match="freshness: unknown system.*wsm"):
        Config.load(tmp_path / "config")


@pytest.mark.parametrize("source, share_rows", [("table", 4_000_000), ("parquet", 4_000_000), ("parquet", 3)])
def test_match_rate_counts_records_in_clusters_across_systems_and_lists_the_ones_not_matched(
        source, share_rows, tmp_path, monkeypatch):
    """The same figures from Arrow tables or Parquet files, grouped at once or in shares of clusters."""
    monkeypatch.setattr(insights, "CLUSTER_SHARE_ROWS", share_rows)
    matched = {"customer": pa.table({
        "source_system": ["erp", "crm", "wms", "erp", "crm", "crm", "erp", "crm", "erp", "crm"],
        "source_key": ["1", "A", "W1", "2", "B", "C", "3", "D", "4", "E"],
        # G1 spans three systems, G3 two, G2 only the ERP (twice over), B and C have no cluster,
        # 3 and D are held
        "golden_id": ["G1", "G1", "G1", "G2", None, None, "G2", "G1", "G3", "G3"],
        "held": [False, False, False, False, False, False, True, True, False, False]}),
        # another domain's golden ids may read the same: G1 here is not the customers' G1
        "product": pa.table({"source_system": ["erp", "crm", "erp"], "source_key": ["P1", "P1", "P2"],
                             "golden_id": ["G1", "G1", "G9"], "held": [False, False, False]})}
    if source == "parquet":
        for d in list(matched):
            pq.write_table(matched[d], tmp_path / f"{d}_matched.parquet")
            matched[d] = tmp_path / f"{d}_matched.parquet"
    facts = insights.RunFacts(run_id="r1", at=datetime.now(timezone.utc), dry_run=False, outcomes=_outcomes([]),
                              matched=matched, golden={}, quarantined=None, extracts=None, history=None,
                              previous_runs=None)
    figures, headline, _ = insights.build(facts)
    fig = figures["match_rate"]
    assert fig.data.to_pylist() == [
        {"domain": "customer", "records": 10, "matched": 5, "held": 2, "match_rate": 0.5},
        {"domain": "product", "records": 3, "matched": 2, "held": 0, "match_rate": 0.6667}]
    assert headline["match_rate"] == round(7 / 13, 4)
    # held D is not matched, though its cluster spans the three systems
    assert [(r["domain"], r["source_key"], r["systems_in_cluster"], r["held"]) for r in fig.rows.to_pylist()] == [
        ("customer", "B", 0, False), ("customer", "C", 0, False), ("customer", "D", 3, True),
        ("customer", "2", 1, False), ("customer", "3", 1, True), ("product", "P2", 1, False)]
    assert not any(fig.rows.column("matched").to_pylist())
    agree = {(r["domain"], r["system"]): r["records"] for r in figures["agreement"].data.to_pylist()}
    assert agree == {("customer", "crm"): 4, ("customer", "erp"): 3, ("customer", "wms"): 1,  # held: not counted
                     ("product", "crm"): 1, ("product", "erp"): 2}

