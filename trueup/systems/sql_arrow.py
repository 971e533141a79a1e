"""Reading a SQL query into Arrow fast, on each database make.

Measured (bench/extract_throughput.py, figures in docs/architecture.md): the per-row DB-API path
costs seconds per million rows, an Arrow-native driver a fraction of that. So a full read takes
the fastest robust path of its dialect and falls back to a server-side cursor read in chunks:

    postgresql   ADBC (libpq, binary COPY into Arrow); a large table in ctid ranges over
                 several connections sharing one exported snapshot -> server-side cursor, chunked
    sqlite       ADBC (the SQLite C API into Arrow)       -> cursor, chunked
    mysql/maria  connectorx (the MySQL protocol in Rust) -> server-side cursor, chunked
    others       server-side cursor, chunked

The fast paths run statements without bound parameters (a full extract: identifiers from validated
config, no values). A statement with values (an incremental `since`) goes through SQLAlchemy, whose
drivers bind every value, except on SQLite, where ADBC binds them: Python's sqlite3 hands the
interpreter's lock back and forth around every row it steps, and beside a busy thread (another
system's read parsing JSON, the journal) each hand-back waits for that thread to let go
(bench/bound_read.py, 50,000 changed of 5M prices: 0.34-0.41 s alone, 2.6-34 s beside a busy
thread, varying run to run with the scheduling; ADBC 0.18-0.24 s either way). Money stays decimal
on every path (NUMERIC with a declared scale becomes decimal128, never float), timestamps keep
their time zone, and text is UTF-8 whatever the script.
"""

from __future__ import annotations

import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa

log = logging.getLogger(__name__)

CHUNK_ROWS = 50_000
# A PostgreSQL table of at least this many 8 KiB pages (64 MiB) per reader is read in parallel ctid ranges:
# below it the extra connections cost more than they save (bench/extract_throughput.py).
PARALLEL_MIN_PAGES = 8192
PARALLEL_MAX_READERS = 4
_SQLITE_MISMATCH = re.compile(r"Type mismatch in column (\d+)")


@dataclass
class ArrowRead:
    table: pa.Table
    method: str  # adbc | connectorx | cursor


def dialect_of(engine: sa.Engine) -> str:
    """'postgresql', 'sqlite', 'mysql' (MySQL and MariaDB alike) or the engine's own name."""
    name = engine.dialect.name
    return "mysql" if name in ("mysql", "mariadb") else name


def fast_method(engine: sa.Engine) -> str | None:
    """The Arrow-native reader for this engine's database, if its driver is installed."""
    d = dialect_of(engine)
    try:
        if d == "postgresql":
            import adbc_driver_postgresql.dbapi  # noqa: F401
            return "adbc"
        if d == "sqlite" and engine.url.database not in (None, "", ":memory:"):
            import adbc_driver_sqlite.dbapi  # noqa: F401
            return "adbc"
        if d == "mysql":
            import connectorx  # noqa: F401
            return "connectorx"
    except ImportError:
        return None
    return None


def _sqlite_wal(engine: sa.Engine) -> bool | None:
    """Whether the SQLite database keeps a write-ahead log (None: no such file, or it could not be
    asked). ADBC's driver carries its own copy of SQLite, and two copies in one process do not see
    each other's file locks: in a process whose own connections (Python's sqlite3, through
    SQLAlchemy) have the database open, ADBC's copy read a committed update's old rows, then on
    closing took itself for the last connection and checkpointed and deleted the log under the
    others, whose next commit was then lost. Such a database is read through the engine's cursor."""
    if not Path(engine.url.database).exists():
        return None
    try:
        with engine.connect() as c:
            return str(c.exec_driver_sql("PRAGMA journal_mode").scalar()).lower() == "wal"
    except sa.exc.DBAPIError:
        return None


