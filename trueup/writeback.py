"""Apply a plan to one system safely: compare with the live values first, write only what still
needs writing, and report one outcome per plan row.

Writes go out in the client's batch size (`write_batch`); around each batch `journal` is told
the change ids about to be sent (before) and their results (after), so the ledger can say
"attempting" before anything leaves and the outcome once it is known: a run killed mid-apply
leaves an honest record, and the compare-before-write makes its rerun skip what had landed.
Up to the client's `in_flight` batches are out at once (a record's operations always in one
batch), so a remote system's latency, not trueup's journalling, sets the pace.

The flow is the same for every kind of system; the client supplies three verbs:
`fetch_live(entity, keys)` (current source rows for those keys), `write(entity, ops)` (one
outcome per operation) and the mapping it was configured with.

A plan row is
- unchanged  when the live value already equals the new one (a rerun of the same plan writes nothing);
- rejected   when the live value is neither the old nor the new one: the record changed since it
             was extracted, so the plan is stale for it and the next run re-plans it;
- written    otherwise, grouped per record (one UPDATE / one API record / one file line per key).
"""

from __future__ import annotations

import logging
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Any, Callable, Protocol

import pyarrow as pa
import pyarrow.compute as pc

from trueup.config import EntityMap
from trueup.duck import connect, fetch
from trueup.mapping import to_canonical
from trueup.model import DOMAINS, OUTCOME_SCHEMA

log = logging.getLogger(__name__)


@dataclass
class WriteOp:
    """One record-level write in the system's own terms."""

    key: str  # the system's key ('|'-joined for composite keys)
    key_values: dict[str, Any]  # key column -> value
    action: str  # create | update | adjust
    values: dict[str, Any] = field(default_factory=dict)  # column -> value in the system's format
    change_ids: list[str] = field(default_factory=list)
    idempotency_key: str = ""
    delta: int | None = None  # for adjust: quantity to post
    reason: str | None = None


@dataclass
class WriteResult:
    status: str  # applied | rejected | retryable_error
    error: str | None = None
    attempts: int = 1


class SystemClient(Protocol):
    name: str

    def extract(self, entity: str, since=None) -> pa.Table: ...

    def fetch_live(self, entity: str, keys: list[str]) -> pa.Table: ...

    def write(self, entity: str, ops: list[WriteOp]) -> list[WriteResult]: ...


def from_canonical_text(value: str | None, dtype: pa.DataType) -> Any:
    """A plan's canonical text back to a Python value of the canonical type."""
    if value is None:
        return None
    if pa.types.is_decimal(dtype):
        return Decimal(value)
    if pa.types.is_integer(dtype):
        return int(Decimal(value))
    if pa.types.is_boolean(dtype):
        return value.lower() == "true"
    if pa.types.is_date(dtype):
        return date.fromisoformat(value)
    return value


def source_codes(mapping: EntityMap) -> dict[str, dict[str, str]]:
    """Per mapped field with a code map, the map read backwards (canonical -> the system's code)."""
    return {f: {v: k for k, v in fm.map.items()} for f, fm in mapping.fields.items() if fm.map}


def split_key(key: str, cols: list[str]) -> dict[str, str]:
    """A record's key ('|'-joined when composite) as its key columns' values."""
    return dict(zip(cols, key.split("|"))) if len(cols) > 1 else {cols[0]: key}


Journal = Callable[[list[str], "list[WriteResult] | None"], None]
VERSION = "__version"  # live_values' field for a record's change time
UNREADABLE = "\x00unreadable\x00"  # live_values' value for one the system holds and trueup cannot read


class ApplyFailed(RuntimeError):
    """The system failed as a whole during an apply (its cause is `__cause__`). `outcomes` holds
    what was decided before: changes judged without a send (in place, stale, gone, flag only) and
    batches answered, so the caller marks only the rest as failed."""

    def __init__(self, cause: BaseException, outcomes: dict[str, WriteResult]):
        super().__init__(str(cause))
        self.outcomes = outcomes


