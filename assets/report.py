"""The run's report across domains: the summary a person reads and the run record."""


import dagster as dg
import pyarrow as pa

from resources.project import TrueupSettings
from resources.state import StateStoreResource
from trueup import report
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
        read, quarantined = report.read_and_quarantined(wh, domains)
        tables = [t.cast(WRITEBACK_SCHEMA) for t in outcomes.values()]
        all_out = pa.concat_tables(tables) if tables else WRITEBACK_SCHEMA.empty_table()
        summary = report.summarise(context.run_id, dry_run=trueup.is_dry_run(context), read=read,
                                   quarantined=quarantined, outcomes=all_out)
        summary["matching"] = report.matching_summary(
            {d: t for d in domains if (t := wh.read("match_exceptions", d)) is not None},
            {d: t for d in domains if (t := wh.read("review", d)) is not None})
        store = state.store()
        summary["write_safety"] = {**store.safety_figures(context.run_id),
                                   "declined": summary["totals"].get("declined", 0)}
        try:
            html_path, headline, figures = report.exception_report(
                store, wh, trueup.config, summary, all_out, trueup.reports_dir, domains=domains,
                full_run=context.run.tags.get("trueup/mode", "full") != "incremental")
        except Exception:  # the run's record must survive a broken report
            summary["report_path"] = str(report.write(summary, trueup.reports_dir))
            store.finish_run(context.run_id, "report_failed", summary, job=context.job_name,
                             dry_run=summary["dry_run"])
            raise
        summary["headline"] = headline
        md_path = report.write(summary, trueup.reports_dir)
        summary["report_path"] = str(html_path)
        summary["markdown_path"] = str(md_path)
        failed = sum(v for k, v in summary["totals"].items() if k in ("rejected", "retryable_error", "blocked"))
        store.finish_run(context.run_id, "succeeded" if not failed else "completed_with_failures",
                         summary, job=context.job_name, dry_run=summary["dry_run"])
        context.add_output_metadata({
            "report": dg.MetadataValue.path(str(html_path)),
            "report_url": dg.MetadataValue.url(html_path.as_uri()),
            "report_markdown": dg.MetadataValue.path(str(md_path)),
            "summary": dg.MetadataValue.md(report.render_markdown(summary)),
            **headline_metadata(headline),
            **{f"preview_{name}": dg.MetadataValue.md(md_table(figures[name].data))
               for name in ("inventory_variance", "price_mismatches", "customers_by_field", "agreement",
                            "data_age") if name in figures},
            **{f"changes_{k}": v for k, v in summary["totals"].items()},
        })
        return summary

    return reconciliation_report


def headline_metadata(h: dict) -> dict:
    """The headline numbers as typed metadata (numbers plot over time in the UI); no record values."""
    out = {}
    for k, v in h.items():
        if isinstance(v, bool) or v is None:
            continue
        if isinstance(v, (int, float)):
            out[k] = dg.MetadataValue.float(float(v)) if isinstance(v, float) else dg.MetadataValue.int(v)
        elif isinstance(v, dict):
            for cur, x in v.items():
                out[f"{k}_{cur}"] = dg.MetadataValue.float(float(x))
        elif isinstance(v, list):
            out[k] = dg.MetadataValue.text(", ".join(v) or "none")
        else:
            out[k] = dg.MetadataValue.text(str(v))
    return out


def md_table(table: pa.Table, limit: int = 15) -> str:
    """A small markdown table of an aggregate (the figures are counts and sums, already masked)."""
    if table.num_rows == 0:
        return "_nothing this run_"
    cols = table.column_names
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in table.slice(0, limit).to_pylist():
        lines.append("| " + " | ".join("" if row[c] is None else str(row[c]) for c in cols) + " |")
    return "\n".join(lines)
