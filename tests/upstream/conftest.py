"""The Daraja fake, a Daraja client, the upstream simulator (all in this process, on
127.0.0.1) and a scripted box that pushes batches the way docs/sync-protocol.md says,
built from sync/batch.py and sync/auth.py only."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from sync import auth
from sync.batch import Batch, Record, encode_batch
from sync.checkpoint import Ack, Inbound, decode_push_response
from sync.daraja import DarajaClient, DarajaConfig
from sync.executor import Policy
from sync.upstream_sim import UpstreamSim
from tests.peers import daraja_fake as df

SITE = "site-1"
KEY = bytes.fromhex("6b" * 32)
# Nothing listens on the discard port: the box has no public address, so Daraja's
# callbacks for a box in direct mode go nowhere.
UNREACHABLE = "http://127.0.0.1:9"
# Test timing: query at once and retry within milliseconds; the fake settles in
# microseconds and every wait in the tests is on an event or a condition with a deadline.
FAST = Policy(send_retry=0.01, send_retry_cap=0.05, first_query=0.0, query_retry=0.01,
              query_retry_cap=0.05)
T0 = 1764316800.0


def daraja_config(base: str = UNREACHABLE, **over: str) -> DarajaConfig:
    cfg = {"consumer_key": df.KEY, "consumer_secret": df.SECRET, "shortcode": df.SHORTCODE,
           "passkey": df.PASSKEY, "callback_url": base + "/cb/{site}/{key}",
           "b2c_shortcode": df.B2C_SHORTCODE, "initiator_name": df.INITIATOR,
           "security_credential": df.CREDENTIAL,
           "result_url": base + "/b2c/{site}/{key}/result",
           "timeout_url": base + "/b2c/{site}/{key}/timeout"}
    cfg.update(over)
    return DarajaConfig(**cfg)


@pytest.fixture
async def fake(nursery):
    f = df.DarajaFake()
    await nursery.start(f.serve)
    return f


@pytest.fixture
async def client(fake):
    c = DarajaClient(fake.url, daraja_config())
    yield c
    await c.aclose()


@pytest.fixture
async def sim(nursery, fake, tmp_path):
    s = UpstreamSim(str(tmp_path / "upstream.db"), {SITE: KEY},
                    DarajaClient(fake.url, daraja_config()), policy=FAST)
    await nursery.start(s.serve, "127.0.0.1:0")
    yield s
    await s.client.aclose()


def action(seq: int, key: str, kind: str = "stk_push", msisdn: str = "254712345678",
           amount_cents: int = 50_000, purpose: str = "repayment", state: str = "queued",
           loan_ref: str | None = "K7QX2M") -> Record:
    """An `mpesa_action` change-log record with the payload store/outbox.py writes."""
    return Record(seq, "mpesa_action", key, state, {
        "key": key, "kind": kind, "purpose": purpose, "loan_ref": loan_ref, "msisdn": msisdn,
        "amount_cents": amount_cents, "state": state, "receipt": None, "result_code": None,
        "result_desc": None, "updated_at": T0 + seq}, T0 + seq)


def other(seq: int) -> Record:
    return Record(seq, "sms", f"{SITE}-sms-{seq:012x}", "queued", {
        "key": f"{SITE}-sms-{seq:012x}", "msisdn": "254712345678", "body": "Karibu",
        "state": "queued", "created_at": T0 + seq}, T0 + seq)


@dataclass
class Reply:
    status: int
    body: bytes
    headers: httpx.Headers
    nonce: str
    server_time: int | None = None      # set when the answer's signature verified
    sent_headers: dict[str, str] | None = None

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    def push(self) -> tuple[Ack, Inbound | None]:
        return decode_push_response(self.body, SITE)


class Box:
    """A box's sync client reduced to what the protocol says: sign, send, verify."""

    def __init__(self, base: str, site: str = SITE, key: bytes = KEY) -> None:
        self.base, self.site, self.key = base.rstrip("/"), site, key
        self.http = httpx.AsyncClient(timeout=10)
        self.cursor = 0
        self.checkpoint = 0

    async def call(self, method: str, target: str, body: bytes = b"", *,
                   now: float | None = None, headers: dict[str, str] | None = None,
                   body_sent: bytes | None = None) -> Reply:
        """Signed over `body`; `body_sent` (if given) goes on the wire instead: a forgery."""
        h = headers or auth.sign(method, target, body, self.site, self.key,
                                 time.time() if now is None else now)
        r = await self.http.request(method, self.base + target, headers=h,
                                    content=body if body_sent is None else body_sent)
        reply = Reply(r.status_code, r.content, r.headers, h[auth.H_NONCE], sent_headers=h)
        try:
            reply.server_time = auth.verify_response(r.status_code, r.headers.multi_items(),
                                                     r.content, self.site, self.key,
                                                     h[auth.H_NONCE])
        except auth.AuthError:
            pass
        return reply

    def batch(self, records: list[Record], after: int | None = None) -> Batch:
        return encode_batch(self.site, self.checkpoint if after is None else after, records)

    async def push(self, b: Batch, inbound_after: int | None = None, **kw: Any) -> Reply:
        n = self.cursor if inbound_after is None else inbound_after
        return await self.call("POST", f"/v1/sites/{self.site}/batches?inbound_after={n}",
                               b.wire, **kw)

    async def inbound(self, after: int | None = None) -> Reply:
        n = self.cursor if after is None else after
        return await self.call("GET", f"/v1/sites/{self.site}/inbound?after={n}")

    async def aclose(self) -> None:
        await self.http.aclose()


@pytest.fixture
async def box(sim):
    b = Box(sim.url)
    yield b
    await b.aclose()
