"""Reassembly, duplicates and status-report matching, with an explicit clock."""

from __future__ import annotations

import datetime as dt

from hypothesis import given, settings
from hypothesis import strategies as st

from menus import gsm0338
from modem import pdu as P
from modem.events import Location
from modem.inbox import Drop, Inbox, Ready, ReportMatcher, report_outcome
from tests.modem import pdubuild as B

ALICE = "+254712345678"


def part(text: str, **kw) -> P.Deliver:
    d = P.decode(*B.deliver(ALICE, text, **kw))
    assert isinstance(d, P.Deliver)
    return d


def loc(i: int) -> Location:
    return Location("SM", i)


def test_single_then_listed_again_then_committed():
    box = Inbox("A")
    [ready] = box.offer(loc(1), part("BAL"), now=0)
    assert isinstance(ready, Ready) and ready.sms.text == "BAL" and ready.sms.locations == (loc(1),)
    assert box.offer(loc(1), part("BAL"), now=1) == []        # being committed: not twice
    box.committed(ready, now=2)
    # The delete failed: the next listing shows it again, and it is only deleted.
    assert box.offer(loc(1), part("BAL"), now=3) == [Drop(loc(1), ready.keys[0])]


def test_the_network_delivers_the_same_sms_twice():
    box = Inbox("A")
    [ready] = box.offer(loc(1), part("BAL"), now=0)
    box.committed(ready, now=0)
    [drop] = box.offer(loc(2), part("BAL"), now=5)
    assert drop == Drop(loc(2), ready.sms.key)
    assert box.duplicates == 1


def test_same_text_later_is_a_new_message():
    box = Inbox("A")
    [first] = box.offer(loc(1), part("BAL"), now=0)
    box.committed(first, now=0)
    later = dt.datetime(2026, 11, 28, 18, 31, 40, tzinfo=B.EAT)
    [second] = box.offer(loc(2), part("BAL", when=later), now=60)
    assert isinstance(second, Ready) and second.sms.key != first.sms.key


def test_multipart_out_of_order_with_a_duplicate_part():
    box = Inbox("A")
    assert box.offer(loc(3), part("world", concat=(9, 3, 3)), now=0) == []
    assert box.offer(loc(1), part("hello ", concat=(9, 3, 1)), now=1) == []
    assert box.offer(loc(4), part("hello ", concat=(9, 3, 1)), now=1) == []   # resent part
    [ready] = box.offer(loc(2), part("big ", concat=(9, 3, 2)), now=2)
    assert ready.sms.text == "hello big world" and ready.sms.parts == 3
    assert set(ready.sms.locations) == {loc(1), loc(2), loc(3), loc(4)}       # all deleted after


def test_pairs_cut_across_parts_by_the_phone_still_decode():
    esc = bytes(gsm0338.encode_septets("€"))
    box = Inbox("A")
    box.offer(loc(1), part("", concat=(5, 2, 1), user_data=b"\x41" + esc[:1]), now=0)
    [ready] = box.offer(loc(2), part("", concat=(5, 2, 2), user_data=esc[1:] + b"\x42"), now=0)
    assert ready.sms.text == "A€B"
    emoji = "😀".encode("utf-16-be")
    box.offer(loc(3), part("", ucs2=True, concat=(6, 2, 1), user_data=emoji[:2]), now=0)
    [ready] = box.offer(loc(4), part("", ucs2=True, concat=(6, 2, 2), user_data=emoji[2:]), now=0)
    assert ready.sms.text == "😀"


def test_8_and_16_bit_references_are_different_messages():
    box = Inbox("A")
    box.offer(loc(1), part("a", concat=(9, 2, 1)), now=0)
    assert box.offer(loc(2), part("b", concat=(9, 2, 2), concat16=True), now=0) == []
    assert box.waiting == 2


def test_missing_part_times_out_with_what_came():
    box = Inbox("A", timeout=300)
    box.offer(loc(1), part("Hello ", concat=(1, 3, 1)), now=0)
    box.offer(loc(3), part("there", concat=(1, 3, 3)), now=10)
    assert box.next_deadline() == 300
    assert box.expire(now=299) == []
    [ready] = box.expire(now=300)
    assert ready.sms.text == "Hello there" and ready.sms.missing == (2,)
    assert ready.sms.locations == (loc(1), loc(3))


