"""The box's sync service: the pull API (ASGI, signed both ways) and the push loop
against a small upstream that follows docs/sync-protocol.md and can refuse."""

from __future__ import annotations

import json
import random
import time

import hypercorn.config
import hypercorn.trio
import trio

from gatewayd.sync_api import SyncApp
from store import inbound, lending
from sync.auth import H_NONCE, Verifier, sign, sign_response, verify_response
from sync.batch import decode_batch
from sync.checkpoint import Ack
from sync.service import SyncService
from tests.daemon_proc import free_port

SITE, KEY = "site-1", b"k" * 32


def no_notices(conn, notices, now):
    pass


async def _seed(store, n_loans=3):
    def job(conn):
        b = lending.register(conn, "254711000001", "Amina", "en", "h", time.time())
        for i in range(n_loans):
            lending.request_loan(conn, b, f"25471100010{i}", 100_000, 10_000, time.time(),
                                 3600, 10)
    await store.write(job)


async def call(app, method, target, body=b"", key=KEY, now=None, headers=None):
    """One signed request straight into the ASGI app; returns (status, headers, body)."""
    path, _, query = target.partition("?")
    h = headers or sign(method, target, body, SITE, key, time.time() if now is None else now)
    scope = {"type": "http", "method": method, "path": path,
             "query_string": query.encode(),
             "headers": [(k.lower().encode(), v.encode()) for k, v in h.items()]}
    sent: list[dict] = []
    chunks = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive():
        return chunks.pop(0)

    async def send(m):
        sent.append(m)

    await app(scope, receive, send)
    start, body_msg = sent
    out_headers = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], out_headers, body_msg["body"], h


async def test_pull_batches_ack_and_inbound(store):
    await _seed(store)
    svc = SyncService(store, SITE, KEY, no_notices)
    await svc.load()
    app = SyncApp(svc)

    status, headers, blob, req = await call(app, "GET", "/sync/batches?after=0")
    assert status == 200
    # The answer is signed and bound to our nonce.
    verify_response(status, headers, blob, SITE, KEY, req[H_NONCE])
    batch = decode_batch(blob, SITE)
    assert batch.after == 0 and batch.count >= 5
    assert {r.entity for r in batch.records} == {"user", "loan"}
    # Asking again gives the same bytes (a resend is harmless by construction).
    assert (await call(app, "GET", "/sync/batches?after=0"))[2] == blob

    ack = Ack(SITE, batch.last_seq, batch.sha256).to_json()
    status, _, body, _ = await call(app, "POST", "/sync/ack", ack)
    assert status == 200 and json.loads(body) == {"checkpoint": batch.last_seq}
    assert await store.read(inbound.get_int, inbound.CHECKPOINT) == batch.last_seq
    assert (await call(app, "POST", "/sync/ack", ack))[0] == 200       # repeated: harmless
    assert (await call(app, "GET", f"/sync/batches?after={batch.last_seq}"))[0] == 204
    status, _, body, _ = await call(app, "GET", "/sync/batches?after=99999")
    assert status == 409 and json.loads(body)["last_seq"] == batch.last_seq
    forged = Ack(SITE, batch.last_seq + 5, "0" * 64).to_json()
    status, _, body, _ = await call(app, "POST", "/sync/ack", forged)
    assert status == 409 and json.loads(body)["checkpoint"] == batch.last_seq


async def test_pull_inbound_applies_once_and_refuses_gaps(store):
    await _seed(store, 1)

    def approve(conn):
        loan = conn.execute("SELECT id, lender_id FROM loans").fetchone()
        lending.answer_request(conn, SITE, loan[0], loan[1], True, time.time())
        return conn.execute("SELECT key FROM mpesa_actions").fetchone()[0]

    key = await store.write(approve)
    svc = SyncService(store, SITE, KEY, no_notices)
    await svc.load()
    app = SyncApp(svc)
    env = json.dumps({"v": 1, "site": SITE, "after": 0, "changes": [
        {"kind": "mpesa_result", "seq": 1, "id": "res-1", "action_key": key,
         "result": "succeeded", "receipt": "QK12345678"}]}).encode()
    status, _, body, _ = await call(app, "POST", "/sync/inbound", env)
    assert status == 200 and json.loads(body) == {"cursor": 1}
    assert (await call(app, "POST", "/sync/inbound", env))[0] == 200  # resent: skipped
    assert await store.read(lambda c: c.execute(
        "SELECT COUNT(*) FROM ledger_txns").fetchone()[0]) == 1
    gap = env.replace(b'"after": 0', b'"after": 5').replace(b'"seq": 1', b'"seq": 6')
    status, _, body, _ = await call(app, "POST", "/sync/inbound", gap)
    assert status == 409 and json.loads(body)["cursor"] == 1
    bad = env.replace(b"mpesa_result", b"mpesa_rezult")
    assert (await call(app, "POST", "/sync/inbound", bad))[0] == 400


async def test_pull_refuses_unsigned_altered_replayed_and_stale(store):
    await _seed(store, 1)
    svc = SyncService(store, SITE, KEY, no_notices)
    await svc.load()
    app = SyncApp(svc)
    assert (await call(app, "GET", "/sync/batches?after=0", key=b"x" * 32))[0] == 401
    status, _, _, req = await call(app, "GET", "/sync/batches?after=0")
    assert status == 200
    replay = await call(app, "GET", "/sync/batches?after=0", headers=req)
    assert replay[0] == 401 and json.loads(replay[2])["error"] == "replay"
    altered = sign("GET", "/sync/batches?after=0", b"", SITE, KEY, time.time())
    assert (await call(app, "GET", "/sync/batches?after=1", headers=altered))[0] == 401
    status, headers, body, req = await call(app, "GET", "/sync/batches?after=0",
                                            now=time.time() - 3600)
    assert status == 401 and json.loads(body)["error"] == "stale"
    # A stale refusal is signed, so the caller can learn this box's clock from it.
    verify_response(status, headers, body, SITE, KEY, req[H_NONCE])
    assert await store.read(inbound.get_int, inbound.CHECKPOINT) == 0


