"""SQL systems through SQLAlchemy: any URL (SQLite, PostgreSQL, MySQL/MariaDB, SQL Server).

Identifiers come from validated config and go through SQLAlchemy's quoting; every value is a
bound parameter. Writes run in batches, each inside one transaction.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone

import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, OperationalError

from trueup.config import EntityMap, SystemConfig
from trueup.writeback import WriteOp, WriteResult

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


def rows_to_arrow(columns: list[str], rows: list[tuple]) -> pa.Table:
    """Column-wise conversion of a DB-API result; a column of mixed types arrives as text."""
    data = list(zip(*rows)) if rows else [[] for _ in columns]
    arrays = []
    for values in data:
        try:
            arrays.append(pa.array(values))
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            arrays.append(pa.array([None if v is None else str(v) for v in values], pa.string()))
    return pa.table(dict(zip(columns, arrays))) if columns else pa.table({})


class SqlSystem:
    """One SQL system (an ERP database, say) as trueup sees it."""

    def __init__(self, name: str, url: str, config: SystemConfig, *, max_attempts: int = 4,
                 engine: sa.Engine | None = None):
        self.name = name
        self.config = config
        self.max_attempts = max_attempts
        self.engine = engine or sa.create_engine(url, future=True)

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
        if since is not None and em.updated_at:
            stmt = stmt.where(t.c[em.updated_at] > sa.bindparam("since", since.replace(tzinfo=None)))
        with self.engine.connect() as conn:
            result = conn.execution_options(stream_results=True).execute(stmt)
            rows = result.fetchall()
        return rows_to_arrow(cols, rows)

    def fetch_live(self, entity: str, keys: list[str]) -> pa.Table:
        em = self.config.entities[entity]
        t = self._table(em)
        cols = self._columns(em)
        key_cols = em.key_columns
        out = []
        with self.engine.connect() as conn:
            for i in range(0, len(keys), BATCH):
                chunk = keys[i:i + BATCH]
                if len(key_cols) == 1:
                    cond = t.c[key_cols[0]].in_(chunk)
                else:
                    tuples = [tuple(k.split("|")) for k in chunk]
                    cond = sa.tuple_(*[t.c[c] for c in key_cols]).in_(tuples)
                out.extend(conn.execute(sa.select(*[t.c[c] for c in cols]).where(cond)).fetchall())
        return rows_to_arrow(cols, out)

    def write(self, entity: str, ops: list[WriteOp]) -> list[WriteResult]:
        """Write record operations in batches, each batch one transaction; a batch that fails
        with a retryable error (deadlock, serialization, lock) is retried with backoff."""
        em = self.config.entities[entity]
        results: list[WriteResult] = []
        for i in range(0, len(ops), BATCH):
            batch = ops[i:i + BATCH]
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

    def _write_batch(self, conn: sa.Connection, em: EntityMap, batch: list[WriteOp]) -> None:
        now = datetime.now(timezone.utc).replace(tzinfo=None)
        t = self._table(em)
        # updates grouped by the set of columns they touch: one executemany per shape
        shapes: dict[tuple[str, ...], list[dict]] = {}
        for op in batch:
            if op.action == "update":
                shapes.setdefault(tuple(sorted(op.values)), []).append(op)
        for cols, group in shapes.items():
            values = {c: sa.bindparam(f"v_{c}") for c in cols}
            if em.updated_at:
                values[em.updated_at] = sa.bindparam("v__updated_at")
            where = sa.and_(*[t.c[k] == sa.bindparam(f"k_{k}") for k in em.key_columns])
            stmt = sa.update(t).where(where).values(values)
            conn.execute(stmt, [
                {**{f"v_{c}": op.values[c] for c in cols},
                 **{f"k_{k}": v for k, v in op.key_values.items()}, "v__updated_at": now}
                for op in group])
        creates = [op for op in batch if op.action == "create"]
        if creates:
            rows = [{**op.key_values, **op.values, **({em.updated_at: now} if em.updated_at else {})}
                    for op in creates]
            all_cols = sorted({c for r in rows for c in r})
            ins = sa.insert(sa.table(em.table, *[sa.column(c) for c in all_cols]))
            conn.execute(ins, [{c: r.get(c) for c in all_cols} for r in rows])
        adjusts = [op for op in batch if op.action == "adjust"]
        if adjusts:
            adj = em.adjustments
            cols = em.key_columns + [adj.quantity, adj.reason, adj.reference, adj.posted_at]
            ins = sa.insert(sa.table(adj.table, *[sa.column(c) for c in cols]))
            conn.execute(ins, [
                {**op.key_values, adj.quantity: op.delta, adj.reason: op.reason,
                 adj.reference: op.idempotency_key, adj.posted_at: now}
                for op in adjusts])
