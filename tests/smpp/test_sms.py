"""Outbound SMS: alphabet, part counts, UDH bytes, escapes and surrogates kept whole."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatewayd.smpp import sms
from gatewayd.smpp.sms import Concat, LongMode
from menus import gsm0338

SRC, DST = "383", "254712345678"


def parts(text: str, **kw) -> list[dict]:
    return sms.submit_sm_fields(text, source_addr=SRC, destination_addr=DST, reference=7, **kw)


def user_data(fields: dict) -> bytes:
    data = fields["short_message"]
    return data[1 + data[0]:] if fields["esm_class"] & sms.ESM_CLASS_UDHI else data


def test_gsm7_single_part_is_unpacked_septets_with_data_coding_0():
    (p,) = parts("Hello € [x] §")
    assert p["data_coding"] == 0 and p["esm_class"] == 0
    assert p["short_message"] == b"Hello \x1be \x1b<x\x1b> \x5f"
    assert p["registered_delivery"] == 1


def test_non_gsm_text_goes_as_ucs2():
    (p,) = parts("Habari 😀")
    assert p["data_coding"] == 8
    assert p["short_message"] == "Habari 😀".encode("utf-16-be")


@pytest.mark.parametrize("text, count", [
    ("a" * 160, 1), ("a" * 161, 2), ("a" * 306, 2), ("a" * 307, 3),
    ("€" * 80, 1), ("€" * 81, 2),                 # 2 septets each
    ("ж" * 70, 1), ("ж" * 71, 2), ("ж" * 134, 2), ("ж" * 135, 3),
])
def test_part_counts(text, count):
    assert len(parts(text)) == count


def test_udh_bytes_exact():
    ps = parts("a" * 200)
    assert [p["short_message"][:6] for p in ps] == [
        bytes.fromhex("050003070201"), bytes.fromhex("050003070202")]
    assert all(p["esm_class"] == 0x40 for p in ps)
    assert [len(user_data(p)) for p in ps] == [153, 47]


def test_escape_pair_never_split():
    # 152 plain septets, then € (ESC e): a cut at 153 would split it.
    ps = parts("a" * 152 + "€" + "b" * 20)
    first, second = user_data(ps[0]), user_data(ps[1])
    assert first == b"a" * 152
    assert second.startswith(b"\x1be")


def test_surrogate_pair_never_split():
    ps = parts("x" * 66 + "😀" + "y" * 10)
    first, second = user_data(ps[0]), user_data(ps[1])
    assert first == ("x" * 66).encode("utf-16-be")
    assert second.startswith("😀".encode("utf-16-be"))


def test_message_payload_mode_sends_one_pdu():
    (p,) = parts("a" * 400, long_mode=LongMode.PAYLOAD)
    assert "short_message" not in p and p["message_payload"] == b"a" * 400
    assert p["esm_class"] == 0


def test_too_many_parts_is_refused():
    with pytest.raises(ValueError, match="255"):
        parts("a" * (153 * 255 + 1))


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("abc €{}[]^|~\\\n@§Ωж😀é")), max_size=700))
def test_parts_reassemble_to_the_text_and_fit(text):
    ps = parts(text)
    dc = ps[0]["data_coding"]
    joined = b"".join(user_data(p) for p in ps)
    assert sms.decode_short_message(joined, dc) == text
    for p in ps:
        ud = user_data(p)
        if dc == 0:
            assert len(ud) <= (160 if len(ps) == 1 else 153)
            # Each part decodes alone: no escape split across parts.
            assert not ud.endswith(b"\x1b") or ud.endswith(b"\x1b\x1b")
            gsm0338.decode_septets(ud)
        else:
            assert len(ud) <= (140 if len(ps) == 1 else 134)
            ud.decode("utf-16-be")          # raises on a split surrogate pair


@pytest.mark.parametrize("data, dc, text", [
    (b"Hi \x1be", 0x00, "Hi €"),
    (b"Hi \x1be", 0x0F, "Hi €"),          # USSD's GSM-7, language unspecified
    ("ж😀".encode("utf-16-be"), 0x08, "ж😀"),
    ("ж".encode("utf-16-be"), 0x18, "ж"),  # GSM DCS general group, UCS-2, class set
    ("é".encode("latin-1"), 0x03, "é"),
    (b"\x00\xff", 0x04, "\x00\xff"),
    (b"\xd8\x3d", 0x08, "\ufffd"),         # a lone surrogate: replaced, never raised
])
def test_decode_short_message(data, dc, text):
    assert sms.decode_short_message(data, dc) == text


@pytest.mark.parametrize("payload, concat, body", [
    (bytes.fromhex("0500030a0302") + b"hi", Concat("udh8", 10, 3, 2), b"hi"),
    (bytes.fromhex("060804012c0301") + b"hi", Concat("udh16", 300, 3, 1), b"hi"),
    (bytes.fromhex("0b" "0504" "0b840000" "0003050201") + b"x", Concat("udh8", 5, 2, 1), b"x"),
    (bytes.fromhex("0500030a0304") + b"hi", None, b"hi"),       # seq 4 of 3: ignored
    (bytes.fromhex("09000102"), None, bytes.fromhex("09000102")),  # UDH longer than data
])
def test_split_udh(payload, concat, body):
    assert sms.split_udh(payload) == (concat, body)


def test_relative_validity():
    assert sms.relative_validity(3600) == "000000010000000R"
    assert sms.relative_validity(2 * 86400 + 61) == "000002000101000R"
    assert sms.relative_validity(5) == "000000000100000R"    # at least a minute


def test_a_one_part_concatenation_is_a_message_of_its_own():
    # 23.040: a count of 1 numbers nothing; waiting for "other parts" would lose the text.
    assert sms.split_udh(bytes.fromhex("0500030a0101") + b"hi") == (None, b"hi")


def test_ucs2_with_an_odd_octet_and_a_surrogate_pair():
    # The shared decoder joins a pair into one character and drops a dangling octet.
    assert sms.decode_short_message("😀".encode("utf-16-be") + b"\x00", 0x08) == "😀"
