"""A fake Safaricom Daraja for tests and demos: the documented request and answer shapes,
strict about every field, and able to disagree with its client on purpose.

    python tests/peers/daraja_fake.py --port 0     # prints {"event": "listening", "port": N}

or in-process: `fake = DarajaFake(); url = await nursery.start(fake.serve)`.

It keeps a record of every payment it actually made (`payments`), so a test can say
"paid exactly once". Controls (Python methods, or POST /_fake/control {"op": name, ...}
for a subprocess; GET /_fake/state reads payments and callbacks back):

- script(msisdn=, amount=, result_code=, hold=): the outcome for a phone or an amount
  (0 paid; 1 insufficient funds, 1032 cancelled, 1037 unreachable, 2001 wrong PIN, ...);
  `hold` keeps it pending (queries answer 500.001.1001) until release().
- fail_next(path, status): answer 500.003.1001 without doing the work.
- drop_next(path): do the work, then cut the answer mid-body (the lost-answer hole).
- throttle_next(n): 429 with 500.003.02 (spike arrest) before doing anything.
- slow(path, seconds): do the work, then wait before answering.
- expire_tokens(); callbacks(on, kind=None): deliver results to CallBackURL / ResultURL
  or not (kind "stk_push", "b2c" or "status": that kind only). With "b2c" off, a B2C
  is paid but its result is lost, and only the Transaction Status query settles it.
- forget(id): the Transaction Status query no longer finds that B2C (by its
  OriginatorConversationID or receipt), as if M-PESA never heard of it.

Transaction Status (sync/daraja_status.py says where each shape comes from): a query
names a B2C by TransactionID (its receipt) or OriginalConversationID; it is accepted at
once and the verdict is POSTed to its ResultURL: TransactionStatus "Completed" with the
receipt for a paid one, "Failed" for one M-PESA refused (scripted result_code), "Pending"
while held. For an id it does not know it sends a non-zero ResultCode: Daraja's answer
there is undocumented, and this stand-in only has to be something that is not a verdict.

B2C idempotency, as Daraja documents it: a repeated OriginatorConversationID is
refused with HTTP 500 {"errorCode": "500.002.1001", "errorMessage": "Duplicate
OriginatorConversationID."} and pays nothing. Chosen over answering the first
ConversationID again because that is what Safaricom's error table says, and because a
client that treats the refusal as "accepted before" is then correct against both.
"""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import logging
import re
import secrets
import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import parse_qs

import httpx
import hypercorn.config
import hypercorn.trio
import trio

KEY, SECRET = "gatewayd-test-key", "gatewayd-test-secret"
SHORTCODE, PASSKEY = "174379", "gatewayd-test-passkey"
B2C_SHORTCODE, INITIATOR, CREDENTIAL = "600999", "gatewaydapi", "c2VjdXJpdHktY3JlZGVudGlhbA=="
TOKEN = "/oauth/v1/generate"
STK, QUERY, B2C = "/mpesa/stkpush/v1/processrequest", "/mpesa/stkpushquery/v1/query", \
    "/mpesa/b2c/v3/paymentrequest"
STATUS = "/mpesa/transactionstatus/v1/query"
NOT_FOUND = ("R000002", "The transaction could not be found (the fake's stand-in)")
_PHONE = re.compile(r"254[17][0-9]{8}")
_URL = re.compile(r"https?://[^\s/]+(/\S*)?")
_EAT = timezone(timedelta(hours=3))
SUCCESS = "The service request is processed successfully."
DESCRIPTIONS = {1: "The balance is insufficient for the transaction.",
                1032: "Request cancelled by user", 1037: "DS timeout user cannot be reached",
                2001: "The initiator information is invalid.", 1019: "Transaction has expired"}


class _Drop(Exception):
    """Raised after half an answer went out: hypercorn then closes the connection."""


def _error(code: str, message: str) -> dict[str, str]:
    return {"requestId": f"{secrets.randbelow(99999)}-{secrets.randbelow(9999999)}-1",
            "errorCode": code, "errorMessage": message}


