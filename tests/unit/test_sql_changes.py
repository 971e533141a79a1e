"""An incremental read of a view whose change time is computed from its tables: the changed keys
are found through the tables' own change columns (`changes_from`), and the rows read are exactly
those the view's own change time selects."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
import yaml

from trueup.config import SystemsConfig
from trueup.systems import sql as sql_module
from trueup.systems.sql import SqlSystem

ENTITY = """
kind: sql
entities:
  inventory:
    table: stock_position
    key: [item_number, warehouse]
    updated_at: updated_at
    {changes_from}
    fields:
      sku: item_number
      location: warehouse
      on_hand: {{column: on_hand, transform: integer}}
"""
VIEW = """CREATE VIEW stock_position AS
  SELECT s.item_number, s.warehouse, s.on_hand + COALESCE(a.qty, 0) AS on_hand,
         CASE WHEN a.last_posted > s.updated_at THEN a.last_posted ELSE s.updated_at END AS updated_at
  FROM stock s LEFT JOIN (SELECT item_number, warehouse, SUM(quantity) AS qty, MAX(posted_at) AS last_posted
                          FROM stock_adjustment GROUP BY item_number, warehouse) a
    ON a.item_number = s.item_number AND a.warehouse = s.warehouse"""


def _system(url: str, *, through_tables: bool) -> SqlSystem:
    changes_from = ("changes_from: [{table: stock, updated_at: updated_at}, "
                    "{table: stock_adjustment, updated_at: posted_at}]") if through_tables else ""
    cfg = SystemsConfig.model_validate(
        {"systems": {"erp": yaml.safe_load(ENTITY.format(changes_from=changes_from))}}).systems["erp"]
    return SqlSystem("erp", url, cfg)


def test_a_views_changes_are_read_through_its_tables(db_url, monkeypatch):
    url = db_url
    engine = sa.create_engine(url)
    md = sa.MetaData()
    # instants as each database keeps them (as the demo ERP does): timestamptz on PostgreSQL,
    # naive UTC elsewhere
    aware = engine.dialect.name == "postgresql"
    ts = sa.DateTime(timezone=aware)
    stock = sa.Table("stock", md, sa.Column("item_number", sa.String(32), primary_key=True),
                     sa.Column("warehouse", sa.String(32), primary_key=True), sa.Column("on_hand", sa.Integer),
                     sa.Column("updated_at", ts, index=True))
    adjustment = sa.Table("stock_adjustment", md, sa.Column("id", sa.Integer, primary_key=True),
                          sa.Column("item_number", sa.String(32)), sa.Column("warehouse", sa.String(32)),
                          sa.Column("quantity", sa.Integer), sa.Column("posted_at", ts, index=True))
    md.create_all(engine)
    day = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc if aware else None)
    since = day + timedelta(hours=6)
    with engine.begin() as c:
        c.execute(sa.text(VIEW))
        c.execute(stock.insert(), [{"item_number": f"S{n}", "warehouse": f"DC-{n % 3}", "on_hand": n,
                                    "updated_at": day + timedelta(hours=n % 12)} for n in range(300)])
        # adjustments: some after `since` on rows whose own change is older, some before
        c.execute(adjustment.insert(), [{"item_number": f"S{n}", "warehouse": f"DC-{n % 3}", "quantity": -1,
                                         "posted_at": day + timedelta(hours=4 + n % 5)} for n in range(0, 300, 7)])
    engine.dispose()
    plain = _system(url, through_tables=False).extract("inventory", since=since)
    system = _system(url, through_tables=True)
    statements: list[str] = []  # the statements read (by the cursor or, on SQLite, by ADBC)
    real = sql_module.read_arrow
    monkeypatch.setattr(sql_module, "read_arrow",
                        lambda engine, stmt, **kw: statements.append(str(stmt)) or real(engine, stmt, **kw))
    through = system.extract("inventory", since=since)
    assert any("stock_adjustment" in sql for sql in statements)  # the read went through the tables
    keys = lambda t: sorted(zip(t.column("item_number").to_pylist(), t.column("warehouse").to_pylist()))  # noqa: E731
    expected = sorted({(f"S{n}", f"DC-{n % 3}") for n in range(300) if n % 12 > 6}
                      | {(f"S{n}", f"DC-{n % 3}") for n in range(0, 300, 7) if 4 + n % 5 > 6})
    assert keys(plain) == expected
    assert keys(through) == expected  # the same rows, found through the tables
    assert sorted(through.column("on_hand").to_pylist()) == sorted(plain.column("on_hand").to_pylist())


def test_a_change_source_names_only_identifiers():
    with pytest.raises(ValueError, match="identifier"):
        SystemsConfig.model_validate({"systems": {"erp": yaml.safe_load(ENTITY.format(
            changes_from="changes_from: [{table: 'stock; DROP TABLE stock', updated_at: updated_at}]"))}})


def test_changes_from_is_refused_where_it_cannot_apply():
    with pytest.raises(ValueError, match="changes_from is for a SQL view"):
        SystemsConfig.model_validate({"systems": {"crm": yaml.safe_load(
            ENTITY.format(changes_from="changes_from: [{table: stock, updated_at: updated_at}]")
            .replace("table: stock_position", "resource: positions"))}})
