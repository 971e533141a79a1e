"""Which changes wait for approval, and why (rules.yaml `approval:`)."""

from __future__ import annotations

import pyarrow as pa
import pytest

from tests.unit.test_config import _config_dir, _line_of
from trueup.approvals import classify, gate
from trueup.config import Config, ConfigError
from trueup.model import PLAN_SCHEMA


def _plan(rows: list[dict]) -> pa.Table:
    base = {"domain": "price", "target_system": "crm", "action": "update", "golden_id": "g", "source_system": "erp",
            "rule": "r", "severity": "high", "old_value": None, "new_value": None}
    full = [{**base, **r, "change_id": f"c{i}"} for i, r in enumerate(rows)]
    return pa.Table.from_pylist(full, schema=PLAN_SCHEMA)


def test_price_decreases_beyond_ten_percent_wait_and_nothing_else_does(config):
    plan = _plan([
        {"target_key": "P1", "field": "unit_price", "old_value": "100.0000", "new_value": "80.0000"},   # -20%
        {"target_key": "P2", "field": "unit_price", "old_value": "100.0000", "new_value": "95.0000"},   # -5%
        {"target_key": "P3", "field": "unit_price", "old_value": "100.0000", "new_value": "130.0000"},  # a rise
        {"target_key": "P4", "field": "active", "old_value": "true", "new_value": "false"},
    ])
    out = {r["target_key"]: r["approval_reason"] for r in classify("price", plan, config).to_pylist()}
    assert out["P2"] is None and out["P3"] is None and out["P4"] is None
    assert "decrease beyond 10%" in out["P1"] and "price.unit_price" in out["P1"]


def test_credit_limit_changes_and_erp_creates_wait_and_a_reference_to_a_waiting_create_waits_too(config):
    plan = _plan([
        {"domain": "customer", "target_system": "erp", "action": "create", "target_key": "cus_1", "field": f,
         "new_value": v} for f, v in (("name", "Acme"), ("city", "Oslo"))] + [
        {"domain": "customer", "target_system": "crm", "target_key": "ACC-1", "field": "match_key",
         "old_value": None, "new_value": "cus_1"},
        {"domain": "customer", "target_system": "erp", "target_key": "C9", "field": "credit_limit",
         "old_value": "1000.00", "new_value": "5000.00"},
    ]).replace_schema_metadata(None)
    classified = classify("customer", plan, config)
    creates = classified.filter(pa.compute.equal(classified.column("action"), "create")).to_pylist()
    assert len({r["approval_id"] for r in creates}) == 1  # one decision for the whole record
    assert all("creating a customer in erp" in r["approval_reason"] for r in creates)
    status = {r["target_key"]: (r["approval_status"], r["approval_note"])
              for r in gate("customer", plan, config, {}).to_pylist()}
    assert status["cus_1"][0] == "pending"
    assert status["ACC-1"] == ("waiting", "waits for the approval of creating cus_1 in erp")
    assert status["C9"][0] == "pending" and "credit_limit" in status["C9"][1]
    # once the create is approved, the reference goes with it
    approved = {creates[0]["approval_id"]: {"status": "approved", "decided_by": "x", "decided_at": None}}
    status = {r["target_key"]: r["approval_status"] for r in gate("customer", plan, config, approved).to_pylist()}
    assert status["cus_1"] == "approved" and status["ACC-1"] == "none"


def test_a_create_with_other_data_is_a_new_approval(config):
    one = _plan([{"domain": "customer", "target_system": "erp", "action": "create", "target_key": "cus_1",
                  "field": "name", "new_value": "Acme"}])
    two = _plan([{"domain": "customer", "target_system": "erp", "action": "create", "target_key": "cus_1",
                  "field": "name", "new_value": "Acme Ltd"}])
    a = classify("customer", one, config).column("approval_id")[0].as_py()
    b = classify("customer", two, config).column("approval_id")[0].as_py()
    assert a != b


def test_a_direction_on_a_text_field_is_rejected_with_its_line(tmp_path):
    from tests.conftest import CONFIG_DIR

    d = _config_dir(tmp_path, CONFIG_DIR, rules_edit=(
        "credit_status: {owner: erp, targets: {crm: update}, severity: high}",
        "credit_status: {owner: erp, targets: {crm: update}, severity: high, approval: {when: decrease}}"))
    with pytest.raises(ConfigError) as err:
        Config.load(d)
    assert f"rules.yaml:{_line_of(d / 'rules.yaml', 'credit_status:')}" in str(err.value)
    assert "needs a number" in str(err.value)