class DarajaFake:
    def __init__(self, *, token_lifetime: int = 3599,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.token_lifetime, self.clock = token_lifetime, clock
        self.tokens: dict[str, float] = {}
        self.scripts: list[dict[str, Any]] = []
        self.faults: dict[str, list[tuple[str, Any]]] = {}
        self.throttled = 0
        self.deliver_callbacks = {"stk_push": True, "b2c": True, "status": True}
        self.checkouts: dict[str, dict[str, Any]] = {}
        self.b2c: dict[str, dict[str, Any]] = {}
        self.forgotten: set[str] = set()
        self.payments: list[dict[str, Any]] = []
        self.callbacks_sent: list[dict[str, Any]] = []
        self.requests: list[tuple[str, dict[str, Any] | None]] = []
        self.changed = trio.Event()      # set (and renewed) whenever a payment or callback lands
        self._ids = itertools.count(1)
        self._nursery: trio.Nursery | None = None
        self.url = ""

    # -- controls ------------------------------------------------------------------------
    def script(self, *, msisdn: str | None = None, amount: int | None = None,
               result_code: int = 0, hold: bool = False) -> None:
        self.scripts.insert(0, {"msisdn": msisdn, "amount": amount,
                                "result_code": result_code, "hold": hold})

    def fail_next(self, path: str, status: int = 500, count: int = 1) -> None:
        self.faults.setdefault(path, []).extend([("fail", status)] * count)

    def drop_next(self, path: str, count: int = 1) -> None:
        self.faults.setdefault(path, []).extend([("drop", None)] * count)

    def slow(self, path: str, seconds: float) -> None:
        self.faults.setdefault(path, []).append(("slow", seconds))

    def throttle_next(self, count: int = 1) -> None:
        self.throttled += count

    def expire_tokens(self) -> None:
        self.tokens.clear()

    def callbacks(self, on: bool, kind: str | None = None) -> None:
        for k in [kind] if kind else list(self.deliver_callbacks):
            self.deliver_callbacks[k] = on

    def forget(self, id: str) -> None:
        self.forgotten.add(id)

    def release(self, id: str | None = None) -> None:
        for t in list(self.checkouts.values()) + list(self.b2c.values()):
            if t["state"] == "held" and id in (None, t["id"]):
                t["state"] = "pending"
                self._nursery.start_soon(self._resolve, t)

    async def wait_for(self, predicate: Callable[[DarajaFake], bool], timeout: float = 10) -> None:
        with trio.fail_after(timeout):
            while not predicate(self):
                await self.changed.wait()

    def _notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    # -- serving -------------------------------------------------------------------------
    async def serve(self, host: str = "127.0.0.1", port: int = 0, *,
                    task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        hc = hypercorn.config.Config()
        hc.bind = [f"{host}:{port}"]
        hc.accesslog = None
        quiet = logging.getLogger("daraja_fake.hypercorn")
        quiet.setLevel(logging.CRITICAL)    # the drops are deliberate: no tracebacks
        hc.errorlog = quiet
        async with trio.open_nursery() as n:
            self._nursery = n
            binds = await n.start(lambda task_status: hypercorn.trio.serve(
                self, hc, task_status=task_status))
            self.url = binds[0]
            task_status.started(self.url)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "lifespan":
            while (m := await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            m = await receive()
            body += m.get("body", b"")
            if not m.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        status, answer, fault = await self._handle(scope, headers, body)
        data = json.dumps(answer).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(data)).encode())]})
        if fault and fault[0] == "drop":
            await send({"type": "http.response.body", "body": data[:len(data) // 2],
                        "more_body": True})
            raise _Drop(scope["path"])
        if fault and fault[0] == "slow":
            await trio.sleep(fault[1])
        await send({"type": "http.response.body", "body": data})

    async def _handle(self, scope: dict, headers: dict, body: bytes):
        path, method = scope["path"], scope["method"]
        try:
            obj = json.loads(body) if body else None
        except ValueError:
            obj = None
        if path == "/_fake/control":
            op = obj.pop("op")
            getattr(self, op)(**obj)
            return 200, {"ok": True}, None
        if path == "/_fake/state":
            by_path: dict[str, int] = {}
            for p, _ in self.requests:
                by_path[p] = by_path.get(p, 0) + 1
            return 200, {"payments": self.payments, "callbacks": self.callbacks_sent,
                         "requests": len(self.requests), "requests_by_path": by_path}, None
        self.requests.append((path, obj))
        if self.throttled:
            self.throttled -= 1
            return 429, _error("500.003.02", "Error Occurred: Spike Arrest Violation"), None
        fault = self.faults[path].pop(0) if self.faults.get(path) else None
        if fault and fault[0] == "fail":
            return fault[1], _error("500.003.1001", "Internal Server Error"), None
        if path == TOKEN and method == "GET":
            return (*self._token(scope, headers), None)
        routes = {STK: self._stk_push, QUERY: self._query, B2C: self._b2c,
                  STATUS: self._status}
        if path not in routes or method != "POST":
            return 404, _error("404.002.01", "Resource not found"), None
        bearer = headers.get("authorization", "")
        expiry = self.tokens.get(bearer.removeprefix("Bearer ")) if bearer.startswith(
            "Bearer ") else None
        if expiry is None or self.clock() >= expiry:
            return 401, _error("404.001.03", "Invalid Access Token"), None
        if not isinstance(obj, dict):
            return 400, _error("400.002.02", "Bad Request - Invalid JSON"), None
        status, answer = routes[path](obj)
        return status, answer, fault

    def _token(self, scope: dict, headers: dict) -> tuple[int, dict]:
        if parse_qs(scope["query_string"].decode()).get("grant_type") != ["client_credentials"]:
            return 400, _error("400.008.02", "Invalid grant type passed")
        auth = headers.get("authorization", "")
        try:
            key, _, secret = base64.b64decode(auth.removeprefix("Basic ")).decode().partition(":")
        except ValueError:
            key = secret = ""
        if not auth.startswith("Basic ") or (key, secret) != (KEY, SECRET):
            return 400, _error("400.008.01", "Invalid Authentication passed")
        token = secrets.token_urlsafe(21)
        self.tokens[token] = self.clock() + self.token_lifetime
        return 200, {"access_token": token, "expires_in": str(self.token_lifetime)}

    # -- STK push ----------------------------------------------------------------------------
    def _password_ok(self, obj: dict) -> str | None:
        ts = obj.get("Timestamp")
        if obj.get("BusinessShortCode") not in (SHORTCODE, int(SHORTCODE)):
            return "BusinessShortCode"
        try:
            datetime.strptime(ts, "%Y%m%d%H%M%S")
        except (TypeError, ValueError):
            return "Timestamp"
        if len(ts) != 14:
            return "Timestamp"
        want = base64.b64encode(f"{SHORTCODE}{PASSKEY}{ts}".encode()).decode()
        return None if obj.get("Password") == want else "Password"

    def _stk_push(self, obj: dict) -> tuple[int, dict]:
        amount = obj.get("Amount")
        checks = {
            "TransactionType": obj.get("TransactionType") in ("CustomerPayBillOnline",
                                                              "CustomerBuyGoodsOnline"),
            # Whole shillings: a number or digits, never a fraction (unsure how Daraja
            # treats "10.50"; refusing it is the cautious reading).
            "Amount": (type(amount) is int and amount >= 1) or
                      (isinstance(amount, str) and amount.isdigit() and int(amount) >= 1),
            "PartyA": isinstance(obj.get("PartyA"), str) and bool(_PHONE.fullmatch(obj["PartyA"])),
            "PartyB": str(obj.get("PartyB")) == SHORTCODE,
            "PhoneNumber": isinstance(obj.get("PhoneNumber"), str)
                           and bool(_PHONE.fullmatch(obj["PhoneNumber"])),
            "CallBackURL": isinstance(obj.get("CallBackURL"), str)
                           and bool(_URL.fullmatch(obj["CallBackURL"])),
            "AccountReference": isinstance(obj.get("AccountReference"), str)
                                and 0 < len(obj["AccountReference"]) <= 12,
            "TransactionDesc": isinstance(obj.get("TransactionDesc"), str)
                               and 0 < len(obj["TransactionDesc"]) <= 13,
        }
        bad = self._password_ok(obj) or next((k for k, ok in checks.items() if not ok), None)
        if bad:
            return 400, _error("400.002.02", f"Bad Request - Invalid {bad}")
        n = next(self._ids)
        t = {"id": f"ws_CO_{datetime.now(_EAT):%d%m%Y%H%M%S}{n:06d}", "kind": "stk_push",
             "merchant": f"{29115 + n}-{34620561 + n}-1", "msisdn": obj["PhoneNumber"],
             "amount": int(amount), "url": obj["CallBackURL"], "reference":
             obj["AccountReference"], **self._outcome(obj["PhoneNumber"], int(amount))}
        self.checkouts[t["id"]] = t
        self._start(t)
        return 200, {"MerchantRequestID": t["merchant"], "CheckoutRequestID": t["id"],
                     "ResponseCode": "0",
                     "ResponseDescription": "Success. Request accepted for processing",
                     "CustomerMessage": "Success. Request accepted for processing"}

    def _query(self, obj: dict) -> tuple[int, dict]:
        bad = self._password_ok(obj)
        t = self.checkouts.get(obj.get("CheckoutRequestID"))
        if bad or t is None:
            return 400, _error("400.002.02", f"Bad Request - Invalid {bad or 'CheckoutRequestID'}")
        if t["state"] != "done":
            return 500, _error("500.001.1001", "The transaction is being processed")
        return 200, {"ResponseCode": "0",
                     "ResponseDescription": "The service request has been accepted successsfully",
                     "MerchantRequestID": t["merchant"], "CheckoutRequestID": t["id"],
                     "ResultCode": str(t["result_code"]), "ResultDesc": t["desc"]}

    # -- B2C ---------------------------------------------------------------------------------
    def _b2c(self, obj: dict) -> tuple[int, dict]:
        ocid, amount = obj.get("OriginatorConversationID"), obj.get("Amount")
        checks = {
            "OriginatorConversationID": isinstance(ocid, str) and 0 < len(ocid) <= 64,
            "InitiatorName": obj.get("InitiatorName") == INITIATOR,
            "SecurityCredential": obj.get("SecurityCredential") == CREDENTIAL,
            "CommandID": obj.get("CommandID") in ("SalaryPayment", "BusinessPayment",
                                                  "PromotionPayment"),
            "Amount": type(amount) is int and amount >= 1,
            "PartyA": str(obj.get("PartyA")) == B2C_SHORTCODE,
            "PartyB": isinstance(obj.get("PartyB"), str) and bool(_PHONE.fullmatch(obj["PartyB"])),
            "Remarks": isinstance(obj.get("Remarks"), str) and 0 < len(obj["Remarks"]) <= 100,
            "QueueTimeOutURL": isinstance(obj.get("QueueTimeOutURL"), str)
                               and bool(_URL.fullmatch(obj["QueueTimeOutURL"])),
            "ResultURL": isinstance(obj.get("ResultURL"), str)
                         and bool(_URL.fullmatch(obj["ResultURL"])),
            "Occasion": isinstance(obj.get("Occasion", ""), str),
        }
        bad = next((k for k, ok in checks.items() if not ok), None)
        if bad:
            return 400, _error("400.002.02", f"Bad Request - Invalid {bad}")
        if ocid in self.b2c:
            return 500, _error("500.002.1001", "Duplicate OriginatorConversationID.")
        t = {"id": ocid, "kind": "b2c", "msisdn": obj["PartyB"], "amount": amount,
             "conversation": f"AG_{datetime.now(_EAT):%Y%m%d}_{secrets.token_hex(10)}",
             "url": obj["ResultURL"], **self._outcome(obj["PartyB"], amount)}
        self.b2c[ocid] = t
        self._start(t)
        return 200, {"ConversationID": t["conversation"], "OriginatorConversationID": ocid,
                     "ResponseCode": "0",
                     "ResponseDescription": "Accept the service request successfully."}

    # -- Transaction Status ------------------------------------------------------------------
    def _status(self, obj: dict) -> tuple[int, dict]:
        tid, ocid = obj.get("TransactionID"), obj.get("OriginalConversationID")
        checks = {
            "Initiator": obj.get("Initiator") == INITIATOR,
            "SecurityCredential": obj.get("SecurityCredential") == CREDENTIAL,
            "CommandID": obj.get("CommandID") == "TransactionStatusQuery",
            "PartyA": str(obj.get("PartyA")) == B2C_SHORTCODE,
            "IdentifierType": str(obj.get("IdentifierType")) == "4",
            "TransactionID": tid is None or (isinstance(tid, str) and 0 < len(tid) <= 20),
            "OriginalConversationID": (ocid is None and tid is not None)
                                      or (isinstance(ocid, str) and 0 < len(ocid) <= 64),
            "ResultURL": isinstance(obj.get("ResultURL"), str)
                         and bool(_URL.fullmatch(obj["ResultURL"])),
            "QueueTimeOutURL": isinstance(obj.get("QueueTimeOutURL"), str)
                               and bool(_URL.fullmatch(obj["QueueTimeOutURL"])),
            "Remarks": isinstance(obj.get("Remarks"), str) and 0 < len(obj["Remarks"]) <= 100,
        }
        bad = next((k for k, ok in checks.items() if not ok), None)
        if bad:
            return 400, _error("400.002.02", f"Bad Request - Invalid {bad}")
        n = next(self._ids)
        query = {"ocid": f"{41000 + n}-{27000000 + n}-1",
                 "conversation": f"AG_{datetime.now(_EAT):%Y%m%d}_{secrets.token_hex(10)}"}
        t = self.b2c.get(ocid) if ocid else next(
            (b for b in self.b2c.values() if b.get("receipt") == tid), None)
        if t is not None and (t["id"] in self.forgotten or t.get("receipt") in self.forgotten):
            t = None
        self._nursery.start_soon(self._status_result, query, t, obj["ResultURL"])
        return 200, {"OriginatorConversationID": query["ocid"],
                     "ConversationID": query["conversation"], "ResponseCode": "0",
                     "ResponseDescription": "Accept the service request successfully."}

    async def _status_result(self, query: dict, t: dict | None, url: str) -> None:
        r: dict[str, Any] = {"ResultType": 0, "ResultCode": 0, "ResultDesc": SUCCESS,
                             "OriginatorConversationID": query["ocid"],
                             "ConversationID": query["conversation"],
                             "TransactionID": "OAA0000000"}
        if t is None:
            r["ResultCode"], r["ResultDesc"] = NOT_FOUND
        else:
            status = ("Pending" if t["state"] != "done" else
                      "Completed" if t["result_code"] == 0 else "Failed")
            now = int(f"{datetime.now(_EAT):%Y%m%d%H%M%S}")
            params = [{"Key": "DebitPartyName", "Value": f"{B2C_SHORTCODE} - Gatewayd Test"},
                      {"Key": "CreditPartyName", "Value": f"{t['msisdn']} - Customer"},
                      {"Key": "Originator Conversation ID", "Value": t["id"]},
                      {"Key": "InitiatedTime", "Value": now},
                      {"Key": "ReasonType", "Value": "Business Payment to Customer via API"},
                      {"Key": "TransactionStatus", "Value": status},
                      {"Key": "Amount", "Value": t["amount"]},
                      {"Key": "Conversation ID", "Value": t["conversation"]}]
            if status == "Completed":
                params += [{"Key": "FinalisedTime", "Value": now},
                           {"Key": "ReceiptNo", "Value": t["receipt"]}]
            r["ResultParameters"] = {"ResultParameter": params}
        r["ReferenceData"] = {"ReferenceItem": {"Key": "Occasion"}}
        if self.deliver_callbacks["status"]:
            await self._post_callback(t["id"] if t else query["ocid"], "status", url,
                                      {"Result": r})

    # -- outcomes and callbacks --------------------------------------------------------------
    def _outcome(self, msisdn: str, amount: int) -> dict[str, Any]:
        s = next((s for s in self.scripts if s["msisdn"] in (None, msisdn)
                  and s["amount"] in (None, amount)), {"result_code": 0, "hold": False})
        code = int(s["result_code"])
        return {"result_code": code, "desc": SUCCESS if code == 0 else
                DESCRIPTIONS.get(code, "The transaction failed."),
                "state": "held" if s["hold"] else "pending"}

    def _start(self, t: dict) -> None:
        if t["state"] == "pending":
            self._nursery.start_soon(self._resolve, t)

    async def _resolve(self, t: dict) -> None:
        t["state"] = "done"
        if t["result_code"] == 0:
            t["receipt"] = "S" + "".join(secrets.choice("ABCDEFGHJKLMNPQRSTUVWXYZ0123456789")
                                         for _ in range(9))
            self.payments.append({"kind": t["kind"], "id": t["id"], "msisdn": t["msisdn"],
                                  "amount": t["amount"], "receipt": t["receipt"]})
        self._notify()
        if self.deliver_callbacks[t["kind"]]:
            await self._callback(t)

    async def _callback(self, t: dict) -> None:
        ok = t["result_code"] == 0
        if t["kind"] == "stk_push":
            cb: dict[str, Any] = {"MerchantRequestID": t["merchant"], "CheckoutRequestID": t["id"],
                                  "ResultCode": t["result_code"], "ResultDesc": t["desc"]}
            if ok:
                cb["CallbackMetadata"] = {"Item": [
                    {"Name": "Amount", "Value": float(t["amount"])},
                    {"Name": "MpesaReceiptNumber", "Value": t["receipt"]},
                    {"Name": "TransactionDate", "Value": int(f"{datetime.now(_EAT):%Y%m%d%H%M%S}")},
                    {"Name": "PhoneNumber", "Value": int(t["msisdn"])}]}
            payload: dict[str, Any] = {"Body": {"stkCallback": cb}}
        else:
            r: dict[str, Any] = {"ResultType": 0, "ResultCode": t["result_code"],
                                 "ResultDesc": t["desc"], "OriginatorConversationID": t["id"],
                                 "ConversationID": t["conversation"],
                                 "TransactionID": t.get("receipt", "OAA0000000")}
            if ok:
                r["ResultParameters"] = {"ResultParameter": [
                    {"Key": "TransactionAmount", "Value": t["amount"]},
                    {"Key": "TransactionReceipt", "Value": t["receipt"]},
                    {"Key": "B2CRecipientIsRegisteredCustomer", "Value": "Y"}]}
            payload = {"Result": r}
        await self._post_callback(t["id"], t["kind"], t["url"], payload)

    async def _post_callback(self, id: str, kind: str, url: str, payload: dict) -> None:
        record = {"id": id, "kind": kind, "url": url, "delivered": False}
        try:
            async with httpx.AsyncClient(timeout=5) as c:
                record["delivered"] = (await c.post(url, json=payload)).status_code < 300
        except httpx.HTTPError:
            pass    # Daraja does not retry a callback: nor do we
        self.callbacks_sent.append(record)
        self._notify()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    args = p.parse_args(argv)

    async def run() -> None:
        fake = DarajaFake()
        async with trio.open_nursery() as n:
            url = await n.start(fake.serve, args.host, args.port)
            print(json.dumps({"event": "listening", "url": url,
                              "port": int(url.rsplit(":", 1)[1])}), flush=True)

    trio.run(run)


if __name__ == "__main__":
    sys.exit(main())
