"""The ESME side of one SMPP 3.4 connection, sans-I/O, in the style of h11.

One `EsmeSession` per TCP connection. The caller feeds it what the socket read
(`receive_data`) and the time (`tick`; every method takes `now`, monotonic seconds),
asks it to send (`send_submit_sm`, `respond`, `unbind`), writes out `data_to_send()`
and sleeps until `next_deadline()`. It answers everything the protocol answers by
itself (enquire_link, unbind, generic_nack for what it cannot read) and returns events
for the rest.

States: CLOSED (new or finished) -> BINDING -> BOUND -> UNBINDING -> CLOSED. A session
that reached CLOSED stays closed: the caller writes out what is left, closes the socket
and makes a new session for the next connection.

A deliver_sm is answered only when the caller says so (`respond`), after it committed
the message: an SMSC that gets no deliver_sm_resp delivers again, so a power cut
between the two costs a duplicate (which receivers drop), never a message.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

from gatewayd.smpp import pdu as P
from gatewayd.smpp.pdu import DecodeError, Framer, FramingError, Pdu

BAD_CREDENTIALS = frozenset({P.ESME_RINVPASWD, P.ESME_RINVSYSID, P.ESME_RBINDFAIL})


class State(enum.Enum):
    CLOSED = "closed"
    BINDING = "binding"
    BOUND = "bound"
    UNBINDING = "unbinding"


class BindMode(str, enum.Enum):
    TRANSMITTER = "transmitter"
    RECEIVER = "receiver"
    TRANSCEIVER = "transceiver"


@dataclass(frozen=True)
class SessionConfig:
    system_id: str
    password: str
    system_type: str = ""
    bind_mode: BindMode = BindMode.TRANSCEIVER
    addr_ton: int = 0
    addr_npi: int = 0
    address_range: str = ""
    # Requests in flight at once. SMSCs commonly allow 10; more earns ESME_RTHROTTLED.
    window: int = 10
    response_timeout: float = 10.0
    bind_timeout: float = 10.0
    unbind_timeout: float = 5.0
    # Probe an idle link this often; many SMSCs drop a bind idle for 60 s or more.
    enquire_link_interval: float = 30.0
    enquire_link_timeout: float = 10.0
    max_pdu_length: int = P.MAX_PDU_LENGTH


# -- events ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Bound:
    system_id: str              # the SMSC's, from the bind response


@dataclass(frozen=True)
class BindFailed:
    command_status: int | None   # None: no answer in time
    bad_credentials: bool        # retry slowly and tell the operator once
    reason: str


@dataclass(frozen=True)
class SubmitSmResp:
    ref: Hashable
    sequence_number: int
    command_status: int
    message_id: str | None


@dataclass(frozen=True)
class SubmitUnanswered:
    """No submit_sm_resp: timed out or the connection went. The SMSC may or may not
    have the message; retrying risks a duplicate, not retrying risks a loss."""
    ref: Hashable
    sequence_number: int
    reason: str


@dataclass(frozen=True)
class DeliverSm:
    """deliver_sm (or data_sm) from the SMSC. Commit it, then `respond(sequence_number)`."""
    pdu: Pdu

    @property
    def sequence_number(self) -> int:
        return self.pdu.sequence_number


@dataclass(frozen=True)
class ProtocolWarning:
    reason: str


@dataclass(frozen=True)
class Closed:
    reason: str
    by_peer: bool


Event = (Bound | BindFailed | SubmitSmResp | SubmitUnanswered | DeliverSm | ProtocolWarning
         | Closed)


class SessionError(Exception):
    """The caller asked for something the session's state does not allow (a bug)."""


# -- retry policy ----------------------------------------------------------------------
@dataclass(frozen=True)
class RetryRule:
    attempts: int          # a message refused this way this many times is given up
    delay: float           # seconds before the next try
    slow_down: bool = False   # the SMSC is overloaded: the whole sender backs off


# Jasmin's defaults for comparison: throttled 20 x 30 s, queue full 2 x 180 s, system
# error 2 x 30 s. A throttled message waits for the sender's pause, not `delay`.
RETRY_POLICY: dict[int, RetryRule] = {
    P.ESME_RTHROTTLED: RetryRule(attempts=20, delay=30.0, slow_down=True),
    P.ESME_RMSGQFUL: RetryRule(attempts=3, delay=180.0, slow_down=True),
    P.ESME_RSYSERR: RetryRule(attempts=3, delay=30.0),
    P.ESME_RX_T_APPN: RetryRule(attempts=3, delay=60.0),
}
# No answer at all (timeout, connection lost): most often the SMSC never saw it.
UNANSWERED_RULE = RetryRule(attempts=5, delay=10.0)


def retry_rule(command_status: int, policy: dict[int, RetryRule] = RETRY_POLICY
               ) -> RetryRule | None:
    """None: permanent (bad address, bad data...), retrying cannot help."""
    return policy.get(command_status)


