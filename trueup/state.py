"""The state store: what trueup remembers between runs, in any SQLAlchemy database (a SQLite
file by default; PostgreSQL in production), queryable with plain SQL.

- runs         one row per run: mode, dry-run, status, figures
- ledger       one row per attempted change: run, system, entity, key, field, old, new, outcome,
               attempts and retries. A change is journalled `attempting` before it is sent and gets
               its outcome after, so a run killed in between leaves the truth: "sent, outcome
               unknown". The next run that meets the same change settles that row: `applied` when
               it finds the value in place, else `not_landed` (still open for a day: a request a
               server held can land after the look; a later run finding the value in place makes
               it `applied`, one applying the change itself closes it as `interrupted`).
- dead_letters changes that kept failing after their retries, with the reason; open until a run
               (or `replay_dead_letters`) applies them or finds them no longer needed
- approvals    changes the rules hold for a person's decision: what, why, since when, who decided
- quarantine   every row held out of reconciliation, with its full key and the reason
- watermarks   per system and entity, the newest source change seen by a successful run
- extracts     per run, system and entity: rows read and how old the source's data was (freshness)
- kpis         per run, the business figures over time (long format: domain, system, kpi, value)
- discrepancy_history  every discrepancy by a stable key: first seen, last seen, runs seen, closed
- watermark_pending  what a run has read so far; becomes the watermark only when every
                     write-back step of the run finished (never for a dry-run or a failed run;
                     a write that failed is in the dead letters for replay, not read again)
"""

from __future__ import annotations

import collections
import functools
import json
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import sqlalchemy as sa

from trueup.sqlite import insert_rows, use_wal

metadata = sa.MetaData()

runs = sa.Table(
    "runs", metadata,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("job", sa.String(64)),
    sa.Column("mode", sa.String(16)),  # full | incremental
    sa.Column("dry_run", sa.Boolean),
    sa.Column("started_at", sa.DateTime(timezone=True)),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Column("status", sa.String(16)),
    sa.Column("summary", sa.Text),  # JSON figures
)

def _change_columns(key_index: bool = False) -> list[sa.Column]:
    """What a change is, as the ledger, the dead letters and the approvals all record it: which
    record of which system, which field, from what to what."""
    return [sa.Column("system", sa.String(32)), sa.Column("entity", sa.String(32)),
            sa.Column("target_key", sa.String(256), index=key_index), sa.Column("golden_id", sa.String(64)),
            sa.Column("field", sa.String(64)), sa.Column("action", sa.String(16)),
            sa.Column("old_value", sa.Text), sa.Column("new_value", sa.Text)]


# the ledger rows a later run may still settle: sent and never answered (`attempting`), or
# `not_landed` at a look, which a request still in flight can overturn by landing after it.
# Written the same in the partial index and the queries (SQLite uses a partial index only for a
# term identical to its own).
_UNSETTLED = "status IN ('attempting', 'not_landed')"
# how long a send missing at a look may still land (a held request lands in seconds; a day is
# generous): after that the row is closed, so the same change planned again months later and
# found in place is not credited to a long-dead send
LATE_LANDING = timedelta(days=1)

ledger = sa.Table(
    "ledger", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(64)),  # indexed by the pair below
    sa.Column("change_id", sa.String(64)),
    *_change_columns(),
    # attempting | applied | unchanged | rejected | retryable_error | not_landed | interrupted
    sa.Column("status", sa.String(24)),
    sa.Column("error", sa.Text),
    sa.Column("attempts", sa.Integer),
    sa.Column("retries", sa.Integer),
    sa.Column("rule", sa.String(256)),
    sa.Column("severity", sa.String(16)),
    sa.Column("at", sa.DateTime(timezone=True)),
    sa.Column("batch_id", sa.String(32)),  # the write batch the change was sent in (journal -> outcome)
    # a batch's outcome lands by batch: without the pair the database walks every row of the run
    # per batch (quadratic in its size). Rows are not indexed by change id: random keys put a
    # dirty page per row in every write (measured 8x the journal's time at 400k ledger rows);
    # only the unsettled sends are (in flight, or missing at a look), which is all the settling
    # needs (a partial index where the database has them: a batch plus the rare killed run's)
    sa.Index("ix_ledger_run_batch", "run_id", "batch_id"),
    sa.Index("ix_ledger_unsettled", "entity", "change_id",
             sqlite_where=sa.text(_UNSETTLED), postgresql_where=sa.text(_UNSETTLED)),
)
# indexes earlier versions made that cost more than they served, or that a wider one replaced
# (dropped when a store is opened)
_RETIRED_INDEXES = {"ledger": ("ix_ledger_change_id", "ix_ledger_run_change", "ix_ledger_run_id",
                               "ix_ledger_attempting")}

quarantine = sa.Table(
    "quarantine", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(64), index=True),
    sa.Column("system", sa.String(32)),
    sa.Column("entity", sa.String(32)),
    sa.Column("source_key", sa.String(256)),
    sa.Column("match_key", sa.String(256)),
    sa.Column("field", sa.String(64)),
    sa.Column("column", sa.String(64)),
    sa.Column("problem", sa.Text),
    sa.Column("severity", sa.String(16)),
    sa.Column("at", sa.DateTime(timezone=True)),
)

dead_letters = sa.Table(
    "dead_letters", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("change_id", sa.String(64), index=True),
    *_change_columns(),
    sa.Column("rule", sa.String(256)),
    sa.Column("severity", sa.String(16)),
    sa.Column("reason", sa.Text),
    sa.Column("attempts", sa.Integer),  # over every run that tried
    sa.Column("failures", sa.Integer),  # runs that tried and failed
    sa.Column("first_run_id", sa.String(64)),
    sa.Column("last_run_id", sa.String(64)),
    sa.Column("first_failed_at", sa.DateTime(timezone=True)),
    sa.Column("last_failed_at", sa.DateTime(timezone=True)),
    # open | resolved (applied or found in place) | superseded (another value was applied) |
    # obsolete (re-planned: nothing left to change)
    sa.Column("status", sa.String(16), index=True),
    sa.Column("resolved_run_id", sa.String(64)),
    sa.Column("resolved_at", sa.DateTime(timezone=True)),
    sa.Column("note", sa.Text),
)

