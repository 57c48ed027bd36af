"""The modem channel: the box's own GSM modems (modem.ModemPool) as an SMS channel.

One supervised task ("modems") runs the pool and two loops beside it:

- the feeder, while the modems are the sending channel (gatewayd/sms_route.py),
  hands committed, queued SMS from the outbox to the pool (a bounded number
  at a time; it looks again whenever the store has committed anything, and every few
  seconds). The pool's queue is memory: after a restart the feeder hands over what is
  still queued;
- the sweeper expires queued SMS past validity that the pool does not hold and forgets
  old dedupe keys (gatewayd.smpp_jobs.sweep, the same as SMPP's).

Routing (gatewayd/sms_route.py): with SMPP enabled, SMPP sends while bound and the
modems take over while it has been unbound for `modem_pool.takeover_after_seconds`;
otherwise the modems send. Either way the modems' inbound SMS are answered.

Every pool event is committed in its own store transaction (`commit_job`) before the
pool goes on: an inbound SMS leaves the SIM only after its commit returned, so a crash
in between costs a repeat (dropped by its key), never a message.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from typing import Any

import trio

from gatewayd import logs, sms_answer
from gatewayd import smpp_jobs as jobs
from gatewayd.sms_route import MODEMS, SMPP, SmsRoute
from modem.events import Event, SendFailed, SmsIn, StatusReport, Submitted, Undecodable
from modem.pool import ModemPool
from store import sms as sms_store
from store.writer import Store, StoreClosed, StoreUnavailable

log = logs.get("gatewayd.modem")

FEED_POLL_SECONDS = 0.25
FEED_FULL_SCAN_SECONDS = 5.0
SWEEP_SECONDS = 30.0
# Receipt states (SMPP's message_state names, as store.sms keeps them) by the outcome
# of a status report's part.
RECEIPT_STATES = {"delivered": "DELIVERED", "failed": "UNDELIVERABLE", "pending": "ENROUTE"}


def id_keys(modem: str, tp_mr: int) -> list[str]:
    """The key a status report names a part by: TP-MRs are per modem, 0-255."""
    return [f"gsm:{modem}:{tp_mr}"]


def commit_job(conn: Any, event: Event, ctx: jobs.JobContext, now: float) -> str:
    """One pool event, applied in the writer's transaction. -> what it was, for stats."""
    if isinstance(event, SmsIn):
        if sms_store.seen_recently(conn, event.key, now, ctx.dedupe_window):
            return "duplicate"
        sms_answer.answer_and_store(conn, ctx, event.sender, f"gsm:{event.modem}", event.text,
                                    event.parts, event.key, not event.missing, now)
        return "sms_in"
    if isinstance(event, Submitted):
        n = len(event.references)
        for i, mr in enumerate(event.references):
            sms_store.part_accepted(conn, event.outbox_id, i, n, f"{event.modem}:{mr}",
                                    id_keys(event.modem, mr), event.attempts, now)
        return "submitted"
    if isinstance(event, SendFailed):
        if event.expired:
            sms_store.part_expired(conn, event.outbox_id, event.attempts, now)
            return "expired"
        if event.final:
            sms_store.part_failed(conn, event.outbox_id, event.attempts,
                                  f"{event.modem}: {event.error}", now)
            return "failed"
        sms_store.part_retrying(conn, event.outbox_id, event.attempts,
                                f"{event.modem}: {event.error}", now)
        return "retrying"
    if isinstance(event, StatusReport):
        # The pool matched it by TP-MR when it sent the SMS in this run; the store's
        # key (modem, TP-MR) matches it the same way across a restart.
        r = sms_store.apply_receipt(conn, id_keys(event.modem, event.tp_mr),
                                    RECEIPT_STATES.get(event.outcome, "ENROUTE"),
                                    None if event.outcome != "failed" else f"TP-ST {event.tp_st}",
                                    now)
        return "receipt" if r.sms_id is not None else "receipt_unknown"
    assert isinstance(event, Undecodable)
    # Kept raw, so that nothing is dropped unseen: an operator can read it later.
    key = "pdu:" + hashlib.blake2b(event.pdu.encode(), digest_size=12).hexdigest()
    if sms_store.seen_recently(conn, key, now, ctx.dedupe_window):
        return "duplicate"
    sms_store.store_inbox(conn, ctx.settings.site, key, "", f"gsm:{event.modem}", event.pdu,
                          1, False, "undecodable", None, now)
    return "undecodable"


