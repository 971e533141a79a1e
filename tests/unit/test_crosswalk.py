"""The crosswalk store: a full run's base, incremental runs' deltas laid over it, folded by the next full run."""

from __future__ import annotations

import pyarrow as pa

from trueup.crosswalk import CrosswalkStore
from trueup.duck import connect
from trueup.warehouse import Warehouse


def _cw(*rows):
    return pa.table({"domain": ["customer"] * len(rows), "source_system": [r[0] for r in rows],
                     "source_key": [r[1] for r in rows], "golden_id": [r[2] for r in rows]})


def _as_set(t):
    return set(zip(t.column("source_system").to_pylist(), t.column("source_key").to_pylist(),
                   t.column("golden_id").to_pylist()))


def test_deltas_lay_over_the_base_newest_last_and_a_full_run_folds_only_what_it_read(tmp_path):
    wh = Warehouse(tmp_path)
    xw = CrosswalkStore(wh, "customer")
    assert xw.read() is None and xw.counts() == {}
    xw.replace(_cw(("erp", "1", "G1"), ("crm", "a", "G1"), ("erp", "2", "G2")))
    xw.add(_cw(("crm", "a", "G2"), ("crm", "b", "G3")))  # a moved and a new record
    xw.add(_cw(("crm", "b", "G2")))  # moved again later: the newest wins
    assert _as_set(xw.read()) == {("erp", "1", "G1"), ("crm", "a", "G2"), ("erp", "2", "G2"), ("crm", "b", "G2")}
    assert xw.counts() == {"erp": 2, "crm": 2}
    plan = pa.table({"target_system": ["crm", "erp", "erp"], "target_key": ["b", "9", "2"]})
    assert _as_set(xw.keys_of(plan).append_column("golden_id", pa.array(["-"] * 2))) == {
        ("crm", "b", "-"), ("erp", "2", "-")}

    # a full run reads (base + both deltas), a sync adds a delta meanwhile, the full run writes
    full = CrosswalkStore(wh, "customer")
    seen = full.read()
    CrosswalkStore(wh, "customer").add(_cw(("erp", "3", "G9")))
    full.replace(seen)
    after = CrosswalkStore(wh, "customer")
    assert _as_set(after.read()) == _as_set(seen) | {("erp", "3", "G9")}  # the later delta survives
    assert len(list(after.delta_dir.glob("*.parquet"))) == 1  # the two it read were folded in


def test_a_view_over_the_store_answers_keyed_queries_without_loading_it(tmp_path):
    xw = CrosswalkStore(Warehouse(tmp_path), "customer")
    xw.replace(_cw(*[("erp", str(i), f"G{i}") for i in range(1000)]))
    xw.add(_cw(("erp", "7", "G1")))
    con = connect()
    assert xw.register(con, "cw")
    assert con.execute("SELECT golden_id FROM cw WHERE source_key = '7'").fetchall() == [("G1",)]
    assert con.execute("SELECT count(*) FROM cw").fetchone() == (1000,)
    con.close()


def test_a_delta_landing_while_a_full_run_lists_them_is_neither_folded_nor_lost(tmp_path, monkeypatch):
    """A sync's delta written between the full run's listing of the deltas and its read of them:
    the read must be of exactly what was listed (what `replace` then removes), or the late delta
    would be folded into the base and still lie over it, moving records back the next time."""
    wh = Warehouse(tmp_path)
    full = CrosswalkStore(wh, "customer")
    full.replace(_cw(("erp", "1", "G1"), ("crm", "a", "G1")))
    full.add(_cw(("crm", "b", "G2")))
    listing = full._deltas

    def listing_then_a_sync_adds():
        listed = listing()
        CrosswalkStore(wh, "customer").add(_cw(("crm", "c", "G3")))  # lands just after the listing
        return listed

    monkeypatch.setattr(full, "_deltas", listing_then_a_sync_adds)
    seen = full.read()
    monkeypatch.undo()
    assert _as_set(seen) == {("erp", "1", "G1"), ("crm", "a", "G1"), ("crm", "b", "G2")}
    full.replace(seen)
    after = CrosswalkStore(wh, "customer")
    assert _as_set(after.read()) == _as_set(seen) | {("crm", "c", "G3")}  # kept, as a delta
    assert len(list(after.delta_dir.glob("*.parquet"))) == 1
