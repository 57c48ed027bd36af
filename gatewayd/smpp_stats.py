"""What the SMPP channel has done, for `gatewayd status`, /metrics and /healthz, and the
log line each outcome deserves; and receipts waiting for their message id. Bookkeeping
only: no I/O beyond the log, no clock (times are passed in)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gatewayd import logs
from gatewayd import smpp_jobs as jobs
from gatewayd.smpp.client import ConnectFailed
from gatewayd.smpp.session import BindFailed, Bound, Closed, ProtocolWarning
from store.sms import ReceiptResult

log = logs.get("gatewayd.smpp")


@dataclass
class SmppStats:
    binds: int = 0
    bind_failures: int = 0
    accepted: int = 0            # submit_sm (SMS parts) the SMSC accepted
    retried: int = 0
    failed: int = 0
    expired: int = 0
    receipts: int = 0            # applied to an SMS
    receipts_duplicate: int = 0  # duplicate or stale: changed nothing
    receipts_unknown: int = 0    # for no message we know: logged and dropped
    mo_messages: int = 0
    mo_parts_waiting: int = 0
    mo_duplicates: int = 0
    ussd_hops: int = 0
    ussd_replies_lost: int = 0
    protocol_warnings: int = 0
    # bind mode -> "bound", "connecting: <why>" or "failing: <why>"
    bind_state: dict[str, str] = field(default_factory=dict)

    def counters(self) -> dict[str, int]:
        return {k: v for k, v in vars(self).items() if k != "bind_state"}

    def applied(self, op: jobs.Op, result: Any) -> bool:
        """Count one committed op and log it; True when it brought an SMS in (its
        reply waits in the outbox now)."""
        if isinstance(result, jobs.OpFailed):
            return False
        if isinstance(op, jobs.Accepted):
            self.accepted += 1
            if result == "submitted":
                log.info("sms_submitted", sms=op.sms_id, parts=op.parts,
                         message_id=op.message_id, attempts=op.attempts)
        elif isinstance(op, jobs.Retrying):
            self.retried += 1
        elif isinstance(op, jobs.Failed):
            self.failed += 1
            log.warning("sms_failed", sms=op.sms_id, reason=op.reason, attempts=op.attempts)
        elif isinstance(op, jobs.Expired):
            self.expired += 1
            log.warning("sms_expired", sms=op.sms_id, attempts=op.attempts)
        elif isinstance(op, jobs.ReceiptIn):
            self._receipt(op, result)
        elif isinstance(op, jobs.PartIn):
            return self._part(op, result)
        return False

    def _receipt(self, op: jobs.ReceiptIn, result: Any) -> None:
        if result.sms_id is None:
            self.receipts_unknown += 1
            log.warning("smpp_receipt_unknown", id_keys=list(op.id_keys), state=op.state,
                        ambiguous=result.ambiguous)
        elif result.changed:
            self.receipts += 1
            log.info("sms_receipt", sms=result.sms_id, part=result.part, receipt=op.state,
                     state=result.state)
        else:
            self.receipts_duplicate += 1

    def _part(self, op: jobs.PartIn, result: jobs.MoResult) -> bool:
        if result.kind == "duplicate":
            self.mo_duplicates += 1
            log.info("sms_in_duplicate_dropped", msisdn=op.part.source_addr)
            return False
        if result.kind == "waiting":
            self.mo_parts_waiting += 1
            return False
        self.mo_messages += 1
        log.info("sms_in", msisdn=op.part.source_addr, parts=result.parts,
                 command=result.command, replied=result.reply_id is not None)
        return True

    def bind_event(self, mode: str, ev: Any) -> bool:
        """Track the bind's state; True when it just came up."""
        state = self.bind_state
        if isinstance(ev, Bound):
            self.binds += 1
            state[mode] = "bound"
            return True
        if isinstance(ev, BindFailed):
            self.bind_failures += 1
            hint = " (check smpp.system_id and smpp.password)" if ev.bad_credentials else ""
            state[mode] = f"failing: bind refused: {ev.reason}{hint}"
        elif isinstance(ev, ConnectFailed):
            state[mode] = f"connecting: {ev.reason}"
        elif isinstance(ev, Closed):
            # A refused bind closes the connection too; the refusal is the news.
            if not state.get(mode, "").startswith("failing"):
                state[mode] = f"connecting: {ev.reason}"
        elif isinstance(ev, ProtocolWarning):
            self.protocol_warnings += 1
            log.warning("smpp_protocol_warning", reason=ev.reason)
        return False


class ReceiptParking:
    """Pair mode: a receipt comes on the receiver bind and can overtake the
    submit_sm_resp of its message on the transmitter bind, so its id is not recorded
    yet. Such a receipt waits here and is tried again with the next ids recorded, for at
    most a response timeout; then it is unknown after all. (Its deliver_sm was answered:
    holding the resp would stall the SMSC, and a receipt is worth less than that.)"""

    def __init__(self) -> None:
        self._parked: list[tuple[float, jobs.ReceiptIn]] = []
        self._until: dict[int, float] = {}

    def __len__(self) -> int:
        return len(self._parked)

    def expired(self, now: float) -> list[jobs.ReceiptIn]:
        gone = [op for until, op in self._parked if until <= now]
        self._parked = [(until, op) for until, op in self._parked if until > now]
        return gone

    def take(self) -> list[jobs.ReceiptIn]:
        """All parked receipts, to be tried again (`park` them back if still unknown)."""
        self._until = {id(op): until for until, op in self._parked}
        taken, self._parked = [op for _, op in self._parked], []
        return taken

    def park(self, op: jobs.Op, result: Any, retried: bool, now: float, wait: float) -> bool:
        """True when `op` is a receipt for an unknown id that may still be matched."""
        if not (isinstance(op, jobs.ReceiptIn) and isinstance(result, ReceiptResult)
                and result.sms_id is None and not result.ambiguous):
            return False
        until = self._until.pop(id(op), 0.0) if retried else now + wait
        if until <= now:
            return False
        self._parked.append((until, op))
        return True
