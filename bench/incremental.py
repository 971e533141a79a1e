"""Incremental sync vs the full run, on one demo landscape after a simulated day of edits.

    uv run python bench/incremental.py --scale 10 --share 0.01
    uv run python bench/incremental.py --size large --share 0.01   # the scale benchmark's landscape

Builds the demo at `scale`, reconciles it fully twice (systems in agreement, crosswalk and
watermarks set), simulates a day of edits on `share` of the records, then times, each in a fresh
process on its own copy of the landscape: the incremental run (changes since the watermarks,
counterparts by key) and the full run (every record). Both are the engine's work end to end
(extract, stage, data contracts, match, golden, plan, write-back with live compare, ledger), without Dagster's
per-step overhead, which is the same for both; the CRM sandbox serves from a process of its own, as
a real CRM is another machine. Prints both times, rows per second, peak memory (max RSS of
trueup's process), CPU seconds (trueup's process, and the CRM sandbox's, which here shares the
machine's cores) and the incremental run's score against the day's ground truth.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

DOMAINS = ["customer", "product", "price", "inventory"]


def _rss_mb() -> float:
    """This process's peak resident memory so far (VmHWM). Not getrusage's maxrss: Linux carries
    that across exec, so a child started by a parent holding 8 GB reported 8 GB before doing anything."""
    with open("/proc/self/status") as fh:
        return int(re.search(r"^VmHWM:\s+(\d+) kB", fh.read(), re.M).group(1)) / 1024


def _cpu_s(pid: int | str = "self") -> float:
    """CPU seconds (user + system, every thread) a process has used so far, from /proc."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_mode(mode: str, home: Path, lookback_minutes: float | None = None) -> dict:
    """One run in this process; the timed part excludes imports, reference data and server start."""
    import pyarrow as pa

    from assets.reconcile import _reference
    from checks.contracts import Severities, row_issues, validate, warm_up
    from sandbox.crm import serve_process
    from sandbox.wms import WmsSandbox
    from trueup import incremental, reconcile, steps
    from trueup.config import Config
    from trueup.crosswalk import CrosswalkStore
    from trueup.lookups import calling_codes, countries
    from trueup.state import StateStore
    from trueup.systems.files import FileSystem
    from trueup.systems.rest import RestSystem
    from trueup.systems.sql import SqlSystem
    from trueup.warehouse import Warehouse

    config = Config.load(REPO / "config")
    severities = Severities(REPO / "config" / "contracts.yaml")
    countries(), calling_codes()
    state = StateStore(f"sqlite:///{home / 'state.db'}")
    wh = Warehouse(home / "warehouse")
    run_id = f"bench-{mode}-{uuid.uuid4().hex[:8]}"
    demo = home / "demo"
    lookback = timedelta(minutes=config.settings.sync.lookback_minutes if lookback_minutes is None
                         else lookback_minutes)
    figures: dict = {"mode": mode, "rss_before_mb": round(_rss_mb(), 1)}
    # the CRM in a process of its own: a real one is another machine, its CPU not trueup's time
    with serve_process(demo / "crm" / "crm.sqlite", rate_per_second=100000, burst=100000) as srv:
        s = config.systems.systems
        clients = {"erp": SqlSystem("erp", f"sqlite:///{demo / 'erp.sqlite'}", s["erp"]),
                   "crm": RestSystem("crm", srv.url, s["crm"], page_size=1000),
                   "wms": FileSystem("wms", demo / "wms", s["wms"])}
        t0, cpu0, crm_cpu0 = time.perf_counter(), _cpu_s(), _cpu_s(srv.proc.pid)
        rows_read, applied, planned = 0, 0, 0
        phases: dict[str, float] = {}

        def lap(name: str, since: float) -> float:
            now = time.perf_counter()
            phases[name] = round(phases.get(name, 0) + now - since, 2)
            return now
        if mode == "full":
            staged: dict[str, pa.Table] = {}  # the product records: the item master prices and stock refer to
            for domain in DOMAINS:
                t = time.perf_counter()
                systems = config.systems.systems_with(domain)
                raw = {x: clients[x].extract(domain) for x in systems}
                for x in systems:
                    state.stage_watermark(run_id, x, domain, incremental.high_water(
                        clients[x], domain, raw[x], config.systems.entity(x, domain).updated_at))
                rows_read += sum(t.num_rows for t in raw.values())
                t = lap(f"{domain}: extract", t)
                st = steps.stage(domain, raw, config)
                # as the nightly's staged asset: each system's rows against its data contract
                reference = _reference(domain, st.table, staged.get("product"), config)
                st.issues = pa.concat_tables([st.issues] + [
                    validate(x, domain, st.rows_of(x), config, severities, reference).issues(st.rows_of(x))
                    for x in systems])
                if domain == "product":
                    staged[domain] = st.table
                xw = CrosswalkStore(wh, domain)
                matched, cw = reconcile.match(domain, st.table, xw.read(), st.issues)
                xw.replace(cw)
                golden = reconcile.build_golden(domain, matched, config, date.today())
                plan = reconcile.build_plan(domain, matched, golden, config, st.tombstones)
                t = lap(f"{domain}: stage, match, golden, plan", t)
                out = steps.writeback(domain, plan, clients, config, state, run_id)
                lap(f"{domain}: write-back", t)
                planned += plan.num_rows
                applied += sum(1 for v in out.column("status").to_pylist() if v == "applied")
                # as the nightly between steps (resources.project): a domain's tables go before the
                # next domain is read, so the peak is one domain's work, not the sum of four
                del raw, st, reference, matched, cw, golden, plan, out
                gc.collect()
                pa.default_memory_pool().release_unused()
        else:
            changed = {}
            for domain in ["price", "customer", "product", "inventory"]:
                t = time.perf_counter()
                systems = config.systems.systems_with(domain)
                since = {x: state.since(x, domain, lookback) for x in systems}
                warm_up()  # as the sync's changes asset: GX's import goes on while the systems answer
                ch = incremental.read_changes(domain, clients, config, since,
                                              partition_key=date.today().isoformat())
                for x, hw in ch.high_water.items():
                    state.stage_watermark(run_id, x, domain, hw)
                # as the sync's changes asset: the contract clauses a changed record answers alone
                ch.issues = pa.concat_tables([ch.issues, row_issues(domain, ch.table, config, severities)])
                changed[domain] = ch
                rows_read += sum(ch.read.values())
                lap(f"{domain}: read changes", t)
            for domain in DOMAINS:
                t = time.perf_counter()
                xw = CrosswalkStore(wh, domain)
                res = incremental.sync_plan(
                    domain, changed[domain].table, clients, config, xw, issues=changed[domain].issues,
                    depends=incremental.depends_table(domain, {d: c.table for d, c in changed.items()}),
                    contract=lambda d, records: row_issues(d, records, config, severities))
                xw.add(res.crosswalk)
                rows_read += sum(res.figures["counterparts_read"].values())
                t = lap(f"{domain}: counterparts, match, golden, plan", t)
                out = steps.writeback(domain, res.plan.drop_columns(["partition_key"]), clients, config, state, run_id,
                                      whole_plan=False)  # as the sync asset: a part of the domain
                lap(f"{domain}: write-back", t)
                planned += res.plan.num_rows
                applied += sum(1 for v in out.column("status").to_pylist() if v == "applied")
        state.advance_watermarks(run_id)
        elapsed = time.perf_counter() - t0
        cpu, crm_cpu = _cpu_s() - cpu0, _cpu_s(srv.proc.pid) - crm_cpu0
        peak = _rss_mb()  # trueup's run only: the 3PL's job below is not its memory
        clients["crm"].close()
    WmsSandbox(demo / "wms").process_inbound()  # the 3PL's own job, not trueup's time
    figures.update(run_id=run_id, seconds=round(elapsed, 2), rows_read=rows_read,
                   rows_per_s=round(rows_read / elapsed), changes_planned=planned, applied=applied,
                   peak_rss_mb=round(peak, 1), cpu_s=round(cpu, 2), crm_cpu_s=round(crm_cpu, 2), phases=phases)
    return figures


