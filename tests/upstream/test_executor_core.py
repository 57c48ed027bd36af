"""The executor's decision core, pure: no network, no clock but the `now` passed in."""

from __future__ import annotations

import inspect
from dataclasses import replace

import pytest

from store import settlement
from sync.daraja import (
    Accepted,
    Failed,
    NotSent,
    Pending,
    Succeeded,
    Unknown,
    originator_conversation_id,
)
from sync.executor import (
    Action,
    Policy,
    Query,
    Result,
    Send,
    StatusQuery,
    Wait,
    after_query,
    after_send,
    after_status_query,
    begin_send,
    next_step,
    on_callback,
)

NOW = 1000.0
P = Policy(send_retry=5, send_retry_cap=40, first_query=20, query_retry=15, query_retry_cap=60,
           status_after=600, status_retry_cap=3600)
STK = Action(key="site-1-mp-0a1b2c3d4e5f", kind="stk_push", msisdn="254712345678",
             amount_cents=50_000, purpose="repayment", loan_ref="K7QX2M", site="site-1")
B2C = replace(STK, key="site-1-mp-b2c000000001", kind="b2c", purpose="loan_payout")
CHECKOUT = "ws_CO_28112026101500000001"


def sent_stk() -> Action:
    a, r = after_send(begin_send(STK, NOW), Accepted(CHECKOUT, "29116-1-1"), NOW, P)
    assert r is None
    return a


def test_a_queued_action_is_sent_and_an_stk_push_is_saved_unknown_before_it_leaves():
    assert next_step(STK, NOW) == Send()
    ahead = begin_send(STK, NOW)
    # The write-ahead: a crash or a lost answer from here on leaves it `unknown`.
    assert ahead.state == "unknown" and ahead.sends == 1 and ahead.checkout_request_id is None
    assert next_step(ahead, NOW + 10 ** 6) == Wait(None)
    b = begin_send(B2C, NOW)
    assert b.state == "queued" and b.sends == 1      # a B2C resend is harmless


def test_accepted_stk_push_is_queried_after_the_villager_had_time_to_answer():
    a = sent_stk()
    assert a.state == "sent" and a.checkout_request_id == CHECKOUT
    assert next_step(a, NOW) == Wait(NOW + 20)
    assert next_step(a, NOW + 20) == Query(CHECKOUT)


def test_pending_queries_back_off_to_a_cap_then_a_result_settles():
    a = sent_stk()
    waits = []
    for i in range(5):
        a, r = after_query(a, Pending("being processed"), NOW, P)
        assert r is None and a.state == "sent"
        waits.append(a.not_before - NOW)
    assert waits == [15, 30, 60, 60, 60]
    a, r = after_query(a, Unknown("ReadTimeout"), NOW, P)     # a lost query answer: ask again
    assert r is None and a.state == "sent"
    a, r = after_query(a, Succeeded("0", "ok", None, CHECKOUT), NOW, P)
    assert a.state == "succeeded" and r == Result(STK.key, True, None, "0", "ok")
    assert next_step(a, NOW + 10 ** 6) == Wait(None)


@pytest.mark.parametrize("code", ["1", "1032", "1037", "2001"])
def test_a_failed_query_result_is_final(code):
    a, r = after_query(sent_stk(), Failed(code, "no", CHECKOUT), NOW, P)
    assert a.state == "failed" and a.result_code == code
    assert r == Result(STK.key, False, None, code, "no")


def test_an_stk_push_whose_answer_was_lost_is_never_sent_again():
    a, r = after_send(begin_send(STK, NOW), Unknown("RemoteProtocolError"), NOW, P)
    assert r is None and a.state == "unknown" and a.checkout_request_id is None
    for later in (NOW, NOW + 60, NOW + 10 ** 7):
        assert next_step(a, later) == Wait(None)
    # Even an "impossible" second definite answer cannot make it sendable again.
    a2, _ = after_query(a, Pending("x"), NOW, P)
    assert next_step(a2, NOW + 10 ** 7) == Wait(None)


