"""The checkpoint only moves on a real ack, forward; a dropped link at any byte loses and
duplicates nothing; inbound changes are validated before anything is applied."""

from __future__ import annotations

import json
import random

import pytest

from sync.batch import BatchError, decode_batch
from sync.checkpoint import (
    AccountChange,
    Ack,
    Advanced,
    AlreadyAcked,
    Inbound,
    InboundError,
    MoneyReceived,
    MpesaResult,
    Outbound,
    SyncConflict,
    decode_ack,
    decode_inbound,
    decode_push_response,
    encode_inbound,
    retry_delay,
    to_apply,
)
from tests.sync.helpers import SITE, records

LOG = records(120)


def _after(seq: int) -> list:
    return [r for r in LOG if r.seq > seq]


def _ack(b) -> Ack:
    return Ack(SITE, b.last_seq, b.sha256)


def test_ack_moves_the_checkpoint_forward_only():
    ob = Outbound(SITE, 0, max_records=50)
    b1 = ob.build(_after(0))
    assert (b1.after, b1.first_seq, b1.last_seq) == (0, 1, 50)
    assert ob.on_ack(_ack(b1)) == Advanced(0, 50) and ob.checkpoint == 50
    # The same ack again (its answer was lost): harmless, nothing moves.
    assert ob.on_ack(_ack(b1)) == AlreadyAcked(50) and ob.checkpoint == 50
    b2 = ob.build(_after(50))
    assert b2.after == 50 and ob.on_ack(_ack(b2)) == Advanced(50, 100)
    # An old ack, arriving late after a newer one: still nothing moves back.
    assert ob.on_ack(_ack(b1)) == AlreadyAcked(100) and ob.checkpoint == 100


def test_acks_for_batches_never_handed_out_are_refused_with_the_checkpoint():
    ob = Outbound(SITE, 0, max_records=50)
    b = ob.build(_after(0))
    for bad in (Ack(SITE, 50, "0" * 64),                  # unknown id
                Ack(SITE, 49, b.sha256),                  # id of a batch, wrong end
                Ack(SITE, 120, b.sha256),
                Ack("site-2", 50, b.sha256)):             # another site's
        with pytest.raises(SyncConflict) as e:
            ob.on_ack(bad)
        assert e.value.checkpoint == 0
    assert ob.checkpoint == 0


def test_an_ack_that_skips_a_batch_is_out_of_order():
    ob = Outbound(SITE, 0, max_records=50)
    b1 = ob.build(_after(0))
    b2 = ob.build(_after(50), after=50)        # pulled ahead, before b1 was acknowledged
    with pytest.raises(SyncConflict, match="out of order") as e:
        ob.on_ack(_ack(b2))
    assert e.value.checkpoint == 0 and ob.checkpoint == 0
    assert ob.on_ack(_ack(b1)) == Advanced(0, 50)
    assert ob.on_ack(_ack(b2)) == Advanced(50, 100)


def test_a_resend_is_the_same_bytes_even_after_a_restart():
    ob = Outbound(SITE, 0, max_records=50)
    b = ob.build(_after(0))
    assert ob.on_timeout() is b and ob.cached() is b
    # New records arriving meanwhile do not change the batch being retried.
    assert ob.build(_after(0) + records(5, start=121)) is b
    # A restart forgets what was handed out: the rebuilt batch is byte for byte the same,
    # so the upstream's ack for it is accepted once it is rebuilt, refused before.
    again = Outbound(SITE, 0, max_records=50)
    with pytest.raises(SyncConflict):
        again.on_ack(_ack(b))
    assert again.on_timeout() is None
    rebuilt = again.build(_after(0))
    assert rebuilt.wire == b.wire and rebuilt.sha256 == b.sha256
    assert again.on_ack(_ack(b)) == Advanced(0, 50)


def test_memory_of_handed_out_batches_is_bounded():
    ob = Outbound(SITE, 0, max_records=5, remember=3)
    built = [ob.build(_after(a), after=a) for a in range(0, 50, 5)]
    assert len(ob._by_sha) == 3 and ob.cached(45) is built[-1] and ob.cached(0) is None
    assert ob.build(_after(120), after=120) is None      # nothing after the log's end
    assert len(ob._by_sha) == 3


class Upstream:
    """The upstream's rules from docs/sync-protocol.md, in memory: apply what is above its
    own checkpoint, in order, in one step; answer with the ack; 409 on a gap."""

    def __init__(self) -> None:
        self.checkpoint = 0
        self.applied: list[int] = []

    def post_batch(self, body: bytes) -> tuple[int, bytes]:
        try:
            b = decode_batch(body, site=SITE)
        except BatchError:
            return 400, b'{"error":"malformed"}'
        if b.after > self.checkpoint:
            return 409, json.dumps({"checkpoint": self.checkpoint}).encode()
        self.applied += [r.seq for r in b.records if r.seq > self.checkpoint]
        self.checkpoint = max(self.checkpoint, b.last_seq)
        return 200, json.dumps({"ack": json.loads(_ack(b).to_json()), "inbound": None}).encode()