class ModemChannel:
    def __init__(self, cfg: Any, store: Store, job_context: Callable[[], jobs.JobContext],
                 route: SmsRoute) -> None:
        p = cfg.modem_pool
        self.cfg = cfg
        self.store = store
        self.job_context = job_context
        self.route = route
        route.channels[MODEMS] = self
        self.pool = ModemPool(cfg.modems, self._commit, max_attempts=p.max_attempts,
                              min_backoff=p.backoff_min_seconds,
                              max_backoff=p.backoff_max_seconds,
                              reassembly_timeout=p.reassembly_timeout_seconds)
        # Outbox ids whose outcome is being committed: the pool has let go of them, but
        # the store still says queued until the commit, and the feeder must not send
        # them again in between.
        self._settling: set[int] = set()
        self.counts: dict[str, int] = dict.fromkeys(
            ("sms_in", "duplicate", "submitted", "retrying", "failed", "expired", "receipt",
             "receipt_unknown", "undecodable"), 0)

    @property
    def validity(self) -> float:
        return self.cfg.modem_pool.sms_validity_hours * 3600

    # -- health and status -------------------------------------------------------------
    def healthy(self) -> bool:
        return self.pool.healthy()

    def can_send(self) -> bool:
        return self.pool.healthy()

    def held_ids(self) -> frozenset[int]:
        return self._held()

    def summary(self) -> str:
        states = [f"{r['name']} {r['state']}" for r in self.pool.status()]
        return "; ".join(states)

    def status(self) -> dict[str, Any]:
        return {"enabled": True, "sends": self.route.current == MODEMS, "queued": self.pool.queued,
                "held": len(self.pool.held), "modems": self.pool.status(), **self.counts}

    # -- the task ----------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.pool.run)
            nursery.start_soon(self._feeder)
            nursery.start_soon(self._sweeper)
            log.info("modems_started", modems=[c.name for c in self.pool.configs],
                     sender=self.route.sender(trio.current_time()))
            task_status.started()

    async def _commit(self, event: Event) -> None:
        """The pool's callback: returns only after a durable commit; raising leaves an
        inbound SMS on the SIM (listed again later)."""
        outbox_id = getattr(event, "outbox_id", None)
        if outbox_id is not None:
            self._settling.add(outbox_id)      # before any await: see __init__
        try:
            what = await self.store.write(commit_job, event, self.job_context(), time.time())
        finally:
            self._settling.discard(outbox_id)  # type: ignore[arg-type]
        self.counts[what] += 1
        fields: dict[str, Any] = {"outbox_id": getattr(event, "outbox_id", None)}
        if isinstance(event, SmsIn):
            fields = {"key": event.key, "parts": event.parts}
        log.info(f"modem_{what}", modem=getattr(event, "modem", None), **fields)

    def cancelled(self, outbox_id: int) -> None:
        """An operator cancelled this row: take it out of the pool if it is not on air."""
        self.pool.cancel(outbox_id)

    def _held(self) -> frozenset[int]:
        return self.pool.held | self._settling

    async def _feeder(self) -> None:
        last_seen, last_scan = -1, -math.inf
        was_ours = False
        while True:
            # A few SMS per modem in memory: the rest wait in the outbox, where a
            # restart or an operator can see them.
            room = max(4 * len(self.pool.workers), 8) - self.pool.queued
            now = trio.current_time()
            changed = self.store.stats.transactions != last_seen
            ours = self.route.sender(now) == MODEMS
            if ours and not was_ours:
                last_scan = -math.inf     # a takeover: what waits goes at once
            was_ours = ours
            if ours and room > 0 and (changed or now - last_scan >= FEED_FULL_SCAN_SECONDS):
                last_seen, last_scan = self.store.stats.transactions, now
                try:
                    rows = await self.store.read(
                        sms_store.sendable, time.time(), self.route.held(), room,
                        self.validity, SMPP in self.route.channels)   # whole_only
                except StoreClosed:
                    return
                # The read awaited: if SMPP bound meanwhile, it may be offering these
                # very rows. Nothing awaits from here to the hand-over.
                if self.route.sender(trio.current_time()) == MODEMS:
                    for row in rows:
                        self.pool.submit(row.id, row.msisdn, row.body, row.deadline)
            await trio.sleep(FEED_POLL_SECONDS)

    async def _sweeper(self) -> None:
        while True:
            await trio.sleep(SWEEP_SECONDS)
            try:
                # Expiring is the sending channel's, by its own validity; dedupe keys and
                # stalled long SMS are the modems' own either way.
                done = await self.store.write(jobs.sweep, self.job_context(), time.time(),
                                              self.route.held(),
                                              self.route.current == MODEMS
                                              or SMPP not in self.route.channels)
            except StoreUnavailable as e:
                log.error("modem_sweep_failed", error=str(e))
                continue
            if done["expired"]:
                log.info("modem_swept", **done)
