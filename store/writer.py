"""The one writer: a sqlite3 connection on one thread, fed whole transactions.

Why a thread of our own rather than aiosqlite: aiosqlite is asyncio-only and fails inside
`trio.run`; bridging it through trio-asyncio halves its throughput and adds a compiled
dependency. One hop per whole transaction keeps the thread cost (≈0.2 ms) off each
statement.

Group commit: the thread drains every job queued while the previous fsync ran, runs each
in its own SAVEPOINT inside one `BEGIN IMMEDIATE … COMMIT`, and so shares one fsync among
them. A job that raises rolls back to its savepoint alone; the others still commit.
Nobody is answered before the COMMIT returns, so a reply a villager saw is on disk.
"""

from __future__ import annotations

import contextlib
import os
import queue
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import trio

from store import migrations

T = TypeVar("T")

# Bounds the latency one group adds to its last member; the queue drains in FIFO order.
MAX_GROUP = 256


class StoreClosed(RuntimeError):
    pass


class StoreUnavailable(RuntimeError):
    """The commit itself failed (disk full, read-only filesystem, I/O error)."""


@dataclass
class _Job:
    fn: Callable[..., Any]
    args: tuple
    token: trio.lowlevel.TrioToken
    done: trio.Event = field(default_factory=trio.Event)
    result: Any = None
    error: BaseException | None = None


# Commit (fsync) latency buckets, ms: 0.3 ms is this box's SSD, 5-20 ms an SD card.
COMMIT_BUCKETS_MS = (0.5, 1, 2, 5, 10, 20, 50, 100, 500)


@dataclass
class WriterStats:
    transactions: int = 0
    commits: int = 0
    failed_commits: int = 0
    last_commit_ms: float = 0.0
    max_group: int = 0
    commit_ms_sum: float = 0.0
    # One count per bucket of COMMIT_BUCKETS_MS, plus one for slower commits.
    commit_ms_counts: list[int] = field(
        default_factory=lambda: [0] * (len(COMMIT_BUCKETS_MS) + 1))

    def observe_commit(self, ms: float, group: int) -> None:
        self.last_commit_ms = ms
        self.commit_ms_sum += ms
        self.commits += 1
        self.transactions += group
        self.max_group = max(self.max_group, group)
        for i, bound in enumerate(COMMIT_BUCKETS_MS):
            if ms <= bound:
                self.commit_ms_counts[i] += 1
                return
        self.commit_ms_counts[-1] += 1


_STOP = object()