def _child(mode: str, home: Path, lookback: float = 0) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", mode, "--home", str(home),
                           "--lookback-minutes", str(lookback)], cwd=REPO,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{mode} run failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", type=float, default=10)
    p.add_argument("--size", choices=["small", "medium", "large"],
                   help="use bench/landscape.py's cached landscape of that size instead of --scale")
    p.add_argument("--share", type=float, default=0.01)
    p.add_argument("--work", default="/tmp/trueup-bench-incremental")
    p.add_argument("--lookback-minutes", type=float, default=0.0,
                   help="overlap behind the watermark (default 0 here: the preparing full runs end minutes "
                        "before the measured run, so the configured overlap would re-read their own corrections, "
                        "which hours between real runs would not)")
    p.add_argument("--prepared", help="keep the prepared landscape (two full runs and the simulated day) in this "
                   "folder and reuse it when it is there: the timed runs then start from the same state "
                   "without the preparing runs (for iterating on the engine)")
    p.add_argument("--child", choices=["full", "incremental"], help=argparse.SUPPRESS)
    p.add_argument("--home", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(run_mode(args.child, Path(args.home), args.lookback_minutes)))
        return

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    base = work / "base"
    truth_csv = work / "truth.csv"
    kept = Path(args.prepared) if args.prepared else None
    if kept and (kept / "truth.csv").exists():
        shutil.copytree(kept / "base", base)
        shutil.copy(kept / "truth.csv", truth_csv)
        if (base / "demo" / "erp.sqlite").exists():  # prepared before the ERP had change indexes
            import sqlite3
            from contextlib import closing

            from sandbox.generator import add_change_indexes

            with closing(sqlite3.connect(base / "demo" / "erp.sqlite")) as db:
                add_change_indexes(db)
                db.commit()
        print(f"reusing the prepared landscape in {kept}", flush=True)
    else:
        _prepare(args, base, truth_csv)
        if kept:
            shutil.rmtree(kept, ignore_errors=True)
            shutil.copytree(base, kept / "base")
            shutil.copy(truth_csv, kept / "truth.csv")
    for mode in ("incremental", "full"):
        shutil.copytree(base, work / mode)
    os.sync()  # the copies' gigabytes on disk now, not written back during the timed runs
    inc = _child("incremental", work / "incremental", args.lookback_minutes)
    full = _child("full", work / "full", args.lookback_minutes)
    _print(args, work, truth_csv, inc, full)


