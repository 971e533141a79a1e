"""SQLite files several processes open at once (the state store, the demo CRM's database), and
rows appended to SQLite in few statements."""

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
    # as many rows a statement as the connection lets one bind values for (a build or a connection
    # may set its own limit: 999 before SQLite 3.32, 32,766 after, 250,000 in this machine's build)
    limit = conn.connection.dbapi_connection.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    per = max(1, limit // len(columns))
    for i in range(0, len(rows), per):
        chunk = rows[i:i + per]
        conn.exec_driver_sql(head + ", ".join([one] * len(chunk)), tuple(v for row in chunk for v in row))
