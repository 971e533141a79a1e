"""The local warehouse: every intermediate result as a Parquet file a user can query with SQL
(`duckdb -c "select * from '.trueup/warehouse/customer/golden.parquet'"`).

Files are written to a temporary name and renamed, so a reader never sees half a table and a
re-executed step replaces its result instead of adding to it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


class Warehouse:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts).with_suffix(".parquet")

    def write(self, table: pa.Table, *parts: str, row_group_size: int | None = None) -> Path:
        return self.write_path(table, self.path(*parts), row_group_size=row_group_size)

    @staticmethod
    def write_path(table: pa.Table, path: Path, row_group_size: int | None = None) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        pq.write_table(table, tmp, compression="zstd", row_group_size=row_group_size)
        os.replace(tmp, path)
        return path

    def read(self, *parts: str, columns: list[str] | None = None, filters=None) -> pa.Table | None:
        """The table (only `columns`, only rows passing `filters`: row groups whose statistics
        rule them out are not read), or None if it was never written."""
        return self.read_path(self.path(*parts), columns=columns, filters=filters)

    @staticmethod
    def read_path(path: Path, columns: list[str] | None = None, filters=None) -> pa.Table | None:
        return pq.read_table(path, columns=columns, filters=filters) if path.exists() else None

    def exists(self, *parts: str) -> bool:
        return self.path(*parts).exists()
