"""The live read before writing: the rows of exactly the keys asked for, composite and typed
keys included, read by a join to the keys in a temporary table."""

from __future__ import annotations

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


def test_the_rows_of_exactly_the_keys_asked_for(db_url):
    url = db_url
    engine = sa.create_engine(url)
    md = sa.MetaData()
    stock = sa.Table("stock", md, sa.Column("sku", sa.String(32), primary_key=True),
                     sa.Column("location", sa.String(32), primary_key=True), sa.Column("on_hand", sa.Integer))
    price = sa.Table("price", md, *[sa.Column(c, sa.String(32), primary_key=True) for c in ("price_list", "sku", "uom")],
                     sa.Column("min_qty", sa.Integer, primary_key=True, autoincrement=False),
                     sa.Column("unit_price", sa.Numeric(18, 4)))
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
