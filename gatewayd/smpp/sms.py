"""SMS text over SMPP, sans-I/O: alphabet choice, splitting, UDH, decoding.

Outbound text goes as GSM-7 when every character is in GSM 03.38 (menus/gsm0338.py),
else as UCS-2 (UTF-16BE). GSM-7 goes with data_coding 0 as *unpacked* septets, one per
octet: that is what SMSCs expect over SMPP for their default alphabet; they pack for
the air interface themselves.

Where a long text is cut, and the concatenation element that numbers its parts, are
menus/gsm0340.py's, shared with the modem channel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from menus import gsm0340
from menus.gsm0340 import Concat, concat_udh

__all__ = ["Concat", "concat_udh"]   # part of this module's interface, kept in one place

DATA_CODING_DEFAULT = 0x00   # SMSC default alphabet: GSM 03.38 here
DATA_CODING_IA5 = 0x01
DATA_CODING_LATIN1 = 0x03
DATA_CODING_UCS2 = 0x08

ESM_CLASS_UDHI = 0x40

REGISTERED_DELIVERY_RECEIPT = 0x01   # receipt on final outcome, success or failure


class LongMode:
    UDH = "udh"                      # concatenated parts, each with a UDH
    PAYLOAD = "message_payload"      # one PDU, the SMSC splits
    ALL = (UDH, PAYLOAD)


@dataclass(frozen=True)
class Encoded:
    data_coding: int
    octets: bytes


def encode_text(text: str) -> Encoded:
    """A whole text as one short_message (a USSD screen, never split)."""
    dcs, chars = gsm0340.units(text)
    return Encoded(dcs, b"".join(enc for _, enc in chars))


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
    parts = gsm0340.split(text)   # ValueError past 255 parts
    base = {
        "service_type": service_type,
        "source_addr_ton": source_addr_ton, "source_addr_npi": source_addr_npi,
        "source_addr": source_addr,
        "dest_addr_ton": dest_addr_ton, "dest_addr_npi": dest_addr_npi,
        "destination_addr": destination_addr,
        "registered_delivery": registered_delivery,
        "data_coding": parts[0].dcs,   # GSM-7 / UCS-2: the same numbers as data_coding
        "esm_class": 0,
    }
    if len(parts) == 1:
        return [{**base, "short_message": parts[0].data}]
    if long_mode == LongMode.PAYLOAD:
        return [{**base, "message_payload": b"".join(p.data for p in parts)}]
    total = len(parts)
    return [{**base, "esm_class": ESM_CLASS_UDHI,
             "short_message": concat_udh(reference, total, i) + part.data}
            for i, part in enumerate(parts, start=1)]


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
    shared = {"gsm": gsm0340.DCS_GSM7, "octets": gsm0340.DCS_8BIT, "ucs2": gsm0340.DCS_UCS2}
    if alphabet in shared:
        # Unpacked septets over SMPP: a stray high bit is an SMSC sending Latin-1 by
        # mistake, which the shared decoder masks; UCS-2 joins surrogate pairs.
        return gsm0340.decode_user_text(shared[alphabet], data)
    return data.decode(alphabet, errors="replace")


def split_udh(payload: bytes) -> tuple[Concat | None, bytes]:
    """short_message with UDHI set -> (concatenation element if any, user data).
    A UDH longer than the payload is treated as no UDH: the text is kept, not lost."""
    if not payload or 1 + payload[0] > len(payload):
        return None, payload
    udhl = payload[0]
    return gsm0340.parse_concat(payload[1:1 + udhl]), payload[1 + udhl:]


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
