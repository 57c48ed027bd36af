"""The box's side of upstream sync, as trio tasks around the sans-I/O cores.

Push: a loop that hands the next batch to the upstream whenever there is one and the
backhaul answers, one batch at a time, moving the checkpoint only on the upstream's
signed acknowledgement, and taking the inbound changes (M-PESA results, money received)
that ride on the answer. With nothing to push it asks for inbound changes now and then;
after a failure that small signed GET is the cheap probe that must succeed before a
batch is sent again.

Pull: gatewayd.sync_api, mounted at /sync on the HTTP listener, serves the same batches
to an upstream that fetches them itself, and takes its acks and inbound envelopes,
through this same service.

Both share one `Outbound` (sync.checkpoint) behind one lock, so a batch is the same
bytes whichever way it leaves, and one checkpoint, stored in the kv table. The wire
protocol is docs/sync-protocol.md.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import structlog
import trio

from store import changelog, inbound
from store.lending import Notice
from store.writer import Store
from sync.auth import H_NONCE, AuthError, Verifier, clock_offset, sign, verify_response
from sync.batch import Batch, Record
from sync.checkpoint import (Advanced, Inbound, Outbound, decode_inbound,
                             decode_push_response, retry_delay, to_apply)

log = structlog.get_logger("gatewayd.sync")
# Notices the inbound changes cause are rendered and queued by the caller's function, in
# the same transaction (the menus own the texts).
NoticeSink = Callable[[Any, list[Notice], float], None]


@dataclass
class SyncStats:
    batches_pushed: int = 0
    batches_pulled: int = 0
    bytes_sent: int = 0
    acks: int = 0
    inbound_applied: int = 0
    failures: int = 0
    backhaul: bool = False
    last_ack_at: float | None = None
    last_error: str | None = None


class SyncService:
    def __init__(self, store: Store, site: str, key: bytes, notices: NoticeSink, *,
                 upstream: str | None = None, max_records: int = 20_000,
                 max_bytes: int = 256 * 1024, level: int | None = None,
                 idle_poll_seconds: float = 60.0, window_seconds: int = 300,
                 retry_base_seconds: float = 5.0, retry_max_seconds: float = 900.0,
                 rng: random.Random | None = None) -> None:
        self.store, self.site, self.key, self.notices = store, site, key, notices
        self.upstream = upstream.rstrip("/") if upstream else None
        self.idle_poll_seconds = idle_poll_seconds
        self.retry_base_seconds, self.retry_max_seconds = retry_base_seconds, retry_max_seconds
        self.verifier = Verifier({site: key}, window_seconds=window_seconds)
        self.outbound = Outbound(site, 0, max_records=max_records, max_bytes=max_bytes,
                                 level=level)
        self.cursor = 0
        self.offset = 0.0          # the upstream's clock minus ours, learnt from answers
        self.stats = SyncStats()
        self.rng = rng or random.Random()
        self._lock = trio.Lock()
        self._changed = trio.Event()

    # -- state ------------------------------------------------------------------------
    async def load(self) -> None:
        cp, cur = await self.store.read(_load_state)
        self.outbound.checkpoint, self.cursor = cp, cur

    def changed(self) -> None:
        """A transaction committed change-log rows: the push loop may have work."""
        self._changed.set()

    async def lag(self) -> dict[str, Any]:
        """How far the upstream is behind: records not acknowledged, and for how long."""
        last, oldest = await self.store.read(_lag, self.outbound.checkpoint)
        return {"checkpoint": self.outbound.checkpoint, "last_seq": last,
                "records": max(0, last - self.outbound.checkpoint),
                "seconds": round(time.time() - oldest, 1) if oldest else 0.0,
                "inbound_cursor": self.cursor}

    async def batch_from(self, after: int | None = None) -> Batch | None:
        async with self._lock:
            b = self.outbound.cached(after)
            if b is not None:
                return b
            start = self.outbound.checkpoint if after is None else after
            rows = await self.store.read(changelog.since, start, self.outbound.max_records)
            records = [Record.from_row(r) for r in rows]
            # zstd at a high level is CPU work: off the event loop.
            return await trio.to_thread.run_sync(self.outbound.build, records, after)

    async def acknowledge(self, ack: Any) -> int:
        """Move the checkpoint on an upstream's ack (raises SyncConflict)."""
        async with self._lock:
            result = self.outbound.on_ack(ack)
            if isinstance(result, Advanced):
                await self.store.write(_set, inbound.CHECKPOINT, result.checkpoint, time.time())
                self.stats.acks += 1
                self.stats.last_ack_at = time.time()
                log.info("sync_acked", checkpoint=result.checkpoint)
            return self.outbound.checkpoint

    async def apply_inbound(self, env: Inbound) -> int:
        """Apply an envelope once (raises SyncConflict when it would skip changes)."""
        async with self._lock:
            todo = to_apply(env, self.cursor)
            if todo or env.last_seq > self.cursor:
                counts = await self.store.write(self._apply_job, todo, env.last_seq)
                self.cursor = max(self.cursor, env.last_seq)
                self.stats.inbound_applied += len(todo)
                if todo:
                    log.info("sync_inbound_applied", counts=counts, cursor=self.cursor)
            return self.cursor

    def _apply_job(self, conn: Any, todo: tuple, last_seq: int) -> dict[str, int]:
        now = time.time()
        counts, notices = inbound.apply(conn, self.site, todo, last_seq, now)
        self.notices(conn, notices, now)
        return counts

    # -- push -------------------------------------------------------------------------
    async def push_loop(self) -> None:
        """Runs for the life of the daemon when an upstream is configured."""
        assert self.upstream is not None
        failures = 0
        async with httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=15.0)) as client:
            while True:
                try:
                    if failures:
                        await self._poll_inbound(client)   # the cheap probe first
                    batch = await self.batch_from()
                    if batch is not None:
                        await self._push(client, batch)
                    else:
                        await self._poll_inbound(client)
                    failures = 0
                    self.stats.backhaul = True
                    if batch is None:
                        self._changed = trio.Event()
                        with trio.move_on_after(self.idle_poll_seconds):
                            await self._changed.wait()
                except (httpx.HTTPError, SyncError, AuthError, ValueError) as e:
                    failures += 1
                    self.stats.failures += 1
                    self.stats.backhaul = False
                    self.stats.last_error = f"{type(e).__name__}: {e}"
                    delay = retry_delay(failures, self.rng, self.retry_base_seconds,
                                        self.retry_max_seconds)
                    log.warning("sync_push_failed", error=self.stats.last_error,
                                retry_in=round(delay, 1))
                    await trio.sleep(delay)

    async def _call(self, client: httpx.AsyncClient, method: str, target: str,
                    body: bytes = b"") -> httpx.Response:
        for _ in range(2):  # a second go only after adopting the clock from a stale 401
            headers = sign(method, target, body, self.site, self.key, time.time() + self.offset)
            sent = time.time()
            r = await client.request(method, self.upstream + target, content=body,
                                     headers={**headers,
                                              "content-type": "application/octet-stream"})
            received = time.time()
            try:
                ts = verify_response(r.status_code, r.headers, r.content, self.site, self.key,
                                     headers[H_NONCE])
            except AuthError as e:
                raise SyncError(f"{method} {target}: answer {r.status_code} not signed by "
                                f"the upstream ({e})") from None
            self.offset = clock_offset(ts, sent, received)
            if r.status_code == 401 and b"stale" in r.content:
                continue
            return r
        raise SyncError(f"{method} {target}: clock still out of the window")

    async def _push(self, client: httpx.AsyncClient, batch: Batch) -> None:
        target = f"/v1/sites/{self.site}/batches?inbound_after={self.cursor}"
        r = await self._call(client, "POST", target, batch.wire)
        self.stats.bytes_sent += len(batch.wire)
        if r.status_code != 200:
            raise SyncError(f"push of seq {batch.after + 1}..{batch.last_seq}: "
                            f"{r.status_code} {r.text[:200]}")
        self.stats.batches_pushed += 1
        ack, env = decode_push_response(r.content, self.site)
        await self.acknowledge(ack)
        if env is not None:
            await self.apply_inbound(env)

    async def _poll_inbound(self, client: httpx.AsyncClient) -> None:
        r = await self._call(client, "GET", f"/v1/sites/{self.site}/inbound?after={self.cursor}")
        if r.status_code != 200:
            raise SyncError(f"inbound poll: {r.status_code} {r.text[:200]}")
        await self.apply_inbound(decode_inbound(r.content, self.site))


class SyncError(Exception):
    pass


# -- store jobs -------------------------------------------------------------------------------

def _load_state(conn: Any) -> tuple[int, int]:
    return inbound.get_int(conn, inbound.CHECKPOINT), inbound.get_int(conn, inbound.INBOUND_CURSOR)


def _set(conn: Any, key: str, value: int, now: float) -> None:
    inbound.set_int(conn, key, value, now)


def _lag(conn: Any, checkpoint: int) -> tuple[int, float | None]:
    last = changelog.last_seq(conn)
    row = conn.execute("SELECT MIN(at) FROM change_log WHERE seq > ?", (checkpoint,)).fetchone()
    return last, row[0]
