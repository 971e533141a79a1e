"""The live read before writing: the rows of exactly the keys asked for, composite and typed
keys included, read by a join to the keys in a temporary table. And creates that set
different columns, each leaving the rest to the table."""

from __future__ import annotations

import re
import sqlite3

import sqlalchemy as sa
import yaml

from trueup.config import SystemsConfig
from trueup.systems.sql import SqlSystem

SYSTEM = yaml.safe_load("""
kind: sql
entities:
  inventory:
    table: stock
    key: [sku, location]
    fields:
      sku: sku
      location: location
      on_hand: {column: on_hand, transform: integer}
  price:
    table: price
    key: [price_list, sku, uom, min_qty]
    fields:
      price_list: price_list
      sku: sku
      uom: uom
      min_qty: {column: min_qty, transform: integer}
      unit_price: {column: unit_price, transform: decimal4}
""")


def _price_table(md: sa.MetaData) -> sa.Table:
    """A price list keyed by list, SKU, unit and an integer minimum quantity."""
    return sa.Table("price", md, *[sa.Column(c, sa.String(32), primary_key=True) for c in ("price_list", "sku", "uom")],
                    sa.Column("min_qty", sa.Integer, primary_key=True, autoincrement=False),
                    sa.Column("unit_price", sa.Numeric(18, 4)))


def test_the_rows_of_exactly_the_keys_asked_for(db_url):
    url = db_url
    engine = sa.create_engine(url)
    md = sa.MetaData()
    stock = sa.Table("stock", md, sa.Column("sku", sa.String(32), primary_key=True),
                     sa.Column("location", sa.String(32), primary_key=True), sa.Column("on_hand", sa.Integer))
    price = _price_table(md)
    md.create_all(engine)
    with engine.begin() as c:
        c.execute(stock.insert(), [{"sku": f"S{n}", "location": f"DC-{n % 7}", "on_hand": n} for n in range(1, 3001)])
        c.execute(price.insert(), [{"price_list": "LIST", "sku": f"S{n}", "uom": "EA", "min_qty": 1 + n % 3,
                                    "unit_price": n / 8} for n in range(1, 3001)])
    engine.dispose()
    cfg = SystemsConfig.model_validate({"systems": {"erp": SYSTEM}}).systems["erp"]
    system = SqlSystem("erp", url, cfg)
    # the keys asked for (some twice), the last ones name no record or one under another key part
    wanted = {"inventory": ([f"S{n}|DC-{n % 7}" for n in range(1, 3001, 3)] + ["S1|DC-0", "nope|DC-1", "S1|DC-1"],
                            {(f"S{n}", f"DC-{n % 7}") for n in range(1, 3001, 3)}),
              "price": ([f"LIST|S{n}|EA|{1 + n % 3}" for n in range(2, 3001, 5)] + ["LIST|S2|EA|1", "LIST|S2|EA|3"],
                        {("LIST", f"S{n}", "EA", str(1 + n % 3)) for n in range(2, 3001, 5)})}
    for entity, (keys, expected) in wanted.items():
        got = system.fetch_live(entity, keys)
        key_cols = cfg.entities[entity].key_columns
        rows = [tuple(str(v) for v in r.values()) for r in got.select(key_cols).to_pylist()]
        assert len(rows) == len(set(rows)) and set(rows) == expected, entity
    assert system.fetch_live("price", []).num_rows == 0
    system.engine.dispose()


def item_erp(entity_yaml: str):
    """An ERP whose products are the test's `item` table keyed by sku, mapped as `entity_yaml` says."""
    entity = {"table": "item", "key": "sku", **yaml.safe_load(entity_yaml)}
    return SystemsConfig.model_validate(
        {"systems": {"erp": {"kind": "sql", "entities": {"product": entity}}}}).systems["erp"]


