"""The reference upstream's database (sync/upstream_sim.py): per site its checkpoint U,
the records and entities it holds, the M-PESA actions it runs or relays, and the inbound
changes it has queued for the box. One SQLite file; the section numbers are
docs/sync-protocol.md's.
"""

from __future__ import annotations

import json
import sqlite3
import sys
from collections import Counter
from typing import Any

from sync.batch import Batch, canonical_json
from sync.checkpoint import (
    MAX_INBOUND_CHANGES,
    Ack,
    InboundError,
    SyncConflict,
    decode_ack,
    decode_inbound,
)
from sync.executor import Action, Result

SCHEMA = """
CREATE TABLE IF NOT EXISTS sites (site TEXT PRIMARY KEY, checkpoint INTEGER NOT NULL,
    inbound_seq INTEGER NOT NULL, box_cursor INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS records (site TEXT, seq INTEGER, entity TEXT, key TEXT, op TEXT,
    payload TEXT, at REAL, PRIMARY KEY (site, seq));
CREATE TABLE IF NOT EXISTS entities (site TEXT, entity TEXT, key TEXT, seq INTEGER,
    payload TEXT, PRIMARY KEY (site, entity, key));
CREATE TABLE IF NOT EXISTS actions (site TEXT, key TEXT, state TEXT, data TEXT,
    PRIMARY KEY (site, key));
CREATE TABLE IF NOT EXISTS inbound (site TEXT, seq INTEGER, action_key TEXT, change TEXT,
    PRIMARY KEY (site, seq), UNIQUE (site, action_key));
"""


