"""The run summary and the exception report: what was read, what is out of sync, where, how bad,
and what trueup did about it. Counts and keys only; no customer PII leaves the ledger."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa

from trueup.duck import connect, fetch


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
    lines += ["| domain | system | read | quarantined | discrepancies | applied | unchanged | failed |",
              "|---|---|---:|---:|---:|---:|---:|---:|"]
    for domain, d in summary["domains"].items():
        systems = sorted(set(d["read"]) | set(d["corrections"]))
        for s in systems:
            c = d["corrections"].get(s, {})
            found = sum(d["discrepancies"].get(s, {}).values())
            failed = c.get("rejected", 0) + c.get("retryable_error", 0) + c.get("blocked", 0)
            lines.append(f"| {domain} | {s} | {d['read'].get(s, 0)} | {d['quarantined'].get(s, 0)} | {found} | "
                         f"{c.get('applied', 0)} | {c.get('unchanged', 0)} | {failed} |")
    lines += ["", "## Discrepancies by kind", ""]
    for domain, d in summary["domains"].items():
        for s, kinds in d["discrepancies"].items():
            for kind, n in kinds.items():
                lines.append(f"- {domain} / {s}: {kind}: {n}")
    return "\n".join(lines) + "\n"


def write(summary: dict, reports_dir: Path) -> Path:
    out = Path(reports_dir) / summary["run_id"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    (out / "report.md").write_text(render_markdown(summary))
    (Path(reports_dir) / "LATEST").write_text(str(out / "report.md"))
    return out / "report.md"
