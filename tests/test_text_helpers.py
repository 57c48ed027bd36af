"""Small pure helpers: phone numbers, amounts, the GSM-7 alphabet, the pager, PINs."""

from __future__ import annotations

import pytest
from hypothesis import given, settings as hsettings, strategies as st

from menus import gsm0338, msisdn, screens
from menus.lending import parse_amount
from menus.screens import SCREEN_LIMIT, paginate
from menus.texts import ksh
from store import pins

# -- msisdn --------------------------------------------------------------------------

GOOD_NUMBERS = [
    ("0712345678", "254712345678"),
    ("0112345678", "254112345678"),
    ("0101234567", "254101234567"),
    ("+254712345678", "254712345678"),
    ("254712345678", "254712345678"),
    ("712345678", "254712345678"),
    ("0712 345 678", "254712345678"),
    ("0712-345-678", "254712345678"),
    ("(0712) 345.678", "254712345678"),
    ("00254712345678", "254712345678"),
    ("+254 712 345 678", "254712345678"),
    (" 0712345678 ", "254712345678"),
    ("0712\t345678", "254712345678"),
]

BAD_NUMBERS = [
    "071234567",          # one digit short
    "07123456789",        # one digit long
    "0812345678",         # not a mobile range
    "0212345678",         # Nairobi landline
    "254812345678",
    "2547123456789",
    "+255712345678",      # Tanzania
    "abc",
    "",
    "+1 202 555 0100",
    "٠٧١٢٣٤٥٦٧٨",         # Arabic-Indic digits: isdigit() but not ASCII
    "０７１２３４５６７８",  # full-width digits
    "0712345678x",
    "07123*45678",
    "+",
    "00",
    "12345",
]


@pytest.mark.parametrize("raw,want", GOOD_NUMBERS)
def test_normalize_accepts_common_forms(raw, want):
    assert msisdn.normalize(raw) == want


@pytest.mark.parametrize("raw", BAD_NUMBERS)
def test_normalize_rejects(raw):
    assert msisdn.normalize(raw) is None


def test_normalize_none_input():
    assert msisdn.normalize(None) is None  # type: ignore[arg-type]


@given(st.sampled_from("71"), st.text("0123456789", min_size=8, max_size=8))
def test_normalize_every_form_of_one_number_agrees(first, rest):
    national = first + rest
    want = "254" + national
    for form in (national, "0" + national, "254" + national, "+254" + national,
                 "00254" + national, f"0{national[:3]} {national[3:6]} {national[6:]}"):
        assert msisdn.normalize(form) == want
    assert msisdn.normalize(msisdn.local(want)) == want


def test_local():
    assert msisdn.local("254712345678") == "0712345678"
    assert msisdn.local("254112345678") == "0112345678"
    # Anything not canonical is shown as it is.
    assert msisdn.local("12345") == "12345"
    assert msisdn.local("2547123456789") == "2547123456789"


def test_mask():
    m = msisdn.mask("254712345678")
    assert m == "2547*****678"
    assert len(m) == 12
    assert "12345" not in m
    assert msisdn.mask("123456") == "******"
    assert msisdn.mask("") == ""
    assert msisdn.mask("1234567") == "1234567"
    # Two callers stay apart.
    assert msisdn.mask("254712345678") != msisdn.mask("254712345679")


# -- ksh -----------------------------------------------------------------------------

@pytest.mark.parametrize("cents,want", [
    (0, "Ksh 0"),
    (100, "Ksh 1"),
    (50, "Ksh 0.50"),
    (5, "Ksh 0.05"),
    (500_000, "Ksh 5,000"),
    (500_050, "Ksh 5,000.50"),
    (70_000_00, "Ksh 70,000"),
    (250_000_00, "Ksh 250,000"),
    (1_234_567_89, "Ksh 1,234,567.89"),
    (-500_000, "-Ksh 5,000"),
    (-50, "-Ksh 0.50"),
])
def test_ksh(cents, want):
    assert ksh(cents) == want


# -- parse_amount --------------------------------------------------------------------

MIN, MAX = 10_00, 70_000_00


@pytest.mark.parametrize("text,cents", [
    ("500", 500_00),
    ("10", 10_00),
    ("70000", 70_000_00),
    ("70,000", 70_000_00),
    ("7 000", 7_000_00),
    ("Ksh 500", 500_00),
    ("ksh500", 500_00),
    ("KSH 1,500", 1_500_00),
    ("500.00", 500_00),
    ("500.0", 500_00),
    ("0500", 500_00),
])
def test_parse_amount_good(text, cents):
    assert parse_amount(text, MIN, MAX) == (cents, "", {})


