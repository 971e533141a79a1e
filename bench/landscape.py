"""The benchmark landscapes: the demo generator at a large distributor's proportions, built once
and cached under bench/out/landscapes/<size>/ (a later run reuses it when the sizes match).

    large   200,000 sold-tos, ~1,000,000 ship-tos, 200,000 SKUs, ~5,000,000 price rows (26 price lists
            and contracts), 5,000,000 stock rows (25 locations), ~2% drift
    medium  a tenth of that; small a hundredth
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from datetime import date
from pathlib import Path

from sandbox.generator import Sizes

OUT = Path(__file__).resolve().parent / "out"
TODAY = date(2026, 11, 27)  # fixed, so a cached landscape stays valid on later days


def sizes(name: str) -> Sizes:
    factor = {"small": 0.01, "medium": 0.1, "large": 1.0}[name]
    return Sizes(sold_tos=int(200_000 * factor), skus=int(200_000 * factor), contracts=int(60_000 * factor),
                 max_ship_tos=9, warehouses=25, regional_lists=23)


def landscape(name: str) -> Path:
    """The cached landscape of that size (built now if absent or of other sizes)."""
    from sandbox.generator import build

    root = OUT / "landscapes" / name / "demo"
    meta = root / "landscape.json"
    want = asdict(sizes(name))
    if meta.exists() and json.loads(meta.read_text()).get("bench_sizes") == want:
        import sqlite3
        from contextlib import closing

        from sandbox.generator import add_change_indexes

        with closing(sqlite3.connect(root / "erp.sqlite")) as db:  # a landscape cached before they existed
            add_change_indexes(db)
            db.commit()
        return root
    t = time.perf_counter()
    info = build(root, seed=7, today=TODAY, sizes=sizes(name))
    info["bench_sizes"] = want
    info["build_seconds"] = round(time.perf_counter() - t, 1)
    meta.write_text(json.dumps(info, indent=2))
    return root


if __name__ == "__main__":
    for n in sys.argv[1:] or ["small"]:
        print(n, landscape(n), flush=True)
