"""Inbound SMS: parts from UDH (8/16-bit) and sar_* TLVs, reassembly, timeout, duplicates."""

from __future__ import annotations

from gatewayd.smpp.mo import (
    Duplicate,
    Incomplete,
    MoMessage,
    Reassembler,
    Waiting,
    mo_part,
    part_key,
)
from gatewayd.smpp.pdu import Pdu
from gatewayd.smpp.sms import Concat

PHONE, CODE = "254712345678", "383"


def udh_part(ref: int, total: int, seq: int, body: bytes, *, bits16: bool = False,
             dc: int = 0) -> Pdu:
    udh = (bytes((6, 8, 4, ref >> 8, ref & 0xFF, total, seq)) if bits16
           else bytes((5, 0, 3, ref, total, seq)))
    return Pdu("deliver_sm", seq, 0, {"source_addr": PHONE, "destination_addr": CODE,
                                      "esm_class": 0x40, "data_coding": dc,
                                      "short_message": udh + body})


def sar_part(ref: int, total: int, seq: int, body: bytes) -> Pdu:
    return Pdu("deliver_sm", seq, 0, {"source_addr": PHONE, "destination_addr": CODE,
                                      "short_message": body, "sar_msg_ref_num": ref,
                                      "sar_total_segments": total, "sar_segment_seqnum": seq})


def test_single_part_message():
    got = Reassembler().add(mo_part(Pdu("deliver_sm", 1, 0, {
        "source_addr": PHONE, "destination_addr": CODE, "short_message": b"BAL \x1be"})), 0.0)
    assert isinstance(got, MoMessage)
    assert (got.text, got.parts, got.source_addr) == ("BAL €", 1, PHONE)


def test_udh8_parts_out_of_order_with_escape_split_across_parts():
    r = Reassembler()
    # "a€b" with the ESC at the end of part 1 and 'e' at the start of part 2.
    p2 = mo_part(udh_part(9, 2, 2, b"eb"))
    p1 = mo_part(udh_part(9, 2, 1, b"a\x1b"))
    assert p1.concat == Concat("udh8", 9, 2, 1)
    assert r.add(p2, 0.0) == Waiting(1, 2)
    got = r.add(p1, 1.0)
    assert isinstance(got, MoMessage) and got.text == "a€b" and got.parts == 2
    assert got.key == part_key(p1)


def test_udh16_ucs2_with_surrogate_split_across_parts():
    data = "ok😀".encode("utf-16-be")
    r = Reassembler()
    assert isinstance(r.add(mo_part(udh_part(700, 2, 1, data[:5], bits16=True, dc=8)), 0.0),
                      Waiting)
    got = r.add(mo_part(udh_part(700, 2, 2, data[5:], bits16=True, dc=8)), 0.5)
    assert got.text == "ok😀"


def test_sar_tlvs():
    r = Reassembler()
    r.add(mo_part(sar_part(5, 3, 3, b"c")), 0.0)
    r.add(mo_part(sar_part(5, 3, 1, b"a")), 0.0)
    got = r.add(mo_part(sar_part(5, 3, 2, b"b")), 0.0)
    assert got.text == "abc"


def test_same_number_in_two_schemes_is_two_messages():
    r = Reassembler()
    r.add(mo_part(udh_part(5, 2, 1, b"u")), 0.0)
    assert isinstance(r.add(mo_part(sar_part(5, 2, 2, b"s")), 0.0), Waiting)


def test_duplicate_parts_dropped_before_and_after_completion():
    r = Reassembler(remember=600.0)
    p1, p2 = mo_part(udh_part(1, 2, 1, b"a")), mo_part(udh_part(1, 2, 2, b"b"))
    r.add(p1, 0.0)
    assert r.add(p1, 1.0) == Duplicate(part_key(p1))
    assert isinstance(r.add(p2, 2.0), MoMessage)
    assert isinstance(r.add(p2, 30.0), Duplicate)          # the SMSC resent a part
    assert r.duplicates == 2
    r.expire(700.0)
    assert isinstance(r.add(p1, 700.0), Waiting)            # the reference is free again


def test_timeout_gives_what_arrived():
    r = Reassembler(timeout=60.0)
    r.add(mo_part(udh_part(3, 3, 1, b"hello ")), 10.0)
    r.add(mo_part(udh_part(3, 3, 3, b"!")), 20.0)
    assert r.next_deadline() == 70.0
    assert r.expire(69.9) == []
    (inc,) = r.expire(70.0)
    assert inc == Incomplete(PHONE, CODE, "hello !", (1, 3), 3)
    assert r.next_deadline() is None
    assert isinstance(r.add(mo_part(udh_part(3, 3, 2, b"x")), 71.0), Duplicate)


def test_part_key_is_stable_and_distinguishes():
    a = mo_part(udh_part(1, 2, 1, b"a"))
    assert part_key(a) == part_key(mo_part(udh_part(1, 2, 1, b"a")))
    assert part_key(a) != part_key(mo_part(udh_part(1, 2, 2, b"a")))
    assert part_key(a) != part_key(mo_part(udh_part(2, 2, 1, b"a")))


def test_total_of_one_and_broken_udh_are_single_messages():
    one = mo_part(udh_part(1, 1, 1, b"solo"))
    assert one.concat is None and one.body == b"solo"
    broken = mo_part(Pdu("deliver_sm", 1, 0, {"esm_class": 0x40, "short_message": b"\x09ab"}))
    assert broken.concat is None and broken.body == b"\x09ab"
