"""The reconciliation steps as plain functions over Arrow tables: what each asset does, with no
orchestrator in sight (so the whole flow runs and tests without Dagster)."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.compute as pc

from trueup import approvals
from trueup.config import Config
from trueup.duck import connect, fetch
from trueup.mapping import ISSUE_SCHEMA, to_canonical
from trueup.model import DOMAINS, OUTCOME_SCHEMA, PLAN_SCHEMA
from trueup.pii import scrub
from trueup.state import StateStore
from trueup.writeback import ApplyFailed, SystemClient, WriteResult, apply_plan, live_values

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
    row_counts: dict[str, int] = field(default_factory=dict)  # rows per system, in `table`'s order

    def rows_of(self, system: str) -> pa.Table:
        """One system's rows: a zero-copy slice (each system's rows are contiguous in `table`)."""
        start = 0
        for s, n in self.row_counts.items():
            if s == system:
                return self.table.slice(start, n)
            start += n
        return self.table.slice(0, 0)


DELETED = "deleted"  # the column a system flags deleted records with (kept as tombstones)


def split_deleted(raw: pa.Table) -> tuple[pa.Table, pa.Table | None]:
    """(live rows, deleted rows) of an extract whose system flags deletes in a `deleted` column."""
    if DELETED not in raw.column_names:
        return raw, None
    flag = pc.is_in(pc.utf8_lower(raw.column(DELETED).cast(pa.string())),
                    pa.array(["true", "1", "t", "yes", "y"]))
    flag = pc.fill_null(flag, False)
    if not pc.any(flag).as_py():  # the usual night: no copy of every live row (the large price book: 0.6 GB)
        return raw, None
    return raw.filter(pc.invert(flag)), raw.filter(flag)


def each_system(work, systems: list[str]) -> dict:
    """`work(system)` for every system, all at once, in the systems' order: a read waits on its
    own server (a CRM's API, an ERP's database), a mapping runs in DuckDB, which lets go of
    Python meanwhile; together they take about as long as the slowest alone. The first failure
    is raised, as work in turn would."""
    if len(systems) < 2:
        return {s: work(s) for s in systems}
    with ThreadPoolExecutor(len(systems), thread_name_prefix="trueup-system") as pool:
        return dict(zip(systems, pool.map(work, systems)))


def stage(domain: str, raw: dict[str, pa.Table], config: Config,
          extracted_at: datetime | None = None, unreadable: dict[str, str] | None = None) -> Staged:
    """Every system's extract of a domain, mapped to the canonical model, as one table.

    `unreadable` names systems whose extract cannot be trusted this run (schema drift), with the
    reason: their rows are not staged and the whole domain is held (an issue for key `<all>`)."""
    extracted_at = extracted_at or datetime.now(timezone.utc)
    tables, issues, tombs = [], [], []
    row_counts: dict[str, int] = {}
    for system, reason in (unreadable or {}).items():
        issues.append(pa.Table.from_pylist([{
            "source_system": system, "entity": domain, "source_key": "<all>", "match_key": None,
            "field": None, "column": None, "problem": reason, "severity": "error"}], schema=ISSUE_SCHEMA))

    def map_system(system: str) -> tuple:
        mapping = config.systems.entity(system, domain)
        live, deleted = split_deleted(raw[system])
        mapped = to_canonical(live, system=system, entity=domain, mapping=mapping, extracted_at=extracted_at)
        # a deleted record is not reconciled as if alive; it travels as a tombstone
        tomb = to_canonical(deleted, system=system, entity=domain, mapping=mapping, extracted_at=extracted_at
                            ).staged if deleted is not None and deleted.num_rows else None
        return mapped, tomb

    readable = [s for s in raw if s not in (unreadable or {})]
    for system, (mapped, tomb) in each_system(map_system, readable).items():
        tables.append(mapped.staged)
        row_counts[system] = mapped.staged.num_rows
        issues.append(mapped.issues)
        if tomb is not None:
            tombs.append(tomb)
    schema = DOMAINS[domain].schema
    staged = pa.concat_tables(tables) if tables else schema.empty_table()
    return Staged(staged, pa.concat_tables(issues) if issues else ISSUE_SCHEMA.empty_table(),
                  pa.concat_tables(tombs) if tombs else schema.empty_table(), row_counts)


def _outcome(change_ids, status: str, error, attempts: int) -> pa.Table:
    n = len(change_ids)
    errors = error if isinstance(error, list) else [error] * n
    return pa.table({"change_id": pa.array(change_ids, pa.string()),
                     "status": pa.array([status] * n, pa.string()),
                     "error": pa.array(errors, pa.string()),
                     "attempts": pa.array([attempts] * n, pa.int32())}, schema=OUTCOME_SCHEMA)


def writeback(domain: str, plan: pa.Table, clients: dict[str, SystemClient], config: Config,
              state: StateStore, run_id: str, *, dry_run: bool = False,
              blocked: dict[str, str] | None = None, systems: list[str] | None = None,
              whole_plan: bool = True) -> pa.Table:
    """Apply the plan to each target system (or only `systems`) and record every outcome.

    Before anything is written, changes the rules hold for approval are taken out: pending ones
    wait in the approvals table (`pending_approval`), rejected ones are `declined`, approved ones
    go through. Pass the whole domain plan even when applying one system: a change that refers to
    a record another system has yet to create waits for that create.

    A system whose client fails as a whole (down, unreachable) gets `retryable_error` outcomes with
    the reason (and dead letters) and the other systems still complete. `blocked` maps a system to
    the reason nothing may be written to it this run (a failed gate, a tripped breaker).
    `whole_plan=False` says the plan is a part (a replay, an incremental sync): pending approvals it
    lacks stay pending.
    """
    blocked = blocked or {}
    targets = sorted(set(plan.column("target_system").to_pylist()))
    if systems is not None:
        targets = [t for t in targets if t in systems]
    if not targets:
        return WRITEBACK_SCHEMA.empty_table()
    classified = approvals.classify(domain, plan, config)
    gated = approvals.gate(domain, plan, config, state.approval_status(approvals.needing(classified)),
                           classified=classified)
    outs = []
    for system in targets:
        rows = gated.filter(pc.equal(gated.column("target_system"), system))
        if dry_run or system in blocked:
            status = "dry_run" if dry_run else "blocked"
            outcome = _outcome(rows.column("change_id").to_pylist(), status,
                               None if dry_run else blocked[system], 0)
            if not dry_run:  # a blocked change is a decision worth auditing; a dry run is not
                state.record(run_id, domain, rows, outcome)
            outs.append(_join(rows, outcome))
            continue
        try:
            _settle_interrupted(domain, system, clients[system], config, state, run_id)
        except Exception as exc:  # the system is down: its own write-back below says so
            log.warning("could not settle interrupted writes to %s.%s: %s", system, domain, exc)
        held = rows.filter(pc.is_in(rows.column("approval_status"), pa.array(approvals.HELD)))
        go = rows.filter(pc.invert(pc.is_in(rows.column("approval_status"), pa.array(approvals.HELD))))
        state.request_approvals(run_id, domain, held.filter(
            pc.equal(held.column("approval_status"), "pending")).to_pylist())
        if whole_plan:  # a part of a plan (a replay) cannot tell which proposals are gone
            state.retire_approvals(run_id, domain, system,
                                   rows.filter(pc.is_valid(rows.column("approval_reason")))
                                   .column("approval_id").to_pylist())
        held_out = _outcome(held.column("change_id").to_pylist(), "pending_approval",
                            held.column("approval_note").to_pylist(), 0)
        declined = pc.equal(held.column("approval_status"), "rejected")
        held_out = held_out.set_column(1, "status", pc.if_else(declined, "declined", held_out.column("status")))
        outs.append(_join(held, held_out))
        if go.num_rows == 0:
            continue
        # one chunk: the journal takes each batch's rows by position, and a take across chunks
        # cost ~10x (the large nightly's ERP customer plan, 102k rows in two chunks: 203 takes of
        # 500 rows 0.23 -> 0.02 s)
        plan_rows = go.select(PLAN_SCHEMA.names).combine_chunks()

        recorded: dict[str, WriteResult] = {}  # outcomes the journal already put in the ledger
        position = {c: i for i, c in enumerate(plan_rows.column("change_id").to_pylist())}
        state.begin_journal(run_id, domain, list(position))
        batches: dict[str, str | None] = {}  # a batch's first change id -> its journal batch (several in flight)

        def journal(ids: list[str], results, _rows=plan_rows, _done=recorded, _at=position, _batch=batches) -> None:
            part = _rows.take(pa.array([_at[c] for c in ids], pa.int64()))
            if results is None:
                _batch[ids[0]] = state.record_attempting(run_id, domain, part)
                return
            state.record(run_id, domain, part, pa.table({
                "change_id": ids, "status": [r.status for r in results], "error": [r.error for r in results],
                "attempts": [r.attempts for r in results]}, schema=OUTCOME_SCHEMA), batch_id=_batch.pop(ids[0], None))
            _done.update(zip(ids, results))

        try:
            outcome = apply_plan(clients[system], system, domain, config.systems.entity(system, domain),
                                 plan_rows, journal=journal)
        except Exception as exc:  # the whole system failed: say so, keep the others going
            cause = exc.__cause__ if isinstance(exc, ApplyFailed) and exc.__cause__ else exc
            log.error("write-back to %s.%s failed: %s", system, domain, scrub(str(cause)))
            failed = WriteResult("retryable_error", f"{system}.{domain}: {type(cause).__name__}: {cause}"[:500])
            # what was decided before the failure keeps its outcome; only the rest failed
            known = {**(exc.outcomes if isinstance(exc, ApplyFailed) else {}), **recorded}
            cids = plan_rows.column("change_id").to_pylist()
            done = [known.get(c, failed) for c in cids]
            outcome = pa.table({"change_id": cids, "status": [r.status for r in done], "error": [r.error for r in done],
                                "attempts": [r.attempts for r in done]}, schema=OUTCOME_SCHEMA)
        # the journal recorded what was sent; this records the rest (unchanged, stale, failed whole)
        rest = pc.invert(pc.is_in(plan_rows.column("change_id"), pa.array(list(recorded), pa.string())))
        state.record(run_id, domain, plan_rows.filter(rest), outcome)
        approved = go.filter(pc.equal(go.column("approval_status"), "approved"))
        if approved.num_rows:
            applied = outcome.filter(pc.equal(outcome.column("status"), "applied")).column("change_id")
            state.mark_approvals_applied(run_id, [c for c in approved.column("change_id").to_pylist()
                                                  if c in set(applied.to_pylist())])
        outs.append(_join(plan_rows, outcome))
    return pa.concat_tables([o.select(WRITEBACK_SCHEMA.names).cast(WRITEBACK_SCHEMA) for o in outs])


def _settle_interrupted(domain: str, system: str, client: SystemClient, config: Config, state: StateStore,
                        run_id: str) -> None:
    """Earlier runs' writes that died in flight: look at the system and record whether each landed.
    (The ones the current plan still holds are settled by its own outcome as well.)"""
    open_ = state.unsettled(run_id, domain, system)
    if open_.num_rows == 0:
        return
    open_ = open_.rename_columns(["target_system" if c == "system" else c for c in open_.column_names])
    live = live_values(client, system, domain, config.systems.entity(system, domain), open_)
    con = connect()
    con.register("a", open_)
    con.register("lv", live)
    judged = fetch(con, """
        SELECT a.id, coalesce(lv.live_value IS NOT DISTINCT FROM a.new_value
                              AND (lv.source_key IS NOT NULL), FALSE) AS landed
        FROM a LEFT JOIN lv ON lv.source_key = a.target_key AND lv.field = a.field""")
    con.close()
    landed = pc.equal(judged.column("landed"), True)
    state.settle(run_id, judged.filter(landed).column("id").to_pylist(),
                 judged.filter(pc.invert(landed)).column("id").to_pylist())


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


def match_staged(domain: str, staged: Staged, config: Config, crosswalk: pa.Table | None, *,
                 issues: pa.Table | None = None, previous_links: pa.Table | None = None,
                 decisions: pa.Table | None = None):
    """Match as the nightly run does: probabilistic links for records without a usable
    cross-reference (earlier decisions reused), then clusters with stable golden ids.
    Returns (matched, crosswalk, matching result or None)."""
    from trueup import matching, reconcile

    res = matching.match_domain(domain, staged.table, config, previous=previous_links, decisions=decisions)
    links, apart = (res.link_keys(), res.held()) if res is not None else (None, None)
    matched, crosswalk = reconcile.match(domain, staged.table, crosswalk,
                                        staged.issues if issues is None else issues, links=links, apart=apart)
    return matched, crosswalk, res


def plan_domain(domain: str, raw: dict[str, pa.Table], config: Config, crosswalk: pa.Table | None,
                as_of=None, *, previous_links: pa.Table | None = None, decisions: pa.Table | None = None,
                tombstones: pa.Table | None = None) -> tuple[pa.Table, pa.Table]:
    """Stage, match, survive and plan one domain from fresh extracts, exactly as the nightly run
    would (same matching memory, same tombstones): (plan, crosswalk)."""
    from trueup import reconcile

    staged = stage(domain, raw, config)
    matched, crosswalk, _ = match_staged(domain, staged, config, crosswalk, previous_links=previous_links,
                                         decisions=decisions)
    golden = reconcile.build_golden(domain, matched, config, as_of or datetime.now(timezone.utc).date())
    if tombstones is None:
        tombstones = staged.tombstones
    return reconcile.build_plan(domain, matched, golden, config, tombstones), crosswalk


def replay_dead_letters(domain: str, raw: dict[str, pa.Table], clients: dict[str, SystemClient],
                        config: Config, state: StateStore, run_id: str,
                        crosswalk: pa.Table | None, **memory) -> dict[str, int]:
    """Re-plan the domain's open dead letters against current values and apply what is still
    needed; a stored value is never re-sent as is. A dead letter whose field the fresh plan no
    longer changes is closed as obsolete (it landed after all, or the data moved on); one whose
    field now needs another value gets that value (and is closed as superseded).

    `raw`: fresh extracts of every system holding the domain. Returns figures: open, replayed
    (written again), applied, still_failing, found_in_place (had landed after all), obsolete,
    held (waiting for approval). `memory`: the nightly's matching memory and tombstones
    (`previous_links`, `decisions`, `tombstones`), so the re-plan is the plan the nightly would make."""
    open_ = state.dead_letters(status="open", entity=domain)
    figures = {"open": open_.num_rows, "replayed": 0, "applied": 0, "still_failing": 0, "obsolete": 0,
               "found_in_place": 0, "held": 0}
    if open_.num_rows == 0:
        return figures
    plan, _ = plan_domain(domain, raw, config, crosswalk, **memory)
    con = connect()
    con.register("plan", plan)
    con.register("dl", open_)
    # a field of a record, or a whole record to create, that a dead letter names
    replan = fetch(con, """
        SELECT p.* FROM plan p WHERE EXISTS (
          SELECT 1 FROM dl WHERE dl.system = p.target_system AND dl.target_key = p.target_key
            AND (dl.field = p.field OR (dl.action = 'create' AND p.action = 'create')))""")
    gone = fetch(con, """
        SELECT dl.id FROM dl WHERE NOT EXISTS (
          SELECT 1 FROM plan p WHERE dl.system = p.target_system AND dl.target_key = p.target_key
            AND (dl.field = p.field OR (dl.action = 'create' AND p.action = 'create')))""")
    con.close()
    # nothing left to change: the failed attempt may have landed after all (a dropped connection
    # after the write); then the ledger says so and the dead letter is resolved, else obsolete
    gone_rows = open_.filter(pc.is_in(open_.column("id"), gone.column("id")))
    landed_ids: set[int] = set()
    for system in sorted(set(gone_rows.column("system").to_pylist())):
        rows = gone_rows.filter(pc.equal(gone_rows.column("system"), system))
        rows = rows.rename_columns(["target_system" if c == "system" else c for c in rows.column_names])
        live = live_values(clients[system], system, domain, config.systems.entity(system, domain), rows)
        now = {(r["source_key"], r["field"]): r["live_value"] for r in live.to_pylist()}
        landed = [r for r in rows.to_pylist() if (r["target_key"], r["field"]) in now
                  and now[(r["target_key"], r["field"])] == r["new_value"]]
        if landed:
            part = pa.Table.from_pylist(landed).select(
                [c for c in PLAN_SCHEMA.names if c in rows.column_names])
            state.record(run_id, domain, part, _outcome(
                [r["change_id"] for r in landed], "unchanged",
                "found in place on replay: the attempt reported as failed had landed", 0))
            landed_ids |= {r["id"] for r in landed}
    state.close_dead_letters([i for i in gone.column("id").to_pylist() if i not in landed_ids], "obsolete",
                             "re-planned against current values: nothing left to change", run_id)
    figures["obsolete"] = gone.num_rows - len(landed_ids)
    figures["found_in_place"] = len(landed_ids)
    if replan.num_rows:
        out = writeback(domain, replan.cast(PLAN_SCHEMA), clients, config, state, run_id,
                        systems=sorted(set(open_.column("system").to_pylist())), whole_plan=False)
        status = out.column("status").to_pylist()
        figures["replayed"] = sum(s not in ("pending_approval", "declined") for s in status)
        figures["applied"] = sum(s in ("applied", "unchanged") for s in status)
        figures["still_failing"] = sum(s in ("retryable_error", "rejected") for s in status)
        figures["held"] = sum(s in ("pending_approval", "declined") for s in status)
    return figures