def read_arrow(engine: sa.Engine, stmt: sa.Executable, *, method: str | None = None,
               table: str | None = None, readers: int | None = None) -> ArrowRead:
    """The statement's rows as one Arrow table, by the fastest path that works here.

    `method` forces a path ('adbc', 'connectorx', 'cursor'); by default the dialect's fast path is
    tried first and any failure of it (a driver missing, a type it cannot carry) falls back to the
    cursor, with a warning that names the reason but never the URL. `table` says the statement is a
    plain select of that one table (no WHERE of its own): on PostgreSQL a large one is then read by
    `readers` connections at once (default: the cores, at most PARALLEL_MAX_READERS), each a range
    of its pages, all in one snapshot so the result is one consistent read.
    """
    compiled = stmt.compile(dialect=engine.dialect, compile_kwargs={"render_postcompile": True})
    has_params = bool(compiled.params) and any(v is not None for v in compiled.params.values())
    # the one fast path that binds values (module docstring), for values it can name: an expanded
    # IN list's are the cursor's
    binds_values = dialect_of(engine) == "sqlite" and all(n in compiled.binds for n in compiled.positiontup or ())
    chosen = method or (None if has_params and not binds_values else fast_method(engine))
    if chosen == "adbc" and dialect_of(engine) == "sqlite" and _sqlite_wal(engine) is not False:
        if method:
            raise ValueError("a SQLite database in WAL mode (or one that could not be asked) is read through "
                             "the cursor: ADBC's own SQLite library would lose this process's writes")
        chosen = None
    if chosen and chosen != "cursor":
        try:
            sql = compiled.string
            if has_params and not (chosen == "adbc" and binds_values):
                raise ValueError("this Arrow-native path runs only statements without values (or, on "
                                 "SQLite, with values it can name: not an expanded IN list)")
            values = _bound_values(compiled, engine.dialect) if has_params else None
            if values is not None:
                return ArrowRead(normalize(_read_adbc(engine, sql, values)), chosen)
            if chosen == "adbc" and table and dialect_of(engine) == "postgresql" and isinstance(stmt, sa.Select):
                got, parts = _read_adbc_postgres_parallel(engine, stmt, table, readers)
                return ArrowRead(normalize(got), "adbc" if parts == 1 else f"adbc x{parts}")
            reader = {"adbc": _read_adbc, "connectorx": _read_connectorx}[chosen]
            return ArrowRead(normalize(reader(engine, sql)), chosen)
        except Exception as exc:  # noqa: BLE001 - any failure of the fast path falls back
            if method:
                raise
            log.warning("%s read via %s failed (%s: %s); reading with a server-side cursor",
                        dialect_of(engine), chosen, type(exc).__name__, _masked(engine, str(exc))[:200])
    return ArrowRead(normalize(_read_cursor(engine, stmt)), "cursor")


def sqlite_by_adbc(engine: sa.Engine) -> bool:
    """Whether this engine's database is one ADBC may read: a SQLite file not in WAL mode, with
    the driver installed (`_sqlite_wal` says why a WAL-mode one is not). ADBC's own copy of SQLite
    does not share this process's file locks outside WAL mode either: closing its connection lets
    go of the locks the process holds on the file. trueup reads so only where no thread of the
    process has a transaction open on that file (the reads of a sync, the look before a write-back)."""
    return dialect_of(engine) == "sqlite" and fast_method(engine) == "adbc" and _sqlite_wal(engine) is False


def read_sqlite_by_keys(engine: sa.Engine, create_keys: str, keys_table: str, keys: pa.Table, select: str) -> pa.Table:
    """`select`'s rows for the keys given, on SQLite through ADBC: `create_keys` makes the
    temporary table `keys_table` (with the key columns' own types, so the join uses the table's
    index), the keys go into it as Arrow (bound, never SQL text) and `select` joins it, all on a
    connection of its own (the table goes with it). Beside a busy thread the cursor's per-row hand
    of the interpreter's lock made 50,000 keys take 4.8-105 s against 0.7-1.9 s alone; here
    0.3-0.9 s either way (bench/bound_read.py and a script; the module docstring says why)."""
    import adbc_driver_sqlite.dbapi as adbc

    con = adbc.connect(engine.url.database)
    try:
        with con.cursor() as cur:
            cur.execute(create_keys)
            cur.adbc_ingest(keys_table, keys, mode="append", temporary=True)
        return normalize(_read_adbc_sqlite(con, select))
    finally:
        con.close()


