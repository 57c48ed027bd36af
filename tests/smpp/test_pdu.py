"""The codec and the framer: exact bytes, smpplib's gaps filled, nothing ever raises."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from smpplib import exceptions as smpplib_exceptions
from smpplib import smpp as smpplib_smpp

from gatewayd.smpp import pdu as P
from gatewayd.smpp.pdu import DecodeError, Framer, FramingError, Pdu


def header(length: int, command_id: int, status: int = 0, seq: int = 1) -> bytes:
    return struct.pack(">IIII", length, command_id, status, seq)


USSD_DELIVER = Pdu("deliver_sm", 7, 0, {
    "service_type": "USSD", "source_addr": "254712345678", "destination_addr": "383",
    "short_message": b"*383#", "ussd_service_op": 1, "its_session_info": 0x1200})


def test_ussd_deliver_sm_decodes_where_smpplib_raises():
    raw = P.encode(USSD_DELIVER)
    with pytest.raises(KeyError):      # upstream issue #104, still there in 2.2.4
        smpplib_smpp.parse_pdu(raw, client=P._NO_SEQUENCE, allow_unknown_opt_params=True)
    got = P.decode(raw)
    assert isinstance(got, Pdu)
    assert got["ussd_service_op"] == 1
    assert got["its_session_info"] == 0x1200
    assert got["short_message"] == b"*383#"
    assert got["source_addr"] == "254712345678"


def test_unknown_vendor_tlvs_are_kept_and_survive_a_round_trip():
    pdu = Pdu("deliver_sm", 3, 0, {"source_addr": "1", "short_message": b"x"},
              ((0x1401, b"\x01\x02"), (0x2150, b"")))
    raw = P.encode(pdu)
    with pytest.raises(smpplib_exceptions.UnknownCommandError):
        smpplib_smpp.parse_pdu(raw, client=P._NO_SEQUENCE)  # smpplib's default: an unknown TLV is fatal
    got = P.decode(raw)
    assert got.unknown_tlvs == ((0x1401, b"\x01\x02"), (0x2150, b""))
    assert got.tlv(0x1401) == b"\x01\x02"
    assert P.encode(got) == raw


def test_integer_tlv_is_read_by_its_length_on_the_wire():
    # A vendor sends ussd_service_op as 2 octets; smpplib would read 1 and misparse
    # every TLV after it.
    body = P.encode(Pdu("deliver_sm", 1, 0, {"short_message": b"hi"}))[16:]
    body += struct.pack(">HHH", 0x0501, 2, 18) + struct.pack(">HHH", 0x1383, 2, 0x0401)
    got = P.decode(header(16 + len(body), 5) + body)
    assert got["ussd_service_op"] == 18
    assert got["its_session_info"] == 0x0401


def test_bind_transceiver_bytes_exact():
    raw = P.encode(Pdu("bind_transceiver", 1, 0, {
        "system_id": "esme", "password": "pw", "system_type": "", "addr_ton": 0,
        "addr_npi": 0, "address_range": ""}))
    assert raw == bytes.fromhex("0000001d00000009000000000000000165736d65007077000034000000")


def test_error_response_without_body_decodes():
    got = P.decode(header(16, 0x80000004, P.ESME_RTHROTTLED, 9))
    assert isinstance(got, Pdu)
    assert (got.command, got.command_status, got.sequence_number) == (
        "submit_sm_resp", P.ESME_RTHROTTLED, 9)
    assert got.get("message_id") is None


@pytest.mark.parametrize("raw, status, seq", [
    (header(16, 0x00000099, 0, 4), P.ESME_RINVCMDID, 4),                  # unknown command
    (header(16, 0x00000008, 0, 5), P.ESME_RINVCMDID, 5),                  # cancel_sm: unsupported
    (header(16, 0x00000005, 0, 6), P.ESME_RINVCMDLEN, 6),                 # deliver_sm, no body
    (header(20, 0x00000005, 0, 7) + b"USSD", P.ESME_RINVCMDLEN, 7),       # string without NUL
    (header(17, 0x00000005, 0, 8), P.ESME_RINVCMDLEN, 8),                 # length != octets
    (b"\x00\x00", P.ESME_RINVCMDLEN, None),                               # not even a header
])
def test_malformed_pdus_name_their_generic_nack(raw, status, seq):
    got = P.decode(raw)
    assert isinstance(got, DecodeError)
    assert got.command_status == status
    assert got.sequence_number == seq


def test_short_message_longer_than_the_body():
    body = bytearray(P.encode(Pdu("deliver_sm", 1, 0, {"short_message": b"hello"}))[16:])
    body[body.index(b"hello") - 1] = 200     # sm_length
    got = P.decode(header(16 + len(body), 5, 0, 3) + bytes(body))
    assert isinstance(got, DecodeError) and got.command_status == P.ESME_RINVMSGLEN


def test_truncated_tlv_is_an_optional_parameter_stream_error():
    body = P.encode(Pdu("deliver_sm", 1, 0, {"short_message": b"hi"}))[16:] + b"\x05\x01\x00"
    got = P.decode(header(16 + len(body), 5, 0, 3) + body)
    assert isinstance(got, DecodeError) and got.command_status == P.ESME_RINVOPTPARSTREAM


def test_generic_nack_bytes():
    assert P.generic_nack(P.ESME_RINVCMDID, 42) == header(16, 0x80000000, 3, 42)


# -- framing ---------------------------------------------------------------------------
def _stream() -> tuple[bytes, list[bytes]]:
    frames = [P.encode(USSD_DELIVER), P.encode(Pdu("enquire_link", 2)),
              P.encode(Pdu("submit_sm_resp", 3, 0, {"message_id": "1a2b"}))]
    return b"".join(frames), frames


def test_framer_cuts_at_every_boundary_the_same():
    data, frames = _stream()
    for cut in range(len(data) + 1):
        f = Framer()
        assert f.feed(data[:cut]) + f.feed(data[cut:]) == frames
        assert f.buffered == 0


def test_framer_byte_by_byte():
    data, frames = _stream()
    f = Framer()
    got = [frame for b in data for frame in f.feed(bytes([b]))]
    assert got == frames


@pytest.mark.parametrize("length", [0, 15, P.MAX_PDU_LENGTH + 1, 0xFFFFFFFF])
def test_bad_command_length_is_fatal(length):
    f = Framer()
    out = f.feed(header(length, 5, 0, 77) + b"more")
    assert out == [FramingError(length, 77, out[0].reason)]
    assert f.feed(P.encode(Pdu("enquire_link", 1))) == []      # dead for good
    assert f.error is not None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_decode_never_raises(data):
    got = P.decode(data)
    assert isinstance(got, (Pdu, DecodeError))


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=0x80000200), st.binary(max_size=200),
       st.integers(min_value=0, max_value=0xFFFFFFFF))
def test_decode_never_raises_on_well_framed_garbage(command_id, body, seq):
    # Valid command ids with random bodies reach the field parser itself.
    ids = list(P._COMMAND_NAMES)
    command_id = ids[command_id % len(ids)] if command_id % 3 else command_id
    got = P.decode(header(16 + len(body), command_id, 0, seq) + body)
    assert isinstance(got, (Pdu, DecodeError))
    if isinstance(got, DecodeError):
        assert got.sequence_number == seq


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600), st.lists(st.integers(min_value=0, max_value=600), max_size=8))
def test_framer_never_raises_and_split_does_not_matter(data, cuts):
    whole = Framer(max_length=512).feed(data)
    f = Framer(max_length=512)
    got: list = []
    start = 0
    for cut in sorted({c for c in cuts if c <= len(data)}) + [len(data)]:
        got += f.feed(data[start:cut])
        start = cut
    assert got == whole
    for item in got:
        assert isinstance(item, (bytes, FramingError))
        if isinstance(item, bytes):
            assert 16 <= len(item) <= 512
            assert isinstance(P.decode(item), (Pdu, DecodeError))
