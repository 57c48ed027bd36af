"""Money views and repayment: Balance, Transactions, Repay."""

from __future__ import annotations

from menus.flow import (BACK, LIST_CAP, MORE, Ctx, Handler, Reply, State, apply_pin, clip,
                        end, list_input, page, parse_amount, show, show_main, texts_for, who)
from menus.texts import ksh, short_date
from store import lending
from store.lending import LendingError

def show_balance(ctx: Ctx, st: State) -> Reply:
    t = texts_for(ctx, st)
    b = lending.balance_of(ctx.conn, ctx.user.id, ctx.now)
    return show(ctx, st, "balance", t.get(
        "balance", owe=ksh(b["owe"]), owed=ksh(b["owed"]), requests=b["requests"],
        requests_amount=ksh(b["requests_cents"]), actions=b["actions"],
        actions_amount=ksh(b["actions_cents"])))


def _balance(ctx: Ctx, st: State, text: str) -> Reply:
    return show_main(ctx, st)


def show_txns(ctx: Ctx, st: State, start: int, prefix: str = "") -> Reply:
    t = texts_for(ctx, st)
    rows = lending.postings_of(ctx.conn, ctx.user.id, 0, LIST_CAP)
    if not rows:
        return show_main(ctx, st, prefix=t.get("no_txns"))
    items = []
    for r in rows:
        key = f"txn_{r['kind']}"
        if key not in t.keys() and (t.fallback is None or key not in t.fallback.keys()):
            key = "txn_other"
        items.append(clip(t.get(key, date=short_date(r["at"]), amount=ksh(abs(r["amount_cents"])),
                                who=who(r["other_name"], r["other_msisdn"], 12)), 60))
    return page(ctx, st, "txns", t.get("txns_header"), items, [r["id"] for r in rows], start,
                prefix)


def _txns(ctx: Ctx, st: State, text: str) -> Reply:
    d = st["d"]
    if text == MORE and d.get("start", 0) + d.get("count", 0) < len(d.get("ids", [])):
        return show_txns(ctx, st, d["start"] + d["count"])
    return show_main(ctx, st)


def show_repayable(ctx: Ctx, st: State, start: int, prefix: str = "") -> Reply:
    t = texts_for(ctx, st)
    rows = lending.repayable(ctx.conn, ctx.user.id, 0, LIST_CAP)
    if not rows:
        return show_main(ctx, st, prefix=t.get("no_repayable"))
    items = [clip(t.get("repay_line", n=n, who=who(r["lender_name"], r["lender_msisdn"], 12),
                        owed=ksh(r["outstanding_cents"])), 60) for n, r in enumerate(rows, 1)]
    return page(ctx, st, "repay_list", t.get("repay_header"), items, [r["id"] for r in rows],
                start, prefix)


def _repay_list(ctx: Ctx, st: State, text: str) -> Reply:
    return list_input(ctx, st, text, show_repayable, _show_repay_choice)


def _show_repay_choice(ctx: Ctx, st: State, loan_id: int, prefix: str = "") -> Reply:
    t = texts_for(ctx, st)
    r = lending.get_loan(ctx.conn, loan_id)
    room = r["outstanding_cents"] - r["repaying_cents"]
    if r["state"] != "active" or room <= 0:
        # Too long to sit above the main menu; the villager has nothing to do here now.
        return end(ctx, st, t.get("repay_nothing_left"))
    st["d"].update(loan=loan_id, room=room, instalment=min(r["instalment_cents"], room),
                   who=who(r["lender_name"], r["lender_msisdn"]))
    st["d"]["back_start"] = st["d"].get("start", 0)
    return show(ctx, st, "repay_choice", t.get(
        "repay_choice", who=st["d"]["who"], owed=ksh(r["outstanding_cents"]),
        instalment=ksh(st["d"]["instalment"])), prefix=prefix)


def _repay_choice(ctx: Ctx, st: State, text: str) -> Reply:
    t = texts_for(ctx, st)
    d = st["d"]
    if text == BACK:
        return show_repayable(ctx, st, d.get("back_start", 0))
    if text == "1":
        d["amount"] = d["instalment"]
        return _ask_repay_pin(ctx, st)
    if text == "2":
        return show(ctx, st, "repay_amount", t.get("ask_repay_amount",
                                                   max=f"{d['room'] // 100:,}"))
    return _show_repay_choice(ctx, st, d["loan"], prefix=t.get("choose_again"))


def _repay_amount(ctx: Ctx, st: State, text: str) -> Reply:
    t = texts_for(ctx, st)
    d = st["d"]
    cents, err, params = parse_amount(text, 100, d["room"])
    if cents is None:
        return show(ctx, st, "repay_amount", t.get("ask_repay_amount", max=f"{d['room'] // 100:,}"),
                    prefix=t.get(err, **params))
    d["amount"] = cents
    return _ask_repay_pin(ctx, st)


def _ask_repay_pin(ctx: Ctx, st: State) -> Reply:
    d = st["d"]
    return show(ctx, st, "repay_pin", texts_for(ctx, st).get(
        "ask_pin_repay", amount=ksh(d["amount"]), who=d["who"]))


def _repay_pin(ctx: Ctx, st: State, text: str) -> Reply:
    t = texts_for(ctx, st)
    d = st["d"]
    wrong = apply_pin(ctx, st, ctx.user, lambda msg: show(ctx, st, "repay_pin", msg))
    if wrong is not None:
        return wrong
    try:
        lending.start_repayment(ctx.conn, ctx.settings.site, d["loan"], ctx.user.id, d["amount"],
                                ctx.now)
    except LendingError:
        return end(ctx, st, t.get("repay_nothing_left"))
    return end(ctx, st, t.get("repay_started", amount=ksh(d["amount"])))


HANDLERS: dict[str, Handler] = {
    "balance": _balance, "txns": _txns,
    "repay_list": _repay_list, "repay_choice": _repay_choice, "repay_amount": _repay_amount,
    "repay_pin": _repay_pin,
}
