"""The upstream simulator end to end, in this process, against the fake Daraja and a
scripted box that speaks docs/sync-protocol.md through sync/batch.py and sync/auth.py."""

from __future__ import annotations

import time
from dataclasses import replace

import httpx
import pytest
import trio
import trio.testing

from sync import auth
from sync.checkpoint import Ack, MpesaResult, decode_inbound
from sync.daraja import DarajaClient
from sync.upstream_sim import UpstreamSim
from tests.peers import daraja_fake as df
from tests.upstream.conftest import FAST, KEY, SITE, Box, action, daraja_config, other

STK_KEY, B2C_KEY = "site-1-mp-0a1b2c3d4e5f", "site-1-mp-b2c000000001"
LENDER, BORROWER = "254722222222", "254711111111"


def stk_sends(fake) -> int:
    return [p for p, _ in fake.requests].count(df.STK)


def results(sim) -> dict[str, dict]:
    return {c["action_key"]: c for c in sim.store.state(SITE)["inbound"]}


async def test_actions_are_executed_once_and_results_ride_the_next_ack_signed(sim, box, fake):
    b = box.batch([other(1), action(2, STK_KEY, msisdn=LENDER),
                   action(3, B2C_KEY, kind="b2c", purpose="loan_payout", msisdn=BORROWER,
                          amount_cents=20_000), other(4)])
    r = await box.push(b)
    assert r.status == 200 and r.server_time is not None            # signed, and verified
    ack, inbound = r.push()
    assert ack == Ack(SITE, 4, b.sha256) and inbound is None
    box.checkpoint = 4
    await sim.wait_for(lambda s: len(results(s)) == 2)
    r = await box.push(box.batch([other(5)]))
    ack, inbound = r.push()
    assert ack.last_seq == 5 and r.server_time is not None
    changes = {c.action_key: c for c in inbound}
    assert set(changes) == {STK_KEY, B2C_KEY} and inbound.after == 0
    paid = {p["msisdn"]: p for p in fake.payments}
    assert len(fake.payments) == 2
    assert changes[STK_KEY] == MpesaResult(
        seq=changes[STK_KEY].seq, id=changes[STK_KEY].id, action_key=STK_KEY,
        result="succeeded", receipt=paid[LENDER]["receipt"], result_code="0",
        result_desc=df.SUCCESS, amount_cents=50_000)
    assert changes[B2C_KEY].succeeded and changes[B2C_KEY].receipt == paid[BORROWER]["receipt"]
    state = (await box.call("GET", f"/v1/sites/{SITE}/state")).json
    assert (state["records"], state["checkpoint"], state["actions_executed"], state["sends"]) == \
        (5, 5, 2, 2)


async def test_replayed_or_altered_requests_get_401_and_change_nothing(sim, box, fake):
    b = box.batch([other(1)])
    first = await box.push(b)
    assert first.status == 200
    target = f"/v1/sites/{SITE}/batches?inbound_after=0"
    replay = await box.call("POST", target, b.wire, headers=first.sent_headers)
    assert (replay.status, replay.json, replay.server_time) == (401, {"error": "replay"}, None)
    b2 = box.batch([other(2)], after=1)
    flipped = bytearray(b2.wire)
    flipped[20] ^= 1
    altered = await box.call("POST", target, b2.wire, body_sent=bytes(flipped))
    assert (altered.status, altered.json) == (401, {"error": "bad_signature"})
    signed_for_0 = auth.sign("POST", target, b2.wire, SITE, KEY, time.time())
    moved = await box.call("POST", target.replace("=0", "=7"), b2.wire, headers=signed_for_0)
    assert (moved.status, moved.json) == (401, {"error": "bad_signature"})
    for other_box in (Box(sim.url, key=bytes(32)), Box(sim.url, site="site-9")):
        r = await other_box.push(b2)
        await other_box.aclose()
        assert r.status == 401 and r.server_time is None
        assert r.json["error"] == ("bad_signature" if other_box.site == SITE else "unknown_site")
    bare = await box.call("POST", target, b2.wire, headers={auth.H_NONCE: "x" * 32})
    assert (bare.status, bare.json) == (401, {"error": "missing"})
    state = sim.store.state(SITE)
    assert (state["records"], state["checkpoint"]) == (1, 1)


