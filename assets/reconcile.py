"""Per-domain reconciliation assets: staged -> matched -> golden -> plan -> writeback (per system)."""

import json
from datetime import datetime, timezone

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc

from checks.asset_checks import contract_result, contract_spec, gate_result, gate_spec
from resources.project import BUCKET_META, COLUMNS_META, HANDOFF, TrueupSettings
from resources.state import StateStoreResource
from trueup import matching, reconcile, steps
from trueup.crosswalk import CrosswalkStore
from trueup.pii import scrub

GATE_KEY = b"trueup.gate"  # plan metadata: {system: reason} for systems nothing may be written to


def _counts_md(table: pa.Table, limit: int = 20) -> str:
    """A small markdown table (counts only, never record values: no PII in metadata)."""
    cols = table.column_names
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in table.slice(0, limit).to_pylist():
        lines.append("| " + " | ".join(str(row[c]) for c in cols) + " |")
    return "\n".join(lines)


def _count(values: list) -> dict:
    return {v: values.count(v) for v in sorted(set(values))}


def writeback_targets(domain: str, config) -> list[str]:
    """The systems the rules may correct in this domain."""
    rules = config.rules.domains[domain]
    targets = {t for r in rules.fields.values() for t in r.targets} | set(rules.create_in)
    if rules.xref:
        targets.add(rules.xref.system)
    return sorted(targets)


def domain_assets(domain: str, systems: list[str], config) -> list[dg.AssetsDefinition]:
    extract_keys = {s: dg.AssetKey(f"{s}_{domain}_extract") for s in systems}
    buckets = config.settings.scale.buckets.get(domain, 1)
    staged_name = f"{domain}_staged"
    # prices and stock are checked against the item master
    reference_ins = {"item_master": dg.AssetIn("product_staged")} if domain in ("price", "inventory") else {}

    @dg.asset(name=staged_name, group_name=domain, metadata=HANDOFF,
              ins={**{s: dg.AssetIn(key=k) for s, k in extract_keys.items()}, **reference_ins},
              check_specs=[contract_spec(staged_name, s) for s in systems],
              description=f"Every system's {domain} records in the canonical model, with lineage; rows "
                          f"failing their contract are quarantined (held out of reconciliation).")
    def staged(context: dg.AssetExecutionContext, trueup: TrueupSettings, state: StateStoreResource, **inputs):
        from checks.contracts import Severities, validate

        item_master = inputs.pop("item_master", None)
        raw = inputs
        unreadable = {s: (t.schema.metadata or {}).get(b"trueup.unreadable", b"").decode()
                      for s, t in raw.items() if (t.schema.metadata or {}).get(b"trueup.unreadable")}
        result = steps.stage(domain, raw, trueup.config, datetime.now(timezone.utc), unreadable=unreadable)
        reference = _reference(domain, result.table, item_master, trueup.config)
        severities = Severities(trueup.contracts_path)
        issues, checks = [result.issues], []
        for s in systems:
            rows = result.rows_of(s)
            contract = validate(s, domain, rows, trueup.config, severities, reference)
            found = contract.issues(rows)
            issues.append(found)
            checks.append((contract, found))
        all_issues = pa.concat_tables(issues)
        state.store().record_quarantine(context.run_id, all_issues)
        trueup.warehouse.write(all_issues, "quarantine", domain)
        # records their system deleted: never reconciled as alive, their counterparts deactivated
        trueup.warehouse.write(result.tombstones, "state", "tombstones", domain)
        held_keys = pc.count_distinct(all_issues.filter(pc.equal(all_issues.column("severity"), "error"))
                                      .column("source_key")).as_py() if all_issues.num_rows else 0
        yield dg.Output(result.table, metadata={
            "rows": result.table.num_rows, "quarantined_rows": held_keys,
            **{f"rows_{s}": raw[s].num_rows for s in raw}, "tombstones": result.tombstones.num_rows,
            **({"unreadable": json.dumps(unreadable)} if unreadable else {})})
        for contract, found in checks:
            errors = found.filter(pc.equal(found.column("severity"), "error")) if found.num_rows else found
            yield contract_result(contract, len(set(errors.column("source_key").to_pylist())))

    @dg.asset(name=f"{domain}_matched", group_name=domain, ins={"staged": dg.AssetIn(staged_name)},
              metadata=HANDOFF,
              description=f"{domain} records with stable golden ids (the crosswalk persists across runs).")
    def matched(context: dg.AssetExecutionContext, trueup: TrueupSettings, staged: pa.Table):
        wh = trueup.warehouse
        issues = wh.read("quarantine", domain)
        xw = CrosswalkStore(wh, domain)
        crosswalk = xw.read()
        # records without a usable cross-reference: probabilistic matching, decisions persisted
        res = matching.match_domain(domain, staged, trueup.config, previous=wh.read("state", "match_links", domain),
                                    decisions=wh.read("state", "review_decisions", domain))
        links = apart = None
        match_md = {}
        if res is not None:
            wh.write(res.links, "state", "match_links", domain)
            wh.write(res.review_queue(), "review", domain)
            wh.write(res.exceptions, "match_exceptions", domain)
            links, apart = res.link_keys(), res.held()
            status = res.links.column("status").to_pylist()
            match_md = {"match_comparisons": res.comparisons, "match_reused": res.reused,
                        **{f"match_{s}": status.count(s) for s in ("accepted", "confirmed", "review", "unmatched")},
                        **{f"exceptions_{k}": v for k, v in
                           _count(res.exceptions.column("kind").to_pylist()).items()}}
        out, crosswalk = reconcile.match(domain, staged, crosswalk, issues, links=links, apart=apart)
        if buckets > 1:
            out = reconcile.with_buckets(out, buckets)
        xw.replace(crosswalk)
        context.add_output_metadata({
            "records": out.num_rows, "golden_records": reconcile.golden_count(out),
            "held_in_quarantine": out.filter(out.column("held")).num_rows, **match_md})
        return out

    plan_name = f"{domain}_plan"
    if buckets > 1:
        parts = bucket_assets(domain, buckets)
        golden_ins = {f"b{i}": dg.AssetIn(f"{domain}_golden_b{i}") for i in range(buckets)}
        plan_ins = {"matched": dg.AssetIn(f"{domain}_matched", metadata={COLUMNS_META: GATE_COLUMNS}),
                    **{f"b{i}": dg.AssetIn(f"{domain}_plan_b{i}") for i in range(buckets)}}
    else:
        parts = []
        golden_ins = {"matched": dg.AssetIn(f"{domain}_matched")}
        plan_ins = {"matched": dg.AssetIn(f"{domain}_matched"), "golden": dg.AssetIn(f"{domain}_golden")}

    @dg.asset(name=f"{domain}_golden", group_name=domain, ins=golden_ins,
              description=f"The golden {domain} record per golden id: system-of-record rules applied"
                          + (f" (the union of its {buckets} buckets)." if buckets > 1 else "."))
    def golden(context: dg.AssetExecutionContext, trueup: TrueupSettings, **inputs: pa.Table):
        if buckets > 1:
            out = pa.concat_tables([inputs[f"b{i}"] for i in range(buckets)])
        else:
            out = reconcile.build_golden(domain, inputs["matched"], trueup.config, datetime.now(timezone.utc).date())
        context.add_output_metadata({"golden_records": out.num_rows})
        return out

    @dg.asset(name=plan_name, group_name=domain, ins=plan_ins,
              check_specs=[gate_spec(plan_name, s) for s in writeback_targets(domain, config)],
              description=f"Every correction each system needs for {domain}: field, old -> new, rule, "
                          f"severity; gated per system before anything is written.")
    def plan(context: dg.AssetExecutionContext, trueup: TrueupSettings, matched: pa.Table, **inputs: pa.Table):
        cfg = trueup.config
        if buckets > 1:
            out = pa.concat_tables([inputs[f"b{i}"] for i in range(buckets)]).sort_by(
                [("target_system", "ascending"), ("target_key", "ascending"), ("field", "ascending")])
        else:
            out = reconcile.build_plan(domain, matched, inputs["golden"], cfg,
                                       trueup.warehouse.read("state", "tombstones", domain))
        out, blocked, checks = gate_plan(context, domain, out, matched, cfg)
        counts = steps.discrepancy_counts(out)
        yield dg.Output(out, metadata={"changes": out.num_rows,
                                       "blocked_systems": ", ".join(blocked) or "none",
                                       "by_system_field": dg.MetadataValue.md(_counts_md(counts))})
        yield from checks

    return [staged, matched, *parts, golden, plan]