class UpstreamStore:
    def __init__(self, path: str, sites: list[str]) -> None:
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode = WAL")
        self.db.execute("PRAGMA synchronous = FULL")    # U moves only with its records (9)
        self.db.executescript(SCHEMA)
        if "pending_ack" not in {r[1] for r in self.db.execute("PRAGMA table_info(sites)")}:
            # An ack sent in pull mode whose answer never came, kept across a restart of
            # this process (the box's checkpoint may still be behind U). An upstream.db
            # from before this column gets it here.
            self.db.execute("ALTER TABLE sites ADD COLUMN pending_ack TEXT")
        for s in sites:
            self.db.execute("INSERT OR IGNORE INTO sites (site, checkpoint, inbound_seq, "
                            "box_cursor) VALUES (?, 0, 0, 0)", (s,))

    def site(self, site: str) -> dict[str, int]:
        row = self.db.execute("SELECT checkpoint, inbound_seq, box_cursor FROM sites "
                              "WHERE site = ?", (site,)).fetchone()
        return dict(zip(("checkpoint", "inbound_seq", "box_cursor"), row))

    def pending_ack(self, site: str) -> Ack | None:
        row = self.db.execute("SELECT pending_ack FROM sites WHERE site = ?", (site,)).fetchone()
        return decode_ack(row[0].encode()) if row and row[0] else None

    def set_pending_ack(self, site: str, a: Ack | None) -> None:
        self.db.execute("UPDATE sites SET pending_ack = ? WHERE site = ?",
                        (a.to_json().decode() if a else None, site))

    def apply_batch(self, site: str, b: Batch, execute: bool = True) -> int:
        """Section 8: one transaction per batch; records above U in order, then U. Returns
        the number of new actions to execute; SyncConflict (409) on a hole. Actions marked
        `executor: box`, and every action of a site passed with `execute` False, are the
        box's to run: they are only recorded."""
        new = 0
        self.db.execute("BEGIN IMMEDIATE")
        try:
            u = self.site(site)["checkpoint"]
            if b.after > u:
                raise SyncConflict(f"batch starts after {b.after}, upstream has {u}", u)
            for r in (r for r in b.records if r.seq > u):
                payload = canonical_json(r.payload).decode()
                self.db.execute("INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?)",
                                (site, r.seq, r.entity, r.key, r.op, payload, r.at))
                # Upsert of the whole entity, the highest seq winning; ledger_txn rows are
                # append-only and never change, so the same statement keeps the first.
                self.db.execute(
                    "INSERT INTO entities VALUES (?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET "
                    "seq = excluded.seq, payload = excluded.payload WHERE excluded.seq > entities.seq "
                    "AND excluded.entity != 'ledger_txn'", (site, r.entity, r.key, r.seq, payload))
                # Section 11: an action the box runs itself (direct mode) is only recorded.
                if (execute and r.entity == "mpesa_action" and r.payload.get("state") == "queued"
                        and r.payload.get("executor", "upstream") == "upstream"):
                    try:
                        a = Action.from_payload(site, r.payload)
                    except (KeyError, ValueError):
                        continue     # not executable; it stays visible in `entities`
                    # Once per (site, key): a record seen again never executes again.
                    new += self.db.execute(
                        "INSERT OR IGNORE INTO actions VALUES (?, ?, 'queued', ?)",
                        (site, a.key, json.dumps(a.to_json()))).rowcount
            self.db.execute("UPDATE sites SET checkpoint = MAX(checkpoint, ?) WHERE site = ?",
                            (b.last_seq, site))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return new

    def inbound_after(self, site: str, after: int) -> list[dict[str, Any]]:
        """Changes above the box's cursor. A box ahead of us (we were restored from an
        old backup) must not see new changes numbered at or below its cursor: it would
        skip them, so numbering moves past it."""
        self.db.execute("UPDATE sites SET inbound_seq = ? WHERE site = ? AND inbound_seq < ?",
                        (after, site, after))
        return [json.loads(c) for (c,) in self.db.execute(
            "SELECT change FROM inbound WHERE site = ? AND seq > ? ORDER BY seq LIMIT ?",
            (site, after, MAX_INBOUND_CHANGES))]

    def box_action(self, site: str, key: str) -> dict[str, Any] | None:
        """The latest record of an action the box runs itself (section 11), if it is one."""
        row = self.db.execute("SELECT payload FROM entities WHERE site = ? AND entity = "
                              "'mpesa_action' AND key = ?", (site, key)).fetchone()
        if row is None or self.db.execute("SELECT 1 FROM actions WHERE site = ? AND key = ?",
                                          (site, key)).fetchone():
            return None
        return json.loads(row[0])

    def add_result(self, site: str, r: Result, amount_cents: int | None,
                   need_receipt: bool = True, ids: dict[str, str | None] | None = None) -> bool:
        """An executor result as an inbound change (section 7); False when not added.
        One change per action here (UNIQUE), so for the actions it runs itself the
        upstream waits for a success's receipt: the STK query carries none, the callback
        does, and the box would otherwise need a second change to learn it."""
        if r.succeeded and not r.receipt and need_receipt:
            return False
        seq = self.site(site)["inbound_seq"] + 1
        change = {"seq": seq, "id": f"up-{seq}", "kind": "mpesa_result", "action_key": r.key,
                  "result": "succeeded" if r.succeeded else "failed", "receipt": r.receipt,
                  "result_code": r.result_code, "result_desc": r.result_desc or None,
                  "amount_cents": amount_cents if r.succeeded else None, **(ids or {})}
        change = {k: v for k, v in change.items() if v is not None}
        try:   # the box's own validator: never hand it a change it will refuse
            decode_inbound({"v": 1, "site": site, "after": seq - 1, "changes": [change]}, site)
        except InboundError as e:
            return log_event("result_not_sendable", key=r.key, error=str(e))
        with self.db:
            added = self.db.execute("INSERT OR IGNORE INTO inbound VALUES (?, ?, ?, ?)",
                                    (site, seq, r.key, json.dumps(change))).rowcount > 0
            if added:
                self.db.execute("UPDATE sites SET inbound_seq = ? WHERE site = ?", (seq, site))
        return added

    def actions(self, site: str | None = None, key: str | None = None,
                open_only: bool = False) -> list[Action]:
        rows = self.db.execute(
            "SELECT data FROM actions WHERE (?1 IS NULL OR site = ?1) AND (?2 IS NULL OR "
            "key = ?2) AND (NOT ?3 OR state IN ('queued', 'sent', 'unknown')) ORDER BY rowid",
            (site, key, open_only))
        return [Action(**json.loads(d)) for (d,) in rows]

    def save(self, a: Action) -> None:
        with self.db:
            self.db.execute("UPDATE actions SET state = ?, data = ? WHERE site = ? AND key = ?",
                            (a.state, json.dumps(a.to_json()), a.site, a.key))

    def state(self, site: str) -> dict[str, Any]:
        acts = self.actions(site)
        n, last = self.db.execute("SELECT COUNT(*), MAX(seq) FROM records WHERE site = ?",
                                  (site,)).fetchone()
        return {"site": site, **self.site(site), "records": n, "last_seq": last or 0,
                "actions": dict(Counter(a.state for a in acts)), "actions_executed": sum(a.sends > 0 for a in acts),
                "sends": sum(a.sends for a in acts),
                "awaiting_receipt": sum(a.state == "succeeded" and not a.receipt for a in acts),
                "inbound": [json.loads(c) for (c,) in self.db.execute(
                    "SELECT change FROM inbound WHERE site = ? ORDER BY seq", (site,))]}


def log_event(event: str, **kw: Any) -> bool:
    print(json.dumps({"event": event, **kw}), file=sys.stderr, flush=True)
    return False
