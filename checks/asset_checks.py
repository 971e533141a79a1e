"""Dagster asset checks for the contracts, schema drift and the plan gate.

The checks run inside the steps whose data they judge (a contract decides what is quarantined
before matching; a gate decides what may be written), and are reported as asset checks on those
assets. Metadata carries expectation names, counts and keys, never record values.
"""

import json

import dagster as dg

from checks.contracts import ContractResult
from checks.gates import GateResult
from checks.schema import SchemaResult
from trueup.pii import scrub

SAMPLE = 20


def schema_spec(asset: str) -> dg.AssetCheckSpec:
    return dg.AssetCheckSpec("schema_matches_mapping", asset=asset,
                             description="The extract has every mapped column, with the types it had.")


def schema_result(r: SchemaResult) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        check_name="schema_matches_mapping", passed=r.passed and not r.extra,
        severity=dg.AssetCheckSeverity.ERROR if not r.passed else dg.AssetCheckSeverity.WARN,
        description=r.describe(),
        metadata={"missing_columns": ", ".join(r.missing) or "-", "extra_columns": ", ".join(r.extra) or "-",
                  "changed_types": json.dumps(r.changed) if r.changed else "-"})


def contract_spec(asset: str, system: str) -> dg.AssetCheckSpec:
    return dg.AssetCheckSpec(f"contract_{system}", asset=asset,
                             description=f"The {system.upper()}'s rows meet their data contract (Great Expectations).")


def contract_result(r: ContractResult, quarantined: int) -> dg.AssetCheckResult:
    failed = r.failed
    lines = ["| expectation | field | severity | unexpected | sample keys |", "|---|---|---|---:|---|"]
    for e in failed:
        lines.append(f"| {e.id} | {e.field or '-'} | {e.severity} | {e.unexpected_count} | "
                     f"{', '.join(e.keys[:5]) or (scrub(e.error) or '-')} |")
    return dg.AssetCheckResult(
        check_name=f"contract_{r.system}", passed=not failed,
        severity=dg.AssetCheckSeverity.ERROR if not r.passed else dg.AssetCheckSeverity.WARN,
        description=(f"{r.system}.{r.entity}: " + ("; ".join(
            f"{e.id} on {e.field or 'key'}: {e.unexpected_count} row(s)" for e in failed) or "contract met")),
        metadata={"rows": r.rows, "expectations": len(r.results), "failed_expectations": len(failed),
                  "quarantined_rows": quarantined,
                  "failures": dg.MetadataValue.md("\n".join(lines)) if failed else "none",
                  "failing_keys_sample": json.dumps({e.id: e.keys[:SAMPLE] for e in failed})})


def gate_spec(asset: str, system: str) -> dg.AssetCheckSpec:
    return dg.AssetCheckSpec(f"gate_{system}", asset=asset,
                             description=f"The plan is safe to write to the {system.upper()}; if not, nothing is written to it.")


def gate_result(g: GateResult) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        check_name=f"gate_{g.system}", passed=g.passed, severity=dg.AssetCheckSeverity.ERROR,
        description=(f"nothing will be written to {g.system}: {g.reason()}" if not g.passed else
                     f"{g.changed_records} of {g.records} records change ({g.share:.1%})"
                     + (" (share limit overridden for this run)" if g.overridden else "")),
        metadata={"changes": g.changes, "records": g.records, "changed_records": g.changed_records,
                  "share": round(g.share, 4), "max_share": g.max_share, "overridden": g.overridden,
                  "failures": json.dumps({k: v[:SAMPLE] for k, v in g.failures.items()})})
