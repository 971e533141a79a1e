"""How trueup's nightly reconciliation scales, stage by stage, against two baselines.

    uv run python bench/scale.py                      # small, medium, large side by side
    uv run python bench/scale.py --sizes small,medium  # a quicker pass

For each size (bench/landscape.py: large = 1M ship-tos under 200k sold-tos, 200k SKUs, 5M price
rows, 5M stock rows, ~2% drift, cached under bench/out/landscapes/) three fresh processes run, so
that each one's peak memory is its own:
  trueup    every stage of the full nightly run with the engine's functions and the real clients
            (ERP over SQLAlchemy on SQLite, CRM over HTTP to the sandbox, WMS files): extract per
            system, stage (mapping), validate (contracts + gate), match_probabilistic (the records
            without a usable key, as the nightly's matched asset does), match, golden, plan, apply
            (write-back + ledger), report; the warehouse writes (Parquet, Arrow IPC) are their own line;
  pandas    the same keyed reconciliation written the way a team without trueup would (normalise
            with pandas, outer-merge on the key, compare field by field), on the same extracts;
  read_sql  pandas.read_sql of the ERP's tables, against trueup's SQL extract.
Peak memory per stage is sampled from /proc (RSS every 5 ms, so Arrow and DuckDB memory count);
the process peak is its VmHWM. Prints one table and writes bench/out/scale.json.

The CRM is read over its REST API at every size (default `--crm-rest-limit` 10M). With the limit
set below a size's CRM record count, that size's CRM extract is read from the sandbox's store
instead, for a quicker pass; the REST rate is then measured on the CRM's product records and the
full figure projected from it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import closing, contextmanager
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.landscape import OUT, TODAY, landscape  # noqa: E402

DOMAINS = ["customer", "product", "price", "inventory"]
STAGES = ["extract_erp", "extract_crm", "extract_wms", "stage", "validate", "match_probabilistic", "match", "golden",
          "plan", "apply", "report", "warehouse"]
RECONCILE = ["stage", "match", "golden", "plan"]  # what the pandas baseline does too
PAGE = os.sysconf("SC_PAGE_SIZE")


# ------------------------------------------------------------------ measuring


def _cpu() -> float:
    """CPU seconds of this process, every thread (DuckDB's and Arrow's included): on a shared
    machine wall time mostly measures the neighbours, CPU time measures the work."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class Meter:
    """Wall time, rows and sampled peak RSS per stage."""

    def __init__(self):
        self.stages: dict[str, dict] = {}
        self.current: str | None = None
        self._stop = False
        self._peak = 0
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * PAGE

    def _sample(self) -> None:
        while not self._stop:
            r = self.rss()
            if r > self._peak:
                self._peak = r
            time.sleep(0.005)

    @contextmanager
    def stage(self, name: str, rows: int | None = None):
        # Arrow's freed pages go back to the system, as the nightly's IO manager has them go
        # before each step: a stage's peak is its own work on top of what is still alive
        import pyarrow as pa

        pa.default_memory_pool().release_unused()
        self._peak = self.rss()
        t = time.perf_counter()
        cpu = _cpu()
        box = {"rows": rows or 0}
        try:
            yield box
        finally:
            s = self.stages.setdefault(name, {"seconds": 0.0, "cpu_s": 0.0, "rows": 0, "peak_rss_mb": 0.0})
            s["seconds"] += time.perf_counter() - t
            s["cpu_s"] += _cpu() - cpu
            s["rows"] += box["rows"]
            s["peak_rss_mb"] = max(s["peak_rss_mb"], max(self._peak, self.rss()) / 2**20)
            if os.environ.get("BENCH_VERBOSE"):
                print(f"  {name}: {time.perf_counter() - t:.2f} s, {box['rows']} rows", file=sys.stderr, flush=True)

    def result(self) -> dict:
        self._stop = True
        for s in self.stages.values():
            s["seconds"] = round(s["seconds"], 3)
            s["cpu_s"] = round(s["cpu_s"], 3)
            s["rows_per_s"] = round(s["rows"] / s["seconds"]) if s["seconds"] else None
            s["peak_rss_mb"] = round(s["peak_rss_mb"])
        with open("/proc/self/status") as fh:  # VmHWM: getrusage's maxrss carries over across exec
            peak_kb = int(next(line for line in fh if line.startswith("VmHWM:")).split()[1])
        return {"stages": self.stages, "process_peak_rss_mb": round(peak_kb / 1024)}


