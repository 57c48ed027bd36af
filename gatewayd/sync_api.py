"""The box's sync API (protocol §6.2), mounted at /sync on the HTTP listener: an
upstream that fetches batches itself gets the very bytes a push would send, through the
same SyncService, and every request and answer is signed (docs/sync-protocol.md §2)."""

from __future__ import annotations

import json
import time
from typing import Any

from gatewayd import logs
from gatewayd.asgi import App, Receive, Scope, Send
from sync.auth import H_NONCE, AuthError, sign_response
from sync.checkpoint import InboundError, SyncConflict, decode_ack, decode_inbound
from sync.service import SyncService

log = logs.get("gatewayd.sync")

MAX_INBOUND_BODY = 1 << 20


class SyncApp(App):
    """GET /sync/batches?after=SEQ, POST /sync/ack, POST /sync/inbound (protocol §6.2)."""

    def __init__(self, service: SyncService) -> None:
        self.service = service

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        svc = self.service
        method, path = scope["method"], scope["path"]
        query = scope.get("query_string", b"").decode("latin-1")
        target = path + (f"?{query}" if query else "")
        body = b""
        while True:
            m = await receive()
            body += m.get("body", b"")
            if len(body) > MAX_INBOUND_BODY:
                await _answer(send, 413, {"error": "body too large"})
                return
            if not m.get("more_body"):
                break
        try:
            svc.verifier.verify(method, target, scope["headers"], body, time.time())
        except AuthError as e:
            log.warning("sync_refused", reason=e.code, path=path)
            signed = (svc, e.nonce) if e.code == "stale" and e.site == svc.site else None
            await _answer(send, 401, {"error": e.code, "reason": str(e)}, signed)
            return
        nonce = {k.decode().lower(): v.decode() for k, v in scope["headers"]}[H_NONCE.lower()]
        status, answer, blob = await self._route(method, path, query, body)
        await _answer(send, status, answer, (svc, nonce), blob)

    async def _route(self, method: str, path: str, query: str,
                     body: bytes) -> tuple[int, Any, bytes | None]:
        svc = self.service
        try:
            if (method, path) == ("GET", "/sync/batches"):
                params = dict(p.split("=", 1) for p in query.split("&") if "=" in p)
                after = int(params.get("after", ""))
                last = (await svc.lag())["last_seq"]
                if after > last:
                    return 409, {"error": "after is beyond this box's log", "last_seq": last}, None
                batch = await svc.batch_from(after)
                if batch is None:
                    return 204, None, b""
                svc.stats.batches_pulled += 1
                svc.stats.bytes_sent += len(batch.wire)
                return 200, None, batch.wire
            if (method, path) == ("POST", "/sync/ack"):
                return 200, {"checkpoint": await svc.acknowledge(decode_ack(body))}, None
            if (method, path) == ("POST", "/sync/inbound"):
                return 200, {"cursor": await svc.apply_inbound(
                    decode_inbound(body, svc.site))}, None
            return 404, {"error": f"no route {method} {path}"}, None
        except SyncConflict as e:
            key = "cursor" if path.endswith("inbound") else "checkpoint"
            return 409, {"error": e.reason, key: e.checkpoint}, None
        except (InboundError, ValueError) as e:
            return 400, {"error": str(e)}, None


async def _answer(send: Send, status: int, answer: Any,
                  signed: tuple[SyncService, str | None] | None = None,
                  blob: bytes | None = None) -> None:
    body = blob if blob is not None else (b"" if answer is None else
                                          json.dumps(answer, separators=(",", ":")).encode())
    ctype = b"application/octet-stream" if blob else b"application/json"
    headers = [(b"content-type", ctype), (b"content-length", str(len(body)).encode())]
    if signed is not None and signed[1]:
        svc, nonce = signed
        for k, v in sign_response(status, body, svc.site, svc.key, nonce, time.time()).items():
            headers.append((k.lower().encode(), v.encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
