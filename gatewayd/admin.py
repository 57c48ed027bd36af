"""The operator's API on a unix socket in the state directory (mode 0600).

Not on the TCP listener: an operator who opens that listener to an aggregator must not
open money-moving commands with it. `gatewayd status`, `outbox` and `mpesa` talk here.

- GET  /status             one JSON document of what the daemon is doing
- GET  /outbox?state=S     SMS, newest first
- POST /outbox/retry       {"id"}: send a failed, expired or cancelled SMS again
- POST /outbox/cancel      {"id"}: stop a queued SMS
- GET  /inbox?msisdn=N     received SMS, newest first (one sender's, given an msisdn)
- GET  /modems             the modems: port, state, signal, registration, queue depth
- GET  /mpesa?state=S      M-PESA actions, newest first
- POST /mpesa/resolve      settle an action by hand from the M-PESA statement:
                           {"key", "result": "succeeded"|"failed", "receipt", "code", "reason"}
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

from gatewayd import logs
from gatewayd.asgi import App, Receive, Scope, Send, respond
from menus import lending as app
from store import outbox, settlement
from store import sms as sms_store
from store.lending import LendingError
from store.writer import Store

log = logs.get("gatewayd.admin")
MAX_BODY = 65536


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
    def __init__(self, store: Store, settings_of: Callable[[], app.Settings],
                 texts_of: Callable[[], dict],
                 status: Callable[[], Awaitable[dict[str, Any]]],
                 modems: Callable[[], dict[str, Any]] = lambda: {"modems": [], "queued": 0},
                 cancelled: Callable[[int], None] = lambda sms_id: None) -> None:
        self.store = store
        self.modems = modems
        # An SMS cancelled here may already sit in a channel's memory (the modem pool).
        self.cancelled = cancelled
        self.settings_of = settings_of
        self.texts_of = texts_of
        self.status = status

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        method, path = scope["method"], scope["path"]
        query = parse_qs(scope.get("query_string", b"").decode())
        try:
            if (method, path) == ("GET", "/status"):
                await _json(send, 200, await self.status())
            elif (method, path) == ("GET", "/modems"):
                await _json(send, 200, self.modems())
            elif (method, path) == ("GET", "/outbox"):
                sms = await self.store.read(outbox.sms_list, query.get("state", [None])[0], 200)
                await _json(send, 200, {"sms": sms})
            elif (method, path) in (("POST", "/outbox/retry"), ("POST", "/outbox/cancel")):
                req = await _read_json(receive)
                sms_id = req.get("id")
                if not isinstance(sms_id, int):
                    raise ValueError('need {"id": <SMS id>}')
                fn = outbox.sms_retry if path.endswith("retry") else outbox.sms_cancel
                row = await self.store.write(fn, sms_id, time.time())
                if row["state"] == "cancelled":
                    self.cancelled(sms_id)
                log.info("outbox_changed_by_operator", sms=sms_id, state=row["state"])
                await _json(send, 200, {"id": sms_id, "state": row["state"]})
            elif (method, path) == ("GET", "/inbox"):
                await _json(send, 200, {"sms": await self.store.read(
                    sms_store.inbox_list, query.get("msisdn", [None])[0], 200)})
            elif (method, path) == ("GET", "/mpesa"):
                await _json(send, 200, {"actions": await self.store.read(
                    outbox.mpesa_actions, query.get("state", [None])[0], 200)})
            elif (method, path) == ("POST", "/mpesa/resolve"):
                await self._resolve(await _read_json(receive), send)
            else:
                await _json(send, 404, {"error": f"no route {method} {path}"})
        except (ValueError, outbox.OutboxError) as e:
            await _json(send, 400, {"error": str(e)})

    async def _resolve(self, req: dict[str, Any], send: Send) -> None:
        key, result = req.get("key"), req.get("result")
        if not isinstance(key, str) or result not in ("succeeded", "failed"):
            raise ValueError('need {"key": str, "result": "succeeded"|"failed"}')
        if result == "succeeded" and not req.get("receipt"):
            raise ValueError("a success needs the M-PESA receipt number")
        try:
            applied = await self.store.write(
                resolve_job, self.settings_of(), self.texts_of(), key, result == "succeeded",
                req.get("receipt"), req.get("code"), req.get("reason"))
        except LendingError as e:
            await _json(send, 404, {"error": e.code, "key": key})
            return
        log.info("mpesa_resolved_by_operator", key=key, result=result, applied=applied)
        await _json(send, 200, {"key": key, "applied": applied})


async def _read_json(receive: Receive) -> dict[str, Any]:
    raw = b""
    while True:
        m = await receive()
        raw += m.get("body", b"")
        if len(raw) > MAX_BODY:
            raise ValueError("body too large")
        if not m.get("more_body"):
            break
    try:
        req = json.loads(raw or b"{}")
    except json.JSONDecodeError as e:
        raise ValueError(f"body is not JSON: {e}") from None
    if not isinstance(req, dict):
        raise ValueError("body must be a JSON object")
    return req


async def _json(send: Send, status: int, body: Any) -> None:
    await respond(send, status, json.dumps(body, sort_keys=True, default=str),
                  "application/json")
