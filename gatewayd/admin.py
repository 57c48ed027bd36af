"""The operator's API on a unix socket in the state directory (mode 0600).

Not on the TCP listener: an operator who opens that listener to an aggregator must not
open money-moving commands with it. `gatewayd status` and `gatewayd mpesa …` talk here.

- GET  /status             one JSON document of what the daemon is doing
- GET  /mpesa?state=S      M-PESA actions, newest first
- POST /mpesa/resolve      settle an action by hand from the M-PESA statement:
                           {"key", "result": "succeeded"|"failed", "receipt", "code", "reason"}
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

from gatewayd import logs
from gatewayd.asgi import App, Receive, Scope, Send, respond
from menus import lending as app
from store import outbox, settlement
from store.lending import LendingError
from store.writer import Store

log = logs.get("gatewayd.admin")


def resolve_job(conn: Any, settings: app.Settings, texts: dict, key: str, succeeded: bool,
                receipt: str | None, code: str | None, reason: str | None) -> bool:
    """Apply one M-PESA result with the SMS it causes, in one transaction."""
    now = time.time()
    applied, notices = settlement.apply_mpesa_result(
        conn, settings.site, key, succeeded, now, receipt=receipt, result_code=code,
        result_desc=reason)
    ctx = app.Ctx(conn=conn, msisdn="", now=now, settings=settings, texts=texts)
    app.queue_notices(ctx, notices)
    return applied


class AdminApp(App):
    def __init__(self, store: Store, settings: app.Settings, texts_of: Callable[[], dict],
                 status: Callable[[], dict[str, Any]]) -> None:
        self.store = store
        self.settings = settings
        self.texts_of = texts_of
        self.status = status

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        method, path = scope["method"], scope["path"]
        try:
            if (method, path) == ("GET", "/status"):
                body = self.status()
                body["outbox"] = await self.store.read(outbox.sms_counts)
                body["mpesa"] = await self.store.read(outbox.mpesa_counts)
                await _json(send, 200, body)
            elif (method, path) == ("GET", "/mpesa"):
                q = parse_qs(scope.get("query_string", b"").decode())
                state = q.get("state", [None])[0]
                await _json(send, 200, {"actions": await self.store.read(
                    outbox.mpesa_actions, state, 200)})
            elif (method, path) == ("POST", "/mpesa/resolve"):
                await self._resolve(receive, send)
            else:
                await _json(send, 404, {"error": f"no route {method} {path}"})
        except ValueError as e:
            await _json(send, 400, {"error": str(e)})

    async def _resolve(self, receive: Receive, send: Send) -> None:
        raw = b""
        while True:
            m = await receive()
            raw += m.get("body", b"")
            if len(raw) > 65536:
                raise ValueError("body too large")
            if not m.get("more_body"):
                break
        try:
            req = json.loads(raw or b"{}")
        except json.JSONDecodeError as e:
            raise ValueError(f"body is not JSON: {e}") from None
        key, result = req.get("key"), req.get("result")
        if not isinstance(key, str) or result not in ("succeeded", "failed"):
            raise ValueError("need {\"key\": str, \"result\": \"succeeded\"|\"failed\"}")
        if result == "succeeded" and not req.get("receipt"):
            raise ValueError("a success needs the M-PESA receipt number")
        try:
            applied = await self.store.write(
                resolve_job, self.settings, self.texts_of(), key, result == "succeeded",
                req.get("receipt"), req.get("code"), req.get("reason"))
        except LendingError as e:
            await _json(send, 404, {"error": e.code, "key": key})
            return
        log.info("mpesa_resolved_by_operator", key=key, result=result, applied=applied)
        await _json(send, 200, {"key": key, "applied": applied})


async def _json(send: Send, status: int, body: Any) -> None:
    await respond(send, status, json.dumps(body, sort_keys=True, default=str),
                   "application/json")
