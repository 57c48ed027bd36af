"""sync/daraja_status.py: the Transaction Status query's body, its synchronous answer and
the verdict posted to its ResultURL, read from the shapes SDK fixtures copy from
Safaricom's samples; and the client against the fake, which posts that verdict."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import trio

from sync import daraja_status
from sync.daraja import Accepted, DarajaClient, NotSent, Pending, Succeeded, Unknown
from sync.daraja_status import classify_status, parse_status_result, status_body
from tests.peers import daraja_fake as df
from tests.upstream.conftest import daraja_config

KEY = "site-1-mp-b2c000000001"


def sample(status: str = "Completed", spaced: bool = True, code: int = 0) -> dict:
    """Safaricom's sample status result (as SDK fixtures copy it): the Result's own ids
    are the status query's, the parameters name the payment."""
    conv, orig = ("Conversation ID", "Originator Conversation ID") if spaced else \
        ("ConversationID", "OriginatorConversationID")
    return {"Result": {
        "ConversationID": "AG_20180223_0000493344ae97d86f75",
        "OriginatorConversationID": "3213-416199-2",
        "ReferenceData": {"ReferenceItem": {"Key": "Occasion"}},
        "ResultCode": code, "ResultDesc": "The service request is processed successfully.",
        "ResultParameters": {"ResultParameter": [
            {"Key": "DebitPartyName", "Value": "600310 - Safaricom333"},
            {"Key": "CreditPartyName", "Value": "254708374149 - John Doe"},
            {"Key": orig, "Value": KEY},
            {"Key": "InitiatedTime", "Value": 20180223054112},
            {"Key": "DebitAccountType", "Value": "Utility Account"},
            {"Key": "TransactionReason"},
            {"Key": "ReasonType", "Value": "Business Payment to Customer via API"},
            {"Key": "TransactionStatus", "Value": status},
            {"Key": "FinalisedTime", "Value": 20180223054112},
            {"Key": "Amount", "Value": 300},
            {"Key": conv, "Value": "AG_20180223_000041b09c22e613d6c9"},
            {"Key": "ReceiptNo", "Value": "MBN31H462N"}]},
        "ResultType": 0, "TransactionID": "MBN0000000"}}


def test_the_body_asks_by_our_id_without_a_receipt_and_by_the_receipt_with_one():
    cfg = daraja_config("https://up.example",
                        status_result_url="https://up.example/daraja/status/{site}/{key}/result",
                        status_timeout_url="https://up.example/daraja/status/{site}/{key}/timeout")
    body = status_body(cfg, site="site-1", key=KEY, originator_conversation_id=KEY)
    assert body == {"Initiator": df.INITIATOR, "SecurityCredential": df.CREDENTIAL,
                    "CommandID": "TransactionStatusQuery", "PartyA": df.B2C_SHORTCODE,
                    "IdentifierType": "4", "OriginalConversationID": KEY,
                    "ResultURL": f"https://up.example/daraja/status/site-1/{KEY}/result",
                    "QueueTimeOutURL": f"https://up.example/daraja/status/site-1/{KEY}/timeout",
                    "Remarks": "Payout status", "Occasion": KEY}
    by_receipt = status_body(cfg, site="site-1", key=KEY, originator_conversation_id=KEY,
                             receipt="SB12345678")
    assert by_receipt["TransactionID"] == "SB12345678" and "OriginalConversationID" not in by_receipt


def test_the_synchronous_answer_is_never_a_verdict():
    ok = (b'{"OriginatorConversationID":"71840-27539181-07","ConversationID":'
          b'"AG_20210709_12346c8e6f8858d7b70a","ResponseCode":0,'
          b'"ResponseDescription":"Accept the service request successfully."}')
    assert classify_status(200, ok) == Accepted(
        conversation_id="AG_20210709_12346c8e6f8858d7b70a",
        originator_conversation_id="71840-27539181-07")
    bad = b'{"requestId":"1","errorCode":"400.002.02","errorMessage":"Bad Request - Invalid TransactionID"}'
    assert isinstance(classify_status(400, bad), Unknown)
    assert isinstance(classify_status(429, b'{"errorCode":"500.003.02"}'), NotSent)
    assert isinstance(classify_status(200, b'{"ResponseCode":"1","ResponseDescription":"x"}'),
                      Unknown)


