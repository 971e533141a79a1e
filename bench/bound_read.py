"""Reads with values from SQLite, alone and beside a busy thread: an incremental `since`, and the
live read of a set of keys (the compare before writing, a sync's counterparts); and the write-back's
updates of those keys.

    uv run python bench/bound_read.py [--rows 5000000] [--changed 50000] [--repeat 3]

Builds a price table of `rows` rows with a change index, `changed` of them changed after the
watermark, then reads the changed rows as the SQL adapter does (`read_arrow`) by the cursor
(Python's sqlite3 through SQLAlchemy) and by ADBC with the value bound, and the rows of `changed`
keys as `SqlSystem.fetch_live` does (a join to the keys in a temporary table: by the cursor, and
by ADBC with the keys ingested as Arrow), each alone and while another thread of the same process
runs Python (as, in a sync, another system's read parses its JSON pages or the journal records a
batch). Prints seconds per path and setting (best of `repeat`) and checks both paths read the
same rows. Then updates the `changed` prices as `SqlSystem.write` does, row by row (an
executemany) and in multi-row `UPDATE ... FROM (VALUES ...)` statements, once each alone and
beside the busy thread (row by row beside it takes minutes), and checks both leave the same prices.

The cursor hands the interpreter's lock back around every row it steps; beside a thread that holds
it, each hand-back waits for that thread to let go, so the read crawls for as long as the other
thread runs. ADBC steps the rows in C and hands over one Arrow table.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trueup.config import SystemsConfig  # noqa: E402
from trueup.systems import sql as sql_module  # noqa: E402
from trueup.systems.sql import SqlSystem  # noqa: E402
from trueup.systems.sql_arrow import read_arrow  # noqa: E402
from trueup.writeback import WriteOp  # noqa: E402

WATERMARK = datetime(2026, 12, 1)


def build(path: Path, rows: int, changed: int) -> None:
    with sqlite3.connect(path) as db:
        db.executescript("""
            CREATE TABLE price (price_list TEXT, sku TEXT, uom TEXT, min_qty INTEGER, unit_price NUMERIC(18, 4),
                                valid_to DATE, updated_at TIMESTAMP, PRIMARY KEY (price_list, sku, uom, min_qty));
        """)
        # every (rows // changed)-th row changed after the watermark, the rest a month before
        db.execute(f"""
            WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < {rows - 1})
            INSERT INTO price SELECT 'PL' || (i % 50), 'SKU' || i, 'EA', 1, round((i % 9973) / 7.0, 4),
                   CASE WHEN i % 3 = 0 THEN NULL ELSE '2027-12-31' END,
                   CASE WHEN i % {max(1, rows // changed)} = 0 THEN '2026-12-07 10:00:00'
                        ELSE '2026-11-01 10:00:00' END FROM n""")
        db.execute("CREATE INDEX price_updated ON price (updated_at)")


def busy(stop: threading.Event) -> None:
    while not stop.is_set():
        sum(range(1000))


def timed(read, beside_busy: bool) -> tuple[float, int]:
    stop = threading.Event()
    other = threading.Thread(target=busy, args=(stop,)) if beside_busy else None
    if other:
        other.start()
    t = time.perf_counter()
    rows = read()
    seconds = time.perf_counter() - t
    stop.set()
    if other:
        other.join()
    return seconds, rows


def row(label: str, read, repeat: int) -> set[int]:
    alone = [timed(read, False) for _ in range(repeat)]
    beside = [timed(read, True) for _ in range(repeat)]
    print(f"| {label} | {min(s for s, _ in alone):.3f} | {min(s for s, _ in beside):.3f} | {alone[0][1]:,} |",
          flush=True)
    return {n for _, n in alone + beside}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=5_000_000)
    p.add_argument("--changed", type=int, default=50_000)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "erp.sqlite"
        t = time.perf_counter()
        build(path, args.rows, args.changed)
        print(f"built {args.rows:,} rows in {time.perf_counter() - t:.0f} s", flush=True)
        engine = sa.create_engine(f"sqlite:///{path}")
        t_ = sa.table("price", *[sa.column(c) for c in ("price_list", "sku", "uom", "min_qty", "unit_price",
                                                        "valid_to", "updated_at")])
        stmt = sa.select(*t_.c).where(t_.c.updated_at > sa.bindparam("since", WATERMARK))
        erp = SqlSystem("erp", f"sqlite:///{path}", SystemsConfig.model_validate({"systems": {"erp": {
            "kind": "sql", "entities": {"price": {
                "table": "price", "key": ["price_list", "sku", "uom", "min_qty"],
                "fields": {"price_list": "price_list", "sku": "sku", "uom": "uom",
                           "min_qty": {"column": "min_qty", "transform": "integer"},
                           "unit_price": {"column": "unit_price", "transform": "decimal4"}}}}}}}).systems["erp"])
        keys = [f"PL{i % 50}|SKU{i}|EA|1" for i in range(0, args.rows, max(1, args.rows // args.changed))]
        adbc_live = sql_module.sqlite_by_adbc
        print("| read | alone, s | beside a busy thread, s | rows |")
        print("|---|---:|---:|---:|")
        read: dict[str, set] = {}  # what each path read, to compare the two
        for method in ("cursor", "adbc"):
            got = read_arrow(engine, stmt, method=method).table
            read[f"since, {method}"] = set(zip(got.column("sku").to_pylist(), got.column("price_list").to_pylist()))
            counts = row(f"since, {method}", lambda m=method: read_arrow(engine, stmt, method=m).table.num_rows,
                         args.repeat)
            sql_module.sqlite_by_adbc = adbc_live if method == "adbc" else (lambda engine: False)
            got = erp.fetch_live("price", keys)
            read[f"live, {method}"] = set(zip(got.column("sku").to_pylist(), got.column("price_list").to_pylist()))
            counts |= row(f"live by key, {method}", lambda: erp.fetch_live("price", keys).num_rows, args.repeat)
            if len(counts) != 1:
                raise SystemExit(f"{method}: the reads disagree on the rows: {sorted(counts)}")
        sql_module.sqlite_by_adbc = adbc_live
        if read["since, cursor"] != read["since, adbc"] or read["live, cursor"] != read["live, adbc"]:
            raise SystemExit("the cursor and ADBC read different rows")
        print("\n| update by key | alone, s | beside a busy thread, s | rows |")
        print("|---|---:|---:|---:|")
        written = {}
        for n, (label, multi_row) in enumerate((("row by row (executemany)", False),
                                                ("multi-row UPDATE ... FROM", True))):
            sql_module.UPDATE_FROM = multi_row
            ops = [[WriteOp(key=k, key_values=dict(zip(("price_list", "sku", "uom", "min_qty"), k.split("|"))),
                            action="update", values={"unit_price": f"{n * 2 + busy_}.{i % 10000:04d}"})
                    for i, k in enumerate(keys)] for busy_ in (0, 1)]
            erp.write_batch = len(keys)  # one transaction, as one batch of the write-back's
            alone = timed(lambda: len(erp.write("price", ops[0])), False)
            beside = timed(lambda: len(erp.write("price", ops[1])), True)
            print(f"| {label} | {alone[0]:.3f} | {beside[0]:.3f} | {alone[1]:,} |", flush=True)
            got = erp.fetch_live("price", keys)
            prices = [float(v) for v in got.column("unit_price").to_pylist()]
            if {int(v) for v in prices} != {n * 2 + 1}:  # every row holds this way's last write
                raise SystemExit(f"{label}: not every price was updated")
            written[multi_row] = sorted(zip(got.column("sku").to_pylist(), [round(v % 1, 4) for v in prices]))
        if written[False] != written[True]:  # the same fractions, each way its own whole part
            raise SystemExit("the two ways of updating left different prices")


if __name__ == "__main__":
    main()
