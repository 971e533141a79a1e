"""Per-domain reconciliation assets: staged -> matched -> golden -> plan -> writeback."""


from datetime import datetime, timezone

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc

from resources.project import TrueupSettings
from resources.state import StateStoreResource
from trueup import reconcile, steps
from trueup.reconcile import CROSSWALK_SCHEMA


def _counts_md(table: pa.Table, limit: int = 20) -> str:
    """A small markdown table (counts only, never record values: no PII in metadata)."""
    cols = table.column_names
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in table.slice(0, limit).to_pylist():
        lines.append("| " + " | ".join(str(row[c]) for c in cols) + " |")
    return "\n".join(lines)


def domain_assets(domain: str, systems: list[str]) -> list[dg.AssetsDefinition]:
    extract_keys = {s: dg.AssetKey(f"{s}_{domain}_extract") for s in systems}

    @dg.asset(name=f"{domain}_staged", group_name=domain,
              ins={s: dg.AssetIn(key=k) for s, k in extract_keys.items()},
              description=f"Every system's {domain} records in the canonical model, with lineage.")
    def staged(context: dg.AssetExecutionContext, trueup: TrueupSettings, state: StateStoreResource, **raw):
        result = steps.stage(domain, raw, trueup.config, datetime.now(timezone.utc))
        state.store().record_quarantine(context.run_id, result.issues)
        trueup.warehouse.write(result.issues, "quarantine", domain)
        context.add_output_metadata({
            "rows": result.table.num_rows,
            "quarantined_values": result.issues.num_rows,
            **{f"rows_{s}": raw[s].num_rows for s in raw},
        })
        return result.table

    @dg.asset(name=f"{domain}_matched", group_name=domain, ins={"staged": dg.AssetIn(f"{domain}_staged")},
              description=f"{domain} records with stable golden ids (the crosswalk persists across runs).")
    def matched(context: dg.AssetExecutionContext, trueup: TrueupSettings, staged: pa.Table):
        wh = trueup.warehouse
        issues = wh.read("quarantine", domain)
        crosswalk = wh.read("state", "crosswalk", domain)
        out, crosswalk = reconcile.match(domain, staged, crosswalk, issues)
        wh.write(crosswalk.cast(CROSSWALK_SCHEMA), "state", "crosswalk", domain)
        held = out.filter(out.column("held")).num_rows
        context.add_output_metadata({
            "records": out.num_rows, "golden_records": len(set(out.column("golden_id").to_pylist())),
            "held_in_quarantine": held})
        return out

    @dg.asset(name=f"{domain}_golden", group_name=domain, ins={"matched": dg.AssetIn(f"{domain}_matched")},
              description=f"The golden {domain} record per golden id: system-of-record rules applied.")
    def golden(context: dg.AssetExecutionContext, trueup: TrueupSettings, matched: pa.Table):
        out = reconcile.build_golden(domain, matched, trueup.config, datetime.now(timezone.utc).date())
        context.add_output_metadata({"golden_records": out.num_rows})
        return out

    @dg.asset(name=f"{domain}_plan", group_name=domain,
              ins={"matched": dg.AssetIn(f"{domain}_matched"), "golden": dg.AssetIn(f"{domain}_golden")},
              description=f"Every correction each system needs for {domain}: field, old -> new, rule, severity.")
    def plan(context: dg.AssetExecutionContext, trueup: TrueupSettings, matched: pa.Table, golden: pa.Table):
        out = reconcile.build_plan(domain, matched, golden, trueup.config)
        counts = steps.discrepancy_counts(out)
        context.add_output_metadata({
            "changes": out.num_rows,
            "by_system_field": dg.MetadataValue.md(_counts_md(counts)),
        })
        return out

    return [staged, matched, golden, plan]


def writeback_targets(domain: str, config) -> list[str]:
    """The systems the rules may correct in this domain."""
    rules = config.rules.domains[domain]
    targets = {t for r in rules.fields.values() for t in r.targets} | set(rules.create_in)
    if rules.xref:
        targets.add(rules.xref.system)
    return sorted(targets)


def writeback_asset(domain: str, system: str) -> dg.AssetsDefinition:
    @dg.asset(name=f"{domain}_{system}_writeback", group_name=domain,
              ins={"plan": dg.AssetIn(f"{domain}_plan")}, required_resource_keys={system, "trueup", "state"},
              description=f"The {domain} corrections for the {system.upper()} applied, one outcome per "
                          f"change, every one in the ledger.")
    def writeback(context: dg.AssetExecutionContext, plan: pa.Table):
        trueup: TrueupSettings = context.resources.trueup
        state: StateStoreResource = context.resources.state
        cfg = trueup.config
        rows = plan.filter(pc.equal(plan.column("target_system"), system))
        resource = getattr(context.resources, system)
        out = steps.writeback(domain, rows, {system: resource.client(cfg)}, cfg, state.store(),
                              context.run_id, dry_run=trueup.is_dry_run(context))
        if out.num_rows and not trueup.is_dry_run(context):
            resource.after_writeback()
        by_status = dict(zip(*out.group_by("status").aggregate([("change_id", "count")]).to_pydict().values()))
        context.add_output_metadata({"changes": out.num_rows, **{f"changes_{k}": v for k, v in by_status.items()}})
        failed = out.filter(pc.equal(out.column("status"), "retryable_error"))
        if failed.num_rows and failed.num_rows == out.num_rows:
            # nothing got through: the system is down; fail this step loudly, the others go on
            raise dg.Failure(
                description=f"write-back to {system} ({domain}) failed for all {failed.num_rows} changes: "
                            f"{failed.column('error')[0].as_py()}",
                metadata={"changes": out.num_rows})
        return out

    return writeback