def _fresh_home(size: str, kind: str) -> Path:
    """A private copy of the cached landscape (the run writes to its systems)."""
    src = landscape(size)
    home = OUT / "work" / f"{size}_{kind}"
    if home.exists():
        shutil.rmtree(home)
    home.mkdir(parents=True)
    shutil.copytree(src, home / "demo")
    return home


def _crm_store_extract(db: Path, em) -> "pa.Table":  # noqa: F821
    """The CRM's records as its API would return them (text columns), read from its store."""
    from trueup.systems.sql import rows_to_arrow

    cols = list(dict.fromkeys(em.key_columns + [f.column for f in em.fields.values()] + [em.updated_at]))
    with closing(sqlite3.connect(db)) as con:
        rows = con.execute(f"SELECT {', '.join(cols)} FROM {em.resource}").fetchall()  # noqa: S608 (config)
    return rows_to_arrow(cols, rows)


# ------------------------------------------------------------------ trueup


def run_trueup(size: str, crm_rest_limit: int) -> dict:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from assets.reconcile import _reference
    from checks import contracts
    from checks.gates import evaluate
    from sandbox.crm import serve_process
    from sandbox.wms import WmsSandbox
    from trueup import matching, reconcile, report, steps
    from trueup.config import Config
    from trueup.state import StateStore
    from trueup.systems.files import FileSystem
    from trueup.systems.rest import RestSystem
    from trueup.systems.sql import SqlSystem
    from trueup.warehouse import Warehouse

    home = _fresh_home(size, "trueup")
    demo = home / "demo"
    config = Config.load(REPO / "config")
    contracts._gx()  # a code server imports Great Expectations once, not per run
    severities = contracts.Severities(REPO / "config" / "contracts.yaml")
    state = StateStore(f"sqlite:///{home / 'state.db'}")
    wh = Warehouse(home / "warehouse")
    raw_dir = home / "raw"
    raw_dir.mkdir()
    run_id = f"bench-{size}"
    m = Meter()
    info: dict = {"plan_rows": {}, "outcomes": {}, "crm_extract": "rest"}
    s = config.systems.systems
    with closing(sqlite3.connect(demo / "crm" / "crm.sqlite")) as con:
        crm_records = sum(con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]  # noqa: S608
                          for t in ("accounts", "products", "pricebook"))
    crm_via_rest = crm_records <= crm_rest_limit
    t_all = time.perf_counter()
    # the CRM in a process of its own, as in bench/incremental.py: a real one is another machine,
    # and a server thread in this process would take the GIL (and CPU time) from trueup's stages
    with serve_process(demo / "crm" / "crm.sqlite", rate_per_second=1e9, burst=10**9) as srv:
        clients = {"erp": SqlSystem("erp", f"sqlite:///{demo / 'erp.sqlite'}", s["erp"]),
                   "crm": RestSystem("crm", srv.url, s["crm"], page_size=1000),
                   "wms": FileSystem("wms", demo / "wms", s["wms"])}
        outcomes = []
        product_staged = None
        for domain in DOMAINS:
            raw = {}
            for system in config.systems.systems_with(domain):
                with m.stage(f"extract_{system}") as st:
                    if system == "crm" and not crm_via_rest:
                        raw[system] = _crm_store_extract(demo / "crm" / "crm.sqlite", s["crm"].entities[domain])
                        info["crm_extract"] = "store (see crm_rest_rate)"
                    else:
                        raw[system] = clients[system].extract(domain)
                    st["rows"] = raw[system].num_rows
                pq.write_table(raw[system], raw_dir / f"{domain}_{system}.parquet")  # for the baseline
            with m.stage("stage", sum(t.num_rows for t in raw.values())):
                staged = steps.stage(domain, raw, config)
            del raw
            with m.stage("warehouse", staged.table.num_rows):
                wh.write(staged.table, f"{domain}_staged", kind=Warehouse.ARROW)  # as the nightly hands it on
            with m.stage("validate", staged.table.num_rows):
                item_master = product_staged if domain in ("price", "inventory") else None
                reference = _reference(domain, staged.table, item_master, config)
                issues = [staged.issues]
                for system in config.systems.systems_with(domain):
                    rows = staged.rows_of(system)
                    issues.append(contracts.validate(system, domain, rows, config, severities, reference)
                                  .issues(rows))
                all_issues = pa.concat_tables(issues)
                state.record_quarantine(run_id, all_issues)
            with m.stage("warehouse", all_issues.num_rows):
                wh.write(all_issues, "quarantine", domain)
            if domain == "product":
                product_staged = staged.table
            # as the nightly's <domain>_matched asset: records without a usable cross-reference
            # matched probabilistically first (customers, products; a stage of its own, as the
            # pandas baseline has nothing like it), then clustered
            with m.stage("match_probabilistic", staged.table.num_rows):
                res = matching.match_domain(domain, staged.table, config)
                links, apart = (res.link_keys(), res.held()) if res is not None else (None, None)
                if res is not None:
                    info.setdefault("match_comparisons", {})[domain] = res.comparisons
            with m.stage("match", staged.table.num_rows):
                matched, crosswalk = reconcile.match(domain, staged.table, None, all_issues, links=links, apart=apart)
            del staged
            with m.stage("warehouse", matched.num_rows + crosswalk.num_rows):
                wh.write(matched, f"{domain}_matched", kind=Warehouse.ARROW)
                wh.write(crosswalk, "state", "crosswalk", domain)
            with m.stage("golden", matched.num_rows):
                golden = reconcile.build_golden(domain, matched, config, TODAY)
            with m.stage("warehouse", golden.num_rows):
                wh.write(golden, f"{domain}_golden")
            with m.stage("plan", matched.num_rows):
                plan = reconcile.build_plan(domain, matched, golden, config)
            with m.stage("validate", plan.num_rows):  # the gate is validation of the plan
                wb = config.settings.write_back
                required = {x: config.systems.entity(x, domain).required for x in config.systems.systems_with(domain)}
                gates = evaluate(domain, plan, matched, required=required, max_share=wb.max_change_share,
                                 min_records=wb.min_records)
                blocked = {x: g.reason() for x, g in gates.items() if not g.passed}
            with m.stage("warehouse", plan.num_rows):
                wh.write(plan, f"{domain}_plan")
            del matched, golden
            info["plan_rows"][domain] = plan.num_rows
            if blocked:
                info.setdefault("blocked", {})[domain] = blocked
            with m.stage("apply", plan.num_rows):
                out = steps.writeback(domain, plan, clients, config, state, run_id, blocked=blocked)
            outcomes.append(out)
            info["outcomes"][domain] = dict(zip(*out.group_by("status").aggregate(
                [("change_id", "count")]).to_pydict().values()))
        with m.stage("apply", sum(o.num_rows for o in outcomes)):
            clients["crm"].close()
        if not crm_via_rest:  # the REST rate on the CRM's product records, for the projection
            client = RestSystem("crm", srv.url, s["crm"], page_size=1000)
            t = time.perf_counter()
            n = client.extract("product").num_rows
            rate = n / (time.perf_counter() - t)
            client.close()
            info["crm_rest_rate_records_per_s"] = round(rate)
            info["crm_records"] = crm_records
            info["crm_rest_projected_s"] = round(crm_records / rate, 1)
    wms_t = time.perf_counter()
    WmsSandbox(demo / "wms").process_inbound()  # the 3PL's own import: not trueup's time
    info["wms_sandbox_import_s"] = round(time.perf_counter() - wms_t, 2)
    with m.stage("report", sum(o.num_rows for o in outcomes)):
        read, quarantined = report.read_and_quarantined(wh, DOMAINS)
        summary = report.summarise(run_id, dry_run=False, read=read, quarantined=quarantined,
                                   outcomes=pa.concat_tables(outcomes))
        report.write(summary, home / "reports")
    total = time.perf_counter() - t_all - info["wms_sandbox_import_s"]
    res = m.result()
    res.update(info)
    res["total_s"] = round(total, 2)
    res["rows_extracted"] = sum(res["stages"][f"extract_{x}"]["rows"] for x in ("erp", "crm", "wms"))
    return res


