"""Which alphabet an SMS goes in, and where a long one is cut into parts. Sans-I/O.

A text goes as GSM-7 when every character is in GSM 03.38 (menus/gsm0338.py, the
table with '§' at 0x5F and the form feed in the extension table), else as UCS-2
(UTF-16BE, so an emoji is a surrogate pair and costs two units).

One SMS carries 140 octets of user data:

- GSM-7: 160 septets alone; 153 per part once a 6-octet concatenation UDH (8-bit
  reference) takes 48 bits plus one fill bit, i.e. 7 septets;
- UCS-2: 70 UTF-16 units alone, 67 per part (the UDH takes 6 of the 140 octets).

Parts are cut between characters, never inside one: an ESC + extension pair (€, [, {
...) or a surrogate pair split across two parts shows as garbage on the phone. These
are the same limits and the same rule as the SMPP channel's splitter; a test keeps the
two in step.
"""

from __future__ import annotations

from dataclasses import dataclass

from menus import gsm0338

DCS_GSM7 = 0x00
DCS_8BIT = 0x04
DCS_UCS2 = 0x08

GSM7_SINGLE, GSM7_PART = 160, 153
UCS2_SINGLE, UCS2_PART = 70, 67
# The concatenation element counts parts in one octet.
MAX_PARTS = 255


@dataclass(frozen=True)
class Part:
    """One part's user data before packing: septet values (GSM-7) or UTF-16BE octets."""
    dcs: int
    data: bytes
    text: str

    @property
    def length(self) -> int:
        """Septets (GSM-7) or UTF-16 units (UCS-2): what the limits above count."""
        return len(self.data) if self.dcs == DCS_GSM7 else len(self.data) // 2


def units(text: str) -> tuple[int, list[tuple[str, bytes]]]:
    """(dcs, one (character, encoding) per character). A character is never cut."""
    if gsm0338.is_gsm7(text):
        return DCS_GSM7, [(ch, bytes(gsm0338.encode_septets(ch))) for ch in text]
    return DCS_UCS2, [(ch, ch.encode("utf-16-be")) for ch in text]


def split(text: str) -> list[Part]:
    """The parts `text` needs, in order: one if it fits alone.

    Raises ValueError when it would take more than 255 parts (about 39,000 GSM-7
    characters: nothing the box should ever send)."""
    dcs, chars = units(text)
    width = 1 if dcs == DCS_GSM7 else 2
    single, per_part = (GSM7_SINGLE, GSM7_PART) if dcs == DCS_GSM7 else (UCS2_SINGLE, UCS2_PART)
    whole = b"".join(enc for _, enc in chars)
    if len(whole) // width <= single:
        return [Part(dcs, whole, text)]
    parts: list[Part] = []
    data, chunk = bytearray(), []
    for ch, enc in chars:
        if (len(data) + len(enc)) // width > per_part:
            parts.append(Part(dcs, bytes(data), "".join(chunk)))
            data, chunk = bytearray(), []
        data += enc
        chunk.append(ch)
    if data:
        parts.append(Part(dcs, bytes(data), "".join(chunk)))
    if len(parts) > MAX_PARTS:
        raise ValueError(f"text needs {len(parts)} parts; an SMS can have at most {MAX_PARTS}")
    return parts


def decode_user_text(dcs_alphabet: int, data: bytes) -> str:
    """User data (UDH removed, septets already unpacked for GSM-7) -> text. Never raises.

    UCS-2 is decoded as UTF-16 so that a surrogate pair from a phone becomes the one
    character it is (python-gsmmodem-new gives back two lone surrogates, which then
    fail to encode as UTF-8 in the store); a lone surrogate becomes U+FFFD."""
    if dcs_alphabet == DCS_UCS2:
        if len(data) % 2:
            data = data[:-1]
        return data.decode("utf-16-be", errors="replace")
    if dcs_alphabet == DCS_8BIT:
        return data.decode("latin-1")   # 8-bit data is no text: keep every octet
    return gsm0338.decode_septets(bytes(b & 0x7F for b in data))
