"""The live read before writing: point lookups (few keys) and one filtered full read (many keys)
return the same rows, composite keys included."""

from __future__ import annotations

import sqlalchemy as sa
import yaml

from trueup.config import SystemsConfig
from trueup.systems import sql as sql_system
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


def test_point_lookups_and_the_bulk_read_agree(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'erp.sqlite'}"
    engine = sa.create_engine(url)
    with engine.begin() as c:
        c.exec_driver_sql("CREATE TABLE stock (sku TEXT, location TEXT, on_hand INTEGER, PRIMARY KEY (sku, location))")
        c.exec_driver_sql("CREATE TABLE price (price_list TEXT, sku TEXT, uom TEXT, min_qty INTEGER, "
                          "unit_price NUMERIC(18,4), PRIMARY KEY (price_list, sku, uom, min_qty))")
        c.exec_driver_sql("WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 3000) "
                          "INSERT INTO stock SELECT 'S' || n, 'DC-' || (n % 7), n FROM g")
        c.exec_driver_sql("WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 3000) "
                          "INSERT INTO price SELECT 'LIST', 'S' || n, 'EA', 1 + n % 3, n / 8.0 FROM g")
    engine.dispose()
    cfg = SystemsConfig.model_validate({"systems": {"erp": SYSTEM}}).systems["erp"]
    system = SqlSystem("erp", url, cfg)
    # (keys, how many name a record): the last ones name none, or a record under another key part
    wanted = {"inventory": ([f"S{n}|DC-{n % 7}" for n in range(1, 3001, 3)] + ["S1|DC-0", "nope|DC-1"], 1000),
              "price": ([f"LIST|S{n}|EA|{1 + n % 3}" for n in range(2, 3001, 5)] + ["LIST|S2|EA|1"], 600)}
    for entity, (keys, expected) in wanted.items():
        monkeypatch.setattr(sql_system, "BULK_LIVE_KEYS", 10**9)
        points = system.fetch_live(entity, keys)
        monkeypatch.setattr(sql_system, "BULK_LIVE_KEYS", 10)
        bulk = system.fetch_live(entity, keys)
        key_cols = cfg.entities[entity].key_columns
        as_rows = lambda t: sorted(tuple(str(v) for v in r.values()) for r in t.select(key_cols).to_pylist())  # noqa: E731
        assert len(as_rows(points)) == expected, entity
        assert as_rows(points) == as_rows(bulk), entity