# ------------------------------------------------------------------ pandas baseline


def _pandas_domain(domain: str, frames: dict, config, countries: dict, calling: dict):
    """The keyed reconciliation as a pandas team would write it: normalise each system's columns,
    outer-merge on the match key, then compare each ruled field with its owner's value."""
    import numpy as np
    import pandas as pd

    from trueup.model import DOMAINS as CANON

    d = CANON[domain]
    rules = config.rules.domains[domain]
    canon = {}
    for system, df in frames.items():
        em = config.systems.entity(system, domain)
        out = pd.DataFrame(index=df.index)
        for field, fm in em.fields.items():
            txt = df[fm.column].astype("string").str.strip().replace("", pd.NA)
            if fm.map:
                val = txt.map(fm.map)
            elif fm.transform == "country_iso2":
                val = txt.str.lower().map(countries)
            elif fm.transform == "phone_e164":
                digits = txt.str.replace(r"\D", "", regex=True)
                cc = out["country"].map(calling) if "country" in out else pd.Series(pd.NA, index=df.index)
                val = ("+" + digits).where(txt.str.startswith("+"), "+" + cc + digits.str.lstrip("0"))
            elif fm.transform == "upper":
                val = txt.str.upper()
            elif fm.transform == "lower":
                val = txt.str.lower()
            elif fm.transform == "trim":
                val = txt.str.replace(r"\s+", " ", regex=True)
            else:
                val = txt
            t = d.type_of(field) if field != "match_key" else None
            if t is not None and (str(t).startswith("decimal") or str(t).startswith("int")):
                val = pd.to_numeric(val, errors="coerce")
            elif t is not None and str(t).startswith("date"):
                val = pd.to_datetime(val, errors="coerce")
            elif t is not None and str(t) == "bool":
                val = val.str.lower().map({"true": True, "1": True, "false": False, "0": False})
            out[field] = val
        key_cols = list(d.natural_key) or ["match_key"]
        key = out[key_cols[0]].astype("string")
        for c in key_cols[1:]:
            key = key + "|" + out[c].astype("string")
        own_key = df[em.key_columns[0]].astype("string")
        for c in em.key_columns[1:]:
            own_key = own_key + "|" + df[c].astype("string")
        out["__key"] = key.fillna("~" + system + ":" + own_key)
        out["__own"] = own_key
        canon[system] = out.add_suffix(f"__{system}").rename(columns={f"__key__{system}": "__key"})
    merged = None
    for system, out in canon.items():
        merged = out if merged is None else merged.merge(out, on="__key", how="outer")
    diffs = []
    for field, rule in rules.fields.items():
        golden = merged.get(f"{field}__{rule.owner}")
        if golden is None:
            continue
        for fb in rule.fallback or []:
            if f"{field}__{fb}" in merged:
                golden = golden.combine_first(merged[f"{field}__{fb}"])
        if domain == "price" and field == "active":
            vt = merged["valid_to__erp"]
            golden = golden & (vt.isna() | (vt >= pd.Timestamp(TODAY)))
        for target in rule.targets:
            col = f"{field}__{target}"
            if col not in merged:
                continue
            cur = merged[col]
            present = merged[f"__own__{target}"].notna() & golden.notna()
            tol = rule.tolerance
            if tol and (tol.abs is not None or tol.rel is not None):
                allowed = np.maximum(tol.abs or 0, (tol.rel or 0) * golden.abs())
                same = (cur - golden).abs() <= allowed
            elif tol and tol.normalize:
                norm = (lambda s: s.astype("string").str.replace(r"\s+", " ", regex=True)
                        .str.strip().str.lower())
                same = norm(cur) == norm(golden)
            else:
                same = cur.astype("string") == golden.astype("string")
            bad = present & ~same.fillna(False).astype(bool)
            if bad.any():
                diffs.append(pd.DataFrame({"target_system": target, "field": field,
                                           "target_key": merged.loc[bad, f"__own__{target}"],
                                           "old_value": cur[bad].astype("string"),
                                           "new_value": golden[bad].astype("string")}))
    for target, create in rules.create_in.items():
        missing = merged[f"__own__{target}"].isna()
        if create.roles and "role__crm" in merged:
            role = merged[f"role__{rules.fields['role'].owner}"].combine_first(merged["role__crm"])
            missing &= role.isin(create.roles)
        if missing.any():
            diffs.append(pd.DataFrame({"target_system": target, "field": "*",
                                       "target_key": merged.loc[missing, "__key"],
                                       "old_value": None, "new_value": None}))
    return pd.concat(diffs, ignore_index=True) if diffs else pd.DataFrame()