def test_creates_in_one_batch_leave_the_columns_they_do_not_set_to_the_table(db_url):
    """Two creates in one batch setting different columns: the one without a weight gets the
    column's default, not NULL; a create landing on a key that exists (a replay) leaves the
    columns it does not set as they are."""
    from trueup.writeback import WriteOp

    engine = sa.create_engine(db_url)
    md = sa.MetaData()
    item = sa.Table("item", md, sa.Column("sku", sa.String(32), primary_key=True),
                    sa.Column("description", sa.String(64)),
                    sa.Column("weight_kg", sa.Numeric(18, 4), server_default=sa.text("1")))
    md.create_all(engine)
    with engine.begin() as c:
        c.execute(item.insert(), [{"sku": "S3", "description": "old", "weight_kg": 7}])
    engine.dispose()
    cfg = item_erp("""
fields:
  match_key: sku
  sku: sku
  description: description
  weight_kg: {column: weight_kg, transform: decimal4}
""")
    ops = [WriteOp(key="S1", key_values={"sku": "S1"}, action="create", values={"description": "a", "weight_kg": 2}),
           WriteOp(key="S2", key_values={"sku": "S2"}, action="create", values={"description": "b"}),
           WriteOp(key="S3", key_values={"sku": "S3"}, action="create", values={"description": "c"})]
    results = SqlSystem("erp", db_url, cfg).write("product", ops)
    assert [r.status for r in results] == ["applied"] * 3
    with sa.create_engine(db_url).connect() as c:
        got = {s: (d, float(w)) for s, d, w in c.execute(sa.text("SELECT sku, description, weight_kg FROM item"))}
    assert got == {"S1": ("a", 2.0), "S2": ("b", 1.0), "S3": ("c", 7.0)}


def test_a_write_is_stamped_by_the_databases_clock(db_url, monkeypatch):
    """trueup's machine five years ahead: a server stamps the update with its own time (its
    other writers' clock, the one a sync's watermark follows); SQLite, in trueup's process,
    with that process's."""
    from datetime import datetime, timedelta, timezone

    import trueup.systems.sql as sql_module
    from trueup.writeback import WriteOp

    ahead = datetime.now(timezone.utc) + timedelta(days=5 * 365)
    engine = sa.create_engine(db_url)
    md = sa.MetaData()
    item = sa.Table("item", md, sa.Column("sku", sa.String(32), primary_key=True),
                    sa.Column("description", sa.String(64)), sa.Column("updated_at", sa.DateTime(timezone=True)))
    md.create_all(engine)
    with engine.begin() as c:
        c.execute(item.insert(), [{"sku": "S1", "description": "old"}])
    cfg = item_erp("""
updated_at: updated_at
fields: {match_key: sku, sku: sku, description: description}
""")
    monkeypatch.setattr(sql_module, "process_now", lambda: ahead)
    results = SqlSystem("erp", db_url, cfg).write(
        "product", [WriteOp(key="S1", key_values={"sku": "S1"}, action="update", values={"description": "new"})])
    assert [r.status for r in results] == ["applied"]
    with engine.connect() as c:
        stamp = c.execute(sa.text("SELECT updated_at FROM item")).scalar_one()
    engine.dispose()
    if isinstance(stamp, str):  # SQLite: text in the form every other stamp there has
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d+)?", stamp), stamp
        stamp = datetime.fromisoformat(stamp)
    stamp = stamp.astimezone(timezone.utc) if stamp.tzinfo else stamp.replace(tzinfo=timezone.utc)
    expected = ahead if db_url.startswith("sqlite") else datetime.now(timezone.utc)
    assert abs(stamp - expected) < timedelta(minutes=5), (stamp, expected)


def test_a_sqlite_live_read_goes_through_adbc_and_reads_what_the_cursor_reads(tmp_path, monkeypatch):
    from trueup.systems import sql as sql_module

    url = f"sqlite:///{tmp_path / 'erp.sqlite'}"
    engine = sa.create_engine(url)
    md = sa.MetaData()
    price = _price_table(md)
    md.create_all(engine)
    with engine.begin() as c:
        c.execute(price.insert(), [{"price_list": "LIST", "sku": sku, "uom": "EA", "min_qty": q, "unit_price": q / 8}
                                   for sku in ("S1", "O'Neil", "S3") for q in (1, 10)])
    engine.dispose()
    system = SqlSystem("erp", url, SystemsConfig.model_validate({"systems": {"erp": SYSTEM}}).systems["erp"])
    # a quote in a key is a value, an integer key part is matched as the column's number
    keys = ["LIST|O'Neil|EA|10", "LIST|S1|EA|1", "LIST|S1|EA|1", "LIST|S3|EA|2", "LIST|S3|EA|10"]
    joins: list[str] = []
    sa.event.listen(system.engine, "before_cursor_execute", lambda *a: joins.append(a[2]) if "JOIN" in a[2] else None)
    by_adbc = system.fetch_live("price", keys)
    assert joins == []  # not through the engine's cursor
    monkeypatch.setattr(sql_module, "sqlite_by_adbc", lambda engine: False)
    by_cursor = system.fetch_live("price", keys)
    assert joins  # the cursor's join
    assert by_adbc.schema == by_cursor.schema
    order = [("sku", "ascending"), ("min_qty", "ascending")]
    assert by_adbc.sort_by(order).to_pylist() == by_cursor.sort_by(order).to_pylist() == [
        {"price_list": "LIST", "sku": "O'Neil", "uom": "EA", "min_qty": 10, "unit_price": 1.25},
        {"price_list": "LIST", "sku": "S1", "uom": "EA", "min_qty": 1, "unit_price": 0.125},
        {"price_list": "LIST", "sku": "S3", "uom": "EA", "min_qty": 10, "unit_price": 1.25}]


