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


def test_a_newer_proposal_supersedes_the_open_request_it_replaces_and_only_that(tmp_path):
    from trueup.state import StateStore

    store = StateStore(f"sqlite:///{tmp_path / 'state.db'}")

    def req(change_id, approval_id, key, field, new, action="update"):
        return {"change_id": change_id, "approval_id": approval_id, "target_system": "erp", "target_key": key,
                "golden_id": "g", "field": field, "action": action, "old_value": "1", "new_value": new,
                "rule": "r", "severity": "high", "approval_reason": "credit exposure changes"}

    store.request_approvals("run1", "customer", [req("a", "A", "C1", "credit_limit", "5000"),
                                                 req("b", "B", "C1", "payment_terms", "NET30"),
                                                 req("c", "C", "C2", "credit_limit", "7000")])
    # run 2: C1's credit limit moved on (a new value, a new approval); C2 is proposed again as it was
    store.request_approvals("run2", "customer", [req("d", "D", "C1", "credit_limit", "6000"),
                                                 req("c", "C", "C2", "credit_limit", "7000")])
    status = {r["change_id"]: r["status"] for r in store.approvals().to_pylist()}
    assert status == {"a": "superseded", "b": "pending", "c": "pending", "d": "pending"}
    # run 3: a create of C1 replaces every open request on that record
    store.request_approvals("run3", "customer", [req("e", "E", "C1", "name", "Acme", action="create")])
    status = {r["change_id"]: r["status"] for r in store.approvals().to_pylist()}
    assert status == {"a": "superseded", "b": "superseded", "c": "pending", "d": "superseded", "e": "pending"}


def test_the_state_store_opens_from_many_workers_at_once(tmp_path):
    # Celery or multiprocess steps open a fresh store together: one creates the tables, the
    # others must not fail on "already exists"
    import threading

    from trueup.state import StateStore

    url = f"sqlite:///{tmp_path / 'state.db'}"
    start, errors = threading.Barrier(8), []

    def open_store():
        start.wait()
        try:
            StateStore(url).approvals()
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    workers = [threading.Thread(target=open_store) for _ in range(8)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert errors == []
