"""The run's report across domains: the summary a person reads and the run record."""


import dagster as dg
import pyarrow as pa

from resources.project import TrueupSettings
from resources.state import StateStoreResource
from trueup import report
from trueup.duck import connect, fetch
from trueup.steps import WRITEBACK_SCHEMA


def report_asset(domains: list[str], writebacks: list[dg.AssetKey]) -> dg.AssetsDefinition:
    @dg.asset(
        name="reconciliation_report", group_name="report",
        ins={k.path[-1]: dg.AssetIn(key=k) for k in writebacks},
        deps=[dg.AssetKey(f"{d}_staged") for d in domains],
        description="What was read, what is out of sync where and how badly, and what was corrected.",
    )
    def reconciliation_report(context: dg.AssetExecutionContext, trueup: TrueupSettings,
                              state: StateStoreResource, **outcomes):
        wh = trueup.warehouse
        con = connect()
        read_parts, q_parts = [], []
        for d in domains:
            if wh.exists(f"{d}_staged"):
                read_parts.append(f"SELECT '{d}' AS domain, source_system AS system, count(*) AS records "
                                  f"FROM read_parquet('{wh.path(f'{d}_staged')}') GROUP BY ALL")
            if wh.exists("quarantine", d):
                q_parts.append(f"SELECT '{d}' AS domain, source_system AS system, count(DISTINCT source_key) AS rows "
                               f"FROM read_parquet('{wh.path('quarantine', d)}') GROUP BY ALL")
        empty_read = "SELECT NULL::VARCHAR domain, NULL::VARCHAR system, 0::BIGINT records WHERE FALSE"
        empty_q = "SELECT NULL::VARCHAR domain, NULL::VARCHAR system, 0::BIGINT rows WHERE FALSE"
        read = fetch(con, " UNION ALL ".join(read_parts) or empty_read)
        quarantined = fetch(con, " UNION ALL ".join(q_parts) or empty_q)
        con.close()
        tables = [t.cast(WRITEBACK_SCHEMA) for t in outcomes.values()]
        all_out = pa.concat_tables(tables) if tables else WRITEBACK_SCHEMA.empty_table()
        summary = report.summarise(context.run_id, dry_run=trueup.is_dry_run(context), read=read,
                                   quarantined=quarantined, outcomes=all_out)
        path = report.write(summary, trueup.reports_dir)
        summary["report_path"] = str(path)
        failed = sum(v for k, v in summary["totals"].items() if k in ("rejected", "retryable_error", "blocked"))
        state.store().finish_run(context.run_id, "succeeded" if not failed else "completed_with_failures",
                                 summary, job=context.job_name, dry_run=summary["dry_run"])
        context.add_output_metadata({
            "report": dg.MetadataValue.path(str(path)),
            "summary": dg.MetadataValue.md(report.render_markdown(summary)),
            **{f"changes_{k}": v for k, v in summary["totals"].items()},
        })
        return summary

    return reconciliation_report
