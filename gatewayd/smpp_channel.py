"""The SMPP channel: the short code's SMS and the *383# USSD dialogs over a bind to the
operator's SMSC, through the same store, menus and session engine as HTTP.

One supervised task ("smpp") keeps the bind(s) up (gatewayd.smpp.client.Esme: one
transceiver, or a transmitter + receiver pair) and runs three loops beside them:

- the feeder hands committed, queued SMS from the outbox to the Esme's sender, a
  bounded number at a time (it looks again whenever the store has committed anything,
  and every few seconds), each with its validity as the message's expiry. The sender's
  queue is memory: after a restart the feeder hands over what is still queued, minus
  the parts the SMSC already accepted;
- the event loop reads every Esme event in order, in batches: sender outcomes, receipts
  and inbound SMS parts are applied in ONE store transaction per batch
  (gatewayd.smpp_jobs), and each deliver_sm is answered only after that commit (a
  receipt that overtook its message id on a pair waits for it: ReceiptParking). USSD
  deliver_sm are answered at once (the dialog lives in the reply, not the resp), and
  each hop runs as its own task through UssdService.hop, its screen going back as an
  urgent submit_sm;
- the sweeper expires queued SMS past validity, answers long SMS whose parts stopped
  coming, and prunes dedupe keys.

Known limit of SMPP itself: a submit_sm whose response never comes (timeout, or the
connection dropped after the SMSC read it) is sent again, so that SMS may arrive twice;
not resending would lose the ones the SMSC never saw, which is the likelier case.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import sqlite3
import time
from collections.abc import Callable
from typing import Any

import trio

from gatewayd import logs
from gatewayd import smpp_jobs as jobs
from gatewayd.smpp import pdu as P
from gatewayd.smpp import receipts, sms, ussd
from gatewayd.smpp.client import Esme, Inbound
from gatewayd.smpp.sender import Accepted, Expired, Failed, Retrying, Sender
from gatewayd.smpp.session import Backoff, BindMode, SessionConfig, State
from gatewayd.smpp_stats import ReceiptParking, SmppStats
from gatewayd.sms_route import MODEMS, SMPP, SmsRoute
from gatewayd.ussd import UssdService
from menus.dialogs import TextMode
from store import sms as sms_store
from store.writer import Store, StoreClosed, StoreUnavailable

log = logs.get("gatewayd.smpp")

CHANNEL = "smpp"
# The network waits a few seconds for a screen; one that cannot go by then never will.
USSD_REPLY_SECONDS = 10.0
FEED_POLL_SECONDS = 0.25
FEED_FULL_SCAN_SECONDS = 5.0
SWEEP_SECONDS = 10.0
STORE_RETRY_SECONDS = 1.0
MAX_BATCH = 500


class SmppChannel:
    def __init__(self, smpp_cfg: Any, store: Store, ussd_service: UssdService,
                 job_context: Callable[[], jobs.JobContext], route: SmsRoute) -> None:
        self.cfg = smpp_cfg
        self.route = route
        route.channels[SMPP] = self
        self.store = store
        self.ussd = ussd_service
        self.job_context = job_context
        self.stats = SmppStats()
        self.esmes: dict[str, Esme] = {}
        self._held: dict[int, set[int]] = {}        # outbox id -> parts in the sender
        self._totals: dict[int, int] = {}           # outbox id -> its number of parts
        self._feed_wake = trio.Event()
        self._ussd_refs = itertools.count(1)
        self._stopping = False
        self._drained = trio.Event()
        self._parking = ReceiptParking()
        self.configure(smpp_cfg)

    # -- settings ----------------------------------------------------------------------
    def configure(self, c: Any) -> None:
        """What SIGHUP may change on a live bind; the rest waits for a restart."""
        self.cfg = c
        self.profile = ussd.profile(c.ussd_profile)
        tx = self._tx
        if tx is not None:
            tx.sender.rate = c.submit_rate
            tx.sender.current_rate = min(tx.sender.current_rate, c.submit_rate)
            tx.sender.initial_pause = c.throttle_pause_seconds

    @property
    def _tx(self) -> Esme | None:
        return self.esmes.get("transmitter") or self.esmes.get("transceiver")

    def _new_esmes(self) -> dict[str, Esme]:
        c = self.cfg
        modes = ([BindMode.TRANSCEIVER] if c.bind_mode == "transceiver"
                 else [BindMode.TRANSMITTER, BindMode.RECEIVER])
        out = {}
        for mode in modes:
            session = SessionConfig(
                c.system_id, c.password, c.system_type, mode, window=c.window,
                response_timeout=c.response_timeout_seconds,
                bind_timeout=c.response_timeout_seconds,
                enquire_link_interval=c.enquire_link_seconds,
                enquire_link_timeout=c.response_timeout_seconds)
            sender = Sender(rate=c.submit_rate, burst=max(1, min(c.window, int(c.submit_rate))),
                            initial_pause=c.throttle_pause_seconds)
            backoff = Backoff(initial=min(1.0, c.reconnect_max_seconds),
                              maximum=c.reconnect_max_seconds,
                              bad_credentials_delay=c.bad_credentials_retry_seconds)
            out[mode.value] = Esme(c.host, c.port, session, sender=sender, backoff=backoff)
            self.stats.bind_state[mode.value] = "connecting"
        return out

    # -- health and status -------------------------------------------------------------
    def bound(self) -> bool:
        return bool(self.esmes) and all(s == "bound" for s in self.stats.bind_state.values())

    def can_send(self) -> bool:
        return self.bound()

    def held_ids(self) -> frozenset[int]:
        return frozenset(self._held)

    def bind_summary(self) -> str:
        if self.bound():
            return "bound"
        return "; ".join(f"{m} {s}" for m, s in sorted(self.stats.bind_state.items()))

    def window_in_use(self) -> int:
        tx = self._tx
        if tx is None or tx.session is None or tx.session.state is not State.BOUND:
            return 0
        return tx.config.window - tx.session.window_free

    def status(self) -> dict[str, Any]:
        tx = self._tx
        return {"enabled": True, **self.stats.counters(), "host": self.cfg.host,
                "port": self.cfg.port, "bind": self.bind_summary(),
                "binds_state": dict(self.stats.bind_state), "window": self.cfg.window,
                "window_in_use": self.window_in_use(),
                "sender_queued": tx.sender.queued if tx else 0,
                "submit_rate": round(tx.sender.current_rate, 2) if tx else 0.0,
                "submit_rate_max": self.cfg.submit_rate, "sms_held": len(self._held)}

    # -- the task ----------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        self.esmes = self._new_esmes()
        self._held, self._totals = {}, {}
        self._drained = trio.Event()
        merged_in, merged_out = trio.open_memory_channel[tuple[Esme, Any]](math.inf)
        async with trio.open_nursery() as nursery:
            for esme in self.esmes.values():
                await nursery.start(esme.run)
                nursery.start_soon(_forward, esme, merged_in.clone())
            merged_in.close()
            nursery.start_soon(self._events, merged_out, nursery)
            nursery.start_soon(self._feeder)
            nursery.start_soon(self._sweeper)
            log.info("smpp_started", host=self.cfg.host, port=self.cfg.port,
                     bind_mode=self.cfg.bind_mode, window=self.cfg.window,
                     submit_rate=self.cfg.submit_rate)
            task_status.started()

    async def stop(self, timeout: float) -> None:
        """Graceful stop: hand over nothing more, unbind, and apply every event the binds
        produced until then. A submit_sm_resp read but never recorded would leave its
        SMS queued, to be sent again after the restart."""
        self._stopping = True
        for esme in self.esmes.values():
            await esme.stop()
        with trio.move_on_after(timeout):
            await self._drained.wait()
        log.info("smpp_stopped", drained=self._drained.is_set(), held=len(self._held))

    # -- outbound: the outbox feeder ---------------------------------------------------
    async def _feeder(self) -> None:
        last_seen, last_scan = -1, -math.inf
        announced: str | None = None
        was_bound = False
        while True:
            depth = max(2 * self.cfg.window, int(2 * self.cfg.submit_rate), 20)
            room = depth - sum(len(p) for p in self._held.values())
            now = trio.current_time()
            changed = self.store.stats.transactions != last_seen
            if self._stopping:
                return
            ours = self.route.sender(now) == SMPP
            if self.route.current != announced:
                # Logged here only (this feeder runs whenever SMPP is enabled), for any
                # switch, whichever feeder's question made it.
                given_back = self._give_back() if self.route.current == MODEMS else 0
                log.warning("sms_route", sender=self.route.current, previous=announced,
                            bind=self.bind_summary(), given_back=given_back)
                announced = self.route.current
            bound = self.bound()
            if bound and not was_bound:
                last_scan = -math.inf     # what waited for the bind goes at once
            was_bound = bound
            # Only while bound: rows handed to an unbound sender would wait there, out
            # of the modems' reach, for as long as the SMSC stays away.
            if ours and bound and room > 0 and (
                    changed or now - last_scan >= FEED_FULL_SCAN_SECONDS):
                last_seen, last_scan = self.store.stats.transactions, now
                try:
                    rows = await self.store.read(sms_store.sendable, time.time(),
                                                 self.route.held(), room,
                                                 self.cfg.sms_validity_hours * 3600)
                except StoreClosed:
                    return
                # The read awaited: if the modems took over meanwhile, they may be
                # offering these very rows. Nothing awaits from here to the hand-over.
                if self.route.sender(trio.current_time()) == SMPP and self.bound():
                    for row in rows:
                        self._hand_over(row)
            self._feed_wake = trio.Event()
            with trio.move_on_after(FEED_POLL_SECONDS):
                await self._feed_wake.wait()

    def _hand_over(self, row: sms_store.Sendable) -> None:
        c, tx = self.cfg, self._tx
        assert tx is not None
        try:
            parts = sms.submit_sm_fields(
                row.body, source_addr=c.source_addr, destination_addr=row.msisdn,
                reference=row.id, long_mode=c.long_sms, source_addr_ton=c.source_addr_ton,
                source_addr_npi=c.source_addr_npi)
        except ValueError as e:
            log.error("sms_cannot_be_encoded", sms=row.id, error=str(e))
            return
        # The outbox's deadline is wall-clock; the sender runs on the monotonic clock.
        expires_at = trio.current_time() + (row.deadline - time.time())
        for i, fields in enumerate(parts):
            if i in row.done_parts:
                continue
            # The outbox id rides along: operators (and tests) can match what the SMSC
            # got to the outbox row, and it is the same for every resend.
            fields["user_message_reference"] = row.id & 0xFFFF
            tx.submit(("sms", row.id, i, len(parts)), fields, expires_at=expires_at)
            self._held.setdefault(row.id, set()).add(i)
            self._totals[row.id] = len(parts)

    def _give_back(self) -> int:
        """The modems take over: SMS whose every part still waits in this sender, never
        written to the SMSC, go back to the outbox for them. One with a part that may
        have reached the SMSC stays, and goes on the next bind (never torn, never
        twice). Returns how many went back."""
        tx = self._tx
        if tx is None:
            return 0
        back = 0
        for sms_id, parts in list(self._held.items()):
            refs = [("sms", sms_id, p, self._totals[sms_id]) for p in parts]
            if all(tx.sender.never_sent(r) for r in refs):
                for r in refs:
                    tx.sender.cancel(r)
                del self._held[sms_id]
                del self._totals[sms_id]
                back += 1
        return back

    def _release(self, ref: tuple, all_parts: bool = False) -> None:
        _, sms_id, part, total = ref
        parts = self._held.get(sms_id)
        if parts is None:
            return
        if all_parts:   # one part failed or expired: the rest would be a torn message
            for other in list(parts):
                if other != part and self._tx and self._tx.sender.cancel(
                        ("sms", sms_id, other, total)):
                    parts.discard(other)
        parts.discard(part)
        if not parts:
            del self._held[sms_id]
            self._totals.pop(sms_id, None)
        self._feed_wake.set()

    # -- events ------------------------------------------------------------------------
    async def _events(self, events: trio.MemoryReceiveChannel,
                      nursery: trio.Nursery) -> None:
        async for first in events:
            batch = [first]
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(events.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            await self._apply(batch, nursery)
        self._drained.set()     # every bind stopped and all it said is applied

    async def _apply(self, batch: list[tuple[Esme, Any]], nursery: trio.Nursery) -> None:
        # Sender outcomes first, then what came in, each in arrival order: in pair mode
        # a receipt on the receiver bind may arrive before its submit_sm_resp on the
        # transmitter bind, and must be matched against the id recorded in this batch.
        ops: list[jobs.Op] = []
        refs: list[tuple | None] = []          # the sender ref behind each op
        inbound: list[jobs.Op] = []
        answers: list[tuple[Esme, tuple[int, int], int]] = []   # (esme, token, op index)
        for esme, ev in batch:
            if isinstance(ev, Inbound):
                if ussd.is_ussd(ev.pdu):
                    await esme.respond(ev.token)
                    nursery.start_soon(self._ussd_hop, ev.pdu)
                    continue
                op = jobs.inbound_op(ev.pdu, self.cfg.receipt_id_format)
                if op is None:
                    await esme.respond(ev.token)
                    continue
                answers.append((esme, ev.token, len(inbound)))
                inbound.append(op)
            elif isinstance(ev, (Accepted, Retrying, Failed, Expired)):
                op = self._outcome_op(ev)
                if op is not None:
                    ops.append(op)
                    refs.append(ev.ref)
            elif self.stats.bind_event(esme.config.bind_mode.value, ev):
                self._feed_wake.set()
        answers = [(esme, token, i + len(ops)) for esme, token, i in answers]
        ops += inbound
        refs += [None] * len(inbound)
        now = trio.current_time()
        for gone in self._parking.expired(now):
            self.stats.applied(gone, sms_store.ReceiptResult(None))      # unknown after all
        retried = (self._parking.take() if any(isinstance(o, jobs.Accepted) for o in ops)
                   else [])
        ops += retried
        refs += [None] * len(retried)
        if not ops:
            return
        results = await self._write(ops, refs, answers)
        again = {id(op) for op in retried}
        for (op, ref), result in zip(zip(ops, refs), results):
            if (self.cfg.bind_mode == "pair" and self._parking.park(
                    op, result, id(op) in again, now, self.cfg.response_timeout_seconds)):
                continue
            if self.stats.applied(op, result):
                self._feed_wake.set()       # an answer to an SMS in waits in the outbox
            if ref is not None and not isinstance(op, jobs.Retrying):
                self._release(ref, all_parts=isinstance(op, (jobs.Failed, jobs.Expired)))
        for esme, token, _ in answers:
            await esme.respond(token)

    async def _write(self, ops: list[jobs.Op], refs: list[tuple | None],
                     answers: list[tuple[Esme, tuple[int, int], int]]) -> list[Any]:
        """Commit the batch. While the store refuses (disk full...), inbound PDUs are
        answered "try again later" and dropped from the batch (the SMSC resends them);
        sender outcomes are kept and retried, since nobody would tell us again."""
        while True:
            try:
                return await self.store.write(jobs.apply_batch, ops, self.job_context(),
                                              time.time())
            except (StoreUnavailable, sqlite3.Error) as e:
                log.error("smpp_store_unavailable", error=f"{type(e).__name__}: {e}")
                inbound = {i for _, _, i in answers}
                for esme, token, _ in answers:
                    await esme.respond(token, P.ESME_RX_T_APPN)
                answers.clear()
                keep = [i for i in range(len(ops)) if i not in inbound]
                ops[:] = [ops[i] for i in keep]
                refs[:] = [refs[i] for i in keep]
                if not ops:
                    return []
                await trio.sleep(STORE_RETRY_SECONDS)

    def _outcome_op(self, ev: Any) -> jobs.Op | None:
        ref = ev.ref
        if not (isinstance(ref, tuple) and ref[0] == "sms"):
            if isinstance(ev, (Failed, Expired)):      # a USSD screen that never went
                self.stats.ussd_replies_lost += 1
                log.warning("ussd_reply_not_sent", outcome=type(ev).__name__,
                            reason=getattr(ev, "reason", "expired"))
            return None
        _, sms_id, part, total = ref
        if isinstance(ev, Accepted):
            keys = receipts.message_id_keys(ev.message_id, self.cfg.submit_id_format)
            return jobs.Accepted(sms_id, part, total, ev.message_id, keys, ev.attempts)
        if isinstance(ev, Retrying):
            why = P.status_name(ev.command_status) if ev.command_status is not None \
                else "no answer"
            return jobs.Retrying(sms_id, ev.attempts, why)
        if isinstance(ev, Failed):
            return jobs.Failed(sms_id, ev.attempts, ev.reason)
        return jobs.Expired(sms_id, ev.attempts)

    # -- USSD --------------------------------------------------------------------------
    async def _ussd_hop(self, pdu: P.Pdu) -> None:
        hop = ussd.parse_deliver_sm(pdu, self.profile)
        if isinstance(hop, ussd.NotUssd):
            log.warning("smpp_ussd_ignored", reason=hop.reason)
            return
        session = dialog_id(hop.session_key)
        if hop.kind is ussd.HopKind.ABORT:
            await self.ussd.end_notice(CHANNEL, session)
            return
        if hop.kind is ussd.HopKind.START:
            # A new dial: its_session_info numbers are few and get reused, so whatever
            # dialog had this key before is over.
            self.ussd.dialogs.close(CHANNEL, session)
            code, text = hop.text or hop.service_addr, ""
        else:
            dialog = self.ussd.dialogs.get(CHANNEL, session)
            code = dialog.service_code if dialog else hop.service_addr
            text = hop.text
        self.stats.ussd_hops += 1
        reply = await self.ussd.hop(CHANNEL, session, hop.msisdn, code, text, TextMode.PER_HOP)
        tx = self._tx
        if tx is not None:
            tx.submit(("ussd", next(self._ussd_refs)),
                      ussd.submit_sm_fields(hop, reply.text, reply.end, self.profile),
                      expires_at=trio.current_time() + USSD_REPLY_SECONDS, urgent=True)

    # -- sweeper -----------------------------------------------------------------------
    async def _sweeper(self) -> None:
        while True:
            await trio.sleep(SWEEP_SECONDS)
            try:
                done = await self.store.write(jobs.sweep, self.job_context(), time.time(),
                                              self.route.held(),
                                              self.route.current in (SMPP, None))
            except (StoreUnavailable, sqlite3.Error) as e:
                log.error("smpp_sweep_failed", error=str(e))
                continue
            if done["expired"] or done["incomplete"]:
                log.info("smpp_swept", **done)
                self._feed_wake.set()


def dialog_id(session_key: str) -> str:
    """The dialog's id in the session engine. The gateway's key holds the phone number
    ("2547.../18"), and dialog ids reach logs and the dialogs table: a digest keeps
    them apart without the number, and is the same after a restart."""
    return "smpp-" + hashlib.blake2b(session_key.encode(), digest_size=8).hexdigest()


async def _forward(esme: Esme, out: trio.MemorySendChannel) -> None:
    async with out:
        async for ev in esme.events:
            await out.send((esme, ev))