async def test_a_stale_timestamp_gets_a_signed_401_with_the_upstreams_clock(sim, box):
    r = await box.push(box.batch([other(1)]), now=time.time() - 3600)
    assert (r.status, r.json) == (401, {"error": "stale"})
    assert abs(r.server_time - time.time()) < 5           # signed: the box may adopt it
    offset = auth.clock_offset(r.server_time, time.time() - 3600, time.time() - 3600)
    again = await box.push(box.batch([other(1)]), now=time.time() - 3600 + offset)
    assert again.status == 200


async def test_a_repeated_batch_is_harmless_and_acked_again(sim, box, fake):
    b = box.batch([action(1, STK_KEY), other(2)])
    assert (await box.push(b)).status == 200
    await sim.wait_for(lambda s: len(results(s)) == 1)
    again = await box.push(b)            # its answer was lost: same bytes, new nonce
    assert again.status == 200 and again.push()[0] == Ack(SITE, 2, b.sha256)
    assert again.push()[1] is not None   # and the result rides it, since the cursor is 0
    await trio.testing.wait_all_tasks_blocked()
    state = sim.store.state(SITE)
    assert (state["records"], state["sends"]) == (2, 1)
    assert stk_sends(fake) == 1 and len(fake.payments) == 1


async def test_a_batch_leaving_a_hole_is_409_with_the_checkpoint(sim, box):
    assert (await box.push(box.batch([other(1), other(2)]))).status == 200
    r = await box.push(box.batch([other(6)], after=5))
    assert (r.status, r.json) == (409, {"checkpoint": 2, "error": "out_of_order"})
    assert r.server_time is not None and sim.store.state(SITE)["records"] == 2


async def test_bad_batches_and_queries_are_400(sim, box):
    r = await box.call("POST", f"/v1/sites/{SITE}/batches?inbound_after=0", b"GWDB nonsense")
    assert r.status == 400 and "truncated" in r.json["error"] and r.server_time is not None
    r = await box.call("POST", f"/v1/sites/{SITE}/batches?inbound_after=-1",
                       box.batch([other(1)]).wire)
    assert r.status == 400 and sim.store.state(SITE)["records"] == 0


async def test_inbound_cursor_rules(sim, box):
    await box.push(box.batch([action(1, STK_KEY), action(2, "site-1-mp-000000000002",
                                                          msisdn=LENDER)]))
    box.checkpoint = 2
    await sim.wait_for(lambda s: len(results(s)) == 2)
    everything = decode_inbound((await box.inbound(0)).body, SITE)
    assert [c.seq for c in everything] == [1, 2]
    assert [c.seq for c in decode_inbound((await box.inbound(1)).body, SITE)] == [2]
    assert (await box.push(box.batch([other(3)]), inbound_after=2)).push()[1] is None
    # A box ahead of the upstream (restored from a backup here): new changes are numbered
    # above its cursor, or it would skip them.
    assert len(decode_inbound((await box.inbound(10)).body, SITE)) == 0
    await box.push(box.batch([action(4, "site-1-mp-000000000004")], after=3), inbound_after=10)
    await sim.wait_for(lambda s: len(results(s)) == 3)
    assert [c.seq for c in decode_inbound((await box.inbound(10)).body, SITE)] == [11]


async def test_stk_answer_dropped_upstream_is_settled_by_its_callback_and_a_query(sim, box, fake):
    fake.drop_next(df.STK)
    await box.push(box.batch([action(1, STK_KEY, msisdn=LENDER)]))
    await sim.wait_for(lambda s: STK_KEY in results(s))
    change = results(sim)[STK_KEY]
    assert change["result"] == "succeeded" and change["receipt"] == fake.payments[0]["receipt"]
    # The CallBackURL named the action; the query confirmed the CheckoutRequestID it lent.
    assert stk_sends(fake) == 1 and [p for p, _ in fake.requests].count(df.QUERY) >= 1
    assert fake.callbacks_sent[0]["url"].endswith(
        f"/daraja/stk/{SITE}/{STK_KEY}/{sim.callback_token(SITE, STK_KEY)}")


async def test_stk_answer_dropped_and_no_callback_stays_unknown_and_is_not_resent(sim, box, fake):
    fake.callbacks(False)
    fake.drop_next(df.STK)
    await box.push(box.batch([action(1, STK_KEY)]))
    await sim.wait_for(lambda s: s.store.state(SITE)["actions"] == {"unknown": 1}
                       and "answer lost" in s.store.actions(SITE, STK_KEY)[0].note)
    await fake.wait_for(lambda f: len(f.payments) == 1)
    for _ in range(10):
        await sim.executor.run_once()
    state = sim.store.state(SITE)
    assert state["sends"] == 1 and state["inbound"] == [] and stk_sends(fake) == 1


