"""The gate before write-back: a plan that would harm a system of record does not reach it.

Per target system, a plan fails the gate when it would
- set a price to zero or below,
- blank a field the system requires (or create a record without one),
- create a record under a key the system already has, or two records under one key,
- change more than the configured share of the system's records (the circuit breaker),
  unless the run explicitly allows it (run tag `trueup/allow_large_plan` = the system, or `all`).
A failed gate means nothing at all is written to that system in that run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from trueup.duck import connect, fetch


@dataclass
class GateResult:
    system: str
    changes: int
    records: int  # the system's records of this domain
    changed_records: int
    share: float
    max_share: float
    failures: dict[str, list[str]] = field(default_factory=dict)  # reason -> target keys
    overridden: bool = False

    @property
    def passed(self) -> bool:
        return not self.failures

    def reason(self) -> str:
        return "; ".join(f"{why} ({len(keys)}: {', '.join(keys[:5])}{'...' if len(keys) > 5 else ''})"
                         if keys else why for why, keys in self.failures.items())


def evaluate(domain: str, plan: pa.Table, staged: pa.Table, *, required: dict[str, list[str]],
             max_share: float, min_records: int = 20, allow_large: set[str] | None = None,
             record_counts: dict[str, int] | None = None) -> dict[str, GateResult]:
    """Gate verdict per target system of the plan. `staged` gives each system's records and keys
    (at least those under the plan's target keys when `record_counts` gives each system's size);
    `required` the canonical fields each system requires."""
    allow_large = allow_large or set()
    con = connect()
    con.register("plan", plan)
    con.register("staged", staged.select(["source_system", "source_key"]))
    results: dict[str, GateResult] = {}
    for system in sorted(set(plan.column("target_system").to_pylist())):
        rows = plan.filter(pc.equal(plan.column("target_system"), system))
        con.register("p", rows)
        counts = fetch(con, """SELECT (SELECT count(*) FROM staged WHERE source_system = $1) AS records,
                                      (SELECT count(DISTINCT target_key) FROM p) AS changed""", [system]).to_pylist()[0]
        if record_counts is not None:
            counts["records"] = record_counts.get(system, 0)
        share = counts["changed"] / counts["records"] if counts["records"] else 1.0
        g = GateResult(system, rows.num_rows, counts["records"], counts["changed"], share, max_share)
        failures: dict[str, list[str]] = {}

        def add(why: str, sql: str, params: list | None = None) -> None:
            keys = fetch(con, sql, params).column(0).to_pylist()
            if keys:
                failures[why] = sorted(set(keys))

        if domain == "price":
            add("price at or below zero", "SELECT target_key FROM p WHERE field = 'unit_price' "
                "AND TRY_CAST(new_value AS DECIMAL(18,4)) <= 0")
        req = required.get(system, [])
        if req:
            params = [req]
            add("blanks a required field", "SELECT target_key FROM p WHERE list_contains($1, field) "
                "AND (new_value IS NULL OR trim(new_value) = '')", params)
            add("creates a record without a required field",
                "SELECT DISTINCT c.target_key FROM (SELECT DISTINCT target_key FROM p WHERE action = 'create') c, "
                "unnest($1) AS r(field) WHERE NOT EXISTS (SELECT 1 FROM p WHERE p.target_key = c.target_key "
                "AND p.action = 'create' AND p.field = r.field AND p.new_value IS NOT NULL)", params)
        add("creates a key the system already has",
            "SELECT DISTINCT target_key FROM p WHERE action = 'create' AND target_key IN "
            "(SELECT source_key FROM staged WHERE source_system = $1)", [system])
        add("creates two records under one key",
            "SELECT target_key FROM p WHERE action = 'create' GROUP BY target_key HAVING count(DISTINCT golden_id) > 1")
        if counts["records"] >= min_records and share > max_share:
            if system in allow_large or "all" in allow_large:
                g.overridden = True
            else:
                failures[f"would change {share:.0%} of {system}'s {domain} records "
                         f"(limit {max_share:.0%}; override with run tag trueup/allow_large_plan={system})"] = []
        g.failures = failures
        results[system] = g
    con.close()
    return results
