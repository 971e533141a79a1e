"""The reconciliation steps as plain functions over Arrow tables: what each asset does, with no
orchestrator in sight (so the whole flow runs and tests without Dagster)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.compute as pc

from trueup.config import Config
from trueup.duck import connect, fetch
from trueup.mapping import ISSUE_SCHEMA, to_canonical
from trueup.model import DOMAINS, OUTCOME_SCHEMA, PLAN_SCHEMA
from trueup.state import StateStore
from trueup.writeback import SystemClient, apply_plan

log = logging.getLogger(__name__)

WRITEBACK_SCHEMA = pa.schema(
    [*PLAN_SCHEMA,
     pa.field("status", pa.string()), pa.field("error", pa.string()), pa.field("attempts", pa.int32())]
)


@dataclass
class Staged:
    table: pa.Table
    issues: pa.Table
    tombstones: pa.Table | None = None  # records their system says are deleted (canonical rows)


DELETED = "deleted"  # the column a system flags deleted records with (kept as tombstones)


def split_deleted(raw: pa.Table) -> tuple[pa.Table, pa.Table | None]:
    """(live rows, deleted rows) of an extract whose system flags deletes in a `deleted` column."""
    if DELETED not in raw.column_names:
        return raw, None
    flag = pc.is_in(pc.utf8_lower(raw.column(DELETED).cast(pa.string())),
                    pa.array(["true", "1", "t", "yes", "y"]))
    flag = pc.fill_null(flag, False)
    return raw.filter(pc.invert(flag)), raw.filter(flag)


def stage(domain: str, raw: dict[str, pa.Table], config: Config,
          extracted_at: datetime | None = None, unreadable: dict[str, str] | None = None) -> Staged:
    """Every system's extract of a domain, mapped to the canonical model, as one table.

    `unreadable` names systems whose extract cannot be trusted this run (schema drift), with the
    reason: their rows are not staged and the whole domain is held (an issue for key `<all>`)."""
    extracted_at = extracted_at or datetime.now(timezone.utc)
    tables, issues, tombs = [], [], []
    for system, reason in (unreadable or {}).items():
        issues.append(pa.Table.from_pylist([{
            "source_system": system, "entity": domain, "source_key": "<all>", "match_key": None,
            "field": None, "column": None, "problem": reason, "severity": "error"}], schema=ISSUE_SCHEMA))
    for system, table in raw.items():
        if system in (unreadable or {}):
            continue
        mapping = config.systems.entity(system, domain)
        live, deleted = split_deleted(table)
        mapped = to_canonical(live, system=system, entity=domain, mapping=mapping, extracted_at=extracted_at)
        tables.append(mapped.staged)
        issues.append(mapped.issues)
        if deleted is not None and deleted.num_rows:
            # a deleted record is not reconciled as if alive; it travels as a tombstone
            tombs.append(to_canonical(deleted, system=system, entity=domain, mapping=mapping,
                                      extracted_at=extracted_at).staged)
    schema = DOMAINS[domain].schema
    staged = pa.concat_tables(tables) if tables else schema.empty_table()
    return Staged(staged, pa.concat_tables(issues) if issues else ISSUE_SCHEMA.empty_table(),
                  pa.concat_tables(tombs) if tombs else schema.empty_table())


def writeback(domain: str, plan: pa.Table, clients: dict[str, SystemClient], config: Config,
              state: StateStore, run_id: str, *, dry_run: bool = False,
              blocked: dict[str, str] | None = None) -> pa.Table:
    """Apply the plan to each target system and record every outcome in the ledger.

    A system whose client fails as a whole (down, unreachable) gets `retryable_error` outcomes with
    the reason and the other systems still complete. `blocked` maps a system to the reason nothing
    may be written to it this run (a failed gate, a tripped breaker).
    """
    blocked = blocked or {}
    outs = []
    for system in sorted(set(plan.column("target_system").to_pylist())):
        rows = plan.filter(pc.equal(plan.column("target_system"), system))
        if dry_run or system in blocked:
            status = "dry_run" if dry_run else "blocked"
            reason = None if dry_run else blocked[system]
            outcome = pa.table({"change_id": rows.column("change_id"),
                                "status": pa.array([status] * rows.num_rows, pa.string()),
                                "error": pa.array([reason] * rows.num_rows, pa.string()),
                                "attempts": pa.array([0] * rows.num_rows, pa.int32())}, schema=OUTCOME_SCHEMA)
            if not dry_run:  # a blocked change is a decision worth auditing; a dry run is not
                state.record(run_id, domain, rows, outcome)
        else:
            try:
                outcome = apply_plan(clients[system], system, domain, config.systems.entity(system, domain), rows)
            except Exception as exc:  # the whole system failed: say so, keep the others going
                log.error("write-back to %s.%s failed: %s", system, domain, exc)
                outcome = pa.table({"change_id": rows.column("change_id"),
                                    "status": pa.array(["retryable_error"] * rows.num_rows, pa.string()),
                                    "error": pa.array([f"{system}.{domain}: {type(exc).__name__}: {exc}"[:500]]
                                                      * rows.num_rows, pa.string()),
                                    "attempts": pa.array([1] * rows.num_rows, pa.int32())}, schema=OUTCOME_SCHEMA)
            state.record(run_id, domain, rows, outcome)
        outs.append(_join(rows, outcome))
    if not outs:
        return WRITEBACK_SCHEMA.empty_table()
    return pa.concat_tables(outs).cast(WRITEBACK_SCHEMA)


def _join(plan: pa.Table, outcome: pa.Table) -> pa.Table:
    con = connect()
    con.register("p", plan)
    con.register("o", outcome)
    out = fetch(con, "SELECT p.*, o.status, o.error, o.attempts FROM p JOIN o USING (change_id)")
    con.close()
    return out


def discrepancy_counts(plan: pa.Table) -> pa.Table:
    """Plan rows by target system, action, field and severity: what is out of sync, where."""
    con = connect()
    con.register("plan", plan)
    out = fetch(con, """SELECT target_system, action, field, severity, count(*) AS changes
                        FROM plan GROUP BY ALL ORDER BY target_system, changes DESC, field""")
    con.close()
    return out
