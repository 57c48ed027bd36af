"""A reference upstream for gatewayd boxes: the upstream side of docs/sync-protocol.md,
and the executor of the M-PESA actions that ride the batches. Small on purpose, so an
upstream team can read it next to the protocol; the section numbers below are the doc's.

    python -m sync.upstream_sim --listen 127.0.0.1:0 --daraja URL \\
        --site site-1:KEYHEX [--site ...] --db PATH [--pull site-1=http://box:8080]
        [--direct SITE] [--public-url URL] [--consumer-key ... (or $DARAJA_*)]

prints {"event": "listening", "url": ..., "port": N}. It serves

    POST /v1/sites/{site}/batches?inbound_after=N    a box pushes a batch (6.1)
    GET  /v1/sites/{site}/inbound?after=N            a box asks for its inbound changes
    GET  /v1/sites/{site}/state                      counts for tests (unsigned: keep local)
    POST /daraja/stk/{site}/{key}/{token},
         /daraja/b2c/{site}/{key}/{token}/result|timeout,
         /daraja/status/{site}/{key}/{token}/result|timeout
                                                     Daraja's callbacks for each action
                                                     (status: the Transaction Status
                                                     verdict on a B2C), refused without
                                                     the action's token: run here, or
                                                     relayed to the box

and with --pull it also polls a box's own sync API (6.2). An `mpesa_action` record in
state `queued` is executed once per (site, key) with sync/executor.py; its result
becomes an inbound `mpesa_result` change, piggybacked on the next ack or answer. An
action marked `executor: box` (the box is in direct mode) is not executed here; Daraja's
callback for it is relayed to the box as the same kind of change (section 11).
SQLite calls run on the event loop: they take microseconds here, and a production
upstream would have its own database layer anyway.
"""

from __future__ import annotations

import argparse
import hmac
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qs

import httpx
import hypercorn.config
import hypercorn.trio
import trio

from sync import auth, daraja, daraja_status
from sync.batch import BatchError, canonical_json, decode_batch
from sync.checkpoint import (
    Ack,
    SyncConflict,
)
from sync.executor import DEFAULT_POLICY, Action, Executor, Policy, Result
from sync.upstream_store import UpstreamStore, log_event

