"""Which submit_sm goes out when, sans-I/O: submit rate, retries, slow-down, expiry.

The session keeps the window (how many in flight); the Sender decides what may go
next: messages in the order given (urgent ones, USSD screens, first: the network waits
only seconds for those), at most `rate` per second (a token bucket), and
after an error as the retry policy says. ESME_RTHROTTLED and ESME_RMSGQFUL mean the
SMSC is overloaded, so they pause *every* message (doubling per consecutive refusal up
to the rule's delay) and halve the rate, which then creeps back by a tenth of the
configured rate per accepted message (additive increase, multiplicative decrease, as
TCP does, because the SMSC's real limit is unknown and changes).

A message may carry an expiry (`expires_at`, on the caller's monotonic clock): one
not sent by then is given up as Expired, and one sent carries the time it has left
as its validity_period, so that the SMSC gives up on it too.
"""

from __future__ import annotations

import bisect
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

from gatewayd.smpp import pdu as P
from gatewayd.smpp.session import (
    RETRY_POLICY,
    UNANSWERED_RULE,
    RetryRule,
    SubmitSmResp,
    retry_rule,
)
from gatewayd.smpp.sms import relative_validity


@dataclass
class Outgoing:
    ref: Hashable
    fields: dict[str, Any]
    expires_at: float | None
    order: tuple[int, int]     # (0 urgent / 1 normal, arrival)
    attempts: int = 0
    not_before: float = 0.0
    # Refusals per command_status (None: no answer): each rule counts its own, so two
    # throttles do not use up the tries a later ESME_RSYSERR is allowed.
    refusals: dict[int | None, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Accepted:
    ref: Hashable
    message_id: str
    attempts: int


@dataclass(frozen=True)
class Retrying:
    ref: Hashable
    command_status: int | None     # None: no answer
    at: float
    attempts: int


@dataclass(frozen=True)
class Failed:
    ref: Hashable
    command_status: int | None
    reason: str
    attempts: int


@dataclass(frozen=True)
class Expired:
    ref: Hashable
    attempts: int


Outcome = Accepted | Retrying | Failed | Expired


@dataclass
class Sender:
    rate: float = 10.0                 # submit_sm per second, at most
    burst: int = 1
    policy: dict[int, RetryRule] = field(default_factory=lambda: dict(RETRY_POLICY))
    unanswered: RetryRule = UNANSWERED_RULE
    initial_pause: float = 1.0         # the first slow-down's pause
    min_rate: float = 0.2
    set_validity_period: bool = True

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.current_rate = self.rate
        self.paused_until = 0.0
        self._tokens = float(self.burst)
        self._refilled_at: float | None = None
        self._slowdowns = 0
        self._order = 0
        self._queue: list[Outgoing] = []     # sorted by `order`
        self._queued_refs: set[Hashable] = set()
        self._inflight: dict[Hashable, Outgoing] = {}

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    def enqueue(self, ref: Hashable, fields: dict[str, Any], now: float,
                expires_at: float | None = None, urgent: bool = False) -> None:
        """`urgent` goes ahead of every normal message (a USSD screen ahead of SMS)."""
        if ref in self._inflight or ref in self._queued_refs:
            raise ValueError(f"ref {ref!r} is already queued")
        self._order += 1
        self._insert(Outgoing(ref, dict(fields), expires_at,
                              (0 if urgent else 1, self._order), 0, now))

    def cancel(self, ref: Hashable) -> bool:
        """Take a message out of the queue before it goes (False once it is in flight or
        gone): the other parts of an SMS whose one part failed, say."""
        if ref not in self._queued_refs:
            return False
        self._queue = [o for o in self._queue if o.ref != ref]
        self._queued_refs.discard(ref)
        return True

    def expire_due(self, now: float) -> list[Expired]:
        """Take out what is past its expiry. `ready` does it while bound; the client also
        asks between connection attempts, so that an SMSC gone for days does not keep
        villagers' SMS queued here, past their validity, in nobody's hands."""
        expired = [Expired(o.ref, o.attempts) for o in self._queue
                   if o.expires_at is not None and o.expires_at <= now]
        if expired:
            gone = {e.ref for e in expired}
            self._queue = [o for o in self._queue if o.ref not in gone]
            self._queued_refs -= gone
        return expired

    def never_sent(self, ref: Hashable) -> bool:
        """Queued and never written to an SMSC: another channel may have it instead. (A
        message back in the queue after an unanswered try may have reached the SMSC.)"""
        return ref in self._queued_refs and any(
            o.ref == ref and o.attempts == 0 for o in self._queue)

    def _insert(self, o: Outgoing) -> None:
        # Ordered insert: the queue is walked from the front on every release, and a
        # full sort per message would make a deep queue quadratic.
        bisect.insort(self._queue, o, key=lambda x: x.order)
        self._queued_refs.add(o.ref)

    def ready(self, now: float, window_free: int) -> tuple[list[Outgoing], list[Expired]]:
        """What to send now (given the session's free window), and what expired."""
        self._refill(now)
        expired = self.expire_due(now)
        out: list[Outgoing] = []
        if now < self.paused_until:
            return out, expired
        for o in list(self._queue):
            if window_free <= 0 or self._tokens < 1.0:
                break
            if o.not_before > now:
                continue
            self._queue.remove(o)
            self._queued_refs.discard(o.ref)
            self._tokens -= 1.0
            window_free -= 1
            o.attempts += 1
            fields = dict(o.fields)
            if self.set_validity_period and o.expires_at is not None:
                fields["validity_period"] = relative_validity(o.expires_at - now)
            self._inflight[o.ref] = o
            out.append(Outgoing(o.ref, fields, o.expires_at, o.order, o.attempts, now,
                                o.refusals))
        return out, expired

    def next_deadline(self, now: float) -> float | None:
        """When `ready` may next release or expire something (window permitting)."""
        if not self._queue:
            return None
        times = [o.expires_at for o in self._queue if o.expires_at is not None]
        due = max(min(o.not_before for o in self._queue), self.paused_until)
        if self._tokens < 1.0:
            due = max(due, now + (1.0 - self._tokens) / self.current_rate)
        times.append(due)
        return min(times)

    def on_submit_sm_resp(self, resp: SubmitSmResp, now: float) -> Outcome | None:
        """None for a ref this sender did not send (another sender's, or a late one)."""
        o = self._inflight.pop(resp.ref, None)
        if o is None:
            return None
        status = resp.command_status
        if status == P.ESME_ROK:
            self._slowdowns = 0
            self.current_rate = min(self.rate, self.current_rate + self.rate / 10)
            return Accepted(o.ref, resp.message_id or "", o.attempts)
        rule = retry_rule(status, self.policy)
        if rule is None:
            return Failed(o.ref, status, f"{P.status_name(status)} is permanent", o.attempts)
        return self._retry(o, rule, status, now)

    def on_unanswered(self, ref: Hashable, now: float,
                      connection_lost: bool = False) -> Outcome | None:
        """No submit_sm_resp. A timeout waits the rule's delay (the SMSC is slow); a lost
        connection resends on the next bind at once, since reconnecting already waited
        its backoff and holding the message longer only delays it."""
        o = self._inflight.pop(ref, None)
        if o is None:
            return None
        rule = self.unanswered
        if connection_lost:
            rule = RetryRule(rule.attempts, 0.0)
        return self._retry(o, rule, None, now)

    def _retry(self, o: Outgoing, rule: RetryRule, status: int | None,
               now: float) -> Outcome:
        name = P.status_name(status) if status is not None else "no answer"
        o.refusals[status] = o.refusals.get(status, 0) + 1
        if o.refusals[status] >= rule.attempts:
            return Failed(o.ref, status, f"{name} {o.refusals[status]} times", o.attempts)
        if rule.slow_down:
            pause = min(rule.delay, self.initial_pause * 2 ** self._slowdowns)
            self._slowdowns += 1
            self.paused_until = max(self.paused_until, now + pause)
            self.current_rate = max(self.min_rate, self.current_rate / 2)
            o.not_before = now + pause
        else:
            o.not_before = now + rule.delay
        if o.expires_at is not None and o.not_before >= o.expires_at:
            return Expired(o.ref, o.attempts)
        self._insert(o)
        return Retrying(o.ref, status, o.not_before, o.attempts)

    def _refill(self, now: float) -> None:
        if self._refilled_at is not None:
            self._tokens = min(float(self.burst),
                               self._tokens + (now - self._refilled_at) * self.current_rate)
        self._refilled_at = now
