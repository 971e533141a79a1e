"""Shared fixtures: one demo landscape built per session, copied per test that writes to it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from trueup.config import Config

REPO = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO / "config"


@pytest.fixture(scope="session")
def config() -> Config:
    return Config.load(CONFIG_DIR)


@pytest.fixture(scope="session")
def demo_template(tmp_path_factory) -> Path:
    """The default demo landscape, built once; tests copy it before changing anything."""
    from sandbox.generator import build

    root = tmp_path_factory.mktemp("demo_template") / "demo"
    build(root, scale=1.0, seed=7)
    return root


@pytest.fixture
def home(tmp_path, demo_template) -> Path:
    """A fresh trueup home holding a private copy of the demo landscape."""
    h = tmp_path / "home"
    shutil.copytree(demo_template, h / "demo")
    return h


def servers_required() -> bool:
    return os.environ.get("TRUEUP_REQUIRE_SERVERS", "") == "1"


@pytest.fixture(scope="session")
def server_dbs():
    """Fresh PostgreSQL / MariaDB databases for this session (`server_dbs.new("postgresql")`),
    every one dropped when the session ends."""
    from tests.servers import ServerDatabases

    dbs = ServerDatabases()
    yield dbs
    dbs.drop_all()


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def db_url(request, tmp_path) -> str:
    """A fresh database of each kind trueup reads, writes and keeps its state in: a SQLite file,
    PostgreSQL, MariaDB (the servers fail the test, not skip it, when CI requires them)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'db.sqlite'}"
    return request.getfixturevalue("server_dbs").new(request.param)