GATE_COLUMNS = ["source_system", "source_key"]  # what the gate reads of the matched records


def gate_plan(context: dg.AssetExecutionContext, domain: str, plan: pa.Table, records: pa.Table, cfg,
              record_counts: dict[str, int] | None = None) -> tuple[pa.Table, dict[str, str], list[dg.AssetCheckResult]]:
    """The gate over a plan, per target system (`records`: every record of each system, by
    source_system and source_key, or only those under the plan's keys with `record_counts` the
    systems' sizes): the plan with the verdict in its metadata (the write-back steps enforce it),
    the blocked systems with the reason, and one check result per target."""
    from checks.gates import evaluate

    wb = cfg.settings.write_back
    allow = {s.strip() for s in context.run.tags.get("trueup/allow_large_plan", "").split(",") if s.strip()}
    required = {s: cfg.systems.entity(s, domain).required for s in cfg.systems.systems_with(domain)}
    gates = evaluate(domain, plan, records, required=required, max_share=wb.max_change_share,
                     min_records=wb.min_records, allow_large=allow, record_counts=record_counts)
    blocked = {s: g.reason() for s, g in gates.items() if not g.passed}
    checks = [gate_result(gates[s]) if s in gates else
              dg.AssetCheckResult(check_name=f"gate_{s}", passed=True, description="no changes planned")
              for s in writeback_targets(domain, cfg)]
    return plan.replace_schema_metadata({GATE_KEY: json.dumps(blocked).encode()}), blocked, checks


