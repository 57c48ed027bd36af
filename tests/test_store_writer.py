"""The one writer: durability settings, group commit, per-job rollback, failures."""

from __future__ import annotations

import sqlite3

import pytest
import trio
import trio.testing

from store import migrations
from store.writer import Store, StoreClosed, StoreUnavailable, connect


def _insert_user(conn, msisdn):
    conn.execute("INSERT INTO users (msisdn, created_at, updated_at) VALUES (?, 0, 0)", (msisdn,))
    return msisdn


def _count_users(conn):
    return conn.execute("SELECT COUNT(*) FROM users").fetchone()[0]


async def test_open_migrates_and_sets_wal_full(db_path):
    async with Store.open(db_path) as store:
        assert await store.read(migrations.current_version) == migrations.LATEST
    conn = sqlite3.connect(db_path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == migrations.LATEST


async def test_write_is_visible_to_readers_after_commit(store):
    await store.write(_insert_user, "254700000001")
    assert await store.read(_count_users) == 1


async def test_concurrent_writers_share_commits(store):
    # 200 writers queued at once: the writer thread drains them in groups, so far
    # fewer COMMITs (fsyncs) than transactions.
    async with trio.open_nursery() as n:
        for i in range(200):
            n.start_soon(store.write, _insert_user, f"2547{i:08d}")
    assert await store.read(_count_users) == 200
    assert store.stats.transactions == 200
    assert store.stats.commits < 200
    assert store.stats.max_group > 1


async def test_a_failing_job_rolls_back_alone(store):
    def bad(conn):
        _insert_user(conn, "254700000009")
        raise ValueError("domain says no")

    async with trio.open_nursery() as n:
        n.start_soon(store.write, _insert_user, "254700000001")
        with pytest.raises(ValueError, match="domain says no"):
            await store.write(bad)
        n.start_soon(store.write, _insert_user, "254700000002")
    rows = await store.read(lambda c: [r[0] for r in c.execute("SELECT msisdn FROM users")])
    assert sorted(rows) == ["254700000001", "254700000002"]


async def test_constraint_violation_is_reported_not_fatal(store):
    await store.write(_insert_user, "254700000001")
    with pytest.raises(sqlite3.IntegrityError):
        await store.write(_insert_user, "254700000001")
    await store.write(_insert_user, "254700000002")
    assert await store.read(_count_users) == 2


async def test_commit_failure_fails_every_job_of_the_group_and_recovers(db_path):
    async with Store.open(db_path) as store:
        # A job that makes COMMIT itself fail: a deferred foreign key violated at commit.
        def deferred_violation(conn):
            conn.execute("PRAGMA defer_foreign_keys = ON")
            conn.execute("INSERT INTO ledger_postings (txn_id, account, amount_cents) "
                         "VALUES (999, 'x', 1)")

        with pytest.raises(StoreUnavailable):
            await store.write(deferred_violation)
        assert store.stats.failed_commits == 1
        assert store.last_error is not None
        await store.write(_insert_user, "254700000001")  # serving again
        assert store.last_error is None
        assert await store.read(lambda c: c.execute(
            "SELECT COUNT(*) FROM ledger_postings").fetchone()[0]) == 0


async def test_write_after_close_raises(db_path):
    async with Store.open(db_path) as store:
        pass
    with pytest.raises(StoreClosed):
        await store.write(_insert_user, "254700000001")


async def test_close_finishes_queued_jobs(db_path):
    async with trio.open_nursery() as n:
        async with Store.open(db_path) as store:
            for i in range(50):
                n.start_soon(store.write, _insert_user, f"2547{i:08d}")
            await trio.testing.wait_all_tasks_blocked()  # all queued before the close
    conn = connect(db_path, readonly=True)
    assert _count_users(conn) == 50


async def test_readers_cannot_write(store):
    with pytest.raises(sqlite3.OperationalError):
        await store.read(_insert_user, "254700000001")


async def test_newer_schema_is_refused(db_path):
    conn = sqlite3.connect(db_path)
    conn.execute(f"PRAGMA user_version = {migrations.LATEST + 1}")
    conn.close()
    with pytest.raises(RuntimeError, match="newer than this gatewayd"):
        async with Store.open(db_path):
            pass
