"""The state store: what trueup remembers between runs, in any SQLAlchemy database (a SQLite
file by default; PostgreSQL in production), queryable with plain SQL.

- runs         one row per run: mode, dry-run, status, figures
- ledger       one row per attempted change: run, system, entity, key, field, old, new, outcome
- quarantine   every row held out of reconciliation, with its full key and the reason
- watermarks   per system and entity, the newest source change seen by a successful run
- extracts     per run, system and entity: rows read and how old the source's data was (freshness)
- kpis         per run, the business figures over time (long format: domain, system, kpi, value)
- discrepancy_history  every discrepancy by a stable key: first seen, last seen, runs seen, closed
- watermark_pending  what a run has read so far; becomes the watermark only when the run's
                     write-backs succeeded (never for a dry-run or a failed run)
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import sqlalchemy as sa

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

ledger = sa.Table(
    "ledger", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(64), index=True),
    sa.Column("change_id", sa.String(64), index=True),
    sa.Column("system", sa.String(32)),
    sa.Column("entity", sa.String(32)),
    sa.Column("target_key", sa.String(256)),
    sa.Column("golden_id", sa.String(64)),
    sa.Column("field", sa.String(64)),
    sa.Column("action", sa.String(16)),
    sa.Column("old_value", sa.Text),
    sa.Column("new_value", sa.Text),
    sa.Column("status", sa.String(24)),  # applied | unchanged | rejected | retryable_error | dry_run
    sa.Column("error", sa.Text),
    sa.Column("attempts", sa.Integer),
    sa.Column("rule", sa.String(256)),
    sa.Column("severity", sa.String(16)),
    sa.Column("at", sa.DateTime(timezone=True)),
)

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


def _rows(table: pa.Table) -> list[dict]:
    return table.to_pylist()


class StateStore:
    """Ledger, quarantine, runs and watermarks in one SQL database."""

    def __init__(self, url: str):
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.engine = sa.create_engine(url, future=True)
        if self.engine.dialect.name == "sqlite":
            # parallel steps append from several processes: WAL lets readers and one writer share
            @sa.event.listens_for(self.engine, "connect")
            def _wal(dbapi_conn, _):
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA busy_timeout=30000")
                cur.close()
        metadata.create_all(self.engine)

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

    def record(self, run_id: str, entity: str, plan: pa.Table, outcomes: pa.Table) -> None:
        """One ledger row per plan row with its outcome. Re-recording the same run replaces its
        rows for those changes, so a re-executed step never doubles the ledger."""
        if plan.num_rows == 0:
            return
        by_id = {r["change_id"]: r for r in _rows(outcomes)}
        now = _now()
        rows = [{
            "run_id": run_id, "change_id": p["change_id"], "system": p["target_system"],
            "entity": entity, "target_key": p["target_key"], "golden_id": p["golden_id"],
            "field": p["field"], "action": p["action"], "old_value": p["old_value"],
            "new_value": p["new_value"], "status": by_id[p["change_id"]]["status"],
            "error": by_id[p["change_id"]]["error"], "attempts": by_id[p["change_id"]]["attempts"],
            "rule": p["rule"], "severity": p["severity"], "at": now,
        } for p in _rows(plan)]
        ids = [r["change_id"] for r in rows]
        with self.engine.begin() as c:
            for i in range(0, len(ids), 500):
                c.execute(sa.delete(ledger).where(ledger.c.run_id == run_id,
                                                  ledger.c.change_id.in_(ids[i:i + 500])))
            c.execute(sa.insert(ledger), rows)

    def ledger(self, run_id: str | None = None) -> pa.Table:
        stmt = sa.select(ledger)
        if run_id:
            stmt = stmt.where(ledger.c.run_id == run_id)
        return self._arrow(stmt.order_by(ledger.c.id))

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
                            at: datetime | None = None) -> pa.Table:
        """Update first / last seen for this run's discrepancies (`seen`: discrepancy_key, domain,
        system, action, target_key, field, severity; one row per key). A full run closes every open
        discrepancy it did not see; an incremental run sees only what changed, so it closes nothing.
        A closed discrepancy seen again opens a new episode. Re-tracking the same run is a no-op.
        Returns the history rows this run touched."""
        at = at or _now()
        h = discrepancy_history.c
        seen_rows = {r["discrepancy_key"]: r for r in _rows(seen)}
        with self.engine.begin() as c:
            known = {}
            keys = list(seen_rows)
            for i in range(0, len(keys), 500):
                for r in c.execute(sa.select(h.discrepancy_key, h.last_seen_run, h.closed_at)
                                   .where(h.discrepancy_key.in_(keys[i:i + 500]))).mappings():
                    known[r["discrepancy_key"]] = r
            new, again, reopened = [], [], []
            for k, r in seen_rows.items():
                old = known.get(k)
                if old is None:
                    new.append(k)
                elif old["closed_at"] is not None:
                    reopened.append(k)
                elif old["last_seen_run"] != run_id:
                    again.append(k)
            fresh = {"first_seen_run": run_id, "first_seen_at": at, "last_seen_run": run_id,
                     "last_seen_at": at, "runs_seen": 1, "closed_at": None}
            if new:
                c.execute(sa.insert(discrepancy_history),
                          [{**{f: seen_rows[k][f] for f in ("discrepancy_key", "domain", "system", "action",
                                                             "target_key", "field", "severity")}, **fresh}
                           for k in new])
            for batch, values in ((again, {"last_seen_run": run_id, "last_seen_at": at,
                                           "runs_seen": h.runs_seen + 1}),
                                  (reopened, fresh)):
                for i in range(0, len(batch), 500):
                    c.execute(sa.update(discrepancy_history)
                              .where(h.discrepancy_key.in_(batch[i:i + 500])).values(**values))
            if full:
                # open, not seen by this run: corrected (or corrected elsewhere) since
                c.execute(sa.update(discrepancy_history)
                          .where(h.closed_at.is_(None), h.last_seen_run != run_id).values(closed_at=at))
        return self._arrow(sa.select(discrepancy_history).where(h.last_seen_run == run_id)
                           .order_by(h.discrepancy_key))

    def discrepancy_history(self, open_only: bool = False) -> pa.Table:
        stmt = sa.select(discrepancy_history)
        if open_only:
            stmt = stmt.where(discrepancy_history.c.closed_at.is_(None))
        return self._arrow(stmt.order_by(discrepancy_history.c.first_seen_at))

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
