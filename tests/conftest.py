"""Shared fixtures: a real store on a temp file, the real texts, default settings."""

from __future__ import annotations

import sqlite3

import pytest

from menus import lending as app
from menus.texts import load_all
from store import migrations
from store.writer import Store, connect


@pytest.fixture
def texts():
    return load_all()


@pytest.fixture
def settings():
    return app.Settings(site="test-site")


@pytest.fixture
def db_path(tmp_path):
    return str(tmp_path / "gatewayd.db")


@pytest.fixture
def conn(db_path) -> sqlite3.Connection:
    """A migrated writer connection for sync core tests (autocommit; wrap your own txn)."""
    c = connect(db_path)
    c.execute("PRAGMA journal_mode = WAL")
    migrations.migrate(c)
    yield c
    c.close()


@pytest.fixture
async def store(db_path):
    async with Store.open(db_path) as s:
        yield s
