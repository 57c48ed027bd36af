"""Loans between villagers: request one, see yours, approve or decline those asked of you."""

from __future__ import annotations

import sqlite3

from menus import msisdn as phone
from menus.flow import (BACK, LIST_CAP, LOAN_STATES, Ctx, Handler, Reply, State, apply_pin,
                        clip, end, label, list_input, page, parse_amount, show, show_main,
                        state_word, texts_for, who)
from menus.texts import ksh
from store import lending
from store.lending import LendingError

def _req_lender(ctx: Ctx, st: State, text: str) -> Reply:
    t = texts_for(ctx, st)
    lender = phone.normalize(text)
    if lender is None:
        return show(ctx, st, "req_lender", t.get("bad_phone"))
    if lender == ctx.msisdn:
        return show(ctx, st, "req_lender", t.get("self_lender"))
    st["d"]["lender"] = lender
    return _ask_amount(ctx, st)


def _ask_amount(ctx: Ctx, st: State, prefix: str = "") -> Reply:
    s = ctx.settings
    return show(ctx, st, "req_amount", texts_for(ctx, st).get(
        "ask_amount", min=f"{s.min_cents // 100:,}", max=f"{s.max_cents // 100:,}"), prefix=prefix)


def _req_amount(ctx: Ctx, st: State, text: str) -> Reply:
    cents, err, params = parse_amount(text, ctx.settings.min_cents, ctx.settings.max_cents)
    if cents is None:
        return _ask_amount(ctx, st, prefix=texts_for(ctx, st).get(err, **params))
    st["d"]["amount"] = cents
    return _ask_instalment(ctx, st)


def _ask_instalment(ctx: Ctx, st: State, prefix: str = "") -> Reply:
    return show(ctx, st, "req_instalment", texts_for(ctx, st).get(
        "ask_instalment", max=f"{st['d']['amount'] // 100:,}"), prefix=prefix)


def _req_instalment(ctx: Ctx, st: State, text: str) -> Reply:
    cents, err, params = parse_amount(text, 100, st["d"]["amount"])
    if cents is None:
        return _ask_instalment(ctx, st, prefix=texts_for(ctx, st).get(err, **params))
    st["d"]["instalment"] = cents
    return _show_confirm(ctx, st)


def _show_confirm(ctx: Ctx, st: State, prefix: str = "") -> Reply:
    d = st["d"]
    lender = lending.get_user(ctx.conn, d["lender"])
    name = lender.name if lender and lender.registered else None
    return show(ctx, st, "req_confirm", texts_for(ctx, st).get(
        "confirm_request", amount=ksh(d["amount"]), instalment=ksh(d["instalment"]),
        lender=label(name, d["lender"])), prefix=prefix)


def _req_confirm(ctx: Ctx, st: State, text: str) -> Reply:
    t = texts_for(ctx, st)
    d = st["d"]
    if text == "0":
        return end(ctx, st, t.get("cancelled"))
    if text != "1":
        return _show_confirm(ctx, st, prefix=t.get("choose_again"))
    s = ctx.settings
    try:
        loan, notices = lending.request_loan(
            ctx.conn, ctx.user, d["lender"], d["amount"], d["instalment"], ctx.now,
            s.request_ttl, s.max_open_requests)
    except LendingError as e:
        if e.code == "too_many_requests":
            return end(ctx, st, t.get("too_many_requests", limit=s.max_open_requests))
        raise
    ctx.notices += notices
    return end(ctx, st, t.get("request_sent", lender=who(loan["lender_name"], loan["lender_msisdn"]),
                               ref=loan["ref"]))


def show_loans(ctx: Ctx, st: State, start: int, prefix: str = "") -> Reply:
    t = texts_for(ctx, st)
    rows = lending.loans_of(ctx.conn, ctx.user.id, 0, LIST_CAP)
    if not rows:
        return show_main(ctx, st, prefix=t.get("no_loans"))
    items = []
    for n, r in enumerate(rows, 1):
        mine = r["borrower_id"] == ctx.user.id
        key = "loan_line_from" if mine else "loan_line_to"
        other = who(r["lender_name"], r["lender_msisdn"], 12) if mine else who(
            r["borrower_name"], r["borrower_msisdn"], 12)
        items.append(clip(t.get(key, n=n, who=other, amount=ksh(r["principal_cents"]),
                                state=state_word(t, r["state"])), 60))
    return page(ctx, st, "loans", t.get("loans_header"), items, [r["id"] for r in rows], start,
                prefix)


def _loans(ctx: Ctx, st: State, text: str) -> Reply:
    return list_input(ctx, st, text, show_loans, _show_loan)


