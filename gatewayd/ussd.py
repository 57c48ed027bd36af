"""The USSD hop path every channel shares: dialog engine -> router -> menus -> store.

A channel (HTTP today, SMPP next) turns its wire format into `hop()` calls and the
returned `Reply` back into its wire format; everything between lives here, so every
channel gets the same menus, limits and guarantees.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

import trio

from gatewayd import logs
from gatewayd.ratelimit import RateLimiter
from gatewayd.router import Router
from menus import lending as app
from menus import msisdn as phone
from menus.dialogs import Dialog, Dialogs, Hop, Kind, TextMode
from menus.screens import Reply
from menus.texts import Texts
from store import lending
from store.writer import Store, StoreClosed, StoreUnavailable

log = logs.get("gatewayd.ussd")


@dataclass
class HopStats:
    hops: int = 0
    errors: int = 0
    rate_limited: int = 0
    unavailable: int = 0
    # Latency histogram buckets in ms, Prometheus-style cumulative on export.
    buckets: tuple[float, ...] = (1, 2, 5, 10, 20, 50, 100, 250, 500, 1000, 5000)
    counts: list[int] = field(default_factory=lambda: [0] * 12)
    sum_ms: float = 0.0

    def observe(self, ms: float) -> None:
        self.hops += 1
        self.sum_ms += ms
        for i, b in enumerate(self.buckets):
            if ms <= b:
                self.counts[i] += 1
                return
        self.counts[-1] += 1


class UssdService:
    def __init__(self, store: Store, settings: app.Settings, texts: dict[str, Texts],
                 pin_key: bytes, pin_log2_n: int, router: Router, limiter: RateLimiter,
                 idle_seconds: float) -> None:
        self.store = store
        self.settings = settings
        self.texts = texts
        self.pin_key = pin_key
        self.pin_log2_n = pin_log2_n
        self.router = router
        self.limiter = limiter
        self.dialogs = Dialogs(idle_seconds)
        self.stats = HopStats()
        self._locks: dict[tuple[str, str], trio.Lock] = {}
        # scrypt is CPU and memory bound: more hashes at once than CPUs only makes each
        # later and multiplies the memory (2^(N+10) bytes each).
        self._pin_limiter = trio.CapacityLimiter(os.cpu_count() or 1)
        self._in_flight = 0
        self._idle = trio.Event()
        self._idle.set()

    # -- the hop ---------------------------------------------------------------------
    async def hop(self, channel: str, session_id: str, caller: str, service_code: str,
                  text: str, mode: TextMode) -> Reply:
        started = time.perf_counter()
        self._in_flight += 1
        self._idle = trio.Event() if self._idle.is_set() else self._idle
        try:
            reply = await self._hop(channel, session_id, caller, service_code, text, mode)
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()
        ms = (time.perf_counter() - started) * 1000
        self.stats.observe(ms)
        log.info("ussd_hop", channel=channel, session=session_id[-12:],
                 msisdn=phone.normalize(caller) or caller,
                 end=reply.end, ms=round(ms, 2))
        return reply

    async def drained(self) -> None:
        """Returns when no hop is in flight (graceful stop)."""
        await self._idle.wait()

    def _default_texts(self) -> Texts:
        return self.texts.get(self.settings.default_lang) or self.texts["en"]

    async def _hop(self, channel: str, session_id: str, caller: str, service_code: str,
                   text: str, mode: TextMode) -> Reply:
        t = self._default_texts()
        msisdn = phone.normalize(caller)
        if msisdn is None:
            return Reply(t.get("unknown_code"), True)
        route = self.router.route(service_code)
        if route is None:
            return Reply(t.get("unknown_code"), True)
        if not self.limiter.allow(msisdn, trio.current_time()):
            self.stats.rate_limited += 1
            return Reply(t.get("busy"), True)
        key = (channel, session_id)
        lock = self._locks.setdefault(key, trio.Lock())
        try:
            async with lock:
                return await self._dialog_hop(
                    Hop(channel, session_id, msisdn, route.code, text), mode, route.typed_ahead)
        except (StoreUnavailable, StoreClosed) as e:
            self.stats.unavailable += 1
            log.error("ussd_store_unavailable", error=str(e))
            return Reply(t.get("unavailable"), True)
        except Exception:
            # A bug must cost one villager one polite screen, never the daemon.
            self.stats.errors += 1
            log.exception("ussd_hop_failed", channel=channel)
            return Reply(t.get("unavailable"), True)
        finally:
            if not lock.locked() and not lock.statistics().tasks_waiting:
                self._locks.pop(key, None)

    async def _dialog_hop(self, hop: Hop, mode: TextMode, typed_ahead: tuple[str, ...]) -> Reply:
        step = self.dialogs.on_hop(hop, mode, trio.current_time())
        dialog = step.dialog
        if step.kind is Kind.REPEAT and dialog.last_reply is not None:
            return Reply(*dialog.last_reply)
        state: dict[str, Any] = dialog.app_state
        inputs = step.inputs
        try:
            if step.kind is Kind.START:
                inputs = typed_ahead + inputs
                reply, state = await self.store.write(self._start_job, dialog)
                dialog.app_state = state
            for raw in inputs:
                pin = await self._pin_result(hop.msisdn, state, raw)
                reply, state = await self.store.write(self._step_job, dialog, state, raw, pin)
                dialog.app_state = state
                if reply.end:
                    break
        except BaseException:
            if step.kind is Kind.START and dialog.last_reply is None:
                self.dialogs.close(hop.channel, hop.session_id)
            raise
        self.dialogs.answered(dialog, reply.text, reply.end)
        return reply

    async def _pin_result(self, msisdn: str, state: dict[str, Any], raw: str) -> app.PinResult | None:
        work = app.pin_work(state)
        if work is app.PinWork.NONE:
            return None
        stored = None
        if work is app.PinWork.ACCOUNT:
            stored = await self.store.read(lending.pin_hash_of, msisdn)
        return await trio.to_thread.run_sync(
            app.do_pin_work, work, raw, self.pin_key, self.pin_log2_n, stored,
            app.pending_pin_hash(state), limiter=self._pin_limiter)

    # -- the jobs that run in the writer thread ----------------------------------------
    def _ctx(self, conn: Any, dialog: Dialog, pin: app.PinResult | None = None) -> app.Ctx:
        return app.Ctx(conn=conn, msisdn=dialog.msisdn, now=time.time(), settings=self.settings,
                       texts=self.texts, pin=pin)

    def _start_job(self, conn: Any, dialog: Dialog) -> tuple[Reply, dict[str, Any]]:
        ctx = self._ctx(conn, dialog)
        reply, state = app.start(ctx)
        app.queue_notices(ctx, ctx.notices)
        _save_dialog(conn, dialog, state, reply, ctx.now)
        return reply, state

    def _step_job(self, conn: Any, dialog: Dialog, state: dict[str, Any], raw: str,
                  pin: app.PinResult | None) -> tuple[Reply, dict[str, Any]]:
        ctx = self._ctx(conn, dialog, pin)
        reply, state = app.step(ctx, state, raw)
        app.queue_notices(ctx, ctx.notices)
        _save_dialog(conn, dialog, state, reply, ctx.now)
        return reply, state

    # -- dialog lifecycle --------------------------------------------------------------
    async def end_notice(self, channel: str, session_id: str) -> bool:
        """The network says the dialog is over (aggregator end notification)."""
        dialog = self.dialogs.close(channel, session_id)
        await self.store.write(_forget_dialogs, [(channel, session_id)])
        return dialog is not None

    async def restore(self, now_wall: float | None = None) -> int:
        """Reload dialogs that were open when the daemon stopped."""
        now_wall = time.time() if now_wall is None else now_wall
        rows = await self.store.read(_open_dialogs, now_wall - self.dialogs.idle_seconds)
        mono = trio.current_time()
        for row in rows:
            saved = json.loads(row["state"])
            age = max(0.0, now_wall - row["updated_at"])
            d = Dialog(channel=row["channel"], session_id=row["session_id"],
                       msisdn=row["msisdn"], service_code=row["service_code"],
                       started_at=mono - age, last_seen=mono - age,
                       text_seen=saved.get("seen", ""), hops=saved.get("hops", 0),
                       app_state=saved.get("app", {}),
                       last_reply=tuple(saved["last"]) if saved.get("last") else None,
                       ended=saved.get("ended", False))
            self.dialogs.restore(d)
        return len(rows)

    async def sweep(self) -> None:
        """Forget idle dialogs and expire unanswered loan requests (with their SMS)."""
        gone = self.dialogs.expire(trio.current_time())
        cutoff = time.time() - self.dialogs.idle_seconds
        await self.store.write(_sweep_job, self, cutoff, [d.key for d in gone])


def _save_dialog(conn: Any, dialog: Dialog, state: dict[str, Any], reply: Reply,
                 now: float) -> None:
    saved = {"app": state, "seen": dialog.text_seen, "hops": dialog.hops,
             "last": [reply.text, reply.end], "ended": dialog.ended or reply.end}
    conn.execute(
        "INSERT INTO ussd_dialogs (channel, session_id, msisdn, service_code, state, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (channel, session_id) DO UPDATE SET "
        "state = excluded.state, updated_at = excluded.updated_at",
        (dialog.channel, dialog.session_id, dialog.msisdn, dialog.service_code,
         json.dumps(saved, separators=(",", ":")), now))


def _open_dialogs(conn: Any, since: float) -> list[Any]:
    return conn.execute("SELECT * FROM ussd_dialogs WHERE updated_at > ?", (since,)).fetchall()


def _forget_dialogs(conn: Any, keys: list[tuple[str, str]]) -> None:
    conn.executemany("DELETE FROM ussd_dialogs WHERE channel = ? AND session_id = ?", keys)


def _sweep_job(conn: Any, service: UssdService, cutoff: float,
               keys: list[tuple[str, str]]) -> int:
    _forget_dialogs(conn, keys)
    conn.execute("DELETE FROM ussd_dialogs WHERE updated_at <= ?", (cutoff,))
    now = time.time()
    notices = lending.expire_requests(conn, now)
    if notices:
        ctx = app.Ctx(conn=conn, msisdn="", now=now, settings=service.settings,
                      texts=service.texts)
        app.queue_notices(ctx, notices)
    return len(notices)
