"""Schema drift: does a system's extract still have the columns, with the types, its mapping reads?

- a mapped column missing (or renamed)       -> error: the domain is held this run
- a column's type changed since the last good extract -> error
- an extra column                             -> warn: reported only
The last good schema per system and entity is kept as JSON in the warehouse.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from trueup.config import EntityMap


@dataclass
class SchemaResult:
    system: str
    entity: str
    missing: list[str]
    changed: dict[str, tuple[str, str]]  # column -> (was, now)
    extra: list[str]

    @property
    def passed(self) -> bool:
        return not self.missing and not self.changed

    def describe(self) -> str:
        parts = []
        if self.missing:
            parts.append(f"missing mapped column(s) {self.missing}")
        for c, (was, now) in self.changed.items():
            parts.append(f"column {c!r} changed type from {was} to {now}")
        if self.extra:
            parts.append(f"extra column(s) {self.extra}")
        return f"{self.system}.{self.entity}: " + ("; ".join(parts) if parts else "schema as expected")


def _type_family(t: pa.DataType) -> str:
    """Types compared by family: a source that widens int32 to int64 has not drifted."""
    if pa.types.is_integer(t):
        return "integer"
    if pa.types.is_floating(t) or pa.types.is_decimal(t):
        return "number"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "text"
    if pa.types.is_null(t):
        return "null"
    return str(t)


def check(system: str, entity: str, raw: pa.Table, mapping: EntityMap, snapshot_dir: Path | None = None
          ) -> SchemaResult:
    needed = set(mapping.key_columns) | {f.column for f in mapping.fields.values()}
    if mapping.updated_at:
        needed.add(mapping.updated_at)
    present = set(raw.column_names)
    types = {f.name: _type_family(f.type) for f in raw.schema}
    changed: dict[str, tuple[str, str]] = {}
    snap = Path(snapshot_dir) / f"{system}_{entity}.json" if snapshot_dir else None
    if snap and snap.exists():
        before = json.loads(snap.read_text())
        for c, was in before.items():
            now = types.get(c)
            # an all-null column (null type) says nothing about the column's type
            if now and was != now and "null" not in (was, now) and c in needed:
                changed[c] = (was, now)
    result = SchemaResult(system, entity, sorted(needed - present), changed,
                          sorted(present - needed - {"deleted"}))
    if snap and result.passed and raw.num_rows:
        snap.parent.mkdir(parents=True, exist_ok=True)
        snap.write_text(json.dumps({c: t for c, t in types.items() if t != "null"}, indent=1, sort_keys=True))
    return result
