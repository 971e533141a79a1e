"""A write-back run in its own process, for the crash test to kill: `python -m tests.flows.crash_child
HOME CRM_URL RUN_ID`. Small batches so there is a middle of the apply to die in."""

from __future__ import annotations

import sys
from pathlib import Path

from tests.conftest import CONFIG_DIR
from tests.helpers import Flow
from trueup import steps
from trueup.config import Config
from trueup.systems.files import FileSystem
from trueup.systems.rest import RestSystem
from trueup.systems.sql import SqlSystem

DOMAINS = ("customer", "price")


def clients(home: Path, config: Config, crm_url: str) -> dict:
    s, demo = config.systems.systems, home / "demo"
    return {"erp": SqlSystem("erp", f"sqlite:///{demo / 'erp.sqlite'}", s["erp"], write_batch=5),
            "crm": RestSystem("crm", crm_url, s["crm"], write_batch=2, backoff_initial=0.001, backoff_max=0.01),
            "wms": FileSystem("wms", demo / "wms", s["wms"])}


def run(home: Path, crm_url: str, run_id: str) -> None:
    config = Config.load(CONFIG_DIR)
    flow = Flow(home, config)
    c = clients(home, config, crm_url)
    for domain in DOMAINS:
        plan, _, _ = flow.plan(domain, c)
        steps.writeback(domain, plan, c, config, flow.state, run_id)


if __name__ == "__main__":
    run(Path(sys.argv[1]), sys.argv[2], sys.argv[3])
