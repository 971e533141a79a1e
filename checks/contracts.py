"""Data contracts as Great Expectations suites, one per system x entity, built in code from the
canonical model and the systems' mappings (so a contract always matches what a system maps).

They run on each system's canonical rows, after mapping (so "E.164 after normalisation" and "ISO
country" mean what they say). Every failing row is found with GX's COMPLETE result format and its
key recorded: error-severity failures quarantine the row, warn-severity ones are reported only.
No raw value leaves this module: results carry keys and counts, never the failing values.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import pyarrow as pa
import yaml

from trueup.config import Config
from trueup.mapping import ISSUE_SCHEMA
from trueup.model import DOMAINS

log = logging.getLogger(__name__)

EMAIL = r"^[a-z0-9._%+'-]+@[a-z0-9.-]+\.[a-z]{2,}$"
E164 = r"^\+[1-9][0-9]{6,14}$"
POSTAL = {  # the countries the landscape trades in; others are not checked
    "US": r"^[0-9]{5}(?:-[0-9]{4})?$", "CA": r"^[A-Z][0-9][A-Z] ?[0-9][A-Z][0-9]$", "DE": r"^[0-9]{5}$",
    "GB": r"^[A-Z]{1,2}[0-9][A-Z0-9]? ?[0-9][A-Z]{2}$", "FR": r"^[0-9]{5}$", "NL": r"^[0-9]{4} ?[A-Z]{2}$",
}


@dataclass(frozen=True)
class Expectation:
    """One contract clause: an id the business can name, the GX expectation, the field it is about."""

    id: str
    field: str | None
    gx: Any


@dataclass
class ExpectationResult:
    id: str
    field: str | None
    severity: str
    success: bool
    unexpected_count: int
    keys: list[str] = field(default_factory=list)  # every failing row's key (not a sample)
    error: str | None = None  # the expectation could not run (e.g. a missing column)


@dataclass
class ContractResult:
    system: str
    entity: str
    rows: int
    results: list[ExpectationResult]

    @property
    def failed(self) -> list[ExpectationResult]:
        return [r for r in self.results if not r.success]

    @property
    def passed(self) -> bool:
        return not any(r.severity == "error" for r in self.failed)

    def issues(self, staged: pa.Table) -> pa.Table:
        """One issue row per failing key and expectation (ISSUE_SCHEMA), for the quarantine."""
        rows = [{"source_system": self.system, "entity": self.entity, "source_key": k, "match_key": None,
                 "field": r.field, "column": r.field, "problem": f"contract {r.id} failed",
                 "severity": r.severity}
                for r in self.failed for k in r.keys]
        return pa.Table.from_pylist(rows, schema=ISSUE_SCHEMA)


_warming: threading.Thread | None = None
_warming_lock = threading.Lock()  # steps in threads may warm up at once: one import thread


def warm_up() -> None:
    """Start importing Great Expectations in the background, once per process: its import is
    seconds of a fresh run process's time (an hourly sync's), and the run meanwhile waits on its
    systems (reading the changes). The first validation waits for it to finish."""
    global _warming
    with _warming_lock:
        if _warming is None and _load_gx.cache_info().currsize == 0:
            _warming = threading.Thread(target=_load_gx, name="trueup-gx-import", daemon=True)
            _warming.start()


def _gx():
    """Great Expectations and its expectations module (after `warm_up`'s import, if one started;
    an import that failed there is raised here, by importing again)."""
    if _warming is not None:
        _warming.join()
    return _load_gx()


@lru_cache(maxsize=1)
def _load_gx():
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    import great_expectations as gx
    import great_expectations.expectations as gxe
    from great_expectations.execution_engine import pandas_execution_engine

    # GX fingerprints every dataframe batch under 1 GB (shallow size, so 5M Arrow-backed rows
    # qualify) by hashing all of it, twice per validation (get_batch, then validate): a batch
    # marker trueup never reads, measured at 9.5 s of 15 s for the 5M-row ERP price book.
    # No setting turns it off; a threshold of 0 skips it (tests/unit/test_contracts.py
    # fails if a GX upgrade moves it)
    if hasattr(pandas_execution_engine, "HASH_THRESHOLD"):
        pandas_execution_engine.HASH_THRESHOLD = 0
    return gx, gxe


@lru_cache(maxsize=1)
def _iso_sets() -> tuple[list[str], list[str]]:
    import pycountry

    return sorted(c.alpha_2 for c in pycountry.countries), sorted(c.alpha_3 for c in pycountry.currencies)


def expectations(system: str, entity: str, config: Config, reference: dict[str, list[str]] | None = None,
                 *, rows_alone: bool = False) -> list[Expectation]:
    """The contract of one system's entity: only clauses about fields the system maps.
    `rows_alone`: only the clauses a row answers by itself (some records, e.g. a sync's changes:
    a ship-to's sold-to is not among them)."""
    _, gxe = _gx()
    countries, currencies = _iso_sets()
    mapped = set(config.systems.entity(system, entity).fields)
    reference = reference or {}
    out = [Expectation("key_not_null", None, gxe.ExpectColumnValuesToNotBeNull(column="source_key")),
           Expectation("key_unique", None, gxe.ExpectColumnValuesToBeUnique(column="source_key"))]

    def has(f: str) -> bool:
        return f in mapped

    def non_negative(f: str, name: str | None = None) -> None:
        if has(f):
            out.append(Expectation(name or f"{f}_non_negative", f,
                                   gxe.ExpectColumnValuesToBeBetween(column=f, min_value=0)))

    if entity == "customer":
        if has("email"):
            out.append(Expectation("email_format", "email", gxe.ExpectColumnValuesToMatchRegex(column="email", regex=EMAIL)))
        if has("phone"):
            out.append(Expectation("phone_e164", "phone", gxe.ExpectColumnValuesToMatchRegex(column="phone", regex=E164)))
        if has("country"):
            out.append(Expectation("country_iso", "country", gxe.ExpectColumnValuesToBeInSet(column="country", value_set=countries)))
            if has("postal_code"):
                for c, rx in POSTAL.items():
                    out.append(Expectation("postal_code_format", "postal_code", gxe.ExpectColumnValuesToMatchRegex(
                        column=postal_code_in(c), regex=rx)))
        if has("currency"):
            out.append(Expectation("currency_iso", "currency", gxe.ExpectColumnValuesToBeInSet(column="currency", value_set=currencies)))
        non_negative("credit_limit")
        if has("role"):
            out.append(Expectation("role_known", "role", gxe.ExpectColumnValuesToBeInSet(
                column="role", value_set=["sold_to", "ship_to", "bill_to", "payer"])))
            if has("parent_key") and not rows_alone:
                # every ship-to hangs under a sold-to of the same system
                # membership in a large key set is computed columnar (see _membership): GX copies
                # a value_set of 200,000 keys at every configuration access
                out.append(Expectation("ship_to_has_sold_to", "parent_key", gxe.ExpectColumnValuesToBeInSet(
                    column=PARENT_IS_SOLD_TO, value_set=[True])))
                out.append(Expectation("ship_to_has_sold_to", "parent_key", gxe.ExpectColumnValuesToBeInSet(
                    column=SHIP_TO_HAS_PARENT, value_set=[True])))
    elif entity == "product":
        if has("gtin"):
            out.append(Expectation("gtin_format", "gtin", gxe.ExpectColumnValuesToMatchRegex(column="gtin", regex=r"^(?:[0-9]{8}|[0-9]{12,14})$")))
        if has("case_qty"):
            out.append(Expectation("case_qty_positive", "case_qty", gxe.ExpectColumnValuesToBeBetween(column="case_qty", min_value=1)))
        non_negative("weight_kg")
    elif entity == "price":
        out.append(Expectation("price_positive", "unit_price", gxe.ExpectColumnValuesToBeBetween(
            column="unit_price", min_value=0, strict_min=True)))
        out.append(Expectation("min_qty_positive", "min_qty", gxe.ExpectColumnValuesToBeBetween(column="min_qty", min_value=1)))
        if has("currency"):
            out.append(Expectation("currency_iso", "currency", gxe.ExpectColumnValuesToBeInSet(column="currency", value_set=currencies)))
        if has("valid_from") and has("valid_to"):
            out.append(Expectation("valid_from_before_valid_to", "valid_to", gxe.ExpectColumnPairValuesAToBeGreaterThanB(
                column_A="valid_to", column_B="valid_from", or_equal=True, ignore_row_if="either_value_is_missing")))
    elif entity == "inventory":
        for f in ("on_hand", "allocated", "reserved", "in_transit", "returns_pending"):
            non_negative(f, f"{f}_non_negative")
    if entity in ("price", "inventory") and "item_master" in reference:
        out.append(Expectation("sku_in_item_master", "sku", gxe.ExpectColumnValuesToBeInSet(
            column=SKU_IN_ITEM_MASTER, value_set=[True])))
    return out


PARENT_IS_SOLD_TO = "__parent_key_is_sold_to"  # a ship-to's parent is a sold-to of its system
SHIP_TO_HAS_PARENT = "__ship_to_has_parent"
SKU_IN_ITEM_MASTER = "__sku_in_item_master"


def postal_code_in(country: str) -> str:
    """The column holding the postal codes of one country's records (null for the others)."""
    return f"__postal_code_{country}"


def _membership(staged: pa.Table, system: str, reference: dict[str, list[str]] | None) -> dict[str, pa.Array]:
    """Reference-key membership as boolean columns (null where the key is null), computed with
    Arrow's hash-based is_in: linear in rows + keys however large the item master grows."""
    import pyarrow.compute as pc

    reference = reference or {}
    out = {}
    for col, field, ref in ((PARENT_IS_SOLD_TO, "parent_key", reference.get(f"{system}.sold_to")),
                            (SKU_IN_ITEM_MASTER, "sku", reference.get("item_master"))):
        if field in staged.column_names:
            values = staged.column(field)
            known = pc.is_in(values, value_set=pa.array(ref or [], pa.string()))
            out[col] = pc.if_else(pc.is_null(values), pa.scalar(None, pa.bool_()), known)
    return out


def _conditioned(staged: pa.Table, membership: dict[str, pa.Array]) -> dict[str, pa.Array]:
    """The clauses that hold for some rows only (a postal code by country, a ship-to's parent)
    as columns of their own, null where the clause does not apply, so GX skips those rows as it
    skips nulls. As row conditions, GX filtered the whole frame once per clause: eight copies of
    a million customers per system."""
    import pyarrow.compute as pc

    out = {}
    cols = staged.column_names
    if "country" in cols and "postal_code" in cols:
        for c in POSTAL:
            out[postal_code_in(c)] = pc.if_else(pc.equal(staged.column("country"), c), staged.column("postal_code"),
                                                pa.scalar(None, pa.string()))
    if "role" in cols:
        ship_to = pc.fill_null(pc.equal(staged.column("role"), "ship_to"), False)
        none = pa.scalar(None, pa.bool_())
        if "parent_key" in cols:
            out[SHIP_TO_HAS_PARENT] = pc.if_else(ship_to, pc.is_valid(staged.column("parent_key")), none)
        if PARENT_IS_SOLD_TO in membership:
            out[PARENT_IS_SOLD_TO] = pc.if_else(ship_to, membership[PARENT_IS_SOLD_TO], none)
    return out


def _columns_read(exps: list[Expectation], available: list[str]) -> list[str]:
    """The columns a contract reads: its clauses' columns, those their row conditions name, and
    the key the failing rows are reported by. A clause that names no column of its own (a table
    level one) or whose condition cannot be read as text gets every column."""
    import re

    names = {"source_key"}
    for e in exps:
        own = [v for v in (getattr(e.gx, a, None) for a in ("column", "column_A", "column_B")) if v]
        own += [v for a in ("column_list", "column_set") for v in (getattr(e.gx, a, None) or [])]
        if not own:
            return list(available)
        names.update(own)
        cond = getattr(e.gx, "row_condition", None)
        if cond:
            text = cond if isinstance(cond, str) else getattr(cond, "pass_through_filter", None)
            if not text:
                return list(available)
            names.update(n for n in available if re.search(rf"\b{re.escape(n)}\b", text))
    return [n for n in available if n in names]


def _frame(table: pa.Table, columns: list[str]):
    """The rows as pandas for GX, only `columns` (GX copies the whole frame for every clause, so
    each batch holds only what its clauses read), with decimals as float64 (range checks only need
    the sign and magnitude, and object columns of Decimals are slow)."""
    import pyarrow.compute as pc

    table = table.select(columns)
    return pa.table({f.name: pc.cast(table.column(f.name), pa.float64()) if pa.types.is_decimal(f.type)
                     else table.column(f.name) for f in table.schema}).to_pandas()


def _exception(info) -> str | None:
    """The message of an expectation that could not run (GX nests it per metric), else None."""
    if not info:
        return None
    if isinstance(info, dict) and "raised_exception" in info:
        return str(info.get("exception_message")) if info.get("raised_exception") else None
    if isinstance(info, dict):
        for v in info.values():
            msg = _exception(v) if isinstance(v, dict) else None
            if msg:
                return msg
    return None


class Severities:
    """Severity per expectation from config/contracts.yaml."""

    def __init__(self, path: str | Path | None):
        data = yaml.safe_load(Path(path).read_text()) if path and Path(path).exists() else {}
        self.default = data.get("default", "error")
        self.map = data.get("severity", {}) or {}
        for k, v in self.map.items():
            if v not in ("error", "warn"):
                raise ValueError(f"{path}: severity of {k} must be error or warn, not {v!r}")

    def of(self, system: str, entity: str, expectation_id: str) -> str:
        return self.map.get(f"{system}.{entity}.{expectation_id}",
                            self.map.get(f"{entity}.{expectation_id}", self.default))


COLLECT_AFTER_ROWS = 1_000_000  # rows a validation gives its memory back after, at once


def validate(system: str, entity: str, staged: pa.Table, config: Config, severities: Severities,
             reference: dict[str, list[str]] | None = None, *, rows_alone: bool = False) -> ContractResult:
    """Validate one system's canonical rows of one entity against its contract (`rows_alone`:
    see `expectations`)."""
    gx, _ = _gx()
    exps = expectations(system, entity, config, reference, rows_alone=rows_alone)
    from great_expectations.data_context.types.base import ProgressBarsConfig

    extra = _membership(staged, system, reference)
    extra.update(_conditioned(staged, extra))
    rows = pa.table({**{n: staged.column(n) for n in staged.column_names}, **extra})
    available = rows.column_names
    context = gx.get_context(mode="ephemeral")  # never a file-backed gx/ folder
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = context.data_sources.add_pandas("trueup")
    for i, e in enumerate(exps):  # results do not come back in suite order: tag each clause
        e.gx.meta = {"trueup_clause": i}
    # one batch per set of columns read: GX copies its whole frame for every clause (dropping the
    # clause column's nulls), so a clause about one column is given that column and the key only
    groups: dict[tuple[str, ...], list[Expectation]] = {}
    for e in exps:
        groups.setdefault(tuple(_columns_read([e], available)), []).append(e)
    results, batch, whole = [], None, None
    try:
        # one asset and batch definition, a batch of its own frame per group: GX writes its whole
        # project config out as YAML each time an asset or batch definition is added (a third of
        # a small validation's time with an asset per group)
        whole = source.add_dataframe_asset(f"{system}_{entity}").add_batch_definition_whole_dataframe("all")
        for n, (columns, group) in enumerate(groups.items()):
            batch = whole.get_batch(batch_parameters={"dataframe": _frame(rows, list(columns))})
            suite = gx.ExpectationSuite(name=f"{system}.{entity}.{n}", expectations=[e.gx for e in group])
            results += batch.validate(suite, result_format={"result_format": "COMPLETE",
                                                            "unexpected_index_column_names": ["source_key"]}).results
    finally:
        # GX keeps the context, and through its data source every batch's frame, until the next
        # get_context: in a process running step after step that was the last validation's
        # frames (0.8 GB of pandas after the large price book's, from one step to the next)
        try:
            context.data_sources.delete("trueup")
        except Exception as exc:  # noqa: BLE001 (memory only: never in place of the validation's own error)
            log.warning("could not drop GX's data source after validating %s.%s: %s", system, entity, exc)
    by_id: dict[str, ExpectationResult] = {}
    for res in results:
        exp = exps[res.expectation_config.meta["trueup_clause"]]
        keys = [str(r.get("source_key")) for r in (res.result or {}).get("unexpected_index_list") or []]
        exc = _exception(res.exception_info)
        raised = exc is not None
        r = by_id.setdefault(exp.id, ExpectationResult(exp.id, exp.field, severities.of(system, entity, exp.id),
                                                       True, 0))
        r.success = r.success and bool(res.success) and not raised
        r.unexpected_count += int((res.result or {}).get("unexpected_count") or 0)
        r.keys.extend(keys)
        if raised:
            r.error = exc[:300]
    for r in by_id.values():
        r.keys = sorted(set(r.keys))
    if rows.num_rows >= COLLECT_AFTER_ROWS:
        # GX's objects hold its frames in reference cycles, which Python's collector frees only
        # when it next happens to run: a large validation gives them back now, before the next
        # (staging the large price book: 5,155-5,175 -> 4,739-4,750 MiB peak standalone). Small
        # ones (a sync's change sets) skip it: a collection is ~0.25 s where the heap is not frozen
        del context, source, batch, whole
        gc.collect()
        pa.default_memory_pool().release_unused()
    return ContractResult(system, entity, staged.num_rows, list(by_id.values()))


def row_issues(domain: str, records: pa.Table, config: Config, severities: Severities) -> pa.Table:
    """The contract clauses a record answers by itself, run on some records of a domain (a sync's
    changed records and the counterparts it reads; each system's live ones): what fails at error
    severity is quarantined as in the nightly run, so the hourly sync never writes a value the
    nightly would hold (an email without a domain dot, a negative stock count, a price valid to
    before it is valid from). Not the clauses about other records (a ship-to's sold-to, a SKU in
    the item master): those are the nightly run's."""
    import pyarrow.compute as pc

    schema = DOMAINS[domain].schema
    live = records.filter(pc.invert(records.column("deleted"))) if "deleted" in records.column_names else records
    out = [ISSUE_SCHEMA.empty_table()]
    for system in pc.unique(live.column("source_system")).to_pylist():
        rows = live.filter(pc.equal(live.column("source_system"), system)).select(schema.names).cast(schema)
        out.append(validate(system, domain, rows, config, severities, rows_alone=True).issues(rows))
    return pa.concat_tables(out)
