"""One modem as a trio task: open it, watch it, read what it stores, send what it is
given, and reopen it (with backoff) when it hangs, babbles or disappears.

Every blocking call goes to a worker thread through `trio.to_thread.run_sync` with
this modem's own CapacityLimiter(1): two commands never interleave on one port, and
one slow modem never holds up another. What the library's reader thread sees (URCs,
a fatal EOF) comes back with `TrioToken.run_sync_soon`, which never blocks that
thread: a busy event loop must not back up the serial port.

A session is one open port. It ends — and the modem is closed and reopened — when a
command gets no answer within `at_timeout` (a hang), when three health polls in a
row get no parsable answer (garbage), or when the port reports EOF (unplugged). A
wrong SIM PIN is never retried: a third wrong PIN locks the SIM until a PUK.
"""

from __future__ import annotations

import logging
import math
import random
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
import trio
from gsmmodem.exceptions import (
    CmsError,
    CommandError,
    IncorrectPinError,
    PinRequiredError,
    PukRequiredError,
    TimeoutException,
)

from modem import at
from modem import pdu as P
from modem.config import ModemConfig
from modem.events import Location, OutgoingSms, SmsIn
from modem.inbox import DEFAULT_TIMEOUT, Inbox
from modem.receive import Receiving
from modem.serialmodem import PortGone, SerialModem
from modem.session import ModemDown, NotSent, SendError, Session, Stale

log = structlog.get_logger("gatewayd.modem")

# A modem that stayed up this long had its trouble behind it: back off from the start.
STABLE_SECONDS = 60.0
GARBAGE_LIMIT = 3


class _NoPin(logging.Filter):
    """python-gsmmodem-new logs every command at debug level, AT+CPIN="1234" included,
    and every answer, which holds the command's echo while echo is still on."""

    _PIN = re.compile(r'(CPIN=)"?\d+"?')

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args and any("CPIN=" in str(a) for a in record.args):
            record.args = tuple(self._PIN.sub(r"\1<hidden>", str(a)) if "CPIN=" in str(a) else a
                                for a in record.args)
        return True


for _name in ("gsmmodem.modem.GsmModem", "gsmmodem.serial_comms.SerialComms"):
    logging.getLogger(_name).addFilter(_NoPin())


# Inbound things go to the pool: SmsIn / Undecodable as they are, status reports as
# (report PDU, location). The call returns once the daemon committed them.
Inbound = Callable[["ModemWorker", Any], Awaitable[None]]


