"""Safaricom Daraja (M-PESA): requests built and answers classified without I/O, and a
thin httpx client around them (runs under trio through httpx's anyio backend).

Field names are Daraja's own (CheckoutRequestID, OriginatorConversationID, ResultCode),
so a reader can hold this file next to Safaricom's pages. Every answer is classified
into one of six outcomes, and the distinction that matters for money is between
`NotSent` (Daraja refused before doing anything: sending again is safe) and `Unknown`
(it may have acted: an STK push must then never be sent again; a B2C may, since its
OriginatorConversationID makes a repeat harmless).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx

# Daraja's Timestamp is Kenyan wall-clock time (EAT, UTC+3, no daylight saving).
EAT = timezone(timedelta(hours=3), "EAT")
TOKEN_PATH = "/oauth/v1/generate?grant_type=client_credentials"
STK_PUSH_PATH = "/mpesa/stkpush/v1/processrequest"
STK_QUERY_PATH = "/mpesa/stkpushquery/v1/query"
B2C_PATH = "/mpesa/b2c/v3/paymentrequest"
# The Transaction Status query (reconciles a B2C whose result callback never came) lives
# in sync/daraja_status.py, whose docstring records what was confirmed about it and
# where, and what stays unsure: POST /mpesa/transactionstatus/v1/query, asynchronous;
# the verdict's ResultParameters carry ReceiptNo, TransactionStatus ("Completed") and
# the payment's own ConversationID, while Result.ConversationID names the query.
# A token lives 3600 s ("expires_in": "3599"); renewing a minute early means a request
# never leaves with a token that expires on the way.
TOKEN_MARGIN = 60.0
ACCOUNT_REFERENCE_MAX = 12
TRANSACTION_DESC_MAX = 13     # unsure: third-party guides say 13; the fake enforces it
_OCID = re.compile(r"[A-Za-z0-9._:-]{1,64}")

# ResultCode -> meaning. From third-party lists (REFERENCES.md): all *unsure* except 0
# and 1032, which Safaricom's own samples show. Only 0 means money moved.
RESULT_CODES = {
    "0": "The service request is processed successfully.",
    "1": "The balance is insufficient for the transaction.",
    "1001": "Unable to lock subscriber, a transaction is already in process (unsure)",
    "1019": "Transaction has expired (unsure)",
    "1025": "An error occurred while sending a push request (unsure)",
    "1032": "Request cancelled by user",
    "1037": "DS timeout user cannot be reached (unsure)",
    "2001": "The initiator information is invalid (wrong PIN on STK push) (unsure)",
    "4999": "The transaction is still under processing (unsure: newer query answers)",
    "15": "Duplicate Detected: the OriginatorConversationID was seen before (B2C, unsure)",
}
# A query answering one of these has not settled yet.
PENDING_RESULT_CODES = {"4999"}
# errorCode (the gateway's own refusals, before M-PESA acts) -> outcome class name.
_ERROR_CLASSES = {
    "404.001.03": "token", "401.002.01": "token",        # Invalid Access Token
    "400.002.02": "invalid",                              # Bad Request - Invalid <field>
    "500.003.02": "throttled", "500.003.03": "throttled",  # spike arrest, quota
    "500.002.1001": "duplicate",                          # Duplicate OriginatorConversationID
    "500.001.1001": "processing",                         # being processed / subscriber locked
}


@dataclass(frozen=True)
class DarajaConfig:
    consumer_key: str
    consumer_secret: str
    shortcode: str                # BusinessShortCode and PartyB of an STK push
    passkey: str
    # CallBackURL / ResultURL / QueueTimeOutURL, with {site} and {key} filled in: a
    # callback for an STK push whose own answer was lost then still names its action.
    callback_url: str
    b2c_shortcode: str = ""       # PartyA of a B2C
    initiator_name: str = ""
    security_credential: str = ""
    result_url: str = ""
    timeout_url: str = ""
    # The Transaction Status query's ResultURL / QueueTimeOutURL (sync/daraja_status.py).
    status_result_url: str = ""
    status_timeout_url: str = ""
    # (site, key) -> the {token} of a URL template (sync.auth.callback_token).
    callback_token: Callable[[str, str], str] | None = None
    transaction_type: str = "CustomerPayBillOnline"
    command_id: str = "BusinessPayment"


# -- outcomes ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Accepted:
    """Daraja took the request; the result comes later (query or callback)."""
    checkout_request_id: str | None = None
    merchant_request_id: str | None = None
    conversation_id: str | None = None
    originator_conversation_id: str | None = None
    duplicate: bool = False       # B2C: this OriginatorConversationID was accepted before


@dataclass(frozen=True)
class Pending:
    reason: str


@dataclass(frozen=True)
class Succeeded:
    result_code: str
    result_desc: str
    receipt: str | None = None    # the STK query never carries one; callbacks do
    checkout_request_id: str | None = None
    conversation_id: str | None = None   # a B2C result's: what Daraja named the payment
    originator_conversation_id: str | None = None   # a status result's: what we named it


@dataclass(frozen=True)
class Failed:
    result_code: str
    result_desc: str
    checkout_request_id: str | None = None
    conversation_id: str | None = None
    originator_conversation_id: str | None = None


@dataclass(frozen=True)
class NotSent:
    """Refused before M-PESA saw it (token, throttling, no connection): send again later."""
    reason: str
    token_rejected: bool = False


@dataclass(frozen=True)
class Unknown:
    """It may have happened. Never a reason to send an STK push again."""
    reason: str


Outcome = Accepted | Pending | Succeeded | Failed | NotSent | Unknown


# -- building requests ---------------------------------------------------------------------

def timestamp(unix_seconds: float) -> str:
    return datetime.fromtimestamp(unix_seconds, EAT).strftime("%Y%m%d%H%M%S")


def password(shortcode: str, passkey: str, ts: str) -> str:
    return base64.b64encode(f"{shortcode}{passkey}{ts}".encode()).decode()


def shillings(amount_cents: int) -> int:
    """M-PESA moves whole shillings; the store refuses anything else, so this is a bug."""
    if type(amount_cents) is not int or amount_cents <= 0 or amount_cents % 100:
        raise ValueError(f"{amount_cents!r} cents is not a whole, positive number of shillings")
    return amount_cents // 100


def originator_conversation_id(key: str) -> str:
    """The B2C idempotency key: the action key itself (docs/sync-protocol.md, section 8)
    when it fits a conservative alphabet and length, else a hash of it. Deterministic,
    so a resend after a lost answer carries the same id and Daraja refuses to pay twice."""
    if _OCID.fullmatch(key):
        return key
    return "gwd-" + hashlib.sha256(key.encode()).hexdigest()[:40]


def account_reference(loan_ref: str | None, key: str) -> str:
    # Shown to the payer on the prompt: the loan's ref says what they are paying for.
    return (loan_ref or key.rsplit("-", 1)[-1])[:ACCOUNT_REFERENCE_MAX]


def _url(cfg: DarajaConfig, template: str, site: str, key: str) -> str:
    url = template.replace("{site}", site).replace("{key}", key)
    if "{token}" in url:
        if cfg.callback_token is None:
            raise ValueError("a callback URL template has {token} but no callback_token is set")
        url = url.replace("{token}", cfg.callback_token(site, key))
    return url


def callback_urls(base: str) -> dict[str, str]:
    """Every callback URL template at a relay's base URL (section 11), for
    dataclasses.replace(cfg, **...): each action's own URL, so a callback names its
    action even when the request's answer was lost, with the action's token in it."""
    base = base.rstrip("/") + "/daraja"
    return {"callback_url": base + "/stk/{site}/{key}/{token}",
            "result_url": base + "/b2c/{site}/{key}/{token}/result",
            "timeout_url": base + "/b2c/{site}/{key}/{token}/timeout",
            "status_result_url": base + "/status/{site}/{key}/{token}/result",
            "status_timeout_url": base + "/status/{site}/{key}/{token}/timeout"}


def stk_push_body(cfg: DarajaConfig, *, site: str, key: str, msisdn: str, amount_cents: int,
                  loan_ref: str | None, description: str, now: float) -> dict[str, Any]:
    ts = timestamp(now)
    return {"BusinessShortCode": cfg.shortcode,
            "Password": password(cfg.shortcode, cfg.passkey, ts), "Timestamp": ts,
            "TransactionType": cfg.transaction_type, "Amount": shillings(amount_cents),
            "PartyA": msisdn, "PartyB": cfg.shortcode, "PhoneNumber": msisdn,
            "CallBackURL": _url(cfg, cfg.callback_url, site, key),
            "AccountReference": account_reference(loan_ref, key),
            "TransactionDesc": description[:TRANSACTION_DESC_MAX]}


def stk_query_body(cfg: DarajaConfig, checkout_request_id: str, now: float) -> dict[str, Any]:
    ts = timestamp(now)
    return {"BusinessShortCode": cfg.shortcode,
            "Password": password(cfg.shortcode, cfg.passkey, ts), "Timestamp": ts,
            "CheckoutRequestID": checkout_request_id}


def b2c_body(cfg: DarajaConfig, *, site: str, key: str, msisdn: str, amount_cents: int,
             remarks: str, occasion: str = "") -> dict[str, Any]:
    return {"OriginatorConversationID": originator_conversation_id(key),
            "InitiatorName": cfg.initiator_name, "SecurityCredential": cfg.security_credential,
            "CommandID": cfg.command_id, "Amount": shillings(amount_cents),
            "PartyA": cfg.b2c_shortcode, "PartyB": msisdn, "Remarks": remarks[:100],
            "QueueTimeOutURL": _url(cfg, cfg.timeout_url, site, key),
            "ResultURL": _url(cfg, cfg.result_url, site, key), "Occasion": occasion[:100]}


# -- classifying answers -------------------------------------------------------------------

def _json(body: bytes) -> dict[str, Any] | None:
    try:
        obj = json.loads(body)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def _error(status: int, obj: dict[str, Any] | None) -> tuple[str | None, str]:
    """(class, description) of a Daraja error body, class None when unrecognised."""
    if obj is None or "errorCode" not in obj:
        return None, f"HTTP {status} without a Daraja error body"
    code, message = str(obj.get("errorCode")), str(obj.get("errorMessage", ""))
    return _ERROR_CLASSES.get(code), f"{code} {message}".strip()


def _code(v: Any) -> str:
    # Daraja sends ResultCode as a number in callbacks and as text in answers.
    return str(int(v)) if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)


def _refused(cls: str | None, desc: str, obj: dict[str, Any] | None) -> Outcome | None:
    if cls == "token":
        return NotSent(desc, token_rejected=True)
    if cls == "throttled":
        return NotSent(desc)
    if cls == "invalid":
        # Validation happens before anything else: nothing was sent to the phone.
        return Failed(str(obj["errorCode"]), str(obj.get("errorMessage", ""))[:256])
    return None


def classify_stk_push(status: int, body: bytes) -> Outcome:
    obj = _json(body)
    if status == 200 and obj and "ResponseCode" in obj:
        if _code(obj["ResponseCode"]) == "0" and obj.get("CheckoutRequestID"):
            return Accepted(checkout_request_id=str(obj["CheckoutRequestID"]),
                            merchant_request_id=str(obj.get("MerchantRequestID") or ""))
        return Failed(_code(obj["ResponseCode"]), str(obj.get("ResponseDescription", ""))[:256])
    cls, desc = _error(status, obj)
    if cls == "processing" and "lock subscriber" in desc.lower():
        # Another prompt is open on that phone: refused, nothing pushed (unsure).
        return NotSent(desc)
    return _refused(cls, desc, obj) or Unknown(desc)


def classify_stk_query(status: int, body: bytes) -> Outcome:
    obj = _json(body)
    if status == 200 and obj and "ResultCode" in obj:
        code = _code(obj["ResultCode"])
        desc = str(obj.get("ResultDesc", RESULT_CODES.get(code, "")))[:256]
        checkout = obj.get("CheckoutRequestID")
        if code == "0":
            return Succeeded(code, desc, None, checkout)
        if code in PENDING_RESULT_CODES:
            return Pending(desc)
        return Failed(code, desc, checkout)
    cls, desc = _error(status, obj)
    if cls == "processing":
        return Pending(desc)
    if cls == "invalid":
        # e.g. "Invalid CheckoutRequestID": Daraja does not know it. Not a payment result.
        return Unknown(desc)
    return _refused(cls, desc, obj) or Unknown(desc)


def accepted_conversation(obj: dict[str, Any]) -> Accepted:
    """The acceptance of a request M-PESA answers later by ResultURL (a B2C, a
    Transaction Status query): the ids it will name its result by."""
    return Accepted(conversation_id=str(obj.get("ConversationID") or ""),
                    originator_conversation_id=str(obj.get("OriginatorConversationID") or ""))


def classify_b2c(status: int, body: bytes) -> Outcome:
    obj = _json(body)
    if status == 200 and obj and "ResponseCode" in obj:
        if _code(obj["ResponseCode"]) == "0":
            return accepted_conversation(obj)
        return Failed(_code(obj["ResponseCode"]), str(obj.get("ResponseDescription", ""))[:256])
    cls, desc = _error(status, obj)
    if cls == "duplicate":
        # Daraja answers a repeated OriginatorConversationID with 500.002.1001 and pays
        # nothing: the first one was accepted, and its result goes to the ResultURL.
        return Accepted(duplicate=True)
    return _refused(cls, desc, obj) or Unknown(desc)


def parse_stk_callback(obj: Any) -> Succeeded | Failed | None:
    """`Body.stkCallback` as POSTed to the CallBackURL; None if it is not one."""
    try:
        cb = obj["Body"]["stkCallback"]
        code, desc, checkout = _code(cb["ResultCode"]), str(cb["ResultDesc"])[:256], \
            str(cb["CheckoutRequestID"])
    except (KeyError, TypeError, ValueError):
        return None
    if code != "0":
        return Failed(code, desc, checkout)
    items = (cb.get("CallbackMetadata") or {}).get("Item") or []
    meta = {i.get("Name"): i.get("Value") for i in items if isinstance(i, dict)}
    receipt = meta.get("MpesaReceiptNumber")
    return Succeeded(code, desc, str(receipt) if receipt else None, checkout)


def parse_b2c_result(obj: Any) -> Succeeded | Failed | Pending | None:
    """`Result` as POSTed to the ResultURL; None if it is not one."""
    try:
        r = obj["Result"]
        code, desc = _code(r["ResultCode"]), str(r["ResultDesc"])[:256]
    except (KeyError, TypeError, ValueError):
        return None
    if code == "15":
        # The verdict on a *repeat* of an OriginatorConversationID, not on the payment.
        return Pending(desc)
    # A B2C result's own ids are the payment's (unlike a status result's).
    conversation = str(r["ConversationID"]) if r.get("ConversationID") else None
    originator = str(r["OriginatorConversationID"]) if r.get("OriginatorConversationID") \
        else None
    if code != "0":
        return Failed(code, desc, conversation_id=conversation,
                      originator_conversation_id=originator)
    params = ((r.get("ResultParameters") or {}).get("ResultParameter")) or []
    meta = {p.get("Key"): p.get("Value") for p in params if isinstance(p, dict)}
    receipt = meta.get("TransactionReceipt") or r.get("TransactionID")
    return Succeeded(code, desc, str(receipt) if receipt else None,
                     conversation_id=conversation, originator_conversation_id=originator)


# -- the client ----------------------------------------------------------------------------

class DarajaClient:
    """One Daraja account. The OAuth token is cached until TOKEN_MARGIN before it
    expires; an answer saying the token is invalid drops it and tries once more with a
    fresh one (the gateway refused before M-PESA saw anything, so that is safe)."""

    def __init__(self, base_url: str, cfg: DarajaConfig, *, http: httpx.AsyncClient | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 wallclock: Callable[[], float] = time.time, timeout: float = 30.0) -> None:
        self.base, self.cfg = base_url.rstrip("/"), cfg
        self.http = http or httpx.AsyncClient(timeout=timeout)
        self.clock, self.wallclock = clock, wallclock
        self._token: str | None = None
        self._expires = float("-inf")
        self.token_fetches = 0

    async def aclose(self) -> None:
        await self.http.aclose()

    async def token(self) -> str:
        if self._token is None or self.clock() >= self._expires:
            self.token_fetches += 1
            started = self.clock()
            r = await self.http.get(self.base + TOKEN_PATH,
                                    auth=(self.cfg.consumer_key, self.cfg.consumer_secret))
            obj = _json(r.content)
            if r.status_code != 200 or not obj or "access_token" not in obj:
                raise DarajaAuthError(_error(r.status_code, obj)[1])
            self._token = str(obj["access_token"])
            # Counted from when we asked: the token may be seconds old when it arrives.
            self._expires = started + float(obj.get("expires_in", 3599)) - TOKEN_MARGIN
        return self._token

    def forget_token(self) -> None:
        self._token, self._expires = None, float("-inf")

    async def _post(self, path: str, body: dict[str, Any],
                    classify: Callable[[int, bytes], Outcome]) -> Outcome:
        for _ in range(2):
            try:
                token = await self.token()
            except DarajaAuthError as e:
                return NotSent(f"no token: {e}")
            except httpx.HTTPError as e:
                return NotSent(f"no token: {type(e).__name__}: {e}")
            try:
                r = await self.http.post(self.base + path, json=body,
                                         headers={"Authorization": f"Bearer {token}"})
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as e:
                return NotSent(f"{type(e).__name__}: {e}")   # the request never left
            except httpx.HTTPError as e:
                # Sent, then the answer was lost or cut: Daraja may have acted on it.
                return Unknown(f"{type(e).__name__}: {e}")
            outcome = classify(r.status_code, r.content)
            if not (isinstance(outcome, NotSent) and outcome.token_rejected):
                return outcome
            self.forget_token()
        return outcome

    async def stk_push(self, *, site: str, key: str, msisdn: str, amount_cents: int,
                       loan_ref: str | None = None, description: str = "Payment") -> Outcome:
        body = stk_push_body(self.cfg, site=site, key=key, msisdn=msisdn,
                             amount_cents=amount_cents, loan_ref=loan_ref,
                             description=description, now=self.wallclock())
        return await self._post(STK_PUSH_PATH, body, classify_stk_push)

    async def stk_query(self, checkout_request_id: str) -> Outcome:
        body = stk_query_body(self.cfg, checkout_request_id, self.wallclock())
        return await self._post(STK_QUERY_PATH, body, classify_stk_query)

    async def b2c(self, *, site: str, key: str, msisdn: str, amount_cents: int,
                  remarks: str = "Payment", occasion: str = "") -> Outcome:
        body = b2c_body(self.cfg, site=site, key=key, msisdn=msisdn, amount_cents=amount_cents,
                        remarks=remarks, occasion=occasion)
        return await self._post(B2C_PATH, body, classify_b2c)

    async def transaction_status(self, *, site: str, key: str,
                                 receipt: str | None = None) -> Outcome:
        """Ask about the B2C of action `key`; the verdict comes to the status ResultURL."""
        # Imported here: sync.daraja_status builds on this module's outcomes.
        from sync import daraja_status
        body = daraja_status.status_body(self.cfg, site=site, key=key, receipt=receipt,
                                         originator_conversation_id=originator_conversation_id(key))
        return await self._post(daraja_status.STATUS_PATH, body, daraja_status.classify_status)


class DarajaAuthError(Exception):
    """The token endpoint refused (wrong consumer key or secret: an operator matter)."""
