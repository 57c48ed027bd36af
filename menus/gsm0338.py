"""The GSM 03.38 default alphabet (GSM-7) and how long a text is in it.

A USSD screen holds 182 septets and an SMS 160; a character from the extension table
costs two (ESC + char). Text that leaves the alphabet is sent as UCS-2, where a screen
holds far less (about 80 characters), so every fixed text of ours stays inside it.

smpplib's helper gets 0x5F wrong ('`' instead of '§') and can split an escape pair;
this table is the one later channels encode with.
"""

from __future__ import annotations

# Index = septet value. 0x1B is the escape to the extension table.
BASIC = (
    "@£$¥èéùìòÇ\nØø\rÅå"
    "Δ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ"
    " !\"#¤%&'()*+,-./"
    "0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNO"
    "PQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmno"
    "pqrstuvwxyzäöñüà"
)
assert len(BASIC) == 128

ESCAPE = 0x1B
# Extension table (after ESC): septet -> character.
EXTENSION = {
    0x0A: "\f",
    0x14: "^",
    0x28: "{",
    0x29: "}",
    0x2F: "\\",
    0x3C: "[",
    0x3D: "~",
    0x3E: "]",
    0x40: "|",
    0x65: "€",
}

_BASIC_INDEX = {ch: i for i, ch in enumerate(BASIC) if i != ESCAPE}
_EXT_INDEX = {ch: code for code, ch in EXTENSION.items()}


def is_gsm7(text: str) -> bool:
    """True when every character of `text` is in the default alphabet or its extension."""
    return all(ch in _BASIC_INDEX or ch in _EXT_INDEX for ch in text)


def septet_length(text: str) -> int:
    """Septets `text` takes in GSM-7; raises ValueError for a character outside it."""
    n = 0
    for ch in text:
        if ch in _BASIC_INDEX:
            n += 1
        elif ch in _EXT_INDEX:
            n += 2
        else:
            raise ValueError(f"character {ch!r} is not in the GSM 03.38 alphabet")
    return n


def encode_septets(text: str) -> list[int]:
    """One septet value per list item (unpacked); extension characters become ESC, code."""
    out: list[int] = []
    for ch in text:
        code = _BASIC_INDEX.get(ch)
        if code is not None:
            out.append(code)
            continue
        code = _EXT_INDEX.get(ch)
        if code is None:
            raise ValueError(f"character {ch!r} is not in the GSM 03.38 alphabet")
        out.extend((ESCAPE, code))
    return out


def decode_septets(septets: list[int] | bytes) -> str:
    """The inverse of encode_septets. An unknown escape pair decodes as the basic
    character after it (03.38: a receiver shows the default-table character), and a
    trailing lone ESC as a space."""
    out: list[str] = []
    it = iter(septets)
    for code in it:
        if code != ESCAPE:
            out.append(BASIC[code & 0x7F])
            continue
        nxt = next(it, None)
        if nxt is None:
            out.append(" ")
        else:
            out.append(EXTENSION.get(nxt, BASIC[nxt & 0x7F] if nxt != ESCAPE else " "))
    return "".join(out)


# Characters villagers' phones and our translators commonly produce that GSM-7 lacks.
_FOLD = str.maketrans({
    "’": "'", "‘": "'", "“": '"', "”": '"', "–": "-", "—": "-", "…": "...",
    "á": "a", "í": "i", "ó": "o", "ú": "u", "â": "a", "ê": "e", "î": "i", "ô": "o",
    "û": "u", "ç": "c", "ë": "e", "ï": "i", "\t": " ",
})


def fold(text: str) -> str:
    """Replace common look-alikes with GSM-7 characters; what is left is unchanged."""
    return text.translate(_FOLD)