MAX_BODY = 1 << 20          # 6.3: the upstream takes batches up to 1 MiB
class UpstreamSim:
    def __init__(self, db: str, keys: dict[str, bytes], client: daraja.DarajaClient, *,
                 clock: Callable[[], float] = time.time, policy: Policy = DEFAULT_POLICY,
                 direct: frozenset[str] = frozenset()) -> None:
        self.keys, self.clock, self.client, self.direct = keys, clock, client, direct
        self.store = UpstreamStore(db, list(keys))
        self.verifier = auth.Verifier(keys)
        self.executor = Executor(client, self._open, self._result, save=self._save,
                                 load=self._load, clock=clock, policy=policy)
        self.url = ""
        self._changed = trio.Event()

    async def wait_for(self, predicate: Callable[[UpstreamSim], bool],
                       timeout: float = 10.0) -> None:
        """For tests and demos: wait until `predicate(self)` holds after an action moved."""
        with trio.fail_after(timeout):
            while not predicate(self):
                await self._changed.wait()

    async def _open(self) -> list[Action]:
        return self.store.actions(open_only=True)

    async def _load(self, site: str, key: str) -> Action | None:
        found = self.store.actions(site, key)
        return found[0] if found else None

    async def _save(self, a: Action) -> None:
        self.store.save(a)
        self._changed.set()
        self._changed = trio.Event()

    async def _result(self, r: Result, a: Action) -> None:
        self.store.add_result(a.site, r, a.amount_cents)

    # -- HTTP ------------------------------------------------------------------------------
    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body, more = b"", True
        while more:
            m = await receive()
            body, more = body + m.get("body", b""), m.get("more_body", False)
            if len(body) > MAX_BODY:
                return await _answer(send, 413, b'{"error":"too_large"}')
        parts = scope["path"].strip("/").split("/")
        target = scope["raw_path"].decode("latin-1") + (
            "?" + scope["query_string"].decode("latin-1") if scope["query_string"] else "")
        query = {k: v[-1] for k, v in parse_qs(scope["query_string"].decode()).items()}
        method = scope["method"]
        if parts[:1] == ["daraja"] and method == "POST" and len(parts) >= 4:
            return await self._daraja(parts, body, send)
        if len(parts) != 4 or parts[:2] != ["v1", "sites"]:
            return await _answer(send, 404, b'{"error":"not_found"}')
        site, what = parts[2], (method, parts[3])
        if what == ("GET", "state") and site in self.keys:
            return await _answer(send, 200, canonical_json(self.store.state(site)))
        if what not in (("POST", "batches"), ("GET", "inbound")):
            return await _answer(send, 404, b'{"error":"not_found"}')
        headers = scope["headers"]
        try:     # 2.2: an unknown site, like any other failure here, is a bare 401
            authed = self.verifier.verify(method, target, headers, body, self.clock())
        except auth.AuthError as e:
            # 2.4: only a `stale` refusal (signature known good) is signed.
            data = canonical_json({"error": e.code})
            sign = {} if e.code != "stale" else auth.sign_response(
                401, data, e.site, self.keys[e.site], e.nonce, self.clock())
            return await _answer(send, 401, data, sign)
        nonce = {k.decode().lower(): v.decode() for k, v in headers}["x-gatewayd-nonce"]
        if authed != site:         # 6.1: header site = path site (= batch site, below)
            status, obj = 401, {"error": "site_mismatch"}
        elif what[0] == "POST":
            status, obj = self._push(site, query, body)
        else:
            status, obj = self._inbound(site, query.get("after"))
        data = canonical_json(obj)
        await _answer(send, status, data, auth.sign_response(
            status, data, authed, self.keys[authed], nonce, self.clock()))

    def _push(self, site: str, query: dict, body: bytes) -> tuple[int, Any]:
        n = query.get("inbound_after", "")
        if not n.isdigit():
            return 400, {"error": "inbound_after must be a non-negative integer"}
        try:
            b = decode_batch(body, site)
        except BatchError as e:
            return 400, {"error": str(e)}
        try:
            if self.store.apply_batch(site, b, site not in self.direct):
                self.executor.wake()
        except SyncConflict as e:
            return 409, {"error": "out_of_order", "checkpoint": e.checkpoint}
        changes = self.store.inbound_after(site, int(n))
        ack = json.loads(Ack(site, b.last_seq, b.sha256).to_json())
        return 200, {"ack": ack, "inbound": {"v": 1, "site": site, "after": int(n),
                                             "changes": changes} if changes else None}

    def _inbound(self, site: str, after: str | None) -> tuple[int, Any]:
        if after is None or not after.isdigit():
            return 400, {"error": "after must be a non-negative integer"}
        return 200, {"v": 1, "site": site, "after": int(after),
                     "changes": self.store.inbound_after(site, int(after))}

    def callback_token(self, site: str, key: str) -> str:
        return auth.callback_token(self.keys[site], site, key)

    async def _daraja(self, parts: list[str], body: bytes, send: Callable) -> None:
        """Daraja's callbacks are unsigned: one counts only when its URL carries the
        action's token (section 11), and even then the executor trusts it only as far as
        sync/executor.on_callback says. Daraja gets its acknowledgement whatever we did."""
        # /daraja/{stk|b2c|status}/{site}/{key}/{token}[/result|/timeout]
        site, key, token = parts[2], parts[3], parts[4] if len(parts) > 4 else ""
        if site not in self.keys or not hmac.compare_digest(
                token.encode(), self.callback_token(site, key).encode()):
            log_event("callback_refused", site=site, key=key, kind=parts[1])
            return await _answer(send, 404, b'{"error":"not_found"}')
        try:
            obj = json.loads(body)
        except ValueError:
            obj = None
        found = self.store.actions(site, key)
        result = parts[5:] == ["result"]
        outcome = (daraja.parse_stk_callback(obj) if parts[1] == "stk" else
                   daraja.parse_b2c_result(obj) if parts[1] == "b2c" and result else
                   daraja_status.parse_status_result(obj) if parts[1] == "status" and result
                   else None)
        if found:
            await self.executor.callback(found[0], outcome)
        elif site in self.keys and (box := self.store.box_action(site, key)) is not None:
            if parts[1] in ("b2c", "status") \
                    and isinstance(outcome, (daraja.Succeeded, daraja.Failed)) \
                    and not outcome_names_payment(outcome, key):
                # A verdict that does not name the payment (its ConversationID, and this
                # action's OriginatorConversationID if it gives one) is not relayed: the
                # box would take a result without ids for an operator's, and it can ask
                # Daraja again itself.
                log_event("verdict_not_relayed", site=site, key=key, kind=parts[1])
                outcome = None
            self._relay(site, key, box, outcome)
        await _answer(send, 200, b'{"ResultCode":0,"ResultDesc":"Accepted"}')

    def _relay(self, site: str, key: str, action: dict[str, Any],
               o: daraja.Outcome | None) -> None:
        """Section 11: a callback for an action the box runs goes back to it as an
        ordinary `mpesa_result`, once per action (the first verdict wins; Daraja does not
        resend, and a repeat is dropped by the inbound table's UNIQUE key)."""
        if not isinstance(o, (daraja.Succeeded, daraja.Failed)):
            return
        ok = isinstance(o, daraja.Succeeded)
        r = Result(key, ok, o.receipt if ok else None, o.result_code, o.result_desc)
        # Daraja's ids go along: the callback is unsigned, and only the box knows which
        # CheckoutRequestID or ConversationID Daraja gave it for this action.
        ids = {"checkout_request_id": o.checkout_request_id,
               "conversation_id": o.conversation_id}
        if self.store.add_result(site, r, action.get("amount_cents"), need_receipt=False,
                                 ids=ids):
            log_event("relayed", site=site, key=key, result="succeeded" if ok else "failed")
            self._changed.set()
            self._changed = trio.Event()

    # -- pull mode (6.2): the upstream takes the initiative ---------------------------------
    async def pull(self, site: str, box_url: str, http: httpx.AsyncClient,
                   interval: float = 5.0) -> None:
        offset = 0.0          # 2.3: in pull, the upstream adopts each box's clock

        async def call(method: str, target: str, body: bytes = b"") -> tuple[int, bytes]:
            nonlocal offset
            for attempt in range(2):
                sent = self.clock()
                h = auth.sign(method, target, body, site, self.keys[site], sent + offset)
                r = await http.request(method, box_url.rstrip("/") + target, content=body,
                                       headers=h)
                # An unsigned or mis-signed answer is as if none came (AuthError).
                ts = auth.verify_response(r.status_code, r.headers.multi_items(), r.content,
                                          site, self.keys[site], h[auth.H_NONCE])
                if r.status_code == 401 and attempt == 0 and b'"stale"' in r.content:
                    offset = auth.clock_offset(ts, sent, self.clock())
                    continue
                break
            return r.status_code, r.content

        # Where the box's own checkpoint stands, as its answers to our acks say. When an
        # ack's answer is lost, the box stays behind us: the next batch is fetched from
        # the box's checkpoint (the same bytes again, applying nothing here) and acked,
        # or every later ack would name a batch that leaves a hole for the box (409).
        box_checkpoint: int | None = None
        # An ack whose answer never came: sent again first, even when the box has nothing
        # new, so an idle box's checkpoint still catches up; stored, so that a restart of
        # this process (which forgets box_checkpoint) still sends it.
        pending_ack = self.store.pending_ack(site)

        async def ack(a: Ack) -> None:
            nonlocal box_checkpoint, pending_ack
            if pending_ack != a:
                pending_ack = a
                self.store.set_pending_ack(site, a)
            st, body = await call("POST", "/sync/ack", a.to_json())
            if st in (200, 409):    # either way the box names its checkpoint
                box_checkpoint = json.loads(body)["checkpoint"]
                pending_ack = None
                self.store.set_pending_ack(site, None)

        while True:
            more = False
            try:
                if pending_ack is not None:
                    await ack(pending_ack)
                ours = self.store.site(site)["checkpoint"]
                after = ours if box_checkpoint is None else min(ours, box_checkpoint)
                st, body = await call("GET", f"/sync/batches?after={after}")
                if st not in (200, 204):    # 409: the box was restored from a backup
                    raise ValueError(f"GET batches after {after}: {st} {body[:200]!r}")
                if st == 200:
                    b = decode_batch(body, site)
                    if self.store.apply_batch(site, b, site not in self.direct):
                        self.executor.wake()
                    await ack(Ack(site, b.last_seq, b.sha256))
                    more = True
                cursor = self.store.site(site)["box_cursor"]
                if changes := self.store.inbound_after(site, cursor):
                    st, body = await call("POST", "/sync/inbound", canonical_json(
                        {"v": 1, "site": site, "after": cursor, "changes": changes}))
                    if st in (200, 409):    # either way the box names its cursor
                        self.store.db.execute("UPDATE sites SET box_cursor = ? WHERE site = ?",
                                              (json.loads(body)["cursor"], site))
            except (httpx.HTTPError, auth.AuthError, BatchError, SyncConflict, ValueError,
                    KeyError) as e:
                log_event("pull_failed", site=site, error=str(e))
            except Exception as e:  # noqa: BLE001
                # One box's bad answer must not end the pulls of every other site (nor
                # the HTTP server beside them): log it and try again next round.
                log_event("pull_failed", site=site, error=f"{type(e).__name__}: {e}")
            if not more:
                await trio.sleep(interval)

    async def serve(self, listen: str, *, pulls: dict[str, str] | None = None,
                    public_url: str | None = None, poll: float = 5.0,
                    task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        hc = hypercorn.config.Config()
        hc.bind, hc.accesslog = [listen], None
        # The client outlives the nursery: its pull tasks use it until cancelled.
        async with httpx.AsyncClient(timeout=30) as http, trio.open_nursery() as n:
            self.url = (await n.start(lambda task_status: hypercorn.trio.serve(
                self, hc, task_status=task_status)))[0]
            # Each action's own URL (a callback names its action even when the STK push's
            # answer, and so its CheckoutRequestID, was lost) with its token (section 11).
            self.client.cfg = replace(self.client.cfg, callback_token=self.callback_token,
                                      **daraja.callback_urls(public_url or self.url))
            n.start_soon(self.executor.run)
            for site, box in (pulls or {}).items():
                n.start_soon(self.pull, site, box, http, poll)
            task_status.started(self.url)


def outcome_names_payment(o: daraja.Succeeded | daraja.Failed, key: str) -> bool:
    return bool(o.conversation_id) and o.originator_conversation_id in (
        None, daraja.originator_conversation_id(key))


async def _answer(send: Callable, status: int, data: bytes,
                  headers: dict[str, str] | None = None) -> None:
    h = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    h += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": h})
    await send({"type": "http.response.body", "body": data})


def main(argv: list[str] | None = None, prog: str = "upstream-sim") -> int:
    env = os.environ.get
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    p.add_argument("--listen", default="127.0.0.1:0")
    p.add_argument("--daraja", required=True, help="Daraja base URL (the fake, or sandbox)")
    p.add_argument("--site", action="append", required=True, metavar="SITE:KEYHEX")
    p.add_argument("--db", required=True)
    p.add_argument("--pull", action="append", default=[], metavar="SITE=BOX_URL")
    p.add_argument("--poll", type=float, default=5.0, help="pull interval, seconds")
    p.add_argument("--public-url", help="where Daraja reaches us (default: --listen)")
    p.add_argument("--direct", action="append", default=[], metavar="SITE",
                   help="a site that runs its own M-PESA actions (direct mode): not executed here")
    p.add_argument("--first-query", type=float, default=Policy.first_query)
    p.add_argument("--status-after", type=float, default=Policy.status_after,
                   help="seconds a B2C waits for its result before the Transaction Status query")
    for name, default in (("consumer-key", "gatewayd-test-key"),
                          ("consumer-secret", "gatewayd-test-secret"),
                          ("shortcode", "174379"), ("passkey", "gatewayd-test-passkey"),
                          ("b2c-shortcode", "600999"), ("initiator", "gatewaydapi"),
                          ("security-credential", "c2VjdXJpdHktY3JlZGVudGlhbA==")):
        var = "DARAJA_" + name.upper().replace("-", "_")
        p.add_argument("--" + name, default=env(var, default), help=f"or ${var}")
    a = p.parse_args(argv)
    keys = {s.split(":", 1)[0]: bytes.fromhex(s.split(":", 1)[1]) for s in a.site}
    cfg = daraja.DarajaConfig(a.consumer_key, a.consumer_secret, a.shortcode, a.passkey, "",
                              a.b2c_shortcode, a.initiator, a.security_credential)
    pulls = dict(x.split("=", 1) for x in a.pull)

    async def run() -> None:
        sim = UpstreamSim(a.db, keys, daraja.DarajaClient(a.daraja, cfg),
                          policy=Policy(first_query=a.first_query,
                                        status_after=a.status_after), direct=frozenset(a.direct))
        async with trio.open_nursery() as n:
            url = await n.start(lambda task_status: sim.serve(
                a.listen, pulls=pulls, public_url=a.public_url, poll=a.poll,
                task_status=task_status))
            print(json.dumps({"event": "listening", "url": url,
                              "port": int(url.rsplit(":", 1)[1])}), flush=True)

    try:
        trio.run(run)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