def test_a_completed_status_is_a_success_naming_the_payment_not_the_query():
    for spaced in (True, False):
        assert parse_status_result(sample(spaced=spaced)) == Succeeded(
            "0", "The service request is processed successfully.", "MBN31H462N",
            conversation_id="AG_20180223_000041b09c22e613d6c9", originator_conversation_id=KEY)


def test_only_a_definite_status_is_a_verdict():
    failed = parse_status_result(sample("Failed"))
    assert (failed.result_code, failed.conversation_id) == \
        ("gwd.ts.failed", "AG_20180223_000041b09c22e613d6c9")
    for status in ("Pending", "In Progress", ""):
        assert isinstance(parse_status_result(sample(status)), Pending)
    # A non-zero ResultCode is about the query (unknown id, wrong initiator), never the
    # payment: reading "not found" as "failed" could pay a borrower twice.
    for code in (1, 2001, "R000002"):
        assert isinstance(parse_status_result(sample(code=code)), Pending)
    assert parse_status_result({"Body": {}}) is None and parse_status_result(None) is None


def test_the_sans_io_status_module_does_not_import_trio_or_httpx():
    imported = set()
    for n in ast.walk(ast.parse(Path(daraja_status.__file__).read_text())):
        if isinstance(n, ast.ImportFrom):
            imported.add((n.module or "").split(".")[0])
        elif isinstance(n, ast.Import):
            imported |= {a.name.split(".")[0] for a in n.names}
    assert not imported & {"trio", "httpx"}


class Inbox:
    """An ASGI app standing in for the status ResultURL: it keeps what Daraja posts."""

    def __init__(self) -> None:
        self.posted: list[tuple[str, dict]] = []
        self.changed = trio.Event()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            m = await receive()
            body += m.get("body", b"")
            if not m.get("more_body"):
                break
        self.posted.append((scope["path"], json.loads(body)))
        self.changed.set()
        self.changed = trio.Event()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})


async def test_the_fake_answers_a_status_query_and_posts_the_verdict(fake, nursery):
    import hypercorn.config
    import hypercorn.trio
    inbox = Inbox()
    hc = hypercorn.config.Config()
    hc.bind, hc.accesslog = ["127.0.0.1:0"], None
    base = (await nursery.start(lambda task_status: hypercorn.trio.serve(
        inbox, hc, task_status=task_status)))[0]
    cfg = daraja_config(base, status_result_url=base + "/status/{site}/{key}/result",
                        status_timeout_url=base + "/status/{site}/{key}/timeout")
    client = DarajaClient(fake.url, cfg)
    fake.callbacks(False, kind="b2c")          # paid, and its result lost
    assert isinstance(await client.b2c(site="site-1", key=KEY, msisdn="254712345678",
                                       amount_cents=20_000, remarks="Loan payout"), Accepted)
    await fake.wait_for(lambda f: len(f.payments) == 1)
    for key in (KEY, "site-1-mp-neverseen01"):
        accepted = await client.transaction_status(site="site-1", key=key)
        assert isinstance(accepted, Accepted) and accepted.conversation_id.startswith("AG_")
    with trio.fail_after(10):
        while len(inbox.posted) < 2:
            await inbox.changed.wait()
    verdicts = {path.split("/")[3]: parse_status_result(obj) for path, obj in inbox.posted}
    paid = fake.payments[0]
    assert verdicts[KEY] == Succeeded("0", df.SUCCESS, paid["receipt"],
                                      conversation_id=fake.b2c[KEY]["conversation"],
                                      originator_conversation_id=KEY)
    assert isinstance(verdicts["site-1-mp-neverseen01"], Pending)
    await client.aclose()