def test_sqlite_updates_go_in_a_few_multi_row_statements_and_land_as_row_by_row(tmp_path, monkeypatch):
    """Updates of a composite-keyed, typed price list on SQLite (more than one statement may bind:
    the connection's limit set to 999): multi-row UPDATE ... FROM, no executemany, and the table
    ends exactly as the row-by-row path leaves it (a key no row has updates nothing; two shapes of
    update in one batch; the change time stamped on every row updated, on no other)."""
    from decimal import Decimal

    import trueup.systems.sql as sql_module
    from trueup.writeback import WriteOp

    config = yaml.safe_load(yaml.safe_dump(SYSTEM))
    config["entities"]["price"]["updated_at"] = "changed_at"
    config["entities"]["price"]["fields"]["currency"] = "currency"
    cfg = SystemsConfig.model_validate({"systems": {"erp": config}}).systems["erp"]
    ops = [WriteOp(key=f"LIST|S{n}|EA|{1 + n % 3}", key_values={"price_list": "LIST", "sku": f"S{n}", "uom": "EA",
                                                              "min_qty": str(1 + n % 3)}, action="update",
                   values={"unit_price": Decimal(n) / 7, **({"currency": "EUR"} if n % 3 == 0 else {})})
           for n in range(1, 3001, 2)]
    ops.append(WriteOp(key="LIST|nope|EA|1", key_values={"price_list": "LIST", "sku": "nope", "uom": "EA",
                                                         "min_qty": "1"}, action="update",
                       values={"unit_price": Decimal("1")}))

    def table_after(multi_row: bool) -> tuple[list[tuple], list[bool]]:
        url = f"sqlite:///{tmp_path / f'erp_{multi_row}.db'}"
        engine = sa.create_engine(url)
        md = sa.MetaData()
        price = sa.Table("price", md, *_price_table(md).columns, sa.Column("currency", sa.String(3)),
                         sa.Column("changed_at", sa.String(32)), extend_existing=True)
        md.create_all(engine)
        with engine.begin() as c:
            c.execute(price.insert(), [{"price_list": "LIST", "sku": f"S{n}", "uom": "EA", "min_qty": 1 + n % 3,
                                        "unit_price": n / 8, "currency": "USD", "changed_at": "2026-01-01 00:00:00"}
                                       for n in range(1, 3001)])
        engine.dispose()
        monkeypatch.setattr(sql_module, "UPDATE_FROM", multi_row)
        system = SqlSystem("erp", url, cfg)
        system.write_batch = 5000

        @sa.event.listens_for(system.engine, "connect")
        def _limit(dbapi_conn, _):
            dbapi_conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)

        system.engine.dispose()  # a connection made before the limit
        updates = []

        @sa.event.listens_for(system.engine, "before_cursor_execute")
        def _seen(conn, cursor, statement, parameters, context, executemany):
            if statement.startswith("UPDATE"):
                updates.append(executemany)

        assert {r.status for r in system.write("price", ops)} == {"applied"}
        if multi_row:  # 1,001 rows of one shape (5 values), 500 of the other (6), the stamp bound once
            assert not any(updates) and len(updates) == -(-1001 // (998 // 5)) + -(-500 // (998 // 6))
        system.engine.dispose()
        with sa.create_engine(url).connect() as c:
            rows = c.execute(sa.text("SELECT price_list, sku, uom, min_qty, unit_price, currency, changed_at "
                                     "FROM price ORDER BY sku, min_qty")).all()
        return [tuple(r[:6]) for r in rows], [r[6] != "2026-01-01 00:00:00" for r in rows]

    multi, stamped = table_after(True)
    one_by_one, stamped_one_by_one = table_after(False)
    assert multi == one_by_one and stamped == stamped_one_by_one
    by_sku = {r[1]: r for r in multi}
    assert sum(stamped) == 1500 and by_sku["S8"][4:] == (1.0, "USD") and by_sku["S12"][4:] == (1.5, "USD")
    assert round(by_sku["S7"][4], 4) == 1.0 and by_sku["S7"][5] == "USD" and by_sku["S9"][5] == "EUR"
