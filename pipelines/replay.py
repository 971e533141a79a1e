"""The `replay_dead_letters` job: changes that kept failing, re-planned against the systems'
current values and applied (never a stored value re-sent blindly)."""


import dagster as dg

from trueup import steps
from trueup.crosswalk import CrosswalkStore


def replay_job(domains: list[str], systems: list[str]) -> dg.JobDefinition:
    @dg.op(name="replay_changes", required_resource_keys={*systems, "trueup", "state"},
           out=dg.Out(dict, io_manager_key="figures_io_manager"),
           description="For each domain with open dead letters: extract fresh, plan, and apply only "
                       "the dead-lettered fields; close the ones nothing is left to do for.")
    def replay_changes(context: dg.OpExecutionContext) -> dict:
        trueup = context.resources.trueup
        cfg = trueup.config
        store = context.resources.state.store()
        figures: dict[str, dict] = {}
        written: set[str] = set()
        for domain in domains:
            open_ = store.dead_letters(status="open", entity=domain)
            if open_.num_rows == 0:
                continue
            holders = cfg.systems.systems_with(domain)
            clients = {s: getattr(context.resources, s).client(cfg) for s in holders}
            raw = {s: clients[s].extract(domain) for s in holders}
            crosswalk = CrosswalkStore(trueup.warehouse, domain).read()
            wh = trueup.warehouse
            figures[domain] = steps.replay_dead_letters(
                domain, raw, clients, cfg, store, context.run_id, crosswalk,
                previous_links=wh.read("state", "match_links", domain),
                decisions=wh.read("state", "review_decisions", domain),
                tombstones=wh.read("state", "tombstones", domain))
            written |= set(open_.column("system").to_pylist())
        for system in sorted(written):
            getattr(context.resources, system).after_writeback()
        still = store.dead_letters(status="open").num_rows
        context.add_output_metadata({
            "dead_letters_still_open": still,
            **{f"{d}_{k}": v for d, f in figures.items() for k, v in f.items()}})
        return {"domains": figures, "still_open": still}

    @dg.job(name="replay_dead_letters", executor_def=dg.in_process_executor,
            description="Re-plan the dead-lettered changes against current values and apply them.")
    def _job():
        replay_changes()

    return _job
