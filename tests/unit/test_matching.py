"""Probabilistic matching: normalisation, decisions, broken keys, and golden ids that hold still."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pyarrow as pa
import pyarrow.compute as pc

from tests.unit.test_reconcile import staged
from trueup import matching, reconcile

ERP = [
    {"source_system": "erp", "source_key": "1001", "match_key": "1001", "role": "sold_to", "name": "Blue Harbor Supply Inc",
     "address_line1": "12 Main St", "address_line2": "Suite 400", "postal_code": "60601", "city": "Chicago",
     "country": "US", "phone": "+13125550100", "email": "orders@blueharbor.example.com"},
    {"source_system": "erp", "source_key": "1002", "match_key": "1002", "role": "sold_to", "name": "Granite Tools LLC",
     "address_line1": "9 Oak Ave", "postal_code": "75201", "city": "Dallas", "country": "US",
     "phone": "+12145550111", "email": "buy@granite.example.com"},
    {"source_system": "erp", "source_key": "1003", "match_key": "1003", "role": "sold_to", "name": "Blue Harbor Supply Inc",
     "address_line1": "400 Lake Rd", "postal_code": "60690", "city": "Chicago", "country": "US",
     "phone": "+13125550999", "email": "ap@otherblue.example.com"},
]
# the same customer as 1001, created in the CRM without the ERP number: a typo, words reordered,
# the legal form spelled out, the street and the suite abbreviated
CRM_UNKEYED = {"source_system": "crm", "source_key": "ACC-1", "match_key": None, "role": "sold_to",
               "name": "HARBOR BLEU SUPPLY INCORPORATED", "address_line1": "12 Main Street", "address_line2": "Ste. 400",
               "postal_code": "60601", "city": "Chicago", "country": "US", "phone": "+13125550100",
               "email": "orders@blueharbor.example.com"}
# Granite Tools' CRM account carrying Blue Harbor's ERP number
CRM_WRONG = {"source_system": "crm", "source_key": "ACC-2", "match_key": "1001", "role": "sold_to",
             "name": "Granite Tools", "address_line1": "9 Oak Avenue", "postal_code": "75201", "city": "Dallas",
             "country": "US", "phone": "+12145550111", "email": "buy@granite.example.com"}


def test_normalisation_sees_through_legal_forms_abbreviations_and_case():
    n = matching.normalise_customers(staged("customer", [ERP[0], CRM_UNKEYED])).to_pylist()
    assert n[0]["name_n"] == "blue harbor supply" and n[1]["name_n"] == "harbor bleu supply"
    assert n[0]["addr_n"] == n[1]["addr_n"] == "12 main st"
    assert n[0]["suite_n"] == n[1]["suite_n"] == "400"


def test_unkeyed_record_is_linked_with_reason_and_a_wrong_key_is_an_exception_not_a_correction(config):
    t = staged("customer", ERP + [CRM_UNKEYED, CRM_WRONG])
    res = matching.match_domain("customer", t, config)
    link = res.links.filter(pc.equal(res.links.column("source_key"), "ACC-1")).to_pylist()[0]
    assert (link["status"], link["anchor_key"]) == ("accepted", "1001")
    assert "phone =" in link["reason"] and "street 100" in link["reason"] and link["confidence"] >= 0.9
    exc = res.exceptions.to_pylist()
    assert [(e["kind"], e["source_key"], e["claimed_key"], e["suggested_key"]) for e in exc] == [
        ("xref_wrong", "ACC-2", "1001", "1002")]
    assert "claimed: name" in exc[0]["evidence"] and "suggested:" in exc[0]["evidence"]

    m, _ = reconcile.match("customer", t, links=res.link_keys(), apart=res.held())
    g = reconcile.build_golden("customer", m, config, datetime(2026, 6, 1).date())
    plan = reconcile.build_plan("customer", m, g, config).to_pylist()
    # the unkeyed account gets its cross-reference and the owner's name; the wrongly keyed one: nothing
    assert {(r["target_key"], r["field"], r["new_value"]) for r in plan if r["target_system"] == "crm"} == {
        ("ACC-1", "match_key", "1001"), ("ACC-1", "name", "Blue Harbor Supply Inc")}
    assert not [r for r in plan if "ACC-2" in (r["target_key"], r["old_value"], r["new_value"])]


def test_grey_zone_goes_to_review_and_a_confirmation_persists(config):
    # same name and street, a postal code one digit off, no city, phone or email: not enough to link,
    # too much to ignore
    grey = {"source_system": "crm", "source_key": "ACC-3", "match_key": None, "role": "sold_to",
            "name": "Granite Tools", "address_line1": "9 Oak Av", "postal_code": "75209", "country": "US"}
    t = staged("customer", ERP + [grey])
    res = matching.match_domain("customer", t, config)
    assert res.review_queue().column("source_key").to_pylist() == ["ACC-3"]
    assert res.link_keys().num_rows == 0 and res.held().column("source_key").to_pylist() == ["ACC-3"]
    later = datetime.now(timezone.utc) + timedelta(seconds=1)
    dec = matching.decisions_append(None, "customer", "crm", "ACC-3", "1002", "confirm", "ops@distributor", now=later)
    again = matching.match_domain("customer", t, config, previous=res.links, decisions=dec)
    row = again.links.to_pylist()[0]
    assert (row["status"], row["anchor_key"], row["confidence"]) == ("confirmed", "1002", 1.0)
    assert again.link_keys().column("link_key").to_pylist() == ["1002"]
    rej = matching.decisions_append(None, "customer", "crm", "ACC-3", "1002", "reject", "ops@distributor", now=later)
    assert matching.match_domain("customer", t, config, decisions=rej).links.to_pylist()[0]["anchor_key"] != "1002"


def _golden(t: pa.Table, config, crosswalk=None, previous=None):
    res = matching.match_domain("customer", t, config, previous=previous)
    m, cw = reconcile.match("customer", t, crosswalk, links=res.link_keys(), apart=res.held())
    return dict(zip(zip(m.column("source_system").to_pylist(), m.column("source_key").to_pylist()),
                    m.column("golden_id").to_pylist())), cw, res


def test_golden_ids_hold_across_reruns_and_a_backfill_and_new_records_match_incrementally(config):
    rows = ERP + [CRM_UNKEYED, CRM_WRONG]
    first, cw, res1 = _golden(staged("customer", rows), config)
    assert first[("crm", "ACC-1")] == first[("erp", "1001")]
    assert res1.comparisons > 0

    # the same extract again: every decision reused (only the carried keys are checked again), the same ids
    second, cw, res2 = _golden(staged("customer", rows), config, cw, previous=res1.links)
    assert second == first and res2.reused == res1.links.num_rows
    assert res2.comparisons == _golden(staged("customer", ERP + [CRM_WRONG]), config)[2].comparisons

    # a backfill: rows replayed in another order and from scratch (no earlier links) against the crosswalk
    backfill, cw, _ = _golden(staged("customer", list(reversed(rows))), config, cw)
    assert backfill == first

    # an incremental run with one new CRM record: only it is scored; everything else keeps its id
    new = {**CRM_UNKEYED, "source_key": "ACC-9", "name": "Granite Tool LLC", "address_line1": "9 Oak Ave",
           "address_line2": None, "postal_code": "75201", "city": "Dallas", "phone": "+12145550111",
           "email": "buy@granite.example.com"}
    inc, cw, res4 = _golden(staged("customer", rows + [new]), config, cw, previous=res2.links)
    assert {k: v for k, v in inc.items() if k != ("crm", "ACC-9")} == first
    assert inc[("crm", "ACC-9")] == first[("erp", "1002")]
    assert res4.reused == res2.links.num_rows and 0 < res4.comparisons - res2.comparisons <= len(ERP)


def test_products_match_on_gtin_first_then_description_and_attributes(config):
    erp = [{"source_system": "erp", "source_key": f"SKU-{i}", "match_key": f"SKU-{i}", "sku": f"SKU-{i}",
            "gtin": g, "description": d, "case_qty": q, "weight_kg": Decimal(str(w)), "base_uom": "EA"}
           for i, (g, d, q, w) in enumerate([("00012345678905", "Hex Bolt Small", 12, 1.0),
                                             ("00012345678912", "Hex Bolt Small", 12, 5.0),
                                             ("00012345678929", "Duct Tape Pro", 6, 0.4)])]
    wms = [{"source_system": "wms", "source_key": "W1", "match_key": "W1", "sku": "W1", "gtin": "12345678912",
            "description": "Nitrile Gloves", "case_qty": 12, "weight_kg": Decimal("5.0")},
           {"source_system": "wms", "source_key": "W2", "match_key": "W2", "sku": "W2", "gtin": None,
            "description": "DUCT TAPE  PRO", "case_qty": 6, "weight_kg": Decimal("0.401")},
           {"source_system": "wms", "source_key": "W3", "match_key": "W3", "sku": "W3", "gtin": None,
            "description": "Hex Bolt Small", "case_qty": 12, "weight_kg": Decimal("1.0")}]
    res = matching.match_domain("product", staged("product", erp + wms), config)
    got = {r["source_key"]: (r["status"], r["anchor_key"]) for r in res.links.to_pylist()}
    assert got == {"W1": ("accepted", "SKU-1"), "W2": ("accepted", "SKU-2"), "W3": ("accepted", "SKU-0")}


def test_review_cli_records_decisions_the_next_run_reads(tmp_path, capsys):
    from pipelines.cli import main
    from trueup.warehouse import Warehouse

    wh = Warehouse(tmp_path / "warehouse")
    queue = matching.LINK_SCHEMA.empty_table()
    wh.write(queue, "review", "customer")
    assert main(["--home", str(tmp_path), "review", "list"]) == 0
    assert main(["--home", str(tmp_path), "review", "confirm", "customer", "crm", "ACC-3", "1002", "--by", "ops"]) == 0
    assert main(["--home", str(tmp_path), "review", "reject", "customer", "crm", "ACC-4", "1001", "--by", "ops"]) == 0
    dec = wh.read("state", "review_decisions", "customer").to_pylist()
    assert [(d["source_key"], d["anchor_key"], d["decision"], d["decided_by"]) for d in dec] == [
        ("ACC-3", "1002", "confirm", "ops"), ("ACC-4", "1001", "reject", "ops")]
    assert main(["--home", str(tmp_path), "review", "confirm", "customer", "crm", "ACC-5", ""]) == 2


def test_a_ship_to_is_matched_within_its_sold_to_once_the_sold_to_is_matched(config):
    ship = [{"source_system": "erp", "source_key": "2001", "match_key": "2001", "role": "ship_to", "parent_key": "1001",
             "name": "Blue Harbor Supply - Chicago", "address_line1": "12 Main St", "postal_code": "60601",
             "city": "Chicago", "country": "US", "phone": "+13125550200"},
            {"source_system": "erp", "source_key": "2003", "match_key": "2003", "role": "ship_to", "parent_key": "1003",
             "name": "Blue Harbor Supply - Chicago", "address_line1": "400 Lake Rd", "postal_code": "60690",
             "city": "Chicago", "country": "US", "phone": "+13125550300"}]
    # the ship-to moved (new street and postal code); its sold-to is itself unkeyed in the CRM
    moved = {"source_system": "crm", "source_key": "ACC-11", "match_key": None, "role": "ship_to",
             "parent_key": "ACC-1", "name": "Blue Harbor Supply - Chicago", "address_line1": "77 Logistics Park",
             "postal_code": "60607", "city": "Chicago", "country": "US", "phone": "+13125550200"}
    alone = matching.match_domain("customer", staged("customer", ERP + ship + [moved]), config)
    assert alone.links.to_pylist()[0]["status"] != "accepted"  # without the hierarchy: not enough
    res = matching.match_domain("customer", staged("customer", ERP + ship + [CRM_UNKEYED, moved]), config)
    got = {r["source_key"]: (r["status"], r["anchor_key"]) for r in res.links.to_pylist()}
    assert got == {"ACC-1": ("accepted", "1001"), "ACC-11": ("accepted", "2001")}
    assert "parent =" in res.links.filter(pc.equal(res.links.column("source_key"), "ACC-11")).column("reason")[0].as_py()


def test_records_keyed_to_an_anchor_are_not_normalised_yet_still_give_their_children_a_parent(config):
    """The 3PL's sold-to carries the ERP number: it is neither anchor nor probe, so matching skips
    normalising it (most of a large 3PL's records), yet its unkeyed ship-to is still matched within it."""
    ship = {"source_system": "erp", "source_key": "2001", "match_key": "2001", "role": "ship_to", "parent_key": "1001",
            "name": "Blue Harbor Supply - Chicago", "address_line1": "12 Main St", "postal_code": "60601",
            "city": "Chicago", "country": "US", "phone": "+13125550200"}
    sold_to = {"source_system": "wms", "source_key": "W-1", "match_key": "1001", "role": "sold_to",
               "name": "Blue Harbor", "country": "US"}
    moved = {"source_system": "wms", "source_key": "W-11", "match_key": None, "role": "ship_to", "parent_key": "W-1",
             "name": "Blue Harbor Supply - Chicago", "address_line1": "77 Logistics Park", "postal_code": "60607",
             "city": "Chicago", "country": "US", "phone": "+13125550200"}
    t = staged("customer", ERP + [ship, sold_to, moved, CRM_WRONG])
    only = matching.matchable(t, "erp", "crm").to_pylist()
    keys = t.column("source_key").to_pylist()
    assert {k for k, keep in zip(keys, only) if not keep} == {"W-1"}  # the CRM's keyed account is checked
    res = matching.match_domain("customer", t, config)
    link = res.links.filter(pc.equal(res.links.column("source_key"), "W-11")).to_pylist()[0]
    assert (link["status"], link["anchor_key"]) == ("accepted", "2001") and "parent =" in link["reason"]


def _crowded_postal_code(n: int) -> pa.Table:
    """n ERP sold-tos in one postal code, each at its own house number, and a CRM account
    without a key for the one at number 7 (its name spelled differently, no phone, no email)."""
    rows = [{"source_system": "erp", "source_key": str(2000 + i), "match_key": str(2000 + i), "role": "sold_to",
             "name": f"Vendor{i:03d} Trading", "address_line1": f"{i} Commerce Way", "postal_code": "10001",
             "city": "New York", "country": "US", "phone": f"+1212555{i:04d}", "email": f"ap{i}@v{i}.example.com"}
            for i in range(1, n + 1)]
    probe = {**rows[6], "source_system": "crm", "source_key": "ACC-7", "match_key": None, "name": "Vendr 007 Trdng",
             "phone": None, "email": None}
    return staged("customer", rows + [probe])


def test_a_crowded_postal_code_blocks_with_the_house_number_not_with_every_anchor():
    t = _crowded_postal_code(30)
    crowded = matching.resolve("customer", t, "erp", thresholds=matching.Thresholds(max_block=10))
    roomy = matching.resolve("customer", t, "erp", thresholds=matching.Thresholds(max_block=100))

    assert roomy.comparisons == 30  # the probe against every sold-to of its postal code
    assert crowded.comparisons == 1  # only the one at its house number
    link = crowded.links.filter(pc.equal(crowded.links.column("source_key"), "ACC-7")).to_pylist()[0]
    assert link["anchor_key"] == "2007"


# Blue Harbor's second site, carried in the CRM with its right ERP number
CRM_KEYED = {**CRM_UNKEYED, "source_key": "ACC-5", "match_key": "1003", "name": "Blue Harbor Supply",
             "address_line1": "400 Lake Road", "address_line2": None, "postal_code": "60690",
             "phone": "+13125550999", "email": "ap@otherblue.example.com"}


def test_a_carried_key_that_looks_right_is_one_comparison_and_a_doubtful_one_is_compared_with_every_candidate():
    right = matching.resolve("customer", staged("customer", ERP + [CRM_KEYED]), "erp", xref_system="crm")
    assert right.comparisons == 1 and right.exceptions.num_rows == 0

    wrong = matching.resolve("customer", staged("customer", ERP + [CRM_WRONG]), "erp", xref_system="crm")
    assert wrong.comparisons > 1  # its claim, then the records that could be the right one
    assert [(e["kind"], e["suggested_key"]) for e in wrong.exceptions.to_pylist()] == [("xref_wrong", "1002")]


def test_the_second_pass_scores_again_only_the_records_whose_parent_was_just_linked(config):
    ship = {"source_system": "erp", "source_key": "2001", "match_key": "2001", "role": "ship_to", "parent_key": "1001",
            "name": "Blue Harbor Supply - Chicago", "address_line1": "12 Main St", "postal_code": "60601",
            "city": "Chicago", "country": "US", "phone": "+13125550200"}
    moved = {"source_system": "crm", "source_key": "ACC-11", "match_key": None, "role": "ship_to",
             "parent_key": "ACC-1", "name": "Blue Harbor Supply - Chicago", "address_line1": "77 Logistics Park",
             "postal_code": "60607", "city": "Chicago", "country": "US", "phone": "+13125550200"}
    t = staged("customer", ERP + [ship, CRM_UNKEYED, moved, CRM_KEYED])
    first = matching.resolve("customer", t, "erp", xref_system="crm")
    # a second pass from scratch: the ship-to within its sold-to, and the keyed record again
    rescored = matching.resolve("customer", t, "erp", xref_system="crm", previous=first.links).comparisons

    res = matching.match_domain("customer", t, config)
    assert res.links.filter(pc.equal(res.links.column("source_key"), "ACC-11")).column("anchor_key")[0].as_py() == "2001"
    assert res.comparisons == first.comparisons + rescored - 1  # the keyed record kept its one comparison
