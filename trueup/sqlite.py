"""SQLite files several processes open at once (the state store, the demo CRM's database), and
rows appended to and updated in SQLite in few statements."""

from __future__ import annotations

import random
import sqlite3
import time


def use_wal(con, wait_s: float = 30.0) -> None:
    """Turn the connection's database to WAL mode (nothing to do when it is already). Processes
    opening one file together each ask, and SQLite may answer one of them "database is locked" at
    once, without waiting out its busy timeout (seen: eight workers opening a new state store, one
    time in forty; two Celery workers each starting a step's CRM sandbox). That one asks again
    until `wait_s` has passed; any other error is raised at once."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            con.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05 + random.random() * 0.1)


def insert_rows(conn, table: str, columns: list[str], rows: list[tuple]) -> None:
    """Append rows (tuples in `columns`' order) to a SQLite table in multi-row INSERTs, each one
    step of SQLite's. An executemany steps once per row, and Python's sqlite3 lets go of the
    interpreter's lock around every step: beside a busy thread of the same process each hand-back
    waits for that thread (a journal of 100,000 changes: 69-105 s beside one, against 8 s this way).
    `conn` is a SQLAlchemy connection; identifiers are quoted by its dialect, values bound."""
    if not rows:
        return
    quote = conn.dialect.identifier_preparer.quote
    head = f"INSERT INTO {quote(table)} ({', '.join(quote(c) for c in columns)}) VALUES "
    one = "(" + ", ".join(["?"] * len(columns)) + ")"
    # as many rows a statement as the connection lets one bind values for
    per = max(1, _bound_values_limit(conn) // len(columns))
    for i in range(0, len(rows), per):
        chunk = rows[i:i + per]
        conn.exec_driver_sql(head + ", ".join([one] * len(chunk)), tuple(v for row in chunk for v in row))


# UPDATE ... FROM, which a multi-row update needs (SQLite 3.33, 2020)
UPDATE_FROM = sqlite3.sqlite_version_info >= (3, 33)


def update_rows(conn, table: str, keys: list[str], columns: list[str], rows: list[tuple],
                fixed: dict | None = None) -> None:
    """Update rows of a SQLite table, each row a tuple of the `keys`' values then the `columns'`,
    in multi-row `UPDATE ... FROM (VALUES ...)` statements (`fixed`: columns set to the same value
    in every row), where an executemany steps, and hands the interpreter's lock back, once per
    row (see `insert_rows`). A key no row has updates nothing, as its own UPDATE would; a key
    must appear once (SQLite picks any of several). Needs `UPDATE_FROM`."""
    if not rows:
        return
    quote = conn.dialect.identifier_preparer.quote
    fixed = fixed or {}
    width = len(keys) + len(columns)
    # SQLite names a VALUES list's columns column1, column2, ...
    sets = [f"{quote(c)} = v.column{len(keys) + i + 1}" for i, c in enumerate(columns)]
    sets += [f"{quote(c)} = ?" for c in fixed]
    where = " AND ".join(f"{quote(table)}.{quote(k)} = v.column{i + 1}" for i, k in enumerate(keys))
    head = f"UPDATE {quote(table)} SET {', '.join(sets)} FROM (VALUES "
    one = "(" + ", ".join(["?"] * width) + ")"
    per = max(1, (_bound_values_limit(conn) - len(fixed)) // width)
    for i in range(0, len(rows), per):
        chunk = rows[i:i + per]
        # the SET clause's values come first in the statement, then the list's
        conn.exec_driver_sql(head + ", ".join([one] * len(chunk)) + f") AS v WHERE {where}",
                             (*fixed.values(), *(v for row in chunk for v in row)))


def _bound_values_limit(conn) -> int:
    """Values one statement may bind on this connection (a build or a connection may set its own
    limit: 999 before SQLite 3.32, 32,766 after, 250,000 in this machine's build)."""
    return conn.connection.dbapi_connection.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
