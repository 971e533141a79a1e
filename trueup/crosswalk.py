"""The crosswalk of one domain: which golden record every source record ever seen belongs to.

A full run rewrites it whole (`replace`); an incremental run only adds the records it saw move
or appear (`add`, one small delta file per run), so its cost follows the change, not the 10M rows
of a large price crosswalk. Readers see the base with every delta laid over it, newest last
(`read`, or `register` for a DuckDB view that reads only what a query needs). The next `replace`
folds the deltas it read into the new base and removes them; a delta written meanwhile stays and
still wins over the base, being newer.

    <warehouse>/state/crosswalk/<domain>.parquet           the base
    <warehouse>/state/crosswalk/<domain>.d/<ns>-<pid>.parquet   deltas, in time order
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import duckdb
import pyarrow as pa

from trueup.duck import connect, fetch
from trueup.reconcile import CROSSWALK_SCHEMA
from trueup.warehouse import Warehouse

# `read`/`register` lay the deltas over the base: per record the newest delta row wins, and a
# base row a delta mentions is dropped
_LAYERED = """
    WITH d AS (
        SELECT domain, source_system, source_key, golden_id FROM (
            SELECT *, row_number() OVER (PARTITION BY source_system, source_key ORDER BY seq DESC) AS rn
            FROM __deltas) WHERE rn = 1)
    SELECT b.* FROM __base b
    WHERE NOT EXISTS (SELECT 1 FROM d WHERE d.source_system = b.source_system AND d.source_key = b.source_key)
    UNION ALL SELECT * FROM d"""


class CrosswalkStore:
    """One domain's crosswalk in the warehouse: a base a full run writes, deltas incremental runs add."""

    def __init__(self, warehouse: Warehouse, domain: str):
        self.domain = domain
        self.base = warehouse.path("state", "crosswalk", domain)
        self.delta_dir = self.base.with_suffix(".d")
        self._read: list[Path] = []  # the deltas the last `read` saw (what `replace` folds in)

    def _deltas(self) -> list[Path]:
        return sorted(self.delta_dir.glob("*.parquet")) if self.delta_dir.exists() else []

    def register(self, con: duckdb.DuckDBPyConnection, name: str = "crosswalk",
                 deltas: list[Path] | None = None) -> bool:
        """A view `name` over the crosswalk (base and `deltas`, default those there now) on `con`;
        False when there is none. DuckDB reads the files as a query needs them: a join on keys
        scans two columns of the base, it does not load the table."""
        deltas = self._deltas() if deltas is None else deltas
        if not self.base.exists() and not deltas:
            return False
        base = (con.read_parquet(str(self.base)) if self.base.exists()
                else con.from_arrow(CROSSWALK_SCHEMA.empty_table()))
        base.select("domain, source_system, source_key, golden_id").create_view("__base", replace=True)
        if deltas:
            con.read_parquet([str(p) for p in deltas], filename=True).select(
                "domain, source_system, source_key, golden_id, filename AS seq").create_view("__deltas", replace=True)
            con.execute(f'CREATE OR REPLACE TEMP VIEW "{name}" AS {_LAYERED}')
        else:
            con.execute(f'CREATE OR REPLACE TEMP VIEW "{name}" AS SELECT * FROM __base')
        return True

    def read(self) -> pa.Table | None:
        """The whole crosswalk, or None if no run wrote one yet (remembering which deltas it
        read, for `replace`)."""
        self._read = self._deltas()
        if not self._read:
            return Warehouse.read_path(self.base)
        con = connect()
        try:  # exactly the deltas listed above: one written meanwhile is not folded, so `replace` keeps it
            self.register(con, deltas=self._read)
            return fetch(con, "SELECT * FROM crosswalk").cast(CROSSWALK_SCHEMA)
        finally:
            con.close()

    def counts(self) -> dict[str, int]:
        """Records per source system."""
        con = connect()
        try:
            if not self.register(con):
                return {}
            return dict(con.execute("SELECT source_system, count(*) FROM crosswalk GROUP BY 1").fetchall())
        finally:
            con.close()

    def keys_of(self, plan: pa.Table) -> pa.Table:
        """The records the crosswalk knows under the plan's target keys (source_system, source_key):
        what a gate needs to tell a create of a key the system already has."""
        con = connect()
        try:
            if not self.register(con):
                return CROSSWALK_SCHEMA.empty_table().select(["source_system", "source_key"])
            con.register("plan", plan.select(["target_system", "target_key"]))
            return fetch(con, "SELECT DISTINCT cw.source_system, cw.source_key FROM crosswalk cw JOIN plan p "
                              "ON p.target_system = cw.source_system AND p.target_key = cw.source_key")
        finally:
            con.close()

    def replace(self, table: pa.Table) -> None:
        """A full run's crosswalk: the new base; the deltas the run read are in it now."""
        Warehouse.write_path(table.cast(CROSSWALK_SCHEMA), self.base)
        for p in self._read:
            p.unlink(missing_ok=True)
        self._read = []

    def add(self, rows: pa.Table) -> Path | None:
        """An incremental run's new and moved records, laid over what is there."""
        if rows.num_rows == 0:
            return None
        self.delta_dir.mkdir(parents=True, exist_ok=True)
        path = self.delta_dir / f"{time.time_ns():020d}-{os.getpid()}.parquet"
        return Warehouse.write_path(rows.cast(CROSSWALK_SCHEMA), path)