def test_commit_failed_offers_again():
    box = Inbox("A")
    [ready] = box.offer(loc(1), part("BAL"), now=0)
    box.not_committed(ready)
    [again] = box.offer(loc(1), part("BAL"), now=1)
    assert again.sms.key == ready.sms.key


def test_reference_reused_flushes_the_old_group():
    box = Inbox("A")
    box.offer(loc(1), part("old ", concat=(4, 2, 1)), now=0)
    [flushed] = box.offer(loc(2), part("new ", concat=(4, 2, 1)), now=5)
    assert flushed.sms.text == "old " and flushed.sms.missing == (2,)


def test_remembered_keys_are_forgotten_after_a_while():
    box = Inbox("A", remember=100)
    [ready] = box.offer(loc(1), part("BAL"), now=0)
    box.committed(ready, now=0)
    box.expire(now=200)
    assert isinstance(box.offer(loc(2), part("BAL"), now=200)[0], Ready)


@settings(max_examples=60)
@given(st.text(alphabet="abcdefgh €{", min_size=1, max_size=600), st.randoms())
def test_any_order_any_duplicates_one_message(text, rnd):
    pdus = P.encode_submit("+254700000001", text, reference=77)
    parts = []
    for p in pdus:
        s = P.decode(p.hex)
        parts.append(P.Deliver(ALICE, None, b"\x00" * 7, 0, s.alphabet, s.concat, s.user_data))
    order = parts + [rnd.choice(parts) for _ in range(3)]
    rnd.shuffle(order)
    box = Inbox("A")
    out = []
    for i, d in enumerate(order):
        for r in box.offer(loc(i + 1), d, now=i):
            if isinstance(r, Ready):
                out.append(r)
                box.committed(r, now=i)
    assert [r.sms.text for r in out] == [text]


# -- status reports -------------------------------------------------------------------
def report(mr: int, st: int = 0, to: str = ALICE) -> P.StatusReport:
    r = P.decode(*B.status_report(mr, to, st))
    assert isinstance(r, P.StatusReport)
    return r


def test_report_outcomes():
    assert [report_outcome(s) for s in (0x00, 0x01, 0x1F, 0x20, 0x30, 0x40, 0x45, 0x60, 0x80)] == [
        "delivered", "delivered", "delivered", "pending", "pending", "failed", "failed",
        "failed", "failed"]


def test_multipart_delivered_only_when_every_part_is():
    m = ReportMatcher()
    m.sent("A", [10, 11], outbox_id=42, msisdn="254712345678", now=0)
    e = m.match("A", report(11), now=1)
    assert (e.outbox_id, e.part, e.parts, e.outcome, e.message_outcome) == (42, 2, 2, "delivered", None)
    e = m.match("A", report(10, 0x20), now=2)
    assert e.outcome == "pending" and e.message_outcome is None
    e = m.match("A", report(10), now=3)
    assert e.message_outcome == "delivered"
    # Twice, late: still the same answer.
    assert m.match("A", report(10), now=4).message_outcome == "delivered"


def test_failure_of_one_part_fails_the_message():
    m = ReportMatcher()
    m.sent("A", [1, 2], outbox_id=7, msisdn="254712345678", now=0)
    assert m.match("A", report(2, 0x41), now=1).message_outcome == "failed"


def test_tp_mr_is_per_modem_wraps_and_checks_the_recipient():
    m = ReportMatcher()
    m.sent("A", [5], outbox_id=1, msisdn="254712345678", now=0)
    m.sent("B", [5], outbox_id=2, msisdn="254799999999", now=0)
    assert m.match("B", report(5, to="+254799999999"), now=1).outbox_id == 2
    assert m.match("A", report(5, to="+254799999999"), now=1).outbox_id is None   # not ours
    m.sent("A", [5], outbox_id=3, msisdn="254712345678", now=2)                   # wrapped
    assert m.match("A", report(5), now=3).outbox_id == 3
    assert m.match("A", report(6), now=3).outbox_id is None
    assert m.unmatched == 2
