"""Backends for the tuning-database contract tests: a fresh SQLite file, and a fresh PostgreSQL database
on the server named by DS4C_TEST_PG_URL (dropped afterwards)."""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # vecadd_template, also for spawned workers

PG_URL = os.environ.get("DS4C_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _pg_database():
    import sqlalchemy

    name = f"ds4c_test_{uuid.uuid4().hex[:12]}"
    pytest.importorskip("psycopg", reason="psycopg (the PostgreSQL driver) not installed")
    admin = sqlalchemy.create_engine(PG_URL, isolation_level="AUTOCOMMIT",
                                     connect_args={"connect_timeout": 3})
    try:
        with admin.connect() as c:
            c.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    except Exception as e:
        admin.dispose()
        pytest.skip(f"PostgreSQL at {PG_URL} not reachable: {type(e).__name__}")
    url = sqlalchemy.engine.make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    return admin, name, url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'tuning.db'}"
        return
    import sqlalchemy

    admin, name, url = _pg_database()
    yield url
    with admin.connect() as c:
        c.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()
