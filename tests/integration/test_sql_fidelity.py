"""Round-trip fidelity on every SQL backend (SQLite, PostgreSQL, MariaDB): money with four
decimals and sums like 0.1 + 0.2, quantities beyond float precision, and names in any script
survive extract -> reconcile -> write-back exactly, and a second pass changes nothing."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pyarrow as pa
import pytest
import sqlalchemy as sa

from trueup import reconcile, steps
from trueup.config import Config
from trueup.state import StateStore
from trueup.systems.sql import SqlSystem

SYSTEMS = """
systems:
{systems}
"""
SYSTEM = """
  {name}:
    kind: sql
    entities:
      product:
        table: {name}_item
        key: sku
        fields:
          match_key: sku
          sku: sku
          description: {{column: description, transform: trim}}
          weight_kg: {{column: weight_kg, transform: decimal4}}
      price:
        table: {name}_price
        key: [price_list, sku, uom, min_qty]
        fields:
          price_list: price_list
          sku: sku
          uom: uom
          min_qty: {{column: min_qty, transform: integer}}
          currency: currency
          unit_price: {{column: unit_price, transform: decimal4}}
          valid_to: {{column: valid_to, transform: date}}
      inventory:
        table: {name}_stock
        key: [sku, location]
        fields:
          sku: sku
          location: location
          on_hand: {{column: on_hand, transform: integer}}
"""
RULES = """
version: 1
domains:
  product:
    fields:
      description: {owner: src, targets: {dst: update}}
      weight_kg:   {owner: src, targets: {dst: update}}
  price:
    fields:
      currency:   {owner: src}
      unit_price: {owner: src, targets: {dst: update}}
      valid_to:   {owner: src, targets: {dst: update}}
  inventory:
    fields:
      on_hand: {owner: src, targets: {dst: update}}
