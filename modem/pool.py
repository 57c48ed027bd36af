"""The box's modems as one SMS channel: outbox rows in, outcomes and inbound SMS out.

Outgoing SMS wait in the pool's queue and go to a modem that is up and registered,
the least busy first (what it is sending plus what is lined up for it, at most
`1 + prefetch`). Lining up little keeps the queue in one place: when a modem goes
down, what was lined up for it goes back to the front of the queue, and a send that
fails goes back too, to be tried on a modem that has not failed it yet when there is
one. Nothing is dropped on the floor; after `max_attempts`, or at once for a
permanent +CMS ERROR, the outbox is told the SMS failed.

Inbound SMS and status reports reach the daemon through `commit`, and only after it
returns are they deleted from the SIM (see modem/worker.py).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
import trio

from modem import config as C
from modem import pdu as P
from modem.events import Event, Location, OutgoingSms, SendFailed, Submitted
from modem.inbox import DEFAULT_TIMEOUT, ReportMatcher
from modem.receive import COMMIT_GRACE
from modem.worker import ModemDown, ModemWorker, NotSent, SendError

log = structlog.get_logger("gatewayd.modem")

DEFAULT_MAX_ATTEMPTS = 5
# Validity is counted in hours; checking the waiting SMS twice a minute is plenty.
SWEEP_SECONDS = 30.0


@dataclass
class _Item:
    sms: OutgoingSms
    deadline: float | None = None       # wall clock (time.time()), as the outbox keeps it
    attempts: int = 0
    tried: set[str] = field(default_factory=set)


class ModemPool:
    def __init__(self, modems: Sequence[Mapping[str, Any] | C.ModemConfig],
                 commit: Callable[[Event], Awaitable[None]], *,
                 max_attempts: int = DEFAULT_MAX_ATTEMPTS, prefetch: int = 1,
                 min_backoff: float = 1.0, max_backoff: float = 60.0,
                 reassembly_timeout: float = DEFAULT_TIMEOUT) -> None:
        self.configs = C.parse(modems)
        self._commit = commit
        self.max_attempts, self.prefetch = max_attempts, prefetch
        self.workers = [ModemWorker(cfg, self._inbound, on_state=self._state_changed,
                                    reassembly_timeout=reassembly_timeout,
                                    min_backoff=min_backoff, max_backoff=max_backoff)
                        for cfg in self.configs]
        self.matcher = ReportMatcher()
        self._queue: deque[_Item] = deque()
        self._lined_up: dict[str, deque[_Item]] = {w.name: deque() for w in self.workers}
        self._sending: dict[str, _Item | None] = {w.name: None for w in self.workers}
        self._ids: set[int] = set()
        self._changed = trio.Event()
        self._work: dict[str, trio.Event] = {w.name: trio.Event() for w in self.workers}
        self.submitted = self.failed = 0

    # -- running ----------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        """Run every modem until cancelled. Started at once, whether modems are up or
        not: a dead modem is a status line, not a reason to stop the daemon."""
        async with trio.open_nursery() as nursery:
            for w in self.workers:
                await nursery.start(w.run)
                nursery.start_soon(self._sender, w)
            nursery.start_soon(self._dispatcher)
            nursery.start_soon(self._sweeper)
            task_status.started()

    # -- the daemon's side ------------------------------------------------------------
    def submit(self, outbox_id: int, msisdn: str, text: str,
               deadline: float | None = None) -> bool:
        """Queue an outbox row. False if that row is already in the pool (the outbox
        dispatcher may offer a row again while it is being sent). `deadline` (wall
        clock, like the outbox's expires_at): not sent after it, SendFailed(expired)."""
        if outbox_id in self._ids:
            return False
        self._ids.add(outbox_id)
        self._queue.append(_Item(OutgoingSms(outbox_id, msisdn, text), deadline))
        self._poke()
        return True

    def cancel(self, outbox_id: int) -> bool:
        """Take a row out if it is not being sent right now (an operator cancelled it,
        or it expired). False if it is in flight or not here."""
        for q in (self._queue, *self._lined_up.values()):
            for item in q:
                if item.sms.outbox_id == outbox_id:
                    q.remove(item)
                    self._ids.discard(outbox_id)
                    return True
        return False

    def holds(self, outbox_id: int) -> bool:
        return outbox_id in self._ids

    @property
    def held(self) -> frozenset[int]:
        """Outbox ids in the pool (queued, lined up or being sent): what the outbox
        dispatcher must not offer again, nor expire behind the pool's back."""
        return frozenset(self._ids)

    def remember(self, outbox_id: int, modem: str, references: Sequence[int], msisdn: str) -> None:
        """After a restart, tell the pool which TP-MRs the store knows of, so that
        status reports for SMS sent before it still match their outbox rows."""
        self.matcher.sent(modem, list(references), outbox_id, msisdn, trio.current_time())

    @property
    def queued(self) -> int:
        """SMS waiting for a modem (not counting those lined up or being sent)."""
        return len(self._queue)

    def healthy(self) -> bool:
        """At least one modem can send (True when none are configured: nothing to do)."""
        return not self.workers or any(w.sendable for w in self.workers)

    def status(self) -> list[dict[str, Any]]:
        """One row per modem for `gatewayd modems`, /healthz and /metrics."""
        rows = []
        for w in self.workers:
            row = w.health()
            row["queue_depth"] = len(self._lined_up[w.name]) + (self._sending[w.name] is not None)
            rows.append(row)
        return rows

    async def check_stored(self) -> None:
        """List every ready modem's stored messages now, instead of at the next poll."""
        for w in self.workers:
            if w.ready:
                try:
                    await w.check_now()
                except ModemDown:
                    pass

    # -- outbound ---------------------------------------------------------------------
    def _poke(self) -> None:
        self._changed.set()

    def _state_changed(self, w: ModemWorker) -> None:
        if not w.sendable and self._lined_up[w.name]:
            # Back to the front, in their order: they were next in line.
            self._queue.extendleft(reversed(self._lined_up[w.name]))
            self._lined_up[w.name].clear()
        self._poke()

    def _load(self, w: ModemWorker) -> int:
        return len(self._lined_up[w.name]) + (self._sending[w.name] is not None)

    async def _dispatcher(self) -> None:
        while True:
            changed = self._changed = trio.Event()
            self._assign()
            await changed.wait()

    def _assign(self) -> None:
        sendable = [w for w in self.workers if w.sendable]
        if not sendable:
            return
        capacity = 1 + self.prefetch
        for item in list(self._queue):
            untried = [w for w in sendable if w.name not in item.tried]
            # A modem that failed this SMS gets it again only when every modem has.
            pool = untried or sendable
            free = [w for w in pool if self._load(w) < capacity]
            if not free:
                if all(self._load(w) >= capacity for w in sendable):
                    break
                continue
            w = min(free, key=lambda w: (self._load(w), w.sent, w.name))
            self._queue.remove(item)
            self._lined_up[w.name].append(item)
            self._work[w.name].set()

    async def _sender(self, w: ModemWorker) -> None:
        while True:
            while not self._lined_up[w.name]:
                self._work[w.name] = trio.Event()
                await self._work[w.name].wait()
            item = self._lined_up[w.name].popleft()
            event: Event
            if item.deadline is not None and time.time() > item.deadline:
                await self._emit(self._expired(item))
                continue
            self._sending[w.name] = item
            item.attempts += 1
            try:
                refs = await w.send(item.sms)
            except NotSent:
                # The modem went down between lining up and sending: not an attempt.
                item.attempts -= 1
                self._queue.appendleft(item)
                continue                     # (the finally below still runs)
            except (ModemDown, SendError) as e:
                event = self._failed(item, w, e)
            except Exception as e:   # a bug costs one attempt, not the pool
                log.error("modem_send_crashed", modem=w.name, error=f"{type(e).__name__}: {e}",
                          exc_info=e)
                event = self._failed(item, w, e)
            else:
                self._ids.discard(item.sms.outbox_id)
                self.submitted += 1
                self.matcher.sent(w.name, refs, item.sms.outbox_id, item.sms.msisdn,
                                  trio.current_time())
                event = Submitted(item.sms.outbox_id, w.name, refs, item.attempts)
            finally:
                self._sending[w.name] = None
                self._poke()
            await self._emit(event)

    async def _sweeper(self) -> None:
        """SMS past their deadline leave the queue even when no modem is up to take
        them: the outbox must learn they expired."""
        while True:
            await trio.sleep(SWEEP_SECONDS)
            now = time.time()
            gone = []
            for q in (self._queue, *self._lined_up.values()):
                for item in [i for i in q if i.deadline is not None and now > i.deadline]:
                    q.remove(item)           # all taken out before the first await
                    gone.append(self._expired(item))
            for event in gone:
                await self._emit(event)

    def _expired(self, item: _Item) -> SendFailed:
        self._ids.discard(item.sms.outbox_id)
        self.failed += 1
        return SendFailed(item.sms.outbox_id, None, "not sent within its validity",
                          item.attempts, final=True, expired=True)

    def _failed(self, item: _Item, w: ModemWorker, error: Exception) -> SendFailed:
        permanent = isinstance(error, SendError) and error.permanent
        final = permanent or item.attempts >= self.max_attempts
        log.warning("modem_send_failed", modem=w.name, outbox_id=item.sms.outbox_id,
                    attempts=item.attempts, final=final, error=str(error))
        if final:
            self._ids.discard(item.sms.outbox_id)
            self.failed += 1
        else:
            item.tried.add(w.name)
            self._queue.appendleft(item)
        return SendFailed(item.sms.outbox_id, w.name, str(error), item.attempts, final)

    async def _emit(self, event: Event) -> None:
        # Shielded for a while, like inbound commits: an outcome half-recorded at
        # shutdown would send the SMS again after the restart.
        try:
            with trio.CancelScope(shield=True, deadline=trio.current_time() + COMMIT_GRACE):
                await self._commit(event)
        except Exception as e:  # noqa: BLE001 - the daemon's failure must not stop sending
            # The SMS went (or failed) either way; the outbox row stays as it was and
            # the dispatcher offers it again: at-least-once, as the outbox promises.
            log.error("modem_outcome_not_committed", event=type(event).__name__,
                      outbox_id=getattr(event, "outbox_id", None), error=f"{type(e).__name__}: {e}")

    # -- inbound ----------------------------------------------------------------------
    async def _inbound(self, w: ModemWorker, item: Any) -> None:
        if isinstance(item, tuple):
            report, loc = item
            assert isinstance(report, P.StatusReport)
            event: Event = self.matcher.match(w.name, report, trio.current_time(),
                                              loc if isinstance(loc, Location) else None)
        else:
            event = item
        await self._commit(event)      # raising keeps it on the SIM