class ModemWorker(Receiving):
    def __init__(self, config: ModemConfig, inbound: Inbound, *,
                 on_state: Callable[[ModemWorker], None] = lambda w: None,
                 reassembly_timeout: float = DEFAULT_TIMEOUT,
                 min_backoff: float = 1.0, max_backoff: float = 60.0) -> None:
        self.config = config
        self.name = config.name
        self._inbound = inbound
        self._on_state = on_state
        self.min_backoff, self.max_backoff = min_backoff, max_backoff
        self.limiter = trio.CapacityLimiter(1)
        self.inbox = Inbox(self.name, timeout=reassembly_timeout)
        self._inbound_lock = trio.Lock()
        # Commands are numbered in the order the modem ran them. A +CMTI read and a
        # listing can both pick up a message before it is deleted; a copy read by a
        # command older than the delete of its location is stale and is skipped.
        self._command_no = 0
        self._deleted: OrderedDict[Location, int] = OrderedDict()
        self._session: Session | None = None
        # Health, for status and metrics.
        self.state = "starting"
        self.last_error: str | None = None
        self.imsi: str | None = None
        self.imei: str | None = None
        self.operator: str | None = None
        self.rssi: int | None = None
        self.registration: int | None = None
        self.sessions = 0
        self.sent = self.send_failures = self.received = 0
        self.garbage_lines = 0
        self._bad_answers = 0

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    @property
    def sendable(self) -> bool:
        """Ready and, once known, registered (home or roaming): a modem that lost the
        network gets no SMS to send until it finds it again."""
        return self.ready and self.registration in (None, 1, 5)

    def _set_state(self, state: str, error: str | None = None) -> None:
        if error is not None:
            self.last_error = error
        if state != self.state:
            log.info("modem_state", modem=self.name, state=state, error=error)
            self.state = state
            self._on_state(self)

    # -- lifecycle --------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        """Up at once: a box whose modem is unplugged still serves USSD, and says so."""
        task_status.started()
        backoff = self.min_backoff
        try:
            while True:
                self._set_state("connecting")
                try:
                    session = await self._open()
                except (IncorrectPinError, PukRequiredError) as e:
                    # Another try would spend another of the SIM's three PIN attempts.
                    self._set_state("failed", f"SIM: {type(e).__name__} (+CME ERROR: {e.code}); "
                                              "not retried: fix this modem's pin, then reload")
                    await trio.sleep_forever()
                except ModemDown as e:
                    self._set_state("down", str(e))
                else:
                    opened = trio.current_time()
                    self._session = session
                    try:
                        await self._run_session(session)
                    finally:
                        self._session = None
                        with trio.CancelScope(shield=True):
                            await self._close(session.modem)
                    self._set_state("down", session.reason)
                    if trio.current_time() - opened > STABLE_SECONDS:
                        backoff = self.min_backoff
                delay = backoff * random.uniform(0.5, 1.5)
                log.info("modem_reopen", modem=self.name, in_seconds=round(delay, 2))
                await trio.sleep(delay)
                backoff = min(self.max_backoff, backoff * 2)
        finally:
            self.state = "stopped"
            self._on_state(self)

    async def _open(self) -> Session:
        token = trio.lowlevel.current_trio_token()
        send, recv = trio.open_memory_channel[at.Urc](math.inf)
        holder: list[Session] = []

        def from_reader(fn: Callable[..., None], *args: Any) -> None:
            try:
                token.run_sync_soon(fn, *args)
            except trio.RunFinishedError:
                pass            # the daemon is stopping

        cfg = self.config
        modem = SerialModem(cfg.port, cfg.baud, rtscts=cfg.rtscts, at_timeout=cfg.at_timeout,
                            cnmi=cfg.cnmi, smsc=cfg.smsc,
                            on_urc=lambda urc: from_reader(self._urc, holder, urc),
                            on_fatal=lambda e: from_reader(self._fatal, holder, e))
        try:
            ident = await trio.to_thread.run_sync(modem.open, cfg.pin, limiter=self.limiter)
        except (IncorrectPinError, PukRequiredError):
            raise
        except PinRequiredError:
            # No PIN configured, or a garbled +CPIN answer (python-gsmmodem-new reads any
            # answer but "+CPIN: READY" as "PIN required"): retrying costs nothing.
            raise ModemDown("SIM asks for a PIN (+CPIN); set this modem's pin") from None
        except TimeoutException:
            raise ModemDown(f"no answer within {cfg.at_timeout:g} s while opening") from None
        except Exception as e:  # noqa: BLE001 - no such device, port busy, ERROR to an init command
            raise ModemDown(f"open failed: {type(e).__name__}: {e}") from None
        session = Session(modem, send, recv, lambda reason: self._set_state("down", reason))
        holder.append(session)
        self.imsi, self.imei = ident["imsi"], ident["imei"]
        self.sessions += 1
        self._bad_answers = 0
        return session

    def _urc(self, holder: list[Session], urc: at.Urc) -> None:
        # In the trio thread. Must not raise: it runs as a run_sync_soon callback.
        if isinstance(urc, at.Garbage):
            self.garbage_lines += 1
            # A babbling line makes thousands: the first few, then every hundredth.
            if self.garbage_lines <= 3 or self.garbage_lines % 100 == 0:
                log.warning("modem_garbage", modem=self.name, count=self.garbage_lines,
                            line=repr(urc.line[:80]))
        elif holder:
            try:
                holder[0].urc_send.send_nowait(urc)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                pass

    def _fatal(self, holder: list[Session], error: BaseException) -> None:
        if holder:
            holder[0].fail(f"port gone: {error}")

    async def _close(self, modem: SerialModem) -> None:
        # Not behind the limiter: a send waiting for +CMGS (up to send_timeout) would
        # hold the close, and a stopping daemon, that long. close() wakes it instead.
        try:
            await trio.to_thread.run_sync(modem.close, abandon_on_cancel=True)
        except Exception as e:  # noqa: BLE001 - closing a dead port fails; it is closed anyway
            log.debug("modem_close_failed", modem=self.name, error=str(e))

    async def _run_session(self, s: Session) -> None:
        self._set_state("ready")
        async with trio.open_nursery() as nursery:
            for loop in (self._health_loop, self._urc_loop, self._list_loop):
                nursery.start_soon(self._guard, loop, s)
            await s.broken.wait()
            nursery.cancel_scope.cancel()
        s.urc_send.close()
        log.warning("modem_session_ended", modem=self.name, reason=s.reason)

    async def _guard(self, loop: Callable[[Session], Awaitable[None]], s: Session) -> None:
        try:
            await loop(s)
        except ModemDown:
            pass                 # the session is already marked broken
        except Exception as e:   # a bug here must cost a reopen, not the whole pool
            log.error("modem_loop_crashed", modem=self.name, error=f"{type(e).__name__}: {e}",
                      exc_info=e)
            s.fail(f"internal error: {type(e).__name__}: {e}")

    async def _call(self, s: Session, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)` in a thread, alone on this modem: (command number, result)."""
        if s.broken.is_set():
            raise NotSent(s.reason)

        def numbered() -> tuple[int, Any]:
            # In the worker thread, holding the limiter: one command at a time.
            if s.dead:
                raise Stale()
            self._command_no += 1
            try:
                return self._command_no, fn(*args)
            except (TimeoutException, PortGone):
                s.dead = True
                raise

        try:
            return await trio.to_thread.run_sync(numbered, limiter=self.limiter)
        except Stale:
            raise NotSent(s.reason or "port closing") from None
        except TimeoutException:
            s.fail(f"hang: no answer to {what} in time")
        except PortGone as e:
            s.fail(f"port gone: {e}")
        raise ModemDown(s.reason)

    # -- health -----------------------------------------------------------------------
    async def _health_loop(self, s: Session) -> None:
        while True:
            try:
                _, h = await self._call(s, "AT+CSQ", s.modem.health)
            except CommandError as e:
                h = {"answered": False, "error": str(e)}
            if h["answered"]:
                self._bad_answers = 0
                before = (self.registration, self.operator)
                self.rssi, self.registration = h["rssi"], h["registration"]
                self.operator = h["operator"] or self.operator
                if (self.registration, self.operator) != before:
                    # The pool re-plans (a modem off the network gets nothing to send).
                    log.info("modem_registration", modem=self.name, operator=self.operator,
                             registration=at.REGISTRATION.get(self.registration))
                    self._on_state(self)
            else:
                self._bad_answers += 1
                if self._bad_answers >= GARBAGE_LIMIT:
                    s.fail(f"garbage: {GARBAGE_LIMIT} health polls without a +CSQ answer")
                    return
            await trio.sleep(self.config.poll_seconds)

    # -- SMS out ----------------------------------------------------------------------
    async def send(self, sms: OutgoingSms) -> tuple[int, ...]:
        """Send one SMS (all its parts); its TP-MRs. Raises ModemDown (try another
        modem) or SendError (the modem refused it; `permanent` if no retry can help)."""
        s = self._session
        if s is None or s.broken.is_set() or self.state != "ready":
            raise NotSent(self.last_error or self.state)
        try:
            pdus = P.encode_submit(dial_form(sms.msisdn), sms.text, reference=sms.outbox_id,
                                   validity_seconds=self.config.validity_hours * 3600)
        except ValueError as e:
            raise SendError(f"cannot encode: {e}", permanent=True) from None
        try:
            _, refs = await self._call(s, "AT+CMGS", s.modem.send_pdus, pdus,
                                       self.config.send_timeout)
        except CmsError as e:
            self.send_failures += 1
            raise SendError(f"+CMS ERROR: {e.code}", permanent=at.cms_permanent(e.code)) from None
        except CommandError as e:
            self.send_failures += 1
            raise SendError(str(e), permanent=False) from None
        except NotSent:
            raise                       # the port died while this SMS waited its turn
        except ModemDown:
            self.send_failures += 1
            raise
        self.sent += 1
        return tuple(refs)

    async def check_now(self) -> None:
        """List stored messages at once (tests, and an operator's "check SIM")."""
        s = self._session
        if s is None:
            raise ModemDown(self.last_error or self.state)
        await self.check_stored(s)

    def health(self) -> dict[str, Any]:
        return {
            "name": self.name, "port": self.config.port, "state": self.state,
            "imsi": self.imsi, "imei": self.imei, "operator": self.operator,
            "signal_rssi": self.rssi,
            "signal_dbm": None if self.rssi is None else -113 + 2 * self.rssi,
            "registration": at.REGISTRATION.get(self.registration, None)
            if self.registration is not None else None,
            "last_error": self.last_error, "sessions": self.sessions,
            "sent": self.sent, "send_failures": self.send_failures,
            "received": self.received, "duplicates": self.inbox.duplicates,
            "garbage_lines": self.garbage_lines, "parts_waiting": self.inbox.waiting,
        }


def dial_form(msisdn: str) -> str:
    """The store keeps 2547XXXXXXXX; on the air an international number wants '+'."""
    s = msisdn.strip()
    if s.startswith(("+", "0")) or not s.isdigit() or len(s) < 11:
        return s
    return "+" + s


__all__ = ["ModemDown", "ModemWorker", "NotSent", "SendError", "SmsIn", "dial_form"]
