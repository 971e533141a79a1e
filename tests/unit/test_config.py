"""Rules and systems files are validated at load, with errors that name the line."""

from __future__ import annotations

import shutil

import pytest

from trueup.config import Config, ConfigError


def _config_dir(tmp_path, config_dir, rules_edit=None, systems_edit=None):
    d = tmp_path / "config"
    shutil.copytree(config_dir, d)
    if rules_edit:
        text = (d / "rules.yaml").read_text()
        old, new = rules_edit
        assert old in text
        (d / "rules.yaml").write_text(text.replace(old, new, 1))
    if systems_edit:
        text = (d / "systems.yaml").read_text()
        old, new = systems_edit
        assert old in text
        (d / "systems.yaml").write_text(text.replace(old, new, 1))
    return d


def _line_of(path, needle):
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


def test_shipped_config_loads(config):
    assert set(config.systems.systems) == {"erp", "crm", "wms"}
    assert set(config.rules.domains) == {"customer", "product", "price", "inventory"}
    assert config.rules.domains["customer"].fields["credit_status"].owner == "erp"


def test_unknown_system_is_rejected_with_its_line(tmp_path):
    from tests.conftest import CONFIG_DIR

    d = _config_dir(tmp_path, CONFIG_DIR, rules_edit=("credit_status: {owner: erp, targets: {crm: update}",
                                                       "credit_status: {owner: sap, targets: {crm: update}"))
    with pytest.raises(ConfigError) as err:
        Config.load(d)
    line = _line_of(d / "rules.yaml", "owner: sap")
    assert f"rules.yaml:{line}" in str(err.value)
    assert "unknown system 'sap'" in str(err.value)
    assert "credit_status" in str(err.value)


def test_unknown_strategy_and_unknown_key_are_rejected(tmp_path):
    from tests.conftest import CONFIG_DIR

    d = _config_dir(tmp_path, CONFIG_DIR, rules_edit=("role:          {owner: erp, fallback: [crm], severity: low}",
                                                       "role:          {owner: erp, fallback: [crm], strategy: loudest, colour: red}"))
    with pytest.raises(ConfigError) as err:
        Config.load(d)
    msg = str(err.value)
    line = _line_of(d / "rules.yaml", "strategy: loudest")
    assert f"rules.yaml:{line}" in msg and "strategy" in msg and "colour" in msg


def test_unknown_field_and_owner_as_target_are_rejected(tmp_path):
    from tests.conftest import CONFIG_DIR

    d = _config_dir(tmp_path, CONFIG_DIR, rules_edit=("mpn:           {owner: erp, severity: low}",
                                                       "shoe_size:     {owner: erp, severity: low}"))
    with pytest.raises(ConfigError, match="shoe_size: unknown field of product"):
        Config.load(d)
    d2 = _config_dir(tmp_path / "b", CONFIG_DIR, rules_edit=("credit_status: {owner: erp, targets: {crm: update}",
                                                              "credit_status: {owner: erp, targets: {erp: update}"))
    with pytest.raises(ConfigError, match="cannot also be a correction target"):
        Config.load(d2)


def test_sql_identifiers_from_config_are_validated(tmp_path):
    from tests.conftest import CONFIG_DIR

    d = _config_dir(tmp_path, CONFIG_DIR, systems_edit=("table: erp_customer", 'table: "erp_customer; drop table x"'))
    with pytest.raises(ConfigError, match="not a valid identifier"):
        Config.load(d)


def test_code_maps_must_be_reversible(tmp_path):
    from tests.conftest import CONFIG_DIR

    d = _config_dir(tmp_path, CONFIG_DIR, systems_edit=("map: {OK: ok, HOLD: hold, BLOCK: blocked}",
                                                         "map: {OK: ok, HOLD: hold, BLOCK: hold}"))
    with pytest.raises(ConfigError, match="one-to-one"):
        Config.load(d)


def test_create_in_only_where_a_created_record_gets_a_key(tmp_path):
    from tests.conftest import CONFIG_DIR

    d = _config_dir(tmp_path / "a", CONFIG_DIR, systems_edit=("        create_key: golden_id\n", ""))
    with pytest.raises(ConfigError, match="needs `create_key: golden_id`"):
        Config.load(d)
    d2 = _config_dir(tmp_path / "b", CONFIG_DIR, rules_edit=("\n  price:\n", "\n  price:\n    create_in: {crm: {severity: high}}\n"))
    with pytest.raises(ConfigError, match="price records are keyed by"):
        Config.load(d2)
