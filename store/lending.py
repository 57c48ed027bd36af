"""Villagers and their loans: every state change, with its outbox rows and change-log
records, as functions that run inside one writer transaction (M-PESA results and their
ledger postings: store.settlement).

Loan states: requested -> approved -> funded -> active -> repaid, ending instead in
declined, expired (not answered in time) or failed (M-PESA failed). What a villager
should be told is returned as `Notice`s; the caller renders them in the villager's
language and queues the SMS in the same transaction.
"""

from __future__ import annotations

import secrets
import sqlite3
from dataclasses import dataclass, field
from typing import Any

from store import changelog, outbox

OPEN_ACTION_STATES = ("queued", "sent", "unknown")
FINAL_LOAN_STATES = ("repaid", "declined", "expired", "failed")
# No 0/O, 1/I/L: a villager reads a loan ref over the phone.
_REF_ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"


class LendingError(Exception):
    """A rule of the service said no; `code` names which, for the screen to explain."""

    def __init__(self, code: str, **params: Any) -> None:
        super().__init__(code)
        self.code = code
        self.params = params


@dataclass(frozen=True)
class Notice:
    msisdn: str
    kind: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class User:
    id: int
    msisdn: str
    name: str | None
    lang: str
    pin_hash: str | None
    pin_failures: int
    locked_until: float | None

    @property
    def registered(self) -> bool:
        return self.pin_hash is not None

    def locked(self, now: float) -> bool:
        return self.locked_until is not None and now < self.locked_until


def _user(row: sqlite3.Row | None) -> User | None:
    if row is None:
        return None
    return User(row["id"], row["msisdn"], row["name"], row["lang"], row["pin_hash"],
                row["pin_failures"], row["locked_until"])


def _user_payload(row: sqlite3.Row) -> dict[str, Any]:
    return {"msisdn": row["msisdn"], "name": row["name"], "lang": row["lang"],
            "registered_at": row["registered_at"], "locked_until": row["locked_until"],
            "updated_at": row["updated_at"]}


def user_changed(conn: sqlite3.Connection, user_id: int, op: str, now: float) -> None:
    row = conn.execute("SELECT * FROM users WHERE id = ?", (user_id,)).fetchone()
    changelog.record(conn, "user", row["msisdn"], op, _user_payload(row), now)


# -- users ---------------------------------------------------------------------------

def get_user(conn: sqlite3.Connection, msisdn: str) -> User | None:
    return _user(conn.execute("SELECT * FROM users WHERE msisdn = ?", (msisdn,)).fetchone())


def user_by_id(conn: sqlite3.Connection, user_id: int) -> User:
    u = _user(conn.execute("SELECT * FROM users WHERE id = ?", (user_id,)).fetchone())
    assert u is not None
    return u


def pin_hash_of(conn: sqlite3.Connection, msisdn: str) -> str | None:
    row = conn.execute("SELECT pin_hash FROM users WHERE msisdn = ?", (msisdn,)).fetchone()
    return row[0] if row else None


def ensure_user(conn: sqlite3.Connection, msisdn: str, lang: str, now: float) -> int:
    row = conn.execute("SELECT id FROM users WHERE msisdn = ?", (msisdn,)).fetchone()
    if row:
        return int(row[0])
    user_id = int(conn.execute(
        "INSERT INTO users (msisdn, lang, created_at, updated_at) VALUES (?, ?, ?, ?)",
        (msisdn, lang, now, now)).lastrowid)
    user_changed(conn, user_id, "invited", now)
    return user_id


def register(conn: sqlite3.Connection, msisdn: str, name: str, lang: str, pin_hash: str,
             now: float) -> User:
    """First dial: a new villager, or one who was asked for a loan before dialling."""
    user_id = ensure_user(conn, msisdn, lang, now)
    cur = conn.execute(
        "UPDATE users SET name = ?, lang = ?, pin_hash = ?, pin_failures = 0, "
        "registered_at = ?, updated_at = ? WHERE id = ? AND pin_hash IS NULL",
        (name, lang, pin_hash, now, now, user_id))
    if cur.rowcount != 1:
        raise LendingError("already_registered")
    user_changed(conn, user_id, "registered", now)
    return user_by_id(conn, user_id)


