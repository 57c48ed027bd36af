"""What the modem pool tells the daemon, and what the daemon gives it. Plain data.

Inbound events (SmsIn, StatusReport, Undecodable) go through the pool's `commit`
callback, and the message leaves the SIM only after that callback has returned: the
daemon commits first, the SIM forgets second. The outbound ones (Submitted,
SendFailed) go through the same callback so that the outbox learns each outcome.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Location:
    """Where a modem keeps a stored message: memory ("SM" SIM, "ME" phone, "SR"
    status reports) and index, as in +CMTI: "SM",3."""
    memory: str
    index: int


@dataclass(frozen=True)
class OutgoingSms:
    """One outbox row for the modems. `outbox_id` also numbers the concatenation
    reference of a long text, and is what every outcome event names."""
    outbox_id: int
    msisdn: str
    text: str


@dataclass(frozen=True)
class SmsIn:
    """A mobile-originated SMS, reassembled and deduplicated.

    `key` is stable: the same SMS delivered twice (a late +CNMA, a modem listing it
    again after a restart) has the same key, so the store's insert can be idempotent
    on it. `missing` lists parts that never came within the reassembly timeout: the
    text is what did arrive."""
    modem: str
    sender: str
    text: str
    key: str
    parts: int
    scts: dt.datetime | None
    missing: tuple[int, ...] = ()
    locations: tuple[Location, ...] = field(default=(), compare=False)


@dataclass(frozen=True)
class StatusReport:
    """An SMS-STATUS-REPORT, matched (when it can be) to the outbox row it is about.

    `outcome` is this part's: "delivered", "pending" (the SMSC is still trying) or
    "failed". `message_outcome` is the whole message's once it is known: delivered
    when every part is, failed as soon as one part failed, else None. `outbox_id` is
    None when the TP-MR is not one this pool sent (e.g. before a restart; the event
    still carries modem, TP-MR and recipient for the store to match)."""
    modem: str
    tp_mr: int
    recipient: str
    tp_st: int
    outcome: str
    outbox_id: int | None
    part: int | None = None
    parts: int | None = None
    message_outcome: str | None = None
    discharge: dt.datetime | None = None
    location: Location | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Undecodable:
    """A stored message whose PDU cannot be read. Committed (raw) like any other so
    that nothing is dropped unseen, then deleted so it does not fill the SIM."""
    modem: str
    pdu: str
    reason: str
    location: Location | None = None


@dataclass(frozen=True)
class Submitted:
    """The SMSC accepted every part. `references` are the parts' TP-MRs, in order:
    the status reports will name them (together with `modem`)."""
    outbox_id: int
    modem: str
    references: tuple[int, ...]
    attempts: int


@dataclass(frozen=True)
class SendFailed:
    """A send attempt failed. `final` False: the SMS went back to the pool's queue
    for another try (another modem when there is one); True: it was given up (a
    permanent +CMS ERROR, too many attempts, or `expired`: its deadline passed while
    it waited, and it was not sent at all)."""
    outbox_id: int
    modem: str | None
    error: str
    attempts: int
    final: bool
    expired: bool = False


Event = SmsIn | StatusReport | Undecodable | Submitted | SendFailed