def test_a_b2c_whose_answer_was_lost_is_sent_again_with_the_same_key():
    a, r = after_send(begin_send(B2C, NOW), Unknown("ReadTimeout"), NOW, P)
    assert r is None and a.state == "queued" and a.key == B2C.key
    assert next_step(a, NOW) == Wait(NOW + 5)
    assert next_step(a, NOW + 5) == Send()
    a, r = after_send(begin_send(a, NOW + 5), Accepted(duplicate=True), NOW + 5, P)
    assert a.state == "sent" and a.sends == 2 and "duplicate" in a.note
    # Its result comes to the ResultURL; if it does not, Daraja is asked, never paid again.
    assert next_step(a, NOW + 5) == Wait(NOW + 605)
    assert next_step(a, NOW + 10 ** 6) == StatusQuery()


def test_refusals_before_sending_back_off_and_keep_the_action_queued():
    a, waits = STK, []
    for _ in range(5):
        a, r = after_send(begin_send(a, NOW), NotSent("500.003.02 Spike Arrest"), NOW, P)
        assert r is None and a.state == "queued"
        waits.append(a.not_before - NOW)
    assert waits == [5, 10, 20, 40, 40]


def test_a_bad_request_is_a_definite_failure():
    a, r = after_send(begin_send(STK, NOW), Failed("400.002.02", "Bad Request - Invalid PartyA"),
                      NOW, P)
    assert a.state == "failed" and r.result_code == "400.002.02" and not r.succeeded


def test_a_callback_for_an_unknown_stk_push_lends_its_id_and_the_query_decides():
    lost, _ = after_send(begin_send(STK, NOW), Unknown("lost"), NOW, P)
    cb = Succeeded("0", "ok", "SK12345678", CHECKOUT)
    a, r = on_callback(lost, cb, NOW)
    # Unauthenticated: it does not settle anything by itself.
    assert r is None and a.state == "sent" and a.checkout_request_id == CHECKOUT
    assert next_step(a, NOW) == Query(CHECKOUT)
    a, r = after_query(a, Succeeded("0", "ok", None, CHECKOUT), NOW, P)
    assert r == Result(STK.key, True, "SK12345678", "0", "ok")   # the receipt from the callback


def test_a_callback_for_an_stk_push_that_never_reached_daraja_is_ignored():
    refused, _ = after_send(begin_send(STK, NOW), NotSent("Spike Arrest"), NOW, P)
    for a in (STK, refused):
        same, r = on_callback(a, Succeeded("0", "ok", "SK12345678", CHECKOUT), NOW)
        assert r is None and same == a and next_step(same, NOW + 60) == Send()


def test_a_callback_matching_the_checkout_settles_and_a_stranger_is_ignored():
    a = sent_stk()
    same, r = on_callback(a, Failed("1032", "Request cancelled by user", "ws_CO_other"), NOW)
    assert r is None and same == a
    a, r = on_callback(a, Succeeded("0", "ok", "SK12345678", CHECKOUT), NOW)
    assert a.state == "succeeded" and r == Result(STK.key, True, "SK12345678", "0", "ok")
    again, r = on_callback(a, Succeeded("0", "ok", "SK12345678", CHECKOUT), NOW)
    assert r is None and again == a                             # callbacks arrive twice


def test_a_callback_brings_the_receipt_a_query_success_lacked():
    a, r = after_query(sent_stk(), Succeeded("0", "ok", None, CHECKOUT), NOW, P)
    assert r.receipt is None
    a, r = on_callback(a, Succeeded("0", "ok", "SK12345678", CHECKOUT), NOW)
    assert a.receipt == "SK12345678" and r == Result(STK.key, True, "SK12345678", "0", "ok")


def test_b2c_results_settle_only_actions_we_sent_and_ignore_duplicate_verdicts():
    ignored, r = on_callback(B2C, Succeeded("0", "ok", "SB12345678"), NOW)
    assert r is None and ignored == B2C                         # never sent by us
    a, _ = after_send(begin_send(B2C, NOW), Accepted(conversation_id="AG_1"), NOW, P)
    same, r = on_callback(a, Pending("Duplicate Detected"), NOW)
    assert r is None and same == a
    a, r = on_callback(a, Succeeded("0", "ok", "SB12345678"), NOW)
    assert a.state == "succeeded" and r == Result(B2C.key, True, "SB12345678", "0", "ok")


