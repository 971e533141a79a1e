"""Extract assets: one per system and domain, the source's own columns, unchanged.

Each extract checks its own schema against the mapping; a drifted schema travels with the table
(Arrow schema metadata `trueup.unreadable`) so the staging step holds the domain this run."""

import dagster as dg

from checks.asset_checks import schema_result, schema_spec
from checks.schema import check as check_schema
from resources.project import TrueupSettings

KIND_TAG = {"sql": "sql", "rest": "api", "files": "csv"}


def extract_asset(system: str, domain: str, kind: str) -> dg.AssetsDefinition:
    name = f"{system}_{domain}_extract"

    @dg.asset(
        name=name,
        group_name=domain,
        required_resource_keys={system, "trueup"},
        kinds={KIND_TAG[kind]},
        check_specs=[schema_spec(name)],
        description=f"{domain} records as the {system.upper()} holds them (its own columns).",
    )
    def _extract(context: dg.AssetExecutionContext):
        trueup: TrueupSettings = context.resources.trueup
        client = getattr(context.resources, system).client(trueup.config)
        table = client.extract(domain)
        drift = check_schema(system, domain, table, trueup.config.systems.entity(system, domain),
                             trueup.warehouse.root / "state" / "schemas")
        if not drift.passed:
            table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                                   b"trueup.unreadable": drift.describe().encode()})
        read = getattr(client, "last_read_method", None)  # how a SQL system was read (adbc, connectorx, cursor)
        yield dg.Output(table, metadata={"rows": table.num_rows, "columns": ", ".join(table.column_names),
                                         **({"read_method": read} if read else {})})
        yield schema_result(drift)

    return _extract