def _show_loan(ctx: Ctx, st: State, loan_id: int) -> Reply:
    t = texts_for(ctx, st)
    r = lending.get_loan(ctx.conn, loan_id)
    mine = r["borrower_id"] == ctx.user.id
    other = who(r["lender_name"], r["lender_msisdn"]) if mine else who(
        r["borrower_name"], r["borrower_msisdn"])
    st["d"]["back_start"] = st["d"].get("start", 0)
    return show(ctx, st, "loan", t.get(
        "loan_detail", ref=r["ref"], direction=t.get("direction_from" if mine else "direction_to"),
        who=other, amount=ksh(r["principal_cents"]), instalment=ksh(r["instalment_cents"]),
        owed=ksh(r["outstanding_cents"]), state=state_word(t, r["state"])))


def _loan(ctx: Ctx, st: State, text: str) -> Reply:
    return show_loans(ctx, st, st["d"].get("back_start", 0))


def show_approvals(ctx: Ctx, st: State, start: int, prefix: str = "") -> Reply:
    t = texts_for(ctx, st)
    rows = lending.requests_to(ctx.conn, ctx.user.id, ctx.now, 0, LIST_CAP)
    if not rows:
        return show_main(ctx, st, prefix=t.get("no_approvals"))
    items = [clip(t.get("approval_line", n=n, who=who(r["borrower_name"], r["borrower_msisdn"], 14),
                        amount=ksh(r["principal_cents"])), 60) for n, r in enumerate(rows, 1)]
    return page(ctx, st, "approvals", t.get("approvals_header"), items,
                [r["id"] for r in rows], start, prefix)


def _approvals(ctx: Ctx, st: State, text: str) -> Reply:
    return list_input(ctx, st, text, show_approvals, _show_approval)


def _show_approval(ctx: Ctx, st: State, loan_id: int, prefix: str = "") -> Reply:
    t = texts_for(ctx, st)
    r = lending.get_loan(ctx.conn, loan_id)
    if r is None or r["lender_id"] != ctx.user.id:
        return show_main(ctx, st)
    if r["state"] != "requested" or r["expires_at"] <= ctx.now:
        state = r["state"] if r["state"] != "requested" else "expired"
        return show_main(ctx, st, prefix=t.get("request_gone", state=state_word(t, state)))
    st["d"]["loan"] = loan_id
    st["d"]["back_start"] = st["d"].get("start", 0)
    return show(ctx, st, "approval", t.get(
        "approval_detail", who=label(r["borrower_name"], r["borrower_msisdn"]),
        amount=ksh(r["principal_cents"]),
        instalment=ksh(r["instalment_cents"]), ref=r["ref"]), prefix=prefix)


def _approval(ctx: Ctx, st: State, text: str) -> Reply:
    t = texts_for(ctx, st)
    loan_id = st["d"]["loan"]
    if text == BACK:
        return show_approvals(ctx, st, st["d"].get("back_start", 0))
    if text not in ("1", "2"):
        return _show_approval(ctx, st, loan_id, prefix=t.get("choose_again"))
    r = lending.get_loan(ctx.conn, loan_id)
    st["d"]["approve"] = text == "1"
    return _ask_answer_pin(ctx, st, r)


def _ask_answer_pin(ctx: Ctx, st: State, r: sqlite3.Row) -> Reply:
    t = texts_for(ctx, st)
    key = "ask_pin_approve" if st["d"]["approve"] else "ask_pin_decline"
    return show(ctx, st, "answer_pin", t.get(
        key, amount=ksh(r["principal_cents"]), who=who(r["borrower_name"], r["borrower_msisdn"])))


def _answer_pin(ctx: Ctx, st: State, text: str) -> Reply:
    t = texts_for(ctx, st)
    loan_id = st["d"]["loan"]
    wrong = apply_pin(ctx, st, ctx.user, lambda msg: show(ctx, st, "answer_pin", msg))
    if wrong is not None:
        return wrong
    approve = st["d"]["approve"]
    try:
        loan, notices = lending.answer_request(ctx.conn, ctx.settings.site, loan_id, ctx.user.id,
                                               approve, ctx.now)
    except LendingError as e:
        # Expired just now: the borrower's SMS rides this transaction.
        ctx.notices += e.params.get("notices", [])
        state = e.params.get("state", "expired")
        return end(ctx, st, t.get("request_gone", state=state_word(t, state)
                                  if state in LOAN_STATES else state))
    ctx.notices += notices
    name = who(loan["borrower_name"], loan["borrower_msisdn"])
    if approve:
        return end(ctx, st, t.get("approved", amount=ksh(loan["principal_cents"]), who=name))
    return end(ctx, st, t.get("declined", who=name))


HANDLERS: dict[str, Handler] = {
    "req_lender": _req_lender, "req_amount": _req_amount, "req_instalment": _req_instalment,
    "req_confirm": _req_confirm,
    "loans": _loans, "loan": _loan,
    "approvals": _approvals, "approval": _approval, "answer_pin": _answer_pin,
}
