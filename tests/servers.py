"""Fresh databases on the PostgreSQL and MariaDB servers for one test session, dropped after.

Admin URLs: TRUEUP_TEST_PG_URL and TRUEUP_TEST_MARIADB_URL (defaults: the local servers, trust /
no password). A server that does not answer skips its tests, or fails them when
TRUEUP_REQUIRE_SERVERS=1 (CI).
"""

from __future__ import annotations

import os
import secrets

import pytest
import sqlalchemy as sa

from sandbox.databases import MARIADB_ADMIN, PG_ADMIN, create_database, drop_database
from tests.conftest import servers_required


def admin_url(kind: str) -> sa.URL:
    env = {"postgresql": "TRUEUP_TEST_PG_URL", "mariadb": "TRUEUP_TEST_MARIADB_URL"}[kind]
    default = {"postgresql": PG_ADMIN, "mariadb": MARIADB_ADMIN}[kind]
    return sa.engine.make_url(os.environ.get(env) or default)


class ServerDatabases:
    """Creates databases named trueup_t_<random> and drops every one of them at the end."""

    def __init__(self):
        self.created: list[tuple[str, str]] = []
        self.prefix = f"trueup_t_{secrets.token_hex(3)}"
        self._engines: dict[str, sa.Engine] = {}

    def _admin(self, kind: str) -> sa.Engine:
        if kind not in self._engines:
            engine = sa.create_engine(admin_url(kind), isolation_level="AUTOCOMMIT",
                                      connect_args={"connect_timeout": 5})
            try:
                with engine.connect() as c:
                    c.execute(sa.text("SELECT 1"))
            except Exception as exc:  # noqa: BLE001
                engine.dispose()
                msg = f"{kind} server not reachable: {type(exc).__name__}"
                if servers_required():
                    pytest.fail(msg + " (TRUEUP_REQUIRE_SERVERS=1)")
                pytest.skip(msg)
            self._engines[kind] = engine
        return self._engines[kind]

    def new(self, kind: str) -> str:
        """A fresh, empty database on that server; returns its SQLAlchemy URL."""
        name = f"{self.prefix}_{len(self.created)}"
        with self._admin(kind).connect() as c:
            create_database(c, kind, name)
        self.created.append((kind, name))
        return admin_url(kind).set(database=name).render_as_string(hide_password=False)

    def drop_all(self) -> None:
        for kind, name in reversed(self.created):
            with self._admin(kind).connect() as c:
                drop_database(c, kind, name)
        for e in self._engines.values():
            e.dispose()