class Upstream:
    """The upstream side of a push (§6.1): verifies, decodes, keeps records by seq,
    acks, piggybacks inbound changes; can fail the first pushes on purpose."""

    def __init__(self, fail_first: int = 0, inbound_changes=()):
        self.verifier = Verifier({SITE: KEY})
        self.records: dict[int, dict] = {}
        self.fail_first = fail_first
        self.pushes = 0
        self.inbound_changes = list(inbound_changes)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                m = await receive()
                await send({"type": m["type"] + ".complete"})
                if m["type"] == "lifespan.shutdown":
                    return
        body = b""
        while True:
            m = await receive()
            body += m.get("body", b"")
            if not m.get("more_body"):
                break
        q = scope["query_string"].decode()
        target = scope["path"] + (f"?{q}" if q else "")
        self.verifier.verify(scope["method"], target, scope["headers"], body, time.time())
        nonce = dict(scope["headers"])[H_NONCE.lower().encode()].decode()
        after = int(q.split("=")[1])
        if scope["method"] == "POST":
            self.pushes += 1
            if self.pushes <= self.fail_first:
                return await self._send(send, 503, b'{"error":"busy"}', nonce)
            batch = decode_batch(body, SITE)
            for r in batch.records:
                self.records.setdefault(r.seq, r.payload)
            answer = {"ack": {"site": SITE, "last_seq": batch.last_seq,
                              "batch_sha256": batch.sha256},
                      "inbound": self._inbound(after)}
        else:
            answer = self._inbound(after)
        await self._send(send, 200, json.dumps(answer).encode(), nonce)

    def _inbound(self, after):
        return {"v": 1, "site": SITE, "after": after,
                "changes": [c for c in self.inbound_changes if c["seq"] > after]}

    async def _send(self, send, status, body, nonce):
        h = sign_response(status, body, SITE, KEY, nonce, time.time())
        await send({"type": "http.response.start", "status": status,
                    "headers": [(k.lower().encode(), v.encode()) for k, v in h.items()]})
        await send({"type": "http.response.body", "body": body})


class NoWait(random.Random):
    def uniform(self, a, b):  # retries at once: the test is about order, not pacing
        return 0.01


async def test_push_delivers_everything_once_through_failures(store, nursery):
    await _seed(store, 5)
    upstream = Upstream(fail_first=2, inbound_changes=[
        {"kind": "account_change", "seq": 1, "id": "acc-1", "msisdn": "254711000001",
         "lang": "sw"}])
    port = free_port()
    hc = hypercorn.config.Config()
    hc.bind = [f"127.0.0.1:{port}"]
    hc.accesslog = hc.errorlog = None
    await nursery.start(hypercorn.trio.serve, upstream, hc)
    svc = SyncService(store, SITE, KEY, no_notices, upstream=f"http://127.0.0.1:{port}",
                      max_records=4, idle_poll_seconds=0.05, rng=NoWait())
    await svc.load()
    nursery.start_soon(svc.push_loop)
    def last_seq(conn):
        return conn.execute("SELECT MAX(seq) FROM change_log").fetchone()[0]

    # Applying the inbound change writes change-log rows too: they go up as well.
    with trio.fail_after(20):
        while svc.cursor < 1 or svc.outbound.checkpoint < await store.read(last_seq):
            await trio.sleep(0.02)
    last = await store.read(last_seq)
    assert sorted(upstream.records) == list(range(1, last + 1))
    assert svc.stats.failures >= 2 and svc.stats.batches_pushed >= 2  # 4 records a batch
    assert await store.read(inbound.get_int, inbound.CHECKPOINT) == last
    assert (await store.read(lending.get_user, "254711000001")).lang == "sw"
    lag = await svc.lag()
    assert lag["records"] == 0 and lag["seconds"] == 0.0 and lag["inbound_cursor"] == 1
    nursery.cancel_scope.cancel()


class Bounds(random.Random):
    """Records each full-jitter bound the push loop draws from, and waits no time."""

    def __init__(self) -> None:
        super().__init__(0)
        self.bounds: list[tuple[float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        self.bounds.append((a, b))
        return 0.0


async def test_push_retries_draw_from_the_configured_base_and_cap(store, nursery):
    await _seed(store, 2)
    upstream = Upstream(fail_first=3)
    port = free_port()
    hc = hypercorn.config.Config()
    hc.bind = [f"127.0.0.1:{port}"]
    hc.accesslog = hc.errorlog = None
    await nursery.start(hypercorn.trio.serve, upstream, hc)
    rng = Bounds()
    svc = SyncService(store, SITE, KEY, no_notices, upstream=f"http://127.0.0.1:{port}",
                      idle_poll_seconds=0.05, retry_base_seconds=0.2, retry_max_seconds=0.5,
                      rng=rng)
    await svc.load()
    nursery.start_soon(svc.push_loop)
    with trio.fail_after(20):
        while svc.outbound.checkpoint < 2:
            await trio.sleep(0.02)
    # base × 2^failures, capped: 0.4, then 0.8 and 1.6 held to 0.5.
    assert rng.bounds == [(0, 0.4), (0, 0.5), (0, 0.5)]
    nursery.cancel_scope.cancel()
