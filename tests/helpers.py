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
    links: dict[str, pa.Table] = field(default_factory=dict)  # matching decisions, as the warehouse keeps them
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
        matched, self.crosswalk[domain], res = steps.match_staged(
            domain, staged, self.config, self.crosswalk.get(domain), previous_links=self.links.get(domain))
        if res is not None:
            self.links[domain] = res.links
        golden = reconcile.build_golden(domain, matched, self.config, date.today())
        return reconcile.build_plan(domain, matched, golden, self.config, staged.tombstones), matched, golden

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


# ---------------------------------------------------------------- write-back under faults

CRM_DB = ("demo", "crm", "crm.sqlite")


def crm_write_counts(home: Path) -> dict[tuple[str, str, str], int]:
    """How many times the CRM sandbox applied a write to each (resource, record, field), from its
    own write_log (it logs what it applied, not what it was sent)."""
    import json
    import sqlite3
    from collections import Counter
    from contextlib import closing

    with closing(sqlite3.connect(home.joinpath(*CRM_DB))) as db:
        rows = db.execute("SELECT resource, record_id, fields FROM write_log").fetchall()
    return Counter((res, rid, f) for res, rid, fields in rows for f in json.loads(fields))


def check_against_plan(home: Path, config: Config, clients: dict, plans: dict[str, pa.Table],
                       state: StateStore) -> dict[str, int]:
    """Compare every system's live values with the plan, and the ledger / dead letters with both:
    `lost` = a change the ledger calls applied that is not in place, or a change with no
    accounted outcome (not applied, unchanged, held for approval, or dead-lettered);
    `doubled` = a CRM field written more than once (the sandbox's write_log)."""
    from trueup.writeback import live_values

    led = state.ledger().to_pylist()
    final: dict[str, str] = {}
    for r in led:  # the last word on each change across runs
        final[r["change_id"]] = r["status"]
    dead = set(state.dead_letters(status="open").column("change_id").to_pylist())
    held = set(state.approvals().column("change_id").to_pylist())
    lost = 0
    for domain, plan in plans.items():
        for system in sorted(set(plan.column("target_system").to_pylist())):
            rows = plan.filter(pa.compute.equal(plan.column("target_system"), system))
            live = live_values(clients[system], system, domain, config.systems.entity(system, domain), rows)
            now = {(r["source_key"], r["field"]): r["live_value"] for r in live.to_pylist()}
            for p in rows.to_pylist():
                status = final.get(p["change_id"])
                in_place = now.get((p["target_key"], p["field"]), "∅") == p["new_value"]
                if status in ("applied", "unchanged") and not in_place and system != "wms":
                    lost += 1  # the WMS applies inbound files on its own schedule: checked by its export
                elif status not in ("applied", "unchanged") and p["change_id"] not in dead \
                        and p["change_id"] not in held and not _waiting(p, plans):
                    lost += 1
    doubled = sum(n - 1 for n in crm_write_counts(home).values() if n > 1)
    return {"lost": lost, "doubled": doubled}


def _waiting(p: dict, plans: dict[str, pa.Table]) -> bool:
    """A change referring to a record whose create waits for approval."""
    return p["field"] in ("match_key", "parent_key") and p["new_value"] is not None and any(
        p["new_value"] in set(plan.filter(pa.compute.equal(plan.column("action"), "create"))
                              .column("target_key").to_pylist()) for plan in plans.values())


def fault_drill(home: Path, config: Config, *, rate: float = 0.2, seed: int = 11, max_attempts: int = 2,
                write_batch: int = 3, in_flight: int = 1,
                domains=("customer", "product", "price")) -> dict[str, int]:
    """One run with the CRM answering `rate` of its batch writes with 429, 500 or a dropped
    connection (after applying the write), then a replay of the dead letters with the faults
    gone. Returns the figures: attempted, retried, dead_lettered, replayed, lost, doubled, and
    after the replay: open dead letters and CRM changes still planned (converged = 0)."""
    from sandbox.crm import Faults

    flow = Flow(home, config)
    s = config.systems.systems
    demo = home / "demo"

    def clients(url: str) -> dict:
        return {"erp": SqlSystem("erp", f"sqlite:///{demo / 'erp.sqlite'}", s["erp"]),
                "crm": RestSystem("crm", url, s["crm"], max_attempts=max_attempts, write_batch=write_batch,
                                  backoff_initial=0.001, backoff_max=0.01, in_flight=in_flight),
                "wms": FileSystem("wms", demo / "wms", s["wms"])}

    plans: dict[str, pa.Table] = {}
    with serve(demo / "crm" / "crm.sqlite", faults=Faults(write_fault_rate=rate, seed=seed)) as srv:
        c = clients(srv.url)
        for domain in domains:
            plans[domain], _, _ = flow.plan(domain, c)
            steps.writeback(domain, plans[domain], c, config, flow.state, "faulty")
        faults = dict(srv.stats["faults"])
        c["crm"].close()
    WmsSandbox(demo / "wms").process_inbound()
    led = flow.state.ledger("faulty")
    sent = led.filter(pa.compute.is_in(led.column("status"), pa.array(["applied", "retryable_error", "rejected"])))
    sent = sent.filter(pa.compute.greater(sent.column("attempts"), 0))
    figures = {"planned": sum(p.num_rows for p in plans.values()),
               "attempted": sent.num_rows,
               "attempted_crm": sent.filter(pa.compute.equal(sent.column("system"), "crm")).num_rows,
               "retried": sent.filter(pa.compute.greater(sent.column("retries"), 0)).num_rows,
               "dead_lettered": flow.state.dead_letters(status="open").num_rows,
               **{f"faults_{k}": v for k, v in faults.items()}}
    figures["approvals_pending_before_replay"] = flow.state.approvals("pending").num_rows
    with serve(demo / "crm" / "crm.sqlite") as srv:
        c = clients(srv.url)
        after = check_against_plan(home, config, c, plans, flow.state)
        figures["lost"], figures["doubled"] = after["lost"], after["doubled"]
        replay = {"replayed": 0, "obsolete": 0, "still_failing": 0, "found_in_place": 0}
        for domain in domains:
            raw = {sys_: c[sys_].extract(domain) for sys_ in config.systems.systems_with(domain)}
            got = steps.replay_dead_letters(domain, raw, c, config, flow.state, "replay",
                                            flow.crosswalk.get(domain), previous_links=flow.links.get(domain))
            for k in replay:
                replay[k] += got[k]
        WmsSandbox(demo / "wms").process_inbound()
        figures.update({"replayed": replay["replayed"], "replay_obsolete": replay["obsolete"],
                        "replay_found_in_place": replay["found_in_place"],
                        "replay_still_failing": replay["still_failing"]})
        figures["open_dead_letters_after_replay"] = flow.state.dead_letters(status="open").num_rows
        figures["approvals_pending_after_replay"] = flow.state.approvals("pending").num_rows
        final = check_against_plan(home, config, c, plans, flow.state)
        figures["lost_after_replay"], figures["doubled_after_replay"] = final["lost"], final["doubled"]
        held = set(flow.state.approvals().column("change_id").to_pylist())
        left = 0
        for domain in domains:
            plan, _, _ = flow.plan(domain, c)
            left += sum(1 for p in plan.to_pylist()
                        if p["change_id"] not in held and not _waiting(p, {d: plans[d] for d in domains}))
        figures["still_planned_after_replay"] = left
        c["crm"].close()
    return figures
