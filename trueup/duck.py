"""DuckDB helpers shared by the engine."""

from __future__ import annotations

import threading

import duckdb
import pyarrow as pa


_db: tuple[int, duckdb.DuckDBPyConnection] | None = None
_opening = threading.Lock()  # threads staging systems side by side open the first session together


def connect() -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB session in UTC: the engine's columnar workbench.

    Sessions are cursors on one in-memory database per process: opening a database costs ~0.1 s,
    a cursor ~1 ms, and an incremental run opens dozens. What a session registers is its own
    (registered tables are connection-local) and goes when it is closed."""
    global _db
    import os

    with _opening:
        if _db is None or _db[0] != os.getpid():  # a forked process gets its own database
            sweep_spill_folders()
            _db = (os.getpid(), duckdb.connect(config=settings()))
        con = _db[1].cursor()
    con.execute("SET TimeZone = 'UTC'")
    return con


DEFAULT_MEMORY_LIMIT = "2GB"
SPILL_PREFIX = "trueup-duckdb-"


def settings() -> dict:
    """DuckDB's memory cap: `TRUEUP_DUCKDB_MEMORY_LIMIT` (e.g. `4GB`; `none` for DuckDB's own 80%
    of the machine), else 2 GB. Above it joins, aggregates and sorts spill to a folder of the
    process's own under `TRUEUP_DUCKDB_TEMP_DIR` (default the system's temp folder). Only the
    engine's working memory: the tables themselves are Arrow's. Uncapped, DuckDB keeps what it
    may: the large nightly's matching steps took 1-2 GB more (peak 6.3-6.4 GB uncapped, 5.0 GB
    capped) and the whole run no longer (284 and 304 s uncapped, 301 s capped)."""
    import os
    import tempfile

    limit = os.environ.get("TRUEUP_DUCKDB_MEMORY_LIMIT", "").strip() or DEFAULT_MEMORY_LIMIT
    folder = os.environ.get("TRUEUP_DUCKDB_TEMP_DIR")
    # memory a query freed goes back to the system, not kept by DuckDB's allocator for the next:
    # steps run one after another in one process, and each would otherwise start on the last
    # one's high-water mark (~0.6 GB kept after the large price golden records)
    out: dict = {"allocator_background_threads": True}
    capped = limit.lower() != "none"
    if capped:
        out["memory_limit"] = limit
    if capped or folder:  # a folder of this process's own: parallel steps must not share spill files
        out["temp_directory"] = os.path.join(folder or tempfile.gettempdir(), f"{SPILL_PREFIX}{os.getpid()}")
    return out


def sweep_spill_folders(folder: str | None = None) -> list[str]:
    """Remove the spill folders of trueup processes that are gone (DuckDB removes its own on a
    clean exit; a killed run's stay, with whatever it had spilled). Returns what was removed."""
    import os
    import shutil
    import tempfile

    root = folder or os.environ.get("TRUEUP_DUCKDB_TEMP_DIR") or tempfile.gettempdir()
    removed = []
    try:
        names = os.listdir(root)
    except OSError:
        return removed
    for name in names:
        pid = name.removeprefix(SPILL_PREFIX)
        if name == pid or not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)  # alive (or not ours to signal): leave it
            continue
        except ProcessLookupError:
            pass
        except OSError:
            continue
        shutil.rmtree(os.path.join(root, name), ignore_errors=True)
        removed.append(name)
    return removed


def fetch(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> pa.Table:
    """Run a query and return its rows as an Arrow table, without the DB-API copy."""
    rel = con.sql(sql, params=params) if params else con.sql(sql)
    if rel is None:  # a statement, not a query
        return pa.table({})
    to_arrow = getattr(rel, "to_arrow_table", None) or rel.fetch_arrow_table  # renamed in DuckDB 2
    return to_arrow()


def literal(value: str) -> str:
    """A SQL string literal, for the few values that must be text in the statement (a view's
    file path, a name from validated config in a CASE); values from data are bound parameters."""
    return "'" + value.replace("'", "''") + "'"


def sql_type(t: pa.DataType) -> str:
    """DuckDB's name for an Arrow type of the canonical model."""
    if pa.types.is_decimal(t):
        return f"DECIMAL({t.precision},{t.scale})"
    if pa.types.is_integer(t):
        return "BIGINT"
    if pa.types.is_boolean(t):
        return "BOOLEAN"
    if pa.types.is_date(t):
        return "DATE"
    if pa.types.is_timestamp(t):
        return "TIMESTAMPTZ"
    return "VARCHAR"


def q(identifier: str) -> str:
    """Quote an identifier that config validation has already restricted to [A-Za-z0-9_]."""
    return '"' + identifier.replace('"', '""') + '"'


def query(sql: str, params: list | None = None, **tables: pa.Table) -> pa.Table:
    """One query over Arrow tables registered under the given names, in a session of its own."""
    con = connect()
    try:
        for name, table in tables.items():
            con.register(name, table)
        return fetch(con, sql, params)
    finally:
        con.close()
