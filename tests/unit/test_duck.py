"""The engine's DuckDB memory cap and spill folder come from the environment, and a capped
engine still finishes a join whose build side is larger than the cap."""

from __future__ import annotations

import json
import subprocess
import sys


def _run(code: str, env: dict) -> dict:
    import os

    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_memory_limit_and_spill_folder_from_the_environment(tmp_path):
    code = """
import json
from trueup.duck import connect
con = connect()
limit, temp = con.execute("SELECT current_setting('memory_limit'), current_setting('temp_directory')").fetchone()
n = con.execute('''SELECT count(*) FROM range(3000000) a(i) JOIN
                   (SELECT i, repeat('x', 40) || i AS pad FROM range(3000000) b(i)) b USING (i)''').fetchone()[0]
print(json.dumps({"limit": limit, "temp": temp, "joined": n}))
"""
    capped = _run(code, {"TRUEUP_DUCKDB_MEMORY_LIMIT": "100MB", "TRUEUP_DUCKDB_TEMP_DIR": str(tmp_path)})
    assert capped["limit"] in ("95.3 MiB", "100.0 MB")
    assert capped["temp"].startswith(str(tmp_path / "trueup-duckdb-"))  # the process's own spill folder
    assert capped["joined"] == 3_000_000  # ~200 MB of build side under a 100 MB cap
    default = _run(code, {"TRUEUP_DUCKDB_MEMORY_LIMIT": ""})
    assert default["limit"] in ("1.8 GiB", "1.9 GiB", "2.0 GB") and default["joined"] == 3_000_000
    free = _run(code, {"TRUEUP_DUCKDB_MEMORY_LIMIT": "none", "TRUEUP_DUCKDB_TEMP_DIR": str(tmp_path)})
    assert free["limit"] not in (capped["limit"], default["limit"]) and free["joined"] == 3_000_000
    assert free["temp"].startswith(str(tmp_path / "trueup-duckdb-"))  # uncapped, still its own folder


def test_spill_folders_of_processes_that_are_gone_are_removed(tmp_path):
    """A killed run's spill folder (DuckDB removes its own only on a clean exit) goes when the
    next process opens its database; a live process's folder and other folders stay."""
    import os

    from trueup.duck import sweep_spill_folders

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    for name in (f"trueup-duckdb-{gone}", f"trueup-duckdb-{os.getpid()}", f"trueup-duckdb-{os.getppid()}",
                 "trueup-duckdb-notapid", "other-1"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "spill.block").write_bytes(b"x")
    assert sweep_spill_folders(str(tmp_path)) == [f"trueup-duckdb-{gone}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"trueup-duckdb-{os.getpid()}", f"trueup-duckdb-{os.getppid()}", "trueup-duckdb-notapid", "other-1"])
