"""USSD over SMPP, sans-I/O: deliver_sm -> dialog hop, reply -> submit_sm fields.

SMPP 3.4 carries USSD in the ussd_service_op TLV (0x0501): the network opens a dialog
with 1 (PSSR indication, the user dialled), continues it with 18 (USSR confirm, the
user answered); we answer with 2 (USSR request: show this and wait) or 17 (PSSR
response: show this, dialog over). Gateways differ in codes, abort signals,
service_type and whether they send its_session_info at all, so each difference is a
field of a named `Profile` picked in config, never a branch in code.

its_session_info (0x1383, 3.4 §5.3.2.43) is two octets: the session number, constant
for the dialog, then the dialogue unit's sequence number in bits 7..1 with bit 0 the
end-of-session flag. The dialog is keyed by source address and session number; where
a gateway sends none, by the source address alone (one dialog per phone at a time,
which is also what the network allows).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from gatewayd.smpp.pdu import Pdu
from gatewayd.smpp.sms import decode_short_message, encode_text

PSSD_INDICATION, PSSR_INDICATION, USSR_REQUEST, USSN_REQUEST = 0, 1, 2, 3
PSSD_RESPONSE, PSSR_RESPONSE, USSR_CONFIRM, USSN_CONFIRM = 16, 17, 18, 19
END_OF_SESSION = 0x0001


@dataclass(frozen=True)
class Profile:
    name: str
    op_start: frozenset[int] = frozenset({PSSR_INDICATION})
    op_continue: frozenset[int] = frozenset({USSR_CONFIRM})
    op_abort: frozenset[int] = frozenset()
    op_reply_continue: int = USSR_REQUEST
    op_reply_end: int = PSSR_RESPONSE
    service_type: str = "USSD"
    use_its_session_info: bool = True
    # An inbound unit with the end-of-session bit set means the user or network left.
    end_bit_is_abort: bool = True
    # "short_message" (<= 254 octets, plenty for a 182-character screen) or
    # "message_payload" for gateways that want it there.
    reply_field: str = "short_message"
    extra: dict[str, Any] = field(default_factory=dict, compare=False)


PROFILES: dict[str, Profile] = {
    "standard": Profile("standard"),
    # 6D Technologies (sixdee) gateways: 0x01 new, 0x12 continue, 0x81 user abort in;
    # 0x02 continue, 0x11 end out; service_type "USSD".
    "sixdee": Profile("sixdee", op_start=frozenset({0x01}), op_continue=frozenset({0x12}),
                      op_abort=frozenset({0x81}), op_reply_continue=0x02,
                      op_reply_end=0x11, service_type="USSD"),
    # Gateways (some Huawei) that send no its_session_info: dialogs by phone number.
    "no_session_info": Profile("no_session_info", use_its_session_info=False),
}


def profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown USSD profile {name!r} (known: {', '.join(PROFILES)})")


def is_ussd(pdu: Pdu) -> bool:
    return pdu.get("ussd_service_op") is not None


class HopKind(str, enum.Enum):
    START = "start"
    CONTINUE = "continue"
    ABORT = "abort"


@dataclass(frozen=True)
class UssdIn:
    """One unit from the network. For START, `text` is the dialled string ("*383#",
    "*383*1#": the router reads typed-ahead input from it); for CONTINUE, the one
    input the user typed; for ABORT, whatever came (usually nothing)."""
    session_key: str
    kind: HopKind
    text: str
    msisdn: str                  # source_addr: the phone
    service_addr: str            # destination_addr: our code as the gateway names it
    ussd_service_op: int
    its_session_info: int | None


@dataclass(frozen=True)
class NotUssd:
    reason: str


def session_key(pdu: Pdu, prof: Profile) -> str:
    source = pdu.get("source_addr") or ""
    info = pdu.get("its_session_info")
    if prof.use_its_session_info and info is not None:
        return f"{source}/{info >> 8}"
    return source


def parse_deliver_sm(pdu: Pdu, prof: Profile) -> UssdIn | NotUssd:
    op = pdu.get("ussd_service_op")
    if op is None:
        return NotUssd("no ussd_service_op")
    info = pdu.get("its_session_info")
    if op in prof.op_abort:
        kind = HopKind.ABORT
    elif op in prof.op_start:
        kind = HopKind.START
    elif op in prof.op_continue:
        kind = HopKind.CONTINUE
    else:
        return NotUssd(f"ussd_service_op {op} is not inbound in profile {prof.name}")
    if (kind is HopKind.CONTINUE and prof.end_bit_is_abort and info is not None
            and info & END_OF_SESSION):
        kind = HopKind.ABORT
    raw = pdu.get("short_message") or pdu.get("message_payload") or b""
    text = decode_short_message(raw, pdu.get("data_coding") or 0).strip()
    return UssdIn(session_key(pdu, prof), kind, text, pdu.get("source_addr") or "",
                  pdu.get("destination_addr") or "", op, info)


def reply_its_session_info(info: int | None, end: bool) -> int | None:
    """The gateway's value echoed, with the end-of-session flag set when we end: the
    gateway matches our reply to its dialog by this value, so it is not ours to renumber."""
    if info is None:
        return None
    return (info & 0xFFFE) | (END_OF_SESSION if end else 0)


def submit_sm_fields(hop: UssdIn, text: str, end: bool, prof: Profile) -> dict[str, Any]:
    """The submit_sm that answers `hop`: the screen `text`, continue or end. Source and
    destination are the inbound deliver_sm's, swapped."""
    encoded = encode_text(text)
    fields: dict[str, Any] = {
        "service_type": prof.service_type,
        "source_addr": hop.service_addr,
        "destination_addr": hop.msisdn,
        "data_coding": encoded.data_coding,
        "esm_class": 0,
        "registered_delivery": 0,   # a screen is shown now or never: no receipt
        "ussd_service_op": prof.op_reply_end if end else prof.op_reply_continue,
        prof.reply_field: encoded.octets,
    }
    if prof.reply_field == "short_message" and len(encoded.octets) > 254:
        fields.pop("short_message")
        fields["message_payload"] = encoded.octets
    if prof.use_its_session_info and hop.its_session_info is not None:
        fields["its_session_info"] = reply_its_session_info(hop.its_session_info, end)
    fields.update(prof.extra)
    return fields