def test_a_result_is_what_apply_mpesa_result_takes():
    params = list(inspect.signature(settlement.apply_mpesa_result).parameters)
    fields = list(Result.__dataclass_fields__)
    assert [p for p in params if p in fields] == fields


def test_an_action_comes_from_the_change_log_payload():
    payload = {"key": "site-1-mp-1", "kind": "b2c", "purpose": "loan_payout", "loan_ref": None,
               "msisdn": "254712345678", "amount_cents": 100, "state": "queued", "receipt": None,
               "result_code": None, "result_desc": None, "updated_at": 1.0}
    a = Action.from_payload("site-1", payload)
    assert (a.site, a.key, a.kind, a.amount_cents, a.state) == ("site-1", "site-1-mp-1", "b2c",
                                                                 100, "queued")
    with pytest.raises(ValueError):
        Action.from_payload("site-1", {**payload, "kind": "c2b"})


# -- a B2C whose result never came: the Transaction Status query ----------------------------

AG = "AG_20261128_mine"


def sent_b2c() -> Action:
    a, r = after_send(begin_send(B2C, NOW), Accepted(conversation_id=AG), NOW, P)
    assert r is None and a.state == "sent" and a.conversation_id == AG
    return a


def test_a_b2c_without_its_result_is_asked_about_at_status_after_then_further_apart():
    a = sent_b2c()
    assert next_step(a, NOW + 599) == Wait(NOW + 600)
    t, asked, steps = NOW + 600, [], []
    for answer in (Accepted(conversation_id="AG_q1"), NotSent("Spike Arrest"),
                   Unknown("ReadTimeout"), Failed("400.002.02", "Invalid"), Accepted(),
                   Accepted()):
        s = next_step(a, t)
        steps.append(s)
        a, r = after_status_query(a, answer, t, P)
        # Whatever the synchronous answer says, it is about the question: nothing settles.
        assert r is None and a.state == "sent" and a.sends == 1
        asked.append(t - NOW)
        t = a.not_before
    assert set(steps) == {StatusQuery()}            # never Send: the B2C is not paid twice
    assert asked == [600, 1800, 4200, 7800, 11400, 15000]    # +1200, +2400, then the cap
    assert a.status_queries == 6 and a.note.startswith("status query 6")


def test_a_completed_status_settles_the_b2c_with_its_receipt_once():
    a, _ = after_status_query(sent_b2c(), Accepted(), NOW + 600, P)
    verdict = Succeeded("0", "ok", "SB12345678", conversation_id=AG,
                        originator_conversation_id=originator_conversation_id(B2C.key))
    a, r = on_callback(a, verdict, NOW + 601)
    assert a.state == "succeeded" and r == Result(B2C.key, True, "SB12345678", "0", "ok")
    again, r = on_callback(a, verdict, NOW + 602)
    assert r is None and again == a
    assert next_step(a, NOW + 10 ** 7) == Wait(None)


def test_a_status_still_in_progress_or_not_found_leaves_it_sent_and_asked_again():
    a, _ = after_status_query(sent_b2c(), Accepted(), NOW + 600, P)
    for o in (Pending("status: Pending"), Pending("status query: R000002 not found")):
        same, r = on_callback(a, o, NOW + 601)
        assert r is None and same == a
    assert next_step(a, a.not_before) == StatusQuery()


def test_a_failed_status_settles_it_failed_and_another_payments_verdict_is_ignored():
    a = sent_b2c()
    for stranger in (Succeeded("0", "ok", "SB99999999", conversation_id="AG_other"),
                     Succeeded("0", "ok", "SB99999999", conversation_id=AG,
                               originator_conversation_id="site-9-mp-other")):
        same, r = on_callback(a, stranger, NOW)
        assert r is None and same == a
    a, r = on_callback(a, Failed("gwd.ts.failed", "Transaction Status: Failed",
                                 conversation_id=AG), NOW)
    assert a.state == "failed" and r == Result(B2C.key, False, None, "gwd.ts.failed",
                                                "Transaction Status: Failed")
