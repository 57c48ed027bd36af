"""sync/daraja.py against the fake Daraja: the token, each answer and how it is
classified, and the two idempotency stories (B2C's OriginatorConversationID, and the
STK push that has none)."""

from __future__ import annotations

import ast
import base64
from pathlib import Path

import httpx
import pytest

from sync import daraja
from sync.daraja import (
    Accepted,
    DarajaClient,
    Failed,
    NotSent,
    Pending,
    Succeeded,
    Unknown,
    classify_b2c,
    classify_stk_push,
    classify_stk_query,
    parse_b2c_result,
    parse_stk_callback,
)
from tests.peers import daraja_fake as df
from tests.upstream.conftest import UNREACHABLE, daraja_config

PHONE = "254712345678"


async def push(client: DarajaClient, key: str = "site-1-mp-0a1b2c3d4e5f", msisdn: str = PHONE,
               amount_cents: int = 50_000):
    return await client.stk_push(site="site-1", key=key, msisdn=msisdn,
                                 amount_cents=amount_cents, loan_ref="K7QX2M",
                                 description="Repayment")


async def b2c(client: DarajaClient, key: str = "site-1-mp-b2c000000001", amount_cents=20_000):
    return await client.b2c(site="site-1", key=key, msisdn=PHONE, amount_cents=amount_cents,
                            remarks="Loan payout")


# -- token ----------------------------------------------------------------------------------

async def test_token_is_cached_until_a_minute_before_expires_in(fake):
    now = [1000.0]
    c = DarajaClient(fake.url, daraja_config(), clock=lambda: now[0])
    try:
        t1 = await c.token()
        assert await c.token() == t1 and c.token_fetches == 1
        # "expires_in": "3599", renewed TOKEN_MARGIN (60 s) early.
        now[0] += 3599 - 60 - 0.001
        assert await c.token() == t1 and c.token_fetches == 1
        now[0] += 0.002
        t2 = await c.token()
        assert t2 != t1 and c.token_fetches == 2
    finally:
        await c.aclose()


async def test_a_token_daraja_calls_invalid_is_renewed_once_and_the_push_made_once(fake, client):
    assert isinstance(await push(client, key="site-1-mp-000000000001"), Accepted)
    fake.expire_tokens()           # Daraja forgot it (or its clock disagrees with ours)
    outcome = await push(client, key="site-1-mp-000000000002")
    assert isinstance(outcome, Accepted)
    assert client.token_fetches == 2
    await fake.wait_for(lambda f: len(f.payments) == 2)
    # The refused request did nothing: two pushes, two payments, not three.
    assert len(fake.checkouts) == 2


