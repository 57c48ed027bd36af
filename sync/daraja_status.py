"""Daraja's Transaction Status API, without I/O: the request, its synchronous answer, and
the verdict Daraja POSTs to the ResultURL. It reconciles a B2C whose result callback
never came (sync/executor.py asks it; the client call is DarajaClient.transaction_status).

What was confirmed, and where (Safaricom's portal text as mirrored, and SDKs and their
test fixtures that copy its samples; none of it is a contract):

- Purpose and input, Safaricom's own words (developer.safaricom.co.ke/apis/TransactionStatus,
  mirrored at glama.ai .../daraja_docs_v3/docs/TransactionStatus.md): "can be used as a
  secondary reconciliation mechanism when Callbacks are not received. To check the status
  of a transaction, you are required to have either an M-Pesa Receipt number or an
  Originator Conversation ID of the transaction." Asynchronous: M-PESA "responds to
  Daraja with the status. Daraja pushes the response back to the organization."
- POST /mpesa/transactionstatus/v1/query with Initiator, SecurityCredential, CommandID
  "TransactionStatusQuery", TransactionID, PartyA, IdentifierType (4 = organisation
  shortcode), ResultURL, QueueTimeOutURL, Remarks, Occasion (dev.to/msnmongare
  "M-Pesa Transaction Status API"; docs.rs mpesa 1.1.0 services/transaction_status.rs).
- The synchronous answer: {OriginatorConversationID, ConversationID, ResponseCode "0",
  ResponseDescription "Accept the service request successfully."} (SDK fixtures); a
  malformed id is refused at once, 400 {"errorCode": "400.002.02", "errorMessage":
  "Bad Request - Invalid TransactionID"}.
- The result: {"Result": {ResultType, ResultCode, ResultDesc, OriginatorConversationID,
  ConversationID, TransactionID, ResultParameters: {ResultParameter: [{Key, Value}]},
  ReferenceData}} with keys ReceiptNo, TransactionStatus ("Completed"), Amount,
  FinalisedTime, InitiatedTime, DebitPartyName, CreditPartyName, ReasonType, and the
  queried payment's own ConversationID and OriginatorConversationID. Safaricom's
  sample, as SDK test fixtures copy it, spells those two "Conversation ID" and
  "Originator Conversation ID" in one version and without the space in another: both
  are read. Result.ConversationID / OriginatorConversationID name the *status query*,
  not the payment (the sample's differ from the parameters'), and Result.TransactionID
  is a placeholder ("MBN0000000"), so only the parameters identify the payment.

Unsure, and read cautiously here:

- The name of the field carrying the OriginatorConversationID when there is no
  receipt. Several SDKs send "OriginalConversationID" (one Kotlin SDK sends
  "OriginatorConversationID"; some send TransactionID as well, others exactly one).
  We send OriginalConversationID alone when we have no receipt, TransactionID when we
  do; the fake insists on the same.
- Which TransactionStatus values other than "Completed" exist, and what a status
  result for a failed payment looks like. Only "Failed", "Declined", "Cancelled" and
  "Expired" are read as a failure of the payment; anything else is Pending.
- What a query for an id M-PESA never heard of returns. Nothing documented says the
  payment failed then, and a non-zero ResultCode of a *status* result describes the
  query (wrong initiator, unknown id, system busy), not the payment: it is Pending, and
  the next query or the operator settles the action. Reading "not found" as "failed"
  would release money a borrower may already hold.
"""

from __future__ import annotations

from typing import Any

from sync.daraja import (
    DarajaConfig,
    Failed,
    Outcome,
    Pending,
    Succeeded,
    Unknown,
    _code,
    _error,
    _json,
    _refused,
    _url,
    accepted_conversation,
)

STATUS_PATH = "/mpesa/transactionstatus/v1/query"
IDENTIFIER_SHORTCODE = "4"
COMPLETED = {"completed"}
# Read as "the payment did not happen" (unsure: no Safaricom list of values was found).
FAILED = {"failed", "declined", "cancelled", "canceled", "expired"}
_CONVERSATION_KEYS = ("ConversationID", "Conversation ID")
_ORIGINATOR_KEYS = ("OriginatorConversationID", "Originator Conversation ID")


def status_body(cfg: DarajaConfig, *, site: str, key: str, originator_conversation_id: str,
                receipt: str | None = None, remarks: str = "Payout status") -> dict[str, Any]:
    body: dict[str, Any] = {
        "Initiator": cfg.initiator_name, "SecurityCredential": cfg.security_credential,
        "CommandID": "TransactionStatusQuery", "PartyA": cfg.b2c_shortcode,
        "IdentifierType": IDENTIFIER_SHORTCODE,
        "ResultURL": _url(cfg, cfg.status_result_url, site, key),
        "QueueTimeOutURL": _url(cfg, cfg.status_timeout_url, site, key),
        "Remarks": remarks[:100], "Occasion": key[:100]}
    # A receipt names the payment best; without one, the id we chose for it.
    if receipt:
        body["TransactionID"] = receipt
    else:
        body["OriginalConversationID"] = originator_conversation_id
    return body


def classify_status(status: int, body: bytes) -> Outcome:
    """The synchronous answer: an acceptance at best; never a verdict on the payment."""
    obj = _json(body)
    if status == 200 and obj and "ResponseCode" in obj:
        if _code(obj["ResponseCode"]) == "0":
            return accepted_conversation(obj)
        return Unknown(f"status query refused: {_code(obj['ResponseCode'])} "
                       f"{obj.get('ResponseDescription', '')}"[:256])
    cls, desc = _error(status, obj)
    if cls == "invalid":
        # "Invalid TransactionID" is about the question, not the payment.
        return Unknown(desc)
    return _refused(cls, desc, obj) or Unknown(desc)


def _params(r: dict[str, Any]) -> dict[str, Any]:
    params = ((r.get("ResultParameters") or {}).get("ResultParameter")) or []
    if isinstance(params, dict):      # one parameter may come as an object, not a list
        params = [params]
    return {p.get("Key"): p.get("Value") for p in params if isinstance(p, dict)}


def _first(meta: dict[str, Any], keys: tuple[str, ...]) -> str | None:
    return next((str(meta[k]) for k in keys if meta.get(k) not in (None, "")), None)


def parse_status_result(obj: Any) -> Succeeded | Failed | Pending | None:
    """`Result` of a status query as POSTed to its ResultURL; None if it is not one.
    The ids on the verdict are the queried payment's (from the parameters), so the
    executor can check them against what Daraja told us when it accepted the B2C."""
    try:
        r = obj["Result"]
        code, desc = _code(r["ResultCode"]), str(r.get("ResultDesc", ""))[:200]
    except (KeyError, TypeError, ValueError):
        return None
    if code != "0":
        return Pending(f"status query: {code} {desc}".strip())
    meta = _params(r)
    status = str(meta.get("TransactionStatus") or "").strip()
    conversation = _first(meta, _CONVERSATION_KEYS)
    originator = _first(meta, _ORIGINATOR_KEYS)
    if status.lower() in COMPLETED:
        receipt = meta.get("ReceiptNo")
        return Succeeded("0", desc or "Completed", str(receipt) if receipt else None,
                         conversation_id=conversation, originator_conversation_id=originator)
    if status.lower() in FAILED:
        return Failed(f"gwd.ts.{status.lower()}"[:16], f"Transaction Status: {status}",
                      conversation_id=conversation, originator_conversation_id=originator)
    return Pending(f"status: {status or 'not given'}")
