"""Match, survivorship and the correction plan: the heart of the true-up, in DuckDB SQL.

- match:  every staged record gets a stable golden id. Records are clustered by their match key
          (an ERP number, a SKU, a price or stock natural key); a record without one stands
          alone. Golden ids already in the crosswalk are kept, so ids survive reruns.
- golden: per field, the owner's value wins; where the owner has none, the rule's strategy picks
          from the other systems. Derived values (expired prices, available-to-promise) here too.
- plan:   per target system, every field whose value differs from the golden value beyond the
          rule's tolerance becomes a plan row (old -> new, rule, severity). Plans never write to a
          field's owner, never blank a value, and never touch a record held in quarantine.
"""

from __future__ import annotations

import hashlib
from datetime import date

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from trueup.config import Config, FieldRule
from trueup.duck import connect, fetch, literal, q, query
from trueup.model import DOMAINS, PLAN_SCHEMA

CROSSWALK_SCHEMA = pa.schema(
    [
        pa.field("domain", pa.string()),
        pa.field("source_system", pa.string()),
        pa.field("source_key", pa.string()),
        pa.field("golden_id", pa.string()),
    ]
)
GOLDEN_PREFIX = {"customer": "cus_", "product": "prd_", "price": "prc_", "inventory": "inv_"}


def golden_id_for(domain: str, cluster_key: str) -> str:
    """The golden id a new cluster gets: a short stable hash of its match key."""
    return GOLDEN_PREFIX[domain] + hashlib.md5(cluster_key.encode()).hexdigest()[:16]


# ------------------------------------------------------------------ match