def _push_until_done(ob: Outbound, up: Upstream, cut_request: int | None,
                     cut_response: int | None) -> int:
    """Push everything; the first exchange is cut at the given byte of the request or of
    the response (None: not cut). Returns the number of round trips."""
    trips = 0
    while (b := ob.cached() or ob.build(_after(ob.checkpoint))) is not None:
        trips += 1
        assert trips < 20
        body = b.wire
        if cut_request is not None:
            body, cut_request = body[:cut_request], None
            up.post_batch(body)         # whatever the upstream makes of a partial body
            assert ob.on_timeout() is b
            continue
        status, answer = up.post_batch(body)
        if cut_response is not None:
            answer, cut_response = answer[:cut_response], None
        try:
            ack, _ = decode_push_response(answer, SITE)
        except ValueError:              # the answer never arrived whole: a timeout
            assert status == 200 and ob.on_timeout() is b
            continue
        ob.on_ack(ack)
    return trips


def test_a_link_dropped_at_any_byte_loses_and_duplicates_nothing():
    # zstd level 1: the level changes nothing here, and ~1,500 whole pushes run below.
    first = Outbound(SITE, 0, max_records=40, level=1).build(_after(0))
    probe = Upstream()
    answer_len = len(probe.post_batch(first.wire)[1])
    cuts = [(c, None) for c in range(len(first.wire))] + [(None, c) for c in range(answer_len)]
    for cut_request, cut_response in cuts + [(None, None)]:
        ob, up = Outbound(SITE, 0, max_records=40, level=1), Upstream()
        _push_until_done(ob, up, cut_request, cut_response)
        assert up.applied == [r.seq for r in LOG], (cut_request, cut_response)
        assert ob.checkpoint == up.checkpoint == LOG[-1].seq


def test_pull_with_lost_answers_and_a_box_restart():
    up = Upstream()
    ob = Outbound(SITE, 0, max_records=60)
    lost = ob.build(_after(up.checkpoint), after=up.checkpoint)   # GET answer lost
    b = ob.cached(up.checkpoint)                                   # GET again: same batch
    assert b is lost
    assert up.post_batch(b.wire)[0] == 200
    ack = decode_ack(_ack(b).to_json())
    assert ob.on_ack(ack) == Advanced(0, 60)                       # POST /sync/ack
    assert ob.on_ack(ack) == AlreadyAcked(60)                      # its answer lost: retried
    b2 = ob.build(_after(60), after=60)
    up.post_batch(b2.wire)
    ob = Outbound(SITE, ob.checkpoint, max_records=60)             # box restarts before the ack
    with pytest.raises(SyncConflict) as e:
        ob.on_ack(_ack(b2))
    assert e.value.checkpoint == 60                                # 409: fetch again from 60
    again = ob.build(_after(60), after=60)
    assert again.sha256 == b2.sha256 and up.post_batch(again.wire)[0] == 200
    assert ob.on_ack(_ack(again)) == Advanced(60, 120)
    assert up.applied == [r.seq for r in LOG]


@pytest.mark.parametrize("data, reason", [
    (b"[]", "object"),
    (b'{"site":"site-1","last_seq":5}', "exactly"),
    (b'{"site":"site-1","last_seq":0,"batch_sha256":"' + b"a" * 64 + b'"}', "positive"),
    (b'{"site":"site-1","last_seq":5.0,"batch_sha256":"' + b"a" * 64 + b'"}', "positive"),
    (b'{"site":"site-1","last_seq":5,"batch_sha256":"' + b"A" * 64 + b'"}', "hex"),
])
def test_malformed_acks_are_refused(data, reason):
    with pytest.raises(ValueError, match=reason):
        decode_ack(data)


def test_retry_delays_are_jittered_and_capped():
    rng = random.Random(1)
    delays = [retry_delay(a, rng) for a in range(1, 40)]
    assert all(0 <= d <= 900 for d in delays)
    assert len(set(round(d, 3) for d in delays)) == len(delays)
    assert max(retry_delay(1, random.Random(s)) for s in range(200)) <= 10.0


# -- inbound ----------------------------------------------------------------------------------

CHANGES = [
    MpesaResult(41, "up-41", "site-1-mp-92954e92c349", "succeeded", receipt="QK1ABC2DEF",
                result_code="0", result_desc="The service request is processed successfully.",
                amount_cents=500000),
    MpesaResult(42, "up-42", "site-1-mp-0a1b2c3d4e5f", "failed", result_code="1032",
                result_desc="Request cancelled by user"),
    MoneyReceived(45, "up-45", "254712345678", 150000, "QK7XYZ1234", 1764316800.25),
    AccountChange(46, "up-46", "254112345678", name="Wanjiru Kamau", lang="sw", unlock=True),
]


def _envelope(changes=None, **over) -> dict:
    env = json.loads(encode_inbound(SITE, 40, CHANGES))
    if changes is not None:
        env["changes"] = changes
    env.update(over)
    return env