approvals = sa.Table(
    "approvals", metadata,
    sa.Column("change_id", sa.String(64), primary_key=True),
    sa.Column("approval_id", sa.String(64), index=True),  # a create is one approval over its fields
    *_change_columns(key_index=True),
    sa.Column("rule", sa.String(256)),
    sa.Column("severity", sa.String(16)),
    sa.Column("reason", sa.Text),  # why it needs approval
    # pending | approved | rejected | applied | superseded | obsolete
    sa.Column("status", sa.String(16), index=True),
    sa.Column("requested_run_id", sa.String(64)),
    sa.Column("requested_at", sa.DateTime(timezone=True)),
    sa.Column("last_seen_run_id", sa.String(64)),
    sa.Column("decided_by", sa.String(128)),
    sa.Column("decided_at", sa.DateTime(timezone=True)),
    sa.Column("note", sa.Text),
    sa.Column("applied_run_id", sa.String(64)),
    sa.Column("applied_at", sa.DateTime(timezone=True)),
)

OPEN_APPROVAL = ("pending", "approved")
FAILED = ("retryable_error",)

watermarks = sa.Table(
    "watermarks", metadata,
    sa.Column("system", sa.String(32), primary_key=True),
    sa.Column("entity", sa.String(32), primary_key=True),
    sa.Column("high_water", sa.DateTime(timezone=True)),
    sa.Column("run_id", sa.String(64)),
    sa.Column("updated_at", sa.DateTime(timezone=True)),
)

watermark_pending = sa.Table(
    "watermark_pending", metadata,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("system", sa.String(32), primary_key=True),
    sa.Column("entity", sa.String(32), primary_key=True),
    sa.Column("high_water", sa.DateTime(timezone=True)),
)


def _utc(v: datetime | None) -> datetime | None:
    if v is not None and v.tzinfo is None:
        v = v.replace(tzinfo=timezone.utc)
    return v


extracts = sa.Table(
    "extracts", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(64), index=True),
    sa.Column("system", sa.String(32)),
    sa.Column("entity", sa.String(32)),
    sa.Column("rows", sa.Integer),
    sa.Column("data_as_of", sa.DateTime(timezone=True)),  # when the source produced what we read
    sa.Column("extracted_at", sa.DateTime(timezone=True)),
)

kpis = sa.Table(
    "kpis", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(64), index=True),
    sa.Column("at", sa.DateTime(timezone=True)),
    sa.Column("domain", sa.String(32)),  # '' when the figure is not per domain
    sa.Column("system", sa.String(32)),  # '' when the figure is not per system
    sa.Column("kpi", sa.String(64)),
    sa.Column("value", sa.Float),
)

discrepancy_history = sa.Table(
    "discrepancy_history", metadata,
    # md5 of (domain, target system, action, target key, field): the same disagreement keeps its
    # key across runs even when the value it should take changes (unlike the plan's change_id)
    sa.Column("discrepancy_key", sa.String(64), primary_key=True),
    sa.Column("domain", sa.String(32)),
    sa.Column("system", sa.String(32)),
    sa.Column("action", sa.String(16)),
    sa.Column("target_key", sa.String(256)),
    sa.Column("field", sa.String(64)),
    sa.Column("severity", sa.String(16)),
    sa.Column("first_seen_run", sa.String(64)),
    sa.Column("first_seen_at", sa.DateTime(timezone=True)),
    sa.Column("last_seen_run", sa.String(64)),
    sa.Column("last_seen_at", sa.DateTime(timezone=True)),
    sa.Column("runs_seen", sa.Integer),
    sa.Column("closed_at", sa.DateTime(timezone=True)),  # NULL while the discrepancy is open
)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _interrupted(note: str) -> str:
    """The ledger's note on a send whose run died before its outcome came, and what settled it."""
    return f"run interrupted before the outcome was recorded; {note}"


def _still_open():
    """An unsettled row that can still be settled: in flight, or missing at a look within a day."""
    return sa.or_(ledger.c.status == "attempting", ledger.c.at >= _now() - LATE_LANDING)


def _open_elsewhere(run_id: str, entity: str) -> tuple:
    """Ledger rows of `entity` other runs left unsettled that this run's outcomes may still settle."""
    return ledger.c.entity == entity, sa.text(_UNSETTLED), _still_open(), ledger.c.run_id != run_id


def _drop_temporary(c: sa.Connection, name: str) -> None:
    """Drop a temporary table of this connection (`name`: a constant of trueup's). MariaDB / MySQL
    need TEMPORARY, or the DROP commits the transaction."""
    temporary = "TEMPORARY " if c.dialect.name in ("mysql", "mariadb") else ""
    c.exec_driver_sql(f"DROP {temporary}TABLE IF EXISTS {name}")


def _earlier_attempt(outcome: dict, earlier: str) -> dict:
    """The outcome of a change an earlier attempt of the same step had sent (`earlier`: its
    ledger status then, `applied` or `attempting`). Applied then, it stays applied whatever the
    retry found (trueup made that change); sent without an answer and found in place now, it was
    applied by that send; otherwise the retry's outcome, noting the earlier send."""
    note = "an earlier attempt of this run's write-back sent it"
    if outcome["status"] == "applied":
        return outcome
    if earlier == "applied" or outcome["status"] == "unchanged":
        now = "found in place" if outcome["status"] == "unchanged" else \
            f"the retry then: {outcome['status']}: {outcome['error']}"
        return {**outcome, "status": "applied", "error": f"{note}; {now}", "attempts": max(outcome["attempts"] or 0, 1)}
    return {**outcome, "error": f"{note}; now: {outcome['error']}"}


def _rows(table: pa.Table) -> list[dict]:
    return table.to_pylist()


@functools.lru_cache(maxsize=64)
def _compiled_insert(table: sa.Table, dialect, names: tuple[str, ...]):
    """An INSERT of these columns compiled for the dialect once (a journal inserts per batch)."""
    return sa.insert(table).compile(dialect=dialect, column_keys=list(names), for_executemany=True)


