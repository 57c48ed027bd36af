"""The change log the upstream replicates: one row per change, in commit order.

Rows are written by the same transaction as the change they describe, so the log can
neither miss a committed change nor carry one that rolled back. The payload is the
whole entity after the change (an upsert for the receiver), never a PIN hash.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any


def _ms(value: Any) -> Any:
    # Timestamps go upstream to the millisecond: the microseconds time.time() carries are
    # noise no compressor removes, paid for on a metered link (bench/sync_codec.py).
    return round(value, 3) if isinstance(value, float) else value


def record(conn: sqlite3.Connection, entity: str, key: str, op: str,
           payload: dict[str, Any], now: float) -> int:
    payload = {k: _ms(v) for k, v in payload.items()}
    cur = conn.execute(
        "INSERT INTO change_log (entity, entity_key, op, payload, at) VALUES (?, ?, ?, ?, ?)",
        (entity, key, op, json.dumps(payload, separators=(",", ":"), sort_keys=True), _ms(now)),
    )
    return int(cur.lastrowid)


def since(conn: sqlite3.Connection, seq: int, limit: int = 1000) -> list[sqlite3.Row]:
    return conn.execute(
        "SELECT seq, entity, entity_key, op, payload, at FROM change_log "
        "WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit),
    ).fetchall()


def last_seq(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT MAX(seq) FROM change_log").fetchone()
    return int(row[0] or 0)