def test_inbound_round_trip_and_cursor():
    inbound = decode_inbound(encode_inbound(SITE, 40, CHANGES), site=SITE)
    assert inbound == Inbound(SITE, 40, tuple(CHANGES))
    assert list(inbound) == CHANGES and len(inbound) == 4 and inbound.last_seq == 46
    assert CHANGES[0].succeeded and not CHANGES[1].succeeded
    # Daraja's ResultCode is a number; it is kept as text, as the store keeps it.
    raw = _envelope()
    raw["changes"][1]["result_code"] = 1032
    assert decode_inbound(raw).changes[1].result_code == "1032"
    # The box has applied up to 42: only what lies above is left; an envelope that starts
    # beyond the box's cursor would skip changes it never saw.
    assert [c.seq for c in to_apply(inbound, 42)] == [45, 46]
    assert to_apply(inbound, 46) == ()
    with pytest.raises(SyncConflict) as e:
        to_apply(inbound, 39)
    assert e.value.checkpoint == 39


def _change(i: int, **fields) -> dict:
    c = dict(_envelope()["changes"][i])
    c.update(fields)
    return {k: v for k, v in c.items() if v is not ...}


@pytest.mark.parametrize("changes, reason", [
    ([{"kind": "refund", "seq": 41, "id": "x"}], "unknown kind 'refund'"),
    ([_change(2, amount_cents=1500.0)], "amount_cents must be a positive integer"),
    ([_change(2, amount_cents="1500")], "amount_cents must be a positive integer"),
    ([_change(2, amount_cents=True)], "amount_cents must be a positive integer"),
    ([_change(2, amount_cents=0)], "amount_cents must be a positive integer"),
    ([_change(2, amount_cents=2 ** 53)], "amount_cents"),
    ([_change(2, msisdn="0712345678")], "msisdn must be a canonical"),
    ([_change(2, msisdn="254812345678")], "msisdn must be a canonical"),
    ([_change(2, receipt=...)], "receipt is required"),
    ([_change(1, result_code="0")], "failure needs a result_code"),
    ([_change(1, result="maybe")], "result must be one of"),
    ([_change(0, receipt="qk1abc2def")], "receipt must be"),
    ([_change(3, lang="fr")], "lang must be one of"),
    ([_change(3, unlock=False)], "unlock must be one of"),
    ([_change(3, name=..., lang=..., unlock=...)], "changes nothing"),
    ([_change(3, role="admin")], "unknown fields"),
    ([_change(0, id="has space")], "id must be"),
    ([_change(0, checkout_request_id="ws CO 1")], "checkout_request_id must be"),
    ([_change(0, conversation_id="x" * 65)], "conversation_id must be"),
    ([_change(0, conversation_id=7)], "conversation_id must be"),
    ([_change(0, seq=0)], "seq must be"),
    ([_change(0), _change(1, seq=41)], "does not rise"),
    ([_change(0), _change(1, id="up-41")], "appears twice"),
    ([_change(0, seq=40)], "does not rise above 40"),
    ("nope", "must be a list"),
    ([7], "must be an object"),
])
def test_inbound_validation_names_the_problem_and_refuses_the_whole_envelope(changes, reason):
    with pytest.raises(InboundError, match=reason):
        decode_inbound(json.dumps(_envelope(changes)).encode())


@pytest.mark.parametrize("data, reason", [
    (b"{", "not JSON"),
    (b'{"v":1,"v":1}', "not JSON"),                     # duplicate keys
    (b"[]", "object"),
    (json.dumps(_envelope(v=2)).encode(), "version 2"),
    (json.dumps(_envelope(site="site-2")).encode(), "site-2"),
    (json.dumps(_envelope(after=-1)).encode(), "after"),
    (json.dumps(_envelope(extra=1)).encode(), "exactly"),
    (json.dumps(_envelope([_change(0)] * 1001)).encode(), "at most 1000"),
    (b" " * (1 << 20) + b"{}", "over"),
])
def test_malformed_envelopes_are_refused(data, reason):
    with pytest.raises(InboundError, match=reason):
        decode_inbound(data, site=SITE)


def test_push_response_carries_the_ack_and_inbound_changes():
    b = Outbound(SITE, 0).build(_after(0))
    body = json.dumps({"ack": json.loads(_ack(b).to_json()), "inbound": _envelope()}).encode()
    ack, inbound = decode_push_response(body, SITE)
    assert ack == _ack(b) and inbound.changes == tuple(CHANGES)
    assert decode_push_response(json.dumps({"ack": json.loads(_ack(b).to_json()),
                                            "inbound": None}).encode(), SITE)[1] is None
    with pytest.raises(InboundError):
        decode_push_response(json.dumps({"ack": json.loads(_ack(b).to_json()),
                                         "inbound": _envelope(site="site-2")}).encode(), SITE)
    with pytest.raises(ValueError, match="exactly ack and inbound"):
        decode_push_response(b'{"ack":{}}', SITE)


@pytest.mark.parametrize("receipt", [None, ...])
def test_a_success_may_come_without_its_receipt(receipt):
    # Daraja's STK push query says "paid" without a MpesaReceiptNumber (section 7).
    env = {**_envelope(), "changes": [_change(0, receipt=receipt)]}
    (change,) = decode_inbound(env, "site-1").changes
    assert change.succeeded and change.receipt is None
