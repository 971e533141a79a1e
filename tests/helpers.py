"""Run the whole reconciliation with the engine's plain functions and real clients (SQL on the
ERP file, HTTP to the CRM sandbox, files for the WMS): the flow the assets perform."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import pyarrow as pa

from sandbox.crm import serve
from sandbox.wms import WmsSandbox
from trueup import reconcile, steps
from trueup.config import Config
from trueup.state import StateStore
from trueup.systems.files import FileSystem
from trueup.systems.rest import RestSystem
from trueup.systems.sql import SqlSystem

DOMAINS = ["customer", "product", "price", "inventory"]


@dataclass
class Flow:
    """The engine's state between runs: crosswalks (golden ids) and the state store."""

    home: Path
    config: Config
    crosswalk: dict[str, pa.Table] = field(default_factory=dict)
    state: StateStore | None = None

    def __post_init__(self):
        self.state = self.state or StateStore(f"sqlite:///{self.home / 'state.db'}")

    def clients(self, crm_url: str) -> dict:
        demo = self.home / "demo"
        s = self.config.systems.systems
        return {"erp": SqlSystem("erp", f"sqlite:///{demo / 'erp.sqlite'}", s["erp"]),
                "crm": RestSystem("crm", crm_url, s["crm"]),
                "wms": FileSystem("wms", demo / "wms", s["wms"])}

    def plan(self, domain: str, clients: dict) -> tuple[pa.Table, pa.Table, pa.Table]:
        raw = {s: clients[s].extract(domain) for s in self.config.systems.systems_with(domain)}
        staged = steps.stage(domain, raw, self.config)
        matched, self.crosswalk[domain] = reconcile.match(domain, staged.table, self.crosswalk.get(domain),
                                                          staged.issues)
        golden = reconcile.build_golden(domain, matched, self.config, date.today())
        return reconcile.build_plan(domain, matched, golden, self.config), matched, golden

    def run(self, run_id: str, domains=DOMAINS, dry_run: bool = False) -> dict[str, pa.Table]:
        """One full run; returns the writeback outcomes per domain."""
        out = {}
        with serve(self.home / "demo" / "crm" / "crm.sqlite") as srv:
            clients = self.clients(srv.url)
            for domain in domains:
                plan, _, _ = self.plan(domain, clients)
                out[domain] = steps.writeback(domain, plan, clients, self.config, self.state, run_id,
                                              dry_run=dry_run)
            clients["crm"].close()
        if not dry_run:
            WmsSandbox(self.home / "demo" / "wms").process_inbound()
        return out
