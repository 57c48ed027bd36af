"""SMS user data (GSM 03.40), shared by the SMPP and modem channels: which alphabet a
text goes in, where a long one is cut into parts, and the concatenation element that
numbers the parts. Sans-I/O. One copy, so that a message splits and reassembles the same
way whichever channel carries it.

A text goes as GSM-7 when every character is in GSM 03.38 (menus/gsm0338.py, the
table with '§' at 0x5F and the form feed in the extension table), else as UCS-2
(UTF-16BE, so an emoji is a surrogate pair and costs two units).

One SMS carries 140 octets of user data:

- GSM-7: 160 septets alone; 153 per part once a 6-octet concatenation UDH (8-bit
  reference) takes 48 bits plus one fill bit, i.e. 7 septets;
- UCS-2: 70 UTF-16 units alone, 67 per part (the UDH takes 6 of the 140 octets).

Parts are cut between characters, never inside one: an ESC + extension pair (€, [, {
...) or a surrogate pair split across two parts shows as garbage on the phone. These
are the limits of one SMS on the air, so they hold for SMPP too, where GSM-7 travels
unpacked (one septet per octet) and the SMSC packs it.
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
IEI_CONCAT_8BIT = 0x00
IEI_CONCAT_16BIT = 0x08


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


# -- the concatenation element (23.040 §9.2.3.24.1 and .8) ----------------------------

@dataclass(frozen=True)
class Concat:
    """Where one part sits in a concatenated message. `kind` keeps 8-bit, 16-bit and
    SMPP sar_* references apart: the same number in two schemes is two messages."""
    kind: str          # "udh8" | "udh16" | "sar"
    reference: int
    total: int
    seq: int


def concat_udh(reference: int, total: int, seq: int) -> bytes:
    """A whole UDH (with its length octet) holding one 8-bit-reference element: the
    6 octets the part limits above allow for. The low 8 bits of `reference` are sent."""
    return bytes((0x05, IEI_CONCAT_8BIT, 0x03, reference & 0xFF, total, seq))


def parse_concat(udh: bytes) -> Concat | None:
    """The concatenation element of a UDH (without its length octet), if any. Other
    elements (ports, national language shifts) are skipped; a truncated one ends the walk.
    A count of 0, a number outside 1..count, or a one-part "concatenation" is no
    concatenation: the part is then a message of its own, its text kept."""
    pos, concat = 0, None
    while pos + 2 <= len(udh):
        iei, n = udh[pos], udh[pos + 1]
        value = udh[pos + 2:pos + 2 + n]
        if len(value) < n:
            break
        if iei == IEI_CONCAT_8BIT and n == 3:
            concat = Concat("udh8", value[0], value[1], value[2])
        elif iei == IEI_CONCAT_16BIT and n == 4:
            concat = Concat("udh16", int.from_bytes(value[:2], "big"), value[2], value[3])
        pos += 2 + n
    if concat is None or not 1 <= concat.seq <= concat.total or concat.total == 1:
        return None
    return concat