def set_language(conn: sqlite3.Connection, user_id: int, lang: str, now: float) -> None:
    conn.execute("UPDATE users SET lang = ?, updated_at = ? WHERE id = ?", (lang, now, user_id))
    user_changed(conn, user_id, "language", now)


def set_pin(conn: sqlite3.Connection, user_id: int, pin_hash: str, now: float) -> None:
    conn.execute("UPDATE users SET pin_hash = ?, pin_failures = 0, updated_at = ? WHERE id = ?",
                 (pin_hash, now, user_id))
    user_changed(conn, user_id, "pin_changed", now)


def pin_failed(conn: sqlite3.Connection, user_id: int, now: float, attempts: int,
               lock_seconds: float) -> int:
    """Count a wrong PIN; returns the tries left (0 = now locked)."""
    failures = conn.execute(
        "UPDATE users SET pin_failures = pin_failures + 1, updated_at = ? WHERE id = ? "
        "RETURNING pin_failures", (now, user_id)).fetchone()[0]
    if failures < attempts:
        return attempts - failures
    conn.execute("UPDATE users SET pin_failures = 0, locked_until = ?, updated_at = ? "
                 "WHERE id = ?", (now + lock_seconds, now, user_id))
    user_changed(conn, user_id, "locked", now)
    return 0


def pin_succeeded(conn: sqlite3.Connection, user_id: int, now: float) -> None:
    conn.execute("UPDATE users SET pin_failures = 0, locked_until = NULL WHERE id = ? "
                 "AND (pin_failures <> 0 OR locked_until IS NOT NULL)", (user_id,))


# -- loans ---------------------------------------------------------------------------

def _new_ref(conn: sqlite3.Connection) -> str:
    while True:
        ref = "".join(secrets.choice(_REF_ALPHABET) for _ in range(6))
        if not conn.execute("SELECT 1 FROM loans WHERE ref = ?", (ref,)).fetchone():
            return ref


_LOAN_SELECT = """
SELECT l.*, b.msisdn AS borrower_msisdn, b.name AS borrower_name, b.lang AS borrower_lang,
       k.msisdn AS lender_msisdn, k.name AS lender_name, k.lang AS lender_lang,
       COALESCE((SELECT SUM(amount_cents) FROM ledger_postings p
                 WHERE p.account = 'loan:' || l.ref), 0) AS outstanding_cents,
       COALESCE((SELECT SUM(amount_cents) FROM mpesa_actions a
                 WHERE a.loan_id = l.id AND a.purpose = 'repayment'
                   AND a.state IN ('queued', 'sent', 'unknown')), 0) AS repaying_cents
FROM loans l JOIN users b ON b.id = l.borrower_id JOIN users k ON k.id = l.lender_id
"""


def _loan_payload(row: sqlite3.Row) -> dict[str, Any]:
    return {"ref": row["ref"], "borrower": row["borrower_msisdn"], "lender": row["lender_msisdn"],
            "principal_cents": row["principal_cents"], "instalment_cents": row["instalment_cents"],
            "state": row["state"], "expires_at": row["expires_at"],
            "created_at": row["created_at"], "updated_at": row["updated_at"]}


def get_loan(conn: sqlite3.Connection, loan_id: int) -> sqlite3.Row | None:
    return conn.execute(_LOAN_SELECT + " WHERE l.id = ?", (loan_id,)).fetchone()


def _loan_changed(conn: sqlite3.Connection, loan_id: int, now: float) -> sqlite3.Row:
    row = get_loan(conn, loan_id)
    assert row is not None
    changelog.record(conn, "loan", row["ref"], row["state"], _loan_payload(row), now)
    return row


def set_state(conn: sqlite3.Connection, loan_id: int, frm: tuple[str, ...], to: str,
               now: float) -> sqlite3.Row:
    marks = ",".join("?" * len(frm))
    cur = conn.execute(
        f"UPDATE loans SET state = ?, updated_at = ? WHERE id = ? AND state IN ({marks})",
        (to, now, loan_id, *frm))
    if cur.rowcount != 1:
        row = get_loan(conn, loan_id)
        raise LendingError("loan_state", state=row["state"] if row else "missing")
    return _loan_changed(conn, loan_id, now)


