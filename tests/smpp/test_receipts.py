"""Delivery receipts: parsing, the message id rule, several and out-of-order receipts."""

from __future__ import annotations

import pytest

from gatewayd.smpp.pdu import Pdu
from gatewayd.smpp.receipts import (
    MessageState,
    Receipt,
    ReceiptMatcher,
    ReceiptUnmatched,
    ReceiptUpdate,
    message_id_keys,
    parse_receipt,
    receipt_text_fields,
)

TEXT = ("id:1A2B3C sub:001 dlvrd:001 submit date:2401011200 done date:2401011201 "
        "stat:DELIVRD err:000 text:Loan approved: id: 5")


def receipt_pdu(text: str = TEXT, **fields) -> Pdu:
    return Pdu("deliver_sm", 1, 0, {"esm_class": 0x04, "source_addr": "254712345678",
                                    "short_message": text.encode(), **fields})


def test_text_fields():
    f = receipt_text_fields(TEXT)
    assert f["id"] == "1A2B3C" and f["sub"] == "001" and f["dlvrd"] == "001"
    assert f["submit date"] == "2401011200" and f["done date"] == "2401011201"
    assert f["stat"] == "DELIVRD" and f["err"] == "000"
    assert f["text"] == "Loan approved: id: 5"    # text is the rest, keys inside it too


def test_parse_receipt_from_text():
    r = parse_receipt(receipt_pdu())
    assert r == Receipt("1A2B3C", MessageState.DELIVERED, "000", "254712345678",
                        "2401011200", "2401011201", "Loan approved: id: 5")
    assert r.state.final


def test_tlvs_win_over_text():
    r = parse_receipt(receipt_pdu(receipted_message_id="00ff", message_state=5))
    assert r.message_id == "00ff" and r.state is MessageState.UNDELIVERABLE


@pytest.mark.parametrize("stat, state", [("UNDELIV", MessageState.UNDELIVERABLE),
                                         ("expired", MessageState.EXPIRED),
                                         ("ENROUTE", MessageState.ENROUTE),
                                         ("weird", MessageState.UNKNOWN)])
def test_text_states(stat, state):
    r = parse_receipt(receipt_pdu(TEXT.replace("DELIVRD", stat)))
    assert r.state is state


def test_not_a_receipt():
    assert parse_receipt(Pdu("deliver_sm", 1, 0, {"esm_class": 0,
                                                  "short_message": b"id:1 hello"})) is None
    assert parse_receipt(receipt_pdu("no id here")) is None


@pytest.mark.parametrize("a, b", [
    ("1a2b3c", "1715004"),          # hex in submit_sm_resp, decimal in the receipt
    ("1A2B3C", "1a2b3c"),           # case
    ("001a2b3c", "1a2b3c"),         # leading zeros
    ("00001715004", "1A2B3C"),
    ("0", "000"),
    ("6e2c1d9a-7f3b-4a9e-b5b8-0c7d8e9f0a1b", "6E2C1D9A-7F3B-4A9E-B5B8-0C7D8E9F0A1B"),
])
def test_same_message_id_shares_a_key(a, b):
    assert set(message_id_keys(a)) & set(message_id_keys(b))


@pytest.mark.parametrize("a, b", [("1a2b3c", "1a2b3d"), ("abc-1", "abc-2"), ("12", "13")])
def test_different_ids_share_no_key(a, b):
    assert not set(message_id_keys(a)) & set(message_id_keys(b))


def test_declared_bases_read_one_way_only():
    assert message_id_keys("12", "hex") == ("n:18",)
    assert message_id_keys("12", "dec") == ("n:12",)
    assert message_id_keys("0x12", "dec") == ("t:x12",)       # not a number: opaque
    assert message_id_keys("0012", "text") == ("t:12",)
    with pytest.raises(ValueError):
        message_id_keys("1", "octal")


def r(message_id: str, state: MessageState = MessageState.DELIVERED) -> Receipt:
    return Receipt(message_id, state, None, "254712345678")


def test_matcher_several_and_out_of_order_receipts():
    m = ReceiptMatcher()
    m.submitted("1a2b3c", "part-1", now=0.0)
    first = m.match(r("1715004", MessageState.DELIVERED), 1.0)
    assert first == ReceiptUpdate("part-1", first.receipt, MessageState.DELIVERED, True)
    late = m.match(r("1A2B3C", MessageState.ENROUTE), 2.0)       # older news, arriving late
    assert late.ref == "part-1" and late.state is MessageState.DELIVERED and not late.changed
    dup = m.match(r("001a2b3c", MessageState.DELIVERED), 3.0)
    assert not dup.changed


def test_matcher_intermediate_then_final():
    m = ReceiptMatcher()
    m.submitted("77", "x", 0.0)
    assert m.match(r("77", MessageState.ENROUTE), 1.0).changed
    final = m.match(r("77", MessageState.UNDELIVERABLE), 2.0)
    assert final.changed and final.state is MessageState.UNDELIVERABLE


def test_matcher_prefers_the_exact_spelling_and_refuses_to_guess():
    m = ReceiptMatcher()
    m.submitted("10", "ten", 0.0)         # hex 16 / dec 10
    m.submitted("16", "sixteen", 0.0)     # hex 22 / dec 16
    assert m.match(r("16"), 1.0).ref == "sixteen"
    m2 = ReceiptMatcher()
    m2.submitted("10", "ten", 0.0)
    m2.submitted("a", "a", 0.0)            # n:10, as is "10" read as decimal
    got = m2.match(r("10"), 1.0)           # the exact text wins over the shared n:10
    assert got.ref == "ten"
    m3 = ReceiptMatcher(submit_base="hex", receipt_base="dec")
    m3.submitted("10", "ten", 0.0)
    m3.submitted("16", "sixteen", 0.0)
    assert m3.match(r("16"), 1.0).ref == "ten"   # the configured convention decides


def test_matcher_ambiguous_numeric_key_is_refused():
    m = ReceiptMatcher()
    m.submitted("a", "hex-a", 0.0)        # n:10
    m.submitted("0010", "dec-10", 0.0)   # t:10, n:16, n:10
    got = m.match(r("0A"), 1.0)
    assert got.ref == "hex-a"              # t:a is exact
    m.submitted("b", "hex-b", 0.0)        # n:11
    m.submitted("11", "dec-11", 0.0)      # n:17, n:11
    got = m.match(r("000B"), 1.0)
    assert got.ref == "hex-b"
    m4 = ReceiptMatcher(receipt_base="dec")
    m4.submitted("a", "hex-a", 0.0)
    m4.submitted("0010", "dec-10", 0.0)
    got = m4.match(r("10"), 1.0)
    assert isinstance(got, ReceiptUnmatched) and set(got.ambiguous) == {"hex-a", "dec-10"}


def test_matcher_forgets_after_ttl():
    m = ReceiptMatcher(ttl=100.0)
    m.submitted("5", "x", 0.0)
    assert isinstance(m.match(r("5"), 101.0), ReceiptUnmatched)
    m.expire(101.0)
    assert len(m) == 0
