"""Extract assets: one per system and domain, the source's own columns, unchanged."""


import dagster as dg

from resources.project import TrueupSettings

KIND_TAG = {"sql": "sql", "rest": "api", "files": "csv"}


def extract_asset(system: str, domain: str, kind: str) -> dg.AssetsDefinition:
    @dg.asset(
        name=f"{system}_{domain}_extract",
        group_name=domain,
        required_resource_keys={system, "trueup"},
        kinds={KIND_TAG[kind]},
        description=f"{domain} records as the {system.upper()} holds them (its own columns).",
    )
    def _extract(context: dg.AssetExecutionContext):
        trueup: TrueupSettings = context.resources.trueup
        client = getattr(context.resources, system).client(trueup.config)
        table = client.extract(domain)
        context.add_output_metadata({"rows": table.num_rows, "columns": ", ".join(table.column_names)})
        return table

    return _extract
