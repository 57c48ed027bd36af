"""The HTTP surface: the aggregator's USSD callback, its end notification, health.

A plain ASGI callable (no framework): four routes do not need one, and every byte of
a malformed request is ours to answer with a 4xx that says what is wrong.

USSD callback (Africa's Talking style): POST form `sessionId, serviceCode, phoneNumber,
networkCode, text`; answer `text/plain` starting `CON ` (continue) or `END ` (close).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

from gatewayd import logs
from gatewayd.asgi import App, Receive, Scope, Send, respond
from gatewayd.ussd import UssdService
from menus.dialogs import TextMode

log = logs.get("gatewayd.http")

CHANNEL = "http"
_MAX_FIELD = {"sessionId": 128, "serviceCode": 32, "phoneNumber": 32, "networkCode": 16,
              "text": 1024}


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class HttpApp(App):
    def __init__(self, ussd: UssdService, text_mode: TextMode, max_body: int,
                 health: Callable[[], tuple[bool, dict[str, Any]]],
                 metrics: Callable[[], Awaitable[str]],
                 allow_from: list[str] | None = None) -> None:
        self.ussd = ussd
        self.health = health
        self.metrics = metrics
        # The box's sync API (gatewayd.sync_api), when sync is configured: it carries its
        # own per-site signatures, so http.allow_from does not apply to it.
        self.sync_app: App | None = None
        self.configure(text_mode, max_body, allow_from)

    def configure(self, text_mode: TextMode, max_body: int,
                  allow_from: list[str] | None) -> None:
        """Settings SIGHUP may change; requests already reading keep the old ones."""
        self.allow_from = [ipaddress.ip_network(n, strict=False)
                           for n in (allow_from or ["0.0.0.0/0", "::/0"])]
        self.text_mode = text_mode
        self.max_body = max_body

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        method, path = scope["method"], scope["path"]
        if path.startswith("/sync/") and self.sync_app is not None:
            await self.sync_app.handle(scope, receive, send)
            return
        try:
            if path.startswith("/ussd"):
                self._check_client(scope)
            if path == "/ussd":
                _method(method, "POST")
                form = await _read_form(scope, receive, self.max_body)
                await self._ussd(form, send)
            elif path in ("/ussd/end", "/ussd/events"):
                _method(method, "POST")
                form = await _read_form(scope, receive, self.max_body)
                await self._end(form, send)
            elif path == "/healthz":
                _method(method, "GET", "HEAD")
                ok, body = self.health()
                await respond(send, 200 if ok else 503, json.dumps(body, sort_keys=True),
                               "application/json")
            elif path == "/metrics":
                _method(method, "GET")
                await respond(send, 200, await self.metrics(), "text/plain; version=0.0.4")
            else:
                raise BadRequest(404, f"no such path: {path}")
        except BadRequest as e:
            log.info("http_rejected", path=path, status=e.status, reason=str(e))
            await respond(send, e.status, f"{e}\n")

    def _check_client(self, scope: Scope) -> None:
        # The callback believes the phoneNumber it is given: only the aggregator may post.
        client = (scope.get("client") or ("", 0))[0]
        try:
            addr = ipaddress.ip_address(client)
        except ValueError:
            raise BadRequest(403, "client address unknown") from None
        if not any(addr in net for net in self.allow_from):
            raise BadRequest(403, f"client {client} is not in http.allow_from")

    async def _ussd(self, form: dict[str, str], send: Send) -> None:
        for name in ("sessionId", "serviceCode", "phoneNumber"):
            if not form.get(name, "").strip():
                raise BadRequest(400, f"missing form field: {name}")
        reply = await self.ussd.hop(CHANNEL, form["sessionId"], form["phoneNumber"],
                                    form["serviceCode"], form.get("text", ""), self.text_mode)
        await respond(send, 200, reply.wire())

    async def _end(self, form: dict[str, str], send: Send) -> None:
        session = form.get("sessionId", "").strip()
        if not session:
            raise BadRequest(400, "missing form field: sessionId")
        known = await self.ussd.end_notice(CHANNEL, session)
        log.info("ussd_end_notice", session=session[-12:], known=known,
                 status=form.get("status", ""), hops=form.get("hopsCount", ""),
                 error=form.get("errorMessage", ""))
        await respond(send, 200, "OK")


def _method(method: str, *allowed: str) -> None:
    if method not in allowed:
        raise BadRequest(405, f"method {method} not allowed here; use {' or '.join(allowed)}")


async def _read_form(scope: Scope, receive: Receive, limit: int) -> dict[str, str]:
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
    ctype = headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype and ctype != "application/x-www-form-urlencoded":
        raise BadRequest(415, f"expected application/x-www-form-urlencoded, got {ctype}")
    length = headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > limit):
        raise BadRequest(413, f"body larger than {limit} bytes")
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BadRequest(400, "client went away")
        body += message.get("body", b"")
        if len(body) > limit:
            raise BadRequest(413, f"body larger than {limit} bytes")
        if not message.get("more_body"):
            break
    try:
        text = bytes(body).decode("utf-8")
        parsed = parse_qs(text, keep_blank_values=True, strict_parsing=bool(text),
                          max_num_fields=32)
    except (UnicodeDecodeError, ValueError) as e:
        raise BadRequest(400, f"malformed form body: {e}") from None
    form = {}
    for name, values in parsed.items():
        if len(values) != 1:
            raise BadRequest(400, f"form field {name} given {len(values)} times")
        value = values[0]
        if len(value) > _MAX_FIELD.get(name, 1024):
            raise BadRequest(400, f"form field {name} is too long")
        if "\x00" in value:
            raise BadRequest(400, f"form field {name} contains a NUL byte")
        form[name] = value
    return form