async def test_b2c_answer_dropped_is_resent_paid_once_and_its_result_url_settles_it(sim, box,
                                                                                   fake):
    fake.script(msisdn=BORROWER, hold=True)    # no result (so no ResultURL) until released
    fake.drop_next(df.B2C)
    await box.push(box.batch([action(1, B2C_KEY, kind="b2c", purpose="loan_payout",
                                     msisdn=BORROWER)]))
    await sim.wait_for(lambda s: s.store.actions(SITE, B2C_KEY)[0].state == "sent")
    a = sim.store.actions(SITE, B2C_KEY)[0]
    assert a.sends == 2 and "duplicate" in a.note       # resent; Daraja refused to pay twice
    fake.release()
    await sim.wait_for(lambda s: B2C_KEY in results(s))
    assert results(sim)[B2C_KEY]["receipt"] == fake.payments[0]["receipt"]
    assert len(fake.payments) == 1 and [p for p, _ in fake.requests].count(df.B2C) == 2


async def test_a_b2c_result_arriving_before_the_resend_settles_it_without_one(sim, box, fake):
    fake.drop_next(df.B2C)
    await box.push(box.batch([action(1, B2C_KEY, kind="b2c", purpose="loan_payout")]))
    await sim.wait_for(lambda s: B2C_KEY in results(s))
    assert len(fake.payments) == 1 and results(sim)[B2C_KEY]["result"] == "succeeded"


async def test_a_failure_comes_back_with_its_result_code_and_the_box_accepts_it(sim, box, fake):
    fake.script(msisdn="254712345678", result_code=2001)
    r = await box.push(box.batch([action(1, STK_KEY)]))
    await sim.wait_for(lambda s: STK_KEY in results(s))
    inbound = decode_inbound((await box.inbound(0)).body, SITE)      # the box's own validator
    (change,) = inbound.changes
    assert (change.result, change.result_code, change.receipt) == ("failed", "2001", None)
    assert r.status == 200 and fake.payments == []


async def test_a_query_success_without_a_receipt_waits_for_one(sim, box, fake):
    fake.callbacks(False)           # the query says "paid" but never carries the receipt
    await box.push(box.batch([action(1, STK_KEY)]))
    await sim.wait_for(lambda s: s.store.state(SITE)["awaiting_receipt"] == 1)
    assert results(sim) == {}       # the protocol needs a receipt for a success


async def test_only_queued_actions_are_executed(sim, box, fake):
    await box.push(box.batch([action(1, STK_KEY, state="sent"),
                              action(2, "site-1-mp-000000000002", state="unknown")]))
    await trio.testing.wait_all_tasks_blocked()
    assert sim.store.state(SITE)["actions"] == {} and stk_sends(fake) == 0


async def test_a_site_in_direct_mode_has_its_records_kept_but_no_action_executed(fake,
                                                                                  tmp_path):
    sim = UpstreamSim(str(tmp_path / "up.db"), {SITE: KEY},
                      DarajaClient(fake.url, daraja_config()), policy=FAST,
                      direct=frozenset({SITE}))
    async with trio.open_nursery() as n:
        await n.start(sim.serve, "127.0.0.1:0")
        box = Box(sim.url)
        assert (await box.push(box.batch([action(1, STK_KEY), other(2)]))).status == 200
        await trio.testing.wait_all_tasks_blocked()
        await box.aclose()
        n.cancel_scope.cancel()
    await sim.client.aclose()
    state = sim.store.state(SITE)
    assert (state["records"], state["actions"], stk_sends(fake)) == (2, {}, 0)


async def test_a_restarted_upstream_never_executes_an_action_twice(fake, tmp_path):
    db, b = str(tmp_path / "up.db"), None
    for _ in range(2):
        sim = UpstreamSim(db, {SITE: KEY}, DarajaClient(fake.url, daraja_config()), policy=FAST)
        async with trio.open_nursery() as n:
            await n.start(sim.serve, "127.0.0.1:0")
            box = Box(sim.url)
            b = b or box.batch([action(1, STK_KEY)])
            r = await box.push(b)
            assert r.status == 200 and r.push()[0].last_seq == 1
            await sim.wait_for(lambda s: STK_KEY in results(s))
            await box.aclose()
            n.cancel_scope.cancel()
        await sim.client.aclose()
    assert stk_sends(fake) == 1 and len(fake.payments) == 1


