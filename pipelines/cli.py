"""`trueup`: run the nightly reconciliation on the demo landscape (or your systems), build the
demo, and score a run against the demo's ground truth.

    trueup run                 build the demo if absent, run the nightly job, print the summary
    trueup run --dry-run       plan and report, write nothing
    trueup sync [--dry-run]    incremental: only the records changed since the watermarks
    trueup backfill --from 2026-11-01 --to 2026-11-03   re-reconcile what changed on those days (one run)
    trueup demo build [--scale 10]     the ERP (and a `kind: sql` WMS) go to TRUEUP_ERP_URL /
                               TRUEUP_WMS_URL when set, e.g. with TRUEUP_CONFIG_DIR=config/profiles/servers
    trueup score [--run RUN_ID]
    trueup review list [--domain customer]
    trueup review confirm|reject DOMAIN SYSTEM KEY ANCHOR_KEY [--by NAME]
    trueup approvals [list] [--all]                  what waits for a decision: what, why, since when
    trueup approvals approve ID... [--by NAME] [--note TEXT]
    trueup approvals reject ID... --note TEXT        (ID: an approval id or a unique prefix; --all-pending)
    trueup replay                                    re-plan the dead letters and apply them
    trueup sql "select count(*) from customer_matched"   query the warehouse's tables by name
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def _home(args) -> Path:
    return Path(args.home or os.environ.get("TRUEUP_HOME", ".trueup")).resolve()


def _backends():
    """Where the demo's ERP and WMS go: the config says whether the WMS is SQL, the environment
    gives the URLs (never printed)."""
    from sandbox.generator import backends_for
    from trueup.config import Config

    repo_config = Path(__file__).resolve().parent.parent / "config"
    return backends_for(Config.load(os.environ.get("TRUEUP_CONFIG_DIR", repo_config)))


def _ensure_demo(home: Path, scale: float, rebuild: bool, seed: int = 7) -> None:
    from sandbox.generator import build

    demo = home / "demo"
    meta = demo / "landscape.json"
    current = json.loads(meta.read_text()) if meta.exists() else None
    if rebuild or current is None or float(current.get("scale", 1)) != scale:
        for stale in ("warehouse", "state.db"):  # trueup's memory of another landscape
            p = home / stale
            if p.is_dir():
                import shutil
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
        t = time.perf_counter()
        info = build(demo, scale=scale, seed=seed, backends=_backends())
        print(f"built the demo landscape (scale {scale}; ERP in {info['backends']['erp']}, WMS in "
              f"{info['backends']['wms']}) in {time.perf_counter() - t:.1f}s: "
              f"{info['discrepancies']} injected discrepancies -> {demo}")


def _dagster_home(home: Path) -> None:
    """Dagster's instance under the trueup home unless DAGSTER_HOME says otherwise."""
    os.environ.setdefault("DAGSTER_HOME", str(home / "dagster"))
    Path(os.environ["DAGSTER_HOME"]).mkdir(parents=True, exist_ok=True)


def _execute(home: Path, job_name: str, tags: dict, partition_key: str | None = None):
    import dagster as dg

    from pipelines.definitions import build_definitions

    _dagster_home(home)
    job = build_definitions(home=home).resolve_job_def(job_name)
    t = time.perf_counter()
    result = job.execute_in_process(instance=dg.DagsterInstance.get(), tags=tags, partition_key=partition_key,
                                    raise_on_error=False)
    return result, time.perf_counter() - t


def _print_failures(result) -> None:
    for ev in result.all_events:
        if ev.is_step_failure:
            print(f"FAILED step {ev.step_key}: {ev.event_specific_data.error.message.strip()[:500]}", file=sys.stderr)


def cmd_run(args) -> int:
    """The nightly job, through `execute_job` rather than `execute_in_process`: the latter keeps
    every step's output in memory until the run ends (for `output_for_node`), which at the large
    size held every domain's tables at once and took the run past 20 GB. Here each output lives
    only in the warehouse, and the report is read back from there."""
    import dagster as dg

    from trueup.warehouse import Warehouse

    home = _home(args)
    if not os.environ.get("TRUEUP_ERP_URL"):  # the demo, unless real systems are configured
        _ensure_demo(home, args.scale, args.rebuild)
    tags = {"trueup/dry_run": "true"} if args.dry_run else {}
    _dagster_home(home)
    job = dg.build_reconstructable_job("pipelines.definitions", "nightly_job_for", reconstructable_kwargs={
        "home": str(home), "executor_name": os.environ.get("TRUEUP_EXECUTOR", "in_process"),
        "config_dir": os.environ.get("TRUEUP_CONFIG_DIR")})
    t = time.perf_counter()
    with dg.execute_job(job, instance=dg.DagsterInstance.get(), tags=tags, raise_on_error=False) as result:
        elapsed = time.perf_counter() - t
        summary = None
        # the report as this run's report step wrote it (the warehouse's JSON; a report left by an
        # earlier run is not this run's)
        report = Warehouse(home / "warehouse").path("reconciliation_report").with_suffix(".json")
        if report.exists() and any(ev.is_step_success and ev.step_key == "reconciliation_report"
                                   for ev in result.all_events):
            summary = json.loads(report.read_text())
        if summary:
            from trueup.report import render_markdown

            print(render_markdown(summary))
            print(f"report: {summary['report_path']}")
            if summary.get("markdown_path"):
                print(f"markdown: {summary['markdown_path']}")
        _print_failures(result)
        print(f"run {result.run_id} {'succeeded' if result.success else 'FAILED'} in {elapsed:.1f}s")
        return 0 if result.success else 1


