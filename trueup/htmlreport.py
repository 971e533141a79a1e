"""The run's exception report as one self-contained HTML file: headline numbers, a Vega-Lite chart
per figure (drawn by Altair; the vega / vega-lite / vega-embed scripts are inlined from
vl-convert's bundle, so the file opens with no network), and beside each chart a link to a CSV of
the rows behind it (written next to the report, in `data/`)."""

from __future__ import annotations

import functools
import html
import json
import os
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path

import altair as alt
import pyarrow as pa
import pyarrow.csv as pacsv

from trueup.insights import SEVERITIES, Figure

CHART_ORDER = ["discrepancies", "inventory_variance", "price_mismatches", "customers_by_field", "match_rate",
               "agreement", "quarantined", "corrections", "data_age", "open_discrepancies", "trend"]


def _vl_version() -> str:
    return "v" + ".".join(alt.VEGALITE_VERSION.split(".")[:2])


@functools.lru_cache(maxsize=1)
def _bundle() -> str:
    import vl_convert as vlc

    try:
        return vlc.javascript_bundle(vl_version=_vl_version())
    except (RuntimeError, ValueError):  # vl-convert without that exact minor: its newest
        return vlc.javascript_bundle()


def vega_bundle(cache_dir: Path | None = None) -> str:
    """vega + vega-lite + vega-embed as one script (from vl-convert, offline), matched to the
    Vega-Lite version Altair writes specs for. Bundling takes seconds, so the script is kept in
    `cache_dir` (named by the versions) for the next run."""
    import vl_convert as vlc

    cached = Path(cache_dir) / f".vega-bundle-{vlc.__version__}-{_vl_version()}.js" if cache_dir else None
    if cached is not None and cached.exists():
        return cached.read_text(encoding="utf-8")
    script = _bundle()
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(f"{cached.name}.{os.getpid()}.tmp")
        tmp.write_text(script, encoding="utf-8")
        os.replace(tmp, cached)
    return script


def _jsonable(v):
    if isinstance(v, Decimal):
        return float(v)
    if isinstance(v, (date, datetime)):
        return v.isoformat()
    return v


def _values(table: pa.Table) -> list[dict]:
    return [{k: _jsonable(v) for k, v in r.items()} for r in table.to_pylist()]


def _currency(t: pa.Table) -> str:
    cur = sorted({c for c in t.column("currency").to_pylist() if c}) if "currency" in t.column_names else []
    return ", ".join(cur) or "unpriced"