def open_requests(conn: sqlite3.Connection, borrower_id: int) -> int:
    return conn.execute("SELECT COUNT(*) FROM loans WHERE borrower_id = ? AND state = 'requested'",
                        (borrower_id,)).fetchone()[0]


def request_loan(conn: sqlite3.Connection, borrower: User, lender_msisdn: str,
                 principal_cents: int, instalment_cents: int, now: float, ttl: float,
                 max_open: int) -> tuple[sqlite3.Row, list[Notice]]:
    if lender_msisdn == borrower.msisdn:
        raise LendingError("self_loan")
    if not 0 < instalment_cents <= principal_cents:
        raise LendingError("instalment_range")
    if open_requests(conn, borrower.id) >= max_open:
        raise LendingError("too_many_requests", limit=max_open)
    lender_id = ensure_user(conn, lender_msisdn, borrower.lang, now)
    loan_id = int(conn.execute(
        "INSERT INTO loans (ref, borrower_id, lender_id, principal_cents, instalment_cents, "
        "state, expires_at, created_at, updated_at) VALUES (?, ?, ?, ?, ?, 'requested', ?, ?, ?)",
        (_new_ref(conn), borrower.id, lender_id, principal_cents, instalment_cents,
         now + ttl, now, now)).lastrowid)
    row = _loan_changed(conn, loan_id, now)
    return row, [Notice(lender_msisdn, "loan_requested", loan_params(row))]


def loan_params(row: sqlite3.Row) -> dict[str, Any]:
    return {"ref": row["ref"], "amount": row["principal_cents"],
            "instalment": row["instalment_cents"],
            "borrower_name": row["borrower_name"], "borrower": row["borrower_msisdn"],
            "lender_name": row["lender_name"], "lender": row["lender_msisdn"]}


def loans_of(conn: sqlite3.Connection, user_id: int, offset: int, limit: int) -> list[sqlite3.Row]:
    return conn.execute(
        _LOAN_SELECT + " WHERE l.borrower_id = ? OR l.lender_id = ? ORDER BY l.id DESC "
        "LIMIT ? OFFSET ?", (user_id, user_id, limit, offset)).fetchall()


def requests_to(conn: sqlite3.Connection, lender_id: int, now: float, offset: int,
                limit: int) -> list[sqlite3.Row]:
    return conn.execute(
        _LOAN_SELECT + " WHERE l.lender_id = ? AND l.state = 'requested' AND l.expires_at > ? "
        "ORDER BY l.id LIMIT ? OFFSET ?", (lender_id, now, limit, offset)).fetchall()


def count_requests_to(conn: sqlite3.Connection, lender_id: int, now: float) -> int:
    return conn.execute("SELECT COUNT(*) FROM loans WHERE lender_id = ? AND state = 'requested' "
                        "AND expires_at > ?", (lender_id, now)).fetchone()[0]


def repayable(conn: sqlite3.Connection, borrower_id: int, offset: int,
              limit: int) -> list[sqlite3.Row]:
    return conn.execute(
        _LOAN_SELECT + " WHERE l.borrower_id = ? AND l.state = 'active' ORDER BY l.id "
        "LIMIT ? OFFSET ?", (borrower_id, limit, offset)).fetchall()


def answer_request(conn: sqlite3.Connection, site: str, loan_id: int, lender_id: int,
                   approve: bool, now: float) -> tuple[sqlite3.Row, list[Notice]]:
    """Approve (queues the STK push that collects the principal from the lender) or
    decline a request addressed to `lender_id`."""
    row = get_loan(conn, loan_id)
    if row is None or row["lender_id"] != lender_id:
        raise LendingError("not_yours")
    if row["state"] == "requested" and row["expires_at"] <= now:
        # Committed with the caller's reply, so the sweep will not see it again: the
        # borrower's notice travels with the error.
        notice = _expire(conn, row, now)
        raise LendingError("loan_state", state="expired", notices=[notice])
    if approve:
        row = set_state(conn, loan_id, ("requested",), "approved", now)
        outbox.queue_mpesa(conn, site, "loan_funding", loan_id, row["ref"], row["lender_msisdn"],
                           row["principal_cents"], now)
        return row, [Notice(row["borrower_msisdn"], "loan_approved", loan_params(row))]
    row = set_state(conn, loan_id, ("requested",), "declined", now)
    return row, [Notice(row["borrower_msisdn"], "loan_declined", loan_params(row))]


