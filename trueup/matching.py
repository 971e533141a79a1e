"""Probabilistic matching of customers and products whose cross-reference is missing or wrong.

Keyed records cluster on their match key (`reconcile.match`). This module finds the anchor record
(in the anchor system, the ERP) for the records that have no usable key, and checks the keys the
cross-reference system (the CRM) carries:

- normalise: legal forms (Inc, LLC, GmbH, Ltd...), punctuation, case, accents, address
  abbreviations (Street -> st, Suite -> ste, Straße -> str), postal codes; phones arrive in E.164
  from mapping. All in DuckDB SQL, column at a time.
- block: candidate pairs only where a blocking key agrees (the claimed key, the parent sold-to,
  country + postal code, phone, email, tax id, country + a not-too-common name token; for products
  GTIN, MPN, description), so the cost grows with the records, not with their square.
- score: string similarity with rapidfuzz over all candidate pairs at once (`cpdist`, multi-
  threaded, no Python loop), then evidence points per field, turned into a confidence.
- decide: >= `accept` -> accepted (drives clustering and so corrections); >= `review` -> the review
  queue (a person confirms or rejects; decisions persist and win on every later run); below ->
  unmatched. A near tie between two anchors is never accepted.
- check keys: a CRM record whose ERP number points at a record that does not look like it, while
  another ERP record does, is a broken cross-reference: an exception with the evidence, the record
  held out of corrections, its key never rewritten on a guess. A second record of the same system
  matching an anchor that already has one is a duplicate account: reported and held too. A keyed
  record is scored against its claimed anchor first; only a claim in doubt is compared with the
  rest of its block (a million carried keys cost a million comparisons, not six).

Results persist as the links table: a probe whose matching fields did not change since the run
that decided it keeps that decision without being scored again (incremental runs).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from rapidfuzz import fuzz
from rapidfuzz.process import cpdist

from trueup.duck import connect, fetch, query

LINK_SCHEMA = pa.schema([
    pa.field("domain", pa.string()),
    pa.field("source_system", pa.string()),
    pa.field("source_key", pa.string()),
    pa.field("anchor_system", pa.string()),
    pa.field("anchor_key", pa.string()),  # the anchor's match key: what the probe clusters on
    pa.field("confidence", pa.float64()),
    pa.field("status", pa.string()),  # accepted | confirmed | review | unmatched
    pa.field("reason", pa.string()),  # which fields agreed, with their scores (no values: no PII)
    pa.field("fingerprint", pa.string()),  # the probe's normalised matching fields, hashed
    pa.field("decided_at", pa.timestamp("us", tz="UTC")),
])
EXCEPTION_SCHEMA = pa.schema([
    pa.field("domain", pa.string()),
    pa.field("kind", pa.string()),  # xref_wrong | xref_doubtful | duplicate_account
    pa.field("source_system", pa.string()),
    pa.field("source_key", pa.string()),
    pa.field("claimed_key", pa.string()),  # the key the record carries (or the anchor it duplicates)
    pa.field("suggested_key", pa.string()),  # the anchor the evidence points at, for a person to confirm
    pa.field("claimed_confidence", pa.float64()),
    pa.field("suggested_confidence", pa.float64()),
    pa.field("evidence", pa.string()),
])
DECISION_SCHEMA = pa.schema([
    pa.field("domain", pa.string()),
    pa.field("source_system", pa.string()),
    pa.field("source_key", pa.string()),
    pa.field("anchor_key", pa.string()),
    pa.field("decision", pa.string()),  # confirm | reject
    pa.field("decided_by", pa.string()),
    pa.field("decided_at", pa.timestamp("us", tz="UTC")),
])
MATCHED_DOMAINS = ("customer", "product")
# a scored candidate pair, with the probe's fingerprint (see `resolve(scored_before=)`)
_SCORED_SCHEMA = pa.schema([
    pa.field("source_system", pa.string()),
    pa.field("source_key", pa.string()),
    pa.field("claimed", pa.string()),
    pa.field("keyed", pa.bool_()),
    pa.field("fingerprint", pa.string()),
    pa.field("anchor_key", pa.string()),
    pa.field("points", pa.float64()),
    pa.field("confidence", pa.float64()),
    pa.field("reason", pa.string()),
    pa.field("is_claimed", pa.bool_()),
])


@dataclass(frozen=True)
class Thresholds:
    """Confidence bands. confidence = logistic(points - midpoint)."""

    accept: float = 0.90
    review: float = 0.40
    tie_points: float = 1.5  # a runner-up this close (in points) makes the best one a review case
    midpoint: float = 4.5
    max_token_block: int = 50  # a name token more frequent among anchors than this does not block
    max_block: int = 50  # no blocking key pairs a probe with more anchors than this (see _blocking_sql)
    one_to_one: bool = True  # a second probe of one system on the same anchor is a duplicate account


@dataclass
class Resolution:
    links: pa.Table  # one row per probe (LINK_SCHEMA)
    exceptions: pa.Table  # EXCEPTION_SCHEMA
    comparisons: int  # candidate pairs scored this run
    reused: int  # probes whose earlier decision was reused without scoring
    scored: pa.Table | None = None  # every scored pair (resolve(keep_scored=True)), for a second pass

    def link_keys(self) -> pa.Table:
        """(source_system, source_key, link_key) for the links that drive clustering."""
        ok = self.links.filter(pc.is_in(self.links.column("status"), pa.array(["accepted", "confirmed"])))
        return pa.table({"source_system": ok.column("source_system"), "source_key": ok.column("source_key"),
                         "link_key": ok.column("anchor_key")})

    def held(self) -> pa.Table:
        """Records set apart from corrections: exceptions, and unkeyed records awaiting review."""
        rev = self.links.filter(pc.equal(self.links.column("status"), "review"))
        return pa.table({
            "source_system": pa.concat_arrays([self.exceptions.column("source_system").combine_chunks(),
                                               rev.column("source_system").combine_chunks()]),
            "source_key": pa.concat_arrays([self.exceptions.column("source_key").combine_chunks(),
                                            rev.column("source_key").combine_chunks()]),
        })

    def review_queue(self) -> pa.Table:
        return self.links.filter(pc.equal(self.links.column("status"), "review"))


def persisted(links: pa.Table | None, exceptions: pa.Table | None) -> tuple[pa.Table | None, pa.Table | None]:
    """(link keys, records set apart) from what the last full run persisted (`state/match_links`,
    `match_exceptions/<domain>`), for a run that does not match again (the incremental sync): a
    record the nightly linked clusters on its link, one it set apart stays apart."""
    if links is None and exceptions is None:
        return None, None
    res = Resolution(links if links is not None else LINK_SCHEMA.empty_table(),
                     exceptions if exceptions is not None else EXCEPTION_SCHEMA.empty_table(), 0, 0)
    return res.link_keys(), res.held()


# ------------------------------------------------------------------ normalisation

LEGAL_FORMS = ["inc", "incorporated", "llc", "l l c", "ltd", "limited", "gmbh", "co", "corp", "corporation",
               "company", "plc", "ag", "sa", "srl", "bv", "kg", "the", "and"]
ADDRESS_WORDS = {"street": "st", "avenue": "ave", "av": "ave", "road": "rd", "drive": "dr", "boulevard": "blvd",
                 "parkway": "pkwy", "lane": "ln", "court": "ct", "place": "pl", "highway": "hwy",
                 "suite": "ste", "apartment": "apt", "building": "bldg", "floor": "fl", "north": "n",
                 "south": "s", "east": "e", "west": "w", "strasse": "str", "square": "sq", "way": "wy"}


def _clean(expr: str) -> str:
    """SQL: lower case, no accents, ß -> ss, & -> and, punctuation -> space."""
    return (f"regexp_replace(strip_accents(replace(replace(lower(coalesce({expr}, '')), 'ß', 'ss'), '&', ' and ')),"
            f" '[^a-z0-9]+', ' ', 'g')")


def _squash(expr: str) -> str:
    return f"nullif(trim(regexp_replace({expr}, '\\s+', ' ', 'g')), '')"


def _name_sql(expr: str) -> str:
    legal = "|".join(w.replace(" ", "\\s") for w in LEGAL_FORMS)
    return _squash(f"regexp_replace({_clean(expr)}, '\\b({legal})\\b', ' ', 'g')")


def _address_sql(expr: str) -> str:
    x = _clean(expr)
    x = f"regexp_replace({x}, '([a-z])strasse\\b', '\\1 str', 'g')"  # Hauptstrasse -> haupt str
    # word by word in one pass (no short form is itself a long form, so the order does not matter)
    words = " ".join(f"WHEN '{long}' THEN '{short}'" for long, short in ADDRESS_WORDS.items())
    x = f"array_to_string(list_transform(string_split({x}, ' '), lambda w: CASE w {words} ELSE w END), ' ')"
    return _squash(x)


def _with_positions(t: pa.Table) -> pa.Table:
    """`t` with each row's position as `_pos`: numbered in Arrow, because `row_number() OVER ()`
    would make DuckDB evaluate the whole normalising projection on one thread."""
    return t.append_column("_pos", pa.array(np.arange(t.num_rows), pa.int64()))


def matchable(staged: pa.Table, anchor: str, xref: str | None) -> pa.Array:
    """Which records matching looks at: the anchor system's, the cross-reference system's (their
    keys are checked) and every record whose key names no anchor record. A record keyed to an
    anchor record is neither anchor nor probe and needs no normalising: at the large size nearly
    all of the 3PL's million ship-tos."""
    system = staged.column("source_system")
    keys = pc.unique(pc.filter(staged.column("match_key"), pc.equal(system, anchor)).drop_null())
    keyed = pc.fill_null(pc.is_in(staged.column("match_key"), value_set=keys), False)
    wanted = pc.or_(pc.invert(keyed), pc.is_in(system, value_set=pa.array([anchor] + ([xref] if xref else []))))
    return pc.fill_null(wanted, True)