def _chart(f: Figure) -> alt.TopLevelMixin:
    d = alt.Data(values=_values(f.data))
    sev = alt.Scale(domain=SEVERITIES, range=["#7f0000", "#d7301f", "#fc8d59", "#fdcc8a"])
    base = alt.Chart(d)
    if f.name == "discrepancies":
        return base.mark_bar().encode(
            x=alt.X("system:N", title=None), y=alt.Y("sum(discrepancies):Q", title="discrepancies"),
            color=alt.Color("severity:N", scale=sev, sort=SEVERITIES),
            column=alt.Column("domain:N", title=None),
            tooltip=["domain:N", "system:N", "severity:N", "discrepancies:Q"]).properties(width=110, height=220)
    if f.name == "inventory_variance":
        y = alt.Y("warehouse:N", sort="-x", title=None)
        units = base.mark_bar(color="#4c78a8").encode(
            y=y, x=alt.X("units:Q", title="units (absolute difference)"),
            tooltip=["warehouse:N", "units:Q", "net_units:Q", "sku_locations:Q"]).properties(width=260)
        value = base.mark_bar(color="#f58518").encode(
            y=y, x=alt.X("value:Q", title=f"value at list price ({_currency(f.data)})"),
            tooltip=["warehouse:N", "value:Q", "currency:N", "unpriced:Q"]).properties(width=260)
        return alt.hconcat(units, value)
    if f.name == "price_mismatches":
        y = alt.Y("price_list:N", sort="-x", title=None)
        # each list in its own currency: the colour says which, so no one adds EUR to USD
        risk = base.mark_bar().encode(
            y=y, x=alt.X("revenue_at_risk:Q", title="revenue at risk (list currency)"),
            color=alt.Color("currency:N", scale=alt.Scale(scheme="set1")),
            tooltip=["price_list:N", "currency:N", "revenue_at_risk:Q", "mismatched_prices:Q"]).properties(width=260)
        count = base.mark_bar(color="#72b7b2").encode(
            y=y, x=alt.X("mismatched_prices:Q", title="mismatched prices"),
            tooltip=["price_list:N", "wrong_unit_price:Q", "expired_but_live:Q"]).properties(width=200)
        return alt.hconcat(risk, count)
    if f.name == "customers_by_field":
        return base.mark_bar().encode(
            y=alt.Y("field:N", sort="-x", title=None), x=alt.X("sum(customers):Q", title="customers"),
            color=alt.Color("system:N"), tooltip=["field:N", "system:N", "customers:Q"]).properties(width=480)
    if f.name == "match_rate":
        return base.mark_bar(color="#54a24b").encode(
            x=alt.X("domain:N", title=None),
            y=alt.Y("match_rate:Q", title="matched across systems", axis=alt.Axis(format="%"),
                    scale=alt.Scale(domain=[0, 1])),
            tooltip=["domain:N", "records:Q", "matched:Q", "held:Q",
                     alt.Tooltip("match_rate:Q", format=".1%")]).properties(width=320, height=200)
    if f.name == "agreement":
        heat = base.mark_rect().encode(
            x=alt.X("system:N", title=None), y=alt.Y("domain:N", title=None),
            color=alt.Color("agreement:Q", scale=alt.Scale(domain=[0.8, 1], scheme="redyellowgreen", clamp=True),
                            legend=alt.Legend(format="%")),
            tooltip=["domain:N", "system:N", "records:Q", "out_of_sync:Q", "missing:Q",
                     alt.Tooltip("agreement:Q", format=".2%")])
        text = base.mark_text(fontSize=13).encode(
            x="system:N", y="domain:N", text=alt.Text("agreement:Q", format=".1%"))
        return (heat + text).properties(width=300, height=200)
    if f.name == "quarantined":
        return base.mark_bar(color="#b279a2").encode(
            x=alt.X("domain:N", title=None), y=alt.Y("sum(rows):Q", title="rows held"),
            color=alt.Color("system:N"),
            tooltip=["domain:N", "system:N", "problem:N", "rows:Q"]).properties(width=320, height=200)
    if f.name == "corrections":
        colors = alt.Scale(domain=["applied", "already right", "failed", "pending approval", "not written (dry run)"],
                           range=["#54a24b", "#bab0ac", "#e45756", "#eeca3b", "#9ecae9"])
        return base.mark_bar().encode(
            x=alt.X("system:N", title=None), y=alt.Y("sum(changes):Q", title="changes"),
            color=alt.Color("outcome:N", scale=colors), column=alt.Column("domain:N", title=None),
            tooltip=["domain:N", "system:N", "outcome:N", "changes:Q"]).properties(width=110, height=200)
    if f.name == "data_age":
        return base.mark_bar().encode(
            y=alt.Y("source:N", title=None), x=alt.X("age_hours:Q", title="hours old when read"),
            color=alt.Color("stale:N", scale=alt.Scale(domain=[False, True], range=["#54a24b", "#e45756"])),
            tooltip=["system:N", "domain:N", "data_as_of:N", "age_hours:Q", "max_age_hours:Q"],
        ).transform_calculate(source="datum.system + ' ' + datum.domain").properties(width=420)
    if f.name == "open_discrepancies":
        return base.mark_bar().encode(
            x=alt.X("open_for:N", title="seen in a row", sort=["1 run", "2 runs", "3 runs", "4+ runs"]),
            y=alt.Y("sum(discrepancies):Q", title="open discrepancies"), color=alt.Color("domain:N"),
            tooltip=["domain:N", "open_for:N", "discrepancies:Q", "oldest_days:Q"]).properties(width=320, height=200)
    if f.name == "trend":
        return base.mark_line(point=True).encode(
            x=alt.X("run:O", title="run (oldest first)"), y=alt.Y("value:Q", title=None),
            color=alt.Color("measure:N"),
            tooltip=["run_id:N", "finished_at:N", "measure:N", "value:Q"]).properties(width=480, height=220)
    raise ValueError(f"no chart for figure {f.name!r}")


