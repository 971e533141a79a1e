"""Bad input: each case fails loudly, naming system, entity, field and key; the bad rows are
quarantined and counted; nothing bad reaches any system (read back); the rest of the run goes on."""

from __future__ import annotations

import sqlite3
from contextlib import closing

import dagster as dg
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from pipelines.definitions import build_definitions
from trueup.state import StateStore

pytestmark = pytest.mark.slow


def run(home, groups, **tags):
    defs = build_definitions(home=home)
    job = defs.resolve_job_def("nightly_reconciliation")
    selection = dg.AssetSelection.groups(*groups).resolve(defs.resolve_asset_graph())
    result = job.execute_in_process(instance=dg.DagsterInstance.ephemeral(), tags=tags,
                                    asset_selection=list(selection))
    assert result.success
    return result


def checks(result) -> dict[str, dg.AssetCheckEvaluation]:
    return {f"{e.asset_key.to_user_string()}:{e.check_name}": e
            for e in (ev.event_specific_data for ev in result.all_events
                      if ev.event_type_value == "ASSET_CHECK_EVALUATION")}


def sql(path, query, params=()):
    with closing(sqlite3.connect(path)) as db:
        return db.execute(query, params).fetchall()


def latest_drop(home):
    return sorted((home / "demo" / "wms" / "exports").iterdir())[-1]


def quarantine(home, run_id):
    return StateStore(f"sqlite:///{home / 'state.db'}").quarantined(run_id).to_pylist()


def crm_writes(home, resource):
    return sql(home / "demo" / "crm" / "crm.sqlite", "SELECT record_id, fields FROM write_log WHERE resource = ?",
               (resource,))


def test_wms_drop_missing_a_column_holds_customers_and_the_rest_goes_on(home):
    path = latest_drop(home) / "ship_to.csv"
    pacsv.write_csv(pacsv.read_csv(path).drop(["address1"]), path)
    erp_before = sql(home / "demo" / "erp.sqlite", "SELECT * FROM erp_customer ORDER BY 1")

    result = run(home, ["customer", "product", "inventory"])
    c = checks(result)["wms_customer_extract:schema_matches_mapping"]
    assert not c.passed and c.severity == dg.AssetCheckSeverity.ERROR
    assert "wms.customer" in c.description and "address1" in c.description
    q = [r for r in quarantine(home, result.run_id) if r["entity"] == "customer" and r["severity"] == "error"]
    assert [(r["system"], r["source_key"]) for r in q] == [("wms", "<all>")]
    # nothing written for customers to any system ...
    assert result.output_for_node("customer_plan").num_rows == 0
    assert sql(home / "demo" / "erp.sqlite", "SELECT * FROM erp_customer ORDER BY 1") == erp_before
    assert crm_writes(home, "accounts") == []
    assert not list((home / "demo" / "wms" / "inbound").glob("**/trueup_customer_*"))
    # ... while inventory was still corrected
    assert sql(home / "demo" / "erp.sqlite", "SELECT count(*) FROM erp_stock_adjustment")[0][0] > 0


def test_crm_page_with_malformed_email_and_null_key(home):
    crm = home / "demo" / "crm" / "crm.sqlite"
    bad_email_id, erp_no = sql(crm, "SELECT id, erp_number FROM accounts WHERE type = 'Sold To' "
                                    "AND erp_number IS NOT NULL ORDER BY id LIMIT 1")[0]
    null_key_id, null_key_erp = sql(crm, "SELECT id, erp_number FROM accounts WHERE type = 'Sold To' "
                                          "AND erp_number IS NOT NULL ORDER BY id LIMIT 1 OFFSET 1")[0]
    # its ship-tos lose their sold-to with it: the hierarchy contract must catch them too
    orphans = {r[0] for r in sql(crm, "SELECT id FROM accounts WHERE parent_id = ?", (null_key_id,))}
    with closing(sqlite3.connect(crm)) as db:
        db.execute("UPDATE accounts SET email = 'orders at example' WHERE id = ?", (bad_email_id,))
        db.execute("UPDATE accounts SET id = NULL, phone = '(212) 555-0199' WHERE erp_number = ?", (null_key_erp,))
        db.commit()
    erp = home / "demo" / "erp.sqlite"
    before = sql(erp, "SELECT customer_number, email, phone FROM erp_customer WHERE customer_number IN (?, ?)",
                 (erp_no, null_key_erp))

    result = run(home, ["customer"])
    c = checks(result)["customer_staged:contract_crm"]
    assert not c.passed
    assert "email_format on email: 1 row(s)" in c.description
    assert bad_email_id in c.metadata["failing_keys_sample"].value
    assert "orders at example" not in str(c.metadata)  # keys, never values
    q = {(r["system"], r["source_key"], r["field"], r["problem"]) for r in quarantine(home, result.run_id)}
    assert ("crm", bad_email_id, "email", "contract email_format failed") in q
    assert ("crm", "<no key>", None, "no key") in q
    assert {k for s, k, f, p in q if p == "contract ship_to_has_sold_to failed"} == orphans
    # neither the malformed email nor the keyless row's phone reached the ERP
    assert sql(erp, "SELECT customer_number, email, phone FROM erp_customer WHERE customer_number IN (?, ?)",
               (erp_no, null_key_erp)) == before
    staged_meta = [e for e in result.all_events if e.event_type_value == "ASSET_MATERIALIZATION"
                   and e.asset_key == dg.AssetKey("customer_staged")][0]
    assert staged_meta.event_specific_data.materialization.metadata["quarantined_rows"].value == 2 + len(orphans)
    # the rest of the customers were still reconciled
    assert len(crm_writes(home, "accounts")) > 0