def _input(t: pa.Table, only: pa.Array | None) -> tuple[pa.Table, str]:
    """`t` numbered (`_pos`), and the SQL filter to the rows `only` marks (the filter in DuckDB's
    scan: filtering the table in Arrow first copied every column of 3.4M customers)."""
    t = _with_positions(t)
    if only is None:
        return t, ""
    return t.append_column("_only", only), "WHERE _only"


def normalise_customers(t: pa.Table, only: pa.Array | None = None) -> pa.Table:
    """The matching view of customer records: one row per input row (per row `only` marks), `rid`
    its position in `t`."""
    con = connect()
    t, where = _input(t, only)
    con.register("t", t)
    # the house number narrows a crowded postal code or parent for blocking
    out = fetch(con, f"""
        SELECT *, nullif(regexp_extract(addr_n, '[0-9]+'), '') AS house_no FROM (
        SELECT _pos AS rid, source_system, source_key, match_key,
               {"parent_key" if "parent_key" in t.column_names else "NULL"} AS parent_key,
               {"role" if "role" in t.column_names else "NULL"} AS role,
               upper(trim(country)) AS country,
               {_name_sql("name")} AS name_n,
               {_address_sql("address_line1")} AS addr_n,
               nullif(regexp_replace(coalesce({_address_sql("address_line2")}, ''),
                                     '\\b(ste|apt|unit|fl|bldg|no)\\b|[^0-9a-z]', '', 'g'), '') AS suite_n,
               nullif(regexp_replace(upper(coalesce(postal_code, '')), '[^0-9A-Z]', '', 'g'), '') AS postal_n,
               {_squash(_clean("city"))} AS city_n,
               nullif(trim(phone), '') AS phone,
               nullif(lower(trim(email)), '') AS email,
               nullif(upper(regexp_replace(coalesce(tax_id, ''), '[^0-9A-Za-z]', '', 'g')), '') AS tax_id
        FROM t {where})""")
    con.close()
    return out


