"""The run summary and the exception report: what was read, what is out of sync, where, how bad,
and what trueup did about it. Counts and keys only; no customer PII leaves the ledger."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa

from trueup.duck import connect, fetch


def read_and_quarantined(warehouse, domains: list[str]) -> tuple[pa.Table, pa.Table]:
    """(records read per domain and system, distinct records quarantined per domain and system),
    from the run's staged records and quarantine in the warehouse: what `summarise` takes."""
    con = connect()
    read_parts, q_parts = [], []
    for d in domains:
        staged = warehouse.read(f"{d}_staged", columns=["source_system"])
        if staged is not None:
            con.register(f"{d}_staged", staged)
            read_parts.append(f"SELECT '{d}' AS domain, source_system AS system, count(*) AS records "
                              f"FROM {d}_staged GROUP BY ALL")
        quarantined = warehouse.read("quarantine", d, columns=["source_system", "source_key"])
        if quarantined is not None:
            con.register(f"{d}_quarantine", quarantined)
            q_parts.append(f"SELECT '{d}' AS domain, source_system AS system, count(DISTINCT source_key) AS rows "
                           f"FROM {d}_quarantine GROUP BY ALL")
    empty_read = "SELECT NULL::VARCHAR domain, NULL::VARCHAR system, 0::BIGINT records WHERE FALSE"
    empty_q = "SELECT NULL::VARCHAR domain, NULL::VARCHAR system, 0::BIGINT rows WHERE FALSE"
    try:
        return (fetch(con, " UNION ALL ".join(read_parts) or empty_read),
                fetch(con, " UNION ALL ".join(q_parts) or empty_q))
    finally:
        con.close()


def summarise(run_id: str, *, dry_run: bool, read: pa.Table, quarantined: pa.Table,
              outcomes: pa.Table) -> dict:
    """`read`: (domain, system, records); `quarantined`: (domain, system, rows);
    `outcomes`: writeback rows of every domain (plan columns + status)."""
    con = connect()
    con.register("read", read)
    con.register("q", quarantined)
    con.register("o", outcomes)
    domains: dict[str, dict] = {}
    for r in fetch(con, "SELECT * FROM read ORDER BY domain, system").to_pylist():
        domains.setdefault(r["domain"], {"read": {}, "quarantined": {}, "discrepancies": {}, "corrections": {}})
        domains[r["domain"]]["read"][r["system"]] = r["records"]
    for r in fetch(con, "SELECT * FROM q ORDER BY domain, system").to_pylist():
        domains.setdefault(r["domain"], {"read": {}, "quarantined": {}, "discrepancies": {}, "corrections": {}})
        domains[r["domain"]]["quarantined"][r["system"]] = r["rows"]
    # a record to create counts once, not once per field it is created with
    for r in fetch(con, """SELECT domain, target_system,
                                  CASE WHEN action = 'create' THEN 'create record' ELSE action || ' ' || field END AS kind,
                                  count(DISTINCT CASE WHEN action = 'create' THEN target_key ELSE change_id END) AS n
                           FROM o GROUP BY ALL ORDER BY domain, target_system, n DESC, kind""").to_pylist():
        d = domains.setdefault(r["domain"], {"read": {}, "quarantined": {}, "discrepancies": {}, "corrections": {}})
        d["discrepancies"].setdefault(r["target_system"], {})[r["kind"]] = r["n"]
    for r in fetch(con, """SELECT domain, target_system, status,
                                  count(DISTINCT CASE WHEN action = 'create' THEN target_key ELSE change_id END) AS n
                           FROM o GROUP BY ALL ORDER BY domain, target_system, status""").to_pylist():
        domains[r["domain"]]["corrections"].setdefault(r["target_system"], {})[r["status"]] = r["n"]
    totals = fetch(con, "SELECT status, count(*) AS n FROM o GROUP BY ALL ORDER BY status").to_pylist()  # plan rows
    con.close()
    return {"run_id": run_id, "dry_run": dry_run, "domains": domains,
            "totals": {t["status"]: t["n"] for t in totals}}


