"""Which channel sends the outbox's SMS right now: SMPP while it is bound, the modems
while it has been unbound for a while. Sans-I/O: the clock comes in as an argument.

Why a takeover at all: an SMSC bind drops for hours when the operator's link or
account has trouble, and a villager's "Loan approved" SMS should not wait for it while
the box has modems that can send. Why after a grace period rather than at once: a bind
that drops and comes back within seconds (an SMSC restart, a re-bind after an
enquire_link timeout) is common, and flapping between channels sends a burst of SMS
from the box's own SIMs for nothing. Why SMPP takes back at once on a bind: it is the
operator's bulk path, cheaper per message and not limited by a SIM's send rate.

Only one channel may offer outbox rows at a time, and neither may offer a row the
other still holds (in its sender's queue, its window, or a modem), otherwise one SMS
goes out twice; each feeder asks again after its read, since the route may have
switched while it waited. SMPP takes rows only while bound, so nothing waits in an
unbound sender out of the modems' reach; on a takeover it gives back the rows it never
wrote to the SMSC, and keeps (for its next bind) only those that may have reached it.
A row the SMSC accepted in part stays with SMPP: a modem could only send it all again,
from another address, and the phone would show it torn.
"""

from __future__ import annotations

from typing import Protocol

SMPP, MODEMS = "smpp", "modems"


class Channel(Protocol):
    def held_ids(self) -> frozenset[int]: ...

    def can_send(self) -> bool: ...


class SmsRoute:
    def __init__(self, takeover_after: float) -> None:
        # 0 disables the takeover: the modems then only receive while SMPP is enabled.
        self.takeover_after = takeover_after
        self.channels: dict[str, Channel] = {}
        self.current: str | None = None
        self.switches = 0
        self._unbound_since: float | None = None

    def sender(self, now: float) -> str | None:
        """The channel that may offer outbox rows now (None: nobody can send)."""
        choice = self._choose(now)
        if choice != self.current:
            self.current = choice
            self.switches += 1
        return choice

    def _choose(self, now: float) -> str | None:
        smpp, modems = self.channels.get(SMPP), self.channels.get(MODEMS)
        modems_ok = modems is not None and modems.can_send()
        if smpp is None:
            return MODEMS if modems_ok else None
        if smpp.can_send():
            self._unbound_since = None
            return SMPP
        if self._unbound_since is None:
            self._unbound_since = now
        if self.takeover_after > 0 and modems_ok and now - self._unbound_since >= self.takeover_after:
            return MODEMS
        return SMPP   # it queues in its sender and goes on the bind

    def held(self) -> frozenset[int]:
        """Every outbox id some channel holds: offered to none, expired by none."""
        out: frozenset[int] = frozenset()
        for ch in self.channels.values():
            out |= ch.held_ids()
        return out
