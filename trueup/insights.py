"""The business figures of a run, for the exception report and the KPIs kept over time: what is out
of sync, where, how bad (units, money), for how long, and what trueup did about it.

Every figure is an aggregate plus the rows behind it; both are Arrow tables computed with DuckDB.
Emails, phones and tax ids are masked in every table this module returns, in the values and in
error text a system echoed them into (`trueup.pii`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa

from trueup.config import ReportSettings
from trueup.duck import connect, fetch, literal, sql_type
from trueup.pii import SCRUB_MACRO
from trueup.steps import WRITEBACK_SCHEMA
from trueup.warehouse import Warehouse

PII_FIELDS = ("email", "phone", "tax_id")
SEVERITIES = ["critical", "high", "medium", "low"]
# outcome status -> what the business is told; statuses other parts of trueup may add (dead letters,
# approvals) fall into the right bucket without a change here
CATEGORY_SQL = """CASE
    WHEN status = 'applied' THEN 'applied'
    WHEN status = 'unchanged' THEN 'already right'
    WHEN status = 'dry_run' THEN 'not written (dry run)'
    WHEN status IN ('pending', 'pending_approval', 'awaiting_approval') THEN 'pending approval'
    ELSE 'failed' END"""
MATCHED_COLUMNS = {"source_system": pa.string(), "source_key": pa.string(), "golden_id": pa.string(),
                   "held": pa.bool_()}
QUARANTINE_COLUMNS = {"system": pa.string(), "entity": pa.string(), "source_key": pa.string(),
                      "field": pa.string(), "column": pa.string(), "problem": pa.string(),
                      "severity": pa.string()}
EXTRACT_COLUMNS = {"system": pa.string(), "entity": pa.string(), "rows": pa.int64(),
                   "data_as_of": pa.timestamp("us", tz="UTC"), "extracted_at": pa.timestamp("us", tz="UTC")}
GOLDEN_COLUMNS = {
    "price": {"golden_id": pa.string(), "price_list": pa.string(), "sku": pa.string(), "uom": pa.string(),
              "min_qty": pa.int64(), "currency": pa.string(), "unit_price": pa.decimal128(18, 4)},
    "inventory": {"golden_id": pa.string(), "sku": pa.string(), "location": pa.string(), "on_hand": pa.int64()},
    "product": {"sku": pa.string(), "base_uom": pa.string(), "case_qty": pa.int64(), "pallet_qty": pa.int64()},
}

MASK_MACRO = """CREATE OR REPLACE MACRO mask(fld, v) AS CASE
    WHEN v IS NULL THEN NULL
    WHEN fld = 'email' THEN left(v, 1) || '***' || CASE WHEN v LIKE '%@%' THEN '@' || split_part(v, '@', 2) ELSE '' END
    WHEN fld IN ('phone', 'tax_id') THEN CASE WHEN length(v) > 6 THEN repeat('*', length(v) - 4) || right(v, 4)
                                             ELSE '******' END
    ELSE v END"""

CLUSTER_SHARE_ROWS = 4_000_000  # matched records grouped into clusters at once
CLOSED_WINDOW = timedelta(days=30)  # mean_days_to_close: over the discrepancies closed this long back

DISCREPANCY_KEY_SQL = "md5(domain || '|' || target_system || '|' || action || '|' || target_key || '|' || field)"


@dataclass
class Figure:
    """One chart of the report: the aggregate it draws and the rows behind it."""

    name: str
    title: str
    explains: str
    data: pa.Table
    rows: pa.Table


@dataclass
class RunFacts:
    """What the report of one run is made from (all of it already in the warehouse or state store)."""

    run_id: str
    at: datetime
    dry_run: bool
    outcomes: pa.Table  # every domain's writeback rows (plan columns + status, error, attempts)
    matched: dict[str, pa.Table | Path]  # domain -> source_system, source_key, golden_id, held (or their file)
    golden: dict[str, pa.Table | Path]  # price, inventory, product golden records (or their file)
    quarantined: pa.Table  # the state store's quarantine rows of this run
    extracts: pa.Table  # the state store's extracts rows of this run (data age)
    history: pa.Table  # discrepancy_history after tracking this run: at least the open and the just closed
    previous_runs: pa.Table  # the runs table (summary JSON per run)
    settings: ReportSettings = field(default_factory=ReportSettings)
    freshness_hours: dict[str, float] = field(default_factory=dict)  # system -> SLA
    review_queue: pa.Table | None = None  # the matching review queue, when that table exists
    dead_letters: pa.Table | None = None  # write-back dead letters, when that table exists
    # per domain, mean days to close over CLOSED_WINDOW, as the state store aggregates it (so
    # `history` need not hold the closed ones); None: no such KPI
    days_to_close: dict[str, float] | None = None


def _conform(table: pa.Table | None, columns: dict[str, pa.DataType]) -> pa.Table:
    """The named columns, typed; absent columns (or an absent table) become empty / null."""
    if table is None or table.num_rows == 0:
        return pa.table({c: pa.array([], t) for c, t in columns.items()})
    out = {}
    for c, t in columns.items():
        if c in table.column_names:
            col = table.column(c)
            if pa.types.is_timestamp(t) and pa.types.is_timestamp(col.type) and col.type.tz is None:
                col = col.cast(pa.timestamp("us")).cast(pa.timestamp("us", tz="UTC"))  # stores give naive UTC
            out[c] = col.cast(t)
        else:
            out[c] = pa.nulls(table.num_rows, t)
    return pa.table(out)


def _source(con, name: str, parts: dict[str, pa.Table | Path | str], columns: dict[str, pa.DataType],
            *, domain_column: bool) -> None:
    """View `name` in `con`: the named columns of each part, an Arrow table or a warehouse file
    (Parquet, or Arrow IPC memory-mapped) read as the query streams it (the large landscape's
    matched records are 24M rows, too many to hold), with `domain` = the part's key where
    `domain_column`. No part: empty, with those columns."""
    selects = []
    for i, (key, part) in enumerate(parts.items()):
        label = f", {literal(key)} AS domain" if domain_column else ""
        if isinstance(part, (str, Path)):
            cols = ", ".join(f"CAST({c} AS {sql_type(t)}) AS {c}" for c, t in columns.items())
            if Path(part).suffix == ".parquet":
                selects.append(f"SELECT {cols}{label} FROM read_parquet({literal(str(part))})")
            else:  # an Arrow IPC file, memory-mapped: the query reads its pages, no copy is made
                con.register(f"{name}_{i}", Warehouse.read_path(Path(part), columns=list(columns)))
                selects.append(f"SELECT {cols}{label} FROM {name}_{i}")
        else:
            con.register(f"{name}_{i}", _conform(part, columns))
            selects.append(f"SELECT {', '.join(columns)}{label} FROM {name}_{i}")
    if not selects:
        con.register(f"{name}_0", _conform(None, {**columns, **({"domain": pa.string()} if domain_column else {})}))
        selects.append(f"SELECT * FROM {name}_0")
    con.execute(f"CREATE TEMP VIEW {name} AS " + " UNION ALL ".join(selects))


def discrepancy_keys(outcomes: pa.Table) -> pa.Table:
    """One row per discrepancy with a key that stays the same across runs while the disagreement
    lasts: the plan's change_id includes the new value, this key does not."""
    con = connect()
    con.register("o", outcomes.cast(WRITEBACK_SCHEMA))
    out = fetch(con, f"""SELECT {DISCREPANCY_KEY_SQL} AS discrepancy_key, any_value(domain) AS domain,
                                any_value(target_system) AS system, any_value(action) AS action,
                                any_value(target_key) AS target_key, any_value(field) AS field,
                                any_value(severity) AS severity
                         FROM o GROUP BY ALL ORDER BY discrepancy_key""")
    con.close()
    return out


