"""Inbound SMS and status reports, sans-I/O: reassembly, duplicates, TP-MR matching.

The SIM is the durable store for parts: a part stays there until the whole message
it belongs to is committed, so a restart loses nothing (the next AT+CMGL lists the
parts again and reassembly starts over). What this module keeps in memory is only
what makes the next decision cheap: which SIM locations are already being handled,
which parts are waiting for their siblings, and which messages were committed lately.

Duplicates come from the network (a late +CNMA makes an SMSC deliver again) and from
ourselves (a delete that failed after a commit). Their key is the SMSC's own
identity of the message: sender, service-centre timestamp (TP-SCTS), concatenation
reference and part, and a hash of the user data. Two equal texts a villager sends a
minute apart have different timestamps and are two messages.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field, replace

from modem import pdu as P
from modem.events import Location, SmsIn, StatusReport

# Parts of one message reach the modem within seconds; after five minutes the rest is
# not coming, and the parts hold SIM slots (a SIM has 20-50) that new SMS need.
DEFAULT_TIMEOUT = 300.0
# How long a committed message is remembered. Resends come within minutes; a week is
# cheap (a key is 32 bytes) and covers a delete that keeps failing.
DEFAULT_REMEMBER = 7 * 86400.0
MAX_REMEMBERED = 50_000


def part_key(d: P.Deliver) -> str:
    c = d.concat
    h = hashlib.sha256()
    for item in (d.sender, d.scts_raw.hex(),
                 f"{c.kind}:{c.reference}:{c.total}:{c.seq}" if c else "-",
                 hashlib.sha256(bytes((d.alphabet,)) + d.user_data).hexdigest()):
        h.update(item.encode() + b"\0")
    return h.hexdigest()[:32]


def message_key(part_keys: list[str]) -> str:
    if len(part_keys) == 1:
        return part_keys[0]
    return hashlib.sha256("\0".join(part_keys).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Ready:
    """A message to commit; after the commit, delete `sms.locations` from the SIM."""
    sms: SmsIn
    keys: tuple[str, ...]          # part keys, remembered once committed


@dataclass(frozen=True)
class Drop:
    """A stored copy of something already committed: delete it, tell no one."""
    location: Location
    key: str


@dataclass
class _Group:
    first_seen: float
    parts: dict[int, tuple[str, P.Deliver]] = field(default_factory=dict)
    locations: list[Location] = field(default_factory=list)


class Inbox:
    def __init__(self, modem: str, *, timeout: float = DEFAULT_TIMEOUT,
                 remember: float = DEFAULT_REMEMBER, max_remembered: int = MAX_REMEMBERED) -> None:
        self.modem = modem
        self.timeout, self.remember, self.max_remembered = timeout, remember, max_remembered
        self.duplicates = 0
        self._groups: dict[tuple, _Group] = {}
        self._handled: dict[Location, str] = {}          # location -> part key
        self._committed: OrderedDict[str, float] = OrderedDict()   # key -> forget at

    def offer(self, location: Location | None, d: P.Deliver, now: float) -> list[Ready | Drop]:
        """A stored SMS-DELIVER (from +CMTI then AT+CMGR, or from a listing)."""
        key = part_key(d)
        if location is not None:
            if self._handled.get(location) == key:
                return []                      # already waiting or being committed
            self._handled[location] = key
        if self._known(key, now):
            self.duplicates += 1
            if location is not None:
                del self._handled[location]
                return [Drop(location, key)]
            return []
        c = d.concat
        if c is None:
            locs = (location,) if location is not None else ()
            return [self._ready([(key, d)], locs, d.concat, missing=())]
        gkey = (d.sender, c.kind, c.reference, c.total)
        out: list[Ready | Drop] = []
        g = self._groups.get(gkey)
        if g is not None and c.seq in g.parts and g.parts[c.seq][0] != key:
            # The same reference reused for another message while parts of the first
            # still wait: the first will not complete. Hand over what it has.
            out.extend(self._flush(gkey))
            g = None
        if g is None:
            g = self._groups[gkey] = _Group(now)
        if location is not None:
            g.locations.append(location)
        if c.seq in g.parts:
            self.duplicates += 1           # a second copy of a waiting part
            return out
        g.parts[c.seq] = (key, d)
        if len(g.parts) == c.total:
            del self._groups[gkey]
            ordered = [g.parts[i] for i in range(1, c.total + 1)]
            out.append(self._ready(ordered, tuple(g.locations), c, missing=()))
        return out

    def expire(self, now: float) -> list[Ready]:
        """Messages whose missing parts waited too long, with what did arrive."""
        out = []
        for gkey, g in list(self._groups.items()):
            if g.first_seen + self.timeout <= now:
                out.extend(self._flush(gkey))
        for key, until in list(self._committed.items()):
            if until > now:
                break
            del self._committed[key]
        return out

    def next_deadline(self) -> float | None:
        times = [g.first_seen + self.timeout for g in self._groups.values()]
        return min(times) if times else None

    def committed(self, ready: Ready, now: float) -> None:
        """The daemon has the message; its locations are about to be deleted."""
        for key in (*ready.keys, ready.sms.key):
            self._committed[key] = now + self.remember
            self._committed.move_to_end(key)
        while len(self._committed) > self.max_remembered:
            self._committed.popitem(last=False)
        for loc in ready.sms.locations:
            self._handled.pop(loc, None)

    def deleted(self, location: Location) -> None:
        self._handled.pop(location, None)

    def not_committed(self, ready: Ready) -> None:
        """The commit failed: forget the locations so that the next listing offers
        the parts again (they are still on the SIM)."""
        for loc in ready.sms.locations:
            self._handled.pop(loc, None)

    @property
    def waiting(self) -> int:
        return len(self._groups)

    def _known(self, key: str, now: float) -> bool:
        until = self._committed.get(key)
        return until is not None and until > now

    def _flush(self, gkey: tuple) -> list[Ready]:
        g = self._groups.pop(gkey)
        total = gkey[3]
        seqs = sorted(g.parts)
        missing = tuple(i for i in range(1, total + 1) if i not in g.parts)
        return [self._ready([g.parts[s] for s in seqs], tuple(g.locations),
                            g.parts[seqs[0]][1].concat, missing)]

    def _ready(self, parts: list[tuple[str, P.Deliver]], locations: tuple[Location, ...],
               concat: P.Concat | None, missing: tuple[int, ...]) -> Ready:
        first = parts[0][1]
        # Join the parts' user data before decoding: a phone that cut an escape pair
        # or a surrogate pair between two parts still reads right.
        joined = replace(first, user_data=b"".join(d.user_data for _, d in parts))
        keys = [k for k, _ in parts]
        sms = SmsIn(self.modem, first.sender, joined.text, message_key(keys),
                    concat.total if concat else 1, first.scts, missing, locations)
        return Ready(sms, tuple(keys))


# -- status reports -------------------------------------------------------------------
def report_outcome(tp_st: int) -> str:
    """TP-ST (23.040 §9.2.3.15): 0x00-0x1F done (delivered, forwarded, replaced, SC
    specific); 0x20-0x3F temporary error, the SMSC keeps trying; 0x40-0x5F permanent
    error; 0x60-0x7F temporary error the SMSC gave up on. Reserved values count as
    failed, as the spec tells a receiver to treat them."""
    if tp_st < 0x20:
        return "delivered"
    if tp_st < 0x40:
        return "pending"
    return "failed"


def _tail(number: str) -> str:
    digits = "".join(ch for ch in number if ch.isdigit())
    return digits[-9:]     # 07xx…, 2547xx… and +2547xx… name the same phone


@dataclass
class _Sent:
    outbox_id: int
    msisdn: str
    parts: int
    outcomes: dict[int, str]
    forget_at: float


class ReportMatcher:
    """(modem, TP-MR) -> the outbox row and part it belongs to.

    A modem's TP-MR is one octet and wraps after 256 sends, so an entry is replaced by
    a newer send with the same number, and a report must also name the recipient the
    message went to. Reports arrive twice and out of order; outcomes only move from
    pending to final."""

    def __init__(self, remember: float = 3 * 86400.0) -> None:
        self.remember = remember
        self._by_ref: dict[tuple[str, int], tuple[_Sent, int]] = {}
        self.unmatched = 0

    def sent(self, modem: str, references: tuple[int, ...] | list[int], outbox_id: int,
             msisdn: str, now: float) -> None:
        entry = _Sent(outbox_id, msisdn, len(references), {}, now + self.remember)
        for seq, mr in enumerate(references, start=1):
            self._by_ref[(modem, mr & 0xFF)] = (entry, seq)

    def match(self, modem: str, report: P.StatusReport, now: float,
              location: Location | None = None) -> StatusReport:
        outcome = report_outcome(report.tp_st)
        found = self._by_ref.get((modem, report.tp_mr))
        if found is not None:
            entry, seq = found
            if entry.forget_at <= now or _tail(entry.msisdn) != _tail(report.recipient):
                found = None
        if found is None:
            self.unmatched += 1
            return StatusReport(modem, report.tp_mr, report.recipient, report.tp_st, outcome,
                                None, discharge=report.discharge, location=location)
        entry, seq = found
        if entry.outcomes.get(seq) in (None, "pending"):
            entry.outcomes[seq] = outcome
        done = entry.outcomes
        message = None
        if "failed" in done.values():
            message = "failed"
        elif len(done) == entry.parts and all(v == "delivered" for v in done.values()):
            message = "delivered"
        return StatusReport(modem, report.tp_mr, report.recipient, report.tp_st, outcome,
                            entry.outbox_id, seq, entry.parts, message, report.discharge,
                            location)

    def expire(self, now: float) -> None:
        for k, (entry, _) in list(self._by_ref.items()):
            if entry.forget_at <= now:
                del self._by_ref[k]