# -- reconnect backoff -----------------------------------------------------------------
@dataclass
class Backoff:
    """Delays between connection attempts: exponential with jitter, so that a fleet of
    boxes does not reconnect in step after the SMSC restarts; a refused bind for bad
    credentials waits long, since only an operator can fix it."""
    initial: float = 1.0
    maximum: float = 60.0
    factor: float = 2.0
    jitter: float = 0.5            # a delay is drawn from [d * (1 - jitter), d]
    bad_credentials_delay: float = 300.0
    rng: random.Random | None = None
    _current: float = 0.0

    def next_delay(self, bad_credentials: bool = False) -> float:
        if bad_credentials:
            base = self.bad_credentials_delay
        else:
            self._current = (self.initial if self._current == 0.0
                             else min(self.maximum, self._current * self.factor))
            base = self._current
        rng = self.rng or random
        return base * (1.0 - self.jitter * rng.random())

    def reset(self) -> None:
        self._current = 0.0


# -- the session -----------------------------------------------------------------------
@dataclass
class _Outstanding:
    command: str
    deadline: float
    ref: Hashable = None


_BIND_COMMANDS = {BindMode.TRANSMITTER: "bind_transmitter",
                  BindMode.RECEIVER: "bind_receiver",
                  BindMode.TRANSCEIVER: "bind_transceiver"}
_SUBMITS = ("submit_sm", "data_sm")


