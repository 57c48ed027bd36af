"""SMS text over SMPP, sans-I/O: alphabet choice, splitting, UDH, decoding.

Outbound text goes as GSM-7 when every character is in GSM 03.38 (menus/gsm0338.py),
else as UCS-2 (UTF-16BE). GSM-7 goes with data_coding 0 as *unpacked* septets, one per
octet: that is what SMSCs expect over SMPP for their default alphabet; they pack for
the air interface themselves.

Length limits are those of one SMS on the air (140 octets of user data):

- GSM-7: 160 septets alone, 153 per part when a 6-octet concatenation UDH takes
  7 septets (48 bits plus one fill bit);
- UCS-2: 70 UTF-16 code units alone, 67 per part.

Parts are cut between characters, never inside one: an ESC + extension character pair
(€, {, [ ...) and a UTF-16 surrogate pair (emoji) always stay in one part, because a
phone that receives half of either shows garbage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from menus import gsm0338

DATA_CODING_DEFAULT = 0x00   # SMSC default alphabet: GSM 03.38 here
DATA_CODING_IA5 = 0x01
DATA_CODING_LATIN1 = 0x03
DATA_CODING_UCS2 = 0x08

ESM_CLASS_UDHI = 0x40
IEI_CONCAT_8BIT = 0x00
IEI_CONCAT_16BIT = 0x08

GSM7_SINGLE, GSM7_PART = 160, 153
UCS2_SINGLE, UCS2_PART = 70, 67
MAX_PARTS = 255   # the UDH's part count is one octet

REGISTERED_DELIVERY_RECEIPT = 0x01   # receipt on final outcome, success or failure


class LongMode:
    UDH = "udh"                      # concatenated parts, each with a UDH
    PAYLOAD = "message_payload"      # one PDU, the SMSC splits
    ALL = (UDH, PAYLOAD)


@dataclass(frozen=True)
class Encoded:
    data_coding: int
    units: tuple[bytes, ...]   # one entry per character: never cut inside one

    @property
    def octets(self) -> bytes:
        return b"".join(self.units)

    @property
    def length(self) -> int:
        """Septets (GSM-7) or UTF-16 code units (UCS-2)."""
        n = len(self.octets)
        return n if self.data_coding == DATA_CODING_DEFAULT else n // 2


def encode_text(text: str) -> Encoded:
    if gsm0338.is_gsm7(text):
        return Encoded(DATA_CODING_DEFAULT,
                       tuple(bytes(gsm0338.encode_septets(ch)) for ch in text))
    return Encoded(DATA_CODING_UCS2, tuple(ch.encode("utf-16-be") for ch in text))


def split(encoded: Encoded) -> list[bytes]:
    """The user data of each part (without UDH): one part if it fits alone."""
    gsm = encoded.data_coding == DATA_CODING_DEFAULT
    single, per_part = (GSM7_SINGLE, GSM7_PART) if gsm else (UCS2_SINGLE, UCS2_PART)
    width = 1 if gsm else 2
    if encoded.length <= single:
        return [encoded.octets]
    parts: list[bytes] = []
    current = bytearray()
    for unit in encoded.units:
        if (len(current) + len(unit)) // width > per_part:
            parts.append(bytes(current))
            current = bytearray()
        current += unit
    if current:
        parts.append(bytes(current))
    return parts


def concat_udh(reference: int, total: int, seq: int) -> bytes:
    """UDH with one 8-bit-reference concatenation element (23.040 §9.2.3.24.1)."""
    return bytes((0x05, IEI_CONCAT_8BIT, 0x03, reference & 0xFF, total, seq))


def submit_sm_fields(text: str, *, source_addr: str, destination_addr: str,
                     reference: int, long_mode: str = LongMode.UDH,
                     registered_delivery: int = REGISTERED_DELIVERY_RECEIPT,
                     source_addr_ton: int = 0, source_addr_npi: int = 0,
                     dest_addr_ton: int = 1, dest_addr_npi: int = 1,
                     service_type: str = "") -> list[dict[str, Any]]:
    """The submit_sm fields of each PDU that carries `text`, in order.

    `reference` numbers the concatenated message (its low 8 bits go in the UDH): give
    each message its own, e.g. from its outbox row id. Raises ValueError for a text
    that would need more than 255 parts."""
    if long_mode not in LongMode.ALL:
        raise ValueError(f"long_mode must be one of {LongMode.ALL}, not {long_mode!r}")
    encoded = encode_text(text)
    base = {
        "service_type": service_type,
        "source_addr_ton": source_addr_ton, "source_addr_npi": source_addr_npi,
        "source_addr": source_addr,
        "dest_addr_ton": dest_addr_ton, "dest_addr_npi": dest_addr_npi,
        "destination_addr": destination_addr,
        "registered_delivery": registered_delivery,
        "data_coding": encoded.data_coding,
        "esm_class": 0,
    }
    chunks = split(encoded)
    if len(chunks) == 1:
        return [{**base, "short_message": chunks[0]}]
    if long_mode == LongMode.PAYLOAD:
        return [{**base, "message_payload": encoded.octets}]
    if len(chunks) > MAX_PARTS:
        raise ValueError(f"text needs {len(chunks)} parts; at most {MAX_PARTS}")
    total = len(chunks)
    return [{**base, "esm_class": ESM_CLASS_UDHI,
             "short_message": concat_udh(reference, total, i) + chunk}
            for i, chunk in enumerate(chunks, start=1)]


# -- inbound ---------------------------------------------------------------------------
def decode_short_message(data: bytes, data_coding: int) -> str:
    """User data (UDH already removed) -> text. Never raises."""
    dc = data_coding or 0
    if dc < 0x10:
        # SMPP's own values (3.4 §5.2.19); 0x0F is USSD's "GSM-7, language unspecified".
        alphabet = {DATA_CODING_UCS2: "ucs2", DATA_CODING_LATIN1: "latin-1",
                    DATA_CODING_IA5: "ascii", 0x02: "octets", 0x04: "octets",
                    0x06: "iso8859-5", 0x07: "iso8859-8"}.get(dc, "gsm")
    elif dc & 0x80 == 0:
        # GSM 03.38 general data coding groups: the alphabet is in bits 3..2.
        alphabet = ("gsm", "octets", "ucs2", "gsm")[(dc >> 2) & 3]
    elif dc & 0xF0 == 0xF0:
        alphabet = "octets" if dc & 0x04 else "gsm"
    elif dc & 0xF0 == 0xE0:
        alphabet = "ucs2"
    else:
        alphabet = "gsm"
    if alphabet == "ucs2":
        return data.decode("utf-16-be", errors="replace")
    if alphabet == "gsm":
        # Unpacked septets; a stray high bit is an SMSC sending Latin-1 by mistake.
        return gsm0338.decode_septets(bytes(b & 0x7F for b in data))
    if alphabet == "octets":
        return data.decode("latin-1")   # 8-bit data is no text: keep every octet
    return data.decode(alphabet, errors="replace")


@dataclass(frozen=True)
class Concat:
    """Where one part sits in a concatenated message. `kind` keeps 8-bit, 16-bit and
    sar_* references apart: the same number in two schemes is two messages."""
    kind: str          # "udh8" | "udh16" | "sar"
    reference: int
    total: int
    seq: int


def split_udh(payload: bytes) -> tuple[Concat | None, bytes]:
    """short_message with UDHI set -> (concatenation element if any, user data).
    A UDH longer than the payload is treated as no UDH: the text is kept, not lost."""
    if not payload:
        return None, payload
    udhl = payload[0]
    if 1 + udhl > len(payload):
        return None, payload
    udh, body = payload[1:1 + udhl], payload[1 + udhl:]
    pos, concat = 0, None
    while pos + 2 <= len(udh):
        iei, length = udh[pos], udh[pos + 1]
        value = udh[pos + 2:pos + 2 + length]
        if len(value) < length:
            break
        if iei == IEI_CONCAT_8BIT and length == 3:
            concat = Concat("udh8", value[0], value[1], value[2])
        elif iei == IEI_CONCAT_16BIT and length == 4:
            concat = Concat("udh16", int.from_bytes(value[:2], "big"), value[2], value[3])
        pos += 2 + length
    if concat is not None and not 1 <= concat.seq <= concat.total:
        concat = None
    return concat, body


def relative_validity(seconds: float) -> str:
    """validity_period in SMPP's relative form "YYMMDDhhmmss000R" (3.4 §7.1.1.2)."""
    s = max(60, int(seconds))   # an SMSC may reject anything under a minute
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    years, days = divmod(days, 365)
    months, days = divmod(days, 30)
    if years > 99:
        years, months, days = 99, 11, 29
    return f"{years:02d}{months:02d}{days:02d}{hours:02d}{minutes:02d}{s:02d}000R"