def _prepare(args, base: Path, truth_csv: Path) -> None:
    """The landscape, reconciled fully twice, then a simulated day of edits (ground truth to truth_csv)."""
    from sandbox.changes import simulate_day
    from sandbox.generator import build

    t = time.perf_counter()
    if args.size:
        from bench.landscape import landscape

        src = landscape(args.size)
        shutil.copytree(src, base / "demo")
        meta = json.loads((src / "landscape.json").read_text())
        print(f"copied the {args.size} landscape in {time.perf_counter() - t:.0f}s: {json.dumps(meta['sizes'])}",
              flush=True)
    else:
        meta = build(base / "demo", scale=args.scale, seed=7)
        print(f"built scale {args.scale} in {time.perf_counter() - t:.0f}s: {json.dumps(meta['sizes'])}", flush=True)
    for i in (1, 2):  # the first fixes the injected discrepancies, the second reads its echo
        f = _child("full", base)
        print(f"prepare: full run {i}: {f['seconds']}s, {f['applied']} applied", flush=True)
    truth = simulate_day(base / "demo", share=args.share, seed=5, at=datetime.now(timezone.utc))
    truth.to_csv(truth_csv, index=False)
    print(f"simulated a day: {args.share:.1%} of the records edited, {len(truth)} discrepancies caused", flush=True)


def _print(args, work: Path, truth_csv: Path, inc: dict, full: dict) -> None:
    from sandbox.score import score
    from trueup.state import StateStore

    s = score(truth_csv, StateStore(f"sqlite:///{work / 'incremental' / 'state.db'}").ledger(inc["run_id"]))
    sf = score(truth_csv, StateStore(f"sqlite:///{work / 'full' / 'state.db'}").ledger(full["run_id"]))
    print()
    print("| run | seconds | rows read | rows/s | changes planned | applied | peak RSS MB (before timing) "
          "| trueup CPU s | CRM sandbox CPU s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in (full, inc):
        print(f"| {r['mode']} | {r['seconds']} | {r['rows_read']} | {r['rows_per_s']} | {r['changes_planned']} "
              f"| {r['applied']} | {r['peak_rss_mb']} ({r['rss_before_mb']}) | {r['cpu_s']} | {r['crm_cpu_s']} |")
    for r in (full, inc):
        print(f"\n{r['mode']} run, seconds per phase: " + ", ".join(f"{k} {v}" for k, v in r["phases"].items()))
    print(f"\nlookback overlap: {args.lookback_minutes} min")
    print(f"speed-up: {full['seconds'] / inc['seconds']:.1f}x (target >= 20x); trueup's own CPU: "
          f"{full['cpu_s'] / inc['cpu_s']:.1f}x less; with the CRM sandbox's (on the same {os.cpu_count()} cores): "
          f"{(full['cpu_s'] + full['crm_cpu_s']) / (inc['cpu_s'] + inc['crm_cpu_s']):.1f}x less")
    print(f"landscape rows kept in sync per second: full {full['rows_read'] / full['seconds']:.0f}, "
          f"incremental {full['rows_read'] / inc['seconds']:.0f}")
    print(f"incremental vs the day's ground truth: recall {s.recall:.3f}, precision {s.precision:.3f} "
          f"({s.corrected}/{s.expected}); full run: recall {sf.recall:.3f}, precision {sf.precision:.3f}")


if __name__ == "__main__":
    main()
