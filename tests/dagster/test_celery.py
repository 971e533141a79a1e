"""The nightly job on Dagster's Celery executor: a Redis broker on this machine, two workers
started here, every step a Celery task. It must decide and write exactly what the in-process run
does on an identical landscape (same plans, same ledger)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import dagster as dg
import pyarrow.parquet as pq
import pytest

from pipelines.definitions import build_definitions, nightly_job
from tests.conftest import REPO, servers_required
from trueup.state import StateStore

pytestmark = pytest.mark.slow

REDIS = os.environ.get("TRUEUP_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
DOMAINS = ["customer", "product", "price", "inventory"]
PLAN_COLUMNS = ["change_id", "target_system", "action", "target_key", "field", "old_value", "new_value"]


@pytest.fixture
def redis_url() -> str:
    import redis

    try:
        client = redis.Redis.from_url(REDIS, socket_connect_timeout=2)
        client.ping()
    except redis.RedisError as exc:
        message = f"Redis does not answer at {REDIS}: {exc}"
        if servers_required():
            pytest.fail(message)
        pytest.skip(message)
    client.flushdb()  # a private database number: no stale tasks from an earlier run
    return REDIS


def _plans(home) -> dict[str, list[dict]]:
    return {d: sorted(pq.read_table(home / "warehouse" / f"{d}_plan.parquet", columns=PLAN_COLUMNS).to_pylist(),
                      key=lambda r: r["change_id"]) for d in DOMAINS}


def _ledger(home, run_id) -> list[tuple]:
    t = StateStore(f"sqlite:///{home / 'state.db'}").ledger(run_id)
    return sorted(zip(*[t.column(c).to_pylist() for c in ("change_id", "system", "entity", "status")]))


def _workers(env: dict, logs, n: int = 2) -> list[subprocess.Popen]:
    return [subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "dagster_celery.app", "worker", "-Q", "dagster",
         "--prefetch-multiplier=1", "--concurrency=1", "--loglevel=WARNING", "-n", f"trueup{i}@%h",
         "--without-gossip", "--without-mingle"],
        env=env, cwd=REPO, stdout=logs, stderr=subprocess.STDOUT) for i in range(n)]


# dagster-celery waits for a task whose worker failed before reporting (a resource that would not
# start): without a bound the run, and the suite, hang
@pytest.mark.timeout(300)
def test_nightly_on_celery_workers_matches_the_in_process_run(tmp_path, demo_template, redis_url, monkeypatch):
    inproc, celery = tmp_path / "inproc", tmp_path / "celery"
    for h in (inproc, celery):
        shutil.copytree(demo_template, h / "demo")

    local = build_definitions(home=inproc, executor_name="in_process").resolve_job_def("nightly_reconciliation")
    first = local.execute_in_process(instance=dg.DagsterInstance.ephemeral())
    assert first.success

    # the workers find the celery settings and the code location as a deployment would: from the
    # environment (TRUEUP_*), a dagster_celery_config module and the job's reconstructable pointer
    conf = tmp_path / "celery_conf"
    conf.mkdir()
    (conf / "dagster_celery_config.py").write_text(f"broker_url = {redis_url!r}\nresult_backend = {redis_url!r}\n")
    env = {**os.environ, "TRUEUP_HOME": str(celery), "TRUEUP_EXECUTOR": "celery",
           "PYTHONPATH": os.pathsep.join([str(conf), str(REPO), os.environ.get("PYTHONPATH", "")])}
    monkeypatch.setenv("TRUEUP_HOME", str(celery))
    monkeypatch.setenv("TRUEUP_EXECUTOR", "celery")
    log_path = tmp_path / "workers.log"
    with open(log_path, "w") as logs:
        workers = _workers(env, logs)
        try:
            (tmp_path / "dagster_home").mkdir()
            instance = dg.DagsterInstance.local_temp(str(tmp_path / "dagster_home"))
            t = time.perf_counter()
            with dg.execute_job(dg.reconstructable(nightly_job), instance=instance,
                                run_config={"execution": {"config": {"broker": redis_url, "backend": redis_url}}}
                                ) as second:
                assert second.success, log_path.read_text()[-3000:]
                run_id = second.run_id
            elapsed = time.perf_counter() - t
        finally:
            for w in workers:
                w.terminate()
            for w in workers:
                try:
                    w.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    w.kill()
    # the steps really went through the broker to the workers
    events = [e.message or "" for e in instance.all_logs(run_id)]
    assert any("celery" in m.lower() for m in events), events[:20]

    assert _plans(celery) == _plans(inproc)
    assert _ledger(celery, run_id) == _ledger(inproc, first.run_id)
    assert len(_ledger(inproc, first.run_id)) > 200
    print(f"celery run: {elapsed:.1f} s")
