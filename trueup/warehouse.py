"""The local warehouse: every intermediate result as a file a user can query with SQL.

Results people read (golden records, plans, write-back outcomes, quarantine, the crosswalk) are
Parquet: `duckdb -c "select * from '.trueup/warehouse/customer_plan.parquet'"`. The bulk hand-offs
between steps that only trueup reads again (the systems' extracts, staged and matched records) are
Arrow IPC files (`.arrow`), written as they are in memory and read back memory-mapped: at the large
size, re-writing and re-reading the nightly's tables took 92 s as Parquet, 11 s as Arrow IPC, some
15% of that nightly (docs/scaling.md). `trueup sql` queries either kind by name. A mapped file is
safe to replace on a local disk (the reader keeps the old inode); on a network filesystem shared
by several machines' steps, a step re-run while another machine maps its file may fault there.

Files are written to a temporary name and renamed, so a reader never sees half a table and a
re-executed step replaces its result instead of adding to it (and the file of the other kind, if a
step changed kind, is removed: one table, one file).
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

PARQUET, ARROW = "parquet", "arrow"
_SUFFIX = {PARQUET: ".parquet", ARROW: ".arrow"}


class Warehouse:
    ARROW = ARROW  # measured at the large size, price_matched (10M rows, 1.6 GB in memory):
    # Parquet (zstd) 6.4 s to write, 4.8 s to read; Arrow IPC 1.3 s to write, 0.03 s to map

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, *parts: str, kind: str = PARQUET) -> Path:
        """Where the table is (or would be) stored as `kind`. The suffix is added, not swapped: a
        range of days (`2026-11-01..2026-11-03`) keeps its last day in the name."""
        table = self.root.joinpath(*parts)
        return table.with_name(table.name + _SUFFIX[kind])

    def find(self, *parts: str) -> Path | None:
        """The table's file, whichever kind it was written as (the newer, should a crash have left
        both); None if it was never written."""
        found = [p for kind in (PARQUET, ARROW) if (p := self.path(*parts, kind=kind)).exists()]
        return max(found, key=lambda p: p.stat().st_mtime_ns) if found else None

    def write(self, table: pa.Table, *parts: str, row_group_size: int | None = None,
              kind: str = PARQUET) -> Path:
        # the other kind's file goes first: a crash in between leaves no table, never an old one
        for other in set(_SUFFIX) - {kind}:
            self.path(*parts, kind=other).unlink(missing_ok=True)
        return self.write_path(table, self.path(*parts, kind=kind), row_group_size=row_group_size)

    @staticmethod
    def write_path(table: pa.Table, path: Path, row_group_size: int | None = None) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            if path.suffix == _SUFFIX[ARROW]:
                # uncompressed, so a reader maps it instead of decoding it; chunks whose
                # dictionaries differ (a source's dictionary-encoded column) written as one
                options = pa.ipc.IpcWriteOptions(unify_dictionaries=True)
                with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema, options=options) as w:
                    w.write_table(table, max_chunksize=row_group_size)
            else:
                pq.write_table(table, tmp, compression="zstd", row_group_size=row_group_size)
            os.replace(tmp, path)
        finally:  # a failed write leaves no temporary file behind (at the large size, gigabytes)
            tmp.unlink(missing_ok=True)
        return path

    def read(self, *parts: str, columns: list[str] | None = None, filters=None) -> pa.Table | None:
        """The table (only `columns`, only rows passing `filters`, in pyarrow's filter form: a
        Parquet file's row groups whose statistics rule them out are not read), or None if it was
        never written."""
        path = self.find(*parts)
        return None if path is None else self.read_path(path, columns=columns, filters=filters)

    @staticmethod
    def read_path(path: Path, columns: list[str] | None = None, filters=None) -> pa.Table | None:
        if not path.exists():
            return None
        if path.suffix != _SUFFIX[ARROW]:
            return pq.read_table(path, columns=columns, filters=filters)
        # zero-copy: the table's buffers are the file's pages (the OS's cache, not trueup's heap);
        # the mapping outlives a later replace of the file (a rename leaves this inode alone)
        with pa.memory_map(str(path)) as source:
            table = pa.ipc.open_file(source).read_all()
        if not filters:
            return table.select(columns) if columns is not None else table
        # pyarrow's scanner copies only the columns asked for, and reads the filter's own even when
        # not asked for (a filter over the whole table first copied every column: 0.9-2.3 s for two
        # columns of the large price_matched's 18)
        return ds.dataset(table).to_table(columns=columns, filter=pq.filters_to_expression(filters))

    def exists(self, *parts: str) -> bool:
        return self.find(*parts) is not None
