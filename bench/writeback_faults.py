"""The write-back fault drill, by hand: the CRM sandbox answers a share of its batch writes with
429, 500 or a dropped connection (after applying the write); trueup retries, dead-letters what
keeps failing, then replays the dead letters with the faults gone. Prints the figures:
changes attempted, retried, dead-lettered, replayed, lost (must be 0), doubled (must be 0).

    uv run python bench/writeback_faults.py [--scale 1] [--rate 0.2] [--seeds 11 12 13]
                                            [--max-attempts 2] [--write-batch 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sandbox.generator import build  # noqa: E402
from tests.conftest import CONFIG_DIR  # noqa: E402
from tests.helpers import fault_drill  # noqa: E402
from trueup.config import Config  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--rate", type=float, default=0.2)
    p.add_argument("--seeds", type=int, nargs="+", default=[11, 12, 13])
    p.add_argument("--max-attempts", type=int, default=2)
    p.add_argument("--write-batch", type=int, default=3)
    args = p.parse_args()
    config = Config.load(CONFIG_DIR)
    work = Path(tempfile.mkdtemp(prefix="trueup_faults_"))
    template = work / "template"
    build(template, scale=args.scale, seed=7)
    totals: dict[str, int] = {}
    for seed in args.seeds:
        home = work / f"seed{seed}"
        shutil.copytree(template, home / "demo")
        t = time.perf_counter()
        f = fault_drill(home, config, rate=args.rate, seed=seed, max_attempts=args.max_attempts,
                        write_batch=args.write_batch)
        f["seconds"] = round(time.perf_counter() - t, 1)
        print(json.dumps({"seed": seed, **f}))
        for k, v in f.items():
            if k != "seconds":
                totals[k] = totals.get(k, 0) + v
    print(json.dumps({"total": {k: totals[k] for k in (
        "attempted", "attempted_crm", "retried", "dead_lettered", "replayed", "replay_found_in_place",
        "replay_obsolete", "lost", "doubled",
        "lost_after_replay", "doubled_after_replay", "open_dead_letters_after_replay", "still_planned_after_replay",
        "faults_429", "faults_500", "faults_drop")}}))
    shutil.rmtree(work)
    return 0 if totals["lost"] == totals["doubled"] == totals["lost_after_replay"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