def _expire(conn: sqlite3.Connection, row: sqlite3.Row, now: float) -> Notice:
    row = set_state(conn, row["id"], ("requested",), "expired", now)
    return Notice(row["borrower_msisdn"], "loan_expired", loan_params(row))


def expire_requests(conn: sqlite3.Connection, now: float, limit: int = 500) -> list[Notice]:
    rows = conn.execute(_LOAN_SELECT + " WHERE l.state = 'requested' AND l.expires_at <= ? "
                        "LIMIT ?", (now, limit)).fetchall()
    return [_expire(conn, row, now) for row in rows]


def start_repayment(conn: sqlite3.Connection, site: str, loan_id: int, borrower_id: int,
                    amount_cents: int, now: float) -> tuple[sqlite3.Row, str]:
    """Queue the STK push that collects a repayment; the balance moves on its result."""
    row = get_loan(conn, loan_id)
    if row is None or row["borrower_id"] != borrower_id:
        raise LendingError("not_yours")
    if row["state"] != "active":
        raise LendingError("loan_state", state=row["state"])
    room = row["outstanding_cents"] - row["repaying_cents"]
    if not 0 < amount_cents <= room:
        raise LendingError("repay_range", max=room)
    key = outbox.queue_mpesa(conn, site, "repayment", loan_id, row["ref"], row["borrower_msisdn"],
                             amount_cents, now)
    return row, key


# -- views ---------------------------------------------------------------------------

def balance_of(conn: sqlite3.Connection, user_id: int, now: float) -> dict[str, int]:
    owe = conn.execute(
        "SELECT COALESCE(SUM(p.amount_cents), 0) FROM ledger_postings p JOIN loans l "
        "ON p.account = 'loan:' || l.ref WHERE l.borrower_id = ?", (user_id,)).fetchone()[0]
    owed = -conn.execute(
        "SELECT COALESCE(SUM(p.amount_cents), 0) FROM ledger_postings p JOIN loans l "
        "ON p.account = 'lender:' || l.ref WHERE l.lender_id = ?", (user_id,)).fetchone()[0]
    req = conn.execute(
        "SELECT COUNT(*), COALESCE(SUM(principal_cents), 0) FROM loans WHERE state = 'requested' "
        "AND expires_at > ? AND (borrower_id = ? OR lender_id = ?)",
        (now, user_id, user_id)).fetchone()
    acts = conn.execute(
        "SELECT COUNT(*), COALESCE(SUM(a.amount_cents), 0) FROM mpesa_actions a JOIN users u "
        "ON u.msisdn = a.msisdn WHERE u.id = ? AND a.state IN ('queued', 'sent', 'unknown')",
        (user_id,)).fetchone()
    return {"owe": owe, "owed": owed, "requests": req[0], "requests_cents": req[1],
            "actions": acts[0], "actions_cents": acts[1]}


def postings_of(conn: sqlite3.Connection, user_id: int, offset: int,
                limit: int) -> list[sqlite3.Row]:
    """The villager's side of each ledger transaction, newest first."""
    return conn.execute(
        "SELECT t.id, t.kind, t.at, t.mpesa_receipt, p.amount_cents, l.ref, "
        "       CASE WHEN l.borrower_id = ? THEN k.name ELSE b.name END AS other_name, "
        "       CASE WHEN l.borrower_id = ? THEN k.msisdn ELSE b.msisdn END AS other_msisdn "
        "FROM ledger_postings p JOIN ledger_txns t ON t.id = p.txn_id "
        "LEFT JOIN loans l ON l.id = t.loan_id LEFT JOIN users b ON b.id = l.borrower_id "
        "LEFT JOIN users k ON k.id = l.lender_id "
        "WHERE p.user_id = ? ORDER BY t.id DESC, p.id DESC LIMIT ? OFFSET ?",
        (user_id, user_id, user_id, limit, offset)).fetchall()
