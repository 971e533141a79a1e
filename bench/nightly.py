"""The Dagster nightly end to end (`trueup run`) at a benchmark size, on SQLite + files or on
PostgreSQL + MariaDB, with its wall time, each step's time and the peak memory.

    uv run python bench/nightly.py --size large                     # ERP SQLite, WMS files
    uv run python bench/nightly.py --size large --backend servers   # ERP PostgreSQL, WMS MariaDB
    uv run python bench/nightly.py --size large --executor multiprocess   # a process per step

`sqlite` copies bench/landscape.py's cached landscape into a fresh home. `servers` builds the same
landscape (same seed, sizes and day) with the ERP in PostgreSQL and the WMS as MariaDB tables
(`config/profiles/servers`), into the database `trueup_bench` on each server (replaced: a run
writes its corrections back, so every measured run starts from a fresh load; loading the large
size takes minutes and is not timed). The CRM is the sandbox over HTTP in both. Server URLs come
from TRUEUP_BENCH_PG_URL / TRUEUP_BENCH_MARIADB_URL (default: the local servers, trust auth).

Memory is the run's process tree (trueup and the CRM sandbox it starts), RSS summed and read from
/proc every second; the per-step figures come from the Dagster instance's step stats. Prints a
table and writes bench/out/nightly_<backend>_<size>[_multiprocess].json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.landscape import OUT, TODAY, landscape, sizes  # noqa: E402

from sandbox.databases import MARIADB_ADMIN, PG_ADMIN, create_database, drop_database  # noqa: E402

DATABASE = "trueup_bench"
PAGE = os.sysconf("SC_PAGE_SIZE")
MARKER = ".trueup-bench-nightly"  # a home this script made: the only kind it replaces
# what would change what is measured if left in the caller's shell
RUN_SETTINGS = ("TRUEUP_ERP_URL", "TRUEUP_WMS_URL", "TRUEUP_CONFIG_DIR", "TRUEUP_EXECUTOR", "DAGSTER_HOME")


def _tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as fh:
                fields = fh.read().rpartition(")")[2].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(d))
        rss[int(d)] = int(fields[21]) * PAGE
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        todo += children.get(p, [])
    return total


def _fresh_database(admin_url: str, kind: str) -> str:
    """An empty `trueup_bench` database on that server (dropped first if there); its URL."""
    import sqlalchemy as sa

    admin = sa.engine.make_url(admin_url)
    engine = sa.create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as c:
        drop_database(c, kind, DATABASE)
        create_database(c, kind, DATABASE)
    engine.dispose()
    return admin.set(database=DATABASE).render_as_string(hide_password=False)


def prepare(size: str, backend: str, home: Path) -> dict[str, str]:
    """A fresh home with the landscape; the environment the run needs (server URLs, profile)."""
    if home.exists():
        if not (home / MARKER).exists():
            raise SystemExit(f"{home} exists and this script did not make it: give another --home")
        shutil.rmtree(home)
    home.mkdir(parents=True)
    (home / MARKER).write_text("")
    if backend == "sqlite":
        shutil.copytree(landscape(size), home / "demo")
        return {}
    from sandbox.generator import Backends, build

    erp = _fresh_database(os.environ.get("TRUEUP_BENCH_PG_URL", PG_ADMIN), "postgresql")
    wms = _fresh_database(os.environ.get("TRUEUP_BENCH_MARIADB_URL", MARIADB_ADMIN), "mariadb")
    t = time.perf_counter()
    build(home / "demo", seed=7, today=TODAY, sizes=sizes(size),
          backends=Backends(erp_url=erp, wms_kind="sql", wms_url=wms))
    print(f"loaded the {size} landscape into PostgreSQL and MariaDB in {time.perf_counter() - t:.0f} s", flush=True)
    return {"TRUEUP_CONFIG_DIR": str(REPO / "config" / "profiles" / "servers"),
            "TRUEUP_ERP_URL": erp, "TRUEUP_WMS_URL": wms}


def run(home: Path, env: dict[str, str], executor: str = "in_process") -> dict:
    """`trueup run` in its own process on that executor; wall time, peak tree RSS, the run id."""
    base = {k: v for k, v in os.environ.items() if k not in RUN_SETTINGS}
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "--home", str(home), "run"], cwd=REPO,
                            env={**base, **env, "TRUEUP_EXECUTOR": executor, "DAGSTER_HOME": str(home / "dagster")},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak, done = [0], threading.Event()
    samples: list[tuple[float, int]] = []  # (epoch seconds, tree RSS): which step the peak fell in

    def poll() -> None:
        while not done.wait(1.0):
            samples.append((time.time(), _tree_rss(proc.pid)))
            peak[0] = max(peak[0], samples[-1][1])

    t0 = time.perf_counter()
    threading.Thread(target=poll, daemon=True).start()
    out = proc.communicate()[0]
    wall = time.perf_counter() - t0
    done.set()
    (home / "run.log").write_text(out)
    m = re.search(r"^run (\S+) (succeeded|FAILED) in ([\d.]+)s", out, re.M)
    if proc.returncode != 0 or not m:
        raise SystemExit(f"the nightly failed (exit {proc.returncode}); the last lines:\n{out[-3000:]}")
    return {"run_id": m.group(1), "job_seconds": float(m.group(3)), "process_seconds": round(wall, 1),
            "peak_rss_mb": round(peak[0] / 2**20), "samples": samples}


def step_figures(home: Path, run_id: str, samples: list[tuple[float, int]]) -> dict[str, dict]:
    """Each step's duration, from the run's Dagster instance, and the process tree's largest RSS
    sampled while it ran (MiB; with the multiprocess executor, that of the steps beside it too)."""
    os.environ["DAGSTER_HOME"] = str(home / "dagster")
    import dagster as dg

    with dg.DagsterInstance.get() as instance:
        stats = [s for s in instance.get_run_step_stats(run_id) if s.end_time and s.start_time]
    return {s.step_key: {"seconds": round(s.end_time - s.start_time, 1),
                         "peak_rss_mb": round(max((r for t, r in samples if s.start_time <= t <= s.end_time),
                                                  default=0) / 2**20)} for s in stats}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=["small", "medium", "large"], default="large")
    p.add_argument("--backend", choices=["sqlite", "servers"], default="sqlite")
    p.add_argument("--executor", choices=["in_process", "multiprocess"], default="in_process",
                   help="the job's executor (multiprocess: a process per step, as many at once as cores)")
    p.add_argument("--home", help="where the run's home goes (default bench/out/nightly/<backend>_<size>)")
    args = p.parse_args()
    home = Path(args.home or OUT / "nightly" / f"{args.backend}_{args.size}")
    load = os.getloadavg()[0]
    env = prepare(args.size, args.backend, home)
    res = run(home, env, args.executor)
    steps = step_figures(home, res["run_id"], res.pop("samples"))
    res.update(size=args.size, backend=args.backend, executor=args.executor, cores=os.cpu_count(), load_before=load,
               steps=steps)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"nightly_{args.backend}_{args.size}"
                                        f"{'' if args.executor == 'in_process' else '_' + args.executor}.json").write_text(json.dumps(res, indent=2))
    print(f"\nthe nightly at {args.size} on {args.backend} ({args.executor}): {res['job_seconds']} s for the job "
          f"({res['process_seconds']} s with start-up), peak RSS {res['peak_rss_mb']} MiB (process tree)")
    print("\n| step | seconds | peak RSS while it ran, MiB |\n|---|---:|---:|")
    for k, v in sorted(steps.items(), key=lambda kv: -kv[1]["seconds"])[:15]:
        print(f"| {k} | {v['seconds']} | {v['peak_rss_mb']:,} |")
    top = sorted(steps.items(), key=lambda kv: -kv[1]["peak_rss_mb"])[:5]
    print("\nlargest peaks: " + ", ".join(f"{k} {v['peak_rss_mb']:,} MiB" for k, v in top))


if __name__ == "__main__":
    main()