def normalise_products(t: pa.Table, only: pa.Array | None = None) -> pa.Table:
    con = connect()
    t, where = _input(t, only)
    con.register("t", t)
    out = fetch(con, f"""
        SELECT _pos AS rid, source_system, source_key, match_key,
               NULL::VARCHAR AS parent_key, NULL::VARCHAR AS role,
               nullif(ltrim(regexp_replace(coalesce(gtin, ''), '[^0-9]', '', 'g'), '0'), '') AS gtin,
               nullif(upper(regexp_replace(coalesce(mpn, ''), '[^0-9A-Za-z]', '', 'g')), '') AS mpn,
               {_squash(_clean("description"))} AS desc_n,
               base_uom AS uom, CAST(case_qty AS BIGINT) AS case_qty, CAST(weight_kg AS DOUBLE) AS weight,
               lower(category) AS category
        FROM t {where}""")
    con.close()
    return out


def _normalise(domain: str, staged: pa.Table, only: pa.Array | None = None) -> pa.Table:
    return (normalise_products if domain == "product" else normalise_customers)(staged, only)


# ------------------------------------------------------------------ blocking

def _blocking_sql(domain: str, th: Thresholds) -> list[str]:
    """One SELECT p.rid AS p, a.rid AS a per blocking pass, over views `probes` and `anchors`.

    No block may pair a probe with more than `max_block` anchors: a key shared that widely (a
    postal code, a sold-to's ship-tos, a head office's phone) would compare every probe in it with
    every anchor in it (the large landscape's 1,068 postal codes alone made 1.6 billion pairs).
    Where a postal code or a parent is that crowded, it blocks together with the house number."""
    cap = int(th.max_block)

    def block(on: list[str], probe_cols: list[str] | None = None) -> str:
        """Probes and anchors equal on `on` (the probe's own column names in `probe_cols`), in
        blocks of at most `cap` anchors."""
        pc_ = probe_cols or on
        cols = ", ".join(on)
        keys = " AND ".join(f"a.{a} = p.{b}" for a, b in zip(on, pc_))
        return (f"SELECT p.rid AS p, a.rid AS a FROM probes p JOIN anchors a ON {keys} "
                f"WHERE ({', '.join('a.' + c for c in on)}) IN (SELECT ({cols}) FROM anchors "
                f"WHERE {' AND '.join(c + ' IS NOT NULL' for c in on)} GROUP BY ALL HAVING count(*) <= {cap})")

    if domain == "product":
        return [block(["match_key"]), block(["gtin"]), block(["mpn"]), block(["desc_n"])]
    return [
        # the key the record claims (checked, never trusted blindly)
        block(["match_key"]),
        # hierarchy: a ship-to among the ship-tos of its (matched) sold-to
        block(["parent_key"], ["parent_anchor"]),
        block(["parent_key", "house_no"], ["parent_anchor", "house_no"]),
        block(["country", "postal_n"]),
        block(["country", "postal_n", "house_no"]),
        block(["phone"]),
        block(["email"]),
        block(["tax_id"]),
        f"""SELECT ptk.rid, atk.rid FROM probe_tokens ptk JOIN anchor_tokens atk USING (country, tok)
            WHERE atk.tok IN (SELECT tok FROM anchor_tokens GROUP BY tok HAVING count(*) <= {int(th.max_token_block)})""",
    ]


def candidate_pairs(domain: str, probes: pa.Table, anchors: pa.Table, th: Thresholds) -> pa.Table:
    """Distinct (p, a) row-id pairs that share at least one blocking key."""
    con = connect()
    con.register("probes", probes)
    con.register("anchors", anchors)
    if domain == "customer":
        for name in ("probe", "anchor"):
            con.execute(f"""CREATE TEMP TABLE {name}_tokens AS
                SELECT DISTINCT rid, country, tok FROM (
                    SELECT rid, country, unnest(string_split(name_n, ' ')) AS tok FROM {name}s)
                WHERE length(tok) >= 3""")
    sql = " UNION ".join(_blocking_sql(domain, th))
    pairs = fetch(con, f"SELECT p, a FROM ({sql}) ORDER BY p, a")
    con.close()
    return pairs


# ------------------------------------------------------------------ scoring

