"""What the SMPP channel writes, as jobs for the store's writer thread.

The channel reads its Esme's events in batches and applies each batch in ONE
transaction (`apply_batch`): sender outcomes move outbox rows, receipts settle them,
inbound SMS parts are deduplicated, filed, reassembled and answered. Only after that
commit does the channel send the deliver_sm_resp of each inbound PDU, so a crash
between the two costs a resend from the SMSC (which the dedupe drops), never a message.

The store's tables are the reassembler's state: a part is filed in the same
transaction that decides whether its message is now whole, so what the box believes
about a long SMS is always what is on disk, across restarts too.

Each op runs in its own SAVEPOINT: a bug on one PDU costs that PDU (logged, answered,
dropped, since resending a poison message forever helps nobody), not the batch. A
sqlite3 error is the store's, not the op's: it fails the whole job, and the channel
answers the batch's PDUs with a temporary error so that the SMSC sends them again.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gatewayd import logs, sms_answer
from gatewayd.ratelimit import RateLimiter
from gatewayd.smpp import mo, receipts
from gatewayd.smpp.mo import MoPart
from gatewayd.smpp.pdu import Pdu
from gatewayd.smpp.sms import Concat
from menus.flow import Settings
from menus.texts import Texts
from store import sms as sms_store

log = logs.get("gatewayd.smpp")

# Answers per phone: a few in a row, then about one every six minutes. A phone (or
# another machine's auto-reply) that texts the short code in a loop must not make the
# box text it back in a loop; its messages are still kept.
REPLY_BURST = 5
REPLIES_PER_HOUR = 10


def reply_limiter() -> RateLimiter:
    return RateLimiter(REPLIES_PER_HOUR / 60.0, REPLY_BURST)


@dataclass
class JobContext:
    """What the jobs need from the daemon; replaced as a whole on reload."""
    settings: Settings
    texts: dict[str, Texts]
    validity: float              # seconds an SMS stays worth sending
    dedupe_window: float
    concat_timeout: float
    reply_limiter: RateLimiter   # reply_limiter(): one for the daemon's life


# -- ops ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Accepted:
    sms_id: int
    part: int
    parts: int
    message_id: str
    id_keys: tuple[str, ...]
    attempts: int


@dataclass(frozen=True)
class Retrying:
    sms_id: int
    attempts: int
    reason: str


@dataclass(frozen=True)
class Failed:
    sms_id: int
    attempts: int
    reason: str


@dataclass(frozen=True)
class Expired:
    sms_id: int
    attempts: int


@dataclass(frozen=True)
class ReceiptIn:
    id_keys: tuple[str, ...]
    state: str                   # MessageState name: DELIVERED, ENROUTE...
    error: str | None


@dataclass(frozen=True)
class PartIn:
    part: MoPart
    key: str                     # mo.part_key(part)


Op = Accepted | Retrying | Failed | Expired | ReceiptIn | PartIn


@dataclass(frozen=True)
class MoResult:
    kind: str                    # message | waiting | duplicate
    command: str | None = None
    reply_id: int | None = None
    parts: int = 0


@dataclass(frozen=True)
class OpFailed:
    error: str


def inbound_op(pdu: Pdu, receipt_id_format: str = "auto") -> Op | None:
    """A deliver_sm that is not USSD -> what to apply: a receipt, or an SMS part. None
    for a receipt without an id (nothing to match; answered and dropped)."""
    if receipts.is_receipt(pdu):
        r = receipts.parse_receipt(pdu)
        if r is None:
            log.warning("smpp_receipt_without_id")
            return None
        return ReceiptIn(receipts.message_id_keys(r.message_id, receipt_id_format),
                         r.state.name, r.error)
    part = mo.mo_part(pdu)
    return PartIn(part, mo.part_key(part))


# -- the batch ---------------------------------------------------------------------------

def apply_batch(conn: sqlite3.Connection, ops: Sequence[Op], ctx: JobContext,
                now: float) -> list[Any]:
    """One result per op, in order (an OpFailed for an op that hit a bug)."""
    results: list[Any] = []
    for op in ops:
        conn.execute("SAVEPOINT op")
        try:
            results.append(_apply(conn, op, ctx, now))
            conn.execute("RELEASE op")
        except sqlite3.Error:
            raise
        except Exception as e:  # noqa: BLE001 - one PDU's bug, not the channel's
            conn.execute("ROLLBACK TO op")
            conn.execute("RELEASE op")
            log.exception("smpp_op_failed", op=type(op).__name__)
            results.append(OpFailed(f"{type(e).__name__}: {e}"))
    return results


def _apply(conn: sqlite3.Connection, op: Op, ctx: JobContext, now: float) -> Any:
    if isinstance(op, Accepted):
        return sms_store.part_accepted(conn, op.sms_id, op.part, op.parts, op.message_id,
                                       op.id_keys, op.attempts, now)
    if isinstance(op, Retrying):
        return sms_store.part_retrying(conn, op.sms_id, op.attempts, op.reason, now)
    if isinstance(op, Failed):
        return sms_store.part_failed(conn, op.sms_id, op.attempts, op.reason, now)
    if isinstance(op, Expired):
        return sms_store.part_expired(conn, op.sms_id, op.attempts, now)
    if isinstance(op, ReceiptIn):
        return sms_store.apply_receipt(conn, op.id_keys, op.state, op.error, now)
    return _part_in(conn, op, ctx, now)


def _part_in(conn: sqlite3.Connection, op: PartIn, ctx: JobContext, now: float) -> MoResult:
    part = op.part
    if sms_store.seen_recently(conn, op.key, now, ctx.dedupe_window):
        return MoResult("duplicate")
    c = part.concat
    if c is None:
        return _deliver(conn, ctx, [part], op.key, True, now)
    rows = sms_store.add_part(conn, _group_key(part), c.seq, c.total, part.source_addr,
                              part.destination_addr, part.data_coding, part.body, op.key,
                              now)
    if rows is None:
        return MoResult("duplicate")
    if not rows:
        return MoResult("waiting")
    return _deliver(conn, ctx, [_part_of(r) for r in rows], rows[0]["part_key"], True, now)


def _group_key(part: MoPart) -> str:
    c = part.concat
    assert c is not None
    return f"{part.source_addr}|{part.destination_addr}|{c.kind}:{c.reference}:{c.total}"


def _part_of(row: sqlite3.Row) -> MoPart:
    kind, reference, _ = row["group_key"].rsplit("|", 1)[1].split(":")
    return MoPart(row["source_addr"], row["short_code"], row["data_coding"], bytes(row["body"]),
                  Concat(kind, int(reference), row["total"], row["seq"]))


def _deliver(conn: sqlite3.Connection, ctx: JobContext, parts: list[MoPart], dedupe_key: str,
             complete: bool, now: float) -> MoResult:
    """A whole message (or what came of one): answered by the SMS commands, stored with
    its reply in this transaction (gatewayd.sms_answer, shared with the modems)."""
    command, reply_id = sms_answer.answer_and_store(
        conn, ctx, parts[0].source_addr, parts[0].destination_addr, mo.message_text(parts),
        len(parts), dedupe_key, complete, now)
    return MoResult("message", command, reply_id, len(parts))


# -- the sweep ---------------------------------------------------------------------------

def sweep(conn: sqlite3.Connection, ctx: JobContext, now: float,
          held: frozenset[int], expire: bool = True) -> dict[str, int]:
    """Expire queued SMS past validity (`expire`: only the channel that sends, by its
    own validity), answer long SMS whose parts stopped coming, forget old dedupe keys
    and message ids."""
    expired = sms_store.expire_due(conn, now, ctx.validity, held) if expire else []
    stale = sms_store.stale_groups(conn, now - ctx.concat_timeout)
    for rows in stale:
        _deliver(conn, ctx, [_part_of(r) for r in rows], rows[0]["part_key"], False, now)
    sms_store.prune(conn, now, ctx.dedupe_window)
    return {"expired": len(expired), "incomplete": len(stale)}
