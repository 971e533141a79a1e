"""What share of a full nightly run's time goes to data-contract validation (Great Expectations)?

Runs the nightly job on the demo at a given scale, then reads every step's duration from the
run's events and reports the staged steps' validation time against the whole run.

    uv run python bench/validation_share.py --scale 10
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=float, default=10.0)
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="trueup_bench_"))
    from sandbox.generator import build

    build(home / "demo", scale=args.scale)
    import dagster as dg

    import checks.contracts as contracts
    from pipelines.definitions import build_definitions

    spent: list[float] = []
    original = contracts.validate

    def timed(*a, **kw):
        t = time.perf_counter()
        try:
            return original(*a, **kw)
        finally:
            spent.append(time.perf_counter() - t)

    contracts.validate = timed
    contracts._gx()  # import GX once up front: a long-lived code server pays it once, not per run
    job = build_definitions(home=home).resolve_job_def("nightly_reconciliation")
    t = time.perf_counter()
    result = job.execute_in_process(instance=dg.DagsterInstance.ephemeral())
    total = time.perf_counter() - t
    assert result.success
    out = {"scale": args.scale, "run_seconds": round(total, 2), "validation_seconds": round(sum(spent), 2),
           "validation_share": round(sum(spent) / total, 3), "suites_validated": len(spent)}
    print(json.dumps(out, indent=2))
    os.makedirs("bench/out", exist_ok=True)
    Path("bench/out/validation_share.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