def _col(t: pa.Table, name: str, idx: np.ndarray) -> pa.Array:
    """The column's values for the given row ids (Arrow: no Python objects until rapidfuzz needs them)."""
    return pc.take(t.column(name), pa.array(idx, pa.int64())).combine_chunks()


def _both(a: pa.Array, b: pa.Array) -> pa.Array:
    return pc.and_(pc.is_valid(a), pc.is_valid(b))


def _sim(scorer, a: pa.Array, b: pa.Array) -> np.ndarray:
    """Similarity 0..100 of aligned pairs, NaN where either side is missing."""
    both = _both(a, b)
    out = np.full(len(a), np.nan)
    sel = np.flatnonzero(both.to_numpy(zero_copy_only=False))
    if len(sel):
        out[sel] = cpdist(pc.filter(a, both).to_numpy(zero_copy_only=False),
                          pc.filter(b, both).to_numpy(zero_copy_only=False), scorer=scorer, workers=-1)
    return out


def _eq(a: pa.Array, b: pa.Array) -> np.ndarray:
    """+1 equal, -1 different, 0 where either side is missing."""
    e = pc.equal(a, b)
    return pc.fill_null(pc.if_else(e, 1.0, -1.0), 0.0).to_numpy(zero_copy_only=False).copy()


def _eq_near(a: pa.Array, b: pa.Array, near: float = 80) -> np.ndarray:
    """Like `_eq`, with 0.5 where the values differ by a keystroke or two (similarity >= near):
    a typo in a tax id or a postal code is weak agreement, not evidence against."""
    eq = _eq(a, b)
    diff = np.flatnonzero(eq < 0)
    if len(diff):
        idx = pa.array(diff, pa.int64())
        close = cpdist(pc.take(a, idx).to_numpy(zero_copy_only=False), pc.take(b, idx).to_numpy(zero_copy_only=False),
                       scorer=fuzz.ratio, workers=-1) >= near
        eq[diff[close]] = 0.5
    return eq


def _bands(s: np.ndarray, bands: list[tuple[float, float]], below: float) -> np.ndarray:
    """Points for a similarity by band (highest first); 0 where it is missing."""
    pts = np.full(len(s), below)
    for lo, p in reversed(bands):
        pts = np.where(s >= lo, p, pts)
    return np.where(np.isnan(s), 0.0, pts)


def score_customers(probes: pa.Table, anchors: pa.Table, p: np.ndarray, a: np.ndarray) -> dict[str, np.ndarray]:
    """Evidence per candidate pair: field scores and the points they add up to."""
    f = {}
    pn, an = _col(probes, "name_n", p), _col(anchors, "name_n", a)
    f["name"] = np.fmax(_sim(fuzz.token_sort_ratio, pn, an), _sim(fuzz.token_set_ratio, pn, an) - 5)
    f["street"] = _sim(fuzz.ratio, _col(probes, "addr_n", p), _col(anchors, "addr_n", a))
    for k in ("phone", "email", "role"):
        f[k] = _eq(_col(probes, k, p), _col(anchors, k, a))
    for k in ("suite_n", "postal_n", "city_n", "tax_id"):
        f[k] = _eq_near(_col(probes, k, p), _col(anchors, k, a))
    f["parent"] = _eq(_col(probes, "parent_anchor", p), _col(anchors, "parent_key", a))
    pts = (_bands(f["name"], [(92, 3.0), (85, 2.0), (75, 1.0), (60, 0.0)], -3.0)
           + _bands(f["street"], [(92, 2.5), (80, 1.0)], -1.5)
           + np.select([f["suite_n"] == 1, f["suite_n"] < 0], [0.5, -0.5], 0)
           + np.select([f["postal_n"] == 1, f["postal_n"] == 0.5, f["postal_n"] < 0], [1.0, 0.25, -0.5], 0)
           + np.select([f["city_n"] == 1, f["city_n"] == 0.5, f["city_n"] < 0], [0.5, 0.25, -1.0], 0)
           + np.select([f["phone"] > 0, f["phone"] < 0], [3.0, -0.5], 0)
           + np.select([f["email"] > 0, f["email"] < 0], [3.0, -0.5], 0)
           + np.select([f["tax_id"] == 1, f["tax_id"] == 0.5, f["tax_id"] < 0], [5.0, 2.0, -2.0], 0)
           + np.select([f["role"] > 0, f["role"] < 0], [0.5, -2.0], 0)
           + np.select([f["parent"] > 0, f["parent"] < 0], [1.5, -3.0], 0))
    f["points"] = pts
    return f


def score_products(probes: pa.Table, anchors: pa.Table, p: np.ndarray, a: np.ndarray) -> dict[str, np.ndarray]:
    f = {}
    for k in ("gtin", "mpn", "uom", "category", "case_qty"):
        f[k] = _eq(_col(probes, k, p), _col(anchors, k, a))
    f["description"] = _sim(fuzz.token_sort_ratio, _col(probes, "desc_n", p), _col(anchors, "desc_n", a))
    wp = _col(probes, "weight", p).to_numpy(zero_copy_only=False).astype(float)
    wa = _col(anchors, "weight", a).to_numpy(zero_copy_only=False).astype(float)
    rel = np.abs(wp - wa) / np.maximum(np.abs(wa), 1e-9)
    f["weight"] = np.where(np.isnan(rel), np.nan, np.round(100 * np.clip(1 - rel, 0, 1), 1))
    pts = (np.select([f["gtin"] > 0, f["gtin"] < 0], [10.0, -6.0], 0)
           + np.select([f["mpn"] > 0, f["mpn"] < 0], [8.0, -3.0], 0)
           + _bands(f["description"], [(95, 3.0), (85, 1.5), (70, 0.0)], -2.0)
           + np.select([f["case_qty"] > 0, f["case_qty"] < 0], [1.0, -1.0], 0)
           + _bands(f["weight"], [(99, 3.0), (95, 1.0)], -2.0)
           + np.select([f["uom"] > 0, f["uom"] < 0], [0.5, -1.0], 0)
           + np.select([f["category"] > 0, f["category"] < 0], [0.5, -1.0], 0))
    f["points"] = pts
    return f