def _sync_summary(result, elapsed: float) -> int:
    import pyarrow as pa

    _print_failures(result)
    counts: dict[tuple, int] = {}
    for node in result.job_def.graph.nodes:
        name = node.name
        if not name.endswith("_sync_writeback"):
            continue
        try:
            out = result.output_for_node(name)
        except Exception:  # the step failed or did not run
            continue
        if isinstance(out, pa.Table):
            for row in out.group_by(["target_system", "status"]).aggregate([("change_id", "count")]).to_pylist():
                key = (name.removesuffix("_sync_writeback"), row["status"])
                counts[key] = counts.get(key, 0) + row["change_id_count"]
    for (what, status), n in sorted(counts.items()):
        print(f"{what:<20} {status:<16} {n}")
    print(f"run {result.run_id} {'succeeded' if result.success else 'FAILED'} in {elapsed:.1f}s")
    return 0 if result.success else 1


def cmd_sync(args) -> int:
    """The incremental sync now: what changed since the watermarks (today's partition)."""
    from datetime import datetime, timezone

    from assets.sync import WINDOW_TAG

    tags = {WINDOW_TAG: "watermark", **({"trueup/dry_run": "true"} if args.dry_run else {})}
    day = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    return _sync_summary(*_execute(_home(args), "incremental_sync", tags, partition_key=day))


def cmd_backfill(args) -> int:
    """Re-reconcile the records changed on the days FROM..TO (inclusive), in one run."""
    from datetime import date

    start, end = date.fromisoformat(args.start), date.fromisoformat(args.end)
    if end < start:
        print("--to is before --from", file=sys.stderr)
        return 2
    tags = {"dagster/asset_partition_range_start": start.isoformat(),
            "dagster/asset_partition_range_end": end.isoformat(),
            **({"trueup/dry_run": "true"} if args.dry_run else {})}
    return _sync_summary(*_execute(_home(args), "incremental_sync", tags))


def cmd_demo_build(args) -> int:
    home = _home(args)
    if args.if_absent and (home / "demo" / "landscape.json").exists():
        return 0
    _ensure_demo(home, args.scale, rebuild=True, seed=args.seed)
    return 0


def cmd_demo_day(args) -> int:
    from sandbox.changes import simulate_day

    gt = simulate_day(_home(args) / "demo", share=args.share, seed=args.seed)
    print(f"{len(gt)} discrepancies caused by the day's edits:")
    print(gt.groupby(["kind", "system"]).size().to_string())
    return 0


def _held(home: Path):
    """The latest run's write-back rows waiting for approval (the approvals and what refers to them)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    parts = [pq.read_table(p) for p in sorted((home / "warehouse").glob("*_writeback.parquet"))]
    if not parts:
        return None
    rows = pa.concat_tables(parts, promote_options="permissive")
    rows = rows.filter(pc.equal(rows.column("status"), "pending_approval"))
    return rows.rename_columns(["system" if c == "target_system" else c for c in rows.column_names])


def cmd_score(args) -> int:
    from sandbox.score import score
    from trueup.state import StateStore

    home = _home(args)
    store = StateStore(os.environ.get("TRUEUP_STATE_URL", f"sqlite:///{home / 'state.db'}"))
    run_id = args.run
    if not run_id:
        runs = store.runs()
        if not runs.num_rows:
            print("no run recorded yet", file=sys.stderr)
            return 1
        run_id = runs.column("run_id")[-1].as_py()
    s = score(home / "demo" / "ground_truth.csv", store.ledger(run_id), pending=_held(home))
    print(json.dumps({"run_id": run_id, "expected": s.expected, "corrected": s.corrected, "changes": s.changes,
                      "recall": round(s.recall, 4), "precision": round(s.precision, 4),
                      "pending_approval": s.pending, "found_recall": round(s.found_recall, 4),
                      "found_precision": round(s.found_precision, 4)}, indent=2))
    return 0


def cmd_review(args) -> int:
    """The match review queue: list it, or record a person's decision (used from the next run on)."""
    from trueup import matching
    from trueup.warehouse import Warehouse

    wh = Warehouse(_home(args) / "warehouse")
    if args.review_cmd == "list":
        shown = 0
        for domain in ([args.domain] if args.domain else matching.MATCHED_DOMAINS):
            q = wh.read("review", domain)
            for r in (q.to_pylist() if q is not None else []):
                shown += 1
                print(f"{domain}\t{r['source_system']}\t{r['source_key']}\t-> {r['anchor_system']} {r['anchor_key']}"
                      f"\tconfidence {r['confidence']:.3f}\t{r['reason']}")
        print(f"{shown} match(es) awaiting review", file=sys.stderr)
        return 0
    try:
        dec = matching.decisions_append(wh.read("state", "review_decisions", args.domain), args.domain,
                                        args.system, args.key, args.anchor_key, args.review_cmd,
                                        args.by or os.environ.get("USER", "unknown"))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    wh.write(dec, "state", "review_decisions", args.domain)
    print(f"{args.review_cmd}ed: {args.domain} {args.system} {args.key} -> {args.anchor_key} (applies from the next run)")
    return 0


