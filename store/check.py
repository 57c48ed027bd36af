"""`gatewayd db check`: the books balance, references hold, the file is sound."""

from __future__ import annotations

import sqlite3

from store import ledger, migrations


def run(conn: sqlite3.Connection) -> list[str]:
    problems: list[str] = []
    for row in conn.execute("PRAGMA quick_check"):
        if row[0] != "ok":
            problems.append(f"sqlite: {row[0]}")
    version = migrations.current_version(conn)
    if version != migrations.LATEST:
        problems.append(f"schema: version {version}, expected {migrations.LATEST}")
    for row in conn.execute("PRAGMA foreign_key_check"):
        problems.append(f"foreign key: {row[0]} row {row[1]} points at a missing {row[2]}")
    problems += ledger.check(conn)
    for row in conn.execute(
            "SELECT l.ref, COALESCE(SUM(p.amount_cents), 0) AS owed FROM loans l "
            "LEFT JOIN ledger_postings p ON p.account = 'loan:' || l.ref "
            "GROUP BY l.id HAVING owed < 0 OR owed > l.principal_cents LIMIT 20"):
        problems.append(f"loan {row[0]}: outstanding {row[1]} cents is outside 0..principal")
    for row in conn.execute(
            "SELECT l.ref, l.state FROM loans l WHERE l.state IN ('repaid') AND "
            "(SELECT COALESCE(SUM(amount_cents), 0) FROM ledger_postings WHERE account = 'loan:' || l.ref) <> 0"):
        problems.append(f"loan {row[0]}: state {row[1]} but a balance remains")
    return problems
