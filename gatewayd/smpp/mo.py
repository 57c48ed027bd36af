"""Mobile-originated SMS, sans-I/O: one deliver_sm -> one part; parts -> one text.

Concatenated messages come as UDH parts (8- or 16-bit reference) or with sar_* TLVs,
in any order, sometimes twice (an SMSC resends a part whose deliver_sm_resp it did not
see). The Reassembler joins the parts' *octets* before decoding, so an escape pair or
a surrogate pair that a sloppy phone split across two parts still decodes.

Durability is the caller's: commit each part (keyed by `part_key`) before sending its
deliver_sm_resp, and feed the committed parts to a Reassembler (again after a restart).
Holding the resp of part 1 until part 3 arrives would stall an SMSC whose window is
smaller than the message.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from gatewayd.smpp.pdu import Pdu
from gatewayd.smpp.sms import ESM_CLASS_UDHI, Concat, decode_short_message, split_udh

# The parts of one message arrive within seconds; a minute later the rest is lost.
DEFAULT_TIMEOUT = 120.0
# How long a completed message's reference is remembered, to drop resent parts. An
# SMSC resends after its response timeout and retry interval: minutes, not hours.
DEFAULT_REMEMBER = 1800.0


@dataclass(frozen=True)
class MoPart:
    source_addr: str
    destination_addr: str
    data_coding: int
    body: bytes                 # user data without UDH
    concat: Concat | None       # None: a message in one part

    @property
    def group(self) -> tuple:
        c = self.concat
        return (self.source_addr, self.destination_addr,
                (c.kind, c.reference, c.total) if c else None)


def mo_part(pdu: Pdu) -> MoPart:
    payload = pdu.get("short_message") or pdu.get("message_payload") or b""
    concat = None
    if (pdu.get("esm_class") or 0) & ESM_CLASS_UDHI:
        concat, payload = split_udh(payload)
    elif pdu.get("sar_msg_ref_num") is not None and pdu.get("sar_total_segments"):
        total, seq = pdu["sar_total_segments"], pdu.get("sar_segment_seqnum") or 0
        if 1 <= seq <= total:
            concat = Concat("sar", pdu["sar_msg_ref_num"], total, seq)
    if concat is not None and concat.total == 1:
        concat = None
    return MoPart(pdu.get("source_addr") or "", pdu.get("destination_addr") or "",
                  pdu.get("data_coding") or 0, payload, concat)


def part_key(part: MoPart) -> str:
    """Stable id of one part, for the store's duplicate check. Two sendings of the same
    part have the same key. So do two equal one-part texts from one phone: dedupe those
    only within a short window (DEFAULT_REMEMBER), or a villager's second "BAL" is lost."""
    c = part.concat
    h = hashlib.sha256()
    for item in (part.source_addr, part.destination_addr, str(part.data_coding),
                 f"{c.kind}:{c.reference}:{c.total}:{c.seq}" if c else "-"):
        h.update(item.encode() + b"\0")
    h.update(part.body)
    return h.hexdigest()[:32]


@dataclass(frozen=True)
class MoMessage:
    source_addr: str
    destination_addr: str
    text: str
    parts: int
    key: str                    # part_key of its first part: the message's id


@dataclass(frozen=True)
class Waiting:
    have: int
    total: int


@dataclass(frozen=True)
class Duplicate:
    key: str


@dataclass(frozen=True)
class Incomplete:
    """Parts that waited too long for the rest; the text of what did arrive."""
    source_addr: str
    destination_addr: str
    text: str
    have: tuple[int, ...]
    total: int


@dataclass
class _Group:
    first_seen: float
    parts: dict[int, MoPart]


class Reassembler:
    def __init__(self, timeout: float = DEFAULT_TIMEOUT,
                 remember: float = DEFAULT_REMEMBER) -> None:
        self.timeout, self.remember = timeout, remember
        self.duplicates = 0
        self._open: dict[tuple, _Group] = {}
        self._done: dict[tuple, float] = {}   # group -> forget at

    def add(self, part: MoPart, now: float) -> MoMessage | Waiting | Duplicate:
        c = part.concat
        if c is None:
            return MoMessage(part.source_addr, part.destination_addr,
                             decode_short_message(part.body, part.data_coding), 1,
                             part_key(part))
        group = part.group
        if self._done.get(group, 0.0) > now:
            self.duplicates += 1
            return Duplicate(part_key(part))
        g = self._open.setdefault(group, _Group(now, {}))
        if c.seq in g.parts:
            self.duplicates += 1
            return Duplicate(part_key(part))
        g.parts[c.seq] = part
        if len(g.parts) < c.total:
            return Waiting(len(g.parts), c.total)
        del self._open[group]
        self._done[group] = now + self.remember
        ordered = [g.parts[i] for i in range(1, c.total + 1)]
        return MoMessage(part.source_addr, part.destination_addr, message_text(ordered),
                         c.total, part_key(ordered[0]))

    def expire(self, now: float) -> list[Incomplete]:
        out = []
        for group, g in list(self._open.items()):
            if g.first_seen + self.timeout <= now:
                del self._open[group]
                self._done[group] = now + self.remember
                seqs = tuple(sorted(g.parts))
                any_part = g.parts[seqs[0]]
                out.append(Incomplete(any_part.source_addr, any_part.destination_addr,
                                      message_text([g.parts[s] for s in seqs]), seqs,
                                      any_part.concat.total))
        for group, until in list(self._done.items()):
            if until <= now:
                del self._done[group]
        return out

    def next_deadline(self) -> float | None:
        times = [g.first_seen + self.timeout for g in self._open.values()]
        return min(times) if times else None


def message_text(parts: list[MoPart]) -> str:
    """The text of parts in order: octets joined first, then decoded once, so that a
    character split across two parts still reads."""
    return decode_short_message(b"".join(p.body for p in parts), parts[0].data_coding)

