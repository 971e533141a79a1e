"""The WMS sandbox: a 3PL that keeps its own master data, exports a full snapshot each night as
CSV files, and imports the correction files trueup drops in its inbound folder."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from trueup.systems.files import drop_stamp

FILES = {"ship_to": ["ship_to_code"], "items": ["sku"], "stock": ["sku", "location"]}


class WmsSandbox:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.state = self.root / "state"
        self.inbound = self.root / "inbound"
        self.exports = self.root / "exports"

    def save(self, name: str, table: pa.Table) -> None:
        self.state.mkdir(parents=True, exist_ok=True)
        tmp = self.state / f".{name}.tmp"
        pq.write_table(table, tmp)
        os.replace(tmp, self.state / f"{name}.parquet")

    def load(self, name: str) -> pa.Table:
        return pq.read_table(self.state / f"{name}.parquet")

    def export(self, at: datetime | None = None) -> Path:
        """Write a complete drop: every file, then the _SUCCESS marker last."""
        drop = self.exports / drop_stamp(at)
        drop.mkdir(parents=True, exist_ok=True)
        for name in FILES:
            pacsv.write_csv(self.load(name), drop / f"{name}.csv")
        (drop / "_SUCCESS").write_text("")
        return drop

    def process_inbound(self) -> int:
        """Apply every inbound correction file (in arrival order: a later line wins) to the WMS's
        master data, then export a fresh drop. Returns how many correction records found their
        record (the WMS ignores updates for records it does not hold). Columnar: the corrections
        are joined to each file (at the large size the stock file has 5M rows)."""
        files = sorted(self.inbound.glob("trueup_*.jsonl"), key=lambda p: p.stat().st_mtime) \
            if self.inbound.exists() else []
        if not files:
            return 0
        done = self.inbound / "processed"
        done.mkdir(parents=True, exist_ok=True)
        entity_file = {"customer": "ship_to", "product": "items", "inventory": "stock"}
        updates: dict[str, list[dict]] = {name: [] for name in FILES}  # one row per (line, field)
        lines = (line for f in files for line in f.read_text().splitlines() if line.strip())
        for seq, line in enumerate(lines):  # the corrections: a change set, not the WMS's tables
            rec = json.loads(line)
            name = entity_file[rec["entity"]]
            # the key columns kept apart: no separator for a value to collide with
            key = {f"k{i}": str(rec["key"][k]) for i, k in enumerate(FILES[name])}
            updates[name].append({**key, "seq": seq, "field": None, "value": None})  # the record itself
            for col, v in rec["fields"].items():
                updates[name].append({**key, "seq": seq, "field": col, "value": None if v is None else str(v)})
        now = datetime.now(timezone.utc).isoformat()
        changed = 0
        for name, keys in FILES.items():
            if not updates[name]:
                continue
            table, n = _apply(self.load(name), keys, pa.Table.from_pylist(updates[name], schema=pa.schema(
                [*[(f"k{i}", pa.string()) for i in range(len(keys))], ("seq", pa.int64()), ("field", pa.string()),
                 ("value", pa.string())])), now)
            changed += n
            self.save(name, table)
        for f in files:
            os.replace(f, done / f.name)
        self.export()
        return changed


def _apply(table: pa.Table, keys: list[str], updates: pa.Table, now: str) -> tuple[pa.Table, int]:
    """`table` with the updates laid over it (per record and field the latest line wins; a field
    the file has no column for is ignored; `updated_at`, where there is one, set to `now` on every
    record a line touched), and how many lines found their record. `updates` holds the record's
    key columns as k0, k1, ..., a line's `seq`, and one `field`/`value` per corrected field."""
    from trueup.duck import connect, fetch, q

    cols = table.column_names
    fields = [c for c in cols if c not in keys]
    ks = [f"k{i}" for i in range(len(keys))]

    def same_record(side: str) -> str:
        return " AND ".join(f"{side}{q(ks[i])} = CAST(t.{q(k)} AS VARCHAR)" for i, k in enumerate(keys))

    # per record, each field's latest value; columns aliased by position (names are the file's)
    per_record = ", ".join([f"bool_or(field = $f{j}) AS __has_{j}, "
                            f"max(value) FILTER (WHERE field = $f{j}) AS __new_{j}"
                            for j in range(len(fields))] or ["NULL AS __none"])
    value = {c: f"CASE WHEN x.k0 IS NOT NULL THEN CAST($now AS VARCHAR) ELSE t.{q(c)} END AS {q(c)}"
             if c == "updated_at" else f"CASE WHEN x.__has_{j} THEN x.__new_{j} ELSE t.{q(c)} END AS {q(c)}"
             for j, c in enumerate(fields)}
    params = {f"f{j}": c for j, c in enumerate(fields)} | ({"now": now} if "updated_at" in fields else {})
    con = connect()
    try:
        con.register("t", table)
        con.register("u", updates)
        found = con.execute(f"SELECT count(DISTINCT seq) FROM u WHERE EXISTS (SELECT 1 FROM t WHERE {same_record('')})"
                            ).fetchall()[0][0]
        out = fetch(con, f"""
            WITH l AS (SELECT * FROM (
                         SELECT *, row_number() OVER (PARTITION BY {", ".join(ks)}, field ORDER BY seq DESC) AS r
                         FROM u WHERE field IS NOT NULL) WHERE r = 1),
                 x AS (SELECT {", ".join(f"d.{k}" for k in ks)}, {per_record}
                       FROM (SELECT DISTINCT {", ".join(ks)} FROM u) d LEFT JOIN l USING ({", ".join(ks)})
                       GROUP BY ALL)
            SELECT {", ".join(value.get(c, f"t.{q(c)}") for c in cols)}
            FROM (SELECT *, row_number() OVER () AS __row FROM t) t LEFT JOIN x ON {same_record('x.')}
            ORDER BY t.__row""", params)
    finally:
        con.close()
    return out.cast(table.schema), found
