"""Side effects waiting for delivery: SMS to send and M-PESA actions to execute.

Both are written in the transaction that decided them (transactional outbox) and
carry an idempotency key made here, so a dispatcher may deliver at least once and the
receiver can still apply exactly once.
"""

from __future__ import annotations

import itertools
import os
import secrets
import sqlite3
from typing import Any

from store import changelog

# An SMS that could not go out within a day tells the villager something stale.
SMS_TTL_SECONDS = 24 * 3600

# The mode the daemon runs M-PESA in, kept in kv by the daemon at start ('upstream' when
# absent): docs/sync-protocol.md, "Direct mode".
EXECUTOR_KV = "mpesa.executor"

MPESA_KINDS = {"loan_funding": "stk_push", "loan_payout": "b2c",
               "repayment": "stk_push", "repayment_forward": "b2c",
               "lender_refund": "b2c", "remainder_payout": "b2c"}


# A key is the site, the kind, this process's random run id and a counter. Unique
# without a lookup, and cheap on the metered link: the run id repeats in every key of a
# run and the counter climbs, so a batch compresses them to about a byte each, where
# 48 random bits per key cost six (bench/sync_codec.py). Why not the change-log seq
# alone: a box restored from an old backup hands out the same seqs again, and the
# upstream would take a new payout for one it already made and never pay it. A restore
# means a new process, so a new run id, so keys never seen before.
_run = secrets.token_hex(6)
_counter = itertools.count(1)


def _new_run() -> None:
    # A forked child would otherwise hand out its parent's next keys too.
    global _run, _counter
    _run, _counter = secrets.token_hex(6), itertools.count(1)


os.register_at_fork(after_in_child=_new_run)


def new_key(site: str, prefix: str) -> str:
    """e.g. `site-1-mp-3f9a0c1b2d4e-17`; next() on a count is atomic under the GIL."""
    return f"{site}-{prefix}-{_run}-{next(_counter)}"


def queue_sms(conn: sqlite3.Connection, site: str, msisdn: str, body: str, now: float,
              ttl: float = SMS_TTL_SECONDS) -> int:
    key = new_key(site, "sms")
    cur = conn.execute(
        "INSERT INTO sms_outbox (key, msisdn, body, expires_at, created_at, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?)", (key, msisdn, body, now + ttl, now, now),
    )
    changelog.record(conn, "sms", key, "queued",
                     {"key": key, "msisdn": msisdn, "body": body, "state": "queued",
                      "created_at": now}, now)
    return int(cur.lastrowid)


def queue_mpesa(conn: sqlite3.Connection, site: str, purpose: str, loan_id: int | None,
                loan_ref: str | None, msisdn: str, amount_cents: int, now: float) -> str:
    kind = MPESA_KINDS[purpose]
    key = new_key(site, "mp")
    # Who executes it is fixed now, from the mode the daemon runs in: an action must not
    # change hands (and so maybe be paid twice) when an operator switches modes later.
    conn.execute(
        "INSERT INTO mpesa_actions (key, kind, purpose, loan_id, msisdn, amount_cents, "
        "executor, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, "
        "COALESCE((SELECT value FROM kv WHERE key = ?), 'upstream'), ?, ?)",
        (key, kind, purpose, loan_id, msisdn, amount_cents, EXECUTOR_KV, now, now),
    )
    changelog.record(conn, "mpesa_action", key, "queued", _action_payload(
        conn.execute("SELECT * FROM mpesa_actions WHERE key = ?", (key,)).fetchone(),
        loan_ref), now)
    return key


def _action_payload(row: sqlite3.Row, loan_ref: str) -> dict[str, Any]:
    return {
        "key": row["key"], "kind": row["kind"], "purpose": row["purpose"],
        "loan_ref": loan_ref, "msisdn": row["msisdn"], "amount_cents": row["amount_cents"],
        "state": row["state"], "receipt": row["receipt"], "result_code": row["result_code"],
        "result_desc": row["result_desc"], "updated_at": row["updated_at"],
        "executor": row["executor"],
    }


def action_changed(conn: sqlite3.Connection, key: str, now: float) -> None:
    row = conn.execute(
        "SELECT a.*, l.ref AS loan_ref FROM mpesa_actions a LEFT JOIN loans l ON l.id = a.loan_id "
        "WHERE a.key = ?", (key,)).fetchone()
    changelog.record(conn, "mpesa_action", key, row["state"],
                     _action_payload(row, row["loan_ref"]), now)


