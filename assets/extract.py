"""Extract assets: one per system and domain, the source's own columns, unchanged.

Each extract checks its own schema against the mapping; a drifted schema travels with the table
(Arrow schema metadata `trueup.unreadable`) so the staging step holds the domain this run."""

from datetime import datetime, timezone

import dagster as dg

from checks.asset_checks import schema_result, schema_spec
from checks.schema import check as check_schema
from resources.project import HANDOFF, TrueupSettings
from resources.state import StateStoreResource
from trueup.freshness import data_as_of
from trueup.incremental import high_water

KIND_TAG = {"sql": "sql", "rest": "api", "files": "csv"}


def extract_asset(system: str, domain: str, kind: str) -> dg.AssetsDefinition:
    name = f"{system}_{domain}_extract"

    @dg.asset(
        name=name,
        group_name=domain,
        required_resource_keys={system, "trueup", "state"},
        kinds={KIND_TAG[kind]},
        metadata=HANDOFF,
        check_specs=[schema_spec(name)],
        description=f"{domain} records as the {system.upper()} holds them (its own columns).",
    )
    def _extract(context: dg.AssetExecutionContext):
        trueup: TrueupSettings = context.resources.trueup
        client = getattr(context.resources, system).client(trueup.config)
        extracted_at = datetime.now(timezone.utc)
        table = client.extract(domain)
        # how old the source's data is (a file drop's stamp): kept for the freshness check and KPIs
        as_of = data_as_of(client, domain, extracted_at)
        state: StateStoreResource = context.resources.state
        state.store().record_extract(context.run_id, system, domain, table.num_rows, as_of, extracted_at)
        # what this read saw becomes the incremental watermark once the run's write-backs succeed
        updated_at = trueup.config.systems.entity(system, domain).updated_at
        context.resources.state.store().stage_watermark(
            context.run_id, system, domain, high_water(client, domain, table, updated_at))
        drift = check_schema(system, domain, table, trueup.config.systems.entity(system, domain),
                             trueup.warehouse.root / "state" / "schemas")
        if not drift.passed:
            table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                                   b"trueup.unreadable": drift.describe().encode()})
        read = getattr(client, "last_read_method", None)  # how a SQL system was read (adbc, connectorx, cursor)
        yield dg.Output(table, metadata={"rows": table.num_rows, "columns": ", ".join(table.column_names),
                                         "data_as_of": dg.MetadataValue.timestamp(as_of),
                                         **({"read_method": read} if read else {})})
        yield schema_result(drift)

    return _extract
