"""SQL systems through SQLAlchemy: any URL (SQLite, PostgreSQL, MySQL/MariaDB, SQL Server).

Identifiers come from validated config and go through SQLAlchemy's quoting; every value is a
bound parameter. Full reads take each dialect's Arrow-native path (`sql_arrow`). Writes run in
batches, each inside one transaction: updates as one executemany per set of columns, creates as
the dialect's upsert (PostgreSQL and SQLite ON CONFLICT, MySQL/MariaDB ON DUPLICATE KEY UPDATE) so
a replayed create converges instead of failing on the key.
"""

from __future__ import annotations

import logging
import time
import uuid
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Any

import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, OperationalError

from trueup.config import EntityMap, SystemConfig
from trueup.sqlite import UPDATE_FROM, insert_rows, update_rows
from trueup.systems.sql_arrow import (  # noqa: F401 (re-export)
    dialect_of, read_arrow, read_sqlite_by_keys, rows_to_arrow, sqlite_by_adbc)
from trueup.writeback import WriteOp, WriteResult, split_key

log = logging.getLogger(__name__)

BATCH = 500
RETRYABLE_SQLSTATES = {"40001", "40P01"}  # serialization failure, deadlock (PostgreSQL)
RETRYABLE_MYSQL = {1205, 1213}  # lock wait timeout, deadlock


def _retryable(exc: Exception) -> bool:
    orig = getattr(exc, "orig", None)
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if code in RETRYABLE_SQLSTATES:
        return True
    args = getattr(orig, "args", ())
    if args and args[0] in RETRYABLE_MYSQL:
        return True
    return isinstance(exc, OperationalError) and "locked" in str(exc).lower()


def process_now() -> datetime:
    """Now by this process's clock (UTC): what stamps a write to a database in this process."""
    return datetime.now(timezone.utc)