async def test_box_actions_are_recorded_not_executed_and_their_callbacks_relayed(sim, box, fake):
    """Section 11: `executor: box` actions are the box's; Daraja's callbacks for them come
    to the upstream (the box has no public address) and go back as mpesa_result."""
    box_b2c = action(1, B2C_KEY, kind="b2c", purpose="loan_payout", msisdn=BORROWER,
                     amount_cents=20_000)
    box_b2c.payload["executor"] = "box"
    assert (await box.push(box.batch([box_b2c, action(2, STK_KEY)]))).status == 200
    await sim.wait_for(lambda s: STK_KEY in results(s))       # the upstream's own: executed
    assert [p for p, _ in fake.requests].count(df.B2C) == 0
    result = {"Result": {"ResultType": 0, "ResultCode": 0, "ResultDesc": df.SUCCESS,
                         "OriginatorConversationID": B2C_KEY, "ConversationID": "AG_1",
                         "TransactionID": "QK7XYZ1234", "ResultParameters": {"ResultParameter": [
                             {"Key": "TransactionReceipt", "Value": "QK7XYZ1234"}]}}}
    token = sim.callback_token(SITE, B2C_KEY)
    async with httpx.AsyncClient() as http:
        # Forged: no token, or another action's, or a made-up one: refused, nothing relayed.
        for path in (f"{SITE}/{B2C_KEY}/result", f"{SITE}/{B2C_KEY}/{'0' * 24}/result",
                     f"{SITE}/{B2C_KEY}/{sim.callback_token(SITE, STK_KEY)}/result"):
            r = await http.post(f"{sim.url}/daraja/b2c/{path}", json={
                **result, "Result": {**result["Result"], "ResultCode": 2001}})
            assert r.status_code == 404
        assert B2C_KEY not in results(sim)
        # Through the right URL but naming no payment, or another action's: not relayed
        # (the box would take a result without ids for an operator's verdict).
        no_ids = {k: v for k, v in result["Result"].items()
                  if k not in ("ConversationID", "OriginatorConversationID")}
        for body in ({"Result": no_ids}, {"Result": {**result["Result"],
                                                    "OriginatorConversationID": STK_KEY}}):
            r = await http.post(f"{sim.url}/daraja/b2c/{SITE}/{B2C_KEY}/{token}/result",
                                json=body)
            assert r.status_code == 200
        assert B2C_KEY not in results(sim)
        for body in (result, {**result, "Result": {**result["Result"], "ResultCode": 2001}}):
            r = await http.post(f"{sim.url}/daraja/b2c/{SITE}/{B2C_KEY}/{token}/result",
                                json=body)
            assert r.status_code == 200
        # A key the box never sent, and one of another site: nothing to relay.
        nobody = "site-1-mp-nobody"
        await http.post(f"{sim.url}/daraja/b2c/{SITE}/{nobody}/"
                        f"{sim.callback_token(SITE, nobody)}/result", json=result)
        await http.post(f"{sim.url}/daraja/b2c/site-9/{B2C_KEY}/{token}/result", json=result)
    relayed = results(sim)[B2C_KEY]
    assert (relayed["result"], relayed["receipt"], relayed["amount_cents"]) == \
        ("succeeded", "QK7XYZ1234", 20_000)
    assert set(results(sim)) == {STK_KEY, B2C_KEY}
    env = decode_inbound((await box.inbound(0)).body, SITE)
    assert {c.action_key for c in env} == {STK_KEY, B2C_KEY}


# -- a B2C whose result callback is lost: the Transaction Status query ------------------------

@pytest.fixture
async def quick(nursery, fake, tmp_path):
    """The upstream with a status query due at once after an unanswered B2C."""
    s = UpstreamSim(str(tmp_path / "upstream.db"), {SITE: KEY},
                    DarajaClient(fake.url, daraja_config()),
                    policy=replace(FAST, status_after=0.01, status_retry_cap=0.05))
    await nursery.start(s.serve, "127.0.0.1:0")
    yield s
    await s.client.aclose()


def requests_to(fake, path: str) -> int:
    return [p for p, _ in fake.requests].count(path)


