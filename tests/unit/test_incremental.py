"""Watermarks, reads since a point in time, tombstones: the pieces of incremental sync, fast."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pyarrow as pa
import pytest
import pyarrow.csv as pacsv

from tests.unit.test_reconcile import changes, staged
from trueup import reconcile
from trueup.incremental import high_water
from trueup.state import StateStore
from trueup.steps import split_deleted
from trueup.systems.files import FileSystem, drop_stamp

T = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)


def test_watermark_moves_only_when_the_run_says_so_and_never_back(tmp_path):
    store = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    assert store.since("erp", "customer", timedelta(minutes=10)) is None  # first run: read everything
    store.stage_watermark("dry", "erp", "customer", T)
    assert store.advance_watermarks("dry", apply=False) == []  # a dry-run drops what it staged
    assert store.watermark("erp", "customer") is None
    store.stage_watermark("r1", "erp", "customer", T)
    store.stage_watermark("failed", "erp", "customer", T + timedelta(hours=5))  # never advanced
    assert [m["high_water"] for m in store.advance_watermarks("r1")] == [T]
    assert store.watermark("erp", "customer") == T
    assert store.since("erp", "customer", timedelta(minutes=10)) == T - timedelta(minutes=10)
    store.stage_watermark("r0", "erp", "customer", T - timedelta(days=1))  # an older read finishing late
    assert store.advance_watermarks("r0") == []
    assert store.watermark("erp", "customer") == T


def _drop(root, at: datetime, rows: list[dict]) -> None:
    d = root / "exports" / drop_stamp(at)
    d.mkdir(parents=True)
    pacsv.write_csv(pa.Table.from_pylist(rows), d / "stock.csv")
    (d / "_SUCCESS").write_text("")


def test_file_system_reads_only_a_drop_not_yet_read_and_only_rows_changed_since(tmp_path, config):
    wms = FileSystem("wms", tmp_path, config.systems.systems["wms"])
    row = {"sku": "S1", "location": "DC-EAST", "on_hand": "5", "reserved": "0", "in_transit": "0",
           "returns_pending": "0", "counted_at": (T - timedelta(days=2)).isoformat()}
    _drop(tmp_path, T - timedelta(days=1), [row])
    _drop(tmp_path, T, [row, {**row, "sku": "S2", "counted_at": (T - timedelta(hours=1)).isoformat()},
                        {**row, "sku": "S3", "counted_at": ""}])
    assert wms.extract("inventory").num_rows == 3  # no since: the newest drop, whole
    assert wms.read_drop["inventory"] == T
    since = T - timedelta(hours=12)
    got = wms.extract("inventory", since=since)
    assert sorted(got.column("sku").to_pylist()) == ["S2", "S3"]  # changed after, or cannot say
    assert high_water(wms, "inventory", got, "counted_at") == T
    assert wms.extract("inventory", since=T).num_rows == 0  # that drop was read already
    assert wms.read_drop["inventory"] is None


def test_a_future_dated_row_never_carries_the_watermark_past_now(caplog):
    """One row stamped in 2099 (a typo, a bad import) must not set the watermark to 2099: every
    later sync would then read nothing. The newest stamp not after now is the high water; the
    future row is read again by the next sync (it stays after the watermark) and is reported."""
    crm = SimpleNamespace(name="crm")  # a client that reads rows (not file drops)
    now = datetime.now(timezone.utc)
    newest = (now - timedelta(minutes=5)).replace(microsecond=0)
    raw = pa.table({"id": ["A1", "A2", "A3"],
                    "updated_at": [(now - timedelta(days=1)).isoformat(), newest.isoformat(), "2099-01-01T00:00:00Z"]})
    with caplog.at_level("WARNING", logger="trueup.incremental"):
        assert high_water(crm, "customer", raw, "updated_at") == newest
    assert "crm.customer" in caplog.text and "1 row" in caplog.text and "2099" in caplog.text
    only_future = raw.filter(pa.compute.equal(raw.column("id"), "A3"))
    assert high_water(crm, "customer", only_future, "updated_at") is None
    wms = SimpleNamespace(name="wms", read_drop={"inventory": now + timedelta(hours=3)})  # the 3PL's clock ahead
    assert now <= high_water(wms, "inventory", raw, None) <= datetime.now(timezone.utc)
    wms.read_drop["inventory"] = newest
    assert high_water(wms, "inventory", raw, None) == newest


def test_deleted_rows_are_split_off_as_tombstones():
    raw = pa.table({"id": ["A1", "A2", "A3"], "deleted": ["false", "true", None]})
    live, dead = split_deleted(raw)
    assert live.column("id").to_pylist() == ["A1", "A3"] and dead.column("id").to_pylist() == ["A2"]
    assert split_deleted(pa.table({"id": ["A1"]}))[1] is None
    # a night without deletes hands the extract on as it is: no copy of every live row
    nothing = pa.table({"id": ["A1", "A2"], "deleted": ["false", None]})
    live, dead = split_deleted(nothing)
    assert live is nothing and dead is None


def _customers():
    return [
        {"source_system": "erp", "source_key": "100", "match_key": "100", "role": "sold_to", "name": "Acme",
         "active": True},
        {"source_system": "wms", "source_key": "100", "match_key": "100", "name": "Acme"},
        {"source_system": "erp", "source_key": "200", "match_key": "200", "role": "sold_to", "name": "Bolt",
         "active": True},
        {"source_system": "crm", "source_key": "B1", "match_key": "200", "role": "sold_to", "name": "Bolt",
         "active": True},
    ]


def test_a_deleted_crm_account_deactivates_the_erp_customer_never_deletes(config):
    tomb = staged("customer", [{"source_system": "crm", "source_key": "A1", "match_key": "100", "name": "Acme"},
                               {"source_system": "crm", "source_key": "B2", "match_key": "200", "name": "Bolt"}])
    m, _ = reconcile.match("customer", staged("customer", _customers()))
    g = reconcile.build_golden("customer", m, config, T.date())
    plan = reconcile.build_plan("customer", m, g, config, tomb)
    # Acme: its only CRM account is gone -> deactivate in the ERP; Bolt: a live CRM account remains
    assert changes(plan) == {("erp", "100", "active", "true", "false")}
    row = plan.to_pylist()[0]
    assert row["action"] == "deactivate" and row["rule"] == "customer.tombstone: deleted in crm"
    # once deactivated, nothing more to do
    done = [dict(r, active=False) if r["source_key"] == "100" and r["source_system"] == "erp" else r
            for r in _customers()]
    m, _ = reconcile.match("customer", staged("customer", done))
    g = reconcile.build_golden("customer", m, config, T.date())
    assert reconcile.build_plan("customer", m, g, config, tomb).num_rows == 0


def test_each_systems_read_goes_out_at_once_and_a_failure_is_raised():
    import threading

    from trueup.steps import each_system

    together = threading.Barrier(3, timeout=10)  # broken unless all three reads are out at once

    def read(system: str) -> str:
        together.wait()
        return system.upper()

    assert each_system(read, ["erp", "crm", "wms"]) == {"erp": "ERP", "crm": "CRM", "wms": "WMS"}

    def failing(system: str) -> str:
        if system == "crm":
            raise ConnectionError("crm: the API is down")
        return system

    with pytest.raises(ConnectionError, match="crm: the API is down"):
        each_system(failing, ["erp", "crm", "wms"])
