"""The lending service's USSD menus: a state machine over one villager's dialog.

`start()` and `step()` run inside the store writer's transaction, so what a screen
says happened has happened, atomically with its SMS, M-PESA action and change-log rows.
The dialog state is a small JSON-able dict: {"s": screen, "lang": ..., "d": {...}}.

Slow PIN hashing must not run in that transaction (it would stall every other
villager's commit), so a screen that takes a PIN declares it (`pin_work`), the daemon
does the hashing in a worker thread first and passes the outcome in as `Ctx.pin`.

The screens themselves live by subject: menus.account (registration, My account),
menus.loans (request, My loans, approve), menus.money (Balance, Transactions, Repay).
"""

from __future__ import annotations

from typing import Any

from menus import account, gsm0338, loans, money
from menus import msisdn as phone
from menus.flow import (LIST_CAP, LOAN_STATES, Ctx, Handler, PinResult, PinWork, Settings,
                        State, end, locked_screen, parse_amount, show, show_main, texts_for,
                        who)
from menus.account import clean_name
from menus.screens import HOME, Reply
from menus.texts import ksh
from store import lending, outbox, pins
from store.lending import Notice

__all__ = ["Ctx", "LIST_CAP", "LOAN_STATES", "PinResult", "PinWork", "Settings", "clean_name",
           "do_pin_work", "parse_amount", "pending_pin_hash", "pin_work", "queue_notices",
           "start", "step"]

_PIN_SCREENS = {
    "reg_pin": PinWork.HASH_NEW, "reg_pin2": PinWork.CONFIRM,
    "pin_new": PinWork.HASH_NEW, "pin_new2": PinWork.CONFIRM,
    "pin_old": PinWork.ACCOUNT, "answer_pin": PinWork.ACCOUNT, "repay_pin": PinWork.ACCOUNT,
}


def pin_work(state: State) -> PinWork:
    return _PIN_SCREENS.get(state.get("s", ""), PinWork.NONE)


def pending_pin_hash(state: State) -> str | None:
    """The first entry of a new PIN, for the CONFIRM comparison."""
    return state.get("d", {}).get("pin_hash")


def start(ctx: Ctx) -> tuple[Reply, State]:
    user = ctx.user
    st: State = {"s": "", "lang": (user.lang if user else ctx.settings.default_lang), "d": {}}
    if user is None or not user.registered:
        return show(ctx, st, "reg_lang", texts_for(ctx, st).get("choose_language",
                                                             service=ctx.settings.service)), st
    if user.locked(ctx.now):
        return locked_screen(ctx, st, user), st
    return show_main(ctx, st), st


def step(ctx: Ctx, st: State, text: str) -> tuple[Reply, State]:
    """One input on the screen `st` shows. Returns the next screen and state."""
    st = {"s": st.get("s", ""), "lang": st.get("lang", ctx.settings.default_lang),
          "d": dict(st.get("d", {}))}
    text = (text or "").strip()
    screen = st["s"]
    user = ctx.user
    if not screen.startswith("reg_"):
        if user is None or not user.registered:
            return start(ctx)
        if user.locked(ctx.now):
            return locked_screen(ctx, st, user), st
        if text == HOME:
            return show_main(ctx, st), st
    handler = _HANDLERS.get(screen)
    if handler is None:  # an unknown screen name (state from an older release): go home
        return start(ctx)
    return handler(ctx, st, text), st


# -- main menu -------------------------------------------------------------------------


def _main(ctx: Ctx, st: State, text: str) -> Reply:
    t = texts_for(ctx, st)
    if text == "1":
        if lending.open_requests(ctx.conn, ctx.user.id) >= ctx.settings.max_open_requests:
            return show_main(ctx, st, prefix=t.get("too_many_requests",
                                                    limit=ctx.settings.max_open_requests))
        return show(ctx, st, "req_lender", t.get("ask_lender"))
    if text == "2":
        return loans.show_loans(ctx, st, 0)
    if text == "3":
        return loans.show_approvals(ctx, st, 0)
    if text == "4":
        return money.show_balance(ctx, st)
    if text == "5":
        return money.show_txns(ctx, st, 0)
    if text == "6":
        return money.show_repayable(ctx, st, 0)
    if text == "7":
        return account.show_account(ctx, st)
    if text == "0":
        return end(ctx, st, t.get("goodbye", service=ctx.settings.service))
    return show_main(ctx, st, prefix=t.get("choose_again"))


def _ended(ctx: Ctx, st: State, text: str) -> Reply:
    # Only reachable with a state saved by an older release: begin again.
    reply, fresh = start(ctx)
    st.clear()
    st.update(fresh)
    return reply


_HANDLERS: dict[str, Handler] = {
    "main": _main, "ended": _ended,
    **account.HANDLERS, **loans.HANDLERS, **money.HANDLERS,
}


# -- PIN work the daemon does before the transaction -----------------------------------

def do_pin_work(work: PinWork, text: str, key: bytes, log2_n: int,
                stored_hash: str | None, pending_hash: str | None) -> PinResult | None:
    """Blocking (scrypt): run it in a worker thread."""
    text = (text or "").strip()
    if work is PinWork.NONE:
        return None
    if not pins.is_pin_shape(text):
        return PinResult(shape_ok=False)
    if work is PinWork.HASH_NEW:
        if pins.is_weak_pin(text):
            return PinResult(shape_ok=True, weak=True)
        return PinResult(shape_ok=True, new_hash=pins.hash_pin(text, key, log2_n))
    against = pending_hash if work is PinWork.CONFIRM else stored_hash
    return PinResult(shape_ok=True, match=pins.verify_pin(text, against, key))


# -- SMS notices -----------------------------------------------------------------------

def queue_notices(ctx: Ctx, notices: list[Notice]) -> None:
    """Render each notice in its recipient's language and queue the SMS (same txn)."""
    for n in notices:
        user = lending.get_user(ctx.conn, n.msisdn)
        t = ctx.texts.get(user.lang if user else ctx.settings.default_lang) or ctx.texts["en"]
        ctx_params = _sms_params(n.params)
        body = t.get(f"sms_{n.kind}", code=ctx.settings.short_code, **ctx_params)
        outbox.queue_sms(ctx.conn, ctx.settings.site, n.msisdn, body, ctx.now)


# M-PESA's ResultDesc is free text of any length and alphabet; an SMS quotes a short,
# GSM-7 form of it so the message stays one part and is not sent as UCS-2.
REASON_CHARS = 30


def _sms_params(p: dict[str, Any]) -> dict[str, Any]:
    out = dict(p)
    if "reason" in out:
        reason = gsm0338.fold(str(out["reason"] or ""))
        reason = "".join(c if gsm0338.is_gsm7(c) and c not in "\r\n" else " " for c in reason)
        reason = " ".join(reason.split())
        out["reason"] = reason if len(reason) <= REASON_CHARS else reason[:REASON_CHARS - 2] + ".."
    for k in ("amount", "instalment", "paid", "balance", "received"):
        if k in out and isinstance(out[k], int):
            out[k] = ksh(out[k])
    for role in ("borrower", "lender"):
        if role in out:
            out[f"{role}_name"] = who(out.get(f"{role}_name"), out[role])
            out[role] = phone.local(out[role])
    return out
