"""Delivery receipts, sans-I/O: parsing, message id normalisation, matching.

A receipt is a deliver_sm with esm_class bit 2 set (0x04; 0x20 for an intermediate
notification). Its id comes in the receipted_message_id TLV or in the text
(`id:... sub:... dlvrd:... submit date:... done date:... stat:... err:... text:...`,
3.4 Appendix B), its state in the message_state TLV or the text's `stat:`.

Receipts are unreliable in every way the field knows: twice, out of order, several per
message (intermediate then final), and the id in another spelling than the
submit_sm_resp gave. `message_id_keys()` is the one rule for spellings; `ReceiptMatcher`
applies it and keeps each message's state monotonic.
"""

from __future__ import annotations

import enum
import re
import string
from collections.abc import Hashable
from dataclasses import dataclass

from gatewayd.smpp.pdu import Pdu
from gatewayd.smpp.sms import decode_short_message

ESM_CLASS_TYPE_MASK = 0x3C
ESM_CLASS_RECEIPT = 0x04
ESM_CLASS_INTERMEDIATE = 0x20


class MessageState(enum.IntEnum):
    """message_state values (3.4 §5.2.28)."""
    ENROUTE = 1
    DELIVERED = 2
    EXPIRED = 3
    DELETED = 4
    UNDELIVERABLE = 5
    ACCEPTED = 6
    UNKNOWN = 7
    REJECTED = 8

    @property
    def final(self) -> bool:
        return self not in (MessageState.ENROUTE, MessageState.UNKNOWN)


_TEXT_STATES = {
    "DELIVRD": MessageState.DELIVERED, "DELIVERED": MessageState.DELIVERED,
    "EXPIRED": MessageState.EXPIRED, "DELETED": MessageState.DELETED,
    "UNDELIV": MessageState.UNDELIVERABLE, "UNDELIVERABLE": MessageState.UNDELIVERABLE,
    "ACCEPTD": MessageState.ACCEPTED, "ACCEPTED": MessageState.ACCEPTED,
    "UNKNOWN": MessageState.UNKNOWN, "REJECTD": MessageState.REJECTED,
    "REJECTED": MessageState.REJECTED, "ENROUTE": MessageState.ENROUTE,
}
_KEYS = re.compile(r"\b(id|sub|dlvrd|submit date|done date|stat|err|text)\s*:", re.IGNORECASE)


@dataclass(frozen=True)
class Receipt:
    message_id: str             # as the SMSC spelled it; match with message_id_keys()
    state: MessageState
    error: str | None           # the text's err: (network specific)
    source_addr: str            # the phone the message went to
    submit_date: str | None = None
    done_date: str | None = None
    text: str = ""


def receipt_text_fields(text: str) -> dict[str, str]:
    """'id:1 sub:001 ... text:hi' -> {'id': '1', 'sub': '001', ..., 'text': 'hi'}."""
    marks = list(_KEYS.finditer(text))
    out: dict[str, str] = {}
    for i, m in enumerate(marks):
        key = m.group(1).lower()
        if key == "text":
            out[key] = text[m.end():]
            break
        stop = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        out.setdefault(key, text[m.end():stop].strip())
    return out


def is_receipt(pdu: Pdu) -> bool:
    kind = (pdu.get("esm_class") or 0) & ESM_CLASS_TYPE_MASK
    return kind in (ESM_CLASS_RECEIPT, ESM_CLASS_INTERMEDIATE) or bool(
        pdu.get("receipted_message_id"))


def parse_receipt(pdu: Pdu) -> Receipt | None:
    """A receipt deliver_sm -> Receipt; None when it is not one or carries no id.
    The TLVs win over the text: they are typed, the text is free-form."""
    if not is_receipt(pdu):
        return None
    raw = pdu.get("short_message") or pdu.get("message_payload") or b""
    text = decode_short_message(raw, pdu.get("data_coding") or 0)
    parts = receipt_text_fields(text)
    message_id = (pdu.get("receipted_message_id") or "").strip() or parts.get("id", "")
    if not message_id:
        return None
    state: MessageState | None = None
    tlv_state = pdu.get("message_state")
    if tlv_state in MessageState._value2member_map_:
        state = MessageState(tlv_state)
    if state is None:
        state = _TEXT_STATES.get(parts.get("stat", "").upper(), MessageState.UNKNOWN)
    return Receipt(message_id, state, parts.get("err"), pdu.get("source_addr") or "",
                   parts.get("submit date"), parts.get("done date"), parts.get("text", ""))


# -- message ids -----------------------------------------------------------------------
_HEX = frozenset(string.hexdigits)
ID_BASES = ("auto", "text", "hex", "dec")


