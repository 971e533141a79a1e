"""SQLite files several processes open at once: the state store, the demo CRM's database."""

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
