"""A read with a bound value (an incremental `since`) from SQLite, alone and beside a busy thread.

    uv run python bench/bound_read.py [--rows 5000000] [--changed 50000] [--repeat 3]

Builds a price table of `rows` rows with a change index, `changed` of them changed after the
watermark, then reads the changed rows as the SQL adapter does (`read_arrow`) by the cursor
(Python's sqlite3 through SQLAlchemy) and by ADBC with the value bound, each alone and while
another thread of the same process runs Python (as, in a sync, another system's read parses its
JSON pages or the journal records a batch). Prints seconds per path and setting (best of
`repeat`) and checks both paths read the same rows.

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

from trueup.systems.sql_arrow import read_arrow  # noqa: E402

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


def timed(engine: sa.Engine, stmt, method: str, beside_busy: bool) -> tuple[float, int, str]:
    stop = threading.Event()
    other = threading.Thread(target=busy, args=(stop,)) if beside_busy else None
    if other:
        other.start()
    t = time.perf_counter()
    read = read_arrow(engine, stmt, method=method)
    seconds = time.perf_counter() - t
    stop.set()
    if other:
        other.join()
    return seconds, read.table.num_rows, read.method


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
        print("| path | alone, s | beside a busy thread, s | rows |")
        print("|---|---:|---:|---:|")
        counts = set()
        for method in ("cursor", "adbc"):
            alone = [timed(engine, stmt, method, False) for _ in range(args.repeat)]
            beside = [timed(engine, stmt, method, True) for _ in range(args.repeat)]
            counts |= {n for _, n, _ in alone + beside}
            print(f"| {alone[0][2]} | {min(s for s, _, _ in alone):.3f} | {min(s for s, _, _ in beside):.3f} "
                  f"| {alone[0][1]:,} |", flush=True)
        if len(counts) != 1:
            raise SystemExit(f"the paths read different row counts: {sorted(counts)}")


if __name__ == "__main__":
    main()
