"""A contract finds every failing row by key, and GX does not fingerprint the batch on the way
(hashing every value twice was two thirds of a large price book's validation)."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pytest

from checks import contracts
from trueup.config import Config
from trueup.model import DOMAINS

REPO = Path(__file__).resolve().parents[2]


def price_rows(n: int) -> pa.Table:
    """n good ERP price rows, then the bad ones: a zero price, a min_qty of 0, a valid_to before
    its valid_from, a key that is there twice."""
    good = [{"source_system": "erp", "source_key": f"LIST-A|SKU-{i:05d}|EA|1", "sku": f"SKU-{i:05d}",
             "price_list": "LIST-A", "uom": "EA", "min_qty": 1, "currency": "USD",
             "unit_price": Decimal("9.5000"), "valid_from": date(2026, 1, 1), "valid_to": date(2026, 12, 31)}
            for i in range(n)]
    bad = [{**good[0], "source_key": "LIST-A|SKU-ZERO|EA|1", "unit_price": Decimal("0")},
           {**good[0], "source_key": "LIST-A|SKU-MINQ|EA|0", "min_qty": 0},
           {**good[0], "source_key": "LIST-A|SKU-DATES|EA|1", "valid_to": date(2025, 12, 31)},
           {**good[1]}]  # good[1]'s key a second time
    return pa.Table.from_pylist(good + bad, schema=DOMAINS["price"].schema)


@pytest.fixture
def no_fingerprint(monkeypatch):
    """GX's dataframe fingerprint, made to fail the test if it is ever computed."""
    contracts._gx()  # the module sets the threshold on first use
    from great_expectations.execution_engine import pandas_execution_engine

    def hashed(df):
        raise AssertionError(f"GX hashed a {len(df)}-row batch to fingerprint it")

    monkeypatch.setattr(pandas_execution_engine, "hash_pandas_dataframe", hashed)


def test_contract_names_each_failing_key_without_fingerprinting_the_batch(no_fingerprint):
    config = Config.load(REPO / "config")
    result = contracts.validate("erp", "price", price_rows(50), config, contracts.Severities(None))

    failed = {r.id: r for r in result.failed}
    assert result.rows == 54 and not result.passed
    assert failed["price_positive"].keys == ["LIST-A|SKU-ZERO|EA|1"]
    assert failed["min_qty_positive"].keys == ["LIST-A|SKU-MINQ|EA|0"]
    assert failed["valid_from_before_valid_to"].keys == ["LIST-A|SKU-DATES|EA|1"]
    assert failed["key_unique"].keys == ["LIST-A|SKU-00001|EA|1"] and failed["key_unique"].unexpected_count == 2
    assert {r.id for r in result.results if r.success} >= {"key_not_null", "currency_iso"}
    assert all(r.error is None for r in result.results)


def test_customer_clauses_under_row_conditions_still_fail_by_key(no_fingerprint):
    """With GX given only the columns the contract reads, the clauses under a row condition (a
    postal code per country, a ship-to's sold-to) still find each failing row."""
    config = Config.load(REPO / "config")
    base = {"source_system": "erp", "role": "sold_to", "name": "Acme", "city": "Springfield", "country": "US",
            "postal_code": "12345", "email": "buyer@acme.example", "phone": "+15551234567", "currency": "USD",
            "credit_limit": Decimal("100.00")}
    rows = [{**base, "source_key": f"S{i}"} for i in range(20)] + [
        {**base, "source_key": "S-BAD-ZIP", "postal_code": "1234"},  # not a US ZIP
        {**base, "source_key": "S-GB", "country": "GB", "postal_code": "12345"},  # not a GB postcode
        {**base, "source_key": "T-ORPHAN", "role": "ship_to", "parent_key": "S-NOT-THERE"},
        {**base, "source_key": "T-OK", "role": "ship_to", "parent_key": "S1"}]
    table = pa.Table.from_pylist(rows, schema=DOMAINS["customer"].schema)
    result = contracts.validate("erp", "customer", table, config, contracts.Severities(None),
                                {"erp.sold_to": [f"S{i}" for i in range(20)]})

    failed = {r.id: r for r in result.failed}
    assert failed["postal_code_format"].keys == ["S-BAD-ZIP", "S-GB"]
    assert failed["ship_to_has_sold_to"].keys == ["T-ORPHAN"]
    assert set(failed) == {"postal_code_format", "ship_to_has_sold_to"}
    assert all(r.error is None for r in result.results)