def run_pandas(size: str) -> dict:
    import pandas as pd
    import pyarrow.parquet as pq
    import sqlalchemy as sa

    from trueup.config import Config
    from trueup.lookups import calling_codes, countries

    config = Config.load(REPO / "config")
    home = OUT / "work" / f"{size}_trueup"
    raw_dir = home / "raw"
    cty = countries().to_pandas()
    cty_map = dict(zip(cty["spelling"], cty["alpha2"]))
    cc = calling_codes().to_pandas()
    cc_map = dict(zip(cc["alpha2"], cc["calling_code"]))
    m = Meter()
    info: dict = {"diff_rows": {}}
    for domain in DOMAINS:
        frames = {x: pq.read_table(raw_dir / f"{domain}_{x}.parquet").to_pandas()
                  for x in config.systems.systems_with(domain)}
        with m.stage("reconcile", sum(len(f) for f in frames.values())):
            diffs = _pandas_domain(domain, frames, config, cty_map, cc_map)
        info["diff_rows"][domain] = len(diffs)
        del frames, diffs
    # extraction: pandas.read_sql of the ERP's tables, the columns trueup reads
    engine = sa.create_engine(f"sqlite:///{home / 'demo' / 'erp.sqlite'}")
    s = config.systems.systems["erp"]
    from trueup.systems.sql import SqlSystem

    cols_of = SqlSystem("erp", "sqlite://", s)._columns
    for domain in DOMAINS:
        em = s.entities[domain]
        with m.stage("read_sql") as st:
            df = pd.read_sql(f"SELECT {', '.join(cols_of(em))} FROM {em.table}", engine)  # noqa: S608
            st["rows"] = len(df)
        del df
    res = m.result()
    res.update(info)
    return res


