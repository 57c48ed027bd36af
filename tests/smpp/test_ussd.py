"""USSD over SMPP: vendor profiles, dialog keys, replies."""

from __future__ import annotations

import pytest

from gatewayd.smpp import pdu as P
from gatewayd.smpp import ussd
from gatewayd.smpp.pdu import Pdu
from gatewayd.smpp.ussd import HopKind, NotUssd, UssdIn

PHONE, CODE = "254712345678", "383"


def deliver(op: int, text: bytes = b"", info: int | None = 0x1200, **extra) -> Pdu:
    fields = {"service_type": "USSD", "source_addr": PHONE, "destination_addr": CODE,
              "short_message": text, "ussd_service_op": op, **extra}
    if info is not None:
        fields["its_session_info"] = info
    # Through the wire and back: what the session would hand over.
    return P.decode(P.encode(Pdu("deliver_sm", 5, 0, fields)))


STANDARD, SIXDEE = ussd.profile("standard"), ussd.profile("sixdee")


def test_standard_start_carries_the_dialled_string():
    hop = ussd.parse_deliver_sm(deliver(1, b"*383*1#"), STANDARD)
    assert hop == UssdIn(f"{PHONE}/18", HopKind.START, "*383*1#", PHONE, CODE, 1, 0x1200)


def test_standard_continue_and_session_key_ignores_the_unit_number():
    start = ussd.parse_deliver_sm(deliver(1, b"*383#", 0x1200), STANDARD)
    cont = ussd.parse_deliver_sm(deliver(18, b"2", 0x1202), STANDARD)
    assert cont.kind is HopKind.CONTINUE and cont.text == "2"
    assert cont.session_key == start.session_key
    other = ussd.parse_deliver_sm(deliver(18, b"2", 0x1302), STANDARD)
    assert other.session_key != start.session_key


def test_end_of_session_bit_from_the_network_is_an_abort():
    hop = ussd.parse_deliver_sm(deliver(18, b"", 0x1203), STANDARD)
    assert hop.kind is HopKind.ABORT


def test_sixdee_codes():
    assert ussd.parse_deliver_sm(deliver(0x01, b"*383#"), SIXDEE).kind is HopKind.START
    assert ussd.parse_deliver_sm(deliver(0x12, b"1"), SIXDEE).kind is HopKind.CONTINUE
    assert ussd.parse_deliver_sm(deliver(0x81), SIXDEE).kind is HopKind.ABORT
    # 0x81 means nothing to the standard profile: not guessed at.
    assert isinstance(ussd.parse_deliver_sm(deliver(0x81), STANDARD), NotUssd)


def test_no_session_info_falls_back_to_the_source_address():
    hop = ussd.parse_deliver_sm(deliver(1, b"*383#", info=None), STANDARD)
    assert hop.session_key == PHONE
    prof = ussd.profile("no_session_info")
    assert ussd.parse_deliver_sm(deliver(1, b"*383#", 0x1200), prof).session_key == PHONE


def test_not_ussd():
    sms = P.decode(P.encode(Pdu("deliver_sm", 1, 0, {"short_message": b"hi"})))
    assert not ussd.is_ussd(sms)
    assert isinstance(ussd.parse_deliver_sm(sms, STANDARD), NotUssd)


@pytest.mark.parametrize("prof, end, op", [(STANDARD, False, 2), (STANDARD, True, 17),
                                          (SIXDEE, False, 0x02), (SIXDEE, True, 0x11)])
def test_reply_fields(prof, end, op):
    hop = ussd.parse_deliver_sm(deliver(1, b"*383#", 0x1200), prof)   # 1 starts in both
    f = ussd.submit_sm_fields(hop, "Welcome €", end, prof)
    assert f["ussd_service_op"] == op
    assert (f["source_addr"], f["destination_addr"]) == (CODE, PHONE)
    assert f["service_type"] == "USSD"
    assert f["its_session_info"] == (0x1201 if end else 0x1200)
    assert f["short_message"] == b"Welcome \x1be" and f["data_coding"] == 0
    assert f["registered_delivery"] == 0
    raw = P.encode(Pdu("submit_sm", 9, 0, f))          # encodes as a real submit_sm
    back = P.decode(raw)
    assert back["ussd_service_op"] == op and back["its_session_info"] == f["its_session_info"]


def test_reply_without_session_info_and_in_ucs2():
    hop = ussd.parse_deliver_sm(deliver(1, b"*383#", info=None), STANDARD)
    f = ussd.submit_sm_fields(hop, "Karibu 😀", True, STANDARD)
    assert "its_session_info" not in f
    assert f["data_coding"] == 8 and f["short_message"] == "Karibu 😀".encode("utf-16-be")


def test_unknown_profile_named_in_the_error():
    with pytest.raises(ValueError, match="standard"):
        ussd.profile("mica")
