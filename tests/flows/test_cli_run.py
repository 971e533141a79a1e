"""`trueup run`: the nightly job from the command line prints the report of the run it started,
for the home it was given, even when one process runs several homes."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pyarrow.compute as pc

from pipelines.cli import main as cli
from trueup.warehouse import Warehouse


def _run(home: Path, capsys) -> tuple[str, Path]:
    assert cli(["--home", str(home), "run"]) == 0
    out = capsys.readouterr().out
    run_id = re.search(r"^run (\S+) succeeded in", out, re.M).group(1)
    report = Path(re.search(r"^report: (.+)$", out, re.M).group(1))
    assert "## " in out  # the summary itself, rendered
    return run_id, report


def test_trueup_run_prints_the_report_of_its_own_run_for_each_home(home, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    monkeypatch.delenv("TRUEUP_EXECUTOR", raising=False)  # in-process, whatever an earlier test set
    other = tmp_path / "other"
    shutil.copytree(home / "demo", other / "demo")

    first_id, first = _run(home, capsys)
    second_id, second = _run(other, capsys)

    assert first.exists() and first.parent.name == first_id and first.is_relative_to(home)
    # the second home's run wrote its own warehouse and report, not the first home's again
    assert second.exists() and second.parent.name == second_id and second.is_relative_to(other)
    assert (other / "warehouse" / "reconciliation_report.json").exists()

    # the warehouse: bulk hand-offs as Arrow IPC, results as Parquet, both queryable by name
    wh = Warehouse(other / "warehouse")
    assert wh.find("customer_matched").suffix == ".arrow" and wh.find("erp_price_extract").suffix == ".arrow"
    assert wh.find("customer_plan").suffix == ".parquet" and wh.find("customer_golden").suffix == ".parquet"
    matched = wh.read("customer_matched")
    assert cli(["--home", str(other), "sql",
                "select source_system, count(*) as records, count(*) filter "
                "(where golden_id in (select golden_id from customer_plan)) as planned "
                "from customer_matched group by all order by 1"]) == 0
    shown = capsys.readouterr().out
    planned = pc.is_in(matched.column("golden_id"), value_set=wh.read("customer_plan").column("golden_id"))
    for system in ("crm", "erp", "wms"):
        mine = pc.equal(matched.column("source_system"), system)
        n, n_planned = pc.sum(mine).as_py(), pc.sum(pc.and_(mine, planned)).as_py()
        assert n and n_planned
        assert re.search(rf"│ {system}\s+│\s+{n}\s+│\s+{n_planned}\s+│", shown), (system, n, n_planned, shown)
    assert cli(["--home", str(other), "sql", "select * from no_such_table"]) == 2
    assert "customer_matched" in capsys.readouterr().err  # the tables there are, named
    # an error raised while the query runs, not when it is read: a message, not a traceback
    assert cli(["--home", str(other), "sql", "select source_key::INTEGER from customer_matched"]) == 2
    assert "Conversion" in capsys.readouterr().err
