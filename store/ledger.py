"""Double-entry ledger in integer cents.

Accounts (positive = debit):
- `loan:<ref>`   what the borrower still owes on that loan;
- `lender:<ref>` the lender's claim on it: minus the principal, plus each repayment
                 once it has been forwarded to the lender (so it lags `loan:<ref>`
                 while a forward is in flight);
- `mpesa`        money seen moving through M-PESA on the villagers' behalf;
- `escrow:<ref>` a lender's money collected for a loan and not yet paid out.
Balances are derived from postings, never stored; every ledger transaction sums to zero.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

from store import changelog


class Unbalanced(ValueError):
    pass


def post(conn: sqlite3.Connection, kind: str, postings: Iterable[tuple[str, int, int | None]],
         now: float, loan_id: int | None = None, loan_ref: str | None = None,
         receipt: str | None = None, action_key: str | None = None) -> int:
    """One ledger transaction of (account, amount_cents, user_id) postings; `action_key`
    names the M-PESA action it settles, when it settles one."""
    postings = [(a, int(c), u) for a, c, u in postings if c]
    if not postings or sum(c for _, c, _ in postings) != 0:
        raise Unbalanced(f"{kind}: postings {postings!r} do not sum to zero")
    txn_id = int(conn.execute(
        "INSERT INTO ledger_txns (kind, loan_id, mpesa_receipt, at, action_key) "
        "VALUES (?, ?, ?, ?, ?)", (kind, loan_id, receipt, now, action_key)).lastrowid)
    conn.executemany(
        "INSERT INTO ledger_postings (txn_id, account, amount_cents, user_id) VALUES (?, ?, ?, ?)",
        [(txn_id, a, c, u) for a, c, u in postings])
    payload = {"id": txn_id, "kind": kind, "loan_ref": loan_ref, "receipt": receipt,
               "postings": [{"account": a, "amount_cents": c} for a, c, _ in postings]}
    if action_key is not None:
        # The upstream's link to a receipt that comes later, on the action's own record:
        # ledger_txn records are append-only and are never sent again.
        payload["action_key"] = action_key
    changelog.record(conn, "ledger_txn", str(txn_id), "posted", payload, now)
    return txn_id


def balance(conn: sqlite3.Connection, account: str) -> int:
    row = conn.execute(
        "SELECT COALESCE(SUM(amount_cents), 0) FROM ledger_postings WHERE account = ?",
        (account,)).fetchone()
    return int(row[0])


def check(conn: sqlite3.Connection) -> list[str]:
    """Problems found, empty when the books balance."""
    problems = []
    total = conn.execute("SELECT COALESCE(SUM(amount_cents), 0) FROM ledger_postings").fetchone()[0]
    if total != 0:
        problems.append(f"ledger: all postings sum to {total} cents, not 0")
    for row in conn.execute(
            "SELECT txn_id, SUM(amount_cents) FROM ledger_postings GROUP BY txn_id "
            "HAVING SUM(amount_cents) <> 0 LIMIT 20"):
        problems.append(f"ledger: transaction {row[0]} sums to {row[1]} cents")
    for row in conn.execute(
            "SELECT t.id FROM ledger_txns t LEFT JOIN ledger_postings p ON p.txn_id = t.id "
            "WHERE p.id IS NULL LIMIT 20"):
        problems.append(f"ledger: transaction {row[0]} has no postings")
    return problems