async def test_a_b2c_whose_result_is_lost_is_settled_by_the_status_query_once(quick, fake):
    fake.callbacks(False, kind="b2c")
    box = Box(quick.url)
    await box.push(box.batch([action(1, B2C_KEY, kind="b2c", purpose="loan_payout",
                                     msisdn=BORROWER, amount_cents=20_000)]))
    await quick.wait_for(lambda s: B2C_KEY in results(s))
    change = results(quick)[B2C_KEY]
    assert (change["result"], change["receipt"], change["amount_cents"]) == \
        ("succeeded", fake.payments[0]["receipt"], 20_000)
    assert len(fake.payments) == 1 and requests_to(fake, df.B2C) == 1
    # The fake records a callback once its POST is answered, after the upstream settled.
    await fake.wait_for(lambda f: any(c["kind"] == "status" for c in f.callbacks_sent))
    status = [c for c in fake.callbacks_sent if c["kind"] == "status"]
    assert status[0]["delivered"] and status[0]["url"].endswith(
        f"/daraja/status/{SITE}/{B2C_KEY}/{quick.callback_token(SITE, B2C_KEY)}/result")
    a = quick.store.actions(SITE, B2C_KEY)[0]
    assert a.state == "succeeded" and a.sends == 1 and a.status_queries >= 1
    await box.aclose()


async def test_the_status_query_can_say_the_payout_failed(quick, fake):
    fake.script(msisdn=BORROWER, result_code=2001)     # M-PESA refused it; we never heard
    fake.callbacks(False, kind="b2c")
    box = Box(quick.url)
    await box.push(box.batch([action(1, B2C_KEY, kind="b2c", purpose="loan_payout",
                                     msisdn=BORROWER)]))
    await quick.wait_for(lambda s: B2C_KEY in results(s))
    assert (results(quick)[B2C_KEY]["result"], results(quick)[B2C_KEY]["result_code"]) == \
        ("failed", "gwd.ts.failed")
    assert fake.payments == [] and requests_to(fake, df.B2C) == 1
    await box.aclose()


async def test_a_payout_daraja_never_heard_of_stays_sent_and_is_never_paid_again(quick, fake):
    fake.callbacks(False, kind="b2c")
    fake.forget(B2C_KEY)
    box = Box(quick.url)
    await box.push(box.batch([action(1, B2C_KEY, kind="b2c", purpose="loan_payout",
                                     msisdn=BORROWER)]))
    await quick.wait_for(lambda s: s.store.actions(SITE, B2C_KEY)[0].status_queries >= 3)
    a = quick.store.actions(SITE, B2C_KEY)[0]
    assert a.state == "sent" and a.sends == 1 and results(quick) == {}
    assert requests_to(fake, df.B2C) == 1 and requests_to(fake, df.STATUS) >= 3
    await box.aclose()


async def test_a_status_verdict_for_a_box_action_is_relayed_with_the_payments_id(sim, box, fake):
    box_b2c = action(1, B2C_KEY, kind="b2c", purpose="loan_payout", msisdn=BORROWER,
                     amount_cents=20_000)
    box_b2c.payload["executor"] = "box"
    assert (await box.push(box.batch([box_b2c]))).status == 200
    params = [{"Key": "TransactionStatus", "Value": "Completed"},
              {"Key": "ReceiptNo", "Value": "QK7XYZ1234"},
              {"Key": "Originator Conversation ID", "Value": B2C_KEY}]
    result = {"Result": {"ResultType": 0, "ResultCode": 0, "ResultDesc": df.SUCCESS,
                         "OriginatorConversationID": "4100-2700-1", "ConversationID": "AG_q",
                         "TransactionID": "OAA0000000",
                         "ResultParameters": {"ResultParameter": params}}}
    url = f"{sim.url}/daraja/status/{SITE}/{B2C_KEY}/{sim.callback_token(SITE, B2C_KEY)}/result"
    async with httpx.AsyncClient() as http:
        # Without the payment's ConversationID the box could not check it: not relayed.
        assert (await http.post(url, json=result)).status_code == 200
        assert results(sim) == {}
        params.append({"Key": "Conversation ID", "Value": "AG_20261128_payout"})
        assert (await http.post(url, json=result)).status_code == 200
    relayed = results(sim)[B2C_KEY]
    assert (relayed["result"], relayed["receipt"], relayed["conversation_id"]) == \
        ("succeeded", "QK7XYZ1234", "AG_20261128_payout")
    assert requests_to(fake, df.B2C) == 0
