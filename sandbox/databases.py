"""Databases on the PostgreSQL and MariaDB servers the demo, the tests and the benchmarks put
their systems in: created empty with the encoding trueup expects, dropped with their sessions.
`name` is the caller's own (a constant or a generated name), never input."""

from __future__ import annotations

import sqlalchemy as sa

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
MARIADB_ADMIN = "mysql+pymysql://root@127.0.0.1:3306/test?charset=utf8mb4"


def create_database(conn: sa.Connection, kind: str, name: str) -> None:
    """An empty database `name` (`kind`: postgresql | mariadb), on an AUTOCOMMIT connection."""
    if kind == "postgresql":
        conn.execute(sa.text(f'CREATE DATABASE "{name}" ENCODING \'UTF8\' TEMPLATE template0'))
    else:
        conn.execute(sa.text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"))


def drop_database(conn: sa.Connection, kind: str, name: str) -> None:
    """Drop `name` if it is there (PostgreSQL: its sessions too)."""
    if kind == "postgresql":
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    else:
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS `{name}`"))
