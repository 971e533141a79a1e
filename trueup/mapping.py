"""From a system's own columns to the canonical model.

One DuckDB statement per extract does the whole mapping: code translation, text normalisation,
country and phone normalisation (joins against reference tables), type parsing with TRY_CAST, and
lineage columns. Values that cannot be read are not guessed: each one becomes an *issue* naming
the system, entity, key, field and column, and the row is held out of reconciliation.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.compute as pc

from trueup.config import EntityMap
from trueup.duck import connect, fetch, q, sql_type
from trueup.lookups import calling_codes, countries
from trueup.model import DOMAINS, Domain

ISSUE_SCHEMA = pa.schema(
    [
        pa.field("source_system", pa.string()),
        pa.field("entity", pa.string()),
        pa.field("source_key", pa.string()),
        pa.field("match_key", pa.string()),
        pa.field("field", pa.string()),
        pa.field("column", pa.string()),
        pa.field("problem", pa.string()),
        pa.field("severity", pa.string()),  # error: held out of reconciliation; warn: reported only
    ]
)


class SchemaDriftError(ValueError):
    """An extract that no longer has the columns its mapping reads."""

    def __init__(self, system: str, entity: str, missing: list[str], present: list[str]):
        self.system, self.entity, self.missing = system, entity, missing
        super().__init__(
            f"{system}.{entity}: mapped column(s) {missing} missing from the extract "
            f"(columns present: {present})"
        )


@dataclass
class Mapped:
    staged: pa.Table  # canonical rows, every row of the extract with a key
    issues: pa.Table  # one row per value that could not be read (ISSUE_SCHEMA)


def _typed(domain: Domain, field: str, v: str) -> str:
    """SQL that parses text/number `v` into the canonical type of `field` (NULL if unreadable)."""
    t = domain.type_of(field)
    # numbers are read as the system meant them or not at all: a cast alone rounds (12.7 units
    # -> 13, a price of 12.34567 -> 12.3457) and the guess would be written back as if a system had
    # said it. Only a binary float's noise is rounded away (0.1 + 0.2 stored as REAL, printed
    # 0.30000000000000004, is 0.3): a difference within 1e-12 of the value (a double's own error
    # is ~1e-16; 1e-9 let 10000000.00005 round at scale 4)
    if pa.types.is_decimal(t):
        text = f"NULLIF(trim(CAST({v} AS VARCHAR)), '')"
        kept, given = f"TRY_CAST({text} AS DECIMAL({t.precision},{t.scale}))", f"TRY_CAST({text} AS DOUBLE)"
        return (f"CASE WHEN abs({given} - CAST({kept} AS DOUBLE)) <= 1e-12 * greatest(1.0, abs({given})) "
                f"THEN {kept} END")
    if pa.types.is_integer(t):
        # plain digits by the cheap cast (measured on 5M values: 0.20 s, where the decimal test for
        # every value took 1.11 s); others (12.0) whole or nothing. A cast alone rounds: 12.7 -> 13
        text = f"NULLIF(trim(CAST({v} AS VARCHAR)), '')"
        d = f"TRY_CAST({text} AS DECIMAL(38,18))"
        return (f"CASE WHEN regexp_full_match({text}, '[+-]?[0-9]+') THEN TRY_CAST({text} AS BIGINT) "
                f"WHEN {d} = trunc({d}) THEN TRY_CAST({d} AS BIGINT) END")
    if pa.types.is_boolean(t):
        s = f"lower(trim(CAST({v} AS VARCHAR)))"
        return (f"CASE WHEN {s} IN ('1','true','t','y','yes') THEN TRUE "
                f"WHEN {s} IN ('0','false','f','n','no') THEN FALSE END")
    if pa.types.is_date(t):
        return f"TRY_CAST(NULLIF(trim(CAST({v} AS VARCHAR)), '') AS DATE)"
    if pa.types.is_timestamp(t):
        return _timestamp(v)
    return f"NULLIF(trim(CAST({v} AS VARCHAR)), '')"


def _native(domain: Domain, field: str, v: str, raw_type: pa.DataType) -> str | None:
    """SQL for `v` when the source already delivers the canonical type (a SQL driver's integers,
    decimals, timestamps): a cast, not a round trip through text. None when text is the way."""
    t = domain.type_of(field)
    if pa.types.is_decimal(t) and (pa.types.is_integer(raw_type) or pa.types.is_decimal(raw_type)):
        kept = f"TRY_CAST({v} AS DECIMAL({t.precision},{t.scale}))"
        return f"CASE WHEN {kept} = {v} THEN {kept} END"  # more decimals than kept: unreadable, not rounded
    if pa.types.is_decimal(t) and pa.types.is_floating(raw_type):
        # a REAL column: the same test as its text's (`_typed`) without printing and parsing each
        # double (5M ERP prices: 0.53 -> 0.05 s); only a binary float's noise is rounded away
        kept = f"TRY_CAST({v} AS DECIMAL({t.precision},{t.scale}))"
        return f"CASE WHEN abs({v} - CAST({kept} AS DOUBLE)) <= 1e-12 * greatest(1.0, abs({v})) THEN {kept} END"
    if pa.types.is_integer(t) and pa.types.is_integer(raw_type):
        return f"CAST({v} AS BIGINT)"
    if pa.types.is_timestamp(t) and pa.types.is_timestamp(raw_type):
        return f"CAST({v} AS TIMESTAMPTZ)"  # naive means UTC: the session's zone
    if pa.types.is_date(t) and pa.types.is_date(raw_type):
        return f"CAST({v} AS DATE)"
    if pa.types.is_boolean(t) and pa.types.is_boolean(raw_type):
        return v
    if pa.types.is_boolean(t) and pa.types.is_integer(raw_type):  # a 0/1 flag column; 2 is unreadable
        return f"CASE WHEN {v} = 1 THEN TRUE WHEN {v} = 0 THEN FALSE END"
    return None


def _problem(t: pa.DataType) -> str:
    """What an unreadable value of type `t` is called in the quarantine."""
    if pa.types.is_decimal(t):
        return f"not a valid decimal with at most {t.scale} decimals"
    if pa.types.is_integer(t):
        return "not a valid whole number"
    return f"not a valid {t}"


def _timestamp(v: str) -> str:
    # naive source timestamps are UTC by convention; aware ones keep their offset
    return f"TRY_CAST(NULLIF(trim(CAST({v} AS VARCHAR)), '') AS TIMESTAMPTZ)"


def to_canonical(
    raw: pa.Table,
    *,
    system: str,
    entity: str,
    mapping: EntityMap,
    extracted_at: datetime | None = None,
) -> Mapped:
    """Map one system's extract of one entity onto the canonical model."""
    domain = DOMAINS[entity]
    extracted_at = extracted_at or datetime.now(timezone.utc)
    needed = set(mapping.key_columns) | {f.column for f in mapping.fields.values()}
    if mapping.updated_at:
        needed.add(mapping.updated_at)
    missing = sorted(needed - set(raw.column_names))
    if missing:
        raise SchemaDriftError(system, entity, missing, raw.column_names)
    if raw.num_rows == 0:  # nothing to map (an incremental read that found no change): skip the SQL
        return Mapped(staged=domain.schema.empty_table(), issues=ISSUE_SCHEMA.empty_table())

    params: list = []

    def p(value) -> str:
        params.append(value)
        return f"${len(params)}"

    select, bad, phone_fields = [], {}, {}
    joins = []
    for field, fm in mapping.fields.items():
        src = f"src.{q(fm.column)}"
        if field == "match_key":
            select.append(f"NULLIF(trim(CAST({src} AS VARCHAR)), '') AS match_key")
            continue
        text = f"NULLIF(trim(CAST({src} AS VARCHAR)), '')"
        if fm.map:
            cases = " ".join(f"WHEN {p(k)} THEN {p(v)}" for k, v in fm.map.items())
            expr = f"CASE {text} {cases} END"
            bad[field] = (fm.column, f"({text} IS NOT NULL AND ({expr}) IS NULL)", "unknown code")
        elif fm.transform == "country_iso2":
            alias = f"cty_{len(joins)}"
            joins.append(f"LEFT JOIN countries AS {alias} ON {alias}.spelling = lower({text})")
            expr = f"{alias}.alpha2"
            bad[field] = (fm.column, f"({text} IS NOT NULL AND {expr} IS NULL)", "unknown country")
        elif fm.transform == "phone_e164":
            phone_fields[field] = fm.column
            select.append(f"{text} AS {q('__phone_' + field)}")
            # the digits once per row (without an extension), not once per use below
            select.append(f"regexp_replace(regexp_replace({text}, '\\s*(x|ext\\.?)\\s*[0-9]+$', '', 'i'), "
                          f"'[^0-9]', '', 'g') AS {q('__digits_' + field)}")
            continue
        else:
            native = None
            if fm.transform == "upper":
                text = f"upper({text})"
            elif fm.transform == "lower":
                text = f"lower({text})"
            elif fm.transform == "trim":
                text = f"NULLIF(regexp_replace({text}, '\\s+', ' ', 'g'), '')"
            else:
                native = _native(domain, field, src, raw.schema.field(fm.column).type)
            expr = native or _typed(domain, field, text)
            if not pa.types.is_string(domain.type_of(field)):
                given = f"{src} IS NOT NULL" if native else f"{text} IS NOT NULL"
                bad[field] = (fm.column, f"({given} AND ({expr}) IS NULL)", _problem(domain.type_of(field)))
        select.append(f"{expr} AS {q(field)}")
    for field, (_, cond, _) in bad.items():
        select.append(f"{cond} AS {q('__bad_' + field)}")

    key_cols = mapping.key_columns
    key_expr = "concat_ws('|', " + ", ".join(f"trim(CAST(src.{q(k)} AS VARCHAR))" for k in key_cols) + ")"
    null_key = " OR ".join(f"NULLIF(trim(CAST(src.{q(k)} AS VARCHAR)), '') IS NULL" for k in key_cols)
    updated = "NULL::TIMESTAMPTZ"
    if mapping.updated_at:
        col = f"src.{q(mapping.updated_at)}"
        updated = (f"CAST({col} AS TIMESTAMPTZ)" if pa.types.is_timestamp(raw.schema.field(mapping.updated_at).type)
                   else _timestamp(col))

    con = connect()
    con.register("src_raw", raw)
    con.register("countries", countries())
    con.register("calling_codes", calling_codes())
    stage_a = (
        f"SELECT CASE WHEN {null_key} THEN NULL ELSE {key_expr} END AS source_key, "
        f"{updated} AS source_updated_at, " + ", ".join(select) +
        " FROM src_raw AS src " + " ".join(joins)
    )
    # phone numbers need the row's (already normalised) country for their calling code
    phone_select = []
    for field in phone_fields:
        raw_col, digits = f"a.{q('__phone_' + field)}", f"a.{q('__digits_' + field)}"
        e164 = (
            f"CASE WHEN {raw_col} IS NULL THEN NULL "
            f"WHEN {raw_col} LIKE '+%' THEN '+' || {digits} "
            f"WHEN {digits} LIKE '00%' THEN '+' || substr({digits}, 3) "
            f"WHEN cc.calling_code = '1' AND length({digits}) = 11 AND {digits} LIKE '1%' THEN '+' || {digits} "
            f"WHEN cc.calling_code IS NOT NULL THEN '+' || cc.calling_code || ltrim({digits}, '0') END"
        )
        phone_select.append(f"{e164} AS {q(field)}")
        bad[field] = (phone_fields[field], None, "not a phone number that can be written as E.164")
    country_ref = "a.country" if "country" in mapping.fields else "NULL"
    key_fields = list(domain.natural_key)
    match_expr = (
        "CASE WHEN " + " OR ".join(f"a.{q(k)} IS NULL" for k in key_fields) + " THEN NULL ELSE "
        "concat_ws('|', " + ", ".join(f"CAST(a.{q(k)} AS VARCHAR)" for k in key_fields) + ") END"
        if key_fields else "a.match_key"
    )
    out_cols = [f"a.{q(f)}" if f in mapping.fields and f not in phone_fields else
                (f"NULL::{_sql_type(domain, f)} AS {q(f)}" if f not in phone_fields else q(f))
                for f in domain.field_names]
    bad_cols = [f"b.{q('__bad_' + f)}" if f not in phone_fields else
                f"(b.{q('__phone_' + f)} IS NOT NULL AND NOT coalesce(regexp_full_match(b.{q(f)}, "
                f"'\\+[1-9][0-9]{{6,14}}'), FALSE)) AS {q('__bad_' + f)}" for f in bad]
    sql = (
        f"WITH a AS ({stage_a}), b AS (SELECT a.*" + ("".join(", " + x for x in phone_select))
        + " FROM a "
        + (f"LEFT JOIN calling_codes AS cc ON cc.alpha2 = {country_ref}" if phone_select else "")
        + f") SELECT {p(system)} AS source_system, b.source_key, "
        + match_expr.replace("a.", "b.") + " AS match_key, "
        + f"{p(extracted_at)}::TIMESTAMPTZ AS extracted_at, b.source_updated_at, "
        + ", ".join(c.replace("a.", "b.") for c in out_cols)
        + (", " + ", ".join(bad_cols) if bad else "")
        + " FROM b"
    )
    table = fetch(con, sql, params)

    # issues: unreadable values, rows without a key, keys that occur more than once
    con.register("mapped", table)
    parts = []
    for field, (column, _, problem) in bad.items():
        parts.append(
            f"SELECT source_key, match_key, '{field}' AS field, '{column}' AS \"column\", "
            f"'{problem}' AS problem FROM mapped WHERE {q('__bad_' + field)}"
        )
    parts.append("SELECT source_key, match_key, NULL, NULL, 'no key' FROM mapped WHERE source_key IS NULL")
    # a hash aggregate of the key alone: a window over every column cost more than the mapping
    parts.append(
        "SELECT m.source_key, m.match_key, NULL, NULL, 'duplicate key (' || d.n || ' rows)' "
        "FROM mapped m JOIN (SELECT source_key, count(*) AS n FROM mapped WHERE source_key IS NOT NULL "
        "GROUP BY source_key HAVING count(*) > 1) d ON d.source_key = m.source_key"
    )
    issues = fetch(
        con,
        "SELECT ? AS source_system, ? AS entity, coalesce(source_key, '<no key>') AS source_key, "
        "match_key, field, \"column\", problem, 'error' AS severity FROM ("
        + " UNION ALL ".join(parts) + ")",
        [system, entity],
    )
    con.close()
    # in Arrow, not another query: a copy of every row only where some key is missing
    staged = table.drop_columns(["__bad_" + f for f in bad])
    if staged.column("source_key").null_count:
        staged = staged.filter(pc.is_valid(staged.column("source_key")))
    return Mapped(staged=staged.cast(domain.schema), issues=issues.cast(ISSUE_SCHEMA))


def _sql_type(domain: Domain, field: str) -> str:
    return sql_type(domain.type_of(field))
