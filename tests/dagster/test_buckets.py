"""A domain split into buckets of golden ids (config `scale.buckets`) runs as independent golden and
plan steps per bucket, and decides exactly what the unsplit engine decides on the same records."""

from __future__ import annotations

import shutil
from datetime import datetime, timezone

import dagster as dg
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml

from pipelines.definitions import build_definitions
from tests.conftest import REPO
from trueup import reconcile
from trueup.config import Config
from trueup.warehouse import Warehouse

pytestmark = pytest.mark.slow

BUCKETS = {"customer": 3, "price": 2}
PLAN_COLUMNS = ["change_id", "domain", "target_system", "action", "golden_id", "target_key", "field",
                "old_value", "new_value", "source_system", "rule", "severity"]


def test_bucketed_golden_and_plan_equal_the_whole_domain(home, tmp_path):
    config_dir = tmp_path / "config"
    shutil.copytree(REPO / "config", config_dir)
    settings = yaml.safe_load((config_dir / "trueup.yaml").read_text())
    settings["scale"] = {"buckets": BUCKETS}
    (config_dir / "trueup.yaml").write_text(yaml.safe_dump(settings))

    defs = build_definitions(home=home, config_dir=config_dir)
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert {"customer_golden_b0", "customer_golden_b2", "customer_plan_b2", "price_plan_b1"} <= keys
    assert "customer_plan_b3" not in keys and "product_golden_b0" not in keys  # product is not split
    upstream = {k.to_user_string() for k in graph.get(dg.AssetKey("customer_plan")).parent_keys}
    assert upstream == {"customer_matched", "customer_plan_b0", "customer_plan_b1", "customer_plan_b2"}

    job = defs.resolve_job_def("nightly_reconciliation")
    selection = dg.AssetSelection.groups("customer", "product", "price").resolve(graph)
    result = job.execute_in_process(instance=dg.DagsterInstance.ephemeral(), asset_selection=list(selection))
    assert result.success

    config = Config.load(config_dir)
    wh = home / "warehouse"
    for domain, n in BUCKETS.items():
        matched = Warehouse(wh).read(f"{domain}_matched")
        bucket = matched.column("bucket")
        assert pc.min(bucket).as_py() == 0 and pc.max(bucket).as_py() == n - 1
        # a golden record's records are all in one bucket
        per_golden = matched.group_by("golden_id").aggregate([("bucket", "count_distinct")])
        assert pc.max(per_golden.column("bucket_count_distinct")).as_py() == 1
        golden_ids = [set(pq.read_table(wh / f"{domain}_golden_b{i}.parquet").column("golden_id").to_pylist())
                      for i in range(n)]
        assert all(g for g in golden_ids) and sum(len(g) for g in golden_ids) == len(set().union(*golden_ids))

        # the same decisions as the engine over the whole domain at once
        whole = matched.drop_columns(["bucket"])
        golden = reconcile.build_golden(domain, whole, config, datetime.now(timezone.utc).date())
        expected = reconcile.build_plan(domain, whole, golden, config,
                                        pq.read_table(wh / "state" / "tombstones" / f"{domain}.parquet"))
        got = pq.read_table(wh / f"{domain}_plan.parquet")
        assert got.num_rows > 0
        assert got.select(PLAN_COLUMNS).sort_by("change_id").equals(expected.select(PLAN_COLUMNS).sort_by("change_id"))
        stored_golden = pq.read_table(wh / f"{domain}_golden.parquet")
        assert stored_golden.sort_by("golden_id").equals(golden.sort_by("golden_id"))
    plan = pq.read_table(wh / "customer_plan.parquet")
    assert set(plan.column("action").to_pylist()) >= {"update", "create"}  # creates and xrefs went through buckets