def score_pairs(domain: str, probes: pa.Table, anchors: pa.Table, pairs: pa.Table,
                th: Thresholds, chunk: int = 2_000_000) -> pa.Table:
    """(p, a, points, confidence, reason) for every candidate pair, in chunks to bound memory."""
    scorer = score_products if domain == "product" else score_customers
    out = []
    P, A = pairs.column("p").to_numpy(), pairs.column("a").to_numpy()
    for lo in range(0, len(P), chunk):
        p, a = P[lo:lo + chunk], A[lo:lo + chunk]
        f = scorer(probes, anchors, p, a)
        cols = {"p": p, "a": a, "points": f.pop("points")}
        cols.update({f"f_{k}": v for k, v in f.items()})
        out.append(pa.table(cols))
    if not out:
        return pa.table({"p": pa.array([], pa.int64()), "a": pa.array([], pa.int64()),
                         "points": pa.array([], pa.float64()), "confidence": pa.array([], pa.float64())})
    t = pa.concat_tables(out)
    conf = 1.0 / (1.0 + np.exp(-(t.column("points").to_numpy() - th.midpoint)))
    return t.append_column("confidence", pa.array(conf))


def _score_probes(domain: str, probes: pa.Table, anchors: pa.Table, th: Thresholds) -> pa.Table:
    """`score_pairs` over the candidate pairs of `probes` (row ids = positions), where a keyed
    probe whose claimed anchor scores at least `review` is scored against that anchor only.

    A keyed record's other candidates matter only when its key is in doubt (`_key_checks`), so
    the cross-reference system's million keyed records cost one comparison each, not their
    whole blocks, and the few in doubt are compared with every candidate."""
    keyed = probes.filter(probes.column("keyed"))
    if not keyed.num_rows:
        return score_pairs(domain, probes, anchors, candidate_pairs(domain, probes, anchors, th), th)
    con = connect()
    con.register("probes", keyed)
    con.register("anchors", anchors)
    claims = fetch(con, f"SELECT p, a FROM ({_blocking_sql(domain, th)[0]}) ORDER BY p, a")
    con.close()
    claimed = score_pairs(domain, probes, anchors, claims, th)
    # settled: every claimed pair of the probe (a key shared by two anchors has two) is plausible
    by_probe = claimed.group_by("p").aggregate([("confidence", "min")])
    settled = by_probe.filter(pc.greater_equal(by_probe.column("confidence_min"), th.review)).column("p")
    rest = probes.filter(pc.invert(pc.is_in(probes.column("rid"), settled)))
    scored = score_pairs(domain, probes, anchors, candidate_pairs(domain, rest, anchors, th), th)
    return pa.concat_tables([claimed.filter(pc.is_in(claimed.column("p"), settled)), scored],
                            promote_options="default")  # either may be empty (no f_ columns)


def _reason_sql(t: pa.Table) -> str:
    """SQL building a reason such as 'name 96; street 100; postal_n =; phone =; email ≠'."""
    parts = []
    for c in t.column_names:
        if not c.startswith("f_"):
            continue
        k = c[2:].removesuffix("_n")
        if k in ("name", "street", "description", "weight"):
            parts.append(f"CASE WHEN isnan({c}) THEN NULL ELSE '{k} ' || CAST(round({c}) AS INTEGER) END")
        else:
            parts.append(f"CASE {c} WHEN 1 THEN '{k} =' WHEN 0.5 THEN '{k} ≈' WHEN -1 THEN '{k} ≠' END")
    return "concat_ws('; ', " + ", ".join(parts) + ")"


# ------------------------------------------------------------------ resolution

def _fingerprint_sql(domain: str) -> str:
    cols = (["gtin", "mpn", "desc_n", "uom", "case_qty", "weight", "category"] if domain == "product" else
            ["role", "country", "name_n", "addr_n", "suite_n", "postal_n", "city_n", "phone", "email", "tax_id",
             "parent_anchor", "match_key"])
    return "md5(concat_ws('|', " + ", ".join(f"coalesce(CAST({c} AS VARCHAR), '∅')" for c in cols) + "))"


