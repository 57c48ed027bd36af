"""The store side of M-PESA direct mode: the Source, Save, Load and Sink that
sync.executor.Executor runs on when the box calls Daraja itself. Actions travel as
dicts of sync.executor.Action's fields (without `site`), since imports flow toward
store/, never out of it; gatewayd/mpesa.py makes them Actions.

Only actions stamped `executor = 'box'` are ours (store.outbox stamps each from the
mode at the time it was queued); the upstream runs the others. The executor's own
bookkeeping (CheckoutRequestID, counts, when to look again) lives in `mpesa_direct`;
the action's state lives on its row, and a change of state writes its change-log record
so that it replicates. A result settles through store.settlement in the same
transaction as its notices, exactly like an upstream result (store.inbound).

Saving never moves an action the store already settled: a result relayed by the
upstream (a B2C's ResultURL) may land between the executor reading an action and
saving it, and the settlement wins.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from store import lending, outbox, settlement
from store.lending import Notice

OPEN = lending.OPEN_ACTION_STATES

_SELECT = (
    "SELECT a.id, a.key, a.kind, a.msisdn, a.amount_cents, a.purpose, a.state, a.receipt, "
    "a.result_code, a.result_desc, l.ref AS loan_ref, d.checkout_request_id, "
    "d.merchant_request_id, d.conversation_id, d.sends, d.queries, d.status_queries, "
    "d.not_before, d.note "
    "FROM mpesa_actions a LEFT JOIN loans l ON l.id = a.loan_id "
    "LEFT JOIN mpesa_direct d ON d.action_id = a.id ")


def set_mode(conn: sqlite3.Connection, direct: bool, now: float) -> None:
    """Record the mode for actions queued from now on (the daemon, at start)."""
    conn.execute("INSERT INTO kv (key, value, updated_at) VALUES (?, ?, ?) ON CONFLICT (key) "
                 "DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                 (outbox.EXECUTOR_KV, "box" if direct else "upstream", now))


def _action(row: sqlite3.Row) -> dict[str, Any]:
    a = dict(row)
    del a["id"]
    a.update(sends=a["sends"] or 0, queries=a["queries"] or 0,
             status_queries=a["status_queries"] or 0, not_before=a["not_before"] or 0.0, note=a["note"] or "")
    return a


def open_actions(conn: sqlite3.Connection, limit: int = 100) -> list[dict[str, Any]]:
    """The box's open actions that a step could move, oldest first: queued ones, STK
    pushes to query, and B2Cs accepted and waiting for their ResultURL, which the
    Transaction Status query settles when that callback is lost (the executor waits
    for each one's `not_before`). Left out: an STK push whose answer was lost, with no
    CheckoutRequestID to query, which only a callback or a statement can settle."""
    rows = conn.execute(
        _SELECT + "WHERE a.executor = 'box' AND (a.state = 'queued' OR (a.kind = 'b2c' "
        "AND a.state = 'sent') OR (a.kind = 'stk_push' AND a.state IN ('sent', 'unknown') "
        "AND d.checkout_request_id IS NOT NULL)) ORDER BY a.id LIMIT ?", (limit,))
    return [_action(r) for r in rows]


def load(conn: sqlite3.Connection, key: str) -> dict[str, Any] | None:
    row = conn.execute(_SELECT + "WHERE a.key = ? AND a.executor = 'box'", (key,)).fetchone()
    return _action(row) if row else None


def save(conn: sqlite3.Connection, a: dict[str, Any], now: float) -> bool:
    """Store the executor's state of `a`; True when the action's state changed (and its
    change-log record was written). Durable once the writer commits: the STK write-ahead
    (`unknown` before the request leaves) depends on it."""
    key, state = a["key"], a["state"]
    row = conn.execute("SELECT id, state, executor FROM mpesa_actions WHERE key = ?",
                       (key,)).fetchone()
    if row is None or row["executor"] != "box":
        raise ValueError(f"{key}: not an action this box executes")
    conn.execute(
        "INSERT INTO mpesa_direct (action_id, checkout_request_id, merchant_request_id, "
        "conversation_id, sends, queries, status_queries, not_before, note, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (action_id) DO UPDATE SET "
        "checkout_request_id = excluded.checkout_request_id, "
        "merchant_request_id = excluded.merchant_request_id, "
        "conversation_id = excluded.conversation_id, sends = excluded.sends, "
        "queries = excluded.queries, status_queries = excluded.status_queries, "
        "not_before = excluded.not_before, note = excluded.note, "
        "updated_at = excluded.updated_at",
        (row["id"], a.get("checkout_request_id"), a.get("merchant_request_id"),
         a.get("conversation_id"), a.get("sends", 0), a.get("queries", 0),
         a.get("status_queries", 0), a.get("not_before", 0.0), (a.get("note") or "")[:256], now))
    # Terminal states are written by settle(), with their postings; here only the moves
    # between open states, and never out of a state the store already settled.
    if state not in OPEN or row["state"] not in OPEN or state == row["state"]:
        return False
    conn.execute("UPDATE mpesa_actions SET state = ?, updated_at = ? WHERE id = ?",
                 (state, now, row["id"]))
    outbox.action_changed(conn, key, now)
    return True


def settle(conn: sqlite3.Connection, site: str, key: str, succeeded: bool,
           receipt: str | None, result_code: str | None, result_desc: str | None,
           now: float) -> tuple[bool, list[Notice]]:
    """A result of the box's own executor, applied like an upstream `mpesa_result`
    (store.inbound); the caller queues the notices in this same transaction."""
    return settlement.apply_mpesa_result(conn, site, key, succeeded, now, receipt=receipt,
                                         result_code=result_code, result_desc=result_desc)


def is_box_action(conn: sqlite3.Connection, key: str) -> bool:
    row = conn.execute("SELECT executor FROM mpesa_actions WHERE key = ?", (key,)).fetchone()
    return row is not None and row[0] == "box"


def relayed_result(conn: sqlite3.Connection, site: str, change: Any,
                   now: float) -> tuple[str, list[Notice]]:
    """An upstream `mpesa_result` for an action this box executes: Daraja's callback,
    relayed (docs/sync-protocol.md section 11). Returns (outcome, notices) for
    store.inbound. Callbacks are unsigned and the relay cannot tell a forged one, so the
    box trusts one as far as sync.executor.on_callback would: only when the id Daraja
    gave the box for this action (CheckoutRequestID, or a B2C's ConversationID) agrees.
    A result without ids is the upstream's own verdict (an operator reading the M-PESA
    statement) and is applied like any upstream result."""
    row = conn.execute(_SELECT + "WHERE a.key = ?", (change.action_key,)).fetchone()
    stk = row["kind"] == "stk_push"
    mine = row["checkout_request_id"] if stk else row["conversation_id"]
    theirs = change.checkout_request_id if stk else change.conversation_id
    if theirs is not None:
        if row["state"] == "queued" and (stk or not row["sends"]):
            return "refused:not_sent", []          # it never reached Daraja from here
        if mine is not None and theirs != mine:
            return "refused:id_mismatch", []
        if mine is None and stk and row["state"] in OPEN:
            # The push's answer was lost, so the box never learnt its id. The callback
            # lends it one; the executor's STK query asks Daraja whether it really paid.
            save(conn, {**_action(row), "checkout_request_id": theirs, "state": "sent",
                        "not_before": now, "note": "id from a relayed callback"}, now)
            return "id_adopted", []
    applied, notices = settlement.apply_mpesa_result(
        conn, site, change.action_key, change.succeeded, now, receipt=change.receipt,
        result_code=change.result_code, result_desc=change.result_desc)
    return ("applied" if applied else "already_settled"), notices


def counts(conn: sqlite3.Connection) -> dict[str, int]:
    """Actions by executor and state, for status."""
    return {f"{e}_{s}": n for e, s, n in conn.execute(
        "SELECT executor, state, COUNT(*) FROM mpesa_actions GROUP BY executor, state")}


def stranded(conn: sqlite3.Connection) -> int:
    """Open actions stamped for the box: with direct mode off, nobody runs them."""
    return conn.execute("SELECT COUNT(*) FROM mpesa_actions WHERE executor = 'box' "
                        "AND state IN ('queued', 'sent', 'unknown')").fetchone()[0]
