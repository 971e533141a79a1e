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
        """Apply every inbound correction file (in arrival order) to the WMS's master data,
        then export a fresh drop. Returns how many records were changed."""
        files = sorted(self.inbound.glob("trueup_*.jsonl"), key=lambda p: p.stat().st_mtime) \
            if self.inbound.exists() else []
        if not files:
            return 0
        done = self.inbound / "processed"
        done.mkdir(parents=True, exist_ok=True)
        tables = {name: self.load(name).to_pylist() for name in FILES}
        index = {name: {tuple(str(r[k]) for k in keys): r for r in tables[name]} for name, keys in FILES.items()}
        entity_file = {"customer": "ship_to", "product": "items", "inventory": "stock"}
        now = datetime.now(timezone.utc).isoformat()
        changed = 0
        for f in files:
            for line in f.read_text().splitlines():
                if not line.strip():
                    continue
                rec = json.loads(line)
                name = entity_file[rec["entity"]]
                key = tuple(str(rec["key"][k]) for k in FILES[name])
                row = index[name].get(key)
                if row is None:
                    continue  # the WMS ignores updates for records it does not hold
                for col, v in rec["fields"].items():
                    row[col] = None if v is None else str(v)
                if "updated_at" in row:
                    row["updated_at"] = now
                changed += 1
            os.replace(f, done / f.name)
        for name in FILES:
            schema = self.load(name).schema
            self.save(name, pa.Table.from_pylist(tables[name], schema=schema))
        self.export()
        return changed
