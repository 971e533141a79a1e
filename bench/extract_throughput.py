"""Extraction throughput per backend: rows per second and peak memory of each read method.

    uv run python bench/extract_throughput.py --rows 1000000 [--rows 5000000]
        [--backends postgresql,mariadb,sqlite] [--methods trueup,adbc,connectorx,duckdb,cursor,pandas]
        [--duckdb14-python /path/to/venv/bin/python] [--repeat 3] [--keep]

A 5-column table (id BIGINT, sku text, qty BIGINT, price NUMERIC(18,4), updated_at timestamp) is
generated inside each server (PostgreSQL generate_series, MariaDB's sequence engine, a recursive
CTE in SQLite) in a database of its own (`trueup_bench`; a file for SQLite), then every method
reads all of it into one Arrow table in a fresh subprocess, so the peak RSS (ru_maxrss) belongs to
that method alone. Methods:

    trueup      trueup.systems.sql_arrow.read_arrow: the path the SQL adapter takes (on PostgreSQL
                a large table in page ranges over several ADBC connections sharing one snapshot)
    adbc        ADBC (PostgreSQL, SQLite), one connection
    adbc_parallel  PostgreSQL: the same parallel path, forced (also for tables under its size threshold)
    connectorx  connectorx (PostgreSQL, MariaDB)
    duckdb      DuckDB's postgres/mysql/sqlite scanner extensions from the PyPI packages
                duckdb-ext-{postgres,mysql,sqlite}, built for DuckDB 1.4.4: run with the python of
                a venv that has duckdb==1.4.4 and those packages (--duckdb14-python)
    cursor      SQLAlchemy server-side cursor, chunked, column-wise to Arrow (the fallback)
    pandas      pandas.read_sql then pyarrow.Table.from_pandas (the usual baseline)

Server URLs (admin): TRUEUP_BENCH_PG_URL (default postgresql://postgres@127.0.0.1:5432/test),
TRUEUP_BENCH_MARIADB_URL (default mysql://root@127.0.0.1:3306/test). Credentials travel to the
children in the environment, never on a command line, and are never printed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

DB = "trueup_bench"
ALL_METHODS = {
    "postgresql": ["trueup", "adbc", "adbc_parallel", "connectorx", "duckdb", "cursor", "pandas"],
    "mariadb": ["trueup", "connectorx", "duckdb", "cursor", "pandas"],
    "sqlite": ["trueup", "adbc", "duckdb", "cursor", "pandas"],
}


def _urls() -> dict[str, str]:
    pg = os.environ.get("TRUEUP_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
    my = os.environ.get("TRUEUP_BENCH_MARIADB_URL", "mysql://root@127.0.0.1:3306/test")
    return {"postgresql": pg, "mariadb": my}


def _with_db(url: str, db: str) -> str:
    import sqlalchemy as sa

    return sa.engine.make_url(url).set(database=db).render_as_string(hide_password=False)


def _sa_url(url: str, kind: str) -> str:
    import sqlalchemy as sa

    u = sa.engine.make_url(url)
    driver = {"postgresql": "postgresql+psycopg", "mariadb": "mysql+pymysql"}[kind]
    u = u.set(drivername=driver)
    if kind == "mariadb":
        u = u.update_query_dict({"charset": "utf8mb4"})
    return u.render_as_string(hide_password=False)


# ------------------------------------------------------------------ data


def setup(kind: str, rows: int, sqlite_dir: Path) -> tuple[str, str]:
    """Create (if absent) the benchmark table with `rows` rows; returns (SQLAlchemy URL, table)."""
    import sqlalchemy as sa

    table = f"bench_{rows}"
    if kind == "sqlite":
        sqlite_dir.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{sqlite_dir / f'{table}.sqlite'}"
        engine = sa.create_engine(url)
        with engine.begin() as c:
            if not sa.inspect(c).has_table(table):
                c.exec_driver_sql(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, sku TEXT, qty INTEGER, "
                                  f"price NUMERIC(18,4), updated_at TEXT)")
                c.exec_driver_sql(
                    f"WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < {rows}) "
                    f"INSERT INTO {table} SELECT n, 'SKU-' || printf('%08d', n), (n * 7) % 5000, "
                    f"((n * 13) % 100000) / 100.0, datetime('2026-01-01', '+' || n || ' seconds') FROM g")
        engine.dispose()
        return url, table
    admin = sa.create_engine(_sa_url(_urls()[kind], kind), isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        if kind == "postgresql":
            if not c.exec_driver_sql(f"SELECT 1 FROM pg_database WHERE datname = '{DB}'").first():
                c.exec_driver_sql(f"CREATE DATABASE {DB}")
        else:
            c.exec_driver_sql(f"CREATE DATABASE IF NOT EXISTS {DB} CHARACTER SET utf8mb4")
    admin.dispose()
    url = _sa_url(_with_db(_urls()[kind], DB), kind)
    engine = sa.create_engine(url)
    with engine.begin() as c:
        if not sa.inspect(c).has_table(table):
            if kind == "postgresql":
                c.exec_driver_sql(f"CREATE TABLE {table} (id BIGINT PRIMARY KEY, sku VARCHAR(32), qty BIGINT, "
                                  f"price NUMERIC(18,4), updated_at TIMESTAMPTZ)")
                c.exec_driver_sql(
                    f"INSERT INTO {table} SELECT g, 'SKU-' || lpad(g::text, 8, '0'), (g * 7) %% 5000, "
                    f"((g * 13) %% 100000) / 100.0, timestamptz '2026-01-01 00:00:00+00' + g * interval '1 second' "
                    f"FROM generate_series(1, {rows}) g")
            else:
                c.exec_driver_sql(f"CREATE TABLE {table} (id BIGINT PRIMARY KEY, sku VARCHAR(32), qty BIGINT, "
                                  f"price DECIMAL(18,4), updated_at DATETIME(6)) ENGINE=InnoDB")
                c.exec_driver_sql(
                    f"INSERT INTO {table} SELECT seq, CONCAT('SKU-', LPAD(seq, 8, '0')), (seq * 7) %% 5000, "
                    f"((seq * 13) %% 100000) / 100, TIMESTAMP '2026-01-01 00:00:00' + INTERVAL seq SECOND "
                    f"FROM seq_1_to_{rows}")
    if kind == "postgresql":  # set hint bits and the visibility map now, not in the first method's read
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
            c.exec_driver_sql(f"VACUUM ANALYZE {table}")
    engine.dispose()
    return url, table


def drop(kind: str, sqlite_dir: Path) -> None:
    import shutil

    import sqlalchemy as sa

    if kind == "sqlite":
        shutil.rmtree(sqlite_dir, ignore_errors=True)
        return
    admin = sa.create_engine(_sa_url(_urls()[kind], kind), isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.exec_driver_sql(f"DROP DATABASE IF EXISTS {DB}" + (" WITH (FORCE)" if kind == "postgresql" else ""))
    admin.dispose()


# ------------------------------------------------------------------ the methods (run in a child)


def _read(kind: str, method: str, url: str, table: str, limit: int | None = None):
    """Read the whole table (or its first `limit` rows) into one Arrow table with `method`."""
    if limit:  # a subquery keeps every method's statement the same shape
        table = f"(SELECT * FROM {table} ORDER BY id LIMIT {limit}) AS warm"
    query = f"SELECT id, sku, qty, price, updated_at FROM {table}"
    if method == "duckdb":
        return _read_duckdb(kind, url, table)
    import sqlalchemy as sa

    if method == "pandas":
        import pandas as pd
        import pyarrow as pa

        engine = sa.create_engine(url)
        with engine.connect() as c:
            return pa.Table.from_pandas(pd.read_sql(sa.text(query), c), preserve_index=False)
    from trueup.systems.sql_arrow import read_arrow

    engine = sa.create_engine(url)
    if method in ("trueup", "adbc_parallel") and not limit:  # the adapter's statement for a full extract
        t = sa.table(table, *[sa.column(c) for c in ("id", "sku", "qty", "price", "updated_at")])
        stmt = sa.select(t.c.id, t.c.sku, t.c.qty, t.c.price, t.c.updated_at)
    else:
        stmt = sa.text(query)
    # the adapter's full extract names its table, which lets PostgreSQL's read go parallel
    forced = {"trueup": None, "adbc_parallel": "adbc"}.get(method, method)
    read = read_arrow(engine, stmt, method=forced,
                      table=None if limit or method not in ("trueup", "adbc_parallel") else table)
    engine.dispose()
    if method in ("trueup", "adbc_parallel") and not limit:
        print(json.dumps({"chosen": read.method}), file=sys.stderr)
    return read.table


def _read_duckdb(kind: str, url: str, table: str):
    import glob
    from urllib.parse import unquote, urlsplit

    import duckdb

    spec = __import__("importlib.util").util.find_spec("duckdb_ext")
    root = Path(next(iter(spec.submodule_search_locations)))
    ext = {"postgresql": "postgres_scanner", "mariadb": "mysql_scanner", "sqlite": "sqlite_scanner"}[kind]
    path = glob.glob(str(root / "extensions" / f"v{duckdb.__version__}" / "*" / f"{ext}.duckdb_extension"))[0]
    con = duckdb.connect()
    con.load_extension(path)
    u = urlsplit(url)  # no SQLAlchemy in the DuckDB 1.4 venv
    database = unquote(u.path[1:])
    if kind == "sqlite":
        con.execute(f"ATTACH '{database}' AS src (TYPE sqlite, READ_ONLY)")
        prefix = "src"
    elif kind == "postgresql":
        dsn = f"host={u.hostname} port={u.port or 5432} dbname={database} user={u.username}"
        os.environ["PGPASSWORD"] = unquote(u.password or "")  # libpq reads it; never in the DSN string
        con.execute(f"ATTACH '{dsn}' AS src (TYPE postgres, READ_ONLY)")
        prefix = "src.public"
    else:
        dsn = f"host={u.hostname} port={u.port or 3306} database={database} user={u.username}"
        os.environ["MYSQL_PWD"] = unquote(u.password or "")
        con.execute(f"ATTACH '{dsn}' AS src (TYPE mysql, READ_ONLY)")
        prefix = "src"
    src = table.replace("FROM bench_", f"FROM {prefix}.bench_") if table.startswith("(") else f"{prefix}.{table}"
    rel = con.sql(f"SELECT id, sku, qty, price, updated_at FROM {src}")
    return (getattr(rel, "to_arrow_table", None) or rel.fetch_arrow_table)()


def child(kind: str, method: str, table: str) -> None:
    url = os.environ["TRUEUP_BENCH_URL"]
    # imports and the drivers' one-time loading are not the read: a 10-row read of the same
    # method first, then the timed full read
    _read(kind, method, url, table, limit=10)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    out = _read(kind, method, url, table)
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"rows": out.num_rows, "seconds": seconds, "peak_mib": peak / 1024,
                      "start_mib": base / 1024, "types": [str(t) for t in out.schema.types]}))


def run_method(python: str, kind: str, method: str, url: str, table: str, timeout: int) -> dict:
    env = {**os.environ, "TRUEUP_BENCH_URL": url, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    proc = subprocess.run([python, __file__, "--child", kind, method, table], env=env, capture_output=True,
                          text=True, timeout=timeout)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1][:160]}
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    for line in proc.stderr.splitlines():
        if line.startswith('{"chosen"'):
            res["chosen"] = json.loads(line)["chosen"]
    return res


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--child", nargs=3, metavar=("KIND", "METHOD", "TABLE"), help=argparse.SUPPRESS)
    p.add_argument("--rows", type=int, action="append", help="table sizes (repeatable; default 1000000)")
    p.add_argument("--backends", default="postgresql,mariadb,sqlite")
    p.add_argument("--methods", default="", help="comma list (default: every method of the backend)")
    p.add_argument("--duckdb14-python", default="", help="python of a venv with duckdb==1.4.4 + duckdb-ext-*")
    p.add_argument("--pandas-max-rows", type=int, default=1_000_000, help="skip pandas above this size")
    p.add_argument("--sqlite-dir", default=".trueup/bench")
    p.add_argument("--timeout", type=int, default=600)
    p.add_argument("--repeat", type=int, default=1, help="runs per method (fresh process each); the fastest is shown")
    p.add_argument("--keep", action="store_true", help="keep the benchmark databases for another run")
    args = p.parse_args()
    if args.child:
        child(*args.child)
        return 0
    sizes = args.rows or [1_000_000]
    sqlite_dir = Path(args.sqlite_dir).resolve()
    print("| backend | rows | method | seconds | rows/s | peak RSS MiB |")
    print("|---|---:|---|---:|---:|---:|")
    for kind in [b for b in args.backends.split(",") if b]:
        for rows in sizes:
            t = time.perf_counter()
            url, table = setup(kind, rows, sqlite_dir)
            print(f"<!-- {kind} {rows} rows ready in {time.perf_counter() - t:.1f}s -->", file=sys.stderr)
            methods = [m for m in (args.methods.split(",") if args.methods else ALL_METHODS[kind])
                       if m in ALL_METHODS[kind]]
            for method in methods:
                if method == "pandas" and rows > args.pandas_max_rows:
                    continue
                python = args.duckdb14_python if method == "duckdb" else sys.executable
                if not python:
                    print(f"| {kind} | {rows:,} | {method} | (no --duckdb14-python) | | |")
                    continue
                runs = [run_method(python, kind, method, url, table, args.timeout) for _ in range(args.repeat)]
                ok = [x for x in runs if "error" not in x]
                r = min(ok, key=lambda x: x["seconds"]) if ok else runs[0]
                if "error" in r:
                    print(f"| {kind} | {rows:,} | {method} | error: {r['error']} | | |")
                    continue
                assert r["rows"] == rows, r
                label = method + (f" ({r['chosen']})" if r.get("chosen") else "")
                print(f"| {kind} | {rows:,} | {label} | {r['seconds']:.2f} | {rows / r['seconds']:,.0f} | "
                      f"{r['peak_mib']:,.0f} |", flush=True)
        if not args.keep:
            drop(kind, sqlite_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
