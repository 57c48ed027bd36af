"""Operator commands that read or steer a running daemon (over its admin socket) or its
database file: status, outbox, M-PESA actions, backup, check."""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import time
from typing import Any

from gatewayd import config as config_mod


def load_config(path: str | None) -> config_mod.Config:
    try:
        return config_mod.load(path)
    except config_mod.ConfigError as e:
        for problem in e.problems:
            print(f"gatewayd: config: {problem}", file=sys.stderr)
        raise SystemExit(2) from None


def admin(cfg: config_mod.Config, method: str, path: str, body: Any = None) -> Any:
    import httpx
    transport = httpx.HTTPTransport(uds=cfg.admin_socket)
    try:
        with httpx.Client(transport=transport, base_url="http://gatewayd", timeout=10) as c:
            r = c.request(method, path, json=body)
    except httpx.HTTPError as e:
        print(f"gatewayd: cannot reach the daemon at {cfg.admin_socket}: {e}\n"
              "Is it running? (systemctl status gatewayd)", file=sys.stderr)
        raise SystemExit(2) from None
    data = r.json()
    if r.status_code != 200:
        print(f"gatewayd: {data.get('error', r.text)}", file=sys.stderr)
        raise SystemExit(1)
    return data


def _age(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600:02d}h"


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n} B"


def _sync_line(sync: dict[str, Any], last_seq: int) -> str:
    if not sync.get("enabled"):
        return f"sync      off · change log at seq {last_seq}"
    way = f"push to {sync['upstream']}" if sync.get("upstream") else "pull only"
    line = (f"sync      {way} · lag {sync['records']} records"
            + (f" ({_age(sync['seconds'])})" if sync["seconds"] else "")
            + f" · acked to seq {sync['checkpoint']} · backhaul "
            + ("up" if sync["backhaul"] else "down"))
    if sync.get("last_error") and not sync["backhaul"]:
        line += f" · last error {sync['last_error'][:80]}"
    return line


def _mpesa_mode(s: dict[str, Any]) -> str:
    m = s.get("mpesa") or {}
    if m.get("mode") != "direct":
        return " · via the upstream"
    return (f" · direct to {m['daraja']}: {m['sent']} sent, "
            f"{m['settled_ok'] + m['settled_failed']} settled by its query, {m['unknown']} unknown")


def render_status(s: dict[str, Any]) -> str:
    tasks = " · ".join(f"{n} {t['state']}" + (f" ({t['restarts']} restarts)" if t["restarts"] else "")
                       for n, t in sorted(s["tasks"].items()))
    q = s["queues"]
    sms = ", ".join(f"{k} {v}" for k, v in sorted(q["sms"].items())) or "none"
    mp = ", ".join(f"{k} {v}" for k, v in sorted(q["mpesa"].items())) or "none"
    u, st, d = s["ussd"], s["store"], s["disk"]
    lines = [
        f"gatewayd {s['version']} · site {s['site']} ({s['site_name']}) · {s['status'].upper()}"
        f" · up {_age(s['uptime_seconds'])}",
        f"parts     {tasks} · store {s['parts']['store']}",
        f"ussd      {s['listen']} · {u['dialogs_open']} dialogs open · {u['hops']} hops · "
        f"{u['rate_limited']} rate-limited · {u['errors'] + u['unavailable']} failed",
        f"store     {st['transactions']} transactions in {st['commits']} commits "
        f"(largest group {st['max_group']}) · last commit {st['last_commit_ms']} ms"
        + (f" · LAST ERROR {st['last_error']}" if st["last_error"] else ""),
        f"sms       {sms}" + (f" · oldest queued {_age(q['sms_oldest_queued_seconds'])}"
                              if q["sms_oldest_queued_seconds"] else ""),
        f"m-pesa    {mp}" + (f" · oldest open {_age(q['mpesa_oldest_open_seconds'])}"
                             if q["mpesa_oldest_open_seconds"] else "") + _mpesa_mode(s),
        _sync_line(s.get("sync", {}), q["change_log_last_seq"]),
        f"disk      {d['path']}: {_bytes(d['free_bytes'])} free of {_bytes(d['total_bytes'])}"
        f" · database {_bytes(st['db_bytes'])}",
    ]
    sm = s.get("smpp") or {}
    if sm.get("enabled", True):
        lines.insert(3, (
            f"smpp      {sm['host']}:{sm['port']} {sm['bind']} · window {sm['window_in_use']}"
            f"/{sm['window']} · {sm['submit_rate']:g}/s · {sm['accepted']} accepted · "
            f"{sm['retried']} retried · {sm['failed']} failed · {sm['receipts']} receipts"
            + (f" ({sm['receipts_unknown']} unknown)" if sm["receipts_unknown"] else "")
            + f" · {sm['mo_messages']} SMS in · {sm['ussd_hops']} USSD hops"))
    mo = s.get("modems") or {}
    if mo.get("enabled"):
        up = sum(1 for m in mo["modems"] if m["state"] == "ready")
        smpp_on = sm.get("enabled", True)
        role = ("receive only: SMPP sends" if not mo["sends"] else
                "sending while SMPP is unbound" if smpp_on else "send and receive")
        lines.insert(4 if smpp_on else 3, (
            f"modems    {up}/{len(mo['modems'])} ready ({role})"
            f" · {mo['queued']} waiting for a modem · {mo['submitted']} sent · {mo['retrying']} retried"
            f" · {mo['failed']} failed · {mo['receipt']} status reports · {mo['sms_in']} SMS in"
            f" ({mo['duplicate']} repeats dropped) · gatewayd modems for each"))
    if s.get("pending_restart"):
        lines.append(f"restart   needed to apply: {', '.join(s['pending_restart'])}")
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    s = admin(load_config(args.config), "GET", "/status")
    print(json.dumps(s, indent=2, sort_keys=True) if args.json else render_status(s))
    return 0 if s["status"] == "ok" else 1