def resolve(domain: str, staged: pa.Table, anchor_system: str, *, xref_system: str | None = None,
            previous: pa.Table | None = None, decisions: pa.Table | None = None,
            thresholds: Thresholds | None = None, now: datetime | None = None,
            normalised: pa.Table | None = None, scored_before: pa.Table | None = None,
            keep_scored: bool = False) -> Resolution:
    """Match the records of `staged` that lack a usable key to the anchor system's records.

    Probes: records of other systems whose match key is missing or names no anchor record, and
    (for the cross-reference system) every keyed record, so its key is checked. `previous` is the
    last run's links (reused where the probe did not change); `decisions` the review decisions.
    `normalised`: `staged`'s `matchable` records already normalised (a second pass over the same records).
    `scored_before`: an earlier pass's `Resolution.scored` over the same records, anchors and
    decisions: a probe whose fingerprint it already holds keeps those scores instead of being
    scored again (its candidates and scores depend only on its own fields and the anchors).
    `keep_scored`: return the scored pairs too (`Resolution.scored`), for such a second pass.
    """
    th = thresholds or Thresholds()
    now = now or datetime.now(timezone.utc)
    norm = normalised if normalised is not None else \
        _normalise(domain, staged, matchable(staged, anchor_system, xref_system))
    con = connect()
    con.register("n", norm)
    con.register("keys", staged.select(["source_system", "source_key", "match_key"]))
    con.register("prev", previous if previous is not None else LINK_SCHEMA.empty_table())
    con.register("dec", decisions if decisions is not None else DECISION_SCHEMA.empty_table())
    # a record's parent in anchor terms: the parent's own key where it names an anchor record, else
    # the parent's accepted link (from the previous pass or run): a ship-to is matched within its sold-to.
    # One working copy (n3), dropped once anchors and probes are taken from it: at the large size
    # a copy of the 3.4M customers is ~1 GB of DuckDB's memory
    con.execute(f"""CREATE TEMP TABLE n3 AS SELECT *, {_fingerprint_sql(domain)} AS fingerprint FROM (
        SELECT n.*, CASE WHEN n.source_system = $1 THEN n.parent_key
                         ELSE coalesce(par.match_key, pl.anchor_key) END AS parent_anchor
        FROM n LEFT JOIN (SELECT source_system, source_key, match_key FROM keys
                          WHERE match_key IN (SELECT match_key FROM n WHERE source_system = $1)) par
          ON par.source_system = n.source_system AND par.source_key = n.parent_key
        LEFT JOIN (SELECT source_system, source_key, any_value(anchor_key) AS anchor_key FROM prev
                   WHERE domain = $2 AND status IN ('accepted', 'confirmed') GROUP BY ALL) pl
          ON pl.source_system = n.source_system AND pl.source_key = n.parent_key)""", [anchor_system, domain])
    anchors = fetch(con, "SELECT * FROM n3 WHERE source_system = $1 ORDER BY rid", [anchor_system])
    con.register("anchor_keys", pa.table({"k": pc.unique(anchors.column("match_key").drop_null()).cast(pa.string())}))
    all_probes = fetch(con, """
        SELECT n3.*, (match_key IS NOT NULL AND match_key IN (SELECT k FROM anchor_keys)) AS keyed
        FROM n3 WHERE source_system <> $1
          AND (match_key IS NULL OR match_key NOT IN (SELECT k FROM anchor_keys) OR source_system = $2)
        ORDER BY rid""", [anchor_system, xref_system or ""])
    con.execute("DROP TABLE n3")
    con.unregister("n")
    con.unregister("keys")
    con.register("all_probes", all_probes)
    # reuse: an earlier decision for an unchanged probe stands (unless a person decided since)
    reused = fetch(con, """
        SELECT prev.* FROM prev JOIN all_probes p USING (source_system, source_key, fingerprint)
        WHERE prev.domain = $1 AND NOT p.keyed AND (prev.anchor_key IS NULL OR prev.anchor_key IN (SELECT k FROM anchor_keys))
          AND NOT EXISTS (SELECT 1 FROM dec WHERE dec.domain = $1 AND dec.source_system = prev.source_system
                          AND dec.source_key = prev.source_key AND dec.decided_at > prev.decided_at)""", [domain])
    con.register("reused", reused)
    # a copy only where something is taken out: the first run reuses and keeps nothing
    probes = all_probes if not reused.num_rows else fetch(
        con, """SELECT * FROM all_probes WHERE (source_system, source_key) NOT IN
                (SELECT (source_system, source_key) FROM reused) ORDER BY rid""")
    con.unregister("all_probes")
    del all_probes
    con.register("probes", probes)
    con.register("before", scored_before if scored_before is not None else _SCORED_SCHEMA.empty_table())
    # scored already: a probe an earlier pass scored with these very fields
    con.execute("""CREATE TEMP TABLE kept AS SELECT b.* FROM before b
        SEMI JOIN probes p USING (source_system, source_key, fingerprint)""")
    kept_any = con.execute("SELECT count(*) FROM kept").fetchall()[0][0] > 0
    to_score = probes if not kept_any else fetch(
        con, """SELECT * FROM probes WHERE (source_system, source_key) NOT IN
                (SELECT (source_system, source_key) FROM kept) ORDER BY rid""")
    # re-number so row ids index the arrays directly
    to_score = to_score.set_column(0, "rid", pa.array(np.arange(to_score.num_rows), pa.int64()))
    anchors = anchors.set_column(0, "rid", pa.array(np.arange(anchors.num_rows), pa.int64()))
    scored = _score_probes(domain, to_score, anchors, th)
    con.register("to_score", to_score)
    con.register("anchors", anchors)
    con.register("scored", scored)
    comparisons = scored.num_rows
    reason = _reason_sql(scored) if scored.num_rows else "''"
    con.execute(f"""CREATE TEMP TABLE s AS
        SELECT pr.source_system, pr.source_key, pr.match_key AS claimed, pr.keyed, pr.fingerprint,
               an.match_key AS anchor_key, sc.points, sc.confidence, {reason} AS reason,
               an.match_key IS NOT DISTINCT FROM pr.match_key AS is_claimed
        FROM scored sc JOIN to_score pr ON pr.rid = sc.p JOIN anchors an ON an.rid = sc.a
        UNION ALL SELECT {", ".join(_SCORED_SCHEMA.names)} FROM kept""")
    con.execute("""DELETE FROM s WHERE EXISTS (
        SELECT 1 FROM dec WHERE dec.domain = $1 AND dec.decision = 'reject' AND dec.source_system = s.source_system
                            AND dec.source_key = s.source_key AND dec.anchor_key = s.anchor_key)""", [domain])
    del scored
    links = fetch(con, f"""
        WITH ranked AS (
            SELECT *, row_number() OVER (PARTITION BY source_system, source_key
                                         ORDER BY points DESC, anchor_key) AS rk FROM s),
        best AS (
            SELECT b.*, r2.points AS runner_up, r2.anchor_key AS runner_up_key
            FROM ranked b LEFT JOIN ranked r2 ON r2.source_system = b.source_system
                 AND r2.source_key = b.source_key AND r2.rk = 2
            WHERE b.rk = 1),
        fresh AS (
            SELECT p.source_system, p.source_key, p.fingerprint, p.keyed, b.anchor_key, b.confidence,
                   b.reason || CASE WHEN b.runner_up IS NOT NULL AND b.points - b.runner_up < {th.tie_points}
                                    THEN ' | near tie with another record' ELSE '' END AS reason,
                   CASE WHEN b.anchor_key IS NULL OR b.confidence < {th.review} THEN 'unmatched'
                        WHEN b.confidence >= {th.accept} AND (b.runner_up IS NULL OR b.points - b.runner_up >= {th.tie_points})
                             THEN 'accepted'
                        ELSE 'review' END AS status
            FROM probes p LEFT JOIN best b USING (source_system, source_key))
        SELECT $1 AS domain, source_system, source_key, $2 AS anchor_system,
               CASE WHEN status = 'unmatched' THEN NULL ELSE anchor_key END AS anchor_key,
               confidence, status, reason, fingerprint, $3::TIMESTAMPTZ AS decided_at, keyed
        FROM fresh""", [domain, anchor_system, now])
    con.register("links0", links)
    # a person's confirmation wins over any score
    links = fetch(con, """
        SELECT l.domain, l.source_system, l.source_key, l.anchor_system,
               coalesce(d.anchor_key, l.anchor_key) AS anchor_key,
               CASE WHEN d.anchor_key IS NOT NULL THEN 1.0 ELSE l.confidence END AS confidence,
               CASE WHEN d.anchor_key IS NOT NULL THEN 'confirmed' ELSE l.status END AS status,
               CASE WHEN d.anchor_key IS NOT NULL THEN 'confirmed by ' || d.decided_by ELSE l.reason END AS reason,
               l.fingerprint, l.decided_at, l.keyed
        FROM links0 l LEFT JOIN (
            SELECT source_system, source_key, arg_max(anchor_key, decided_at) AS anchor_key,
                   arg_max(decided_by, decided_at) AS decided_by FROM dec
            WHERE domain = $1 AND decision = 'confirm' GROUP BY ALL) d USING (source_system, source_key)""",
        [domain])
    con.register("links1", links)
    exceptions = _key_checks(con, domain, th)
    scored_out = (fetch(con, f"SELECT {', '.join(_SCORED_SCHEMA.names)} FROM s").cast(_SCORED_SCHEMA)
                  if keep_scored else None)
    out = fetch(con, f"""
        SELECT {", ".join(LINK_SCHEMA.names)} FROM links1 WHERE NOT keyed
        UNION ALL SELECT {", ".join(LINK_SCHEMA.names)} FROM reused""").cast(LINK_SCHEMA)
    con.close()
    exceptions = exceptions.cast(EXCEPTION_SCHEMA)
    # a duplicate is set apart, not linked
    dup = exceptions.filter(pc.equal(exceptions.column("kind"), "duplicate_account"))
    if dup.num_rows:
        is_dup = pc.is_in(pc.binary_join_element_wise(out.column("source_system"), out.column("source_key"), "\x1f"),
                          pc.binary_join_element_wise(dup.column("source_system"), dup.column("source_key"), "\x1f"))
        out = out.filter(pc.invert(is_dup))
    return Resolution(out, exceptions, comparisons=comparisons, reused=reused.num_rows, scored=scored_out)