class SqlSystem:
    """One SQL system (an ERP database, say) as trueup sees it."""

    def __init__(self, name: str, url: str, config: SystemConfig, *, max_attempts: int = 4,
                 engine: sa.Engine | None = None, write_batch: int = BATCH, in_flight: int = 2):
        self.name = name
        self.write_batch = write_batch
        # batches at once (writeback.apply_plan): two let the database apply one while trueup
        # journals the next. Their records are disjoint; where a database locks more than rows
        # (SQLite's single writer, MariaDB's gap locks) one waits, or is retried as a lock error
        self.in_flight = max(1, in_flight)
        self.config = config
        self.max_attempts = max_attempts
        self.engine = engine or sa.create_engine(url, future=True)
        self.dialect = dialect_of(self.engine)
        self.last_read_method: str | None = None  # how the last extract read (adbc, connectorx, cursor)

    def _table(self, em: EntityMap, *, writable_table: str | None = None) -> sa.TableClause:
        cols = set(em.key_columns) | {f.column for f in em.fields.values()}
        if em.updated_at:
            cols.add(em.updated_at)
        return sa.table(writable_table or em.table, *[sa.column(c) for c in sorted(cols)])

    def _columns(self, em: EntityMap) -> list[str]:
        cols = list(dict.fromkeys(em.key_columns + [f.column for f in em.fields.values()]))
        if em.updated_at and em.updated_at not in cols:
            cols.append(em.updated_at)
        return cols

    def extract(self, entity: str, since: datetime | None = None) -> pa.Table:
        """Every mapped column of the entity's rows (changed after `since`, if given)."""
        em = self.config.entities[entity]
        t = self._table(em)
        cols = self._columns(em)
        stmt = sa.select(*[t.c[c] for c in cols])
        whole = since is None or not em.updated_at
        if not whole:
            after = sa.bindparam("since", self._timestamp(since))
            stmt = stmt.where(t.c[em.updated_at] > after)
            if em.changes_from:  # a view: its changed keys first, through its tables' change indexes
                # UNION ALL, then DISTINCT: a UNION let SQLite 3.53 (ADBC's own copy) merge the sources
                # in key order, scanning a table's 5M rows by its key instead of its change index
                # (0.86 s for no change at the large size); both versions plan this form by the indexes
                sources = sa.union_all(*[
                    sa.select(*[sa.column(k) for k in em.key_columns]).select_from(sa.table(src.table))
                    .where(sa.column(src.updated_at) > after) for src in em.changes_from]).subquery("sources")
                changed = sa.select(*[sources.c[k] for k in em.key_columns]).distinct().subquery("changed")
                # joined, not a row-value `IN`, for which SQLite scans the view's rows (measured at the
                # large size: none changed, IN 0.26 s, join 0.2 ms; 100,000 changed, 1.31 s and 0.39 s)
                stmt = stmt.select_from(t.join(changed, sa.and_(*[t.c[k] == changed.c[k] for k in em.key_columns])))
        read = read_arrow(self.engine, stmt, table=em.table if whole else None)
        self.last_read_method = read.method
        return read.table

    def fetch_live(self, entity: str, keys: list[str]) -> pa.Table:
        """The current rows of these keys ("a|b" for a composite key), for the compare before
        writing and the incremental sync's counterparts. The keys go into a temporary table in the
        session and the entity's table is joined to it: one index look-up per key, however many
        (an IN or OR list per batch is parsed and planned anew each time, measured 12 s for 40,000
        price keys on SQLite; a full read of the table filtered columnar 16 s; this join 2.7 s)."""
        em = self.config.entities[entity]
        t = self._table(em)
        cols = self._columns(em)
        key_cols = em.key_columns
        if not keys:
            return rows_to_arrow(cols, [])
        wanted = f"{'#' if self.dialect == 'mssql' else ''}trueup_wanted_{uuid.uuid4().hex[:12]}"
        w = sa.table(wanted, *[sa.column(c) for c in key_cols])
        parts = [split_key(k, key_cols) for k in dict.fromkeys(keys)]
        # the keys' table takes the key columns' own types (a SELECT of none of the table's rows):
        # values bind as the table's, and the join uses its index
        none_sql = sa.select(*[t.c[c] for c in key_cols]).where(sa.false()).compile(
            dialect=self.engine.dialect, compile_kwargs={"literal_binds": True})
        join = sa.select(*[t.c[c] for c in cols]).select_from(t.join(w, sa.and_(*[t.c[c] == w.c[c] for c in key_cols])))
        if self.dialect == "sqlite" and sqlite_by_adbc(self.engine):
            try:
                keys_table = pa.table({c: pa.array([p.get(c) for p in parts], pa.string()) for c in key_cols})
                return read_sqlite_by_keys(
                    self.engine, f"CREATE TEMPORARY TABLE {self.engine.dialect.identifier_preparer.quote(wanted)} "
                                 f"AS {none_sql}", wanted, keys_table, str(join.compile(dialect=self.engine.dialect)))
            except Exception as exc:  # noqa: BLE001 - the cursor below reads the same rows
                log.warning("%s.%s: live read via ADBC failed (%s: %s); reading with the cursor",
                            self.name, entity, type(exc).__name__, str(exc)[:200])
        with self.engine.connect() as conn:
            name = conn.dialect.identifier_preparer.quote(wanted)
            conn.execute(sa.text(f"SELECT {', '.join(conn.dialect.identifier_preparer.quote(c) for c in key_cols)} "
                                 f"INTO {name} FROM ({none_sql}) AS k" if self.dialect == "mssql"
                                 else f"CREATE TEMPORARY TABLE {name} AS {none_sql}"))
            conn.execute(sa.insert(w), parts)
            rows = conn.execute(join).fetchall()
            conn.execute(sa.text(f"DROP TABLE {name}"))
            conn.commit()
        return rows_to_arrow(cols, rows)

    def _timestamp(self, at: datetime) -> datetime:
        """A UTC instant as this database stores it: aware for PostgreSQL (timestamptz), naive
        UTC elsewhere (MySQL DATETIME and SQLite text have no zone; UTC by convention)."""
        at = at.astimezone(timezone.utc) if at.tzinfo else at.replace(tzinfo=timezone.utc)
        return at if self.dialect == "postgresql" else at.replace(tzinfo=None)

    def _bind(self, value: Any) -> Any:
        """A canonical Python value in a form this database's driver binds exactly: SQLite's
        driver has no Decimal or date adapter, so those travel as their exact text."""
        if self.dialect == "sqlite":
            if isinstance(value, Decimal):
                return format(value, "f")
            if isinstance(value, datetime):
                return self._timestamp(value).isoformat(sep=" ")
            if isinstance(value, date):
                return value.isoformat()
        return value

    def write(self, entity: str, ops: list[WriteOp]) -> list[WriteResult]:
        """Write record operations in batches, each batch one transaction; a batch that fails
        with a retryable error (deadlock, serialization, lock) is retried with backoff."""
        em = self.config.entities[entity]
        results: list[WriteResult] = []
        for i in range(0, len(ops), self.write_batch):
            batch = ops[i:i + self.write_batch]
            for attempt in range(1, self.max_attempts + 1):
                try:
                    with self.engine.begin() as conn:
                        self._write_batch(conn, em, batch)
                    results.extend(WriteResult("applied", attempts=attempt) for _ in batch)
                    break
                except DBAPIError as exc:
                    if _retryable(exc) and attempt < self.max_attempts:
                        time.sleep(min(2 ** attempt * 0.05, 2.0))
                        continue
                    status = "retryable_error" if _retryable(exc) else "rejected"
                    msg = f"{self.name}.{entity}: {type(exc.orig or exc).__name__}: {str(exc.orig or exc)[:300]}"
                    results.extend(WriteResult(status, msg, attempt) for _ in batch)
                    break
        return results

    def _clock(self, conn: sa.Connection) -> datetime:
        """Now by the database's clock, the one its own writers stamp their changes with: a sync
        reads changes after a watermark taken from those stamps, so trueup's writes must not sit
        ahead of or behind them by the skew of trueup's machine. SQLite runs in this process:
        its clock is this one."""
        if self.dialect == "postgresql":
            return conn.execute(sa.text("SELECT CURRENT_TIMESTAMP")).scalar_one()
        utc_now = {"mysql": "SELECT UTC_TIMESTAMP(6)", "mssql": "SELECT SYSUTCDATETIME()"}.get(self.dialect)
        if utc_now:  # naive UTC, as these columns hold it
            return conn.execute(sa.text(utc_now)).scalar_one().replace(tzinfo=timezone.utc)
        return process_now()

    def _write_batch(self, conn: sa.Connection, em: EntityMap, batch: list[WriteOp]) -> None:
        now = self._bind(self._timestamp(self._clock(conn)))
        b = self._bind
        t = self._table(em)
        # updates grouped by the set of columns they touch: one executemany per shape, on SQLite a
        # few multi-row statements (an executemany steps, and hands the interpreter's lock back, per row)
        shapes: dict[tuple[str, ...], list[dict]] = {}
        for op in batch:
            if op.action == "update":
                shapes.setdefault(tuple(sorted(op.values)), []).append(op)
        for cols, group in shapes.items():
            if self.dialect == "sqlite" and UPDATE_FROM:
                update_rows(conn, em.table, em.key_columns, list(cols),
                            [(*[b(op.key_values[k]) for k in em.key_columns], *[b(op.values[c]) for c in cols])
                             for op in group], {em.updated_at: now} if em.updated_at else None)
                continue
            values = {c: sa.bindparam(f"v_{c}") for c in cols}
            if em.updated_at:
                values[em.updated_at] = sa.bindparam("v__updated_at")
            where = sa.and_(*[t.c[k] == sa.bindparam(f"k_{k}") for k in em.key_columns])
            stmt = sa.update(t).where(where).values(values)
            conn.execute(stmt, [
                {**{f"v_{c}": b(op.values[c]) for c in cols},
                 **{f"k_{k}": b(v) for k, v in op.key_values.items()}, "v__updated_at": now}
                for op in group])
        # creates grouped by the columns they set, as updates are: a column one create lacks is
        # left to the table's default (and, on a key that exists, untouched), never bound as NULL
        created: dict[tuple[str, ...], list[dict]] = {}
        for op in batch:
            if op.action == "create":
                row = {**op.key_values, **op.values, **({em.updated_at: now} if em.updated_at else {})}
                created.setdefault(tuple(sorted(row)), []).append(row)
        for cols, rows in created.items():
            conn.execute(self._upsert(em.table, list(cols), em.key_columns), [{c: b(r[c]) for c in cols} for r in rows])
        adjusts = [op for op in batch if op.action == "adjust"]
        if adjusts:
            adj = em.adjustments
            cols = em.key_columns + [adj.quantity, adj.reason, adj.reference, adj.posted_at]
            rows = [(*[b(op.key_values[k]) for k in em.key_columns], op.delta, op.reason, op.idempotency_key, now)
                    for op in adjusts]
            if self.dialect == "sqlite":  # few statements, not a step (and a hand of the lock) per row
                insert_rows(conn, adj.table, cols, rows)
            else:
                conn.execute(sa.insert(sa.table(adj.table, *[sa.column(c) for c in cols])),
                             [dict(zip(cols, r)) for r in rows])

    def _upsert(self, table: str, columns: list[str], keys: list[str]) -> sa.Insert:
        """INSERT that updates the row when its key exists, in this dialect's words."""
        t = sa.table(table, *[sa.column(c) for c in columns])
        rest = [c for c in columns if c not in keys]
        if self.dialect in ("postgresql", "sqlite"):
            from sqlalchemy.dialects import postgresql, sqlite

            ins = (postgresql if self.dialect == "postgresql" else sqlite).insert(t)
            if not rest:
                return ins.on_conflict_do_nothing(index_elements=keys)
            return ins.on_conflict_do_update(index_elements=keys, set_={c: ins.excluded[c] for c in rest})
        if self.dialect == "mysql":
            from sqlalchemy.dialects import mysql

            ins = mysql.insert(t)
            return ins.on_duplicate_key_update({c: ins.inserted[c] for c in rest or keys})
        return sa.insert(t)  # no portable upsert: a replayed create fails on the key and is reported
