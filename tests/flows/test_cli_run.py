"""`trueup run`: the nightly job from the command line prints the report of the run it started."""

from __future__ import annotations

import os
import re
from pathlib import Path

from pipelines.cli import main as cli


def test_trueup_run_prints_the_report_of_its_own_run(home, monkeypatch, capsys):
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    monkeypatch.delenv("TRUEUP_HOME", raising=False)

    assert cli(["--home", str(home), "run"]) == 0
    out = capsys.readouterr().out
    run_id = re.search(r"^run (\S+) succeeded in", out, re.M).group(1)
    report = Path(re.search(r"^report: (.+)$", out, re.M).group(1))
    assert report.exists() and report.parent.name == run_id  # this run's report, not an earlier one
    assert "## " in out  # the summary itself, rendered
    assert "TRUEUP_HOME" not in os.environ  # the job is rebuilt from it; the caller's environment is left as it was
