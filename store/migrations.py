"""Numbered schema migrations. Append only: a shipped migration is never edited.

`PRAGMA user_version` records the last one applied; each runs in its own transaction
together with the version bump, so a power cut leaves the file at one version or the
next, never between.
"""

from __future__ import annotations

import sqlite3

MIGRATIONS: list[tuple[int, str, str]] = [
    (1, "lending, ledger, outboxes, change log", """
CREATE TABLE users (
    id            INTEGER PRIMARY KEY,
    msisdn        TEXT NOT NULL UNIQUE,            -- 2547XXXXXXXX
    name          TEXT,                            -- NULL until registered
    lang          TEXT NOT NULL DEFAULT 'en' CHECK (lang IN ('en', 'sw')),
    pin_hash      TEXT,                            -- NULL: invited (asked to lend), not registered
    pin_failures  INTEGER NOT NULL DEFAULT 0 CHECK (pin_failures >= 0),
    locked_until  REAL,                            -- unix seconds
    registered_at REAL,
    created_at    REAL NOT NULL,
    updated_at    REAL NOT NULL,
    CHECK ((pin_hash IS NULL) = (registered_at IS NULL))
);

CREATE TABLE loans (
    id               INTEGER PRIMARY KEY,
    ref              TEXT NOT NULL UNIQUE,         -- what villagers and the upstream see
    borrower_id      INTEGER NOT NULL REFERENCES users(id),
    lender_id        INTEGER NOT NULL REFERENCES users(id),
    principal_cents  INTEGER NOT NULL CHECK (principal_cents > 0),
    instalment_cents INTEGER NOT NULL CHECK (instalment_cents > 0 AND instalment_cents <= principal_cents),
    state            TEXT NOT NULL CHECK (state IN
                        ('requested', 'approved', 'funded', 'active', 'repaid',
                         'declined', 'expired', 'failed')),
    expires_at       REAL NOT NULL,                -- a request not answered by then expires
    created_at       REAL NOT NULL,
    updated_at       REAL NOT NULL,
    CHECK (borrower_id <> lender_id)
);
CREATE INDEX loans_borrower ON loans(borrower_id, state);
CREATE INDEX loans_lender ON loans(lender_id, state);
CREATE INDEX loans_requested_expiry ON loans(expires_at) WHERE state = 'requested';

-- Double entry: every ledger transaction's postings sum to zero (see store.ledger).
CREATE TABLE ledger_txns (
    id         INTEGER PRIMARY KEY,
    kind       TEXT NOT NULL,
    loan_id    INTEGER REFERENCES loans(id),
    mpesa_receipt TEXT,
    at         REAL NOT NULL
);
CREATE TABLE ledger_postings (
    id           INTEGER PRIMARY KEY,
    txn_id       INTEGER NOT NULL REFERENCES ledger_txns(id),
    account      TEXT NOT NULL,
    amount_cents INTEGER NOT NULL CHECK (amount_cents <> 0),
    user_id      INTEGER REFERENCES users(id)     -- whose Transactions screen shows it
);
CREATE INDEX postings_account ON ledger_postings(account);
CREATE INDEX postings_user ON ledger_postings(user_id, txn_id);

CREATE TABLE sms_outbox (
    id          INTEGER PRIMARY KEY,
    key         TEXT NOT NULL UNIQUE,              -- idempotency key for the sender
    msisdn      TEXT NOT NULL,
    body        TEXT NOT NULL,
    state       TEXT NOT NULL DEFAULT 'queued' CHECK (state IN
                   ('queued', 'submitted', 'delivered', 'failed', 'expired', 'cancelled')),
    attempts    INTEGER NOT NULL DEFAULT 0,
    last_error  TEXT,
    expires_at  REAL NOT NULL,                     -- not worth sending after this
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL
);
CREATE INDEX sms_outbox_queued ON sms_outbox(created_at) WHERE state = 'queued';

CREATE TABLE mpesa_actions (
    id           INTEGER PRIMARY KEY,
    key          TEXT NOT NULL UNIQUE,             -- idempotency key, made here
    kind         TEXT NOT NULL CHECK (kind IN ('stk_push', 'b2c')),
    purpose      TEXT NOT NULL CHECK (purpose IN
                    ('loan_funding', 'loan_payout', 'repayment', 'repayment_forward',
                     'lender_refund')),
    loan_id      INTEGER NOT NULL REFERENCES loans(id),
    msisdn       TEXT NOT NULL,
    -- M-PESA moves whole shillings.
    amount_cents INTEGER NOT NULL CHECK (amount_cents > 0 AND amount_cents % 100 = 0),
    state        TEXT NOT NULL DEFAULT 'queued' CHECK (state IN
                    ('queued', 'sent', 'succeeded', 'failed', 'unknown')),
    receipt      TEXT,
    result_code  TEXT,
    result_desc  TEXT,
    created_at   REAL NOT NULL,
    updated_at   REAL NOT NULL
);
CREATE INDEX mpesa_actions_open ON mpesa_actions(state) WHERE state IN ('queued', 'sent', 'unknown');
CREATE INDEX mpesa_actions_loan ON mpesa_actions(loan_id);

-- Every change, in commit order, for the upstream. AUTOINCREMENT: a sequence number is
-- never reused, even after synced rows are pruned.
CREATE TABLE change_log (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    entity     TEXT NOT NULL,
    entity_key TEXT NOT NULL,
    op         TEXT NOT NULL,
    payload    TEXT NOT NULL,                      -- JSON
    at         REAL NOT NULL
);

-- Open USSD dialogs, so that a restart mid-dialog continues where the villager was.
CREATE TABLE ussd_dialogs (
    channel     TEXT NOT NULL,
    session_id  TEXT NOT NULL,
    msisdn      TEXT NOT NULL,
    service_code TEXT NOT NULL,
    state       TEXT NOT NULL,                     -- JSON
    updated_at  REAL NOT NULL,                     -- unix seconds
    PRIMARY KEY (channel, session_id)
);
"""),
]

MIGRATIONS.append((2, "small named values: sync checkpoint, write probe", """
CREATE TABLE kv (
    key        TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    updated_at REAL NOT NULL
);
"""))

LATEST = MIGRATIONS[-1][0]


def current_version(conn: sqlite3.Connection) -> int:
    return conn.execute("PRAGMA user_version").fetchone()[0]


def migrate(conn: sqlite3.Connection) -> list[int]:
    """Apply what is missing; returns the versions applied. `conn` is in autocommit mode."""
    have = current_version(conn)
    if have > LATEST:
        raise RuntimeError(
            f"database schema is version {have}, newer than this gatewayd ({LATEST}); "
            "refusing to run an older binary on it"
        )
    applied = []
    for version, _title, sql in MIGRATIONS:
        if version <= have:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _statements(sql):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {int(version)}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        applied.append(version)
    return applied


def _statements(sql: str) -> list[str]:
    # executescript() would COMMIT first and break the one-transaction promise; our
    # migrations hold no ';' inside literals, so a plain split is exact.
    lines = [ln.split("--", 1)[0] for ln in sql.splitlines()]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]