"""

NAMES = ["Müller Schrauben", "Straße 12 – Hamburg", "日本の部品", "Ελληνικά ☃ 🚚", "  spaced   out  "]
SOURCE = {
    "item": [{"sku": f"S{i}", "description": n, "weight_kg": w}
             for i, (n, w) in enumerate(zip(NAMES, [Decimal("0.3"), Decimal("1234.5678"), Decimal("0.0001"),
                                                    Decimal("99999999.9999"), Decimal("7")]))],
    "price": [{"price_list": "LIST-EU", "sku": f"S{i}", "uom": "EA", "min_qty": 1, "currency": "EUR",
               "unit_price": p, "valid_to": d}
              for i, (p, d) in enumerate(zip(
                  [Decimal("0.1") + Decimal("0.2"), Decimal("12.3456"), Decimal("9999999999.9999"),
                   Decimal("0.0001"), Decimal("19.99")],
                  [date(2030, 12, 31), date(2027, 6, 30), date(2026, 2, 28), date(1999, 1, 1), date(2026, 11, 27)]))],
    "stock": [{"sku": f"S{i}", "location": loc, "on_hand": q}
              for i, (loc, q) in enumerate(zip(["DC-EAST", "DC-WEST", "DC-ÖST", "倉庫", "DC-WEST"],
                                               [2**53 + 1, 9_000_000_000_000_000_000, -12, 0, 1]))],
}
# what the target holds before: every value off by the smallest step (one ten-thousandth, one
# unit, an ASCII spelling), so each must be written back and land exactly
TARGET = {
    "item": [{**r, "description": r["description"].encode("ascii", "replace").decode(), "weight_kg": r["weight_kg"] - Decimal("0.0001")}
             for r in SOURCE["item"]],
    "price": [{**r, "unit_price": r["unit_price"] - Decimal("0.0001"), "valid_to": date(2031, 1, 1)}
              for r in SOURCE["price"]],
    "stock": [{**r, "on_hand": r["on_hand"] - 1} for r in SOURCE["stock"]],
}


def _tables(md: sa.MetaData, name: str) -> dict[str, sa.Table]:
    key, text = sa.String(64), sa.String(255)
    return {
        "item": sa.Table(f"{name}_item", md, sa.Column("sku", key, primary_key=True), sa.Column("description", text),
                         sa.Column("weight_kg", sa.Numeric(12, 4))),
        "price": sa.Table(f"{name}_price", md, sa.Column("price_list", key, primary_key=True),
                          sa.Column("sku", key, primary_key=True), sa.Column("uom", sa.String(8), primary_key=True),
                          sa.Column("min_qty", sa.Integer, primary_key=True, autoincrement=False),
                          sa.Column("currency", sa.String(3)), sa.Column("unit_price", sa.Numeric(18, 4)),
                          sa.Column("valid_to", sa.Date)),
        "stock": sa.Table(f"{name}_stock", md, sa.Column("sku", key, primary_key=True),
                          sa.Column("location", key, primary_key=True), sa.Column("on_hand", sa.BigInteger)),
    }


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def backend(request, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'fidelity.sqlite'}"
    else:
        url = request.getfixturevalue("server_dbs").new(request.param)
    engine = sa.create_engine(url)
    md = sa.MetaData()
    src, dst = _tables(md, "src"), _tables(md, "dst")
    md.create_all(engine)
    with engine.begin() as c:
        for k in SOURCE:
            c.execute(src[k].insert(), SOURCE[k])
            c.execute(dst[k].insert(), TARGET[k])
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "systems.yaml").write_text(
        SYSTEMS.format(systems=SYSTEM.format(name="src") + SYSTEM.format(name="dst")))
    (tmp_path / "cfg" / "rules.yaml").write_text(RULES)
    yield request.param, url, engine, dst, Config.load(tmp_path / "cfg")
    engine.dispose()


def _plan(domain, clients, config):
    raw = {s: clients[s].extract(domain) for s in ("src", "dst")}
    staged = steps.stage(domain, raw, config)
    matched, _ = reconcile.match(domain, staged.table, None, staged.issues)
    golden = reconcile.build_golden(domain, matched, config, date(2026, 11, 27))
    return reconcile.build_plan(domain, matched, golden, config), staged


def test_values_survive_extract_reconcile_writeback_exactly(backend, tmp_path):
    kind, url, engine, dst, config = backend
    clients = {s: SqlSystem(s, url, config.systems.systems[s]) for s in ("src", "dst")}
    state = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    for domain in ("product", "price", "inventory"):
        plan, staged = _plan(domain, clients, config)
        assert plan.num_rows >= 5, domain
        out = steps.writeback(domain, plan, clients, config, state, f"run-{domain}")
        assert set(out.column("status").to_pylist()) == {"applied"}, out.filter(
            pa.compute.not_equal(out.column("status"), "applied")).to_pylist()
        # the fast read path was taken on every backend
        assert clients["src"].last_read_method == {"mariadb": "connectorx"}.get(kind, "adbc")

        # converged: a second pass finds nothing, and both systems' canonical values are equal
        again, staged = _plan(domain, clients, config)
        assert again.num_rows == 0, again.to_pylist()
        by_system = {s: staged.table.filter(pa.compute.equal(staged.table.column("source_system"), s))
                     .drop_columns(["source_system", "extracted_at", "source_updated_at"])
                     .sort_by("source_key").to_pylist() for s in ("src", "dst")}
        assert by_system["src"] == by_system["dst"]

    # what the target database now holds, read by its own driver, equals the source exactly
    with engine.connect() as c:
        items = {r.sku: r for r in c.execute(sa.select(dst["item"]))}
        prices = {r.sku: r for r in c.execute(sa.select(dst["price"]))}
        stock = {(r.sku, r.location): r.on_hand for r in c.execute(sa.select(dst["stock"]))}
    for r in SOURCE["item"]:
        # text in any script byte for byte (spacing as the `trim` transform's rule normalises it)
        assert " ".join(items[r["sku"]].description.split()) == " ".join(r["description"].split())
        assert Decimal(str(items[r["sku"]].weight_kg)) == r["weight_kg"]
    for r in SOURCE["price"]:
        got = prices[r["sku"]]
        if kind == "sqlite":  # SQLite stores NUMERIC as an 8-byte REAL: exact to its 15 digits
            assert float(got.unit_price) == float(r["unit_price"]), (r["sku"], got.unit_price)
        else:
            assert Decimal(str(got.unit_price)) == r["unit_price"], (r["sku"], got.unit_price)
        assert got.valid_to == r["valid_to"] or str(got.valid_to) == str(r["valid_to"])
    if kind != "sqlite":  # the servers keep the exact decimal, no float on the way
        assert all(isinstance(p.unit_price, Decimal) for p in prices.values())
        assert prices["S0"].unit_price == Decimal("0.3000")
    assert items["S2"].description == "日本の部品" and items["S3"].description == "Ελληνικά ☃ 🚚"
    assert stock == {(r["sku"], r["location"]): r["on_hand"] for r in SOURCE["stock"]}