def match(
    domain: str,
    staged: pa.Table,
    crosswalk: pa.Table | None = None,
    issues: pa.Table | None = None,
    links: pa.Table | None = None,
    apart: pa.Table | None = None,
) -> tuple[pa.Table, pa.Table]:
    """Give every staged record its golden id; return (matched, crosswalk).

    `links` (source_system, source_key, link_key): accepted probabilistic matches (trueup.matching),
    a record clusters on its link key instead of its own match key. `apart` (source_system,
    source_key): records set apart (a broken cross-reference, a duplicate, a match awaiting review):
    each stands alone and held, so nothing is corrected on a guess.

    `matched` is `staged` plus `golden_id`, `parent_golden_id` (for hierarchies) and `held` (the
    cluster has a member with an error-severity issue, so nothing in it is corrected this run).
    `crosswalk` maps every source record ever seen to its golden id.
    """
    d = DOMAINS[domain]
    con = connect()
    # the clustering needs the keys only: the other columns stay in Arrow and the ids are joined
    # back by position (carried through DuckDB's hash joins they were most of match's memory)
    key_cols = ["source_system", "source_key", "match_key"] + (["parent_key"] if "parent_key" in d.field_names else [])
    con.register("staged", staged.select(key_cols).append_column(
        "_pos", pa.array(np.arange(staged.num_rows), pa.int64())))
    con.register("crosswalk", crosswalk if crosswalk is not None else CROSSWALK_SCHEMA.empty_table())
    con.register("issues", issues if issues is not None else pa.table(
        {"source_system": pa.array([], pa.string()), "source_key": pa.array([], pa.string()),
         "match_key": pa.array([], pa.string()), "severity": pa.array([], pa.string())}))
    pair = {"source_system": pa.array([], pa.string()), "source_key": pa.array([], pa.string())}
    con.register("links", links if links is not None else pa.table({**pair, "link_key": pa.array([], pa.string())}))
    con.register("apart", apart if apart is not None else pa.table(pair))
    prefix = GOLDEN_PREFIX[domain]
    parent_sql = (
        """, p AS (
            SELECT c.source_system, c.source_key, coalesce(pm.golden_id, pcw.golden_id) AS parent_golden_id
            FROM c
            LEFT JOIN c AS pm ON pm.source_system = c.source_system AND pm.source_key = c.parent_key
            LEFT JOIN cw AS pcw ON pcw.source_system = c.source_system AND pcw.source_key = c.parent_key
            WHERE c.parent_key IS NOT NULL)"""
        if "parent_key" in d.field_names else ""
    )
    sql = f"""
        WITH cw AS (SELECT * FROM crosswalk WHERE domain = $1),
        s0 AS (
            SELECT staged.*, l.link_key,
                   (staged.source_system, staged.source_key) IN (SELECT (source_system, source_key) FROM apart)
                       AS apart
            FROM staged LEFT JOIN (SELECT DISTINCT * FROM links) l USING (source_system, source_key)),
        s AS (
            SELECT * EXCLUDE (link_key),
                   CASE WHEN apart THEN '~' || source_system || ':' || source_key
                        ELSE coalesce(link_key, match_key, '~' || source_system || ':' || source_key) END AS cluster
            FROM s0),
        known AS (
            -- a cluster keeps the (smallest) id its anchor (the record whose own key is the match
            -- key) had, else the smallest id any member had. Two plain mins, not an arg_min over a
            -- (not anchor, id) pair: 12.8 -> 10.4 s for the clustering alone of the large stock records
            SELECT s.cluster,
                   coalesce(min(cw.golden_id) FILTER (WHERE s.source_key = s.match_key), min(cw.golden_id))
                       AS golden_id
            FROM s JOIN cw ON cw.source_system = s.source_system AND cw.source_key = s.source_key
            WHERE NOT s.apart
            GROUP BY s.cluster),
        c AS (
            SELECT s.* EXCLUDE (cluster),
                   coalesce(known.golden_id, '{prefix}' || substr(md5(s.cluster), 1, 16)) AS golden_id
            FROM s LEFT JOIN known USING (cluster))
        {parent_sql}
        SELECT c._pos, c.golden_id,
               {"p.parent_golden_id" if parent_sql else "NULL::VARCHAR AS parent_golden_id"},
               c.apart
        FROM c {"LEFT JOIN p USING (source_system, source_key)" if parent_sql else ""}
        ORDER BY c._pos
    """
    ids = fetch(con, sql, [domain])
    ids = ids.append_column("held", _held(con, ids)).drop_columns(["apart"])
    pos = ids.column("_pos")
    # every staged row once, in order (the usual case): no copy; else (a key staged twice
    # joins twice) the rows as the joins gave them
    whole = ids.num_rows == staged.num_rows and (not ids.num_rows or pc.all(pc.equal(
        pos, pa.array(np.arange(staged.num_rows), pa.int64()))).as_py())
    matched = staged if whole else staged.take(pos)
    for name in ("golden_id", "parent_golden_id", "held"):
        matched = matched.append_column(name, ids.column(name))
    # every column nullable, as a table out of DuckDB has them (downstream concatenates with those)
    matched = matched.cast(pa.schema([f.with_nullable(True) for f in matched.schema]))
    con.register("matched", matched.select(["source_system", "source_key", "golden_id"]))
    new_cw = fetch(
        con,
        """SELECT $1 AS domain, source_system, source_key, golden_id FROM matched
           UNION ALL
           SELECT domain, source_system, source_key, golden_id FROM crosswalk
           WHERE domain = $1 AND NOT EXISTS (SELECT 1 FROM matched m WHERE m.source_system = crosswalk.source_system
                                                                AND m.source_key = crosswalk.source_key)""",
        [domain],
    )
    con.close()
    return matched, new_cw.cast(CROSSWALK_SCHEMA)


def _held(con, ids: pa.Table) -> pa.Array | pa.ChunkedArray:
    """Which matched records are held: set apart, or in a golden record with a member that has an
    error-severity issue (a system whose whole extract could not be read holds the domain).

    Apart from the clustering query, and only when there are errors: joined into it, the check
    kept every clustered row for a second pass, spilling past DuckDB's memory cap at the large
    size, even for a quarantine without a single error."""
    apart = ids.column("apart")
    errors = con.execute("SELECT count(*), count(*) FILTER (WHERE source_key = '<all>') FROM issues "
                         "WHERE severity = 'error'").fetchall()[0]
    if not errors[0]:
        return apart
    if errors[1]:
        return pa.array(np.ones(ids.num_rows, bool))
    con.register("ids", ids.select(["_pos", "golden_id"]))
    # two equi-joins, not one join on "same key OR (no key and same match key)": DuckDB hashes only
    # the system for that OR and tests it per pair (the large full run: 11 s; 5M records against
    # 13,000 errors in a script: 100 s against 0.26 s)
    bad = fetch(con, """
        WITH e AS (SELECT source_system, source_key, match_key FROM issues WHERE severity = 'error'),
        hit AS (SELECT s._pos FROM staged s JOIN e USING (source_system, source_key)
                UNION
                SELECT s._pos FROM staged s JOIN e ON e.source_system = s.source_system
                                                 AND e.match_key = s.match_key
                WHERE e.source_key = '<no key>')
        SELECT DISTINCT ids.golden_id FROM ids JOIN hit USING (_pos)""")
    return pc.or_(apart, pc.is_in(ids.column("golden_id"), bad.column("golden_id")))