def cmd_sql(args) -> int:
    """A SQL query over the warehouse: every asset's table is a view named as the asset
    (customer_matched, price_plan, ...), whichever kind it is stored as. Tables in its folders
    (quarantine/, state/, a partitioned asset's days) are read by path: read_parquet('...')."""
    import re

    import duckdb

    from trueup.warehouse import Warehouse

    root = _home(args) / "warehouse"
    con = duckdb.connect()
    files = sorted(p for p in root.glob("*") if p.suffix in (".parquet", ".arrow")) if root.exists() else []
    for path in files:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", path.stem):
            continue  # not a name a query could use unquoted, and not one trueup writes
        if path.suffix == ".parquet":
            con.read_parquet(str(path)).create_view(path.stem)
        else:
            con.register(path.stem, Warehouse.read_path(path))
    try:
        rel = con.sql(args.query)
        if rel is not None:  # a query's errors may surface only as it runs
            rel.show(max_rows=args.max_rows)
    except duckdb.Error as e:
        names = ", ".join(p.stem for p in files) or f"none: {root} holds no tables yet"
        print(f"error: {e}\ntables: {names}", file=sys.stderr)
        return 2
    return 0


def _store(args):
    from trueup.state import StateStore

    home = _home(args)
    return StateStore(os.environ.get("TRUEUP_STATE_URL", f"sqlite:///{home / 'state.db'}"))


def cmd_approvals_list(args) -> int:
    """One line per approval (a create is one approval over its fields). Values of fields that
    may hold personal data are not printed: the key, the rule and the reason say what it is."""
    store = _store(args)
    rows = store.approvals(None if args.all else "pending").to_pylist()
    if not rows:
        print("nothing waits for approval" if not args.all else "no approvals recorded")
        return 0
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["approval_id"], []).append(r)
    print(f"{'approval':<14} {'status':<10} {'since':<20} {'system':<6} {'what':<58} why")
    for aid, rs in groups.items():
        r = rs[0]
        if r["action"] == "create":
            name = next((x["new_value"] for x in rs if x["field"] == "name"), None)
            what = f"create {r['entity']} {r['target_key']}" + (f" ({name})" if name else "") + f", {len(rs)} fields"
        else:
            what = f"{r['entity']} {r['target_key']} {r['field']}: {r['old_value']} -> {r['new_value']}"
        since = r["requested_at"].strftime("%Y-%m-%d %H:%M") if r["requested_at"] else ""
        decided = f" [{r['status']} by {r['decided_by']}: {r['note'] or ''}]" if r["decided_by"] else ""
        print(f"{aid[:12]:<14} {r['status']:<10} {since:<20} {r['system']:<6} {what[:58]:<58} {r['reason']}{decided}")
    return 0


def cmd_approvals_decide(args) -> int:
    store = _store(args)
    decision = "approved" if args.decision == "approve" else "rejected"
    by = args.by or os.environ.get("USER") or "unknown"
    try:
        if args.all_pending:
            n = store.decide_all_pending(decision, by=by, note=args.note)
        elif args.ids:
            n = store.decide(args.ids, decision, by=by, note=args.note)
        else:
            print("name the approvals to decide (or --all-pending)", file=sys.stderr)
            return 2
    except KeyError as exc:
        print(f"error: {exc.args[0]}", file=sys.stderr)
        return 1
    print(f"{decision} {n} approval(s); {'the next run applies them' if decision == 'approved' else 'they will not be proposed again until the data changes'}")
    return 0