def test_a_condition_keeps_the_column_it_names_even_when_no_clause_reads_it():
    _, gxe = contracts._gx()
    postal = contracts.Expectation("postal_code_format", "postal_code", gxe.ExpectColumnValuesToMatchRegex(
        column="postal_code", regex=r"^[0-9]{5}$", row_condition='country=="US"', condition_parser="pandas"))
    pair = contracts.Expectation("dates", "valid_to", gxe.ExpectColumnPairValuesAToBeGreaterThanB(
        column_A="valid_to", column_B="valid_from"))
    available = ["source_system", "source_key", "name", "country", "countryside", "postal_code", "valid_from",
                 "valid_to"]
    assert contracts._columns_read([postal, pair], available) == [
        "source_key", "country", "postal_code", "valid_from", "valid_to"]
    compound = contracts.Expectation("unique_pair", None, gxe.ExpectCompoundColumnsToBeUnique(
        column_list=["name", "postal_code"]))
    assert contracts._columns_read([compound], available) == ["source_key", "name", "postal_code"]
    # a clause about the table, not a column of it: GX gets every column
    table_level = contracts.Expectation("columns", None, gxe.ExpectTableColumnCountToEqual(value=8))
    assert contracts._columns_read([postal, table_level], available) == available


def test_no_frame_of_a_validation_outlives_it():
    """GX's context keeps its data source's batches until the next validation: in one process
    running step after step, a validation's frames must go when it returns (they were the last
    validated table's size in memory from one step to the next)."""
    import gc

    import pandas as pd

    config = Config.load(REPO / "config")
    result = contracts.validate("erp", "price", price_rows(1237), config, contracts.Severities(None))
    assert not result.passed
    gc.collect()
    left = [o for o in gc.get_objects() if isinstance(o, pd.DataFrame) and len(o) == 1241]
    assert left == []


def test_a_large_validation_gives_its_frames_back_before_it_returns(monkeypatch):
    """GX's frames sit in reference cycles until Python's collector next runs: a validation of
    at least COLLECT_AFTER_ROWS rows frees them itself (staging and validating the large price
    book standalone then peaks ~0.4 GB lower), with the collector off meanwhile, as between its
    rare runs."""
    import gc

    import pandas as pd

    config = Config.load(REPO / "config")
    monkeypatch.setattr(contracts, "COLLECT_AFTER_ROWS", 1000)
    contracts.validate("erp", "price", price_rows(7), config, contracts.Severities(None))  # GX's first use
    gc.collect()
    gc.disable()
    try:
        result = contracts.validate("erp", "price", price_rows(1237), config, contracts.Severities(None))
        left = [o for o in gc.get_objects() if isinstance(o, pd.DataFrame) and len(o) == 1241]
    finally:
        gc.enable()
    assert not result.passed
    assert left == [], f"{len(left)} frames of the validation still in memory"


def test_warm_up_imports_gx_in_the_background_and_a_failed_import_is_raised_by_the_validation():
    """In a fresh process (GX not yet imported): `warm_up` returns at once with the import going on
    in a thread, and the validation gets GX from it; an import that fails there is not swallowed:
    the validation raises it."""
    import subprocess
    import sys

    script = """
import sys, time
from checks import contracts
assert "great_expectations" not in sys.modules
t = time.perf_counter(); contracts.warm_up(); returned = time.perf_counter() - t
first = contracts._warming
assert first.is_alive(), "warm_up did not leave the import running"
contracts.warm_up()
assert contracts._warming is first, "a second call started another import"
gx, gxe = contracts._gx()
assert gx.__name__ == "great_expectations" and hasattr(gxe, "ExpectColumnValuesToNotBeNull")
assert not contracts._warming.is_alive()
print(f"returned in {returned:.3f}s")
"""
    ok = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert ok.stdout.startswith("returned in")

    failing = """
import sys
sys.modules["great_expectations"] = None  # as if the package were broken
from checks import contracts
contracts.warm_up()
contracts._warming.join()
assert contracts._load_gx.cache_info().misses == 1, "warm_up did not try the import"
try:
    contracts._gx()
except ImportError:
    print("raised")
"""
    bad = subprocess.run([sys.executable, "-c", failing], cwd=REPO, capture_output=True, text=True)
    assert bad.stdout.strip() == "raised", (bad.stdout, bad.stderr[-2000:])