@pytest.mark.parametrize("text,err,params", [
    ("", "amount_not_number", {}),
    ("abc", "amount_not_number", {}),
    ("-500", "amount_not_number", {}),
    ("+500", "amount_not_number", {}),
    ("5e3", "amount_not_number", {}),
    ("٥٠٠", "amount_not_number", {}),        # Arabic-Indic digits
    ("500.5", "amount_whole", {}),
    ("500.50", "amount_whole", {}),
    ("0.5", "amount_whole", {}),
    ("1.2.3", "amount_not_number", {}),
    (".", "amount_not_number", {}),
    ("Ksh", "amount_not_number", {}),
    ("0", "amount_too_small", {"min": "10"}),
    ("9", "amount_too_small", {"min": "10"}),
    ("0.00", "amount_too_small", {"min": "10"}),
    ("70001", "amount_too_large", {"max": "70,000"}),
    ("999999999", "amount_too_large", {"max": "70,000"}),
    ("9999999999", "amount_too_large", {"max": "70,000"}),
    ("9" * 400, "amount_too_large", {"max": "70,000"}),
])
def test_parse_amount_bad(text, err, params):
    assert parse_amount(text, MIN, MAX) == (None, err, params)


@given(st.integers(min_value=0, max_value=10**9 - 1))
def test_parse_amount_whole_numbers(n):
    cents, err, params = parse_amount(str(n), MIN, MAX)
    if MIN <= n * 100 <= MAX:
        assert (cents, err) == (n * 100, "")
    else:
        assert cents is None
        assert err == ("amount_too_small" if n * 100 < MIN else "amount_too_large")


# -- GSM 03.38 -----------------------------------------------------------------------

ALPHABET = sorted({c for i, c in enumerate(gsm0338.BASIC) if i != gsm0338.ESCAPE}
                  | set(gsm0338.EXTENSION.values()))


def test_alphabet_tables_are_unique():
    basic = [c for i, c in enumerate(gsm0338.BASIC) if i != gsm0338.ESCAPE]
    assert len(set(basic)) == 127
    assert not set(basic) & set(gsm0338.EXTENSION.values())
    assert len(ALPHABET) == 127 + 10


@given(st.text(alphabet=ALPHABET, max_size=300))
def test_gsm7_round_trip(text):
    assert gsm0338.is_gsm7(text)
    septets = gsm0338.encode_septets(text)
    assert all(0 <= s < 128 for s in septets)
    assert len(septets) == gsm0338.septet_length(text)
    assert gsm0338.decode_septets(septets) == text
    assert gsm0338.decode_septets(bytes(septets)) == text


def test_septet_length_counts_extension_twice():
    assert gsm0338.septet_length("") == 0
    assert gsm0338.septet_length("abc") == 3
    assert gsm0338.septet_length("€") == 2
    assert gsm0338.septet_length("[x]") == 5
    assert gsm0338.septet_length("{}|~^\\€[]\f") == 20
    assert gsm0338.septet_length("Ksh 5,000 @£$") == 13
    assert gsm0338.encode_septets("€") == [0x1B, 0x65]
    assert gsm0338.encode_septets("@") == [0]


@pytest.mark.parametrize("text", ["😀", "ok 👍", "naïve\u200b", "₦", "\x1b", "`", "ç", "中文", "ق"])
def test_is_gsm7_false_outside_alphabet(text):
    assert not gsm0338.is_gsm7(text)
    with pytest.raises(ValueError):
        gsm0338.septet_length(text)
    with pytest.raises(ValueError):
        gsm0338.encode_septets(text)


def test_screen_length_for_ucs2_text():
    # A UCS-2 screen holds 80 characters: 80 of them use the whole budget.
    assert screens.length("😀" * 80) == SCREEN_LIMIT
    assert screens.length("😀" * 81) > SCREEN_LIMIT
    assert screens.length("a" * 182) == 182
    assert screens.length("€" * 91) == 182


def test_decode_unknown_escape_and_trailing_escape():
    assert gsm0338.decode_septets([0x1B, 0x41]) == "A"
    assert gsm0338.decode_septets([0x41, 0x1B]) == "A "


def test_fold():
    assert gsm0338.fold("Mary’s “café” – ok…") == "Mary's \"café\" - ok..."
    assert gsm0338.is_gsm7(gsm0338.fold("Wanjikú Ngúgí"))


# -- the pager -----------------------------------------------------------------------

item_text = st.text(alphabet=[c for c in ALPHABET if c not in "\n\r"], min_size=1, max_size=60)