def mpesa_actions(conn: sqlite3.Connection, state: str | None = None,
                  limit: int = 100) -> list[dict[str, Any]]:
    sql = ("SELECT a.key, a.kind, a.purpose, l.ref AS loan_ref, a.msisdn, a.amount_cents, "
           "a.state, a.receipt, a.result_code, a.created_at, a.updated_at "
           "FROM mpesa_actions a LEFT JOIN loans l ON l.id = a.loan_id")
    args: tuple = ()
    if state:
        sql += " WHERE a.state = ?"
        args = (state,)
    sql += " ORDER BY a.id DESC LIMIT ?"
    return [dict(r) for r in conn.execute(sql, args + (limit,))]


def sms_counts(conn: sqlite3.Connection) -> dict[str, int]:
    return {r[0]: r[1] for r in conn.execute(
        "SELECT state, COUNT(*) FROM sms_outbox GROUP BY state")}


def mpesa_counts(conn: sqlite3.Connection) -> dict[str, int]:
    return {r[0]: r[1] for r in conn.execute(
        "SELECT state, COUNT(*) FROM mpesa_actions GROUP BY state")}


def sms_list(conn: sqlite3.Connection, state: str | None = None,
             limit: int = 100) -> list[dict[str, Any]]:
    sql = ("SELECT id, key, msisdn, body, state, attempts, last_error, created_at, updated_at, "
           "expires_at FROM sms_outbox")
    args: tuple = ()
    if state:
        sql += " WHERE state = ?"
        args = (state,)
    sql += " ORDER BY id DESC LIMIT ?"
    return [dict(r) for r in conn.execute(sql, args + (limit,))]


def sms_changed(conn: sqlite3.Connection, sms_id: int, now: float) -> dict[str, Any]:
    """The change-log record of an SMS whose state just changed; returns the row."""
    row = dict(conn.execute("SELECT * FROM sms_outbox WHERE id = ?", (sms_id,)).fetchone())
    changelog.record(conn, "sms", row["key"], row["state"],
                     {"key": row["key"], "msisdn": row["msisdn"], "body": row["body"],
                      "state": row["state"], "attempts": row["attempts"],
                      "last_error": row["last_error"], "updated_at": now}, now)
    return row


class OutboxError(ValueError):
    pass


def sms_retry(conn: sqlite3.Connection, sms_id: int, now: float,
              ttl: float = SMS_TTL_SECONDS) -> dict[str, Any]:
    """An operator sends a failed or expired SMS again, with a fresh validity: every
    part of it, so what a channel recorded of the last try (accepted parts, their
    message ids and receipts) is dropped; the change log keeps the story."""
    cur = conn.execute(
        "UPDATE sms_outbox SET state = 'queued', attempts = 0, last_error = NULL, "
        "expires_at = ?, updated_at = ? WHERE id = ? AND state IN ('failed', 'expired', 'cancelled')",
        (now + ttl, now, sms_id))
    if cur.rowcount != 1:
        raise OutboxError(_why_not(conn, sms_id, "retried", "failed, expired or cancelled"))
    conn.execute("DELETE FROM sms_message_ids WHERE sms_id = ?", (sms_id,))
    conn.execute("DELETE FROM sms_parts WHERE sms_id = ?", (sms_id,))
    return sms_changed(conn, sms_id, now)


def sms_cancel(conn: sqlite3.Connection, sms_id: int, now: float) -> dict[str, Any]:
    """An operator stops an SMS that has not gone out yet."""
    cur = conn.execute("UPDATE sms_outbox SET state = 'cancelled', updated_at = ? "
                       "WHERE id = ? AND state = 'queued'", (now, sms_id))
    if cur.rowcount != 1:
        raise OutboxError(_why_not(conn, sms_id, "cancelled", "queued"))
    return sms_changed(conn, sms_id, now)


def _why_not(conn: sqlite3.Connection, sms_id: int, verb: str, allowed: str) -> str:
    row = conn.execute("SELECT state FROM sms_outbox WHERE id = ?", (sms_id,)).fetchone()
    if row is None:
        return f"no SMS with id {sms_id}"
    return f"SMS {sms_id} is {row[0]}; only {allowed} SMS can be {verb}"


def queue_stats(conn: sqlite3.Connection, now: float) -> dict[str, Any]:
    """Depth and age of what waits for delivery, for status and metrics."""
    oldest_sms = conn.execute(
        "SELECT MIN(created_at) FROM sms_outbox WHERE state = 'queued'").fetchone()[0]
    oldest_action = conn.execute(
        "SELECT MIN(created_at) FROM mpesa_actions WHERE state IN ('queued', 'sent', 'unknown')"
    ).fetchone()[0]
    return {
        "sms": sms_counts(conn), "mpesa": mpesa_counts(conn),
        "sms_oldest_queued_seconds": round(now - oldest_sms, 1) if oldest_sms else 0.0,
        "mpesa_oldest_open_seconds": round(now - oldest_action, 1) if oldest_action else 0.0,
        "change_log_last_seq": changelog.last_seq(conn),
    }