# ------------------------------------------------------------------ driver


def _child(kind: str, size: str, crm_rest_limit: int) -> dict:
    out = OUT / f"scale_{size}_{kind}.json"
    cmd = [sys.executable, __file__, "--child", kind, "--sizes", size, "--crm-rest-limit", str(crm_rest_limit)]
    subprocess.run(cmd, check=True, cwd=REPO)
    return json.loads(out.read_text())


def _fmt_table(results: dict) -> str:
    sizes = list(results)
    head = "| stage | " + " | ".join(f"{s} wall s | {s} CPU s | {s} rows/s | {s} peak MiB" for s in sizes) + " |"
    lines = [head, "|---|" + "---:|" * (4 * len(sizes))]

    def row(label, get):
        cells = []
        for s in sizes:
            st = get(results[s])
            cells += ["" if st is None else f"{st['seconds']:.2f}",
                      "" if st is None else f"{st.get('cpu_s', 0):.2f}",
                      "" if st is None or not st.get("rows_per_s") else f"{st['rows_per_s']:,}",
                      "" if st is None else f"{st['peak_rss_mb']:,}"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    for stage in STAGES:
        row(stage, lambda r, st=stage: r["trueup"]["stages"].get(st))
    row("**trueup reconcile** (stage+match+golden+plan)", lambda r: r["reconcile_trueup"])
    row("pandas merge reconcile (baseline)", lambda r: r["pandas"]["stages"]["reconcile"])
    row("trueup ERP extract", lambda r: r["trueup"]["stages"]["extract_erp"])
    row("pandas.read_sql ERP (baseline)", lambda r: r["pandas"]["stages"]["read_sql"])
    lines.append("")
    for label, key in [("total trueup run, wall s", "total_s"), ("process peak RSS (MiB)", "process_peak_rss_mb")]:
        lines.append(f"- {label}: " + ", ".join(f"{s} {results[s]['trueup'][key]}" for s in sizes))
    lines.append("- pandas baseline process peak RSS (MiB): "
                 + ", ".join(f"{s} {results[s]['pandas']['process_peak_rss_mb']}" for s in sizes))
    lines.append("- pandas reconcile / trueup reconcile (x, >1 = trueup faster), wall | CPU: " + ", ".join(
        f"{s} {results[s]['ratio_reconcile']} | {results[s]['ratio_reconcile_cpu']}" for s in sizes))
    lines.append("- trueup ERP extract / read_sql (x, <1 = trueup faster), wall | CPU: " + ", ".join(
        f"{s} {results[s]['ratio_extract']} | {results[s]['ratio_extract_cpu']}" for s in sizes))
    lines.append("- load average (1 min) before each size: " + ", ".join(
        f"{s} {results[s]['load_avg_1m_before']:.1f}" for s in sizes))
    lines.append("- plan rows (trueup) vs diff rows (pandas): " + ", ".join(
        f"{s} {sum(results[s]['trueup']['plan_rows'].values())} / {sum(results[s]['pandas']['diff_rows'].values())}"
        for s in sizes))
    lines.append("- probabilistic matching, candidate pairs compared: " + ", ".join(
        f"{s} {results[s]['trueup'].get('match_comparisons', {})}" for s in sizes))
    for s in sizes:
        if "crm_rest_projected_s" in results[s]["trueup"]:
            t = results[s]["trueup"]
            lines.append(f"- {s}: CRM read from its store; over REST it reads {t['crm_rest_rate_records_per_s']:,} "
                         f"records/s, so its {t['crm_records']:,} records would take ~{t['crm_rest_projected_s']} s")
    return "\n".join(lines)


def _combine(size: str, tr: dict, pd_: dict, load: float) -> dict:
    rec = {k: round(sum(tr["stages"][st].get(k, 0) for st in RECONCILE), 3) for k in ("seconds", "cpu_s")}
    rec["rows"] = tr["stages"]["stage"]["rows"]
    rec["rows_per_s"] = round(rec["rows"] / rec["seconds"]) if rec["seconds"] else None
    rec["peak_rss_mb"] = max(tr["stages"][st]["peak_rss_mb"] for st in RECONCILE)
    pr, ps = pd_["stages"]["reconcile"], pd_["stages"]["read_sql"]
    te = tr["stages"]["extract_erp"]
    return {"trueup": tr, "pandas": pd_, "reconcile_trueup": rec, "load_avg_1m_before": load,
            "ratio_reconcile": round(pr["seconds"] / rec["seconds"], 2),
            "ratio_reconcile_cpu": round(pr.get("cpu_s", 0) / rec["cpu_s"], 2) if rec["cpu_s"] else None,
            "ratio_extract": round(te["seconds"] / ps["seconds"], 2),
            "ratio_extract_cpu": round(te.get("cpu_s", 0) / ps["cpu_s"], 2) if ps.get("cpu_s") else None,
            "landscape": json.loads((landscape(size) / "landscape.json").read_text())["sizes"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="small,medium,large")
    # 10M: every size reads the CRM over its REST API, as trueup does (the large size's 6.4M
    # records in 65 s, against 31 s straight from the sandbox's store)
    ap.add_argument("--crm-rest-limit", type=int, default=10_000_000,
                    help="above this many CRM records, read the CRM's store instead of its REST API")
    ap.add_argument("--child", choices=["trueup", "pandas"])
    ap.add_argument("--table-only", action="store_true", help="re-print the table from the children's JSON")
    args = ap.parse_args()
    sizes = args.sizes.split(",")
    if args.child:
        size = sizes[0]
        res = run_trueup(size, args.crm_rest_limit) if args.child == "trueup" else run_pandas(size)
        (OUT / f"scale_{size}_{args.child}.json").write_text(json.dumps(res, indent=2))
        return
    OUT.mkdir(parents=True, exist_ok=True)
    results = {}
    for size in sizes:
        if args.table_only:
            results[size] = _combine(size, json.loads((OUT / f"scale_{size}_trueup.json").read_text()),
                                     json.loads((OUT / f"scale_{size}_pandas.json").read_text()), float("nan"))
            continue
        landscape(size)
        load = os.getloadavg()[0]
        tr = _child("trueup", size, args.crm_rest_limit)
        pd_ = _child("pandas", size, args.crm_rest_limit)
        results[size] = _combine(size, tr, pd_, load)
        print(f"{size}: trueup {tr['total_s']} s, reconcile x{results[size]['ratio_reconcile']} vs pandas, "
              f"load {load:.1f}", flush=True)
    (OUT / "scale.json").write_text(json.dumps({"date": date.today().isoformat(), "cores": os.cpu_count(),
                                                "results": results}, indent=2))
    table = _fmt_table(results)
    (OUT / "scale.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