def live_values(client: SystemClient, system: str, entity: str, mapping: EntityMap,
                plan: pa.Table) -> pa.Table:
    """The system's current canonical values of the plan's (key, field) pairs, as text:
    (source_key, field, live_value); a key the system does not hold has no rows, and a held key
    has a row per field even when the value is null, and one with field VERSION: its change time."""
    keys = sorted(set(plan.column("target_key").to_pylist()))
    live_raw = client.fetch_live(entity, keys)
    mapped = to_canonical(live_raw, system=system, entity=entity, mapping=mapping)
    live = mapped.staged
    fields = sorted(set(plan.column("field").to_pylist()))
    con = connect()
    con.register("live", live)
    # a value the system holds but trueup cannot read is not an empty one: it equals no old value,
    # so a correction over it is judged stale (someone typed something), never written over it
    con.register("unreadable", mapped.issues.select(["source_key", "field"]))
    unpivot = " UNION ALL ".join(
        f"SELECT source_key, '{f}' AS field, CAST(\"{f}\" AS VARCHAR) AS live_value FROM live"
        for f in fields if f in live.column_names
    )
    # a held record with no mapped field in the plan still counts as present; its change time is
    # the version its idempotency keys name
    unpivot = (unpivot + " UNION ALL " if unpivot else "") + \
        "SELECT source_key, NULL AS field, NULL AS live_value FROM live UNION ALL " \
        f"SELECT source_key, '{VERSION}' AS field, CAST(source_updated_at AS VARCHAR) AS live_value FROM live"
    out = fetch(con, f"""SELECT DISTINCT u.source_key, u.field,
                                CASE WHEN b.field IS NOT NULL THEN $1 ELSE u.live_value END AS live_value
                         FROM ({unpivot}) u LEFT JOIN (SELECT DISTINCT source_key, field FROM unreadable
                                                      WHERE field IS NOT NULL) b USING (source_key, field)""",
                [UNREADABLE])
    con.close()
    return out


def apply_plan(client: SystemClient, system: str, entity: str, mapping: EntityMap,
               plan: pa.Table, journal: Journal | None = None) -> pa.Table:
    """Apply the plan rows of one system and entity; return one outcome per row (OUTCOME_SCHEMA).
    `journal(change_ids, None)` is called before a batch is sent, `journal(change_ids, results)`
    after (results per change id, in order)."""
    if plan.num_rows == 0:
        return OUTCOME_SCHEMA.empty_table()
    domain = DOMAINS[entity]
    con = connect()
    con.register("plan", plan)
    con.register("lv", live_values(client, system, entity, mapping, plan))
    judged = fetch(con, """
        WITH present AS (SELECT DISTINCT source_key FROM lv)
        SELECT p.*, lv.live_value, p.target_key IN (SELECT source_key FROM present) AS exists_live,
          CASE
            WHEN p.action = 'create' AND p.target_key NOT IN (SELECT source_key FROM present) THEN 'write'
            WHEN p.action NOT IN ('create', 'flag') AND p.target_key NOT IN (SELECT source_key FROM present)
                THEN 'gone'
            WHEN lv.live_value IS NOT DISTINCT FROM p.new_value THEN 'unchanged'
            WHEN lv.live_value IS DISTINCT FROM p.old_value AND p.action <> 'create' THEN 'stale'
            WHEN p.action = 'create' THEN 'write_update'
            ELSE 'write' END AS verdict
        FROM plan p LEFT JOIN lv ON lv.source_key = p.target_key AND lv.field = p.field
        ORDER BY p.target_key, p.field""")
    version = dict(con.execute("SELECT source_key, max(live_value) FROM lv WHERE field = ? AND live_value IS NOT NULL "
                               "GROUP BY 1", [VERSION]).fetchall())
    con.close()

    outcomes: dict[str, WriteResult] = {}
    ops: dict[tuple[str, str], WriteOp] = {}
    # the plan (a change set), not a whole table; only the columns the loop reads
    rows = judged.select(["change_id", "target_key", "field", "action", "rule", "new_value", "live_value",
                          "verdict"]).to_pylist()
    key_cols = mapping.key_columns
    types = {f: (pa.string() if f == "match_key" else domain.type_of(f))
             for f in pc.unique(judged.column("field")).to_pylist() if f is not None}
    codes = source_codes(mapping)
    for r in rows:
        if r["verdict"] == "unchanged":
            outcomes[r["change_id"]] = WriteResult("unchanged", attempts=0)
            continue
        if r["verdict"] == "gone":  # an UPDATE would change no row and look applied
            outcomes[r["change_id"]] = WriteResult(
                "rejected", f"{system}.{entity} {r['target_key']} {r['field']}: the system no longer holds "
                            f"this record (gone since extract)", attempts=0)
            continue
        if r["verdict"] == "stale":
            outcomes[r["change_id"]] = WriteResult(
                "rejected", f"{system}.{entity} {r['target_key']} {r['field']}: changed since extract "
                            f"(plan expected the old value, the system now holds another)", attempts=0)
            continue
        action = "update" if r["verdict"] == "write_update" else r["action"]
        if action in ("deactivate", "flag"):
            action = "update" if action == "deactivate" else "flag"
        if action == "flag":
            outcomes[r["change_id"]] = WriteResult("unchanged", "flag only", attempts=0)
            continue
        op = ops.get((r["target_key"], action))
        if op is None:
            op = ops[(r["target_key"], action)] = WriteOp(
                key=r["target_key"], key_values=split_key(r["target_key"], key_cols), action=action)
        field_name = r["field"]
        if action == "adjust":
            new = from_canonical_text(r["new_value"], types[field_name])
            live_v = from_canonical_text(r["live_value"], types[field_name]) or 0
            op.delta = new - live_v
            op.reason = f"trueup: {r['rule']} (count {new}, book {live_v})"
        else:
            value = from_canonical_text(r["new_value"], types[field_name])
            if value is not None and field_name in codes:
                value = codes[field_name].get(value, value)
            op.values[mapping.fields[field_name].column] = value
        op.change_ids.append(r["change_id"])
    for op in ops.values():
        op.idempotency_key = _idempotency_key(op.change_ids, version.get(op.key))
    size = max(1, int(getattr(client, "write_batch", 500)))
    in_flight = max(1, int(getattr(client, "in_flight", 1)))
    try:
        _send(client, entity, _batches(list(ops.values()), size), in_flight, outcomes, journal)
    except Exception as exc:
        raise ApplyFailed(exc, dict(outcomes)) from exc
    ids = plan.column("change_id").to_pylist()
    return pa.table(
        {
            "change_id": ids,
            "status": [outcomes[i].status for i in ids],
            "error": [outcomes[i].error for i in ids],
            "attempts": [outcomes[i].attempts for i in ids],
        },
        schema=OUTCOME_SCHEMA,
    )