def cmd_replay(args) -> int:
    """The replay_dead_letters job in-process."""
    home = _home(args)
    _dagster_home(home)

    import dagster as dg

    from pipelines.definitions import build_definitions

    job = build_definitions(home=home).resolve_job_def("replay_dead_letters")
    result = job.execute_in_process(instance=dg.DagsterInstance.get(), raise_on_error=False)
    if result.success:
        print(json.dumps(result.output_for_node("replay_changes"), indent=2))
    print(f"run {result.run_id} {'succeeded' if result.success else 'FAILED'}")
    return 0 if result.success else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="trueup", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--home", help="working folder (default: $TRUEUP_HOME or .trueup)")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run the nightly reconciliation")
    r.add_argument("--dry-run", action="store_true", help="plan and report, write nothing")
    r.add_argument("--scale", type=float, default=1.0, help="demo size (1 = default, 10 = ten times)")
    r.add_argument("--rebuild", action="store_true", help="rebuild the demo landscape first")
    r.set_defaults(fn=cmd_run)
    y = sub.add_parser("sync", help="incremental sync: only what changed since the watermarks")
    y.add_argument("--dry-run", action="store_true", help="plan and report, write nothing, move no watermark")
    y.set_defaults(fn=cmd_sync)
    f = sub.add_parser("backfill", help="re-reconcile what changed on a range of days, in one run")
    f.add_argument("--from", dest="start", required=True, help="first day, YYYY-MM-DD (UTC)")
    f.add_argument("--to", dest="end", required=True, help="last day, YYYY-MM-DD (UTC), inclusive")
    f.add_argument("--dry-run", action="store_true", help="plan and report, write nothing")
    f.set_defaults(fn=cmd_backfill)
    d = sub.add_parser("demo", help="the demo landscape").add_subparsers(dest="demo_cmd", required=True)
    a = d.add_parser("day", help="simulate a day of edits in the demo systems (ground truth: changes_<time>.csv)")
    a.add_argument("--share", type=float, default=0.01, help="share of each domain's records edited")
    a.add_argument("--seed", type=int, default=1)
    a.set_defaults(fn=cmd_demo_day)
    b = d.add_parser("build", help="build (or rebuild) the demo landscape")
    b.add_argument("--scale", type=float, default=1.0)
    b.add_argument("--seed", type=int, default=7)
    b.add_argument("--if-absent", action="store_true")
    b.set_defaults(fn=cmd_demo_build)
    s = sub.add_parser("score", help="score a run against the demo's ground truth")
    s.add_argument("--run", help="run id (default: the latest)")
    s.set_defaults(fn=cmd_score)
    rv = sub.add_parser("review", help="the match review queue: list, confirm, reject").add_subparsers(
        dest="review_cmd", required=True)
    rl = rv.add_parser("list", help="matches awaiting a decision")
    rl.add_argument("--domain", choices=["customer", "product"])
    rl.set_defaults(fn=cmd_review)
    for verb in ("confirm", "reject"):
        rc = rv.add_parser(verb, help=f"{verb} a proposed match (kept and reused on every later run)")
        rc.add_argument("domain", choices=["customer", "product"])
        rc.add_argument("system")
        rc.add_argument("key")
        rc.add_argument("anchor_key")
        rc.add_argument("--by", help="who decided (default: $USER)")
        rc.set_defaults(fn=cmd_review)
    a = sub.add_parser("approvals", help="changes waiting for approval; approve or reject them")
    a.set_defaults(fn=cmd_approvals_list, all=False)
    asub = a.add_subparsers(dest="approvals_cmd")
    al = asub.add_parser("list", help="pending approvals (--all: every decision too)")
    al.add_argument("--all", action="store_true")
    al.set_defaults(fn=cmd_approvals_list)
    for verb in ("approve", "reject"):
        ad = asub.add_parser(verb, help=f"{verb} pending approvals by id (or unique prefix)")
        ad.add_argument("ids", nargs="*")
        ad.add_argument("--all-pending", action="store_true", help=f"{verb} everything pending")
        ad.add_argument("--by", help="who decides (default: $USER)")
        ad.add_argument("--note", required=verb == "reject", help="why (required to reject)")
        ad.set_defaults(fn=cmd_approvals_decide, decision=verb)
    rp = sub.add_parser("replay", help="re-plan the dead letters against current values and apply them")
    rp.set_defaults(fn=cmd_replay)
    qs = sub.add_parser("sql", help="query the warehouse's tables (Parquet and Arrow) by name with DuckDB")
    qs.add_argument("query")
    qs.add_argument("--max-rows", type=int, default=40, help="rows shown (default 40)")
    qs.set_defaults(fn=cmd_sql)
    args = p.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
