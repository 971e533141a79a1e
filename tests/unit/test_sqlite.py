"""Turning a SQLite file to WAL mode while other processes open it too."""

from __future__ import annotations

import sqlite3

import pytest

from trueup.sqlite import use_wal


class _Answers:
    """A connection whose first answers to the WAL pragma are the given errors."""

    def __init__(self, *errors: str):
        self.errors, self.asked = list(errors), 0

    def execute(self, sql: str):
        assert sql == "PRAGMA journal_mode=WAL"
        self.asked += 1
        if self.errors:
            raise sqlite3.OperationalError(self.errors.pop(0))


def test_a_database_locked_by_another_opener_is_asked_again():
    con = _Answers("database is locked", "database is locked")
    use_wal(con)
    assert con.asked == 3


def test_other_errors_and_a_lock_that_outlasts_the_wait_are_raised():
    with pytest.raises(sqlite3.OperationalError, match="disk I/O"):
        use_wal(_Answers("disk I/O error"))
    forever = _Answers(*["database is locked"] * 1000)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        use_wal(forever, wait_s=0.3)
    assert 1 < forever.asked < 20


def test_a_real_database_ends_in_wal_mode(tmp_path):
    con = sqlite3.connect(tmp_path / "state.db")
    use_wal(con)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()