async def test_bearer_token_expired_on_daraja_side_gets_its_documented_error(fake, client):
    token = await client.token()
    fake.clock = lambda: 10 ** 12          # every token is now past its expiry
    r = await client.http.post(fake.url + daraja.STK_PUSH_PATH, json={},
                               headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401
    assert r.json()["errorCode"] == "404.001.03"
    assert r.json()["errorMessage"] == "Invalid Access Token" and "requestId" in r.json()


async def test_wrong_credentials_are_refused_and_nothing_is_sent(fake):
    c = DarajaClient(fake.url, daraja_config(consumer_secret="wrong"))
    try:
        outcome = await push(c)
    finally:
        await c.aclose()
    assert isinstance(outcome, NotSent) and "400.008.01" in outcome.reason
    assert fake.checkouts == {}
    async with httpx.AsyncClient() as h:
        r = await h.get(fake.url + "/oauth/v1/generate?grant_type=password",
                        auth=(df.KEY, df.SECRET))
    assert r.status_code == 400 and r.json()["errorCode"] == "400.008.02"


# -- STK push and query ---------------------------------------------------------------------

async def test_stk_push_accepted_then_the_query_settles_it(fake, client):
    fake.script(msisdn=PHONE, hold=True)            # the villager has not typed the PIN yet
    accepted = await push(client)
    assert isinstance(accepted, Accepted) and accepted.checkout_request_id.startswith("ws_CO_")
    assert isinstance(await client.stk_query(accepted.checkout_request_id), Pending)
    assert fake.payments == []
    fake.release()
    await fake.wait_for(lambda f: len(f.payments) == 1)
    settled = await client.stk_query(accepted.checkout_request_id)
    assert settled == Succeeded("0", df.SUCCESS, None, accepted.checkout_request_id)
    assert fake.payments[0]["amount"] == 500 and fake.payments[0]["msisdn"] == PHONE


@pytest.mark.parametrize("code", [1, 1032, 1037, 2001])
async def test_each_scripted_failure_is_a_failure_with_its_result_code(fake, client, code):
    fake.script(amount=500, result_code=code)
    accepted = await push(client)
    await fake.wait_for(lambda f: f.checkouts[accepted.checkout_request_id]["state"] == "done")
    outcome = await client.stk_query(accepted.checkout_request_id)
    assert isinstance(outcome, Failed) and outcome.result_code == str(code)
    assert outcome.result_desc == df.DESCRIPTIONS[code]
    assert fake.payments == []


async def test_a_wrong_passkey_is_refused_as_bad_request_before_any_prompt(fake):
    c = DarajaClient(fake.url, daraja_config(passkey="not-the-passkey"))
    try:
        outcome = await push(c)
    finally:
        await c.aclose()
    assert outcome == Failed("400.002.02", "Bad Request - Invalid Password")
    assert fake.checkouts == {}


def _good_stk_body() -> dict:
    ts = "20261128101500"
    return {"BusinessShortCode": df.SHORTCODE,
            "Password": base64.b64encode(f"{df.SHORTCODE}{df.PASSKEY}{ts}".encode()).decode(),
            "Timestamp": ts, "TransactionType": "CustomerPayBillOnline", "Amount": 10,
            "PartyA": PHONE, "PartyB": df.SHORTCODE, "PhoneNumber": PHONE,
            "CallBackURL": "https://upstream.example/cb", "AccountReference": "K7QX2M",
            "TransactionDesc": "Repayment"}


@pytest.mark.parametrize("field,value", [
    ("BusinessShortCode", "999999"), ("Timestamp", "2026-11-28"), ("TransactionType", "Pay"),
    ("Amount", 10.5), ("Amount", 0), ("PartyA", "0712345678"), ("PartyB", "111111"),
    ("PhoneNumber", "+254712345678"), ("CallBackURL", "not a url"),
    ("AccountReference", "THIRTEEN-CHAR"), ("TransactionDesc", "fourteen chars"),
    ("Password", "d3Jvbmc="),
])
async def test_the_fake_checks_every_stk_field_like_daraja(fake, client, field, value):
    body = {**_good_stk_body(), field: value}
    r = await client.http.post(fake.url + daraja.STK_PUSH_PATH, json=body,
                               headers={"Authorization": f"Bearer {await client.token()}"})
    assert r.status_code == 400
    assert r.json()["errorCode"] == "400.002.02"
    assert r.json()["errorMessage"] == f"Bad Request - Invalid {field}"
    ok = await client.http.post(fake.url + daraja.STK_PUSH_PATH, json=_good_stk_body(),
                                headers={"Authorization": f"Bearer {await client.token()}"})
    assert ok.status_code == 200 and ok.json()["ResponseCode"] == "0"


def test_the_builder_keeps_daraja_limits_and_whole_shillings():
    cfg = daraja_config()
    body = daraja.stk_push_body(cfg, site="s", key="s-mp-1", msisdn=PHONE, amount_cents=123_400,
                                loan_ref="A-LOAN-REF-LONGER-THAN-12", description="Loan repayment",
                                now=1764316800)
    assert body["Amount"] == 1234 and body["Timestamp"] == "20251128110000"   # EAT
    assert len(body["AccountReference"]) == 12 and len(body["TransactionDesc"]) == 13
    assert base64.b64decode(body["Password"]).decode() == df.SHORTCODE + df.PASSKEY + "20251128110000"
    assert body["CallBackURL"] == "http://127.0.0.1:9/cb/s/s-mp-1"
    with pytest.raises(ValueError):
        daraja.stk_push_body(cfg, site="s", key="k", msisdn=PHONE, amount_cents=1050,
                             loan_ref=None, description="x", now=0)


async def test_an_stk_push_whose_answer_is_dropped_is_unknown_though_it_was_made(fake, client):
    fake.drop_next(df.STK)
    outcome = await push(client)
    assert isinstance(outcome, Unknown) and "RemoteProtocolError" in outcome.reason
    await fake.wait_for(lambda f: len(f.payments) == 1)     # Daraja did the work


async def test_an_http_500_on_stk_push_is_unknown_not_a_failure(fake, client):
    fake.fail_next(df.STK)
    assert isinstance(await push(client), Unknown)


async def test_throttling_and_no_connection_are_not_sent(fake, client):
    fake.throttle_next()
    throttled = await push(client)
    assert isinstance(throttled, NotSent) and "500.003.02" in throttled.reason
    c = DarajaClient(UNREACHABLE, daraja_config())
    try:
        assert isinstance(await push(c), NotSent)        # connection refused: never left
    finally:
        await c.aclose()
    assert fake.checkouts == {}


async def test_a_slow_daraja_past_the_client_timeout_is_unknown(fake):
    c = DarajaClient(fake.url, daraja_config(), timeout=0.3)
    fake.slow(df.STK, 5.0)
    try:
        outcome = await push(c)
    finally:
        await c.aclose()
    assert isinstance(outcome, Unknown) and "Timeout" in outcome.reason


# -- B2C ----------------------------------------------------------------------------------

async def test_b2c_resent_after_a_dropped_answer_pays_exactly_once(fake, client):
    fake.drop_next(df.B2C)
    assert isinstance(await b2c(client), Unknown)
    again = await b2c(client)          # same key, so the same OriginatorConversationID
    assert again == Accepted(duplicate=True)
    await fake.wait_for(lambda f: len(f.payments) == 1)
    assert [p["id"] for p in fake.payments] == ["site-1-mp-b2c000000001"]
    third = await b2c(client)
    assert third.duplicate and len(fake.payments) == 1
    assert [path for path, _ in fake.requests].count(df.B2C) == 3


async def test_b2c_first_answer_names_the_originator_conversation_id(fake, client):
    outcome = await b2c(client, key="site-1-mp-b2c000000002")
    assert outcome.originator_conversation_id == "site-1-mp-b2c000000002"
    assert outcome.conversation_id.startswith("AG_") and not outcome.duplicate
    assert daraja.originator_conversation_id("x" * 100).startswith("gwd-")
    assert daraja.originator_conversation_id("x" * 100) == daraja.originator_conversation_id("x" * 100)


# -- classification and callbacks (documented shapes) ---------------------------------------

def test_classification_of_documented_answers():
    assert classify_stk_query(500, b'{"requestId":"1","errorCode":"500.001.1001",'
                                   b'"errorMessage":"The transaction is being processed"}') \
        == Pending("500.001.1001 The transaction is being processed")
    assert isinstance(classify_stk_query(200, b'{"ResultCode":"4999","ResultDesc":"x"}'), Pending)
    assert isinstance(classify_stk_query(400, b'{"errorCode":"400.002.02","errorMessage":'
                                              b'"Bad Request - Invalid CheckoutRequestID"}'), Unknown)
    assert isinstance(classify_stk_push(502, b"<html>bad gateway</html>"), Unknown)
    assert isinstance(classify_stk_push(500, b'{"errorCode":"500.001.1001","errorMessage":'
                                             b'"Unable to lock subscriber, a transaction is '
                                             b'already in process for the current subscriber"}'),
                      NotSent)
    assert classify_b2c(500, b'{"errorCode":"500.002.1001","errorMessage":"Duplicate '
                             b'OriginatorConversationID."}') == Accepted(duplicate=True)
    assert isinstance(classify_b2c(500, b'{"errorCode":"500.003.1001"}'), Unknown)


def test_callback_parsers_read_safaricoms_samples():
    ok = {"Body": {"stkCallback": {
        "MerchantRequestID": "19465-780693-1", "CheckoutRequestID": "ws_CO_27072017154747416",
        "ResultCode": 0, "ResultDesc": "The service request is processed successfully.",
        "CallbackMetadata": {"Item": [{"Name": "Amount", "Value": 1},
                                      {"Name": "MpesaReceiptNumber", "Value": "LGR7OWQX0R"},
                                      {"Name": "Balance"},
                                      {"Name": "TransactionDate", "Value": 20170727154800},
                                      {"Name": "PhoneNumber", "Value": 254721566839}]}}}}
    assert parse_stk_callback(ok) == Succeeded(
        "0", "The service request is processed successfully.", "LGR7OWQX0R",
        "ws_CO_27072017154747416")
    cancelled = {"Body": {"stkCallback": {"MerchantRequestID": "1", "CheckoutRequestID": "ws_1",
                                          "ResultCode": 1032,
                                          "ResultDesc": "Request cancelled by user"}}}
    assert parse_stk_callback(cancelled) == Failed("1032", "Request cancelled by user", "ws_1")
    assert parse_stk_callback({"Body": {}}) is None
    result = {"Result": {"ResultType": 0, "ResultCode": 0, "ResultDesc": "ok",
                         "OriginatorConversationID": "x", "ConversationID": "AG_1",
                         "TransactionID": "LGH3197RIB", "ResultParameters": {"ResultParameter": [
                             {"Key": "TransactionReceipt", "Value": "LGH3197RIB"}]}}}
    assert parse_b2c_result(result) == Succeeded("0", "ok", "LGH3197RIB", conversation_id="AG_1",
                                                 originator_conversation_id="x")
    dup = {"Result": {"ResultType": 0, "ResultCode": 15, "ResultDesc": "Duplicate Detected"}}
    assert isinstance(parse_b2c_result(dup), Pending)      # about the repeat, not the payment


def test_the_sans_io_daraja_module_does_not_import_trio():
    imported = set()
    for n in ast.walk(ast.parse(Path(daraja.__file__).read_text())):
        if isinstance(n, ast.Import):
            imported |= {a.name.split(".")[0] for a in n.names}
        elif isinstance(n, ast.ImportFrom):
            imported.add((n.module or "").split(".")[0])
    assert "httpx" in imported and "trio" not in imported
