"""The `gatewayd` command."""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
from typing import Any

from gatewayd import __version__, config as config_mod


def _load_config(path: str | None) -> config_mod.Config:
    try:
        return config_mod.load(path)
    except config_mod.ConfigError as e:
        for problem in e.problems:
            print(f"gatewayd: config: {problem}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_run(args: argparse.Namespace) -> int:
    from gatewayd import daemon
    return daemon.run(_load_config(args.config))


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = _load_config(args.path)
    print(f"{args.path}: ok (site {cfg.site.id}, listening on {cfg.http.listen}, "
          f"state in {cfg.store.state_dir})")
    return 0


def cmd_db_check(args: argparse.Namespace) -> int:
    from store import check
    from store.writer import connect
    cfg = _load_config(args.config)
    path = args.db or cfg.db_path
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


def cmd_dial(args: argparse.Namespace) -> int:
    from gatewayd.dial import dial
    url = args.url
    if url is None:
        cfg = _load_config(args.config)
        url = f"http://{cfg.http.listen}/ussd"
    return dial(args.code, args.msisdn, url, session_id=args.session)


def _admin(cfg: config_mod.Config, method: str, path: str, body: Any = None) -> Any:
    import httpx
    transport = httpx.HTTPTransport(uds=cfg.admin_socket)
    try:
        with httpx.Client(transport=transport, base_url="http://gatewayd", timeout=10) as c:
            r = c.request(method, path, json=body)
    except httpx.HTTPError as e:
        print(f"gatewayd: cannot reach the daemon at {cfg.admin_socket}: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    data = r.json()
    if r.status_code != 200:
        print(f"gatewayd: {data.get('error', r.text)}", file=sys.stderr)
        raise SystemExit(1)
    return data


def cmd_status(args: argparse.Namespace) -> int:
    print(json.dumps(_admin(_load_config(args.config), "GET", "/status"), indent=2, sort_keys=True))
    return 0


def cmd_mpesa_list(args: argparse.Namespace) -> int:
    q = f"?state={args.state}" if args.state else ""
    data = _admin(_load_config(args.config), "GET", f"/mpesa{q}")
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
    data = _admin(_load_config(args.config), "POST", "/mpesa/resolve", body)
    print(f"{args.key}: {'applied' if data['applied'] else 'already settled, nothing changed'}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gatewayd", description="Village USSD/SMS gateway daemon.")
    p.add_argument("--version", action="version", version=f"gatewayd {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def with_config(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument("--config", metavar="PATH",
                        help="TOML config file (default: the embedded default)")
        return sp

    with_config(sub.add_parser("run", help="run the daemon")).set_defaults(fn=cmd_run)
    cc = sub.add_parser("check-config", help="validate a config file and exit")
    cc.add_argument("path")
    cc.set_defaults(fn=cmd_check_config)

    db = sub.add_parser("db", help="database tools")
    dbs = db.add_subparsers(dest="db_command", required=True)
    chk = with_config(dbs.add_parser("check", help="ledger balances, foreign keys, integrity"))
    chk.add_argument("--db", metavar="PATH", help="database file (default: from the config)")
    chk.set_defaults(fn=cmd_db_check)

    d = with_config(sub.add_parser("dial", help="walk the USSD menus from this terminal"))
    d.add_argument("code", help="the code to dial, like '*383#'")
    d.add_argument("--msisdn", required=True, help="the phone number you dial from")
    d.add_argument("--url", help="USSD callback URL (default: from the config)")
    d.add_argument("--session", help="session id (default: a new random one)")
    d.set_defaults(fn=cmd_dial)

    with_config(sub.add_parser("status", help="what the running daemon is doing")).set_defaults(
        fn=cmd_status)

    mp = sub.add_parser("mpesa", help="M-PESA actions of the running daemon")
    mps = mp.add_subparsers(dest="mpesa_command", required=True)
    ls = with_config(mps.add_parser("list", help="list actions, newest first"))
    ls.add_argument("--state", choices=["queued", "sent", "succeeded", "failed", "unknown"])
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(fn=cmd_mpesa_list)
    rs = with_config(mps.add_parser(
        "resolve", help="settle an action by hand, from the M-PESA statement"))
    rs.add_argument("key")
    g = rs.add_mutually_exclusive_group(required=True)
    g.add_argument("--succeeded", action="store_true")
    g.add_argument("--failed", action="store_true")
    rs.add_argument("--receipt", help="M-PESA receipt number (needed for --succeeded)")
    rs.add_argument("--code", help="M-PESA result code of a failure")
    rs.add_argument("--reason", help="why it failed, as M-PESA said")
    rs.set_defaults(fn=cmd_mpesa_resolve)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.fn(args)