def _key_checks(con, domain: str, th: Thresholds) -> pa.Table:
    """Broken cross-references and duplicates, each with its evidence."""
    return fetch(con, f"""
        WITH claimed AS (
            SELECT source_system, source_key, claimed, confidence, reason FROM s WHERE keyed AND is_claimed),
        wrong AS (
            -- the claimed anchor does not look like the record: its key is in doubt
            SELECT l.source_system, l.source_key, c.claimed, c.confidence AS cc, c.reason AS creason,
                   l.anchor_key, l.confidence AS lc, l.reason AS lreason, l.status
            FROM links1 l JOIN claimed c USING (source_system, source_key)
            WHERE l.keyed AND c.confidence < {th.review}),
        linked AS (
            SELECT l.* FROM links1 l WHERE NOT l.keyed AND l.status IN ('accepted', 'confirmed')),
        dup AS (
            -- a second record of the same system on an anchor that already has a keyed one
            SELECT l.source_system, l.source_key, l.anchor_key, l.confidence, l.reason
            FROM linked l WHERE EXISTS (SELECT 1 FROM probes p WHERE p.keyed AND p.source_system = l.source_system
                                        AND p.match_key = l.anchor_key
                                        AND (p.source_system, p.source_key) NOT IN
                                            (SELECT (source_system, source_key) FROM wrong))
               OR (SELECT count(*) FROM linked o WHERE o.source_system = l.source_system
                   AND o.anchor_key = l.anchor_key) > 1)
        SELECT $1 AS domain,
               CASE WHEN status IN ('accepted', 'confirmed') AND anchor_key <> claimed THEN 'xref_wrong'
                    ELSE 'xref_doubtful' END AS kind,
               source_system, source_key, claimed AS claimed_key,
               CASE WHEN anchor_key <> claimed AND status IN ('accepted', 'confirmed', 'review') THEN anchor_key END
                   AS suggested_key,
               cc AS claimed_confidence,
               CASE WHEN anchor_key <> claimed THEN lc END AS suggested_confidence,
               'claimed: ' || coalesce(creason, '') ||
               CASE WHEN anchor_key <> claimed THEN ' | suggested: ' || coalesce(lreason, '') ELSE '' END AS evidence
        FROM wrong
        UNION ALL
        SELECT $1, 'duplicate_account', source_system, source_key, anchor_key, NULL, confidence, NULL,
               'matches an anchor another record already carries: ' || reason
        FROM dup WHERE {th.one_to_one}""", [domain])


