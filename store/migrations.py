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

MIGRATIONS.append((3, "SMS over SMPP: message ids of submitted parts, inbound SMS and parts", """
-- One row per part of an SMS the SMSC accepted, with the receipt it got (if any).
CREATE TABLE sms_parts (
    sms_id        INTEGER NOT NULL REFERENCES sms_outbox(id),
    part          INTEGER NOT NULL,                -- 0-based, in sending order
    parts         INTEGER NOT NULL CHECK (parts >= 1 AND part < parts),
    message_id    TEXT NOT NULL,                   -- as the submit_sm_resp spelled it
    receipt       TEXT,                            -- last receipt state (DELIVERED...), NULL: none
    receipt_error TEXT,
    accepted_at   REAL NOT NULL,
    receipt_at    REAL,
    PRIMARY KEY (sms_id, part)
);
-- Receipts spell ids their own way (hex/decimal, case, zeros): each accepted id is
-- filed under every key of the one rule (gatewayd.smpp.receipts.message_id_keys) and
-- receipts are looked up by the same keys. `canon` is the id's first key: two rows
-- under one key with different `canon` are two messages, and the receipt is refused.
CREATE TABLE sms_message_ids (
    id_key      TEXT NOT NULL,
    canon       TEXT NOT NULL,
    sms_id      INTEGER NOT NULL,
    part        INTEGER NOT NULL,
    accepted_at REAL NOT NULL,
    PRIMARY KEY (id_key, sms_id, part),
    FOREIGN KEY (sms_id, part) REFERENCES sms_parts (sms_id, part)
);
CREATE INDEX sms_message_ids_at ON sms_message_ids(accepted_at);

-- SMS received, one row per message (a long one once reassembled), with its answer.
CREATE TABLE sms_inbox (
    id          INTEGER PRIMARY KEY,
    key         TEXT NOT NULL UNIQUE,              -- idempotency key for the upstream
    dedupe_key  TEXT NOT NULL,                     -- part key of its first part
    msisdn      TEXT NOT NULL,                     -- the sender, 2547... when Kenyan
    short_code  TEXT NOT NULL,                     -- destination_addr: which code they texted
    body        TEXT NOT NULL,                     -- anything shaped like a PIN masked
    parts       INTEGER NOT NULL,
    complete    INTEGER NOT NULL CHECK (complete IN (0, 1)),
    command     TEXT NOT NULL,                     -- what it was taken for (help, balance...)
    reply_id    INTEGER REFERENCES sms_outbox(id), -- NULL: not answered
    received_at REAL NOT NULL
);
CREATE INDEX sms_inbox_msisdn ON sms_inbox(msisdn, received_at);

-- Every inbound part committed recently, by its part key: a deliver_sm the SMSC sends
-- again (its deliver_sm_resp was lost) is found here and dropped. Pruned after
-- smpp.mo_dedupe_seconds, so the same short text sent again later is a new message.
CREATE TABLE sms_mo_seen (
    part_key TEXT PRIMARY KEY,
    seen_at  REAL NOT NULL
);
CREATE INDEX sms_mo_seen_at ON sms_mo_seen(seen_at);

-- Parts of long SMS waiting for the rest: committed before each deliver_sm_resp, so
-- a restart loses none; deleted once the message is whole or given up.
CREATE TABLE sms_mo_parts (
    group_key   TEXT NOT NULL,                     -- sender, code, scheme, reference, total
    seq         INTEGER NOT NULL,
    total       INTEGER NOT NULL CHECK (seq >= 1 AND seq <= total),
    source_addr TEXT NOT NULL,
    short_code  TEXT NOT NULL,
    data_coding INTEGER NOT NULL,
    body        BLOB NOT NULL,                     -- user data without UDH, undecoded
    part_key    TEXT NOT NULL,
    received_at REAL NOT NULL,
    PRIMARY KEY (group_key, seq)
);
CREATE INDEX sms_mo_parts_at ON sms_mo_parts(received_at);
"""))