class EsmeSession:
    def __init__(self, config: SessionConfig) -> None:
        self.config = config
        self.state = State.CLOSED
        self.closed_reason: str | None = None
        self._framer = Framer(config.max_pdu_length)
        self._out = bytearray()
        self._next_sequence = 1
        self._outstanding: dict[int, _Outstanding] = {}
        self._unanswered: dict[int, str] = {}   # deliver_sm/data_sm waiting for respond()
        self._last_heard = 0.0
        self._started = False

    # -- caller -> session -------------------------------------------------------------
    def start(self, now: float) -> None:
        """The TCP connection is up: send the bind."""
        if self._started:
            raise SessionError("a session binds once; make a new one per connection")
        self._started = True
        c = self.config
        self._request(_BIND_COMMANDS[c.bind_mode], now, c.bind_timeout, fields={
            "system_id": c.system_id, "password": c.password, "system_type": c.system_type,
            "addr_ton": c.addr_ton, "addr_npi": c.addr_npi, "address_range": c.address_range})
        self.state = State.BINDING
        self._last_heard = now

    @property
    def can_submit(self) -> bool:
        return (self.state is State.BOUND and self.config.bind_mode is not BindMode.RECEIVER
                and self.window_free > 0)

    @property
    def window_free(self) -> int:
        used = sum(1 for o in self._outstanding.values() if o.command in _SUBMITS)
        return max(0, self.config.window - used)

    def send_submit_sm(self, fields: dict[str, Any], ref: Hashable, now: float,
                       command: str = "submit_sm") -> int:
        """Queue a submit_sm; returns its sequence_number. Check `can_submit` first."""
        if self.state is not State.BOUND:
            raise SessionError(f"cannot submit in state {self.state.value}")
        if self.config.bind_mode is BindMode.RECEIVER:
            raise SessionError("a receiver bind cannot submit")
        if self.window_free <= 0:
            raise SessionError("window full")
        return self._request(command, now, self.config.response_timeout, fields, ref)

    def respond(self, sequence_number: int, command_status: int = P.ESME_ROK) -> bool:
        """Answer a DeliverSm (deliver_sm_resp or data_sm_resp): after it is committed,
        or with an error status to have the SMSC deliver it again later. False when the
        connection went meanwhile (the SMSC will deliver it again: drop the duplicate)."""
        if self.state is State.CLOSED:
            return False
        command = self._unanswered.pop(sequence_number, None)
        if command is None:
            raise SessionError(f"no deliver_sm {sequence_number} waits for an answer")
        self._send(Pdu(command + "_resp", sequence_number, command_status))
        return True

    def unbind(self, now: float) -> None:
        if self.state is State.BOUND:
            self._request("unbind", now, self.config.unbind_timeout)
            self.state = State.UNBINDING

    def data_to_send(self) -> bytes:
        data, self._out = bytes(self._out), bytearray()
        return data

    def next_deadline(self) -> float | None:
        times = [o.deadline for o in self._outstanding.values()]
        if self.state is State.BOUND and not self._enquiring():
            times.append(self._last_heard + self.config.enquire_link_interval)
        return min(times) if times else None

    # -- the network -> session --------------------------------------------------------
    def receive_data(self, data: bytes, now: float) -> list[Event]:
        if self.state is State.CLOSED:
            return []
        events: list[Event] = []
        if data:
            self._last_heard = now
        for frame in self._framer.feed(data):
            if isinstance(frame, FramingError):
                self._send_raw(P.generic_nack(P.ESME_RINVCMDLEN, frame.sequence_number))
                self._close(events, f"framing error: {frame.reason}", by_peer=False)
                break
            self._on_pdu(P.decode(frame), now, events)
            if self.state is State.CLOSED:
                break
        return events

    def connection_lost(self, now: float, reason: str = "connection lost") -> list[Event]:
        events: list[Event] = []
        if self.state is not State.CLOSED:
            self._close(events, reason, by_peer=True)
        return events

    def tick(self, now: float) -> list[Event]:
        events: list[Event] = []
        for seq, o in sorted(self._outstanding.items(), key=lambda kv: kv[1].deadline):
            if self.state is State.CLOSED or o.deadline > now or seq not in self._outstanding:
                continue
            del self._outstanding[seq]
            if o.command in _SUBMITS:
                events.append(SubmitUnanswered(o.ref, seq, "timeout"))
            elif o.command.startswith("bind_"):
                events.append(BindFailed(None, False, "no bind response in time"))
                self._close(events, "bind timed out", by_peer=False)
            elif o.command == "enquire_link":
                self._close(events, "enquire_link_resp missed", by_peer=False)
            elif o.command == "unbind":
                self._close(events, "unbind_resp missed", by_peer=False)
        if (self.state is State.BOUND and not self._enquiring()
                and now >= self._last_heard + self.config.enquire_link_interval):
            self._request("enquire_link", now, self.config.enquire_link_timeout)
        return events

    # -- internals ---------------------------------------------------------------------
    def _enquiring(self) -> bool:
        return any(o.command == "enquire_link" for o in self._outstanding.values())

    def _allocate(self) -> int:
        while True:
            seq = self._next_sequence
            self._next_sequence = seq % P.MAX_SEQUENCE + 1
            if seq not in self._outstanding:
                return seq

    def _request(self, command: str, now: float, timeout: float,
                 fields: dict[str, Any] | None = None, ref: Hashable = None) -> int:
        seq = self._allocate()
        self._send(Pdu(command, seq, P.ESME_ROK, dict(fields or {})))
        self._outstanding[seq] = _Outstanding(command, now + timeout, ref)
        return seq

    def _send(self, pdu: Pdu) -> None:
        self._send_raw(P.encode(pdu))

    def _send_raw(self, data: bytes) -> None:
        self._out += data

    def _close(self, events: list[Event], reason: str, by_peer: bool) -> None:
        for seq, o in sorted(self._outstanding.items()):
            if o.command in _SUBMITS:
                events.append(SubmitUnanswered(o.ref, seq, reason))
        self._outstanding.clear()
        self._unanswered.clear()
        self.state = State.CLOSED
        self.closed_reason = reason
        events.append(Closed(reason, by_peer))

    def _on_pdu(self, item: Pdu | DecodeError, now: float, events: list[Event]) -> None:
        if isinstance(item, DecodeError):
            events.append(ProtocolWarning(f"undecodable PDU: {item.reason}"))
            if not item.is_response:
                self._send_raw(P.generic_nack(item.command_status, item.sequence_number))
            return
        if item.is_response:
            self._on_response(item, events)
        else:
            self._on_request(item, events)

    def _on_response(self, pdu: Pdu, events: list[Event]) -> None:
        o = self._outstanding.get(pdu.sequence_number)
        if o is None or pdu.command not in (o.command + "_resp", "generic_nack"):
            events.append(ProtocolWarning(
                f"{pdu.command} {pdu.sequence_number} answers no request of ours"))
            return
        del self._outstanding[pdu.sequence_number]
        status = pdu.command_status
        if o.command.startswith("bind_"):
            if status == P.ESME_ROK:
                self.state = State.BOUND
                events.append(Bound(pdu.get("system_id") or ""))
            else:
                bad = status in BAD_CREDENTIALS
                events.append(BindFailed(status, bad, P.status_name(status)))
                self._close(events, f"bind refused: {P.status_name(status)}", by_peer=True)
        elif o.command in _SUBMITS:
            message_id = pdu.get("message_id") if status == P.ESME_ROK else None
            events.append(SubmitSmResp(o.ref, pdu.sequence_number, status, message_id))
        elif o.command == "unbind":
            self._close(events, "unbound", by_peer=False)

    def _on_request(self, pdu: Pdu, events: list[Event]) -> None:
        command = pdu.command
        if command == "enquire_link":
            self._send(pdu.response())
        elif command == "unbind":
            self._send(pdu.response())
            self._close(events, "unbind by the SMSC", by_peer=True)
        elif command in ("deliver_sm", "data_sm"):
            if (self.state not in (State.BOUND, State.UNBINDING)
                    or self.config.bind_mode is BindMode.TRANSMITTER):
                self._send(pdu.response(P.ESME_RINVBNDSTS))
                events.append(ProtocolWarning(f"{command} while {self.state.value}"))
            elif pdu.sequence_number in self._unanswered:
                # The same sequence_number again before we answered: the SMSC resent
                # it. The first copy's answer will answer this one too.
                events.append(ProtocolWarning(f"{command} {pdu.sequence_number} resent"))
            else:
                self._unanswered[pdu.sequence_number] = command
                events.append(DeliverSm(pdu))
        elif command == "alert_notification":
            events.append(ProtocolWarning("alert_notification ignored"))
        else:
            self._send_raw(P.generic_nack(P.ESME_RINVCMDID, pdu.sequence_number))
            events.append(ProtocolWarning(f"{command} from the SMSC not supported"))
