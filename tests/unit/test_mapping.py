"""Mapping a system's columns onto the canonical model."""

from __future__ import annotations

from decimal import Decimal

import pyarrow as pa
import pytest

from trueup.mapping import SchemaDriftError, to_canonical


def _crm_accounts(**overrides):
    base = {
        "id": ["A1", "A2"], "erp_number": ["100", None], "type": ["Sold To", "Ship To"],
        "parent_id": [None, "A1"], "name": ["  Acme   Supply Inc ", "Acme - Dallas"],
        "street": ["1 Main St", "2 Elm St"], "street2": [None, ""], "city": ["New York", "Dallas"],
        "state": ["ny", "tx"], "zip": ["10001", "75201"], "country": ["United States", "USA"],
        "email": ["AP@Acme.Example.com", "ops@acme.example.com"], "phone": ["(212) 555-0100", "+1 214 555 0101 x12"],
        "credit_status": ["Good Standing", "On Hold"], "payment_terms": ["Net 30", "Net 45"],
        "active": ["true", "false"], "updated_at": ["2026-01-01T00:00:00Z", "2026-01-02T10:00:00+02:00"],
    }
    base.update(overrides)
    return pa.table(base)


def test_codes_text_phones_and_countries_normalise(config):
    m = to_canonical(_crm_accounts(), system="crm", entity="customer", mapping=config.systems.entity("crm", "customer"))
    rows = {r["source_key"]: r for r in m.staged.to_pylist()}
    a1, a2 = rows["A1"], rows["A2"]
    assert m.issues.num_rows == 0
    assert a1["name"] == "Acme Supply Inc" and a1["email"] == "ap@acme.example.com"
    assert a1["phone"] == "+12125550100" and a2["phone"] == "+12145550101"  # extension dropped
    assert a1["country"] == a2["country"] == "US" and a1["region"] == "NY"
    assert (a1["role"], a2["role"]) == ("sold_to", "ship_to")
    assert (a1["credit_status"], a2["payment_terms"]) == ("ok", "net45")
    assert a1["active"] is True and a2["active"] is False
    assert a1["match_key"] == "100" and a2["match_key"] is None
    assert a2["address_line2"] is None  # empty text is no value
    assert a2["source_updated_at"].isoformat() == "2026-01-02T08:00:00+00:00"
    assert {r["source_system"] for r in rows.values()} == {"crm"}


def test_german_national_number_gets_country_code(config):
    t = _crm_accounts(country=["Germany", "DEU"], phone=["030 1234567", "0049 40 987654"])
    m = to_canonical(t, system="crm", entity="customer", mapping=config.systems.entity("crm", "customer"))
    assert sorted(m.staged.column("phone").to_pylist()) == ["+49301234567", "+4940987654"]


def test_unreadable_values_become_issues_naming_system_entity_key_field(config):
    t = _crm_accounts(type=["Sold To", "Prospect"], country=["Narnia", "USA"], phone=["abc", "(212) 555-0100"],
                      active=["maybe", "true"])
    m = to_canonical(t, system="crm", entity="customer", mapping=config.systems.entity("crm", "customer"))
    got = {(r["source_system"], r["entity"], r["source_key"], r["field"], r["column"], r["problem"])
           for r in m.issues.to_pylist()}
    assert got == {
        ("crm", "customer", "A2", "role", "type", "unknown code"),
        ("crm", "customer", "A1", "country", "country", "unknown country"),
        ("crm", "customer", "A1", "phone", "phone", "not a phone number that can be written as E.164"),
        ("crm", "customer", "A1", "active", "active", "not a valid bool"),
    }
    assert m.staged.num_rows == 2  # the rows stay staged (held by matching), nothing is lost


def test_missing_and_duplicate_keys_are_issues(config):
    t = _crm_accounts(id=["A1", "A1"])
    m = to_canonical(t, system="crm", entity="customer", mapping=config.systems.entity("crm", "customer"))
    assert [r["problem"] for r in m.issues.to_pylist()] == ["duplicate key (2 rows)"] * 2
    t = _crm_accounts(id=["A1", None])
    m = to_canonical(t, system="crm", entity="customer", mapping=config.systems.entity("crm", "customer"))
    assert m.staged.num_rows == 1
    assert [(r["source_key"], r["problem"]) for r in m.issues.to_pylist()] == [("<no key>", "no key")]


def test_decimals_stay_exact_and_natural_keys_are_built(config):
    t = pa.table({"price_list": ["LIST-US"], "item_number": ["SKU-1"], "uom": ["ea"], "min_qty": [1],
                  "currency": ["usd"], "unit_price": [0.1 + 0.2], "valid_from": ["2026-01-01"],
                  "valid_to": [None], "is_promo": [0], "is_active": [1], "updated_at": ["2026-01-01 00:00:00"]})
    m = to_canonical(t, system="erp", entity="price", mapping=config.systems.entity("erp", "price"))
    row = m.staged.to_pylist()[0]
    assert row["unit_price"] == Decimal("0.3000")
    assert row["match_key"] == "LIST-US|SKU-1|EA|1" and row["source_key"] == "LIST-US|SKU-1|ea|1"
    assert row["currency"] == "USD" and row["promotion"] is False


