"""Outcomes a write-back must not get wrong: a correction to a record its system no longer holds
is rejected, not reported applied (an UPDATE of a vanished row changes nothing), and a system
failing mid-apply does not turn the outcomes already decided into failures."""

from __future__ import annotations

import pyarrow as pa
import pytest
import sqlalchemy as sa

from tests.unit.test_sql_live import SYSTEM  # the ERP's price list, as a SQL system
from trueup.config import SystemsConfig
from trueup.model import PLAN_SCHEMA
from trueup.systems.sql import SqlSystem
from trueup.writeback import ApplyFailed, apply_plan

def _row(change_id: str, key: str, old: str | None, new: str, action: str = "update") -> dict:
    return {"change_id": change_id, "domain": "price", "target_system": "erp", "action": action,
            "golden_id": f"G-{key}", "target_key": key, "field": "unit_price", "old_value": old,
            "new_value": new, "source_system": "crm", "rule": "price.unit_price: owner crm", "severity": "high"}


def _erp(tmp_path, prices: dict[str, float | None]):
    """A SQLite ERP with a price list (LIST, <sku>, EA, 1) at these unit prices: its URL, engine, config."""
    url = f"sqlite:///{tmp_path / 'erp.sqlite'}"
    engine = sa.create_engine(url)
    md = sa.MetaData()
    price = sa.Table("price", md, *[sa.Column(c, sa.String(16), primary_key=True) for c in ("price_list", "sku", "uom")],
                     sa.Column("min_qty", sa.Integer, primary_key=True, autoincrement=False),
                     sa.Column("unit_price", sa.Numeric(18, 4)))
    md.create_all(engine)
    with engine.begin() as c:
        c.execute(price.insert(), [{"price_list": "LIST", "sku": sku, "uom": "EA", "min_qty": 1, "unit_price": v}
                                   for sku, v in prices.items()])
    return url, engine, SystemsConfig.model_validate({"systems": {"erp": SYSTEM}}).systems["erp"]


def test_an_update_to_a_vanished_record_is_rejected_and_the_rest_still_apply(tmp_path):
    url, engine, cfg = _erp(tmp_path, {"S1": 1, "S2": None})
    plan = [_row("c-s1", "LIST|S1|EA|1", "1.0000", "2.0000"),
            _row("c-s2", "LIST|S2|EA|1", None, "3.0000"),    # fills an empty value: written
            _row("c-s9", "LIST|S9|EA|1", None, "9.0000"),    # the row went after the extract (old value empty)
            _row("c-s8", "LIST|S8|EA|1", "8.0000", "9.0000"),  # went, and had a value
            _row("c-s7", "LIST|S7|EA|1", None, "7.0000", action="create")]
    out = apply_plan(SqlSystem("erp", url, cfg), "erp", "price", cfg.entities["price"],
                     pa.Table.from_pylist(plan, schema=PLAN_SCHEMA))
    got = {r["change_id"]: r for r in out.to_pylist()}
    assert {c: got[c]["status"] for c in got} == {"c-s1": "applied", "c-s2": "applied", "c-s9": "rejected",
                                                  "c-s8": "rejected", "c-s7": "applied"}
    for gone in ("c-s9", "c-s8"):
        assert "no longer holds" in got[gone]["error"] and "erp.price" in got[gone]["error"]
        assert got[gone]["attempts"] == 0  # never sent
    with engine.connect() as c:
        rows = dict(c.execute(sa.text("SELECT sku, CAST(unit_price AS TEXT) FROM price")).fetchall())
    assert {k: float(v) for k, v in rows.items()} == {"S1": 2.0, "S2": 3.0, "S7": 7.0}  # nothing made up for S8, S9


class GoesDown(SqlSystem):
    """A SQL system that accepts the first write batch, then fails as a whole (its connection gone)."""

    def write(self, entity, ops):
        self.batches = getattr(self, "batches", 0) + 1
        if self.batches > 1:
            raise ConnectionError("the ERP went away")
        return super().write(entity, ops)


def test_a_system_failing_mid_apply_keeps_the_outcomes_already_decided(tmp_path):
    """Rows judged before anything was sent (in place, gone) and batches already answered keep
    their own outcomes; only what the failure left without an answer is for the caller to mark."""
    url, _, cfg = _erp(tmp_path, {f"S{n}": n for n in range(1, 5)})
    plan = [_row("c-s1", "LIST|S1|EA|1", "1.0000", "5.0000"),
            _row("c-s2", "LIST|S2|EA|1", "2.0000", "2.0000"),  # already in place
            _row("c-s3", "LIST|S3|EA|1", "3.0000", "6.0000"),
            _row("c-s9", "LIST|S9|EA|1", "9.0000", "7.0000")]  # gone
    client = GoesDown("erp", url, cfg, write_batch=1, in_flight=1)  # a batch a record: S1 lands, S3 meets the failure
    with pytest.raises(ApplyFailed) as failed:
        apply_plan(client, "erp", "price", cfg.entities["price"], pa.Table.from_pylist(plan, schema=PLAN_SCHEMA))
    decided = {c: r.status for c, r in failed.value.outcomes.items()}
    assert decided == {"c-s1": "applied", "c-s2": "unchanged", "c-s9": "rejected"}  # c-s3: no answer
    assert isinstance(failed.value.__cause__, ConnectionError) and "went away" in str(failed.value)


def test_a_correction_over_a_value_the_system_holds_but_trueup_cannot_read_is_stale(tmp_path):
    """Someone typed 12.34567 into a price trueup planned to fill (old value empty): unreadable is
    not empty, so the correction is rejected as stale, not written over what they typed."""
    url = f"sqlite:///{tmp_path / 'erp.sqlite'}"
    engine = sa.create_engine(url)
    with engine.begin() as c:
        c.execute(sa.text("CREATE TABLE price (price_list TEXT, sku TEXT, uom TEXT, min_qty INTEGER, unit_price TEXT, "
                          "PRIMARY KEY (price_list, sku, uom, min_qty))"))
        c.execute(sa.text("INSERT INTO price VALUES ('LIST', 'S1', 'EA', 1, '12.34567'), ('LIST', 'S2', 'EA', 1, NULL)"))
    cfg = SystemsConfig.model_validate({"systems": {"erp": SYSTEM}}).systems["erp"]
    plan = [_row("c-s1", "LIST|S1|EA|1", None, "3.0000"), _row("c-s2", "LIST|S2|EA|1", None, "4.0000")]
    out = apply_plan(SqlSystem("erp", url, cfg), "erp", "price", cfg.entities["price"],
                     pa.Table.from_pylist(plan, schema=PLAN_SCHEMA))
    assert dict(zip(out.column("change_id").to_pylist(), out.column("status").to_pylist())) == {
        "c-s1": "rejected", "c-s2": "applied"}
    with engine.connect() as c:
        assert c.execute(sa.text("SELECT unit_price FROM price WHERE sku = 'S1'")).scalar() == "12.34567"