def _table_html(t: pa.Table, limit: int = 12) -> str:
    if t.num_rows == 0:
        return "<p class='empty'>Nothing to show for this run.</p>"
    cols = t.column_names
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape('' if r[c] is None else str(_jsonable(r[c])))}</td>"
                                    for c in cols) + "</tr>" for r in t.slice(0, limit).to_pylist())
    more = f"<p class='more'>{t.num_rows - limit} more in the file.</p>" if t.num_rows > limit else ""
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{more}"


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:,.2f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _tiles(h: dict) -> list[tuple[str, str, str]]:
    risk = ", ".join(f"{c} {_fmt(v)}" for c, v in h["revenue_at_risk"].items()) or "0"
    return [
        ("Discrepancies", _fmt(h["discrepancies"]), "records or fields out of sync"),
        ("Match rate", "n/a" if h["match_rate"] is None else f"{h['match_rate']:.1%}", "records matched across systems"),
        ("In agreement", "n/a" if h["agreement_share"] is None else f"{h['agreement_share']:.1%}",
         "records equal to the golden record"),
        ("Review queue", "0 (no review queue yet)" if h["review_queue"] is None else _fmt(h["review_queue"]),
         "possible matches waiting for a person"),
        ("Inventory variance", f"{_fmt(h['inventory_variance_units'])} units",
         f"{h['inventory_variance_currency'] or ''} {_fmt(h['inventory_variance_value'])} at list price"),
        ("Revenue at risk", risk, "price gap x stock on hand"),
        ("Open discrepancies", _fmt(h["open_discrepancies"]), f"oldest first seen {_fmt(h['oldest_open_days'])} days ago"),
        ("Quarantined rows", _fmt(h["quarantined_rows"]), "held out, not written back"),
        ("Corrections", f"{_fmt(h['applied'])} applied",
         f"{_fmt(h['failed'])} failed, {_fmt(h['pending_approval'])} pending approval"
         + (f", {_fmt(h['not_written_dry_run'])} not written (dry run)" if h["not_written_dry_run"] else "")),
        ("Stale sources", ", ".join(h["stale_sources"]) or "none", "older than their SLA"),
    ]


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:22px;margin-bottom:4px} .sub{color:#666;margin-top:0}
.tiles{display:grid;grid-template-columns:repeat(5,1fr);gap:10px;margin:16px 0 24px}
.tile{border:1px solid #ddd;border-radius:6px;padding:10px}
.tile .k{font-size:12px;color:#666} .tile .v{font-size:19px;font-weight:600;margin:4px 0} .tile .n{font-size:11px;color:#888}
section{border-top:1px solid #eee;padding:14px 0} section h2{font-size:17px;margin:0 0 4px}
.explains{color:#555;font-size:13px;max-width:900px} .rows a{font-size:13px}
table{border-collapse:collapse;font-size:12px;margin-top:8px} td,th{border:1px solid #e3e3e3;padding:2px 6px;text-align:left}
.empty,.more{color:#888;font-size:12px} .chart-error{color:#b00}
"""


def write_html(run_id: str, at: datetime, dry_run: bool, figures: dict[str, Figure], headline: dict,
               out_dir: Path) -> Path:
    """Write report.html and data/<figure>.csv (+ the aggregate as data/<figure>_summary.csv)."""
    out_dir = Path(out_dir)
    data_dir = out_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    specs, sections = {}, []
    for name in CHART_ORDER:
        f = figures.get(name)
        if f is None:
            continue
        pacsv.write_csv(f.rows, data_dir / f"{name}.csv")
        pacsv.write_csv(f.data, data_dir / f"{name}_summary.csv")
        specs[name] = _chart(f).to_dict()
        sections.append(
            f"<section id='{name}'><h2>{html.escape(f.title)}</h2>"
            f"<p class='explains'>{html.escape(f.explains)}</p>"
            f"<div class='chart' id='chart-{name}' data-figure='{name}'></div>"
            f"<p class='rows'>Rows behind this figure: <a href='data/{name}.csv'>data/{name}.csv</a> "
            f"({f.rows.num_rows:,} rows) &middot; <a href='data/{name}_summary.csv'>as charted</a></p>"
            f"{_table_html(f.data)}</section>")
    tiles = "".join(f"<div class='tile'><div class='k'>{html.escape(k)}</div><div class='v'>{html.escape(v)}</div>"
                    f"<div class='n'>{html.escape(n)}</div></div>" for k, v, n in _tiles(headline))
    # '</' must not appear inside a script element: the specs hold free text
    spec_json = json.dumps(specs, default=_jsonable).replace("</", "<\\/")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>trueup exceptions {html.escape(run_id)}</title>
<meta name="viewport" content="width=device-width,initial-scale=1"><style>{CSS}</style>
<script>{vega_bundle(out_dir.parent)}</script></head>
<body>
<h1>What is out of sync{' (dry run: nothing written)' if dry_run else ''}</h1>
<p class="sub">trueup run {html.escape(run_id)} &middot; {html.escape(at.strftime('%Y-%m-%d %H:%M UTC'))} &middot;
emails, phones and tax ids are masked</p>
<div class="tiles">{tiles}</div>
{''.join(sections)}
<script id="specs" type="application/json">{spec_json}</script>
<script>
const specs = JSON.parse(document.getElementById('specs').textContent);
window.trueupCharts = Promise.all(Object.entries(specs).map(([name, spec]) =>
  vegaEmbed('#chart-' + name, spec, {{actions: false, renderer: 'svg'}})
    .catch(err => {{ document.getElementById('chart-' + name).innerHTML =
      '<p class="chart-error">chart failed: ' + String(err) + '</p>'; throw err; }})));
window.trueupCharts.then(() => document.body.dataset.charts = 'rendered');
</script>
</body></html>
"""
    path = out_dir / "report.html"
    tmp = out_dir / f".report.html.{os.getpid()}.tmp"
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, path)
    return path
