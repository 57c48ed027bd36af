"""Helpers for end-to-end SMPP tests: the real daemon process bound to a real SMSC."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.daemon_proc import DaemonProcess

WAIT = 20.0


def smpp_config(port: int, **overrides: Any) -> str:
    values = {"enabled": True, "port": port, "system_id": "gatewayd", "password": "secret",
              # Tests restart SMSCs within a second; a box in the field waits longer.
              "reconnect_max_seconds": 0.2, "submit_rate": 1000.0, **overrides}
    return "[smpp]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())


def daemon(tmp: Path, port: int, extra: str = "", **smpp: Any) -> DaemonProcess:
    return DaemonProcess(tmp, extra_config=smpp_config(port, **smpp) + extra
                         + "[rate_limit]\nhops_per_minute = 10000\nburst = 10000\n")


def wait_logged(d: DaemonProcess, name: str, count: int = 1,
                timeout: float = WAIT) -> list[dict]:
    """Until the daemon has logged `name` at least `count` times (counting earlier ones)."""
    got = threading.Event()
    d._waiters.append((name, count - 1, got))
    d._check_waiters()
    if not got.wait(timeout):
        raise AssertionError(f"daemon logged {name} {len(d.events(name))} times, not {count}:\n"
                             + "\n".join(d.lines[-20:]))
    return d.events(name)


def collect(smsc, predicate: Callable[[dict], bool], count: int,
            timeout: float = WAIT) -> list[dict]:
    return [smsc.wait_for_sync(predicate, timeout) for _ in range(count)]


def health(d: DaemonProcess) -> tuple[int, dict]:
    r = httpx.get(d.base + "/healthz", timeout=10)
    return r.status_code, r.json()


def status(d: DaemonProcess) -> dict:
    r = d.gatewayd("status", "--json")
    assert r.stdout, r.stderr
    return json.loads(r.stdout)


def db(d: DaemonProcess) -> sqlite3.Connection:
    conn = sqlite3.connect(f"file:{d.state_dir / 'gatewayd.db'}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    return conn


def rows(d: DaemonProcess, sql: str, *args: Any) -> list[sqlite3.Row]:
    conn = db(d)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def seed_outbox(d: DaemonProcess, bodies: list[str], msisdn: str = "254712000000",
                now: float | None = None) -> list[int]:
    """SMS already queued when the daemon starts (as after a restart)."""
    import time

    from store import migrations, outbox
    from store.writer import connect
    d.state_dir.mkdir(parents=True, exist_ok=True)
    conn = connect(str(d.state_dir / "gatewayd.db"))
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        migrations.migrate(conn)
        conn.execute("BEGIN IMMEDIATE")
        ids = [outbox.queue_sms(conn, "site-1", msisdn, body, now or time.time())
               for body in bodies]
        conn.execute("COMMIT")
    finally:
        conn.close()
    return ids