def test_erp_price_row_with_a_negative_price(home):
    erp = home / "demo" / "erp.sqlite"
    pl, sku = sql(erp, "SELECT price_list, item_number FROM erp_price WHERE price_list = 'LIST-US' LIMIT 1")[0]
    with closing(sqlite3.connect(erp)) as db:
        db.execute("UPDATE erp_price SET unit_price = -5 WHERE price_list = ? AND item_number = ?", (pl, sku))
        db.commit()
    crm = home / "demo" / "crm" / "crm.sqlite"
    crm_row = sql(crm, "SELECT id, list_price FROM pricebook WHERE pricebook = ? AND product_code = ? AND min_qty = '1'",
                  (pl, sku))[0]

    result = run(home, ["product", "price"])
    c = checks(result)["price_staged:contract_erp"]
    assert not c.passed and "price_positive on unit_price: 1 row(s)" in c.description
    q = {(r["system"], r["source_key"], r["field"]) for r in quarantine(home, result.run_id)}
    assert ("erp", f"{pl}|{sku}|EA|1", "unit_price") in q
    assert sql(crm, "SELECT id, list_price FROM pricebook WHERE id = ?", (crm_row[0],))[0] == crm_row
    assert all(crm_row[0] != rid for rid, _ in crm_writes(home, "pricebook"))
    assert len(crm_writes(home, "pricebook")) > 0  # the other price corrections went through


def test_duplicate_skus_in_the_wms_export(home):
    path = latest_drop(home) / "items.csv"
    items = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(strings_can_be_null=True,
                                                                     column_types={"sku": pa.string()}))
    dup = items.slice(3, 1)
    sku = dup.column("sku")[0].as_py()
    pacsv.write_csv(pa.concat_tables([items, dup.set_column(
        items.schema.get_field_index("weight_kg"), "weight_kg", pa.array([999.0]))]), path)

    result = run(home, ["product"])
    c = checks(result)["product_staged:contract_wms"]
    assert not c.passed and "key_unique" in c.description
    q = [r for r in quarantine(home, result.run_id) if r["source_key"] == sku]
    assert {r["problem"] for r in q} >= {"duplicate key (2 rows)", "contract key_unique failed"}
    plan = result.output_for_node("product_plan")
    assert sku not in plan.column("target_key").to_pylist()  # nothing for that SKU, anywhere
    assert sql(home / "demo" / "erp.sqlite", "SELECT weight_kg FROM erp_item WHERE item_number = ?", (sku,))[0][0] != 999


def test_plan_changing_60_percent_of_crm_accounts_trips_the_gate(home):
    erp = home / "demo" / "erp.sqlite"
    with closing(sqlite3.connect(erp)) as db:
        db.execute("UPDATE erp_customer SET credit_status = 'BLOCK' WHERE account_group IN ('SOLD', 'SHIP') "
                   "AND abs(random()) % 10 < 6")
        db.commit()
    result = run(home, ["customer"])
    c = checks(result)["customer_plan:gate_crm"]
    assert not c.passed and "would change" in c.description and "crm" in c.description
    assert crm_writes(home, "accounts") == []  # nothing at all written to the CRM
    ledger = StateStore(f"sqlite:///{home / 'state.db'}").ledger(result.run_id).to_pandas()
    crm = ledger[ledger["system"] == "crm"]
    assert len(crm) > 0 and set(crm["status"]) == {"blocked"}
    assert crm["error"].str.contains("gate failed").all()
    assert (ledger[ledger["system"] == "erp"]["status"] == "applied").all()  # the ERP's corrections went on
    assert checks(result)["customer_plan:gate_erp"].passed

    again = run(home, ["customer"], **{"trueup/allow_large_plan": "crm"})
    assert checks(again)["customer_plan:gate_crm"].passed
    assert len(crm_writes(home, "accounts")) > 0