def cmd_modems(args: argparse.Namespace) -> int:
    from modem import view
    data = admin(load_config(args.config), "GET", "/modems")
    print(json.dumps(data, indent=2, sort_keys=True) if args.json
          else view.table(data["modems"], data["queued"] if data["modems"] else None))
    return 0


def cmd_outbox_list(args: argparse.Namespace) -> int:
    q = f"?state={args.state}" if args.state else ""
    rows = admin(load_config(args.config), "GET", f"/outbox{q}")["sms"]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from menus.msisdn import local
    now = time.time()
    print(f"{'id':>6} {'to':<13} {'state':<10} {'age':>7} {'tries':>5}  text")
    for r in rows:
        body = r["body"] if len(r["body"]) <= 60 else r["body"][:57] + "..."
        print(f"{r['id']:>6} {local(r['msisdn']):<13} {r['state']:<10} "
              f"{_age(now - r['created_at']):>7} {r['attempts']:>5}  {body}")
    return 0


def cmd_inbox_list(args: argparse.Namespace) -> int:
    from urllib.parse import quote

    from menus.msisdn import local, normalize
    q = ""
    if args.msisdn:
        msisdn = normalize(args.msisdn)
        if msisdn is None:
            print(f"gatewayd: {args.msisdn!r} is not a phone number", file=sys.stderr)
            return 2
        q = "?msisdn=" + quote(msisdn)
    rows = admin(load_config(args.config), "GET", f"/inbox{q}")["sms"]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    now = time.time()
    print(f"{'id':>6} {'from':<13} {'age':>7} {'taken as':<10} {'reply':<16}  text")
    for r in rows:
        body = r["body"] if len(r["body"]) <= 50 else r["body"][:47] + "..."
        if not r["complete"]:
            body += f" [{r['parts']} parts, incomplete]"
        reply = f"{r['reply_id']} {r['reply_state']}" if r["reply_id"] else "-"
        print(f"{r['id']:>6} {local(r['msisdn']):<13} {_age(now - r['received_at']):>7} "
              f"{r['command']:<10} {reply:<16}  {body}")
    return 0


def cmd_outbox_change(args: argparse.Namespace) -> int:
    data = admin(load_config(args.config), "POST", f"/outbox/{args.action}", {"id": args.id})
    print(f"SMS {data['id']}: {data['state']}")
    return 0


def cmd_mpesa_list(args: argparse.Namespace) -> int:
    q = f"?state={args.state}" if args.state else ""
    data = admin(load_config(args.config), "GET", f"/mpesa{q}")
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    print(f"{'key':<30} {'purpose':<18} {'loan':<7} {'msisdn':<13} {'Ksh':>9} {'state':<10} receipt")
    for a in data["actions"]:
        print(f"{a['key']:<30} {a['purpose']:<18} {a['loan_ref']:<7} {a['msisdn']:<13} "
              f"{a['amount_cents'] // 100:>9,} {a['state']:<10} {a['receipt'] or ''}")
    return 0


def cmd_mpesa_resolve(args: argparse.Namespace) -> int:
    body = {"key": args.key, "result": "succeeded" if args.succeeded else "failed",
            "receipt": args.receipt, "code": args.code, "reason": args.reason}
    data = admin(load_config(args.config), "POST", "/mpesa/resolve", body)
    print(f"{args.key}: {'applied' if data['applied'] else 'already settled, nothing changed'}")
    return 0


def cmd_db_check(args: argparse.Namespace) -> int:
    from store import check
    from store.writer import connect
    path = args.db or load_config(args.config).db_path
    if not os.path.exists(path):
        print(f"gatewayd: no database at {path}", file=sys.stderr)
        return 2
    conn = connect(path, readonly=True)
    try:
        problems = check.run(conn)
    except sqlite3.DatabaseError as e:
        problems = [f"sqlite: {e}"]
    finally:
        conn.close()
    for p in problems:
        print(p)
    print(f"{path}: {'ok' if not problems else f'{len(problems)} problem(s)'}")
    return 0 if not problems else 1


def cmd_db_backup(args: argparse.Namespace) -> int:
    from store import backup
    cfg = load_config(args.config)
    src = args.db or cfg.db_path
    if not os.path.exists(src):
        print(f"gatewayd: no database at {src}", file=sys.stderr)
        return 2
    try:
        info = backup.backup(src, args.path)
    except (sqlite3.Error, OSError, backup.BackupError) as e:
        print(f"gatewayd: backup failed: {e}", file=sys.stderr)
        return 1
    print(f"{args.path}: {info['bytes']} bytes, schema {info['schema']}, change log at seq "
          f"{info['last_seq']}, checked ok")
    print(f"Keep {cfg.pin_key_path} apart from this copy: without it no PIN can be checked.")
    return 0