def _batches(op_list: list[WriteOp], size: int) -> list[list[WriteOp]]:
    """The operations in batches of about `size`, never splitting one record's operations: batches
    in flight together may land in any order, a record's own operations must not."""
    out: list[list[WriteOp]] = []
    for op in op_list:
        if not out or (len(out[-1]) >= size and op.key != out[-1][-1].key):
            out.append([])
        out[-1].append(op)
    return out


def _send(client: SystemClient, entity: str, batches: list[list[WriteOp]], in_flight: int,
          outcomes: dict[str, WriteResult], journal: Journal | None) -> None:
    """Send the batches, up to `in_flight` at once (the client's `in_flight`: a remote system's
    latency, not trueup, then sets the pace), each journalled before it leaves and its results
    after they come back (in the order they come back). When a batch fails as a whole (or its
    journal does), nothing new is sent; the batches already out are waited for and journalled
    before the first failure is raised."""
    failure: Exception | None = None
    pending: dict = {}  # future -> (batch, its change ids)

    def finish(futures) -> None:
        """Journal what came back (in the order it came); keep the first failure to raise later."""
        nonlocal failure
        for future in futures:
            batch, ids = pending.pop(future)
            try:
                for op, res in zip(batch, future.result(), strict=True):
                    for cid in op.change_ids:
                        outcomes[cid] = res
                if journal:
                    journal(ids, [outcomes[c] for c in ids])
            except Exception as exc:  # noqa: BLE001 (raised below, once the rest are in)
                if failure is None:
                    failure = exc
                else:
                    log.warning("%s: another write batch failed as well: %s", entity, exc)

    with ThreadPoolExecutor(in_flight, thread_name_prefix=f"trueup-write-{entity}") as pool:
        for batch in batches:
            if failure is not None:  # no new sends once a batch failed as a whole
                break
            ids = [cid for op in batch for cid in op.change_ids]
            try:
                if journal:
                    journal(ids, None)
            except Exception as exc:  # noqa: BLE001 (this batch never left; the ones out are still journalled)
                failure = exc
                break
            pending[pool.submit(client.write, entity, batch)] = (batch, ids)
            if len(pending) >= in_flight:  # the first to come back frees a place, whichever it is
                finish(wait(list(pending), return_when=FIRST_COMPLETED).done)
        while pending:
            finish(wait(list(pending), return_when=FIRST_COMPLETED).done)
    if failure is not None:
        raise failure


def _idempotency_key(change_ids: list[str], version: str | None = None) -> str:
    """The key a system dedupes a record's operation by: the changes, and the version of the
    record they were judged against (its change time, as read before writing). The same send
    again (a retry, a run re-executed after a crash while a batch was in flight) has the same key
    and is applied once. After someone set the value back, the record has a new version: the
    same correction is a new write, where a key of the changes alone was answered "duplicate" and
    nothing was written. A create (no record yet) is keyed by its changes alone."""
    import hashlib

    text = "|".join(sorted(change_ids))
    return hashlib.sha256((f"{version}#{text}" if version else text).encode()).hexdigest()[:32]