def _masked(engine: sa.Engine, message: str) -> str:
    """A driver's message with the password taken out, should the driver have echoed its URL."""
    password = engine.url.password
    return message.replace(str(password), "***") if password else message


# ------------------------------------------------------------------ the paths


def _driver_url(engine: sa.Engine, scheme: str) -> str:
    # the URL with its password, for the driver only: never logged, never returned
    url = engine.url.set(drivername=scheme, query={})
    return url.render_as_string(hide_password=False)


def _bound_values(compiled, dialect) -> list:
    """The statement's values in placeholder order, as SQLAlchemy hands them to the driver (each
    through its type's bind processing: a timestamp becomes the text SQLite stores and compares)."""
    if not compiled.positional:
        raise ValueError("values are bound here by position only")
    params = compiled.construct_params()
    out = []
    for name in compiled.positiontup:
        process = compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect)
        out.append(process(params[name]) if process else params[name])
    return out


def _read_adbc(engine: sa.Engine, sql: str, values: list | None = None) -> pa.Table:
    d = dialect_of(engine)
    if values is not None and d != "sqlite":
        raise ValueError("only the SQLite fast path binds values")
    if d == "postgresql":
        import adbc_driver_postgresql.dbapi as adbc

        con = adbc.connect(_driver_url(engine, "postgresql"))
        try:
            return _read_adbc_postgres(con, sql)
        finally:
            con.close()
    import adbc_driver_sqlite.dbapi as adbc

    con = adbc.connect(engine.url.database)
    try:
        return _read_adbc_sqlite(con, sql, tuple(values or ()))
    finally:
        con.close()


def _read_adbc_sqlite(con, sql: str, values: tuple = ()) -> pa.Table:
    """SQLite types values, not columns: ADBC infers a column's type from its first rows, and a
    column whose first rows are NULL (a parent number, a valid-to date) is guessed INT64 and then
    meets text. Such a column is read again with a text sentinel row in front, so ADBC sees text
    first (and turns later numbers into text, which the mapping parses like every source's text),
    instead of giving the whole read up to the per-row cursor."""
    as_text: set[int] = set()
    names: list[str] | None = None
    while True:
        query = sql
        if as_text:
            sentinel = ", ".join(("'' AS " if i in as_text else "NULL AS ") + _qi(n) for i, n in enumerate(names))
            query = (f"SELECT 1 AS __trueup_sentinel, {sentinel} "
                     f"UNION ALL SELECT NULL, q.* FROM ({sql}) AS q")
        try:
            with con.cursor() as cur:
                cur.execute(query, values or None)
                table = cur.fetch_arrow_table()
        except Exception as exc:  # noqa: BLE001 - only a type guess is retried, anything else raises
            m = _SQLITE_MISMATCH.search(str(exc))
            if not m:
                raise
            if names is None:
                with con.cursor() as cur:
                    cur.execute(f"SELECT * FROM ({sql}) AS q LIMIT 0", values or None)
                    names = cur.fetch_arrow_table().column_names
            column = int(m.group(1)) - (1 if as_text else 0)  # the sentinel flag is column 0
            if column in as_text or not 0 <= column < len(names):
                raise
            as_text.add(column)
            continue
        if not as_text:
            return table
        if table.num_rows == 0 or table.column(0)[0].as_py() != 1:
            raise RuntimeError("SQLite returned the sentinel row out of place")
        return table.slice(1).drop_columns(["__trueup_sentinel"])


def _read_adbc_postgres(con, sql: str) -> pa.Table:
    """ADBC's own NUMERIC decoding costs more than the rest of a row together (measured: 2.5 s of
    4.1 s for a million 5-column rows), PostgreSQL's text output of it far less: so NUMERIC
    columns travel as text and become decimal128(p, s) here, from the typmod of a zero-row probe."""
    probe, wrap = _numeric_as_text(con, sql)
    with con.cursor() as cur:
        cur.execute(wrap(sql))
        return _numeric_from_text(cur.fetch_arrow_table(), probe)


