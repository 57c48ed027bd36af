"""`gatewayd db check`: passes on sound books, fails loudly on broken ones."""

from __future__ import annotations

import subprocess
import sys

from store import check, ledger, lending, settlement


def _run(db):
    return subprocess.run([sys.executable, "-m", "gatewayd", "db", "check", "--db", db],
                          capture_output=True, text=True, timeout=60)


def _active_loan(conn):
    b = lending.register(conn, "254711000001", "Amina", "en", "h", 1.0)
    lending.register(conn, "254711000002", "Baraka", "en", "h", 1.0)
    loan, _ = lending.request_loan(conn, b, "254711000002", 500_000, 50_000, 2.0, 3600, 5)
    lending.answer_request(conn, "s", loan["id"], loan["lender_id"], True, 3.0)
    key = conn.execute("SELECT key FROM mpesa_actions").fetchone()[0]
    settlement.apply_mpesa_result(conn, "s", key, True, 4.0, receipt="R1")
    key = conn.execute("SELECT key FROM mpesa_actions WHERE purpose = 'loan_payout'").fetchone()[0]
    settlement.apply_mpesa_result(conn, "s", key, True, 5.0, receipt="R2")
    return loan


def test_sound_books_pass(conn, db_path):
    _active_loan(conn)
    assert check.run(conn) == []
    r = _run(db_path)
    assert r.returncode == 0 and "ok" in r.stdout


def test_unbalanced_ledger_fails(conn, db_path):
    loan = _active_loan(conn)
    # A posting written behind the ledger's back.
    txn = conn.execute("SELECT MAX(id) FROM ledger_txns").fetchone()[0]
    conn.execute("INSERT INTO ledger_postings (txn_id, account, amount_cents) VALUES (?, ?, 700)",
                 (txn, f"loan:{loan['ref']}"))
    problems = check.run(conn)
    assert any("sums to 700" in p for p in problems)
    r = _run(db_path)
    assert r.returncode == 1 and "problem" in r.stdout


def test_broken_reference_fails(conn, db_path):
    _active_loan(conn)
    conn.execute("PRAGMA foreign_keys = OFF")
    conn.execute("DELETE FROM users WHERE msisdn = '254711000002'")
    assert any(p.startswith("foreign key: loans") for p in check.run(conn))
    assert _run(db_path).returncode == 1


def test_post_refuses_an_unbalanced_transaction(conn):
    import pytest
    with pytest.raises(ledger.Unbalanced):
        ledger.post(conn, "x", [("a", 100, None), ("b", -99, None)], 1.0)


def test_missing_database_is_a_clear_error(tmp_path):
    r = _run(str(tmp_path / "none.db"))
    assert r.returncode == 2 and "no database" in r.stderr