def decisions_append(existing: pa.Table | None, domain: str, source_system: str, source_key: str,
                     anchor_key: str | None, decision: str, decided_by: str,
                     now: datetime | None = None) -> pa.Table:
    """The review decisions with one more (confirm | reject); the newest decision for a probe wins."""
    if decision not in ("confirm", "reject"):
        raise ValueError(f"review decision must be confirm or reject, not {decision!r}")
    if domain not in MATCHED_DOMAINS:
        raise ValueError(f"review decisions are for {MATCHED_DOMAINS}, not {domain!r}")
    if decision == "confirm" and not anchor_key:
        raise ValueError(f"confirm needs the anchor key ({domain} {source_system} {source_key})")
    row = pa.table({"domain": [domain], "source_system": [source_system], "source_key": [source_key],
                    "anchor_key": [anchor_key], "decision": [decision], "decided_by": [decided_by],
                    "decided_at": [now or datetime.now(timezone.utc)]}, schema=DECISION_SCHEMA)
    return pa.concat_tables([existing.cast(DECISION_SCHEMA), row]) if existing is not None else row



def anchor_system(domain: str, config) -> tuple[str, str | None]:
    """(anchor system, cross-reference system) for a domain: the system the cross-reference
    refers to, else the system of record for most of the domain's fields."""
    rules = config.rules.domains[domain]
    if rules.xref:
        return rules.xref.refers_to, rules.xref.system
    owners = [r.owner for r in rules.fields.values()]
    return max(sorted(set(owners)), key=owners.count), None


def _parent_newly_linked(staged: pa.Table, linked: pa.Table, was: pa.Table) -> bool:
    """Whether any record's parent was linked by this run (not already by the previous one)."""
    found = query("""SELECT EXISTS (
        SELECT 1 FROM child c JOIN linked l ON l.source_system = c.source_system AND l.source_key = c.parent_key
        ANTI JOIN was w ON w.source_system = l.source_system AND w.source_key = l.source_key) AS found""",
                  child=staged.select(["source_system", "parent_key"]), linked=linked,
                  was=was.select(["source_system", "source_key"]))
    return bool(found.column("found")[0].as_py())


def match_domain(domain: str, staged: pa.Table, config, *, previous: pa.Table | None = None,
                 decisions: pa.Table | None = None, thresholds: Thresholds | None = None) -> Resolution | None:
    """`resolve` for a matched domain with its anchor from the rules; None for other domains."""
    if domain not in MATCHED_DOMAINS:
        return None
    anchor, xref = anchor_system(domain, config)
    # normalised once for both passes: it is a third of a pass at the large size (3.4M customers)
    norm = _normalise(domain, staged, matchable(staged, anchor, xref))
    hierarchy = domain == "customer" and "parent_key" in staged.column_names
    res = resolve(domain, staged, anchor, xref_system=xref, previous=previous, decisions=decisions,
                  thresholds=thresholds, normalised=norm, keep_scored=hierarchy)
    # a parent linked just now: its children are matched again within it (only they are rescored:
    # their parent changed, so their fingerprint did)
    linked = res.link_keys()
    if hierarchy and linked.num_rows:
        was = (previous.filter(pc.is_in(previous.column("status"), pa.array(["accepted", "confirmed"])))
               if previous is not None else LINK_SCHEMA.empty_table())
        if _parent_newly_linked(staged, linked, was):
            again = resolve(domain, staged, anchor, xref_system=xref, previous=res.links, decisions=decisions,
                            thresholds=thresholds, normalised=norm, scored_before=res.scored)
            res = Resolution(again.links, again.exceptions, res.comparisons + again.comparisons, res.reused)
    res.scored = None  # the second pass's only: not kept alive by the caller
    return res
