"""The WMS sandbox (the demo's 3PL) applies trueup's inbound corrections as a 3PL would: in
arrival order, a later line winning, records it does not hold ignored, then a fresh drop."""

from __future__ import annotations

import json
import os
import time

import pyarrow as pa

from sandbox.wms import WmsSandbox
from trueup.systems.files import read_file


def _line(entity: str, key: dict, fields: dict) -> str:
    return json.dumps({"entity": entity, "op": "update", "key": key, "fields": fields, "idempotency_key": "k"})


def test_corrections_apply_in_arrival_order_and_reach_the_next_drop(tmp_path):
    wms = WmsSandbox(tmp_path)
    s = pa.string()
    wms.save("ship_to", pa.table({"ship_to_code": ["S1", "S2", "S3"], "name": ["A", "B", "C"],
                                  "city": ["Oslo", "Lyon", None], "updated_at": ["t0", "t0", "t0"]}))
    wms.save("items", pa.table({"sku": ["K1"], "status": ["active"], "updated_at": ["t0"]}))
    wms.save("stock", pa.table({"sku": pa.array(["K1", "K1", "a|b", "a"], pa.large_string()),
                                "location": pa.array(["L1", "L2", "c", "b|c"], pa.large_string()),
                                "on_hand": pa.array(["5", "7", "1", "2"], pa.large_string()),
                                "counted_at": pa.array(["c0", "c0", "c0", "c0"], pa.large_string())}))
    wms.inbound.mkdir(parents=True)
    first = wms.inbound / "trueup_customer_a.jsonl"
    first.write_text("\n".join([
        _line("customer", {"ship_to_code": "S1"}, {"city": "Bergen", "name": "A2"}),
        _line("customer", {"ship_to_code": "S9"}, {"city": "Nowhere"}),  # not held: ignored
        _line("inventory", {"sku": "K1", "location": "L2"}, {"on_hand": 9, "not_a_column": "x"}),
        _line("inventory", {"sku": "a|b", "location": "c"}, {"on_hand": 3}),  # not the record (a, b|c)
    ]) + "\n")
    later = wms.inbound / "trueup_customer_b.jsonl"
    later.write_text(_line("customer", {"ship_to_code": "S1"}, {"city": "Tromso"}) + "\n"
                     + _line("customer", {"ship_to_code": "S3"}, {"city": None, "name": "C"}) + "\n")
    os.utime(first, (time.time() - 10, time.time() - 10))  # arrival order: first, then later

    assert wms.process_inbound() == 5  # S9 found nothing
    ship = wms.load("ship_to").to_pylist()
    assert [r["city"] for r in ship] == ["Tromso", "Lyon", None]  # the later line won for S1
    assert [r["name"] for r in ship] == ["A2", "B", "C"]  # the earlier line's other field stays
    assert [r["updated_at"] != "t0" for r in ship] == [True, False, True]
    assert wms.load("ship_to").schema.field("city").type == s
    stock = wms.load("stock")
    assert stock.column("on_hand").to_pylist() == ["5", "9", "3", "2"] and stock.schema == pa.schema(
        [(c, pa.large_string()) for c in ("sku", "location", "on_hand", "counted_at")])
    assert wms.load("items").to_pylist() == [{"sku": "K1", "status": "active", "updated_at": "t0"}]
    assert not list(wms.inbound.glob("trueup_*.jsonl")) and len(list((wms.inbound / "processed").iterdir())) == 2
    drop = sorted(wms.exports.iterdir())[-1]
    assert (drop / "_SUCCESS").exists()
    exported = read_file(drop / "ship_to.csv").to_pylist()  # as trueup reads a drop
    assert [r["city"] for r in exported] == ["Tromso", "Lyon", None]
    assert wms.process_inbound() == 0  # nothing new arrived