def message_id_keys(raw: str, base: str = "auto") -> tuple[str, ...]:
    """The keys under which a message id is stored or looked up, strongest first.

    The rule. Let t be the id stripped of blanks, lower-cased and without leading
    zeros ("" becomes "0"). The "t:" key is t itself: two spellings that differ only in
    case or leading zeros are one id, whatever the SMSC's ids look like (UUIDs too).
    The "n:" keys are the number the id spells, in decimal:

    - base "text": no number; the id is opaque.
    - base "hex" / "dec": the SMSC's convention is known (like Kannel's msg-id-type):
      only that reading.
    - base "auto" (default): every reading the digits allow, hex first. The common case
      this is for: submit_sm_resp says "1a2b3c" (hex) and the receipt says "1715004",
      the same number in decimal; both have the key "n:1715004".

    Two ids are the same message when they share a key. Under "auto" an all-digit id
    has two readings, so two *different* messages can share an "n:" key ("10" read as
    hex and "16" read as decimal): the matcher tries the "t:" key first and refuses an
    "n:" key that names more than one message, instead of guessing. An SMSC whose
    convention is known should be configured with "hex" or "dec" per side.
    """
    if base not in ID_BASES:
        raise ValueError(f"base must be one of {ID_BASES}, not {base!r}")
    t = "".join(raw.split()).lower().lstrip("0") or "0"
    keys = ["t:" + t]
    if base in ("auto", "hex") and all(c in _HEX for c in t) and len(t) <= 32:
        keys.append(f"n:{int(t, 16)}")
    if base in ("auto", "dec") and t.isascii() and t.isdigit():
        keys.append(f"n:{int(t, 10)}")
    if base in ("hex", "dec") and len(keys) == 2:
        return (keys[1],)   # a declared base: the number is the id
    return tuple(dict.fromkeys(keys))


@dataclass(frozen=True)
class ReceiptUpdate:
    """What a receipt did to one submitted message (a part of an SMS)."""
    ref: Hashable
    receipt: Receipt
    state: MessageState         # the message's state after this receipt
    changed: bool               # False: a duplicate, stale or conflicting receipt


@dataclass(frozen=True)
class ReceiptUnmatched:
    receipt: Receipt
    ambiguous: tuple[Hashable, ...] = ()   # refs that shared its only matching key


@dataclass
class _Tracked:
    ref: Hashable
    keys: tuple[str, ...]
    expires_at: float
    state: MessageState | None = None


class ReceiptMatcher:
    """Submitted message ids -> the ref the caller gave, and each message's state.

    State only moves forward: a final state (DELIVERED, UNDELIVERABLE, ...) is never
    replaced, so an ENROUTE arriving after DELIVRD, or a second DELIVRD, changes
    nothing and says so (`changed=False`)."""

    def __init__(self, submit_base: str = "auto", receipt_base: str = "auto",
                 ttl: float = 72 * 3600.0) -> None:
        message_id_keys("0", submit_base)
        message_id_keys("0", receipt_base)
        self.submit_base, self.receipt_base, self.ttl = submit_base, receipt_base, ttl
        self._by_key: dict[str, list[_Tracked]] = {}

    def __len__(self) -> int:
        return len({id(t) for ts in self._by_key.values() for t in ts})

    def submitted(self, message_id: str, ref: Hashable, now: float) -> None:
        tracked = _Tracked(ref, message_id_keys(message_id, self.submit_base), now + self.ttl)
        for key in tracked.keys:
            self._by_key.setdefault(key, []).append(tracked)

    def match(self, receipt: Receipt, now: float) -> ReceiptUpdate | ReceiptUnmatched:
        ambiguous: tuple[Hashable, ...] = ()
        for key in message_id_keys(receipt.message_id, self.receipt_base):
            found = [t for t in self._by_key.get(key, ()) if t.expires_at > now]
            if len(found) > 1:
                ambiguous = tuple(t.ref for t in found)
                continue
            if found:
                return self._apply(found[0], receipt)
        return ReceiptUnmatched(receipt, ambiguous)

    def _apply(self, tracked: _Tracked, receipt: Receipt) -> ReceiptUpdate:
        old = tracked.state
        if old is not None and (old.final or old == receipt.state):
            return ReceiptUpdate(tracked.ref, receipt, old, False)
        tracked.state = receipt.state
        return ReceiptUpdate(tracked.ref, receipt, receipt.state, True)

    def expire(self, now: float) -> None:
        for key in list(self._by_key):
            alive = [t for t in self._by_key[key] if t.expires_at > now]
            if alive:
                self._by_key[key] = alive
            else:
                del self._by_key[key]
