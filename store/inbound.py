"""Changes the upstream sends the box, applied once each, in one transaction per envelope.

Every change carries a stable id and the upstream's per-site seq. `inbound_applied`
remembers each id with its outcome, and kv `sync.inbound_cursor` holds the highest seq
applied, so an envelope sent twice (the answer was lost) changes nothing the second
time. A change that cannot apply (an action this box never made) is recorded with that
outcome and not retried: retrying cannot make it right, and it must not block the rest.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from typing import Any

from store import changelog, lending, mpesa_direct, settlement
from store.lending import LendingError, Notice

INBOUND_CURSOR = "sync.inbound_cursor"
CHECKPOINT = "sync.checkpoint"


def get_int(conn: sqlite3.Connection, key: str) -> int:
    row = conn.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
    return int(row[0]) if row else 0


def set_int(conn: sqlite3.Connection, key: str, value: int, now: float) -> None:
    conn.execute("INSERT INTO kv (key, value, updated_at) VALUES (?, ?, ?) ON CONFLICT (key) "
                 "DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                 (key, str(int(value)), now))


def apply(conn: sqlite3.Connection, site: str, changes: Iterable[Any], last_seq: int,
          now: float) -> tuple[dict[str, int], list[Notice]]:
    """Apply `changes` (sync.checkpoint inbound change objects, already cut to those above
    the cursor) and move the cursor to `last_seq`. Returns outcome counts and the SMS
    notices to queue in the same transaction."""
    counts: dict[str, int] = {}
    notices: list[Notice] = []
    for change in changes:
        if conn.execute("SELECT 1 FROM inbound_applied WHERE id = ?", (change.id,)).fetchone():
            outcome = "duplicate"
        else:
            outcome, more = _apply_one(conn, site, change, now)
            notices += more
            conn.execute("INSERT INTO inbound_applied (id, seq, kind, outcome, applied_at) "
                         "VALUES (?, ?, ?, ?, ?)", (change.id, change.seq, change.kind, outcome, now))
            changelog.record(conn, "inbound", change.id, outcome,
                             {"id": change.id, "seq": change.seq, "kind": change.kind,
                              "outcome": outcome}, now)
        counts[outcome] = counts.get(outcome, 0) + 1
    if last_seq > get_int(conn, INBOUND_CURSOR):
        set_int(conn, INBOUND_CURSOR, last_seq, now)
    return counts, notices


def _apply_one(conn: sqlite3.Connection, site: str, change: Any,
               now: float) -> tuple[str, list[Notice]]:
    try:
        if change.kind == "mpesa_result" and mpesa_direct.is_box_action(conn, change.action_key):
            return mpesa_direct.relayed_result(conn, site, change, now)
        if change.kind == "mpesa_result":
            applied, notices = settlement.apply_mpesa_result(
                conn, site, change.action_key, change.succeeded, now, receipt=change.receipt,
                result_code=change.result_code, result_desc=change.result_desc)
            return ("applied" if applied else "already_settled"), notices
        if change.kind == "money_received":
            return "applied", settlement.money_received(
                conn, site, change.msisdn, change.amount_cents, change.receipt, now)
        if change.kind == "account_change":
            return _account_change(conn, change, now), []
    except LendingError as e:
        return f"refused:{e.code}", []
    return "refused:unknown_kind", []


def _account_change(conn: sqlite3.Connection, change: Any, now: float) -> str:
    user = lending.get_user(conn, change.msisdn)
    if user is None or not user.registered:
        return "refused:no_such_villager"
    if change.lang in ("en", "sw"):
        lending.set_language(conn, user.id, change.lang, now)
    if change.name:
        conn.execute("UPDATE users SET name = ?, updated_at = ? WHERE id = ?",
                     (change.name[:20], now, user.id))
    if change.unlock:
        lending.pin_succeeded(conn, user.id, now)
    lending.user_changed(conn, user.id, "account_change", now)
    return "applied"
