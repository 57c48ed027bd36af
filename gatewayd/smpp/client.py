"""A thin trio shell around EsmeSession and Sender: one TCP connection at a time,
bound and kept bound (reconnecting with backoff), bytes moved, timers slept.

Everything with a decision in it lives in the sans-I/O cores; this file only moves
bytes and events. The consumer reads `events` (Bound, BindFailed, Closed,
ProtocolWarning, ConnectFailed, Inbound, and the sender's Accepted / Retrying / Failed
/ Expired) and must keep reading: the channel is unbounded so that the protocol never
waits on the application.

A transmitter + receiver pair is two Esme objects, one per bind mode.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import trio

from gatewayd import logs
from gatewayd.smpp import pdu as P
from gatewayd.smpp.pdu import Pdu
from gatewayd.smpp.sender import Sender
from gatewayd.smpp.session import (
    Backoff,
    BindFailed,
    Bound,
    Closed,
    DeliverSm,
    EsmeSession,
    SessionConfig,
    State,
    SubmitSmResp,
    SubmitUnanswered,
)

log = logs.get("gatewayd.smpp")


@dataclass(frozen=True)
class Inbound:
    """A deliver_sm (or data_sm). Commit it, then `await esme.respond(inbound.token)`."""
    pdu: Pdu
    token: tuple[int, int]      # (connection number, sequence_number)


@dataclass(frozen=True)
class ConnectFailed:
    reason: str


class Esme:
    def __init__(self, host: str, port: int, config: SessionConfig, *,
                 sender: Sender | None = None, backoff: Backoff | None = None,
                 clock: Callable[[], float] = trio.current_time) -> None:
        self.host, self.port, self.config = host, port, config
        self.sender = sender or Sender()
        self.backoff = backoff or Backoff()
        self.clock = clock
        self._events_in, self.events = trio.open_memory_channel[Any](math.inf)
        self.session: EsmeSession | None = None
        self._generation = 0
        self._stream: trio.abc.Stream | None = None
        self._send_lock = trio.Lock()
        self._wake = trio.Event()
        self._stopping = False
        self._idle_scope: trio.CancelScope | None = None
        self._bad_credentials_reported = False
        self._last_bind_bad = False

    # -- the application's side ----------------------------------------------------------
    def submit(self, ref: Hashable, fields: dict[str, Any],
               expires_at: float | None = None, urgent: bool = False) -> None:
        """Queue a submit_sm; its fate comes back as Accepted/Retrying/Failed/Expired."""
        self.sender.enqueue(ref, fields, self.clock(), expires_at, urgent)
        self._wake.set()

    async def respond(self, token: tuple[int, int], command_status: int = P.ESME_ROK) -> bool:
        """False when that connection is gone: the SMSC delivers again, dedupe it."""
        generation, sequence_number = token
        if generation != self._generation or self.session is None:
            return False
        sent = self.session.respond(sequence_number, command_status)
        await self._flush()
        return sent

    async def stop(self) -> None:
        """Unbind (waiting for unbind_resp at most unbind_timeout) and end `run`; then
        `events` ends once read to the end."""
        self._stopping = True
        if self.session is not None:
            self.session.unbind(self.clock())
        if self._idle_scope is not None:
            self._idle_scope.cancel()
        self._wake.set()

    # -- the loop ------------------------------------------------------------------------
    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while not self._stopping:
            bad_credentials = False
            try:
                stream = await trio.open_tcp_stream(self.host, self.port)
            except OSError as e:
                self._emit(ConnectFailed(str(e)))
            else:
                bad_credentials = await self._serve(stream)
            if self._stopping:
                break
            for e in self.sender.expire_due(self.clock()):
                self._emit(e)
            with trio.CancelScope() as self._idle_scope:
                await trio.sleep(self.backoff.next_delay(bad_credentials))
            self._idle_scope = None
        # Stopped, not cancelled: every event is out, so a reader of `events` can drain
        # them to the end (the last submit_sm_resps must still be recorded).
        self._events_in.close()

    async def _serve(self, stream: trio.abc.Stream) -> bool:
        self._generation += 1
        session = self.session = EsmeSession(self.config)
        self._stream = stream
        self._last_bind_bad = False
        try:
            async with stream:
                try:
                    async with trio.open_nursery() as nursery:
                        session.start(self.clock())
                        nursery.start_soon(self._reader, stream, session)
                        await self._pump(session)
                        nursery.cancel_scope.cancel()
                finally:
                    # Still bound here means cancelled (shutdown) or a bug: unbind anyway,
                    # briefly, so the SMSC does not hold messages for a dead bind.
                    if session.state is State.BOUND:
                        with trio.CancelScope(shield=True), \
                                trio.move_on_after(self.config.unbind_timeout):
                            await self._goodbye(stream, session)
        finally:
            self._handle(session.connection_lost(self.clock()))
            self._stream = None
        return self._last_bind_bad

    async def _goodbye(self, stream: trio.abc.Stream, session: EsmeSession) -> None:
        if session.state is not State.BOUND:
            return
        session.unbind(self.clock())
        try:
            await self._flush()
            while session.state is not State.CLOSED:
                data = await stream.receive_some(65536)
                if not data:
                    break
                self._handle(session.receive_data(data, self.clock()))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def _pump(self, session: EsmeSession) -> None:
        while True:
            now = self.clock()
            self._handle(session.tick(now))
            if self._stopping:
                if session.state is State.BINDING:
                    return
                session.unbind(now)
            elif session.can_submit:
                ready, expired = self.sender.ready(now, session.window_free)
                for e in expired:
                    self._emit(e)
                for o in ready:
                    session.send_submit_sm(o.fields, o.ref, now)
            await self._flush()
            if session.state is State.CLOSED:
                return
            deadlines = [d for d in (session.next_deadline(),
                                     self.sender.next_deadline(now) if session.can_submit
                                     else None) if d is not None]
            with trio.move_on_at(min(deadlines, default=math.inf)):
                await self._wake.wait()
            self._wake = trio.Event()

    async def _reader(self, stream: trio.abc.Stream, session: EsmeSession) -> None:
        while session.state is not State.CLOSED:
            try:
                data = await stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                self._handle(session.connection_lost(self.clock(), "connection closed by peer"))
            else:
                self._handle(session.receive_data(data, self.clock()))
                await self._flush()
            self._wake.set()

    async def _flush(self) -> None:
        async with self._send_lock:
            if self.session is None or self._stream is None:
                return
            data = self.session.data_to_send()
            if not data:
                return
            try:
                await self._stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._handle(self.session.connection_lost(self.clock(), "write failed"))
                self._wake.set()

    # -- events --------------------------------------------------------------------------
    def _handle(self, events: list[Any]) -> None:
        now = self.clock()
        for ev in events:
            if isinstance(ev, SubmitSmResp):
                outcome = self.sender.on_submit_sm_resp(ev, now)
                if outcome is not None:
                    self._emit(outcome)
                continue
            if isinstance(ev, SubmitUnanswered):
                outcome = self.sender.on_unanswered(ev.ref, now,
                                                    connection_lost=ev.reason != "timeout")
                if outcome is not None:
                    self._emit(outcome)
                continue
            if isinstance(ev, DeliverSm):
                self._emit(Inbound(ev.pdu, (self._generation, ev.sequence_number)))
                continue
            if isinstance(ev, Bound):
                self.backoff.reset()
                self._bad_credentials_reported = False
                self._last_bind_bad = False
                log.info("smpp_bound", host=self.host, port=self.port, smsc=ev.system_id)
            elif isinstance(ev, BindFailed):
                self._last_bind_bad = ev.bad_credentials
                if not ev.bad_credentials:
                    log.warning("smpp_bind_failed", reason=ev.reason)
                elif not self._bad_credentials_reported:
                    # Once, clearly: it repeats every few minutes until an operator acts.
                    self._bad_credentials_reported = True
                    log.error("smpp_bind_refused_bad_credentials", reason=ev.reason,
                              system_id=self.config.system_id,
                              hint="check smpp system_id and password in the config")
            elif isinstance(ev, Closed):
                log.info("smpp_closed", reason=ev.reason, by_peer=ev.by_peer)
            self._emit(ev)

    def _emit(self, event: Any) -> None:
        self._events_in.send_nowait(event)