# ------------------------------------------------------------------ buckets

BUCKET = "bucket"


def with_buckets(matched: pa.Table, n: int) -> pa.Table:
    """`matched` with a `bucket` column (a hash of the golden id modulo n) and sorted by it: every
    record of a golden record is in one bucket, so each bucket's golden records and plan are
    computed on their own, and a reader of one bucket skips the others' row groups."""
    return query(f"SELECT *, CAST(hash(golden_id) % {int(n)} AS INTEGER) AS {BUCKET} FROM matched "
                 f"ORDER BY {BUCKET}", matched=matched)


def golden_count(matched: pa.Table) -> int:
    """How many golden records the matched records form (held ones too). DuckDB's parallel
    distinct count: pyarrow's took 3.3-6.1 s over the large price records' 10M ids, this 1.3 s."""
    return query("SELECT count(DISTINCT golden_id) AS n FROM m", m=matched.select(["golden_id"])).column("n")[0].as_py()


# ------------------------------------------------------------------ golden


def _pick(field: str, rule: FieldRule, system_order: list[str]) -> tuple[str, str]:
    """SQL for the surviving value of `field` and for the system it came from.

    "Newest first" is the rank `__rk` build_golden gives every record once (one sort of the
    table), so each candidate is an arg_min over it, not an ordered aggregate per field and system
    (which sorts every group again for every field: measured ~3x the time of the whole query)."""
    f = q(field)

    def from_system(s: str) -> str:
        return f"arg_min({f}, __rk) FILTER (WHERE source_system = {literal(s)} AND {f} IS NOT NULL)"

    candidates = [(rule.owner, from_system(rule.owner))]
    others = rule.fallback or []
    if rule.strategy == "priority":
        candidates += [(s, from_system(s)) for s in others]
    elif others:
        allowed = "source_system IN (" + ", ".join(literal(s) for s in others) + f") AND {f} IS NOT NULL"
        if rule.strategy == "most_recent":
            candidates.append(("*", f"arg_min({f}, __rk) FILTER (WHERE {allowed})"))
            src_expr = f"arg_min(source_system, __rk) FILTER (WHERE {allowed})"
        else:  # most complete: the longest value, the newest of equals
            rank = f"(-length(CAST({f} AS VARCHAR)), __rk)"
            candidates.append(("*", f"arg_min({f}, {rank}) FILTER (WHERE {allowed})"))
            src_expr = f"arg_min(source_system, {rank}) FILTER (WHERE {allowed})"
    value = "coalesce(" + ", ".join(c for _, c in candidates) + ")"
    whens = []
    for s, c in candidates:
        if s == "*":
            whens.append(f"WHEN {c} IS NOT NULL THEN {src_expr}")
        else:
            whens.append(f"WHEN {c} IS NOT NULL THEN {literal(s)}")
    source = "CASE " + " ".join(whens) + " END"
    return value, source


# build_golden's work per share: matched rows x candidate values per row (fields x systems). The
# aggregate's state grows with both: at the large size, under DuckDB's 2 GB cap, 2M customer rows
# (18 fields x 3 systems) at once took 8.1 s and 1M 5.9 s, while 2M price rows (10 x 2) took 7.8 s
GOLDEN_SHARE_CELLS = 40_000_000


