"""The database connection's settings (SQLite's PRAGMAs from the URL)."""

from __future__ import annotations

import pytest
from tortoise import connections

from models.config import normalise_database_url


def test_a_sqlite_url_gets_a_busy_timeout_and_synchronous_normal_unless_it_sets_them():
    assert normalise_database_url("sqlite:///d/o.db") == (
        "sqlite:///d/o.db?busy_timeout=10000&synchronous=NORMAL")
    assert normalise_database_url("sqlite:///d/o.db?synchronous=FULL&busy_timeout=5") == (
        "sqlite:///d/o.db?synchronous=FULL&busy_timeout=5")
    assert normalise_database_url("postgresql://u@h/db") == "postgres://u@h/db"


async def test_the_sqlite_connection_runs_wal_with_synchronous_normal(db):
    if db.startswith("postgres"):
        pytest.skip("SQLite's PRAGMAs")
    conn = connections.get("default")
    [mode] = await conn.execute_query_dict("PRAGMA journal_mode")
    [sync] = await conn.execute_query_dict("PRAGMA synchronous")
    assert (mode["journal_mode"], sync["synchronous"]) == ("wal", 1)  # 1 = NORMAL (FULL is 2)