def connect(path: str, *, readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        conn = sqlite3.connect(
            f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
        )
        conn.execute("PRAGMA query_only = ON")
    else:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA busy_timeout = 5000")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


class Store:
    """Open with `async with Store.open(path) as store:`; inside, `await store.write(fn,
    *args)` runs `fn(conn, *args)` in the writer's transaction and `await store.read(fn,
    *args)` on a read-only connection in a worker thread."""

    def __init__(self, path: str, synchronous: str = "FULL", readers: int = 4) -> None:
        self.path = path
        self.synchronous = synchronous
        self.stats = WriterStats()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = False
        self._readers: list[sqlite3.Connection] = []
        self._reader_limit = trio.CapacityLimiter(readers)
        self._reader_count = readers
        self._token: trio.lowlevel.TrioToken | None = None
        self.last_error: str | None = None
        # Called on the trio thread after each successful commit (sync wakes on it).
        self.commit_listeners: list[Callable[[], None]] = []

    # -- lifecycle ---------------------------------------------------------------------
    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, path: str, **kw: Any) -> AsyncIterator["Store"]:
        store = cls(path, **kw)
        store._token = trio.lowlevel.current_trio_token()
        conn = await trio.to_thread.run_sync(store._open_writer)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(store._run_writer, conn)
            try:
                store._readers = [connect(path, readonly=True) for _ in range(store._reader_count)]
                yield store
            finally:
                store._closed = True
                store._queue.put(_STOP)
                # The writer finishes every queued job, checkpoints and closes; the
                # nursery waits for it, shielded so shutdown cannot cut a transaction.
        for r in store._readers:
            r.close()

    def _open_writer(self) -> sqlite3.Connection:
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        conn = connect(self.path)
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise RuntimeError(f"cannot put {self.path} in WAL mode (got {mode})")
        conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        migrations.migrate(conn)
        return conn

    async def _run_writer(self, conn: sqlite3.Connection) -> None:
        self.writer_connection = conn  # for fault-injection tests only
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self._writer_loop, conn)

    # -- the writer thread -------------------------------------------------------------
    def _writer_loop(self, conn: sqlite3.Connection) -> None:
        threading.current_thread().name = "store-writer"
        stopping = False
        try:
            while not stopping:
                batch: list[_Job] = []
                item = self._queue.get()
                while True:
                    if item is _STOP:
                        stopping = True
                    else:
                        batch.append(item)
                    if len(batch) >= MAX_GROUP:
                        break
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                if batch:
                    self._run_group(conn, batch)
        finally:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            conn.close()

    def _run_group(self, conn: sqlite3.Connection, batch: list[_Job]) -> None:
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            self._fail_all(batch, exc)
            return
        for job in batch:
            try:
                conn.execute("SAVEPOINT job")
                job.result = job.fn(conn, *job.args)
                conn.execute("RELEASE job")
            except BaseException as exc:  # the job's own fault: undo it alone
                job.error = exc
                try:
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                except sqlite3.Error as exc2:  # the connection itself is in trouble
                    self._rollback(conn)
                    self._fail_all(batch, exc2)
                    return
        t0 = time.perf_counter()
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback(conn)
            self._fail_all(batch, exc)
            return
        self.stats.observe_commit((time.perf_counter() - t0) * 1000, len(batch))
        self.last_error = None
        for job in batch:
            self._finish(job)
        if self.commit_listeners and self._token is not None:
            with contextlib.suppress(trio.RunFinishedError):
                self._token.run_sync_soon(self._committed)

    def _committed(self) -> None:
        for listener in self.commit_listeners:
            listener()

    def _rollback(self, conn: sqlite3.Connection) -> None:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")

    def _fail_all(self, batch: list[_Job], exc: BaseException) -> None:
        self.stats.failed_commits += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        err = StoreUnavailable(self.last_error)
        for job in batch:
            job.error = err
            job.result = None
            self._finish(job)

    def _finish(self, job: _Job) -> None:
        with contextlib.suppress(trio.RunFinishedError):
            job.token.run_sync_soon(job.done.set)

    # -- the trio side -----------------------------------------------------------------
    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(conn, *args)` in a transaction; returns once it is durably committed.

        Not cancellable once queued: the job will commit or fail regardless, and the
        caller must learn which (a shutdown waits the few milliseconds)."""
        if self._closed:
            raise StoreClosed("store is closed")
        job = _Job(fn, args, self._token or trio.lowlevel.current_trio_token())
        self._queue.put(job)
        with trio.CancelScope(shield=True):
            await job.done.wait()
        if job.error is not None:
            raise job.error
        return job.result

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(conn, *args)` on a read-only connection in a worker thread."""
        async with self._reader_limit:
            conn = self._readers.pop()
            try:
                return await trio.to_thread.run_sync(_read_txn, conn, fn, args)
            finally:
                self._readers.append(conn)


def _read_txn(conn: sqlite3.Connection, fn: Callable[..., T], args: tuple) -> T:
    # One snapshot for the whole function, so a multi-query read is consistent.
    conn.execute("BEGIN")
    try:
        return fn(conn, *args)
    finally:
        conn.execute("ROLLBACK")


def probe_write(conn: sqlite3.Connection, now: float) -> None:
    """A real write and fsync: proves the disk takes writes again after a failure."""
    conn.execute("INSERT INTO kv (key, value, updated_at) VALUES ('write_probe', ?, ?) "
                 "ON CONFLICT (key) DO UPDATE SET value = excluded.value, "
                 "updated_at = excluded.updated_at", (repr(now), now))
