"""The `gatewayd` command."""

from __future__ import annotations

import argparse

from gatewayd import __version__
from gatewayd.opscli import (
    cmd_db_backup,
    cmd_db_check,
    cmd_inbox_list,
    cmd_modems,
    cmd_mpesa_list,
    cmd_mpesa_resolve,
    cmd_outbox_change,
    cmd_outbox_list,
    cmd_status,
    load_config,
)


def cmd_run(args: argparse.Namespace) -> int:
    from gatewayd import daemon
    return daemon.run(load_config(args.config))


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = load_config(args.path)
    print(f"{args.path}: ok (site {cfg.site.id}, listening on {cfg.http.listen}, "
          f"state in {cfg.store.state_dir})")
    return 0


def cmd_dial(args: argparse.Namespace) -> int:
    from gatewayd.dial import dial
    url = args.url or f"http://{load_config(args.config).http.listen}/ussd"
    return dial(args.code, args.msisdn, url, session_id=args.session)


def cmd_upstream_sim(args: argparse.Namespace, rest: list[str]) -> int:
    from sync import upstream_sim
    return upstream_sim.main(rest, prog="gatewayd upstream-sim")


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

    bk = with_config(dbs.add_parser("backup", help="online, consistent copy while serving"))
    bk.add_argument("path", help="where to write the copy")
    bk.add_argument("--db", metavar="PATH", help="database file (default: from the config)")
    bk.set_defaults(fn=cmd_db_backup)

    stp = with_config(sub.add_parser("status", help="one screen: what the running daemon is doing"))
    stp.add_argument("--json", action="store_true")
    stp.set_defaults(fn=cmd_status)

    mo = with_config(sub.add_parser(
        "modems", help="the running daemon's GSM modems: port, SIM, signal, queue, last error"))
    mo.add_argument("--json", action="store_true")
    mo.set_defaults(fn=cmd_modems)

    sub.add_parser("upstream-sim", add_help=False,
                   help="a reference upstream: takes pushed batches, runs M-PESA actions "
                        "against Daraja, returns results (see --help)")

    ob = sub.add_parser("outbox", help="SMS waiting for delivery, in the running daemon")
    obs = ob.add_subparsers(dest="outbox_command", required=True)
    ol = with_config(obs.add_parser("list", help="SMS, newest first"))
    ol.add_argument("--state", choices=["queued", "submitted", "delivered", "failed", "expired",
                                        "cancelled"])
    ol.add_argument("--json", action="store_true")
    ol.set_defaults(fn=cmd_outbox_list)
    for action, text in (("retry", "send a failed, expired or cancelled SMS again"),
                         ("cancel", "stop a queued SMS")):
        oc = with_config(obs.add_parser(action, help=text))
        oc.add_argument("id", type=int)
        oc.set_defaults(fn=cmd_outbox_change, action=action)

    ib = sub.add_parser("inbox", help="SMS received by the running daemon")
    ibs = ib.add_subparsers(dest="inbox_command", required=True)
    il = with_config(ibs.add_parser("list", help="received SMS, newest first"))
    il.add_argument("--msisdn", help="only this sender's (07..., 2547... or +2547...)")
    il.add_argument("--json", action="store_true")
    il.set_defaults(fn=cmd_inbox_list)

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
    args, rest = parser().parse_known_args(argv)
    if args.command == "upstream-sim":
        return cmd_upstream_sim(args, rest)
    if rest:
        parser().error(f"unrecognized arguments: {' '.join(rest)}")
    return args.fn(args)
