"""The SQL adapter's Arrow reads: exact types out of every path, and the fallback."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import pyarrow as pa
import pytest
import sqlalchemy as sa

from trueup.systems.sql_arrow import normalize, read_arrow, rows_to_arrow, unify


def test_postgres_numeric_from_adbc_becomes_an_exact_decimal():
    # ADBC hands NUMERIC over as text in an opaque extension type, with the typmod as metadata
    opaque = pa.opaque(pa.string(), type_name="numeric", vendor_name="PostgreSQL")
    storage = pa.array(["0.3000", "12.3456", None, "99999999999999.9999"])
    field = pa.field("price", opaque, metadata={"POSTGRESQL:type": "numeric",
                                                "POSTGRESQL:typmod": str(((18 << 16) | 4) + 4)})
    free = pa.field("ratio", opaque, metadata={"POSTGRESQL:type": "numeric", "POSTGRESQL:typmod": "-1"})
    raw = pa.table([pa.ExtensionArray.from_storage(opaque, storage),
                    pa.ExtensionArray.from_storage(opaque, pa.array(["1.5", "2", None, "1e3"]))],
                   schema=pa.schema([field, free]))
    out = normalize(raw)
    assert out.schema.field("price").type == pa.decimal128(18, 4)
    assert out.column("price").to_pylist() == [Decimal("0.3000"), Decimal("12.3456"), None,
                                               Decimal("99999999999999.9999")]
    assert out.schema.field("ratio").type == pa.string()  # no declared scale: kept as exact text
    assert out.schema.metadata is None and all(f.metadata is None for f in out.schema)


def test_chunks_that_disagree_on_a_type_still_make_one_table():
    a = rows_to_arrow(["k", "v"], [("a", None), ("b", None)])  # an all-NULL chunk
    b = rows_to_arrow(["k", "v"], [("c", Decimal("1.25")), ("d", Decimal("10.5"))])
    c = rows_to_arrow(["k", "v"], [("e", "n/a")])  # a text value in a decimal column
    out = unify([a, b, c])
    assert out.column("k").to_pylist() == ["a", "b", "c", "d", "e"]
    assert out.column("v").to_pylist() == [None, None, "1.25", "10.50", "n/a"]  # exact, at the widest scale
    assert unify([a, b]).column("v").to_pylist() == [None, None, Decimal("1.25"), Decimal("10.50")]


def test_sqlite_reads_by_adbc_with_its_values_bound(tmp_path):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'x.sqlite'}")
    with engine.begin() as c:
        c.exec_driver_sql("CREATE TABLE t (k TEXT PRIMARY KEY, name TEXT, qty INTEGER, updated_at TIMESTAMP)")
        c.exec_driver_sql("INSERT INTO t VALUES ('a', 'Müller', 9007199254740993, '2026-12-07 10:00:00'), "
                          "('b', '日本', 2, '2026-12-07 09:59:59.5'), ('c', 'O''Brien', 3, NULL)")
    t = sa.table("t", sa.column("k"), sa.column("name"), sa.column("qty"), sa.column("updated_at"))
    full = read_arrow(engine, sa.select(t.c.k, t.c.name, t.c.qty))
    assert full.method == "adbc"
    assert full.table.to_pylist() == [{"k": "a", "name": "Müller", "qty": 9007199254740993},
                                      {"k": "b", "name": "日本", "qty": 2}, {"k": "c", "name": "O'Brien", "qty": 3}]
    bound = read_arrow(engine, sa.select(t.c.k).where(t.c.qty > sa.bindparam("q", 5)))
    assert bound.method == "adbc" and bound.table.column("k").to_pylist() == ["a"]
    # a value is a value, never SQL: neither inlined nor able to widen the read
    injected = read_arrow(engine, sa.select(t.c.k).where(t.c.name == "x' OR '1'='1"))
    assert injected.method == "adbc" and injected.table.num_rows == 0
    quoted = read_arrow(engine, sa.select(t.c.k).where(t.c.name == "O'Brien"))
    assert quoted.method == "adbc" and quoted.table.column("k").to_pylist() == ["c"]
    # an expanded IN list's values are the cursor's to bind
    listed = sa.select(t.c.k).where(t.c.k.in_(["a", "c", "z"]))
    got = read_arrow(engine, listed)
    assert got.method == "cursor" and sorted(got.table.column("k").to_pylist()) == ["a", "c"]
    with pytest.raises(ValueError, match="expanded IN list"):
        read_arrow(engine, listed, method="adbc")
    # a `since` timestamp compares with the stored text as the cursor's driver binds it
    since = sa.select(t.c.k).where(t.c.updated_at > sa.bindparam("since", datetime(2026, 12, 7, 9, 59, 59)))
    by_adbc, by_cursor = read_arrow(engine, since), read_arrow(engine, since, method="cursor")
    assert by_adbc.method == "adbc" and by_cursor.method == "cursor"
    assert sorted(by_adbc.table.column("k").to_pylist()) == ["a", "b"]
    assert sorted(by_cursor.table.column("k").to_pylist()) == ["a", "b"]


def test_a_fast_path_that_fails_falls_back_to_the_cursor(tmp_path):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'x.sqlite'}")
    with engine.begin() as c:
        # SQLite lets a column change type from row to row; ADBC types columns from the first rows
        c.exec_driver_sql("CREATE TABLE t (v)")
        c.exec_driver_sql("WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 3000) "
                          "INSERT INTO t SELECT CASE WHEN n < 2500 THEN n ELSE 'x' || n END FROM g")
    read = read_arrow(engine, sa.select(sa.column("v")).select_from(sa.table("t")))
    assert read.table.num_rows == 3000
    assert read.table.column("v")[0].as_py() in (1, "1") and read.table.column("v")[-1].as_py() == "x3000"


def test_a_failed_fast_path_never_logs_the_password(caplog):
    # nothing listens on port 1: connectorx fails, its message must not carry the secret
    engine = sa.create_engine("mysql+pymysql://trueup:Sup3rSecret@127.0.0.1:1/nowhere")
    import pytest

    with pytest.raises(Exception):
        read_arrow(engine, sa.select(sa.column("a")).select_from(sa.table("t")))
    assert caplog.records and all("Sup3rSecret" not in r.getMessage() for r in caplog.records)


def test_sqlite_columns_that_start_null_stay_on_the_fast_path(tmp_path):
    # ADBC guesses a column that starts with NULLs as INT64, then meets text: the column is read
    # as text instead of the whole table falling back to the per-row cursor
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'x.sqlite'}")
    with engine.begin() as c:
        c.exec_driver_sql("CREATE TABLE t (k TEXT PRIMARY KEY, parent TEXT, valid_to DATE, qty INTEGER)")
        c.exec_driver_sql("WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 5000) "
                          "INSERT INTO t SELECT 'C' || n, CASE WHEN n > 4000 THEN 'P' || n END, "
                          "CASE WHEN n > 4500 THEN '2027-01-31' END, n FROM g")
        c.exec_driver_sql("INSERT INTO t VALUES ('Z', 12345, NULL, 7)")  # a number in a text column
    t = sa.table("t", sa.column("k"), sa.column("parent"), sa.column("valid_to"), sa.column("qty"))
    read = read_arrow(engine, sa.select(t.c.k, t.c.parent, t.c.valid_to, t.c.qty))
    assert read.method == "adbc"
    rows = {r["k"]: r for r in read.table.to_pylist()}
    assert len(rows) == 5001 and read.table.column_names == ["k", "parent", "valid_to", "qty"]
    assert rows["C1"] == {"k": "C1", "parent": None, "valid_to": None, "qty": 1}
    assert rows["C4999"]["parent"] == "P4999" and rows["C4999"]["valid_to"] == "2027-01-31"
    assert rows["Z"]["parent"] == "12345" and rows["Z"]["qty"] == 7


def test_a_sqlite_database_in_wal_mode_is_read_as_this_process_last_wrote_it(tmp_path):
    """ADBC's own copy of SQLite, beside this process's connections to a WAL-mode database, read
    a committed update's old rows and on closing deleted the log under them: such a database is
    read through the cursor (and an ADBC read asked for by name is refused)."""
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'wal.sqlite'}")
    t = sa.table("t", sa.column("k"), sa.column("a"))
    with engine.begin() as c:
        c.exec_driver_sql("PRAGMA journal_mode=WAL")
        c.exec_driver_sql("CREATE TABLE t (k TEXT PRIMARY KEY, a INTEGER)")
        c.exec_driver_sql("INSERT INTO t VALUES ('x', 1)")
    assert read_arrow(engine, sa.select(t)).table.to_pylist() == [{"k": "x", "a": 1}]
    with engine.begin() as c:  # the engine's pooled connection stays open: the log is not checkpointed
        c.exec_driver_sql("UPDATE t SET a = 2")
    got = read_arrow(engine, sa.select(t))
    assert got.method == "cursor" and got.table.to_pylist() == [{"k": "x", "a": 2}]
    with pytest.raises(ValueError, match="WAL"):
        read_arrow(engine, sa.select(t), method="adbc")
    with engine.begin() as c:  # the log is still there for the next commit
        c.exec_driver_sql("UPDATE t SET a = 3")
    assert (tmp_path / "wal.sqlite-wal").exists()
    assert read_arrow(engine, sa.select(t)).table.to_pylist() == [{"k": "x", "a": 3}]
    engine.dispose()