def build(facts: RunFacts) -> tuple[dict[str, Figure], dict, pa.Table]:
    """The report's figures, its headline numbers and the KPI rows (domain, system, kpi, value)."""
    s = facts.settings
    con = connect()
    con.execute(MASK_MACRO)
    con.execute(SCRUB_MACRO)
    con.register("o_raw", facts.outcomes.cast(WRITEBACK_SCHEMA))
    con.execute(f"""CREATE TEMP TABLE o AS SELECT change_id, {DISCREPANCY_KEY_SQL} AS discrepancy_key, domain,
                           target_system, action, golden_id, target_key, field,
                           mask(field, old_value) AS old_value, mask(field, new_value) AS new_value,
                           source_system, rule, severity, status, scrub(error) AS error, attempts,
                           {CATEGORY_SQL} AS outcome
                    FROM o_raw""")
    _source(con, "m", {d: facts.matched[d] for d in sorted(facts.matched)}, MATCHED_COLUMNS, domain_column=True)
    for name, cols in GOLDEN_COLUMNS.items():
        _source(con, f"g_{name}", {name: facts.golden[name]} if name in facts.golden else {}, cols,
                domain_column=False)
    con.register("q", _conform(facts.quarantined, QUARANTINE_COLUMNS))
    con.register("x", _conform(facts.extracts, EXTRACT_COLUMNS))
    hist_cols = {"discrepancy_key": pa.string(), "domain": pa.string(), "system": pa.string(),
                 "action": pa.string(), "target_key": pa.string(), "field": pa.string(), "severity": pa.string(),
                 "first_seen_run": pa.string(), "first_seen_at": pa.timestamp("us", tz="UTC"),
                 "last_seen_run": pa.string(), "last_seen_at": pa.timestamp("us", tz="UTC"),
                 "runs_seen": pa.int64(), "closed_at": pa.timestamp("us", tz="UTC")}
    con.register("h", _conform(facts.history, hist_cols))
    at = facts.at.astimezone(timezone.utc).replace(tzinfo=None)
    con.execute("SET VARIABLE run_at = ?::TIMESTAMP AT TIME ZONE 'UTC'", [at])
    figs: dict[str, Figure] = {}

    def fig(name, title, explains, data_sql, rows_sql, params=None):
        figs[name] = Figure(name, title, explains, fetch(con, data_sql, params), fetch(con, rows_sql, params))

    # -- discrepancies by domain x system x severity (a record to create counts once)
    fig("discrepancies", "Discrepancies by domain, system and severity",
        "Each bar is one system's records that disagree with the golden record, by how much the business "
        "should care. A record missing in a system counts once, not once per field.",
        """SELECT domain, target_system AS system, severity,
                  count(DISTINCT CASE WHEN action = 'create' THEN target_key ELSE change_id END) AS discrepancies
           FROM o GROUP BY ALL ORDER BY domain, system, severity""",
        "SELECT * EXCLUDE (outcome) FROM o ORDER BY domain, target_system, severity, target_key, field")

    # -- inventory variance by warehouse, in units and at the valuation list's price
    con.execute("""CREATE TEMP TABLE unit_price AS
        SELECT p.sku, arg_min(p.unit_price, p.min_qty)::DOUBLE AS unit_price, any_value(p.currency) AS currency
        FROM g_price p LEFT JOIN g_product d USING (sku)
        WHERE p.price_list = $1 AND p.uom = coalesce(d.base_uom, 'EA')
        GROUP BY p.sku""", [s.valuation_price_list])
    con.execute("""CREATE TEMP TABLE inv AS
        SELECT o.change_id, coalesce(g.sku, split_part(o.target_key, '|', 1)) AS sku,
               coalesce(g.location, split_part(o.target_key, '|', 2)) AS location,
               TRY_CAST(o.old_value AS BIGINT) AS erp_on_hand, TRY_CAST(o.new_value AS BIGINT) AS wms_on_hand,
               TRY_CAST(o.new_value AS BIGINT) - TRY_CAST(o.old_value AS BIGINT) AS variance_units,
               up.unit_price, up.currency,
               abs(TRY_CAST(o.new_value AS BIGINT) - TRY_CAST(o.old_value AS BIGINT)) * up.unit_price AS variance_value,
               o.status
        FROM o LEFT JOIN g_inventory g USING (golden_id)
        LEFT JOIN unit_price up ON up.sku = coalesce(g.sku, split_part(o.target_key, '|', 1))
        WHERE o.domain = 'inventory' AND o.field = 'on_hand'""")
    fig("inventory_variance", "Top warehouses by inventory variance",
        f"Stock the ERP believes it has against what the warehouse counts (the WMS owns on-hand). Units are "
        f"absolute differences; value = units x the {s.valuation_price_list} price of one base unit "
        f"(smallest quantity break): the ERP's standard cost is not in trueup's model, the list price is "
        f"what sales would quote against stock that is not there.",
        f"""SELECT location AS warehouse, count(*) AS sku_locations, sum(abs(variance_units)) AS units,
                   sum(variance_units) AS net_units, round(sum(variance_value), 2) AS value,
                   any_value(currency) AS currency, count(*) FILTER (unit_price IS NULL) AS unpriced
            FROM inv GROUP BY ALL ORDER BY value DESC NULLS LAST, units DESC LIMIT {int(s.top_n)}""",
        "SELECT * FROM inv ORDER BY variance_value DESC NULLS LAST, sku, location")

    # -- price mismatches by price list, with revenue at risk
    con.execute("""CREATE TEMP TABLE stock AS SELECT sku, sum(on_hand) AS on_hand FROM g_inventory GROUP BY sku""")
    con.execute("""CREATE TEMP TABLE pm AS
        SELECT o.change_id, o.golden_id, p.price_list, p.sku, p.uom, p.min_qty, p.currency, o.field, o.action,
               o.old_value AS crm_value, o.new_value AS erp_value, o.status,
               CASE WHEN o.field = 'unit_price'
                    THEN abs(TRY_CAST(o.new_value AS DOUBLE) - TRY_CAST(o.old_value AS DOUBLE)) END AS gap_per_unit,
               coalesce(st.on_hand, 0) / CASE p.uom WHEN 'CS' THEN nullif(d.case_qty, 0)
                                                     WHEN 'PL' THEN nullif(d.pallet_qty, 0) ELSE 1 END AS stock_in_uom
        FROM o LEFT JOIN g_price p USING (golden_id) LEFT JOIN stock st ON st.sku = p.sku
        LEFT JOIN g_product d ON d.sku = p.sku
        WHERE o.domain = 'price'""")
    fig("price_mismatches", "Price mismatches by price list, with revenue at risk",
        "Prices the CRM quotes that differ from the ERP's (the ERP owns prices), including expired prices "
        "still live in the CRM. Revenue at risk = the price gap per unit x the units of that SKU on hand in "
        "all warehouses (in the price's unit of measure): what the stock on the shelf would be mis-billed "
        "by if sold at the CRM's price. In the list's own currency.",
        f"""SELECT coalesce(price_list, '(unknown)') AS price_list, any_value(currency) AS currency,
                   count(DISTINCT golden_id) AS mismatched_prices,
                   count(*) FILTER (field = 'unit_price') AS wrong_unit_price,
                   count(*) FILTER (action = 'deactivate') AS expired_but_live,
                   round(coalesce(sum(gap_per_unit * stock_in_uom), 0), 2) AS revenue_at_risk
            FROM pm GROUP BY ALL ORDER BY revenue_at_risk DESC, mismatched_prices DESC, price_list LIMIT {int(s.top_n)}""",
        """SELECT *, round(gap_per_unit * stock_in_uom, 2) AS revenue_at_risk FROM pm
           ORDER BY revenue_at_risk DESC NULLS LAST, price_list, sku""")

    # -- customers out of sync by field
    fig("customers_by_field", "Customers out of sync, by field",
        "Customer accounts (sold-to, ship-to) whose field in a system disagrees with the golden record; "
        "'(missing record)' is an account a system does not have at all. Emails, phones and tax ids are "
        "masked in the rows file.",
        """SELECT CASE WHEN action = 'create' THEN '(missing record)' ELSE field END AS field,
                  target_system AS system, count(DISTINCT golden_id) AS customers
           FROM o WHERE domain = 'customer' GROUP BY ALL ORDER BY customers DESC, field, system""",
        """SELECT * EXCLUDE (outcome) FROM o WHERE domain = 'customer' ORDER BY field, target_system, target_key""")

    # -- match rate: records matched across systems / records
    # a cluster spans systems when its first and last system differ (not count(DISTINCT): 3x the
    # time over the large landscape's 24M records); the rows file holds the records not matched
    # Only the clusters in one system are kept one by one (the rows file lists them); those across
    # systems are summed per domain. The large landscape has 11M clusters: grouped at once they took
    # 3 GB, so they are grouped in shares of the golden id's hash, a domain at a time (a cluster is
    # in one domain; each share reads only its domain's file: all of them for every share took 8 s)
    con.execute("""CREATE TEMP TABLE clusters (domain VARCHAR, golden_id VARCHAR, across BOOLEAN, records BIGINT)""")
    for domain, rows in con.execute("SELECT domain, count(*) FROM m GROUP BY ALL ORDER BY 1").fetchall():
        shares = -(-rows // CLUSTER_SHARE_ROWS) or 1
        for share in range(shares):  # literals, not parameters: a parameter in the filter made it 7x slower
            con.execute(f"""INSERT INTO clusters
                SELECT domain, CASE WHEN across THEN NULL ELSE golden_id END, across, sum(records) FROM (
                    SELECT domain, golden_id, min(source_system) <> max(source_system) AS across, count(*) AS records
                    FROM m WHERE domain = {literal(domain)} AND NOT coalesce(held, FALSE) AND golden_id IS NOT NULL
                      AND hash(golden_id) % {int(shares)} = {int(share)}
                    GROUP BY ALL)
                GROUP BY ALL""")
    con.execute("""CREATE TEMP TABLE per_system AS
        SELECT domain, source_system AS system, count(*) AS records, count(*) FILTER (coalesce(held, FALSE)) AS held
        FROM m GROUP BY ALL""")
    con.execute("""CREATE TEMP TABLE match_counts AS
        SELECT domain, sum(s.records)::BIGINT AS records, coalesce(any_value(c.matched), 0)::BIGINT AS matched,
               sum(s.held)::BIGINT AS held
        FROM per_system s LEFT JOIN (SELECT domain, sum(records) FILTER (across) AS matched FROM clusters GROUP BY ALL) c
             USING (domain) GROUP BY ALL""")
    fig("match_rate", "Match rate: records matched across systems",
        "Share of each domain's records that trueup matched to the same record in at least one other "
        "system. Records held in quarantine are not matched. The rows file lists the records not matched.",
        """SELECT domain, records, matched, held, round(matched / records, 4) AS match_rate
           FROM match_counts ORDER BY domain""",
        """WITH listed AS (
               SELECT domain, source_system, source_key, golden_id, coalesce(held, FALSE) AS held FROM m
               WHERE coalesce(held, FALSE) OR golden_id IS NULL
                  OR (domain, golden_id) IN (SELECT (domain, golden_id) FROM clusters WHERE NOT across)),
           -- the systems of the few clusters listed (a held record's cluster may span several)
           systems AS (
               SELECT domain, golden_id, count(DISTINCT source_system) AS systems_in_cluster FROM m
               WHERE NOT coalesce(held, FALSE) AND (domain, golden_id) IN (SELECT (domain, golden_id) FROM listed)
               GROUP BY ALL)
           SELECT l.*, coalesce(s.systems_in_cluster, 0) AS systems_in_cluster, FALSE AS matched
           FROM listed l LEFT JOIN systems s USING (domain, golden_id)
           ORDER BY l.domain, l.source_system, l.source_key""")

    # -- agreement per domain and system: records that equal the golden record
    con.execute("""CREATE TEMP TABLE agree AS
        WITH r AS (SELECT domain, system, records - held AS records FROM per_system),
             d AS (SELECT domain, target_system AS system,
                          count(DISTINCT target_key) FILTER (action <> 'create') AS out_of_sync,
                          count(DISTINCT target_key) FILTER (action = 'create') AS missing
                   FROM o GROUP BY ALL)
        SELECT domain, system, coalesce(r.records, 0) AS records, coalesce(d.out_of_sync, 0) AS out_of_sync,
               coalesce(d.missing, 0) AS missing,
               round(1 - (coalesce(d.out_of_sync, 0) + coalesce(d.missing, 0))
                         / nullif(coalesce(r.records, 0) + coalesce(d.missing, 0), 0), 4) AS agreement
        FROM r FULL JOIN d USING (domain, system)""")
    fig("agreement", "Records in agreement, per domain and system",
        "Share of a system's records (plus the ones it is missing) that equal the golden record. The "
        "system of record for a field agrees with itself, so a low share means the others drift from it.",
        "SELECT * FROM agree ORDER BY domain, system", "SELECT * FROM agree ORDER BY domain, system")

    # -- quarantined rows
    fig("quarantined", "Quarantined rows",
        "Rows trueup could not read (unknown code, bad value, no key, duplicate key): held out of "
        "reconciliation and never written back until the source fixes them.",
        """SELECT entity AS domain, system, coalesce(problem, '') AS problem, count(DISTINCT source_key) AS rows
           FROM q GROUP BY ALL ORDER BY rows DESC, domain, system""",
        "SELECT * FROM q ORDER BY entity, system, source_key")

    # -- corrections applied, failed, pending approval
    fig("corrections", "Corrections applied, failed and pending approval",
        "What trueup did with each discrepancy this run. Failed changes are retried next run or kept as "
        "dead letters; every one is in the ledger.",
        """SELECT domain, target_system AS system, outcome, count(*) AS changes
           FROM o GROUP BY ALL ORDER BY domain, system, outcome""",
        "SELECT * FROM o ORDER BY domain, target_system, outcome, target_key")

    # -- data age per source
    sla = pa.table({"system": pa.array(list(facts.freshness_hours), pa.string()),
                    "max_age_hours": pa.array(list(facts.freshness_hours.values()), pa.float64())})
    con.register("sla", sla)
    fig("data_age", "Data age per source",
        "How old each system's data was when this run read it: a file drop's export time, or the moment "
        "trueup read a live system. A source older than its SLA fails the freshness check.",
        """SELECT x.system, x.entity AS domain, strftime(x.data_as_of, '%Y-%m-%d %H:%M UTC') AS data_as_of,
                  round(date_diff('second', x.data_as_of, x.extracted_at) / 3600.0, 2) AS age_hours,
                  sla.max_age_hours,
                  coalesce(date_diff('second', x.data_as_of, x.extracted_at) / 3600.0 > sla.max_age_hours, FALSE) AS stale
           FROM x LEFT JOIN sla USING (system) ORDER BY system, domain""",
        "SELECT x.*, sla.max_age_hours FROM x LEFT JOIN sla USING (system) ORDER BY system, entity")

    # -- how long discrepancies stay open
    fig("open_discrepancies", "How long discrepancies stay open",
        "Discrepancies still seen this run, by how many runs in a row they have been seen (first seen -> "
        "now). A discrepancy trueup corrects is closed by the next full run that no longer sees it; the "
        "rows file also lists the ones this run closed, with how many days they were open.",
        """SELECT domain, CASE WHEN runs_seen >= 4 THEN '4+ runs' ELSE runs_seen || ' run' || CASE WHEN runs_seen > 1 THEN 's' ELSE '' END END AS open_for,
                  count(*) AS discrepancies,
                  round(max(date_diff('second', first_seen_at, getvariable('run_at')) / 86400.0), 2) AS oldest_days
           FROM h WHERE closed_at IS NULL AND last_seen_run = $1 GROUP BY ALL ORDER BY domain, open_for""",
        """SELECT *, round(date_diff('second', first_seen_at, coalesce(closed_at, getvariable('run_at'))) / 86400.0, 3)
                     AS open_days
           FROM h WHERE last_seen_run = $1 OR closed_at >= getvariable('run_at') - INTERVAL 1 SECOND
           ORDER BY first_seen_at, discrepancy_key""",
        [facts.run_id])

    headline = _headline(con, facts, figs)
    figs["trend"] = _trend(facts, headline)
    kpis = _kpis(con, figs, headline, facts.days_to_close)
    con.close()
    return figs, headline, kpis


def _one(con, sql: str, params=None):
    return con.execute(sql, params or []).fetchone()[0]


def _headline(con, facts: RunFacts, figs: dict[str, Figure]) -> dict:
    """The few numbers a person reads first."""
    by_outcome = dict(con.execute("SELECT outcome, count(*) FROM o GROUP BY ALL").fetchall())
    agree = con.execute("""SELECT sum(records - out_of_sync), sum(records + missing) FROM agree""").fetchone()
    mr = con.execute("SELECT sum(matched), sum(records) FROM match_counts").fetchone()
    inv = con.execute("SELECT sum(abs(variance_units)), round(sum(variance_value), 2), any_value(currency) FROM inv").fetchone()
    risk = dict(con.execute("""SELECT currency, round(sum(gap_per_unit * stock_in_uom), 2) FROM pm
                               WHERE gap_per_unit IS NOT NULL GROUP BY ALL ORDER BY 1""").fetchall())
    open_ = con.execute("""SELECT count(*), max(date_diff('second', first_seen_at, getvariable('run_at')) / 86400.0)
                           FROM h WHERE closed_at IS NULL AND last_seen_run = $1""", [facts.run_id]).fetchone()
    disc = sum(figs["discrepancies"].data.column("discrepancies").to_pylist())
    stale = sorted({f"{r['system']}.{r['domain']}" for r in figs["data_age"].data.to_pylist() if r["stale"]})
    review = None if facts.review_queue is None else facts.review_queue.num_rows
    return {
        "discrepancies": disc,
        "match_rate": round(mr[0] / mr[1], 4) if mr[1] else None,
        "agreement_share": round(agree[0] / agree[1], 4) if agree[1] else None,
        "inventory_variance_units": int(inv[0] or 0),
        "inventory_variance_value": float(inv[1] or 0),
        "inventory_variance_currency": inv[2],
        "revenue_at_risk": {k: float(v) for k, v in risk.items() if k is not None},
        "open_discrepancies": int(open_[0]),
        "oldest_open_days": round(float(open_[1]), 2) if open_[1] is not None else 0.0,
        "quarantined_rows": int(_one(con, "SELECT count(DISTINCT entity || system || source_key) FROM q")),
        "applied": by_outcome.get("applied", 0),
        "already_right": by_outcome.get("already right", 0),
        "failed": by_outcome.get("failed", 0),
        "pending_approval": by_outcome.get("pending approval", 0),
        "not_written_dry_run": by_outcome.get("not written (dry run)", 0),
        "dead_letters": None if facts.dead_letters is None else facts.dead_letters.num_rows,
        "review_queue": review,
        "stale_sources": stale,
    }


def _trend(facts: RunFacts, headline: dict) -> Figure:
    """The last N runs from the runs table (their summary JSON), then this one."""
    rows = []
    prev = facts.previous_runs
    if prev is not None and prev.num_rows and "summary" in prev.column_names:
        for r in prev.to_pylist():
            if r["run_id"] == facts.run_id or not r.get("summary"):
                continue
            summ = json.loads(r["summary"])
            h = summ.get("headline") or {}
            disc = h.get("discrepancies")
            if disc is None:  # a run from before the headline existed
                disc = sum(n for d in summ.get("domains", {}).values()
                           for kinds in d.get("discrepancies", {}).values() for n in kinds.values())
            totals = summ.get("totals", {})
            failed = h.get("failed")
            if failed is None:
                failed = sum(v for k, v in totals.items() if k not in ("applied", "unchanged", "dry_run"))
            rows.append({"run_id": r["run_id"], "finished_at": r["finished_at"], "dry_run": bool(r.get("dry_run")),
                         "discrepancies": disc, "applied": h.get("applied", totals.get("applied", 0)),
                         "failed": failed, "open_discrepancies": h.get("open_discrepancies")})
    rows.sort(key=lambda r: str(r["finished_at"]))
    rows.append({"run_id": facts.run_id, "finished_at": facts.at, "dry_run": facts.dry_run,
                 "discrepancies": headline["discrepancies"], "applied": headline["applied"],
                 "failed": headline["failed"], "open_discrepancies": headline["open_discrepancies"]})
    rows = rows[-facts.settings.trend_runs:]
    for i, r in enumerate(rows, 1):
        r["run"] = i
        r["finished_at"] = str(r["finished_at"])[:19]
    table = pa.Table.from_pylist(rows, schema=pa.schema([
        ("run_id", pa.string()), ("finished_at", pa.string()), ("dry_run", pa.bool_()),
        ("discrepancies", pa.int64()), ("applied", pa.int64()), ("failed", pa.int64()),
        ("open_discrepancies", pa.int64()), ("run", pa.int64())]))
    con = connect()
    con.register("t", table)
    long = fetch(con, """UNPIVOT t ON discrepancies, applied, failed, open_discrepancies
                         INTO NAME measure VALUE value""")
    con.close()
    return Figure("trend", f"Trend over the last {len(rows)} run(s)",
                  "Discrepancies found, corrections applied and failed, and discrepancies still open, run by "
                  "run (oldest left). Getting better means the lines go down.", long, table)


def _kpis(con, figs: dict[str, Figure], headline: dict, days_to_close: dict[str, float] | None) -> pa.Table:
    """The figures kept over time, one row per (domain, system, kpi)."""
    rows = []
    for r in figs["agreement"].data.to_pylist():
        rows.append({"domain": r["domain"], "system": r["system"], "kpi": "agreement_share", "value": r["agreement"]})
        rows.append({"domain": r["domain"], "system": r["system"], "kpi": "records", "value": r["records"]})
    for r in figs["match_rate"].data.to_pylist():
        rows.append({"domain": r["domain"], "system": "", "kpi": "match_rate", "value": r["match_rate"]})
    for r in figs["discrepancies"].data.to_pylist():
        rows.append({"domain": r["domain"], "system": r["system"], "kpi": f"discrepancies_{r['severity']}",
                     "value": r["discrepancies"]})
    for r in figs["data_age"].data.to_pylist():
        rows.append({"domain": r["domain"], "system": r["system"], "kpi": "data_age_hours", "value": r["age_hours"]})
    rows.append({"domain": "inventory", "system": "", "kpi": "inventory_variance_units",
                 "value": headline["inventory_variance_units"]})
    rows.append({"domain": "inventory", "system": "", "kpi": "inventory_variance_value",
                 "value": headline["inventory_variance_value"]})
    for cur, v in headline["revenue_at_risk"].items():
        rows.append({"domain": "price", "system": "", "kpi": f"revenue_at_risk_{cur}", "value": v})
    for r in con.execute("""SELECT domain, count(*), max(date_diff('second', first_seen_at, getvariable('run_at')) / 86400.0)
                            FROM h WHERE closed_at IS NULL GROUP BY ALL""").fetchall():
        rows.append({"domain": r[0], "system": "", "kpi": "open_discrepancies", "value": r[1]})
        rows.append({"domain": r[0], "system": "", "kpi": "oldest_open_days", "value": r[2]})
    for d, v in sorted((days_to_close or {}).items()):
        rows.append({"domain": d, "system": "", "kpi": "mean_days_to_close", "value": v})
    for k in ("applied", "failed", "pending_approval", "quarantined_rows"):
        rows.append({"domain": "", "system": "", "kpi": k, "value": headline[k]})
    return pa.Table.from_pylist([{**r, "value": None if r["value"] is None else float(r["value"])} for r in rows],
                                schema=pa.schema([("domain", pa.string()), ("system", pa.string()),
                                                  ("kpi", pa.string()), ("value", pa.float64())]))
