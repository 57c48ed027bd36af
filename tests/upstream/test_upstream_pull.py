"""Pull mode (docs/sync-protocol.md 6.2): the upstream simulator fetches batches from a
box's sync API, acknowledges them, executes the actions and posts the results back.
The box here is scripted from sync/checkpoint.py and sync/auth.py alone."""

from __future__ import annotations

import time
from collections.abc import Callable
from urllib.parse import parse_qs

import trio

from sync import auth
from sync.batch import Record, canonical_json
from sync.checkpoint import (
    Inbound,
    Outbound,
    SyncConflict,
    decode_ack,
    decode_inbound,
    to_apply,
)
from sync.daraja import DarajaClient
from sync.upstream_sim import UpstreamSim
from tests.upstream.conftest import FAST, KEY, SITE, action, daraja_config, other

STK_KEY, B2C_KEY = "site-1-mp-0a1b2c3d4e5f", "site-1-mp-b2c000000001"


class BoxSyncApi:
    """GET /sync/batches, POST /sync/ack, POST /sync/inbound, signed both ways."""

    def __init__(self, records: list[Record], skew: float = 0.0) -> None:
        # Two records a batch, so a pull takes several rounds.
        self.outbound = Outbound(SITE, 0, max_records=2)
        self.records, self.skew = records, skew
        self.verifier = auth.Verifier({SITE: KEY})
        self.cursor, self.applied = 0, {}
        self.refused: list[str] = []
        self.changed = trio.Event()
        self.acks_seen = 0
        self.cut_acks = False       # every ack request is cut before the box reads it

    async def wait_for(self, predicate: Callable[[BoxSyncApi], bool], timeout: float = 10) -> None:
        with trio.fail_after(timeout):
            while not predicate(self):
                await self.changed.wait()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            return await send({"type": "lifespan.shutdown.complete"})
        body = b""
        while True:
            m = await receive()
            body += m.get("body", b"")
            if not m.get("more_body"):
                break
        now = time.time() + self.skew          # this box's clock is off by `skew`
        target = scope["raw_path"].decode() + (
            "?" + scope["query_string"].decode() if scope["query_string"] else "")
        try:
            self.verifier.verify(scope["method"], target, scope["headers"], body, now)
        except auth.AuthError as e:
            self.refused.append(e.code)
            data = canonical_json({"error": e.code})
            sig = auth.sign_response(401, data, SITE, KEY, e.nonce, now) if e.code == "stale" \
                else {}
            return await self._answer(send, 401, data, sig)
        nonce = dict(scope["headers"])[b"x-gatewayd-nonce"].decode()
        status, data = self._route(scope["method"], scope["path"], scope["query_string"], body)
        await self._answer(send, status, data,
                           auth.sign_response(status, data, SITE, KEY, nonce, now))
        self.changed.set()
        self.changed = trio.Event()

    def _route(self, method: str, path: str, query: bytes, body: bytes) -> tuple[int, bytes]:
        if (method, path) == ("GET", "/sync/batches"):
            after = int(parse_qs(query.decode())["after"][0])
            b = self.outbound.build([r for r in self.records if r.seq > after], after)
            return (200, b.wire) if b else (204, b"")
        if (method, path) == ("POST", "/sync/ack"):
            self.acks_seen += 1
            if self.cut_acks:
                return 502, b"{}"
            try:
                self.outbound.on_ack(decode_ack(body))
            except SyncConflict as e:
                return 409, canonical_json({"checkpoint": e.checkpoint})
            return 200, canonical_json({"checkpoint": self.outbound.checkpoint})
        if (method, path) == ("POST", "/sync/inbound"):
            env: Inbound = decode_inbound(body, SITE)
            try:
                todo = to_apply(env, self.cursor)
            except SyncConflict as e:
                return 409, canonical_json({"cursor": e.checkpoint})
            for c in todo:
                self.applied.setdefault(c.id, c)       # once per id
            self.cursor = max(self.cursor, env.last_seq)
            return 200, canonical_json({"cursor": self.cursor})
        return 404, b"{}"

    async def _answer(self, send, status: int, data: bytes, headers: dict[str, str]) -> None:
        await send({"type": "http.response.start", "status": status,
                    "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]})
        await send({"type": "http.response.body", "body": data})


async def start(nursery, fake, tmp_path, box: BoxSyncApi) -> UpstreamSim:
    import hypercorn.config
    import hypercorn.trio
    hc = hypercorn.config.Config()
    hc.bind, hc.accesslog = ["127.0.0.1:0"], None
    box_url = (await nursery.start(lambda task_status: hypercorn.trio.serve(
        box, hc, task_status=task_status)))[0]
    sim = UpstreamSim(str(tmp_path / "up.db"), {SITE: KEY},
                      DarajaClient(fake.url, daraja_config()), policy=FAST)
    await nursery.start(lambda task_status: sim.serve(
        "127.0.0.1:0", pulls={SITE: box_url}, poll=0.02, task_status=task_status))
    return sim


RECORDS = [other(1), action(2, STK_KEY, msisdn="254722222222"),
           action(3, B2C_KEY, kind="b2c", purpose="loan_payout", amount_cents=20_000),
           other(4), other(5)]


async def test_the_upstream_pulls_acks_executes_and_posts_results_back(nursery, fake, tmp_path):
    box = BoxSyncApi(RECORDS)
    sim = await start(nursery, fake, tmp_path, box)
    await box.wait_for(lambda b: b.outbound.checkpoint == 5 and len(b.applied) == 2)
    assert {c.action_key: c.result for c in box.applied.values()} == {
        STK_KEY: "succeeded", B2C_KEY: "succeeded"}
    assert sorted(c.receipt for c in box.applied.values()) == sorted(
        p["receipt"] for p in fake.payments)
    state = sim.store.state(SITE)
    assert (state["records"], state["checkpoint"], state["sends"]) == (5, 5, 2)
    assert state["box_cursor"] == box.cursor == 2 and len(fake.payments) == 2
    assert box.refused == []


async def test_in_pull_the_upstream_adopts_a_wrong_box_clock(nursery, fake, tmp_path):
    box = BoxSyncApi(RECORDS[:1], skew=-7200.0)     # booted two hours in the past
    sim = await start(nursery, fake, tmp_path, box)
    await box.wait_for(lambda b: b.outbound.checkpoint == 1)
    assert box.refused[:1] == ["stale"] and box.refused.count("stale") == 1
    assert sim.store.state(SITE)["records"] == 1


async def test_an_ack_pending_when_the_upstream_restarts_is_sent_by_the_next_run(
        nursery, fake, tmp_path):
    """Every ack is lost before the box reads it, and the upstream restarts holding all
    of the box's records. The box is idle: with nothing after U to fetch, only the ack
    kept on disk can bring its checkpoint up (without it the lag stays for good)."""
    import hypercorn.config
    import hypercorn.trio
    box = BoxSyncApi(RECORDS)
    box.cut_acks = True
    hc = hypercorn.config.Config()
    hc.bind, hc.accesslog = ["127.0.0.1:0"], None
    box_url = (await nursery.start(lambda task_status: hypercorn.trio.serve(
        box, hc, task_status=task_status)))[0]

    def sim() -> UpstreamSim:
        return UpstreamSim(str(tmp_path / "up.db"), {SITE: KEY},
                           DarajaClient(fake.url, daraja_config()), policy=FAST)

    async with trio.open_nursery() as first:
        s1 = sim()
        await first.start(lambda task_status: s1.serve(
            "127.0.0.1:0", pulls={SITE: box_url}, poll=0.02, task_status=task_status))
        await box.wait_for(lambda b: b.acks_seen >= 2 and s1.store.site(SITE)["checkpoint"] == 5)
        first.cancel_scope.cancel()                     # the upstream goes down
    assert box.outbound.checkpoint < 5
    assert s1.store.pending_ack(SITE) is not None

    box.cut_acks = False
    s2 = sim()
    await nursery.start(lambda task_status: s2.serve(
        "127.0.0.1:0", pulls={SITE: box_url}, poll=0.02, task_status=task_status))
    await box.wait_for(lambda b: b.outbound.checkpoint == 5)
    assert s2.store.pending_ack(SITE) is None
    assert s2.store.state(SITE)["records"] == 5
