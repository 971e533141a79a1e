"""Incremental sync: reconcile only the records that changed (since the watermark, or within a
window of days) and what they depend on, at a cost that follows the size of the change.

1. `read_changes`: each system's records changed after `since` (SQL: a bound predicate on the
   change column; REST: `updated_since`; files: only a drop not yet read), in the canonical model,
   deleted records kept as tombstones, each row tagged with its day (`partition_key`).
2. `sync_plan`: the golden records those changes touch (through the crosswalk: by the record's own
   key, by its match key, by its parent for a ship-to, by an extra anchor such as the product of a
   changed price), their other members read from the systems by key (`fetch_live`), then the
   same match / golden / plan as a full run over just those clusters. Golden ids come from the
   crosswalk, which keeps every record this run did not see.

The nightly full run stays the safety net for what this cannot see (a record deleted outright in a
file drop, a cluster no change points to).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timezone

import pyarrow as pa
import pyarrow.compute as pc

from trueup import reconcile, steps
from trueup.config import Config
from trueup.crosswalk import CrosswalkStore
from trueup.duck import connect, fetch, query
from trueup.mapping import ISSUE_SCHEMA
from trueup.model import DOMAINS, PLAN_SCHEMA
from trueup.reconcile import CROSSWALK_SCHEMA

log = logging.getLogger(__name__)

PARTITION = "partition_key"  # the day (YYYY-MM-DD, UTC) a row belongs to
# what depends on what: a changed price brings its product (the product's match key is the SKU)
DEPENDS_ON = {"product": ("price", "sku")}


def high_water(client, entity: str, raw: pa.Table, updated_at: str | None) -> datetime | None:
    """The newest change a read saw: a file drop's export time, else the largest change timestamp
    in the rows, never after now (None when there is none to go by). A row stamped in the
    future (a typo, a bad import, a clock far ahead) would otherwise carry the watermark past every
    change to come; it is left out and logged, and stays after the watermark, so each sync reads it."""
    now = datetime.now(timezone.utc)
    drops = getattr(client, "read_drop", None)
    if drops is not None:  # a drop stamped ahead (the 3PL's clock) is read again until its time
        exported = drops.get(entity)
        if exported is not None and exported > now:
            log.warning("%s.%s: drop exported after now (%s): the watermark stays at now",
                        getattr(client, "name", "?"), entity, exported.isoformat())
            return now
        return exported
    if not updated_at or updated_at not in raw.column_names or raw.num_rows == 0:
        return None
    con = connect()
    con.register("raw", raw.select([updated_at]))
    v, ahead, furthest = con.execute(
        f'WITH t AS (SELECT TRY_CAST(NULLIF(trim(CAST("{updated_at}" AS VARCHAR)), \'\') AS TIMESTAMPTZ) AS ts '
        f"FROM raw) SELECT max(ts) FILTER (WHERE ts <= $1), count(*) FILTER (WHERE ts > $1), max(ts) FROM t",
        [now]).fetchone()
    con.close()
    if ahead:
        log.warning("%s.%s: %d row(s) changed after now (up to %s): left out of the watermark",
                    getattr(client, "name", "?"), entity, ahead, furthest.astimezone(timezone.utc).isoformat())
    return v.astimezone(timezone.utc) if v is not None else None


@dataclass
class Changes:
    table: pa.Table  # canonical rows + `deleted` + `partition_key`
    issues: pa.Table
    high_water: dict[str, datetime | None] = field(default_factory=dict)
    read: dict[str, int] = field(default_factory=dict)  # rows each system returned


def change_schema(domain: str) -> pa.Schema:
    return (DOMAINS[domain].schema.append(pa.field("deleted", pa.bool_()))
            .append(pa.field(PARTITION, pa.string())))


def read_changes(domain: str, clients: dict, config: Config, since: dict[str, datetime | None],
                 until: datetime | None = None, partition_key: str | None = None,
                 extracted_at: datetime | None = None) -> Changes:
    """Every system's records of `domain` changed after `since[system]` (and before `until`).

    Rows are tagged with `partition_key` when given (an incremental run: its own day), else with
    the day of their change (a window of days). A row whose change time is unknown is kept by an
    open-ended read (better twice than never) and left out of a window it cannot be placed in.
    """
    systems = config.systems.systems_with(domain)
    raw = steps.each_system(lambda s: clients[s].extract(domain, since=since.get(s)), systems)
    hw = {s: high_water(clients[s], domain, raw[s], config.systems.entity(s, domain).updated_at) for s in systems}
    staged = steps.stage(domain, raw, config, extracted_at)
    parts = [staged.table.append_column("deleted", pa.array([False] * staged.table.num_rows, pa.bool_())),
             staged.tombstones.append_column("deleted", pa.array([True] * staged.tombstones.num_rows, pa.bool_()))]
    rows = pa.concat_tables(parts)
    bounds = pa.table({"source_system": list(since), "since": pa.array(list(since.values()), pa.timestamp("us", "UTC"))})
    con = connect()
    con.register("rows", rows)
    con.register("bounds", bounds)
    keep_unknown = "TRUE" if until is None else "FALSE"
    table = fetch(con, f"""
        SELECT r.*, coalesce($1, strftime(r.source_updated_at, '%Y-%m-%d')) AS {PARTITION}
        FROM rows r LEFT JOIN bounds b USING (source_system)
        WHERE CASE WHEN r.source_updated_at IS NULL THEN {keep_unknown}
                   ELSE (b.since IS NULL OR r.source_updated_at > b.since)
                        AND ($2::TIMESTAMPTZ IS NULL OR r.source_updated_at < $2::TIMESTAMPTZ) END""",
                  [partition_key, until])
    con.register("kept", table)
    issues = _issues_of(con, staged.issues)
    con.close()
    return Changes(table.cast(change_schema(domain)), issues, hw, {s: raw[s].num_rows for s in systems})


def _issues_of(con, issues: pa.Table) -> pa.Table:
    """The unreadable values among the changed rows (a row without a key is always reported)."""
    con.register("issues", issues)
    out = fetch(con, "SELECT i.* FROM issues i WHERE i.source_key = '<no key>' OR EXISTS "
                     "(SELECT 1 FROM kept k WHERE k.source_system = i.source_system AND k.source_key = i.source_key)")
    return out.cast(ISSUE_SCHEMA)


@dataclass
class SyncResult:
    plan: pa.Table  # PLAN_SCHEMA + partition_key
    matched: pa.Table
    crosswalk: pa.Table  # what the run adds to the crosswalk: records new to it or moved
    issues: pa.Table  # every issue the match held records for: the changes' and the counterparts'
    tombstones: pa.Table
    figures: dict = field(default_factory=dict)
    counterpart_issues: pa.Table | None = None  # the counterparts' alone (for the quarantine: new this run)


def sync_plan(domain: str, changes: pa.Table, clients: dict, config: Config,
              crosswalk: CrosswalkStore,
              *, issues: pa.Table | None = None, depends: pa.Table | None = None,
              links: pa.Table | None = None, apart: pa.Table | None = None,
              as_of: date | None = None, extracted_at: datetime | None = None,
              contract: Callable[[str, pa.Table], pa.Table] | None = None) -> SyncResult:
    """The plan for the golden records `changes` touch (plus `depends`: extra match keys with
    their partition, e.g. the SKUs of changed prices for products), each plan row tagged with the
    earliest day a change touched its golden record. The crosswalk is read by key (the store's
    files are queried, not loaded); the result's `crosswalk` is only what the run adds to it.
    `links` / `apart` are the last full run's matching decisions (`matching.persisted`): a record
    it set apart (a wrong cross-reference, a duplicate account, a match awaiting review) is not
    corrected on its key's word here either. `contract(domain, records)` gives the issues of the
    counterparts read (the changes' own come in `issues`): a record the nightly would hold for
    its data contract is held here too, changed or not."""
    con = connect()
    if not crosswalk.register(con, "crosswalk"):
        con.close()
        raise ValueError(f"{domain}: no crosswalk yet: run the nightly full reconciliation once before "
                         f"incremental syncs (it assigns the golden ids they build on)")
    as_of = as_of or datetime.now(timezone.utc).date()
    d = DOMAINS[domain]
    if changes.num_rows == 0 and (depends is None or depends.num_rows == 0):  # nothing touched
        con.close()
        empty = PLAN_SCHEMA.append(pa.field(PARTITION, pa.string())).empty_table()
        return SyncResult(empty, d.schema.empty_table(), CROSSWALK_SCHEMA.empty_table(), ISSUE_SCHEMA.empty_table(),
                          d.schema.empty_table(), {"changed_rows": 0, "golden_records_touched": 0,
                                                   "counterparts_read": {}, "records_reconciled": 0,
                                                   "changes_planned": 0})
    con.register("changes", changes)
    con.register("depends", depends if depends is not None else
                 pa.table({"match_key": pa.array([], pa.string()), PARTITION: pa.array([], pa.string())}))
    has_parent = "parent_key" in d.field_names
    # the crosswalk is read in few scans, each keeping only what the change can reach: a query
    # joining the view several times scans it each time (on the 10M-row price crosswalk at the
    # large size the old query for the touched ids alone took 2.4 s; these two scans 0.9 + 1.1 s)
    # 1. rows under any key the changes name: their own, their match keys, parents, anchors
    near = fetch(con, f"""
        WITH probe AS (SELECT source_key AS k FROM changes UNION SELECT match_key FROM changes
                       {"UNION SELECT parent_key FROM changes" if has_parent else ""}
                       UNION SELECT match_key FROM depends)
        SELECT cw.* FROM crosswalk cw WHERE cw.domain = $1 AND cw.source_key IN (SELECT k FROM probe)""",
                 [domain]).cast(CROSSWALK_SCHEMA)
    con.register("near", near)
    parent = ("UNION ALL SELECT cw.golden_id, ch.partition_key FROM changes ch JOIN near cw "
              "ON cw.source_system = ch.source_system AND cw.source_key = ch.parent_key" if has_parent else "")
    affected = fetch(con, f"""
        WITH hits AS (
            SELECT cw.golden_id, ch.partition_key FROM changes ch JOIN near cw USING (source_system, source_key)
            UNION ALL SELECT cw.golden_id, ch.partition_key FROM changes ch JOIN near cw ON cw.source_key = ch.match_key
            {parent}
            UNION ALL SELECT cw.golden_id, x.partition_key FROM depends x JOIN near cw ON cw.source_key = x.match_key)
        SELECT golden_id, min(partition_key) AS partition_key FROM hits GROUP BY golden_id""")
    con.register("affected", affected)
    # 2. every member of the golden records touched
    members = fetch(con, "SELECT cw.* FROM crosswalk cw WHERE cw.domain = $1 AND cw.golden_id IN "
                         "(SELECT golden_id FROM affected)", [domain]).cast(CROSSWALK_SCHEMA)
    con.register("members", members)
    wanted = fetch(con, """
        SELECT DISTINCT cw.source_system, cw.source_key FROM members cw
        WHERE NOT EXISTS (SELECT 1 FROM changes ch WHERE ch.source_system = cw.source_system
                                                   AND ch.source_key = cw.source_key)
        ORDER BY 1, 2""")
    keys = {system: pc.filter(wanted.column("source_key"), pc.equal(wanted.column("source_system"), system))
            .to_pylist() for system in config.systems.systems_with(domain)}
    fetched_raw = steps.each_system(lambda s: clients[s].fetch_live(domain, keys[s]), [s for s in keys if keys[s]])
    fetched = steps.stage(domain, fetched_raw, config, extracted_at)

    schema = d.schema
    live_changes = changes.filter(pc.invert(changes.column("deleted"))).select(schema.names).cast(schema)
    dead_changes = changes.filter(changes.column("deleted")).select(schema.names).cast(schema)
    subset = pa.concat_tables([live_changes, fetched.table])
    tombstones = pa.concat_tables([dead_changes, fetched.tombstones])
    read_issues = pa.concat_tables([fetched.issues] + ([contract(domain, fetched.table)]
                                                       if contract and fetched.table.num_rows else []))
    all_issues = pa.concat_tables([issues if issues is not None else ISSUE_SCHEMA.empty_table(), read_issues])

    # the crosswalk rows this match can meet: the touched golden records' members, the records
    # read, and their parents (a ship-to keeps its sold-to's golden id). The changes' own keys
    # and parents were in the first scan; only a counterpart's parent may be in neither
    con.register("subset", subset.select(["source_system", "source_key"] + (["parent_key"] if has_parent else [])))
    parents = "UNION SELECT source_system, parent_key FROM subset WHERE parent_key IS NOT NULL" if has_parent else ""
    con.execute("CREATE OR REPLACE TEMP TABLE known AS SELECT * FROM members UNION SELECT * FROM near")
    if has_parent:  # 3. a scan only when a counterpart's parent is new to this slice
        con.register("counterpart_parents", fetched.table.select(["source_system", "parent_key"]))
        missing = fetch(con, """
            SELECT DISTINCT parent_key AS source_key FROM counterpart_parents p WHERE parent_key IS NOT NULL
              AND NOT EXISTS (SELECT 1 FROM known k WHERE k.source_system = p.source_system
                                                      AND k.source_key = p.parent_key)""")
        if missing.num_rows:
            con.register("missing", missing)
            con.execute("INSERT INTO known SELECT cw.* FROM crosswalk cw WHERE cw.domain = $1 "
                        "AND cw.source_key IN (SELECT source_key FROM missing)", [domain])
    cw_slice = fetch(con, f"""
        WITH k AS (SELECT source_system, source_key FROM subset {parents})
        SELECT DISTINCT cw.* FROM known cw WHERE cw.golden_id IN (SELECT golden_id FROM affected)
            OR EXISTS (SELECT 1 FROM k WHERE k.source_system = cw.source_system AND k.source_key = cw.source_key)
        ORDER BY cw.source_system, cw.source_key""").cast(CROSSWALK_SCHEMA)
    matched, new_cw = reconcile.match(domain, subset, cw_slice, all_issues, links=links, apart=apart)
    con.register("cw_slice", cw_slice)
    con.register("new_cw", new_cw)
    # what this run adds to the crosswalk: records new to it or moved to another golden record
    moved = fetch(con, "SELECT * FROM new_cw EXCEPT SELECT * FROM cw_slice").cast(CROSSWALK_SCHEMA)
    golden = reconcile.build_golden(domain, matched, config, as_of)
    plan = reconcile.build_plan(domain, matched, golden, config, tombstones)

    con.register("plan", plan)
    con.register("matched", matched)
    default = min(changes.column(PARTITION).to_pylist() + (depends.column(PARTITION).to_pylist()
                                                            if depends is not None else []), default=None)
    plan = fetch(con, f"""
        WITH a AS (SELECT golden_id, partition_key FROM affected
                   UNION ALL SELECT m.golden_id, ch.partition_key FROM matched m
                             JOIN changes ch USING (source_system, source_key)),
        p AS (SELECT golden_id, min(partition_key) AS pk FROM a GROUP BY golden_id)
        SELECT plan.*, coalesce(p.pk, $1) AS {PARTITION} FROM plan LEFT JOIN p USING (golden_id)
        ORDER BY target_system, target_key, field""", [default])
    con.close()
    figures = {"changed_rows": changes.num_rows, "golden_records_touched": affected.num_rows,
               "counterparts_read": {s: t.num_rows for s, t in fetched_raw.items()},
               "records_reconciled": matched.num_rows, "changes_planned": plan.num_rows}
    return SyncResult(plan, matched, moved, all_issues, tombstones, figures, read_issues)


def depends_table(domain: str, upstream_changes: dict[str, pa.Table]) -> pa.Table | None:
    """The extra anchors a domain must reconcile because another domain changed (a changed price
    brings its product): match keys with the day of the change."""
    dep = DEPENDS_ON.get(domain)
    if dep is None or dep[0] not in upstream_changes:
        return None
    return query(f"SELECT {dep[1]} AS match_key, min({PARTITION}) AS {PARTITION} FROM t "
                 f"WHERE {dep[1]} IS NOT NULL GROUP BY 1", t=upstream_changes[dep[0]])