@hsettings(max_examples=150, deadline=None)
@given(header=st.text(alphabet="ABCDEFGHIJ abcdefghij", min_size=1, max_size=30),
       items=st.lists(item_text, max_size=40),
       more=st.sampled_from(["More", "Zaidi"]), back=st.sampled_from(["Back", "Rudi"]))
def test_paginate_covers_all_items_once_and_fits(header, items, more, back):
    shown: list[str] = []
    start = 0
    pages = 0
    while True:
        page = paginate(header, items, start, more, back)
        pages += 1
        assert pages <= len(items) + 1
        assert page.first == start
        assert screens.length(page.text) <= SCREEN_LIMIT
        lines = page.text.split("\n")
        assert lines[0] == header
        assert lines[-1] == f"0 {back}"
        body = lines[1:-1]
        if page.has_more:
            assert body[-1] == f"98 {more}"
            body = body[:-1]
        else:
            assert f"98 {more}" not in lines[-2:]
        assert body == items[start:start + page.count]
        shown += body
        if not page.has_more:
            break
        assert page.count >= 1
        start += page.count
    assert shown == items


def test_paginate_packs_as_many_as_fit():
    items = [f"{i} item number {i:02d} xx" for i in range(1, 31)]
    page = paginate("Header", items, 0, "More", "Back")
    assert page.has_more
    nxt = "\n".join(page.text.split("\n")[:-2] + [items[page.count], "98 More", "0 Back"])
    assert screens.length(nxt) > SCREEN_LIMIT  # one more item would not have fitted


def test_paginate_empty_and_past_end():
    page = paginate("H", [], 0, "More", "Back")
    assert (page.text, page.count, page.has_more) == ("H\n0 Back", 0, False)


# -- PINs ----------------------------------------------------------------------------

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))


def test_hash_and_verify_pin():
    h = pins.hash_pin("4826", KEY, 10)
    assert h.startswith("scrypt1$10$")
    assert "4826" not in h
    assert pins.verify_pin("4826", h, KEY)
    assert not pins.verify_pin("4827", h, KEY)
    assert not pins.verify_pin("4826", h, OTHER_KEY)
    assert not pins.verify_pin("", h, KEY)
    # Salted: the same PIN hashes differently each time, and both verify.
    h2 = pins.hash_pin("4826", KEY, 10)
    assert h2 != h
    assert pins.verify_pin("4826", h2, KEY)


@pytest.mark.parametrize("stored", [
    None, "", "garbage", "a$b", "a$b$c$d$e", "md5$10$AAAA$AAAA",
    "scrypt1$x$AAAA$AAAA", "scrypt1$-1$AAAA$AAAA", "scrypt1$0$AAAA$AAAA",
    "scrypt1$99$AAAA$AAAA", "scrypt1$10$@@@$AAAA", "scrypt1$10$AAAA$é",
    "scrypt1$10$AAAA$AAAA", "scrypt1$10$$",
])
def test_verify_pin_garbage_stored_hash_is_false(stored):
    assert pins.verify_pin("4826", stored, KEY) is False


@pytest.mark.parametrize("pin", ["0000", "1111", "9999", "1234", "4321", "0123", "6789",
                                 "9876", "3210", "5678"])
def test_weak_pins(pin):
    assert pins.is_weak_pin(pin)


@pytest.mark.parametrize("pin", ["2580", "4826", "1357", "1212", "1122", "9012", "1235", "0001"])
def test_not_weak_pins(pin):
    assert not pins.is_weak_pin(pin)


@pytest.mark.parametrize("text,ok", [("1234", True), ("0000", True), ("123", False),
                                     ("12345", False), ("12a4", False), ("", False),
                                     ("١٢٣٤", False), (" 123", False)])
def test_pin_shape(text, ok):
    assert pins.is_pin_shape(text) is ok


def test_load_or_create_key(tmp_path):
    path = tmp_path / "sub" / "pin.key"
    key = pins.load_or_create_key(str(path))
    assert len(key) == 32
    assert (path.stat().st_mode & 0o777) == 0o600
    assert pins.load_or_create_key(str(path)) == key
    short = tmp_path / "short.key"
    short.write_bytes(b"x" * 8)
    with pytest.raises(ValueError):
        pins.load_or_create_key(str(short))


def test_sms_quotes_an_mpesa_reason_short_and_in_gsm7():
    from menus.lending import REASON_CHARS, _sms_params
    out = _sms_params({"reason": "Request cancelled by user — “timeout” 🙁\nretry later please now"})
    assert len(out["reason"]) <= REASON_CHARS
    assert gsm0338.is_gsm7(out["reason"]) and "\n" not in out["reason"]
    assert out["reason"].startswith("Request cancelled by user -")