def _insert_many(c: sa.Connection, table: sa.Table, columns: dict[str, list]) -> None:
    """Insert rows given column by column, straight through the driver's executemany: the
    statement is compiled once for the dialect and each type's bind processing is applied per
    column (SQLAlchemy's per-row parameter processing was ~40% of the journal's insert time)."""
    names = list(columns)
    values = []
    for name in names:
        process = table.c[name].type.dialect_impl(c.dialect).bind_processor(c.dialect)
        if process:  # once per distinct value: a batch shares its time, its run, its entity
            seen: dict = {}
            values.append([seen[v] if v in seen else seen.setdefault(v, process(v)) for v in columns[name]])
        else:
            values.append(columns[name])
    if c.dialect.name == "sqlite":  # few statements, not a step (and a hand of the lock) per row
        insert_rows(c, table.name, names, list(zip(*values)))
        return
    compiled = _compiled_insert(table, c.dialect, tuple(names))
    if compiled.positional:
        order = [names.index(k) for k in compiled.positiontup]
        params = list(zip(*[values[i] for i in order]))
    else:
        params = [dict(zip(names, row)) for row in zip(*values)]
    if params:
        c.exec_driver_sql(compiled.string, params)


class StateStore:
    """Ledger, quarantine, runs and watermarks in one SQL database."""

    def __init__(self, url: str):
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.engine = sa.create_engine(url, future=True)
        self._journal_begun: dict[tuple[str, str], set[str]] = {}  # (run, entity) -> changes cleared
        # (run, entity) -> changes an earlier attempt of the same step sent (applied or in flight)
        self._sent_earlier: dict[tuple[str, str], dict[str, str]] = {}  # change -> its status then
        # (run, entity) whose write-back began with nothing of other runs left to settle
        self._none_open: set[tuple[str, str]] = set()
        if self.engine.dialect.name == "sqlite":
            # parallel steps append from several processes: WAL lets readers and one writer share
            @sa.event.listens_for(self.engine, "connect")
            def _wal(dbapi_conn, _):
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA busy_timeout=30000")
                use_wal(cur)
                # in WAL mode NORMAL still survives a killed process (what the journal is for); only
                # a power cut can lose the last commits, and it saves an fsync per journal write
                cur.execute("PRAGMA synchronous=NORMAL")
                cur.close()
        for attempt in range(5):
            # steps in several processes (multiprocess, Celery) open the store at once: a table or
            # index another process created between our check and our CREATE is not an error
            try:
                metadata.create_all(self.engine)
                self._add_missing_columns()
                break
            except sa.exc.DBAPIError as exc:
                if "already exists" not in str(exc).lower() or attempt == 4:
                    raise
                time.sleep(0.1 * (attempt + 1))

    def _add_missing_columns(self) -> None:
        """A state store made by an older trueup gains the columns and indexes added since (additive only)."""
        insp = sa.inspect(self.engine)
        with self.engine.begin() as c:
            for table in metadata.sorted_tables:
                have = {col["name"] for col in insp.get_columns(table.name)}
                for col in table.columns:
                    if col.name not in have:
                        type_ = col.type.compile(dialect=self.engine.dialect)
                        c.execute(sa.text(f'ALTER TABLE {table.name} ADD COLUMN "{col.name}" {type_}'))
        for table in metadata.sorted_tables:  # and the indexes added since
            for index in table.indexes:
                index.create(self.engine, checkfirst=True)
        for table, names in _RETIRED_INDEXES.items():
            have = {i["name"] for i in sa.inspect(self.engine).get_indexes(table)}
            for name in names:  # our own constant names, not input
                if name in have:
                    on = f" ON {table}" if self.engine.dialect.name in ("mysql", "mariadb") else ""
                    try:
                        with self.engine.begin() as c:
                            c.execute(sa.text(f"DROP INDEX {name}{on}"))
                    except sa.exc.DBAPIError:  # another process dropped it first
                        if name in {i["name"] for i in sa.inspect(self.engine).get_indexes(table)}:
                            raise

    # ---------------------------------------------------------- runs

    def finish_run(self, run_id: str, status: str, summary: dict, *, job: str = "", mode: str = "full",
                   dry_run: bool = False) -> None:
        """Record the run's outcome and figures (replacing an earlier record of the same run)."""
        with self.engine.begin() as c:
            c.execute(sa.delete(runs).where(runs.c.run_id == run_id))
            c.execute(sa.insert(runs).values(run_id=run_id, job=job, mode=mode, dry_run=dry_run,
                                             finished_at=_now(), status=status,
                                             summary=json.dumps(summary, default=str)))

    def runs(self) -> pa.Table:
        return self._arrow(sa.select(runs).order_by(runs.c.finished_at))

    # ---------------------------------------------------------- ledger

    @staticmethod
    def _ledger_columns(run_id: str, entity: str, plan: pa.Table, outcomes: dict[str, list], now,
                        batch_id: str | None = None) -> dict[str, list]:
        """The ledger's columns for these plan rows: what the change is, from the plan, and its
        outcome (`status`, `error`, `attempts` per row, in the plan's order)."""
        n = plan.num_rows
        attempts = outcomes["attempts"]
        return {"run_id": [run_id] * n, "change_id": plan.column("change_id").to_pylist(),
                "system": plan.column("target_system").to_pylist(), "entity": [entity] * n,
                **{c: plan.column(c).to_pylist() for c in ("target_key", "golden_id", "field", "action",
                                                           "old_value", "new_value", "rule", "severity")},
                "status": outcomes["status"], "error": outcomes["error"], "attempts": attempts,
                "retries": [max((a or 0) - 1, 0) for a in attempts], "at": [now] * n, "batch_id": [batch_id] * n}

    def _replace(self, c, run_id: str, entity: str, columns: dict[str, list]) -> None:
        """Write these ledger rows, replacing the run's earlier rows for the same changes (a
        re-executed step); `begin_journal` has looked already for the changes of a write-back."""
        if not columns["change_id"]:
            return
        cleared = self._journal_begun.get((run_id, entity), set())
        ids = [cid for cid in columns["change_id"] if cid not in cleared]
        if ids:
            self._delete_run_rows(c, run_id, entity, ids)
        _insert_many(c, ledger, columns)
        # these have a row now: recording them again in this run replaces it
        cleared.difference_update(columns["change_id"])

    @staticmethod
    def _delete_run_rows(c, run_id: str, entity: str, change_ids: list[str]) -> list[tuple[str, str]]:
        """Remove the run's ledger rows for these changes: one read of the run's rows of the entity.
        Returns what was removed, (change_id, status)."""
        wanted = set(change_ids)
        rows = [(i, cid, status) for i, cid, status in c.execute(
            sa.select(ledger.c.id, ledger.c.change_id, ledger.c.status).where(
                ledger.c.run_id == run_id, ledger.c.entity == entity)) if cid in wanted]
        if rows:
            c.execute(sa.delete(ledger).where(ledger.c.id == sa.bindparam("i")), [{"i": r[0]} for r in rows])
        return [(cid, status) for _, cid, status in rows]

    def begin_journal(self, run_id: str, entity: str, change_ids: list[str]) -> None:
        """Before a write-back journals these changes batch by batch: a re-executed step's earlier
        rows for them are removed now, once, so each batch is a plain insert. What that earlier
        attempt sent is remembered: it is still trueup's write (`record`, `_earlier_attempt`)."""
        with self.engine.begin() as c:
            removed = self._delete_run_rows(c, run_id, entity, change_ids)
            # nothing of other runs to settle now: none for the journalled batches to look for
            # either. One probe, not one a batch. A send of an overlapping run that dies after this
            # probe is settled by a later run's look at the system (`unsettled`), not by these
            # batches. MariaDB, without partial indexes, keeps its look per batch
            if self._nothing_open_elsewhere(c, run_id, entity):
                self._none_open.add((run_id, entity))
            else:
                self._none_open.discard((run_id, entity))
        self._journal_begun.setdefault((run_id, entity), set()).update(change_ids)
        self._sent_earlier.setdefault((run_id, entity), {}).update(
            (cid, status) for cid, status in removed if status in ("applied", "attempting"))

    def record_attempting(self, run_id: str, entity: str, plan: pa.Table) -> str | None:
        """Journal the changes about to be sent, before they are sent: if the run dies mid-write,
        the ledger still says they were attempted. Returns the batch's id for `record`."""
        if plan.num_rows == 0:
            return None
        batch = uuid.uuid4().hex
        n = plan.num_rows
        columns = self._ledger_columns(run_id, entity, plan, {"status": ["attempting"] * n, "error": [None] * n,
                                                             "attempts": [1] * n}, _now(), batch)
        with self.engine.begin() as c:
            self._replace(c, run_id, entity, columns)
        return batch

    def record(self, run_id: str, entity: str, plan: pa.Table, outcomes: pa.Table,
               batch_id: str | None = None) -> None:
        """One ledger row per plan row with its outcome. Re-recording the same run replaces its
        rows for those changes, so a re-executed step never doubles the ledger. With `batch_id`
        (from `record_attempting`) the journalled rows get their outcomes in place: one UPDATE
        for the batch's usual outcome, one per row only for the changes that fared otherwise.

        Also settles what earlier runs left open for the same changes: `attempting` rows of a
        killed run (in place now -> applied, else interrupted), dead letters (applied or found
        in place -> resolved; another value applied to the same field -> superseded), and a
        failed write opens or updates its dead letter."""
        if plan.num_rows == 0:
            return
        by_id = {r["change_id"]: r for r in _rows(outcomes)}
        ordered = [by_id[cid] for cid in plan.column("change_id").to_pylist()]
        sent = self._sent_earlier.get((run_id, entity))
        if sent:  # a retried step: its first attempt's writes are still trueup's
            ordered = [_earlier_attempt(o, sent[o["change_id"]]) if o["change_id"] in sent else o for o in ordered]
        now = _now()
        columns = self._ledger_columns(run_id, entity, plan, {k: [o[k] for o in ordered]
                                                              for k in ("status", "error", "attempts")}, now)
        with self.engine.begin() as c:
            if batch_id is None:
                self._replace(c, run_id, entity, columns)
            else:
                self._settle_batch(c, run_id, batch_id, columns, now)
            self._settle_attempts(c, run_id, entity, columns, journalled=batch_id is not None)
            self._dead_letter(c, run_id, columns, now)

    @staticmethod
    def _settle_batch(c, run_id: str, batch_id: str, columns: dict[str, list], now) -> None:
        outcomes = list(zip(columns["status"], columns["error"], columns["attempts"], columns["retries"]))
        usual = collections.Counter(outcomes).most_common(1)[0][0]
        status, error, attempts, retries = usual
        c.execute(sa.update(ledger).where(ledger.c.run_id == run_id, ledger.c.batch_id == batch_id)
                  .values(status=status, error=error, attempts=attempts, retries=retries, at=now))
        others = [{"cid": cid, "s": o[0], "e": o[1], "a": o[2], "r": o[3]}
                  for cid, o in zip(columns["change_id"], outcomes) if o != usual]
        if others:
            c.execute(sa.update(ledger).where(ledger.c.run_id == run_id, ledger.c.batch_id == batch_id,
                                              ledger.c.change_id == sa.bindparam("cid"))
                      .values(status=sa.bindparam("s"), error=sa.bindparam("e"), attempts=sa.bindparam("a"),
                              retries=sa.bindparam("r")), others)

    def unsettled(self, run_id: str, entity: str, system: str) -> pa.Table:
        """Changes earlier runs sent and never got an outcome for (the run died mid-write), and
        sends a look found missing within the last day (they may have landed since)."""
        return self._arrow(sa.select(ledger).where(
            ledger.c.run_id != run_id, ledger.c.entity == entity, ledger.c.system == system,
            sa.text(_UNSETTLED), _still_open()).order_by(ledger.c.id))

    def settle(self, run_id: str, landed: list[int], not_landed: list[int]) -> None:
        """Give interrupted attempts (by ledger id) the outcome a later look at the system found."""
        with self.engine.begin() as c:
            for ids, status, note in (
                    (landed, "applied", _interrupted(f"run {run_id} found the value in place")),
                    (not_landed, "not_landed", _interrupted(f"run {run_id} found the write had not landed (yet)"))):
                for i in range(0, len(ids), 500):
                    c.execute(sa.update(ledger).where(ledger.c.id.in_(ids[i:i + 500]), sa.text(_UNSETTLED))
                              .values(status=status, error=note))

    def _settle_attempts(self, c, run_id: str, entity: str, columns: dict[str, list], *,
                         journalled: bool = False) -> None:
        """Close what other runs left open for the changes this run found in place or applied:
        found in place -> their send landed (`applied`); applied here -> theirs had not
        (`interrupted`). This also catches a send that landed after a look had found it missing
        (a request the server still held when the run was killed). A journalled batch trusts its
        write-back's first look (`begin_journal`): nothing open then, nothing to look for."""
        if journalled and (run_id, entity) in self._none_open:
            return
        outcome = {cid: status for cid, status in zip(columns["change_id"], columns["status"])
                   if status in ("unchanged", "applied")}
        if not outcome:
            return
        if self._nothing_open_elsewhere(c, run_id, entity):
            return
        open_here = _open_elsewhere(run_id, entity)
        look = sa.select(ledger.c.id, ledger.c.change_id, ledger.c.status).where(
            *open_here, ledger.c.change_id.in_(sa.bindparam("ids", expanding=True)))
        candidates = list(outcome)
        open_ = [r for i in range(0, len(candidates), 500) for r in c.execute(look, {"ids": candidates[i:i + 500]})]
        notes = {
            ("attempting", "unchanged"): ("applied", _interrupted(f"run {run_id} found the value in place")),
            ("not_landed", "unchanged"): ("applied", _interrupted(f"the write landed after the look that missed "
                                                                  f"it; run {run_id} found the value in place")),
        }
        closed = ("interrupted", _interrupted(f"the write had not landed (run {run_id} applied it)"))
        updates: dict[tuple[str, str, str], list[dict]] = {}
        for r in open_:
            updates.setdefault((r.status, *notes.get((r.status, outcome[r.change_id]), closed)), []).append(
                {"i": r.id})
        for (was, status, note), ids in updates.items():
            # only if it is still as seen: a run closing it meanwhile must not be undone
            c.execute(sa.update(ledger).where(ledger.c.id == sa.bindparam("i"), sa.text(_UNSETTLED),
                                              ledger.c.status == was).values(status=status, error=note), ids)

    def _nothing_open_elsewhere(self, c, run_id: str, entity: str) -> bool:
        """True when other runs left nothing of `entity` to settle: the usual case, one probe of the
        partial index instead of a look per 500 ids. False on MariaDB, which has no partial
        indexes (the probe would walk the entity's rows): there the look itself answers."""
        return self.engine.dialect.name not in ("mysql", "mariadb") and c.execute(
            sa.select(ledger.c.id).where(*_open_elsewhere(run_id, entity)).limit(1)).first() is None

    def _dead_letter(self, c, run_id: str, columns: dict[str, list], now) -> None:
        # statements are executed per row but compiled once, and only for the rows an open dead
        # letter concerns: a batch rebuilt per row cost more than the writes it records. Rows are
        # made dicts only where needed: the usual batch, all applied and no dead letter open, none
        entities = sorted(set(columns["entity"]))
        open_ = lambda: c.execute(sa.select(  # noqa: E731
            dead_letters.c.change_id, dead_letters.c.system, dead_letters.c.entity,
            dead_letters.c.target_key, dead_letters.c.field).where(
            dead_letters.c.status == "open", dead_letters.c.entity.in_(entities))).all()
        status, attempts = columns["status"], columns["attempts"]

        def rows_at(positions: list[int]) -> list[dict]:
            return [{n: v[i] for n, v in columns.items()} for i in positions]

        if any(s in ("applied", "unchanged") for s in status) and self._has_open_dead_letters(c):
            done = rows_at([i for i, s in enumerate(status) if s in ("applied", "unchanged")])
            open_fields = {(o.system, o.entity, o.target_key, o.field) for o in open_()}
            hits = [{"sys": r["system"], "ent": r["entity"], "key": r["target_key"], "fld": r["field"],
                     "cid": r["change_id"], "note": "applied" if r["status"] == "applied" else "found in place"}
                    for r in done if (r["system"], r["entity"], r["target_key"], r["field"]) in open_fields]
            if hits:
                c.execute(sa.update(dead_letters).where(
                    dead_letters.c.status == "open", dead_letters.c.system == sa.bindparam("sys"),
                    dead_letters.c.entity == sa.bindparam("ent"),
                    dead_letters.c.target_key == sa.bindparam("key"),
                    dead_letters.c.field == sa.bindparam("fld")).values(
                    status=sa.case((dead_letters.c.change_id == sa.bindparam("cid"), "resolved"),
                                   else_="superseded"),
                    resolved_run_id=run_id, resolved_at=now, note=sa.bindparam("note")), hits)
        failed = rows_at([i for i, s in enumerate(status)
                          if s in FAILED or (s == "rejected" and (attempts[i] or 0) > 0)])
        if not failed:
            return
        open_ids = {o.change_id for o in open_()} if self._has_open_dead_letters(c) else set()
        again = [{"cid": r["change_id"], "reason": r["error"], "n": r["attempts"] or 0}
                 for r in failed if r["change_id"] in open_ids]
        if again:
            c.execute(sa.update(dead_letters).where(
                dead_letters.c.status == "open", dead_letters.c.change_id == sa.bindparam("cid")).values(
                reason=sa.bindparam("reason"), last_run_id=run_id, last_failed_at=now,
                attempts=dead_letters.c.attempts + sa.bindparam("n"), failures=dead_letters.c.failures + 1),
                again)
        first = [dict(change_id=r["change_id"], system=r["system"], entity=r["entity"],
                      target_key=r["target_key"], golden_id=r["golden_id"], field=r["field"],
                      action=r["action"], old_value=r["old_value"], new_value=r["new_value"],
                      rule=r["rule"], severity=r["severity"], reason=r["error"],
                      attempts=r["attempts"] or 0, failures=1, first_run_id=run_id, last_run_id=run_id,
                      first_failed_at=now, last_failed_at=now, status="open")
                 for r in failed if r["change_id"] not in open_ids]
        if first:
            c.execute(sa.insert(dead_letters), first)

    @staticmethod
    def _has_open_dead_letters(c) -> bool:
        return c.execute(sa.select(dead_letters.c.id).where(dead_letters.c.status == "open")
                         .limit(1)).first() is not None

    def ledger(self, run_id: str | None = None) -> pa.Table:
        stmt = sa.select(ledger)
        if run_id:
            stmt = stmt.where(ledger.c.run_id == run_id)
        return self._arrow(stmt.order_by(ledger.c.id))

    # ---------------------------------------------------------- dead letters

    def dead_letters(self, *, status: str | None = "open", entity: str | None = None) -> pa.Table:
        stmt = sa.select(dead_letters)
        if status:
            stmt = stmt.where(dead_letters.c.status == status)
        if entity:
            stmt = stmt.where(dead_letters.c.entity == entity)
        return self._arrow(stmt.order_by(dead_letters.c.id))

    def close_dead_letters(self, ids: list[int], status: str, note: str, run_id: str) -> None:
        """Close dead letters a replay found nothing left to do for."""
        with self.engine.begin() as c:
            for i in range(0, len(ids), 500):
                c.execute(sa.update(dead_letters).where(
                    dead_letters.c.id.in_(ids[i:i + 500]), dead_letters.c.status == "open").values(
                    status=status, note=note, resolved_run_id=run_id, resolved_at=_now()))

    # ---------------------------------------------------------- approvals

    def approval_status(self, approval_ids: list[str]) -> dict[str, dict]:
        """The latest decision per approval id: {approval_id: {status, decided_by, decided_at, note}}."""
        out: dict[str, dict] = {}
        ids = sorted(set(approval_ids))
        with self.engine.connect() as c:
            for i in range(0, len(ids), 500):
                for r in c.execute(sa.select(approvals.c.approval_id, approvals.c.status, approvals.c.decided_by,
                                             approvals.c.decided_at, approvals.c.note)
                                   .where(approvals.c.approval_id.in_(ids[i:i + 500]))).mappings():
                    out[r["approval_id"]] = dict(r)
        return out

    def request_approvals(self, run_id: str, entity: str, rows: list[dict]) -> None:
        """Hold these plan rows (with approval_id and reason) for a decision. A change already
        waiting keeps its request time; an older request for the same field or record that the
        data has moved past is superseded."""
        if not rows:
            return
        now = _now()
        ids = [r["change_id"] for r in rows]
        with self.engine.begin() as c:
            known = set()
            for i in range(0, len(ids), 500):
                known |= set(c.execute(sa.select(approvals.c.change_id)
                                       .where(approvals.c.change_id.in_(ids[i:i + 500]))).scalars())
                c.execute(sa.update(approvals).where(approvals.c.change_id.in_(ids[i:i + 500]))
                          .values(last_seen_run_id=run_id))
                # proposed again after it had dropped out: it waits afresh
                c.execute(sa.update(approvals).where(approvals.c.change_id.in_(ids[i:i + 500]),
                                                     approvals.c.status.in_(("superseded", "obsolete")))
                          .values(status="pending", requested_run_id=run_id, requested_at=now, note=None))
            new = [r for r in rows if r["change_id"] not in known]
            # the change set: a new request supersedes the open ones on the same record (a create) or
            # field (an update) under another approval; the open requests of these records are read
            # in batches (an UPDATE per new request scanned the table once per row: quadratic)
            by_record: dict[tuple, list[dict]] = {}
            for r in new:
                by_record.setdefault((r["target_system"], r["target_key"]), []).append(r)
            keys = sorted({k for _, k in by_record})
            stale = []
            for i in range(0, len(keys), 500):
                for o in c.execute(sa.select(approvals.c.change_id, approvals.c.system, approvals.c.target_key,
                                             approvals.c.field, approvals.c.approval_id).where(
                        approvals.c.entity == entity, approvals.c.target_key.in_(keys[i:i + 500]),
                        approvals.c.status.in_(OPEN_APPROVAL))):
                    if any(o.approval_id != r["approval_id"] and (r["action"] == "create" or o.field == r["field"])
                           for r in by_record.get((o.system, o.target_key), ())):
                        stale.append(o.change_id)
            for i in range(0, len(stale), 500):
                c.execute(sa.update(approvals).where(approvals.c.change_id.in_(stale[i:i + 500])).values(
                    status="superseded", note=f"superseded by a newer proposal in run {run_id}"))
            if new:
                c.execute(sa.insert(approvals), [{
                    "change_id": r["change_id"], "approval_id": r["approval_id"], "system": r["target_system"],
                    "entity": entity, "target_key": r["target_key"], "golden_id": r["golden_id"],
                    "field": r["field"], "action": r["action"], "old_value": r["old_value"],
                    "new_value": r["new_value"], "rule": r["rule"], "severity": r["severity"],
                    "reason": r["approval_reason"], "status": "pending", "requested_run_id": run_id,
                    "requested_at": now, "last_seen_run_id": run_id} for r in new])

    def retire_approvals(self, run_id: str, entity: str, system: str, current: list[str]) -> None:
        """Pending or approved requests of this system the latest plan no longer proposes."""
        with self.engine.begin() as c:
            open_ids = set(c.execute(sa.select(approvals.c.approval_id).where(
                approvals.c.entity == entity, approvals.c.system == system,
                approvals.c.status.in_(OPEN_APPROVAL))).scalars())
            gone = sorted(open_ids - set(current))
            for i in range(0, len(gone), 500):
                c.execute(sa.update(approvals).where(approvals.c.approval_id.in_(gone[i:i + 500])).values(
                    status="obsolete", note=f"no longer proposed by run {run_id}"))

    def mark_approvals_applied(self, run_id: str, change_ids: list[str]) -> None:
        now = _now()
        with self.engine.begin() as c:
            for i in range(0, len(change_ids), 500):
                c.execute(sa.update(approvals).where(approvals.c.change_id.in_(change_ids[i:i + 500]),
                                                     approvals.c.status == "approved")
                          .values(status="applied", applied_run_id=run_id, applied_at=now))

    def decide(self, approval_ids: list[str], decision: str, *, by: str, note: str | None = None) -> int:
        """Approve or reject pending requests by approval id (or a unique prefix of one); returns
        how many approvals were decided. Only pending requests can be decided."""
        if decision not in ("approved", "rejected"):
            raise ValueError(f"decision must be approved or rejected, not {decision!r}")
        decided = 0
        with self.engine.begin() as c:
            for ref in approval_ids:
                matches = set(c.execute(sa.select(approvals.c.approval_id).where(
                    approvals.c.approval_id.startswith(ref, autoescape=True),
                    approvals.c.status == "pending")).scalars())
                if len(matches) != 1:
                    raise KeyError(f"approval {ref!r}: {'no pending request' if not matches else 'ambiguous'}"
                                   f" ({len(matches)} match)")
                c.execute(sa.update(approvals).where(approvals.c.approval_id == matches.pop(),
                                                     approvals.c.status == "pending")
                          .values(status=decision, decided_by=by, decided_at=_now(), note=note))
                decided += 1
        return decided

    def decide_all_pending(self, decision: str, *, by: str, note: str | None = None,
                           entity: str | None = None) -> int:
        with self.engine.connect() as c:
            stmt = sa.select(approvals.c.approval_id).where(approvals.c.status == "pending").distinct()
            if entity:
                stmt = stmt.where(approvals.c.entity == entity)
            ids = list(c.execute(stmt).scalars())
        return self.decide(ids, decision, by=by, note=note) if ids else 0

    def approvals(self, status: str | None = None) -> pa.Table:
        stmt = sa.select(approvals)
        if status:
            stmt = stmt.where(approvals.c.status == status)
        return self._arrow(stmt.order_by(approvals.c.requested_at, approvals.c.approval_id, approvals.c.field))

    def safety_figures(self, run_id: str) -> dict[str, int]:
        """What the report says about write-back safety for a run."""
        with self.engine.connect() as c:
            def count(stmt) -> int:
                return int(c.execute(stmt).scalar() or 0)
            return {
                "retried": count(sa.select(sa.func.count()).select_from(ledger).where(
                    ledger.c.run_id == run_id, ledger.c.retries > 0)),
                "retries": count(sa.select(sa.func.sum(ledger.c.retries)).where(ledger.c.run_id == run_id)),
                "dead_letters_open": count(sa.select(sa.func.count()).select_from(dead_letters).where(
                    dead_letters.c.status == "open")),
                "approvals_pending": count(sa.select(sa.func.count(sa.distinct(approvals.c.approval_id))).where(
                    approvals.c.status == "pending")),
                "unsettled": count(sa.select(sa.func.count()).select_from(ledger).where(
                    sa.text(_UNSETTLED), _still_open(), ledger.c.run_id != run_id)),
            }

    # ---------------------------------------------------------- quarantine

    def record_quarantine(self, run_id: str, issues: pa.Table) -> None:
        now = _now()
        with self.engine.begin() as c:
            entities = set(issues.column("entity").to_pylist()) if issues.num_rows else set()
            systems = set(issues.column("source_system").to_pylist()) if issues.num_rows else set()
            for e in entities:
                for s in systems:
                    c.execute(sa.delete(quarantine).where(quarantine.c.run_id == run_id,
                                                          quarantine.c.entity == e,
                                                          quarantine.c.system == s))
            if issues.num_rows:
                c.execute(sa.insert(quarantine), [{
                    "run_id": run_id, "system": r["source_system"], "entity": r["entity"],
                    "source_key": r["source_key"], "match_key": r["match_key"], "field": r["field"],
                    "column": r["column"], "problem": r["problem"], "severity": r["severity"], "at": now,
                } for r in _rows(issues)])

    def quarantined(self, run_id: str | None = None) -> pa.Table:
        stmt = sa.select(quarantine)
        if run_id:
            stmt = stmt.where(quarantine.c.run_id == run_id)
        return self._arrow(stmt.order_by(quarantine.c.id))

    # ---------------------------------------------------------- watermarks

    def watermark(self, system: str, entity: str) -> datetime | None:
        with self.engine.connect() as c:
            v = c.execute(sa.select(watermarks.c.high_water).where(
                watermarks.c.system == system, watermarks.c.entity == entity)).scalar()
        if v is not None and v.tzinfo is None:
            v = v.replace(tzinfo=timezone.utc)
        return v

    def since(self, system: str, entity: str, lookback: timedelta) -> datetime | None:
        """Where an incremental read starts: the watermark minus the lookback overlap (clock skew
        between systems); None (read everything) when no run has set one yet."""
        wm = self.watermark(system, entity)
        return None if wm is None else wm - lookback

    def stage_watermark(self, run_id: str, system: str, entity: str, high_water: datetime | None) -> None:
        """Remember what this run has read; it becomes the watermark in `advance_watermarks`."""
        if high_water is None:
            return
        with self.engine.begin() as c:
            c.execute(sa.delete(watermark_pending).where(
                watermark_pending.c.run_id == run_id, watermark_pending.c.system == system,
                watermark_pending.c.entity == entity))
            c.execute(sa.insert(watermark_pending).values(run_id=run_id, system=system, entity=entity,
                                                          high_water=high_water))

    def advance_watermarks(self, run_id: str, *, apply: bool = True) -> list[dict]:
        """Move every watermark this run staged forward (never back), in one transaction; the
        run's final step calls this once its write-backs succeeded. With `apply=False` (a
        dry-run) the staged values are dropped instead. Returns what moved."""
        moved = []
        with self.engine.begin() as c:
            pending = c.execute(sa.select(watermark_pending).where(watermark_pending.c.run_id == run_id)).fetchall()
            if not apply:
                pending = []
            for p in pending:
                hw = _utc(p.high_water)
                cur = _utc(c.execute(sa.select(watermarks.c.high_water).where(
                    watermarks.c.system == p.system, watermarks.c.entity == p.entity)).scalar())
                if cur is not None and cur >= hw:
                    continue
                c.execute(sa.delete(watermarks).where(watermarks.c.system == p.system,
                                                      watermarks.c.entity == p.entity))
                c.execute(sa.insert(watermarks).values(system=p.system, entity=p.entity, high_water=hw,
                                                       run_id=run_id, updated_at=_now()))
                moved.append({"system": p.system, "entity": p.entity, "high_water": hw})
            c.execute(sa.delete(watermark_pending).where(watermark_pending.c.run_id == run_id))
        return moved

    def set_watermark(self, system: str, entity: str, high_water: datetime, run_id: str) -> None:
        with self.engine.begin() as c:
            c.execute(sa.delete(watermarks).where(watermarks.c.system == system,
                                                  watermarks.c.entity == entity))
            c.execute(sa.insert(watermarks).values(system=system, entity=entity, high_water=high_water,
                                                   run_id=run_id, updated_at=_now()))

    # ---------------------------------------------------------- extracts (freshness)

    def record_extract(self, run_id: str, system: str, entity: str, rows: int, data_as_of: datetime,
                       extracted_at: datetime | None = None) -> None:
        with self.engine.begin() as c:
            c.execute(sa.delete(extracts).where(extracts.c.run_id == run_id, extracts.c.system == system,
                                                extracts.c.entity == entity))
            c.execute(sa.insert(extracts).values(run_id=run_id, system=system, entity=entity, rows=rows,
                                                 data_as_of=data_as_of, extracted_at=extracted_at or _now()))

    def extracts(self, run_id: str | None = None) -> pa.Table:
        stmt = sa.select(extracts)
        if run_id:
            stmt = stmt.where(extracts.c.run_id == run_id)
        return self._arrow(stmt.order_by(extracts.c.id))

    # ---------------------------------------------------------- kpis

    def record_kpis(self, run_id: str, rows: pa.Table, at: datetime | None = None) -> None:
        """Replace the run's KPI rows (domain, system, kpi, value)."""
        at = at or _now()
        with self.engine.begin() as c:
            c.execute(sa.delete(kpis).where(kpis.c.run_id == run_id))
            if rows.num_rows:
                c.execute(sa.insert(kpis), [{**r, "run_id": run_id, "at": at} for r in _rows(rows)])

    def kpis(self, run_id: str | None = None) -> pa.Table:
        stmt = sa.select(kpis)
        if run_id:
            stmt = stmt.where(kpis.c.run_id == run_id)
        return self._arrow(stmt.order_by(kpis.c.id))

    # ---------------------------------------------------------- discrepancy history

    def track_discrepancies(self, run_id: str, seen: pa.Table, *, full: bool = True,
                            at: datetime | None = None) -> None:
        """Update first / last seen for this run's discrepancies (`seen`: discrepancy_key, domain,
        system, action, target_key, field, severity; one row per key). A full run closes every open
        discrepancy it did not see; an incremental run sees only what changed, so it closes nothing.
        A closed discrepancy seen again opens a new episode. Re-tracking the same run is a no-op.
        Set-based: the keys go into a temporary table and four statements do the rest (a night's
        443k discrepancies at the large size took 9 s row by row)."""
        at = at or _now()
        h = discrepancy_history.c
        cols = ("discrepancy_key", "domain", "system", "action", "target_key", "field", "severity")
        fresh = {"first_seen_run": run_id, "first_seen_at": at, "last_seen_run": run_id,
                 "last_seen_at": at, "runs_seen": 1, "closed_at": None}
        seen_now = sa.Table("trueup_seen_discrepancies", sa.MetaData(),
                            *[sa.Column(k, h[k].type, primary_key=k == "discrepancy_key") for k in cols],
                            prefixes=["TEMPORARY"])
        with self.engine.begin() as c:
            seen_now.create(c)
            _insert_many(c, seen_now, {k: seen.column(k).to_pylist() for k in cols})
            was_seen = h.discrepancy_key.in_(sa.select(seen_now.c.discrepancy_key))
            # open and seen again (not by this very run: a re-executed report step counts once)
            c.execute(sa.update(discrepancy_history).where(was_seen, h.closed_at.is_(None), h.last_seen_run != run_id)
                      .values(last_seen_run=run_id, last_seen_at=at, runs_seen=h.runs_seen + 1))
            # closed and seen again: a new episode
            c.execute(sa.update(discrepancy_history).where(was_seen, h.closed_at.is_not(None)).values(**fresh))
            new = sa.select(*[seen_now.c[k] for k in cols],
                            *[sa.literal(v, h[k].type).label(k) if v is not None else sa.null().label(k)
                              for k, v in fresh.items()]
                            ).where(~sa.exists().where(h.discrepancy_key == seen_now.c.discrepancy_key))
            c.execute(sa.insert(discrepancy_history).from_select([*cols, *fresh], new))
            if full:
                # open, not seen by this run: corrected (or corrected elsewhere) since
                c.execute(sa.update(discrepancy_history)
                          .where(h.closed_at.is_(None), h.last_seen_run != run_id).values(closed_at=at))
            _drop_temporary(c, seen_now.name)

    def discrepancy_history(self, open_only: bool = False, closed_since: datetime | None = None) -> pa.Table:
        """Discrepancies by key: every one ever seen, or the open ones (`open_only`), or the open
        ones and those closed since `closed_since` (what a report reads: every discrepancy ever
        corrected keeps its row, 443,014 keys after one large nightly)."""
        h = discrepancy_history.c
        stmt = sa.select(discrepancy_history)
        if open_only:
            stmt = stmt.where(h.closed_at.is_(None))
        elif closed_since is not None:
            stmt = stmt.where(sa.or_(h.closed_at.is_(None), h.closed_at >= closed_since))
        return self._arrow(stmt.order_by(h.first_seen_at))

    def mean_days_to_close(self, since: datetime) -> dict[str, float]:
        """Per domain, the mean days from first seen to closed of the discrepancies closed since
        `since`: aggregated by the database, not read row by row."""
        h = discrepancy_history.c
        dialect = self.engine.dialect.name
        if dialect == "sqlite":
            days = sa.func.julianday(h.closed_at) - sa.func.julianday(h.first_seen_at)
        elif dialect == "postgresql":
            days = sa.extract("epoch", h.closed_at - h.first_seen_at) / 86400.0
        elif dialect in ("mysql", "mariadb"):
            days = sa.func.timestampdiff(sa.text("MICROSECOND"), h.first_seen_at, h.closed_at) / 86400e6
        else:
            raise NotImplementedError(f"mean days to close on {dialect}: SQLite, PostgreSQL or MySQL/MariaDB")
        stmt = (sa.select(h.domain, sa.func.avg(days)).where(h.closed_at.is_not(None), h.closed_at >= since)
                .group_by(h.domain))
        with self.engine.connect() as c:
            return {d: float(v) for d, v in c.execute(stmt) if v is not None}

    # ---------------------------------------------------------- tables other steps may add

    def has_table(self, name: str) -> bool:
        return sa.inspect(self.engine).has_table(name)

    def optional_table(self, name: str, run_id: str | None = None) -> pa.Table | None:
        """A table another part of trueup may keep (review queue, dead letters, approvals), read
        whole or for one run when it has a run_id column; None when the table does not exist."""
        if not self.has_table(name):
            return None
        t = sa.Table(name, sa.MetaData(), autoload_with=self.engine)
        stmt = sa.select(t)
        if run_id and "run_id" in t.c:
            stmt = stmt.where(t.c.run_id == run_id)
        return self._arrow(stmt)

    # ----------------------------------------------------------

    def _arrow(self, stmt) -> pa.Table:
        from trueup.systems.sql import rows_to_arrow

        with self.engine.connect() as c:
            res = c.execute(stmt)
            return rows_to_arrow(list(res.keys()), res.fetchall())
