"""SMS through a channel (the SMPP bind): what to send next, which parts the SMSC
accepted under which message ids, what the delivery receipts said, and what villagers
sent in.

Writes run inside the writer's transaction (`store.write(fn, ...)`), reads on a
read-only connection. Every state change of an outbox row writes its change-log record
too (outbox.sms_changed). Message ids arrive already keyed by the caller's one rule
(gatewayd.smpp.receipts.message_id_keys), so nothing here knows SMPP.

Outbox states: queued -> submitted (every part accepted by the SMSC) -> delivered (a
part's final receipt said so, none said otherwise) or failed (refused, or a part's
final receipt said it did not arrive); queued -> expired (not sent within its
validity). A long SMS whose later part fails after an earlier part was delivered
moves delivered -> failed: the villager did not get the whole text.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from store import changelog, outbox

# Receipt states by SMPP's message_state names (3.4 §5.2.28). ACCEPTED is final but
# says nothing about the phone, so it neither delivers nor fails an SMS.
DELIVERED = "DELIVERED"
FAILED_RECEIPTS = frozenset({"EXPIRED", "DELETED", "UNDELIVERABLE", "REJECTED"})
FINAL_RECEIPTS = FAILED_RECEIPTS | {DELIVERED, "ACCEPTED"}
# Receipts come within hours or never; an id older than this names no live message,
# and SMSCs reuse ids (a restarted one may start its counter again).
RECEIPT_WAIT_SECONDS = 72 * 3600.0

# Which state may follow which when parts are accepted or receipts arrive. Cancelled
# -> submitted: an operator cancelled a message the sender had already handed over,
# and the record must say that it went.
_SETTLE_FROM = {
    "submitted": ("queued", "cancelled"),
    "delivered": ("queued", "submitted", "cancelled"),
    "failed": ("queued", "submitted", "delivered", "cancelled"),
}


# -- what to send ----------------------------------------------------------------------

@dataclass(frozen=True)
class Sendable:
    id: int
    msisdn: str
    body: str
    deadline: float                 # wall clock: not worth sending after this
    done_parts: frozenset[int]      # parts the SMSC accepted before a restart


def sendable(conn: sqlite3.Connection, now: float, held: Collection[int], limit: int,
             validity: float, whole_only: bool = False) -> list[Sendable]:
    """Queued SMS the channel does not hold yet, oldest first, at most `limit`.
    `whole_only`: none with parts already accepted (by SMPP: a modem could only send
    the whole text again, from another sender address, and the phone would show a
    torn message)."""
    # Past-validity rows are left to expire_due: at the head of the queue they would
    # otherwise use up the limit and starve the rest.
    whole = (" AND NOT EXISTS (SELECT 1 FROM sms_parts p WHERE p.sms_id = sms_outbox.id)"
             if whole_only else "")
    rows = conn.execute(
        "SELECT id, msisdn, body, MIN(expires_at, created_at + ?) AS deadline "
        "FROM sms_outbox WHERE state = 'queued' AND MIN(expires_at, created_at + ?) > ?"
        + whole + " ORDER BY created_at, id LIMIT ?",
        (validity, validity, now, limit + len(held)))
    out = [(r, r["deadline"]) for r in rows if r["id"] not in held][:limit]
    done: dict[int, set[int]] = {}
    if out:
        ids = [r["id"] for r, _ in out]
        for p in conn.execute(f"SELECT sms_id, part FROM sms_parts WHERE sms_id IN "
                              f"({','.join('?' * len(ids))})", ids):
            done.setdefault(p["sms_id"], set()).add(p["part"])
    return [Sendable(r["id"], r["msisdn"], r["body"], deadline,
                     frozenset(done.get(r["id"], ()))) for r, deadline in out]


def expire_due(conn: sqlite3.Connection, now: float, validity: float,
               held: Collection[int] = ()) -> list[int]:
    """Queued SMS past their validity that the channel does not hold: expired, so that
    nothing goes out days late. (Held ones the channel's sender expires itself.)"""
    ids = [r[0] for r in conn.execute(
        "SELECT id FROM sms_outbox WHERE state = 'queued' "
        "AND MIN(expires_at, created_at + ?) <= ?", (validity, now)) if r[0] not in held]
    for sms_id in ids:
        _set_state(conn, sms_id, "expired", now, "not sent within its validity")
    return ids


# -- what the SMSC said ------------------------------------------------------------------

def part_accepted(conn: sqlite3.Connection, sms_id: int, part: int, parts: int,
                  message_id: str, id_keys: Sequence[str], attempts: int,
                  now: float) -> str | None:
    """The SMSC took one part and named it `message_id`. Returns the SMS's new state
    when this changed it (submitted once every part is in)."""
    conn.execute(
        "INSERT INTO sms_parts (sms_id, part, parts, message_id, accepted_at) "
        "VALUES (?, ?, ?, ?, ?) ON CONFLICT (sms_id, part) DO UPDATE SET "
        "message_id = excluded.message_id, accepted_at = excluded.accepted_at",
        (sms_id, part, parts, message_id, now))
    conn.executemany(
        "INSERT OR REPLACE INTO sms_message_ids (id_key, canon, sms_id, part, accepted_at) "
        "VALUES (?, ?, ?, ?, ?)", [(k, id_keys[0], sms_id, part, now) for k in id_keys])
    conn.execute("UPDATE sms_outbox SET attempts = MAX(attempts, ?), updated_at = ? "
                 "WHERE id = ?", (attempts, now, sms_id))
    return _settle(conn, sms_id, now)


def part_retrying(conn: sqlite3.Connection, sms_id: int, attempts: int, error: str,
                  now: float) -> None:
    """Refused for now (throttled, no answer...): still queued; attempts and the reason
    show in `gatewayd outbox list`."""
    conn.execute("UPDATE sms_outbox SET attempts = MAX(attempts, ?), last_error = ?, "
                 "updated_at = ? WHERE id = ?", (attempts, error, now, sms_id))


def part_failed(conn: sqlite3.Connection, sms_id: int, attempts: int, error: str,
                now: float) -> bool:
    conn.execute("UPDATE sms_outbox SET attempts = MAX(attempts, ?) WHERE id = ?",
                 (attempts, sms_id))
    return _set_state(conn, sms_id, "failed", now, error, ("queued",))


def part_expired(conn: sqlite3.Connection, sms_id: int, attempts: int, now: float) -> bool:
    conn.execute("UPDATE sms_outbox SET attempts = MAX(attempts, ?) WHERE id = ?",
                 (attempts, sms_id))
    return _set_state(conn, sms_id, "expired", now, "not sent within its validity")


@dataclass(frozen=True)
class ReceiptResult:
    sms_id: int | None          # None: no live message has this id
    part: int | None = None
    changed: bool = False       # False: a duplicate, or stale after a final receipt
    state: str | None = None    # the SMS's state after this receipt
    ambiguous: bool = False     # a key named two messages, and nothing else matched


def apply_receipt(conn: sqlite3.Connection, id_keys: Sequence[str], receipt: str,
                  error: str | None, now: float,
                  wait: float = RECEIPT_WAIT_SECONDS) -> ReceiptResult:
    """A delivery receipt for the message id keyed `id_keys` (strongest key first).

    A part's receipt state only moves forward: once final, later receipts (a second
    DELIVRD, an ENROUTE that overtook it) change nothing and say so."""
    target, ambiguous = None, False
    for key in id_keys:
        rows = conn.execute(
            "SELECT canon, sms_id, part FROM sms_message_ids WHERE id_key = ? "
            "AND accepted_at > ? ORDER BY accepted_at DESC", (key, now - wait)).fetchall()
        if len({r["canon"] for r in rows}) > 1:
            ambiguous = True        # "10" read as hex and "16" read as decimal: refuse
            continue
        if rows:
            target = rows[0]        # an id reused by the SMSC names its latest message
            break
    if target is None:
        return ReceiptResult(None, ambiguous=ambiguous)
    sms_id, part = target["sms_id"], target["part"]
    old = conn.execute("SELECT receipt FROM sms_parts WHERE sms_id = ? AND part = ?",
                       (sms_id, part)).fetchone()["receipt"]
    state = conn.execute("SELECT state FROM sms_outbox WHERE id = ?", (sms_id,)).fetchone()[0]
    if old is not None and (old in FINAL_RECEIPTS or old == receipt):
        return ReceiptResult(sms_id, part, False, state)
    conn.execute("UPDATE sms_parts SET receipt = ?, receipt_error = ?, receipt_at = ? "
                 "WHERE sms_id = ? AND part = ?", (receipt, error, now, sms_id, part))
    return ReceiptResult(sms_id, part, True, _settle(conn, sms_id, now) or state)


def _settle(conn: sqlite3.Connection, sms_id: int, now: float) -> str | None:
    """The SMS's state from its parts'; returns it when it changed."""
    parts = conn.execute("SELECT part, parts, receipt, receipt_error FROM sms_parts "
                         "WHERE sms_id = ? ORDER BY part", (sms_id,)).fetchall()
    if not parts:
        return None
    total = parts[0]["parts"]
    failed = [p for p in parts if p["receipt"] in FAILED_RECEIPTS]
    error = None
    if failed:
        p = failed[0]
        where = f"part {p['part'] + 1}/{total}: " if total > 1 else ""
        err = f" err:{p['receipt_error']}" if p["receipt_error"] else ""
        target, error = "failed", f"{where}{p['receipt']}{err}"
    elif len(parts) < total:
        return None
    elif any(p["receipt"] == DELIVERED for p in parts):
        target = "delivered"
    else:
        target = "submitted"
    return target if _set_state(conn, sms_id, target, now, error) else None


def _set_state(conn: sqlite3.Connection, sms_id: int, state: str, now: float,
               error: str | None, allowed: tuple[str, ...] | None = None) -> bool:
    allowed = allowed or _SETTLE_FROM.get(state, ("queued",))
    cur = conn.execute(
        f"UPDATE sms_outbox SET state = ?, last_error = COALESCE(?, last_error), "
        f"updated_at = ? WHERE id = ? AND state IN ({','.join('?' * len(allowed))})",
        (state, error, now, sms_id, *allowed))
    if cur.rowcount != 1:
        return False
    outbox.sms_changed(conn, sms_id, now)
    return True


# -- what villagers sent -----------------------------------------------------------------

def seen_recently(conn: sqlite3.Connection, part_key: str, now: float, window: float) -> bool:
    """True when a part with this key was committed within `window` seconds: the SMSC's
    resend, to be dropped. Otherwise remembers this one and returns False."""
    row = conn.execute("SELECT seen_at FROM sms_mo_seen WHERE part_key = ?",
                       (part_key,)).fetchone()
    if row is not None and row[0] > now - window:
        return True
    conn.execute("INSERT INTO sms_mo_seen (part_key, seen_at) VALUES (?, ?) "
                 "ON CONFLICT (part_key) DO UPDATE SET seen_at = excluded.seen_at",
                 (part_key, now))
    return False


def add_part(conn: sqlite3.Connection, group_key: str, seq: int, total: int,
             source_addr: str, short_code: str, data_coding: int, body: bytes,
             part_key: str, now: float) -> list[sqlite3.Row] | None:
    """File one part of a long SMS. Returns every part in order once the last is in
    (and forgets them), [] while parts are missing, None for a part already filed."""
    cur = conn.execute(
        "INSERT OR IGNORE INTO sms_mo_parts (group_key, seq, total, source_addr, short_code, "
        "data_coding, body, part_key, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (group_key, seq, total, source_addr, short_code, data_coding, body, part_key, now))
    if cur.rowcount != 1:
        return None
    parts = conn.execute("SELECT * FROM sms_mo_parts WHERE group_key = ? ORDER BY seq",
                         (group_key,)).fetchall()
    if len(parts) < total:
        return []
    conn.execute("DELETE FROM sms_mo_parts WHERE group_key = ?", (group_key,))
    return parts


def stale_groups(conn: sqlite3.Connection, before: float) -> list[list[sqlite3.Row]]:
    """Long SMS whose first part came before `before` and that are still not whole:
    returned (parts in order) and forgotten, to be answered as they are."""
    keys = [r[0] for r in conn.execute(
        "SELECT group_key FROM sms_mo_parts GROUP BY group_key HAVING MIN(received_at) < ?",
        (before,))]
    out = []
    for key in keys:
        out.append(conn.execute("SELECT * FROM sms_mo_parts WHERE group_key = ? ORDER BY seq",
                                (key,)).fetchall())
        conn.execute("DELETE FROM sms_mo_parts WHERE group_key = ?", (key,))
    return out


def prune(conn: sqlite3.Connection, now: float, dedupe_window: float,
          wait: float = RECEIPT_WAIT_SECONDS) -> None:
    """Forget part keys past the dedupe window and message ids no receipt will name."""
    conn.execute("DELETE FROM sms_mo_seen WHERE seen_at <= ?", (now - dedupe_window,))
    conn.execute("DELETE FROM sms_message_ids WHERE accepted_at <= ?", (now - wait,))


def store_inbox(conn: sqlite3.Connection, site: str, dedupe_key: str, msisdn: str,
                short_code: str, body: str, parts: int, complete: bool, command: str,
                reply_id: int | None, now: float) -> int:
    """One received SMS (whole, or what came of it) with the command it was taken for
    and the reply queued for it. `body` must already have PINs masked: it is synced."""
    key = outbox.new_key(site, "mo")
    sms_in = int(conn.execute(
        "INSERT INTO sms_inbox (key, dedupe_key, msisdn, short_code, body, parts, complete, "
        "command, reply_id, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (key, dedupe_key, msisdn, short_code, body, parts, int(complete), command, reply_id,
         now)).lastrowid)
    changelog.record(conn, "sms_in", key, "received",
                     {"key": key, "msisdn": msisdn, "short_code": short_code, "body": body,
                      "parts": parts, "complete": complete, "command": command,
                      "received_at": now}, now)
    return sms_in


def inbox_list(conn: sqlite3.Connection, msisdn: str | None = None,
               limit: int = 100) -> list[dict[str, Any]]:
    """Received SMS, newest first (for `gatewayd inbox list`): what villagers texted,
    what it was taken for, and whether and how it was answered."""
    sql = ("SELECT i.id, i.key, i.msisdn, i.short_code, i.body, i.parts, i.complete, "
           "i.command, i.received_at, o.id AS reply_id, o.state AS reply_state "
           "FROM sms_inbox i "
           "LEFT JOIN sms_outbox o ON o.id = i.reply_id")
    args: tuple = ()
    if msisdn:
        sql += " WHERE i.msisdn = ?"
        args = (msisdn,)
    sql += " ORDER BY i.id DESC LIMIT ?"
    return [dict(r) for r in conn.execute(sql, args + (limit,))]