def bucket_assets(domain: str, n: int) -> list[dg.AssetsDefinition]:
    """Golden records and plan per bucket of golden ids: independent steps, each reading only its
    bucket of the matched records (and, for a create's parent, every record's key)."""
    out = []
    for i in range(n):
        @dg.asset(name=f"{domain}_golden_b{i}", group_name=domain,
                  ins={"matched": dg.AssetIn(f"{domain}_matched", metadata={BUCKET_META: i})},
                  description=f"Golden {domain} records of bucket {i} of {n}.")
        def golden_bucket(context: dg.AssetExecutionContext, trueup: TrueupSettings, matched: pa.Table):
            g = reconcile.build_golden(domain, matched, trueup.config, datetime.now(timezone.utc).date())
            context.add_output_metadata({"golden_records": g.num_rows, "records": matched.num_rows})
            return g

        @dg.asset(name=f"{domain}_plan_b{i}", group_name=domain,
                  ins={"matched": dg.AssetIn(f"{domain}_matched", metadata={BUCKET_META: i}),
                       "golden": dg.AssetIn(f"{domain}_golden_b{i}")},
                  description=f"The {domain} corrections of bucket {i} of {n} (gated together in {domain}_plan).")
        def plan_bucket(context: dg.AssetExecutionContext, trueup: TrueupSettings, matched: pa.Table,
                        golden: pa.Table):
            wh = trueup.warehouse
            # every record's key, three columns of the matched file: a create's parent may be elsewhere
            keys = wh.read(f"{domain}_matched", columns=["golden_id", "source_system", "source_key"])
            p = reconcile.build_plan(domain, matched, golden, trueup.config,
                                     wh.read("state", "tombstones", domain), keys=keys)
            context.add_output_metadata({"changes": p.num_rows})
            return p

        out += [golden_bucket, plan_bucket]
    return out


def _reference(domain: str, staged: pa.Table, item_master: pa.Table | None, config) -> dict[str, list[str]]:
    """Keys other records must point at: the item master's SKUs, each system's sold-tos."""
    ref: dict[str, list[str]] = {}
    if item_master is not None:
        owner = config.rules.domains["product"].fields["status"].owner
        rows = item_master.filter(pc.equal(item_master.column("source_system"), owner))
        ref["item_master"] = pc.unique(rows.column("sku").drop_null()).to_pylist()
    if domain == "customer":
        sold = staged.filter(pc.equal(staged.column("role"), "sold_to"))
        for s in pc.unique(sold.column("source_system")).to_pylist():
            ref[f"{s}.sold_to"] = sold.filter(pc.equal(sold.column("source_system"), s)).column("source_key").to_pylist()
    return ref


def writeback_asset(domain: str, system: str) -> dg.AssetsDefinition:
    @dg.asset(name=f"{domain}_{system}_writeback", group_name=domain,
              ins={"plan": dg.AssetIn(f"{domain}_plan")}, required_resource_keys={system, "trueup", "state"},
              description=f"The {domain} corrections for the {system.upper()} applied, one outcome per "
                          f"change, every one in the ledger. Nothing is written if the plan's gate failed.")
    def writeback(context: dg.AssetExecutionContext, plan: pa.Table):
        trueup: TrueupSettings = context.resources.trueup
        state: StateStoreResource = context.resources.state
        cfg = trueup.config
        blocked = json.loads((plan.schema.metadata or {}).get(GATE_KEY, b"{}"))
        resource = getattr(context.resources, system)
        dry_run = trueup.is_dry_run(context)
        # the whole domain plan: a change may wait for another system's create (approvals)
        out = steps.writeback(domain, plan, {system: resource.client(cfg)}, cfg, state.store(),
                              context.run_id, dry_run=dry_run, systems=[system],
                              blocked={system: f"gate failed: {blocked[system]}"} if system in blocked else None)
        if out.num_rows and not dry_run and system not in blocked:
            resource.after_writeback()
        report_outcomes(context, domain, system, out, {"blocked": blocked[system]} if system in blocked else {})
        return out

    return writeback


def report_outcomes(context: dg.AssetExecutionContext, domain: str, system: str, out: pa.Table,
                    extra: dict | None = None) -> None:
    """Outcome counts as metadata; a step whose every sent change failed retryably fails loudly
    (the system is down) while the other systems' steps go on. Changes held for approval or
    declined were never sent, so they do not count either way."""
    by_status = dict(zip(*out.group_by("status").aggregate([("change_id", "count")]).to_pydict().values()))
    context.add_output_metadata({"changes": out.num_rows, **{f"changes_{k}": v for k, v in by_status.items()},
                                 **(extra or {})})
    failed = out.filter(pc.equal(out.column("status"), "retryable_error"))
    sent = out.filter(pc.invert(pc.is_in(out.column("status"), pa.array(["pending_approval", "declined"]))))
    if failed.num_rows and failed.num_rows == sent.num_rows:
        raise dg.Failure(
            description=f"write-back to {system} ({domain}) failed for all {failed.num_rows} changes: "
                        f"{scrub(failed.column('error')[0].as_py())}",
            metadata={"changes": out.num_rows})