def _numeric_as_text(con, sql: str):
    """The query's zero-row schema, and a function that wraps a query of that shape so its
    NUMERIC columns come back as text."""
    with con.cursor() as cur:
        cur.execute(f"SELECT * FROM ({sql}) AS q LIMIT 0")
        probe = cur.fetch_arrow_table().schema
    numeric = {f.name for f in probe if (f.metadata or {}).get(b"POSTGRESQL:type") == b"numeric"}
    if not numeric:
        return probe, lambda q: q
    cols = ", ".join(f"CAST(q.{_qi(f.name)} AS text) AS {_qi(f.name)}" if f.name in numeric
                     else f"q.{_qi(f.name)}" for f in probe)
    return probe, lambda q: f"SELECT {cols} FROM ({q}) AS q"


def _numeric_from_text(table: pa.Table, probe: pa.Schema) -> pa.Table:
    for f in probe:
        if (f.metadata or {}).get(b"POSTGRESQL:type") != b"numeric":
            continue
        dec = _decimal_of_typmod(int((f.metadata or {}).get(b"POSTGRESQL:typmod", b"-1") or -1))
        if dec is not None:
            i = table.schema.get_field_index(f.name)
            table = table.set_column(i, pa.field(f.name, dec), pc.cast(table.column(i), dec))
    return table


