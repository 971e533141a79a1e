"""A large PostgreSQL table is read by several connections in page ranges that share one
snapshot: the parts together are exactly the table (no row twice, none missed, decimals exact),
and rows committed while the read runs do not leak into it."""

from __future__ import annotations

import threading
from decimal import Decimal

import pyarrow.compute as pc
import sqlalchemy as sa

from trueup.systems import sql_arrow
from trueup.systems.sql_arrow import read_arrow

ROWS = 60_000


def _table(url: str) -> tuple[sa.Engine, sa.Select]:
    engine = sa.create_engine(url)
    with engine.begin() as c:
        c.exec_driver_sql("CREATE TABLE stock (id BIGINT PRIMARY KEY, sku TEXT, on_hand BIGINT, "
                          "unit_price NUMERIC(18,4))")
        c.exec_driver_sql(f"INSERT INTO stock SELECT g, 'SKU-' || g, g * 3, g / 7.0 "
                          f"FROM generate_series(1, {ROWS}) g")
        c.exec_driver_sql("DELETE FROM stock WHERE id %% 10 = 0")  # dead tuples inside the page ranges
    t = sa.table("stock", sa.column("id"), sa.column("sku"), sa.column("on_hand"), sa.column("unit_price"))
    return engine, sa.select(t.c.id, t.c.sku, t.c.on_hand, t.c.unit_price)


def test_parallel_snapshot_read_is_the_whole_table_once(server_dbs, monkeypatch):
    engine, stmt = _table(server_dbs.new("postgresql"))
    single = read_arrow(engine, stmt)
    monkeypatch.setattr(sql_arrow, "PARALLEL_MIN_PAGES", 1)  # the test table is small
    parallel = read_arrow(engine, stmt, table="stock", readers=3)
    assert parallel.method == "adbc x3"
    assert single.method == "adbc"
    assert parallel.table.num_rows == single.table.num_rows == ROWS - ROWS // 10
    assert pc.count_distinct(parallel.table.column("id")).as_py() == parallel.table.num_rows
    assert parallel.table.sort_by("id").equals(single.table.sort_by("id"))
    row = parallel.table.filter(pc.equal(parallel.table.column("id"), 7)).to_pylist()[0]
    assert row["unit_price"] == Decimal("1.0000") and str(parallel.table.schema.field("unit_price").type) == \
        "decimal128(18, 4)"
    engine.dispose()


def test_rows_committed_during_the_read_stay_out(server_dbs, monkeypatch):
    engine, stmt = _table(server_dbs.new("postgresql"))
    monkeypatch.setattr(sql_arrow, "PARALLEL_MIN_PAGES", 1)
    exported = threading.Event()
    real = sql_arrow._snapshot_id

    def after_export(snapshot: str) -> str:
        # a writer commits between the snapshot's export and the other readers' import of it
        if not exported.is_set():
            exported.set()
            with engine.begin() as c:
                c.exec_driver_sql("INSERT INTO stock SELECT g, 'NEW', 0, 0 FROM generate_series(900001, 900500) g")
                c.exec_driver_sql("UPDATE stock SET on_hand = -1 WHERE id < 100")
        return real(snapshot)

    monkeypatch.setattr(sql_arrow, "_snapshot_id", after_export)
    read = read_arrow(engine, stmt, table="stock", readers=2)
    assert exported.is_set() and read.method == "adbc x2"
    assert read.table.num_rows == ROWS - ROWS // 10
    assert pc.sum(pc.equal(read.table.column("sku"), "NEW")).as_py() in (0, None)
    assert pc.min(read.table.column("on_hand")).as_py() >= 0
    engine.dispose()

