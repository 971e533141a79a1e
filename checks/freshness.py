"""Freshness: a source whose newest data is older than its SLA (config/trueup.yaml `freshness`)
fails its extract's check, so a run that reconciles yesterday's warehouse counts says so."""


from datetime import datetime, timezone

import dagster as dg

from trueup.config import Config
from trueup.freshness import data_as_of, judge


def freshness_checks(config: Config) -> list[dg.AssetChecksDefinition]:
    """One check per extract of every system with an SLA."""
    out = []
    for system, sla in sorted(config.settings.freshness.items()):
        for domain in sorted(config.systems.systems[system].entities):
            out.append(_check(system, domain, sla.max_age_hours))
    return out


def _check(system: str, domain: str, max_age_hours: float) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=dg.AssetKey(f"{system}_{domain}_extract"), name="freshness",
        required_resource_keys={system, "trueup", "state"},
        description=f"The {system.upper()}'s {domain} data is at most {max_age_hours:g} hours old when read.",
    )
    def _freshness(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        now = datetime.now(timezone.utc)
        seen = context.resources.state.store().extracts(context.run.run_id)
        rows = [r for r in seen.to_pylist() if r["system"] == system and r["entity"] == domain] if seen.num_rows else []
        if rows:  # what this run's extract actually read
            as_of, now = rows[-1]["data_as_of"], rows[-1]["extracted_at"]
            if now.tzinfo is None:
                now = now.replace(tzinfo=timezone.utc)
        else:  # checked on its own: what the extract would read now
            client = getattr(context.resources, system).client(context.resources.trueup.config)
            as_of = data_as_of(client, domain, now)
        f = judge(system, domain, as_of, max_age_hours, now)
        return dg.AssetCheckResult(
            passed=f.fresh, description=f.describe(),
            metadata={"data_as_of": dg.MetadataValue.timestamp(f.data_as_of),
                      "age_hours": round(f.age_hours, 2), "max_age_hours": max_age_hours})

    return _freshness
