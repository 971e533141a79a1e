"""Write-back against an API with latency: the same corrections written to the CRM sandbox with
each batch answered after `--latency` seconds (as a SaaS API's round trip and queueing), with 1,
2, 4 and 8 batches in flight (`RestSystem(in_flight=...)`). Each setting on a fresh copy of the
landscape; prints the write-back's seconds, changes per second, the speed-up over one at a time,
and checks every setting applied the same changes.

    uv run python bench/writeback_latency.py [--scale 20] [--latency 0.2] [--in-flight 1 2 4 8]

The large benchmarks (bench/incremental.py, bench/scale.py) run a sandbox that answers at once,
where batches in flight only overlap trueup's journalling with the sandbox's work; against a
remote API the latency is most of a write-back's time, and this is what it buys there.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sandbox.crm import serve  # noqa: E402
from sandbox.generator import build  # noqa: E402
from tests.conftest import CONFIG_DIR  # noqa: E402
from tests.helpers import Flow  # noqa: E402
from trueup import steps  # noqa: E402
from trueup.config import Config  # noqa: E402
from trueup.systems.rest import RestSystem  # noqa: E402

DOMAINS = ("customer", "product", "price")  # the CRM's entities


def one(template: Path, work: Path, config: Config, latency: float, in_flight: int) -> dict:
    home = work / f"in_flight_{in_flight}"
    shutil.copytree(template, home / "demo")
    flow = Flow(home, config)
    with serve(home / "demo" / "crm" / "crm.sqlite", rate_per_second=100000, burst=100000,
               write_delay=latency) as srv:
        clients = flow.clients(srv.url)
        clients["crm"] = RestSystem("crm", srv.url, config.systems.systems["crm"], in_flight=in_flight)
        plans = {d: flow.plan(d, clients)[0] for d in DOMAINS}
        t = time.perf_counter()
        applied = 0
        for d in DOMAINS:
            out = steps.writeback(d, plans[d], clients, config, flow.state, f"latency-{in_flight}", systems=["crm"])
            applied += sum(1 for s in out.column("status").to_pylist() if s == "applied")
        seconds = time.perf_counter() - t
        clients["crm"].close()
    return {"in_flight": in_flight, "seconds": seconds, "applied": applied}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", type=float, default=20.0)
    p.add_argument("--latency", type=float, default=0.2, help="seconds the API takes per batch")
    p.add_argument("--in-flight", type=int, nargs="+", default=[1, 2, 4, 8])
    args = p.parse_args()
    config = Config.load(CONFIG_DIR)
    work = Path(tempfile.mkdtemp(prefix="trueup_latency_"))
    try:
        build(work / "template", scale=args.scale, seed=7)
        rows = [one(work / "template", work, config, args.latency, n) for n in args.in_flight]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = rows[0]["seconds"]
    print(f"CRM write-back, {args.latency * 1000:.0f} ms per batch of 200, scale {args.scale}")
    print("| batches in flight | seconds | changes applied | changes/s | speed-up |")
    print("|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['in_flight']} | {r['seconds']:.2f} | {r['applied']} | {r['applied'] / r['seconds']:.0f} "
              f"| {base / r['seconds']:.1f}x |")
    same = len({r["applied"] for r in rows}) == 1
    print("every setting applied the same changes" if same else "SETTINGS DISAGREE on what was applied")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