def build_golden(domain: str, matched: pa.Table, config: Config, as_of: date) -> pa.Table:
    """One golden record per (unheld) golden id, with the winning system per ruled field."""
    d = DOMAINS[domain]
    rules = config.rules.domains[domain]
    system_order = config.systems.systems_with(domain)
    cols = ["golden_id"]
    for field in d.field_names:
        if field == "parent_key":
            continue
        rule = rules.fields.get(field)
        if rule is None:
            # not ruled: natural-key fields agree by construction; others by system order
            rule = FieldRule(owner=system_order[0], fallback=system_order[1:])
        value, source = _pick(field, rule, system_order)
        cols.append(f"{value} AS {q(field)}")
        if field in rules.fields:
            cols.append(f"{source} AS {q('src__' + field)}")
    if "parent_key" in d.field_names:
        owner = rules.fields["role"].owner if "role" in rules.fields else system_order[0]
        order = [owner] + [s for s in system_order if s != owner]
        cols.append("coalesce(" + ", ".join(
            f"first(parent_golden_id) FILTER (WHERE source_system = {literal(s)} AND parent_golden_id IS NOT NULL)"
            for s in order) + ") AS parent_golden_id")
    # the systems holding the record, in name order: a bool_or per configured system costs a
    # fraction of collecting, deduplicating and sorting a list per group (measured at the large
    # size: 2.4 s of the price golden query's 16 s)
    cols.append("list_filter([" + ", ".join(f"CASE WHEN bool_or(source_system = {literal(s)}) THEN {literal(s)} END"
                                            for s in sorted(system_order)) + "], lambda s: s IS NOT NULL) AS systems")
    # a cluster formed by a cross-reference: if it points nowhere, that is an exception, not a create
    cols.append("bool_or(match_key IS NOT NULL) AS keyed")
    cols.append("max(source_updated_at) AS source_updated_at")
    con = connect()
    con.register("matched", matched)
    # golden records are independent of each other: a large table is aggregated a share of its
    # golden ids at a time, so the window and the aggregate hold one share's rows (the large
    # landscape's 10M price rows: process peak 6.4 GB at once, 4.1 GB in five shares, ~10% slower)
    shares = max(1, -(-matched.num_rows * len(d.field_names) * len(system_order) // GOLDEN_SHARE_CELLS))
    try:
        parts = [_golden_share(con, domain, cols, rules, as_of, i, shares) for i in range(shares)]
    finally:
        con.close()
    return parts[0] if len(parts) == 1 else pa.concat_tables(parts)


def _golden_share(con, domain: str, cols: list[str], rules, as_of: date, i: int, shares: int) -> pa.Table:
    """The golden records of share `i` of `shares` of the golden ids (by the ids' hash)."""
    # salted: a bucket of the domain (`with_buckets`, the unsalted hash modulo the bucket count)
    # must spread over the shares, not fall into one of them
    share = f" AND hash(golden_id, 'share') % {shares} = {i}" if shares > 1 else ""
    # ranked within its golden record only: the rank is compared inside a group, never across
    ranked = ("SELECT *, row_number() OVER (PARTITION BY golden_id ORDER BY source_updated_at DESC NULLS LAST, "
              f"source_key, source_system) AS __rk FROM matched WHERE NOT held{share}")
    golden = f"SELECT {', '.join(cols)} FROM ({ranked}) GROUP BY golden_id"
    if domain == "price" and rules.expire_after_valid_to:
        golden = (f"SELECT * REPLACE (active AND (valid_to IS NULL OR valid_to >= $1::DATE) AS active) "
                  f"FROM ({golden})")
        return fetch(con, golden, [as_of])
    if domain == "inventory" and rules.atp is not None:
        policies = pa.table({
            "location": list(rules.atp.locations),
            "in_transit": [p.include_in_transit for p in rules.atp.locations.values()],
            "returns": [p.include_returns for p in rules.atp.locations.values()],
        }) if rules.atp.locations else pa.table({"location": pa.array([], pa.string()),
                                                 "in_transit": pa.array([], pa.bool_()),
                                                 "returns": pa.array([], pa.bool_())})
        con.register("atp_policy", policies)
        dflt = rules.atp.default
        return fetch(con, f"""
            SELECT g.*, coalesce(g.on_hand, 0) - coalesce(g.allocated, 0) - coalesce(g.reserved, 0)
                   + CASE WHEN coalesce(p.in_transit, {dflt.include_in_transit}) THEN coalesce(g.in_transit, 0) ELSE 0 END
                   + CASE WHEN coalesce(p.returns, {dflt.include_returns}) THEN coalesce(g.returns_pending, 0) ELSE 0 END
                   AS atp
            FROM ({golden}) g LEFT JOIN atp_policy p USING (location)""")
    return fetch(con, golden)


# ------------------------------------------------------------------ plan


def _same(field: str, rule: FieldRule, dtype: pa.DataType) -> str:
    """SQL true when the target's value m.f agrees with the golden g.f within the rule's tolerance."""
    m, g = f"m.{q(field)}", f"g.{q(field)}"
    tol = rule.tolerance
    if tol and (tol.abs is not None or tol.rel is not None) and (
            pa.types.is_decimal(dtype) or pa.types.is_integer(dtype) or pa.types.is_floating(dtype)):
        allowed = f"greatest({tol.abs or 0}, {tol.rel or 0} * abs({g}))"
        return f"({m} IS NOT NULL AND abs({m} - {g}) <= {allowed})"
    if tol and tol.normalize and pa.types.is_string(dtype):
        def norm(x: str) -> str:
            if "collapse_space" in tol.normalize:
                x = f"regexp_replace({x}, '\\s+', ' ', 'g')"
            if "trim" in tol.normalize:
                x = f"trim({x})"
            if "casefold" in tol.normalize:
                x = f"lower({x})"
            return x
        # cheap comparisons first, so the regular expression runs only for the pairs they cannot
        # settle: values equal as they are, or lowercased (lowercasing neither makes nor removes
        # whitespace, so it commutes with the other steps: equal lowercased is equal normalised).
        # A CASE, not an OR of comparisons: DuckDB makes each comparison of the two sides a join
        # condition and computes both sides of every one for every row before joining. At the
        # large size 363,000 of 1.2M CRM account names differ from the golden ones in case alone,
        # 3,944 otherwise (`build_plan` of the large customer records: 9.2 -> 4.7-5.0 s)
        cheap = [f"{m} IS NOT DISTINCT FROM {g}"] + (
            [f"lower({m}) IS NOT DISTINCT FROM lower({g})"] if "casefold" in tol.normalize else [])
        return ("(CASE " + " ".join(f"WHEN {c} THEN TRUE" for c in cheap)
                + f" ELSE {norm(m)} IS NOT DISTINCT FROM {norm(g)} END)")
    return f"({m} IS NOT DISTINCT FROM {g})"


def build_plan(domain: str, matched: pa.Table, golden: pa.Table, config: Config,
               tombstones: pa.Table | None = None, keys: pa.Table | None = None) -> pa.Table:
    """Every correction each target system needs, one row per field (PLAN_SCHEMA). `tombstones`
    are records their system deleted: per the rules, their counterparts are deactivated. `keys`
    (golden_id, source_system, source_key of every record) when `matched` is one bucket: a
    create's parent may be in another."""
    d = DOMAINS[domain]
    rules = config.rules.domains[domain]
    con = connect()
    con.register("matched", matched)
    con.register("all_keys", keys if keys is not None else matched.select(["golden_id", "source_system", "source_key"]))
    con.register("golden", golden)
    con.register("tombstones", tombstones if tombstones is not None else d.schema.empty_table())
    parts: list[str] = []

    def row(target: str, action: str, key: str, field: str, old: str, new: str, src: str,
            rule: str, severity: str, frm: str, where: str) -> str:
        return (f"SELECT {literal(domain)} AS domain, {literal(target)} AS target_system, {literal(action)} AS action, "
                f"g.golden_id, {key} AS target_key, {literal(field)} AS field, {old} AS old_value, "
                f"{new} AS new_value, {src} AS source_system, {literal(rule)} AS rule, "
                f"{literal(severity)} AS severity FROM {frm} WHERE {where}")

    # updates: a target's value differs from the golden one
    for field, rule in rules.fields.items():
        for target, action in rule.targets.items():
            cond = (f"m.source_system = {literal(target)} AND g.{q(field)} IS NOT NULL "
                    f"AND NOT {_same(field, rule, d.type_of(field))}")
            parts.append(row(
                target, action, "m.source_key", field, f"CAST(m.{q(field)} AS VARCHAR)",
                f"CAST(g.{q(field)} AS VARCHAR)", f"g.{q('src__' + field)}",
                f"{domain}.{field}: owner {rule.owner}", rule.severity,
                "matched m JOIN golden g USING (golden_id)", cond))

    # a target key per golden id and system (for references and cross-references)
    keys = ("SELECT golden_id, source_system, min(source_key) AS source_key FROM all_keys "
            "GROUP BY golden_id, source_system")
    # creates: the golden record is missing from a system that should have it
    for target, create in rules.create_in.items():
        em = config.systems.entity(target, domain)
        new_key = "g.golden_id"  # create_key: golden_id (validated in config)
        missing = (f"NOT list_contains(g.systems, {literal(target)})"
                   + ("" if d.natural_key else " AND NOT g.keyed")
                   + (" AND g.role IN (" + ", ".join(literal(r) for r in create.roles) + ")" if create.roles else ""))
        for field in em.fields:
            if field in ("match_key", "parent_key") or field in d.natural_key:
                continue
            src = f"g.{q('src__' + field)}" if field in rules.fields else "NULL"
            parts.append(row(
                target, "create", new_key, field, "NULL", f"CAST(g.{q(field)} AS VARCHAR)", src,
                f"{domain}.create_in.{target}", create.severity, "golden g",
                f"{missing} AND g.{q(field)} IS NOT NULL"))
        if "parent_key" in em.fields:
            parts.append(row(
                target, "create", new_key, "parent_key", "NULL",
                "coalesce(pk.source_key, g.parent_golden_id)", "NULL",
                f"{domain}.create_in.{target}", create.severity,
                f"golden g LEFT JOIN ({keys}) pk ON pk.golden_id = g.parent_golden_id "
                f"AND pk.source_system = {literal(target)}",
                f"{missing} AND g.parent_golden_id IS NOT NULL"))

    # cross-references: the referring system should carry the referred system's key
    if rules.xref:
        x = rules.xref
        will_create = (f"(NOT list_contains(g.systems, {literal(x.refers_to)}) AND NOT g.keyed AND "
                       + (f"g.role IN ({', '.join(literal(r) for r in rules.create_in[x.refers_to].roles or [])})"
                          if x.refers_to in rules.create_in and rules.create_in[x.refers_to].roles
                          else ("TRUE" if x.refers_to in rules.create_in else "FALSE")) + ")")
        desired = f"coalesce(k.source_key, CASE WHEN {will_create} THEN g.golden_id END)"
        parts.append(row(
            x.system, "update", "m.source_key", "match_key", "m.match_key", desired, literal(x.refers_to),
            f"{domain}.xref: {x.system} carries the {x.refers_to} key", x.severity,
            f"matched m JOIN golden g USING (golden_id) LEFT JOIN ({keys}) k "
            f"ON k.golden_id = g.golden_id AND k.source_system = {literal(x.refers_to)}",
            f"m.source_system = {literal(x.system)} AND {desired} IS NOT NULL "
            f"AND m.match_key IS DISTINCT FROM {desired} AND (m.match_key IS NULL OR k.source_key IS NOT NULL)"))

    # tombstones: a record deleted in its system deactivates its counterparts (never a delete),
    # unless a live record of that system still stands for the same golden record
    for src, tomb in rules.tombstones.items():
        f = q(tomb.field)
        for target in tomb.deactivate_in:
            parts.append(row(
                target, "deactivate", "m.source_key", tomb.field, f"CAST(m.{f} AS VARCHAR)", "'false'",
                literal(src), f"{domain}.tombstone: deleted in {src}", tomb.severity,
                "(SELECT DISTINCT source_system, match_key FROM tombstones) t "
                "JOIN matched m ON m.match_key = t.match_key JOIN golden g ON g.golden_id = m.golden_id",
                f"t.source_system = {literal(src)} AND m.source_system = {literal(target)} AND m.{f} IS TRUE "
                f"AND NOT m.held AND NOT list_contains(g.systems, {literal(src)})"))

    if not parts:
        return PLAN_SCHEMA.empty_table()
    sql = ("SELECT md5(concat_ws('|', domain, target_system, action, target_key, field, coalesce(new_value, '∅'))) "
           "AS change_id, * FROM (" + " UNION ALL ".join(parts) + ") "
           "ORDER BY target_system, target_key, field")
    plan = fetch(con, sql)
    con.close()
    return plan.select(PLAN_SCHEMA.names).cast(PLAN_SCHEMA)