def _read_adbc_postgres_parallel(engine: sa.Engine, stmt: sa.Select, table: str,
                                 readers: int | None) -> tuple[pa.Table, int]:
    """A large table read as page (ctid) ranges by several connections at once, as DuckDB's
    postgres scanner does: the first connection exports its snapshot and the others import it, so
    the parts are one consistent read of the table even while it is being written. A small table,
    a view or a server before 14 (no TID range scans) is read by one connection."""
    import adbc_driver_postgresql.dbapi as adbc

    url = _driver_url(engine, "postgresql")
    first = adbc.connect(url, autocommit=True)  # transactions below are explicit
    cons = [first]
    try:
        with first.cursor() as cur:
            cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            cur.execute("SELECT c.relkind, pg_relation_size(c.oid) / current_setting('block_size')::int, "
                        "current_setting('server_version_num')::int FROM pg_class c WHERE c.oid = to_regclass($1)",
                        (table,))
            kind, pages, version = cur.fetchone() or (None, 0, 0)
        n = min(readers or min(os.cpu_count() or 1, PARALLEL_MAX_READERS), max(1, (pages or 0) // PARALLEL_MIN_PAGES))
        sql = str(stmt.compile(dialect=engine.dialect))
        if kind not in ("r", "m") or version < 140000 or n < 2:
            return _read_adbc_postgres(first, sql), 1
        with first.cursor() as cur:
            cur.execute("SELECT pg_export_snapshot()")
            snapshot = cur.fetchone()[0]
        for _ in range(n - 1):
            con = adbc.connect(url, autocommit=True)
            cons.append(con)
            with con.cursor() as cur:
                cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                cur.execute(f"SET TRANSACTION SNAPSHOT '{_snapshot_id(snapshot)}'")
        probe, wrap = _numeric_as_text(first, sql)
        bounds = [pages * i // n for i in range(n)] + [None]

        def part(i: int) -> pa.Table:
            # bounds are integers this function computed: no value comes from outside
            cond = f"ctid >= '({bounds[i]},0)'::tid" + (f" AND ctid < '({bounds[i + 1]},0)'::tid"
                                                        if bounds[i + 1] is not None else "")
            part_sql = str(stmt.where(sa.text(cond)).compile(dialect=engine.dialect))
            with cons[i].cursor() as cur:
                cur.execute(wrap(part_sql))
                return _numeric_from_text(cur.fetch_arrow_table(), probe)

        with ThreadPoolExecutor(n) as pool:  # the drivers and Arrow's casts release the GIL
            parts = list(pool.map(part, range(n)))
        return pa.concat_tables(parts), n
    finally:
        for con in cons:
            try:
                with con.cursor() as cur:
                    cur.execute("ROLLBACK")  # read only: nothing to keep
            except Exception:  # noqa: BLE001,S110 - closing anyway
                pass
            con.close()


def _snapshot_id(snapshot: str) -> str:
    """A snapshot id as PostgreSQL prints them (hex groups and dashes), checked before it is put
    into SET TRANSACTION SNAPSHOT, which takes no bound parameter."""
    if not snapshot or any(ch not in "0123456789ABCDEFabcdef-" for ch in snapshot):
        raise ValueError(f"unexpected snapshot id from the server: {snapshot!r}")
    return snapshot


def _qi(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _decimal_of_typmod(typmod: int) -> pa.DataType | None:
    """NUMERIC(p, s) from PostgreSQL's typmod ((p << 16 | s) + 4); None when undeclared."""
    if typmod < 4:
        return None
    precision, scale = ((typmod - 4) >> 16) & 0xFFFF, (typmod - 4) & 0xFFFF
    return pa.decimal128(precision, scale) if 0 < precision <= 38 else None


def _read_connectorx(engine: sa.Engine, sql: str) -> pa.Table:
    import connectorx as cx

    scheme = "postgresql" if dialect_of(engine) == "postgresql" else "mysql"
    table = cx.read_sql(_driver_url(engine, scheme), sql, return_type="arrow")
    return table if isinstance(table, pa.Table) else pa.Table.from_batches(table)


def _read_cursor(engine: sa.Engine, stmt: sa.Executable) -> pa.Table:
    """Server-side cursor (where the driver has one), fetched in chunks of CHUNK_ROWS rows, each
    chunk converted column-wise: memory stays at a chunk of Python objects, not the table."""
    parts: list[pa.Table] = []
    with engine.connect() as conn:
        result = conn.execution_options(stream_results=True, max_row_buffer=CHUNK_ROWS).execute(stmt)
        columns = list(result.keys())
        for chunk in result.partitions(CHUNK_ROWS):
            parts.append(rows_to_arrow(columns, chunk))
    if not parts:
        return rows_to_arrow(columns, [])
    return unify(parts)


def rows_to_arrow(columns: list[str], rows) -> pa.Table:
    """Column-wise conversion of DB-API rows; a column of mixed types arrives as text."""
    data = list(zip(*rows)) if rows else [[] for _ in columns]
    arrays = []
    for values in data:
        try:
            arrays.append(pa.array(values))
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            arrays.append(pa.array([None if v is None else _text(v) for v in values], pa.string()))
    return pa.table(dict(zip(columns, arrays))) if columns else pa.table({})


def _text(v) -> str:
    return format(v, "f") if isinstance(v, Decimal) else str(v)


def unify(parts: list[pa.Table]) -> pa.Table:
    """Chunks that inferred different types for a column (all-NULL chunk, int then float, decimals
    of different scales) as one table: widen where Arrow can, else make the column text."""
    try:
        return pa.concat_tables(parts, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        pass
    names = parts[0].column_names
    fixed = []
    for t in parts:
        cols = {}
        for n in names:
            types = {p.schema.field(n).type for p in parts if not pa.types.is_null(p.schema.field(n).type)}
            col = t.column(n)
            cols[n] = col.cast(pa.string()) if len(types) > 1 else col
        fixed.append(pa.table(cols))
    return pa.concat_tables(fixed, promote_options="permissive")


def normalize(table: pa.Table) -> pa.Table:
    """Plain Arrow types only: driver extension types unwrapped (PostgreSQL NUMERIC arrives from
    ADBC as text tagged with its typmod: with a declared scale it becomes decimal128(p, s), exactly),
    and no driver metadata carried into the warehouse."""
    fields, arrays = [], []
    for field, col in zip(table.schema, table.columns):
        meta = field.metadata or {}
        if isinstance(field.type, pa.BaseExtensionType):
            col = pa.chunked_array([c.storage for c in col.chunks], field.type.storage_type)
            numeric = meta.get(b"POSTGRESQL:type") == b"numeric" or meta.get(b"ADBC:postgresql:typname") == b"numeric"
            dec = _decimal_of_typmod(int(meta.get(b"POSTGRESQL:typmod", b"-1") or -1)) if numeric else None
            if dec is not None:
                col = pc.cast(col, dec)
        fields.append(pa.field(field.name, col.type))
        arrays.append(col)
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))