def render_markdown(summary: dict) -> str:
    lines = [f"# trueup run {summary['run_id']}" + (" (dry run: nothing written)" if summary["dry_run"] else ""), ""]
    lines += ["| domain | system | read | quarantined | discrepancies | applied | unchanged | awaiting approval "
              "| failed |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for domain, d in summary["domains"].items():
        systems = sorted(set(d["read"]) | set(d["corrections"]))
        for s in systems:
            c = d["corrections"].get(s, {})
            found = sum(d["discrepancies"].get(s, {}).values())
            failed = c.get("rejected", 0) + c.get("retryable_error", 0) + c.get("blocked", 0)
            lines.append(f"| {domain} | {s} | {d['read'].get(s, 0)} | {d['quarantined'].get(s, 0)} | {found} | "
                         f"{c.get('applied', 0)} | {c.get('unchanged', 0)} | "
                         f"{c.get('pending_approval', 0) + c.get('declined', 0)} | {failed} |")
    h = summary.get("headline")
    if h:
        risk = ", ".join(f"{c} {v:,.2f}" for c, v in h["revenue_at_risk"].items()) or "0"
        pct = lambda v: "n/a" if v is None else f"{v:.1%}"  # noqa: E731
        lines += ["", f"- match rate {pct(h['match_rate'])}, records in agreement {pct(h['agreement_share'])}, "
                      f"review queue {h['review_queue'] if h['review_queue'] is not None else '0 (none yet)'}",
                  f"- inventory variance {h['inventory_variance_units']:,} units = "
                  f"{h['inventory_variance_currency'] or ''} {h['inventory_variance_value']:,.2f} at list price; "
                  f"revenue at risk from price mismatches {risk}",
                  f"- open discrepancies {h['open_discrepancies']} (oldest {h['oldest_open_days']} days); "
                  f"quarantined rows {h['quarantined_rows']}; stale sources: {', '.join(h['stale_sources']) or 'none'}"]
    safety = summary.get("write_safety")
    if safety:
        lines += ["", "## Write-back safety", "",
                  f"- changes retried this run: {safety['retried']} (attempts beyond the first: {safety['retries']})",
                  f"- dead letters open: {safety['dead_letters_open']} (`trueup replay` re-plans and applies them)",
                  f"- approvals pending: {safety['approvals_pending']} (`trueup approvals`), "
                  f"declined by a decision this run: {safety['declined']}",
                  f"- interrupted writes of earlier runs still unsettled: {safety['unsettled']}"]
    lines += ["", "## Discrepancies by kind", ""]
    for domain, d in summary["domains"].items():
        for s, kinds in d["discrepancies"].items():
            for kind, n in kinds.items():
                lines.append(f"- {domain} / {s}: {kind}: {n}")
    lines += matching_lines(summary.get("matching") or {})
    return "\n".join(lines) + "\n"


def matching_summary(exceptions: dict[str, pa.Table], review: dict[str, pa.Table]) -> dict:
    """Per domain: the match exceptions (broken cross-references, duplicates) with their evidence
    (field scores, never values) and the number of matches awaiting review."""
    out = {}
    for domain in sorted(set(exceptions) | set(review)):
        exc = exceptions.get(domain)
        rows = exc.select(["kind", "source_system", "source_key", "claimed_key", "suggested_key", "evidence"]
                          ).to_pylist() if exc is not None else []
        out[domain] = {"exceptions": rows, "review": review[domain].num_rows if domain in review else 0}
    return out


def matching_lines(matching: dict) -> list[str]:
    if not any(m["exceptions"] or m["review"] for m in matching.values()):
        return []
    lines = ["", "## Matching: exceptions (held, nothing corrected) and review queue", ""]
    for domain, m in matching.items():
        if m["review"]:
            lines.append(f"- {domain}: {m['review']} match(es) awaiting review (`trueup review list`)")
        for e in m["exceptions"]:
            lines.append(f"- {domain} / {e['source_system']} {e['source_key']}: **{e['kind']}**, carries "
                         f"{e['claimed_key']}" + (f", evidence points at {e['suggested_key']}" if e["suggested_key"] else "")
                         + f" ({e['evidence']})")
    return lines


def write(summary: dict, reports_dir: Path) -> Path:
    out = Path(reports_dir) / summary["run_id"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    (out / "report.md").write_text(render_markdown(summary))
    latest = out / "report.html" if (out / "report.html").exists() else out / "report.md"
    (Path(reports_dir) / "LATEST").write_text(str(latest))
    return out / "report.md"


# names other parts of trueup may give the tables the report reads when they exist
REVIEW_QUEUE_TABLES = ("review_queue", "match_review_queue")
DEAD_LETTER_TABLES = ("dead_letters", "dead_letter")


def _first_table(store, names: tuple[str, ...], run_id: str) -> pa.Table | None:
    for n in names:
        t = store.optional_table(n, run_id)
        if t is not None:
            return t
    return None


def _open_only(table: pa.Table | None) -> pa.Table | None:
    """Dead letters still open (closed ones are history: resolved, superseded, obsolete)."""
    if table is None or "status" not in table.column_names:
        return table
    import pyarrow.compute as pc

    return table.filter(pc.equal(table.column("status"), "open"))


def exception_report(store, warehouse, config, summary: dict, outcomes: pa.Table, reports_dir: Path,
                     *, domains: list[str], full_run: bool = True, at=None) -> tuple[Path, dict, dict]:
    """The run's HTML exception report with the rows behind every chart, the discrepancy history
    and KPIs kept in the state store. Returns (report.html path, headline numbers, figures)."""
    from datetime import datetime, timedelta, timezone

    from trueup import htmlreport, insights

    at = at or datetime.now(timezone.utc)
    run_id = summary["run_id"]
    store.track_discrepancies(run_id, insights.discrepancy_keys(outcomes), full=full_run, at=at)
    # the files, not tables: the report's queries stream them (24M matched records at large)
    matched = {d: p for d in domains if (p := warehouse.find(f"{d}_matched")) is not None}
    golden = {d: p for d in insights.GOLDEN_COLUMNS if (p := warehouse.find(f"{d}_golden")) is not None}
    facts = insights.RunFacts(
        run_id=run_id, at=at, dry_run=summary["dry_run"], outcomes=outcomes, matched=matched, golden=golden,
        quarantined=store.quarantined(run_id), extracts=store.extracts(run_id),
        # open and just closed (every discrepancy ever corrected keeps its row; their KPI is
        # aggregated by the store). A second's margin: MariaDB keeps whole seconds
        history=store.discrepancy_history(closed_since=at - timedelta(seconds=1)),
        days_to_close=store.mean_days_to_close(at - insights.CLOSED_WINDOW),
        previous_runs=store.runs(), settings=config.settings.report,
        freshness_hours={s: f.max_age_hours for s, f in config.settings.freshness.items()},
        review_queue=_first_table(store, REVIEW_QUEUE_TABLES, run_id),
        dead_letters=_open_only(_first_table(store, DEAD_LETTER_TABLES, run_id)))
    figures, headline, kpis = insights.build(facts)
    store.record_kpis(run_id, kpis, at)
    path = htmlreport.write_html(run_id, at, summary["dry_run"], figures, headline, Path(reports_dir) / run_id)
    return path, headline, figures