MIGRATIONS.append((4, "upstream changes applied once; money received paid on", """
-- Each change the upstream sends is applied once, by its id (results arrive twice).
CREATE TABLE inbound_applied (
    id         TEXT PRIMARY KEY,
    seq        INTEGER NOT NULL,
    kind       TEXT NOT NULL,
    outcome    TEXT NOT NULL,
    applied_at REAL NOT NULL
);

-- Money received for a villager is paid on to them (less any instalment deducted):
-- a new purpose, and actions no longer always belong to a loan. SQLite cannot alter a
-- CHECK, so the table is rebuilt; nothing references it.
CREATE TABLE mpesa_actions_v4 (
    id           INTEGER PRIMARY KEY,
    key          TEXT NOT NULL UNIQUE,
    kind         TEXT NOT NULL CHECK (kind IN ('stk_push', 'b2c')),
    purpose      TEXT NOT NULL CHECK (purpose IN
                    ('loan_funding', 'loan_payout', 'repayment', 'repayment_forward',
                     'lender_refund', 'remainder_payout')),
    loan_id      INTEGER REFERENCES loans(id),
    msisdn       TEXT NOT NULL,
    amount_cents INTEGER NOT NULL CHECK (amount_cents > 0 AND amount_cents % 100 = 0),
    state        TEXT NOT NULL DEFAULT 'queued' CHECK (state IN
                    ('queued', 'sent', 'succeeded', 'failed', 'unknown')),
    receipt      TEXT,
    result_code  TEXT,
    result_desc  TEXT,
    created_at   REAL NOT NULL,
    updated_at   REAL NOT NULL
);
INSERT INTO mpesa_actions_v4 SELECT * FROM mpesa_actions;
DROP TABLE mpesa_actions;
ALTER TABLE mpesa_actions_v4 RENAME TO mpesa_actions;
CREATE INDEX mpesa_actions_open ON mpesa_actions(state) WHERE state IN ('queued', 'sent', 'unknown');
CREATE INDEX mpesa_actions_loan ON mpesa_actions(loan_id);
"""))

MIGRATIONS.append((5, "M-PESA direct mode: who runs each action, and the box's own bookkeeping", """
-- Who executes the action: 'upstream' (it rides the batches) or 'box' (direct mode).
-- Stamped once, from kv mpesa.executor, when the action is queued (store.outbox);
-- NULL only for rows made before this migration ran, which it sets to upstream.
ALTER TABLE mpesa_actions ADD COLUMN executor TEXT CHECK (executor IN ('upstream', 'box'));
UPDATE mpesa_actions SET executor = 'upstream';

-- The executor's per-action state for actions this box runs itself (sync.executor.Action):
-- a side table, so the action's own shape (and its change-log payload) stays as it was.
CREATE TABLE mpesa_direct (
    action_id           INTEGER PRIMARY KEY REFERENCES mpesa_actions(id),
    checkout_request_id TEXT,                      -- STK push: what the query asks about
    merchant_request_id TEXT,
    conversation_id     TEXT,                      -- B2C: Daraja's ConversationID
    sends               INTEGER NOT NULL DEFAULT 0,
    queries             INTEGER NOT NULL DEFAULT 0,
    not_before          REAL NOT NULL DEFAULT 0,   -- unix seconds: nothing to do before
    note                TEXT NOT NULL DEFAULT '',  -- the last thing that happened
    updated_at          REAL NOT NULL
);
CREATE INDEX mpesa_actions_box_open ON mpesa_actions(id)
    WHERE executor = 'box' AND state IN ('queued', 'sent', 'unknown');

-- Which action a ledger transaction settles, so a receipt that arrives after the
-- success (Daraja's STK query carries none) can be filled in on its transactions.
ALTER TABLE ledger_txns ADD COLUMN action_key TEXT;
CREATE INDEX ledger_txns_action ON ledger_txns(action_key) WHERE action_key IS NOT NULL;
"""))

MIGRATIONS.append((6, "M-PESA direct mode: Transaction Status queries counted per action", """
-- A B2C whose result callback never came is asked about with Daraja's Transaction
-- Status query (sync.executor.StatusQuery); how many were made, for operators and backoff.
ALTER TABLE mpesa_direct ADD COLUMN status_queries INTEGER NOT NULL DEFAULT 0;
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