def test_missing_mapped_column_is_schema_drift(config):
    t = _crm_accounts().drop(["email"])
    with pytest.raises(SchemaDriftError) as err:
        to_canonical(t, system="crm", entity="customer", mapping=config.systems.entity("crm", "customer"))
    assert err.value.system == "crm" and err.value.entity == "customer" and err.value.missing == ["email"]


def test_a_staged_domain_gives_each_systems_rows_back_without_filtering(config):
    from trueup import steps

    wms = pa.table({"ship_to_code": ["S1", None, "S3"], "name": ["Acme Dallas", "x", "Acme Austin"],
                    "address1": ["2 Elm St", "", "9 Oak"], "address2": [None, None, None],
                    "city": ["Dallas", "", "Austin"], "state": ["TX", "", "TX"], "postal": ["75201", "", "73301"],
                    "country": ["US", "US", "US"], "updated_at": ["2026-01-01T00:00:00Z"] * 3})
    staged = steps.stage("customer", {"crm": _crm_accounts(), "wms": wms}, config)
    assert sorted(staged.rows_of("crm").column("source_key").to_pylist()) == ["A1", "A2"]
    assert sorted(staged.rows_of("wms").column("source_key").to_pylist()) == ["S1", "S3"]  # the keyless row: an issue
    assert staged.rows_of("erp").num_rows == 0
    assert set(staged.rows_of("wms").column("source_system").to_pylist()) == {"wms"}


def test_numbers_with_more_precision_than_kept_are_issues_not_rounded(config):
    """2.5 is not a quantity and a price of 10000000.00005 is not 10000000.0001: a rounded guess
    would be written back as if a system had said it. A binary float's noise is not precision."""
    t = pa.table({"price_list": ["L"] * 4, "item_number": ["S1", "S2", "S3", "S4"], "uom": ["ea"] * 4,
                  "min_qty": ["1", "2.0", "2.5", "1.0000001"], "currency": ["usd"] * 4,
                  "unit_price": ["10000000.00005", "12.3456", "0.30000000000000004", "abc"],
                  "valid_from": ["2026-01-01"] * 4, "valid_to": [None] * 4, "is_promo": [0] * 4,
                  "is_active": [1] * 4, "updated_at": ["2026-01-01 00:00:00"] * 4})
    m = to_canonical(t, system="erp", entity="price", mapping=config.systems.entity("erp", "price"))
    rows = {r["source_key"].split("|")[1]: r for r in m.staged.to_pylist()}
    assert rows["S1"]["unit_price"] is None and rows["S2"]["unit_price"] == Decimal("12.3456")
    assert rows["S3"]["unit_price"] == Decimal("0.3000") and rows["S2"]["min_qty"] == 2
    assert rows["S3"]["min_qty"] is None
    got = {(r["source_key"].split("|")[1], r["field"], r["problem"]) for r in m.issues.to_pylist()}
    assert got == {("S1", "unit_price", "not a valid decimal with at most 4 decimals"),
                   ("S4", "unit_price", "not a valid decimal with at most 4 decimals"),
                   ("S3", "min_qty", "not a valid whole number"), ("S4", "min_qty", "not a valid whole number")}


def test_a_real_price_and_an_integer_flag_map_as_their_text_would(config):
    """A SQL system's REAL prices and 0/1 flag columns are read by a cast, not printed and parsed:
    same values, same issues as the same numbers given as text."""
    prices = [10000000.00005, 12.3456, 0.1 + 0.2, float("nan"), 2.675, 12.34567]
    flags = [1, 0, 2, 1, 0, 1]
    n = len(prices)

    def table(price, flag):
        return pa.table({"price_list": ["L"] * n, "item_number": [f"S{i}" for i in range(n)], "uom": ["ea"] * n,
                         "min_qty": [1] * n, "currency": ["usd"] * n, "unit_price": price,
                         "valid_from": ["2026-01-01"] * n, "valid_to": [None] * n, "is_promo": flag,
                         "is_active": flag, "updated_at": ["2026-01-01 00:00:00"] * n})

    mapping = config.systems.entity("erp", "price")
    typed = to_canonical(table(pa.array(prices, pa.float64()), pa.array(flags, pa.int64())),
                         system="erp", entity="price", mapping=mapping)
    text = to_canonical(table([repr(p) for p in prices], [str(f) for f in flags]),
                        system="erp", entity="price", mapping=mapping)
    cols = ["source_key", "unit_price", "promotion", "active"]
    assert typed.staged.select(cols).to_pylist() == text.staged.select(cols).to_pylist()
    assert typed.staged.column("unit_price").to_pylist()[1:3] == [Decimal("12.3456"), Decimal("0.3000")]
    assert typed.staged.column("active").to_pylist()[:3] == [True, False, None]
    issues = lambda m: sorted((r["source_key"], r["field"], r["problem"]) for r in m.issues.to_pylist())  # noqa: E731
    assert issues(typed) == issues(text)
    assert {(k.split("|")[1], f) for k, f, _ in issues(typed)} == {
        ("S0", "unit_price"), ("S3", "unit_price"), ("S5", "unit_price"), ("S2", "promotion"), ("S2", "active")}
