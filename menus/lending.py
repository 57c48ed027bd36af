"""The lending service's USSD menus: a state machine over one villager's dialog.

`start()` and `step()` run inside the store writer's transaction, so what a screen
says happened has happened, atomically with its SMS, M-PESA action and change-log rows.
The dialog state is a small JSON-able dict: {"s": screen, "lang": ..., "d": {...}}.

Slow PIN hashing must not run in that transaction (it would stall every other
villager's commit), so a screen that takes a PIN declares it (`pin_work`), the daemon
does the hashing in a worker thread first and passes the outcome in as `Ctx.pin`.
"""

from __future__ import annotations

import enum
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from menus import gsm0338, msisdn as phone
from menus.screens import BACK, HOME, MORE, Reply, clip, paginate
from menus.texts import Texts, ksh, short_date
from store import lending, outbox, pins
from store.lending import LendingError, Notice, User

State = dict[str, Any]
LIST_CAP = 90  # list numbers stay below "98 More"


@dataclass(frozen=True)
class Settings:
    site: str
    service: str = "Mkopo Jirani"
    short_code: str = "*383#"
    min_cents: int = 10_00
    max_cents: int = 70_000_00
    request_ttl: float = 72 * 3600.0
    max_open_requests: int = 5
    pin_attempts: int = 3
    pin_lock_seconds: float = 30 * 60.0
    default_lang: str = "en"


class PinWork(enum.Enum):
    NONE = "none"
    HASH_NEW = "hash_new"     # a new PIN: hash it (after shape and weakness checks)
    CONFIRM = "confirm"       # the new PIN again: compare with the hash held in the dialog
    ACCOUNT = "account"       # the villager's PIN: compare with the stored hash


@dataclass(frozen=True)
class PinResult:
    shape_ok: bool
    weak: bool = False
    new_hash: str | None = None
    match: bool = False


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


@dataclass
class Ctx:
    conn: sqlite3.Connection
    msisdn: str
    now: float
    settings: Settings
    texts: dict[str, Texts]
    pin: PinResult | None = None
    notices: list[Notice] = field(default_factory=list)
    _user: User | None = None

    @property
    def user(self) -> User | None:
        if self._user is None:
            self._user = lending.get_user(self.conn, self.msisdn)
        return self._user

    def reload_user(self) -> User | None:
        self._user = None
        return self.user


# -- entry points ----------------------------------------------------------------------

def start(ctx: Ctx) -> tuple[Reply, State]:
    user = ctx.user
    st: State = {"s": "", "lang": (user.lang if user else ctx.settings.default_lang), "d": {}}
    if user is None or not user.registered:
        return _show(ctx, st, "reg_lang", _t(ctx, st).get("choose_language",
                                                             service=ctx.settings.service)), st
    if user.locked(ctx.now):
        return _locked(ctx, st, user), st
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
            return _locked(ctx, st, user), st
        if text == HOME:
            return show_main(ctx, st), st
    handler = _HANDLERS.get(screen)
    if handler is None:  # an unknown screen name (state from an older release): go home
        return start(ctx)
    return handler(ctx, st, text), st


# -- helpers ---------------------------------------------------------------------------

def _t(ctx: Ctx, st: State) -> Texts:
    return ctx.texts.get(st.get("lang", "en")) or ctx.texts["en"]


def _show(ctx: Ctx, st: State, screen: str, text: str, *, prefix: str = "") -> Reply:
    st["s"] = screen
    return Reply(clip(f"{prefix}\n{text}" if prefix else text), False)


def _end(ctx: Ctx, st: State, text: str) -> Reply:
    st["s"] = "ended"
    return Reply(clip(text), True)


def _locked(ctx: Ctx, st: State, user: User) -> Reply:
    minutes = max(1, int(((user.locked_until or ctx.now) - ctx.now + 59) // 60))
    return _end(ctx, st, _t(ctx, st).get("locked", minutes=minutes,
                                         attempts=ctx.settings.pin_attempts))


def who(name: str | None, msisdn: str) -> str:
    """How a villager is named on a screen: their registered name, else their number."""
    return name or phone.local(msisdn)


def label(name: str | None, msisdn: str) -> str:
    """Name and number, where a villager decides about money with that person."""
    return f"{name} {phone.local(msisdn)}" if name else phone.local(msisdn)


def parse_amount(text: str, min_cents: int, max_cents: int) -> tuple[int | None, str, dict]:
    """Whole shillings typed by a villager -> (cents, error key, params)."""
    s = text.replace(",", "").replace(" ", "")
    if s.lower().startswith("ksh"):
        s = s[3:]
    if "." in s:
        whole, _, frac = s.partition(".")
        if whole.isdigit() and frac.isdigit() and int(frac) == 0:
            s = whole
        elif whole.isdigit() and frac.isdigit():
            return None, "amount_whole", {}
    if not (s.isascii() and s.isdigit()):
        return None, "amount_not_number", {}
    if len(s) > 9:
        return None, "amount_too_large", {"max": f"{max_cents // 100:,}"}
    cents = int(s) * 100
    if cents < min_cents:
        return None, "amount_too_small", {"min": f"{min_cents // 100:,}"}
    if cents > max_cents:
        return None, "amount_too_large", {"max": f"{max_cents // 100:,}"}
    return cents, "", {}


def _apply_pin(ctx: Ctx, st: State, user: User, retry: Callable[[str], Reply]) -> Reply | None:
    """None when the PIN was right; otherwise the screen to show (retry or locked)."""
    t = _t(ctx, st)
    result = ctx.pin
    if result is not None and result.shape_ok and result.match:
        lending.pin_succeeded(ctx.conn, user.id, ctx.now)
        return None
    tries = lending.pin_failed(ctx.conn, user.id, ctx.now, ctx.settings.pin_attempts,
                               ctx.settings.pin_lock_seconds)
    if tries <= 0:
        return _end(ctx, st, t.get("locked_now", attempts=ctx.settings.pin_attempts,
                                   minutes=int(ctx.settings.pin_lock_seconds // 60)))
    return retry(t.get("wrong_pin", tries=tries))


# -- registration ----------------------------------------------------------------------

def _reg_lang(ctx: Ctx, st: State, text: str) -> Reply:
    if text not in ("1", "2"):
        return _show(ctx, st, "reg_lang", _t(ctx, st).get("choose_language_again"))
    st["lang"] = "en" if text == "1" else "sw"
    return _show(ctx, st, "reg_name", _t(ctx, st).get("ask_name"))


def clean_name(text: str) -> str | None:
    name = " ".join(gsm0338.fold(text).split())
    if not 2 <= len(name) <= 20 or not gsm0338.is_gsm7(name):
        return None
    if not any(c.isalpha() for c in name) or any(c.isdigit() for c in name):
        return None
    if any(c in "*#\n\r" for c in name):
        return None
    return name


def _reg_name(ctx: Ctx, st: State, text: str) -> Reply:
    name = clean_name(text)
    if name is None:
        return _show(ctx, st, "reg_name", _t(ctx, st).get("bad_name"))
    st["d"]["name"] = name
    return _show(ctx, st, "reg_pin", _t(ctx, st).get("ask_new_pin"))


def _new_pin(ctx: Ctx, st: State, screen: str, confirm_screen: str) -> Reply:
    t = _t(ctx, st)
    r = ctx.pin
    if r is None or not r.shape_ok:
        return _show(ctx, st, screen, t.get("bad_pin_shape"))
    if r.weak or not r.new_hash:
        return _show(ctx, st, screen, t.get("weak_pin"))
    st["d"]["pin_hash"] = r.new_hash
    return _show(ctx, st, confirm_screen, t.get("ask_pin_again"))


def _reg_pin(ctx: Ctx, st: State, text: str) -> Reply:
    return _new_pin(ctx, st, "reg_pin", "reg_pin2")


def _reg_pin2(ctx: Ctx, st: State, text: str) -> Reply:
    t = _t(ctx, st)
    pin_hash = st["d"].pop("pin_hash", None)
    if not (ctx.pin and ctx.pin.shape_ok and ctx.pin.match and pin_hash):
        return _show(ctx, st, "reg_pin", t.get("pin_mismatch"))
    existing = ctx.user
    if existing is not None and existing.registered:  # registered meanwhile on another dialog
        return show_main(ctx, st)
    user = lending.register(ctx.conn, ctx.msisdn, st["d"].pop("name"), st["lang"], pin_hash,
                            ctx.now)
    ctx._user = user
    return show_main(ctx, st, prefix=t.get("registered", name=user.name))


# -- main menu -------------------------------------------------------------------------

def show_main(ctx: Ctx, st: State, prefix: str = "") -> Reply:
    t = _t(ctx, st)
    st["d"] = {}
    user = ctx.user
    waiting = lending.count_requests_to(ctx.conn, user.id, ctx.now) if user else 0
    text = t.get("main_menu", service=ctx.settings.service,
                 waiting=t.get("waiting_count", count=waiting) if waiting else "")
    return _show(ctx, st, "main", text, prefix=prefix)


def _main(ctx: Ctx, st: State, text: str) -> Reply:
    t = _t(ctx, st)
    if text == "1":
        if lending.open_requests(ctx.conn, ctx.user.id) >= ctx.settings.max_open_requests:
            return show_main(ctx, st, prefix=t.get("too_many_requests",
                                                    limit=ctx.settings.max_open_requests))
        return _show(ctx, st, "req_lender", t.get("ask_lender"))
    if text == "2":
        return _show_loans(ctx, st, 0)
    if text == "3":
        return _show_approvals(ctx, st, 0)
    if text == "4":
        return _show_balance(ctx, st)
    if text == "5":
        return _show_txns(ctx, st, 0)
    if text == "6":
        return _show_repayable(ctx, st, 0)
    if text == "7":
        return _show_account(ctx, st)
    if text == "0":
        return _end(ctx, st, t.get("goodbye", service=ctx.settings.service))
    return show_main(ctx, st, prefix=t.get("choose_again"))


# -- request a loan --------------------------------------------------------------------

def _req_lender(ctx: Ctx, st: State, text: str) -> Reply:
    t = _t(ctx, st)
    lender = phone.normalize(text)
    if lender is None:
        return _show(ctx, st, "req_lender", t.get("bad_phone"))
    if lender == ctx.msisdn:
        return _show(ctx, st, "req_lender", t.get("self_lender"))
    st["d"]["lender"] = lender
    return _ask_amount(ctx, st)


def _ask_amount(ctx: Ctx, st: State, prefix: str = "") -> Reply:
    s = ctx.settings
    return _show(ctx, st, "req_amount", _t(ctx, st).get(
        "ask_amount", min=f"{s.min_cents // 100:,}", max=f"{s.max_cents // 100:,}"), prefix=prefix)


def _req_amount(ctx: Ctx, st: State, text: str) -> Reply:
    cents, err, params = parse_amount(text, ctx.settings.min_cents, ctx.settings.max_cents)
    if cents is None:
        return _ask_amount(ctx, st, prefix=_t(ctx, st).get(err, **params))
    st["d"]["amount"] = cents
    return _ask_instalment(ctx, st)


def _ask_instalment(ctx: Ctx, st: State, prefix: str = "") -> Reply:
    return _show(ctx, st, "req_instalment", _t(ctx, st).get(
        "ask_instalment", max=f"{st['d']['amount'] // 100:,}"), prefix=prefix)


def _req_instalment(ctx: Ctx, st: State, text: str) -> Reply:
    cents, err, params = parse_amount(text, 100, st["d"]["amount"])
    if cents is None:
        return _ask_instalment(ctx, st, prefix=_t(ctx, st).get(err, **params))
    st["d"]["instalment"] = cents
    return _show_confirm(ctx, st)


def _show_confirm(ctx: Ctx, st: State, prefix: str = "") -> Reply:
    d = st["d"]
    lender = lending.get_user(ctx.conn, d["lender"])
    name = lender.name if lender and lender.registered else None
    return _show(ctx, st, "req_confirm", _t(ctx, st).get(
        "confirm_request", amount=ksh(d["amount"]), instalment=ksh(d["instalment"]),
        lender=label(name, d["lender"])), prefix=prefix)


def _req_confirm(ctx: Ctx, st: State, text: str) -> Reply:
    t = _t(ctx, st)
    d = st["d"]
    if text == "0":
        return _end(ctx, st, t.get("cancelled"))
    if text != "1":
        return _show_confirm(ctx, st, prefix=t.get("choose_again"))
    s = ctx.settings
    try:
        loan, notices = lending.request_loan(
            ctx.conn, ctx.user, d["lender"], d["amount"], d["instalment"], ctx.now,
            s.request_ttl, s.max_open_requests)
    except LendingError as e:
        if e.code == "too_many_requests":
            return _end(ctx, st, t.get("too_many_requests", limit=s.max_open_requests))
        raise
    ctx.notices += notices
    return _end(ctx, st, t.get("request_sent", lender=who(loan["lender_name"], loan["lender_msisdn"]),
                               ref=loan["ref"]))


# -- lists -----------------------------------------------------------------------------

def _page(ctx: Ctx, st: State, screen: str, header: str, items: list[str], ids: list[int],
          start: int) -> Reply:
    t = _t(ctx, st)
    page = paginate(header, items, start, t.get("more"), t.get("back"))
    st["d"].update(ids=ids, start=page.first, count=page.count)
    return _show(ctx, st, screen, page.text)


def _pick(st: State, text: str) -> int | None:
    """The loan id a list number names, if it is on the page shown."""
    if not text.isdigit():
        return None
    n = int(text)
    d = st["d"]
    first = d.get("start", 0)
    if first < n <= first + d.get("count", 0) and n <= len(d.get("ids", [])):
        return d["ids"][n - 1]
    return None


def _list_input(ctx: Ctx, st: State, text: str, show: Callable[[Ctx, State, int], Reply],
                open_item: Callable[[Ctx, State, int], Reply]) -> Reply:
    d = st["d"]
    if text == BACK:
        return show_main(ctx, st)
    if text == MORE and d.get("start", 0) + d.get("count", 0) < len(d.get("ids", [])):
        return show(ctx, st, d["start"] + d["count"])
    loan_id = _pick(st, text)
    if loan_id is None:
        reply = show(ctx, st, d.get("start", 0))
        return Reply(clip(_t(ctx, st).get("choose_again") + "\n" + reply.text), reply.end)
    return open_item(ctx, st, loan_id)


def _state_word(t: Texts, state: str) -> str:
    return t.get(f"state_{state}")


# -- my loans --------------------------------------------------------------------------

def _show_loans(ctx: Ctx, st: State, start: int) -> Reply:
    t = _t(ctx, st)
    rows = lending.loans_of(ctx.conn, ctx.user.id, 0, LIST_CAP)
    if not rows:
        return show_main(ctx, st, prefix=t.get("no_loans"))
    items = []
    for n, r in enumerate(rows, 1):
        mine = r["borrower_id"] == ctx.user.id
        key = "loan_line_from" if mine else "loan_line_to"
        other = who(r["lender_name"], r["lender_msisdn"]) if mine else who(
            r["borrower_name"], r["borrower_msisdn"])
        items.append(clip(t.get(key, n=n, who=other[:12], amount=ksh(r["principal_cents"]),
                                state=_state_word(t, r["state"])), 60))
    return _page(ctx, st, "loans", t.get("loans_header"), items, [r["id"] for r in rows], start)


def _loans(ctx: Ctx, st: State, text: str) -> Reply:
    return _list_input(ctx, st, text, _show_loans, _show_loan)


def _show_loan(ctx: Ctx, st: State, loan_id: int) -> Reply:
    t = _t(ctx, st)
    r = lending.get_loan(ctx.conn, loan_id)
    mine = r["borrower_id"] == ctx.user.id
    other = who(r["lender_name"], r["lender_msisdn"]) if mine else who(
        r["borrower_name"], r["borrower_msisdn"])
    st["d"]["back_start"] = st["d"].get("start", 0)
    return _show(ctx, st, "loan", t.get(
        "loan_detail", ref=r["ref"], direction=t.get("direction_from" if mine else "direction_to"),
        who=other, amount=ksh(r["principal_cents"]), instalment=ksh(r["instalment_cents"]),
        owed=ksh(r["outstanding_cents"]), state=_state_word(t, r["state"])))


def _loan(ctx: Ctx, st: State, text: str) -> Reply:
    return _show_loans(ctx, st, st["d"].get("back_start", 0))


# -- approve or decline ----------------------------------------------------------------

def _show_approvals(ctx: Ctx, st: State, start: int) -> Reply:
    t = _t(ctx, st)
    rows = lending.requests_to(ctx.conn, ctx.user.id, ctx.now, 0, LIST_CAP)
    if not rows:
        return show_main(ctx, st, prefix=t.get("no_approvals"))
    items = [clip(t.get("approval_line", n=n, who=who(r["borrower_name"], r["borrower_msisdn"])[:14],
                        amount=ksh(r["principal_cents"])), 60) for n, r in enumerate(rows, 1)]
    return _page(ctx, st, "approvals", t.get("approvals_header"), items,
                 [r["id"] for r in rows], start)


def _approvals(ctx: Ctx, st: State, text: str) -> Reply:
    return _list_input(ctx, st, text, _show_approvals, _show_approval)


def _show_approval(ctx: Ctx, st: State, loan_id: int, prefix: str = "") -> Reply:
    t = _t(ctx, st)
    r = lending.get_loan(ctx.conn, loan_id)
    if r is None or r["lender_id"] != ctx.user.id:
        return show_main(ctx, st)
    if r["state"] != "requested" or r["expires_at"] <= ctx.now:
        state = r["state"] if r["state"] != "requested" else "expired"
        return show_main(ctx, st, prefix=t.get("request_gone", state=_state_word(t, state)))
    st["d"]["loan"] = loan_id
    st["d"]["back_start"] = st["d"].get("start", 0)
    return _show(ctx, st, "approval", t.get(
        "approval_detail", who=label(r["borrower_name"], r["borrower_msisdn"]),
        amount=ksh(r["principal_cents"]),
        instalment=ksh(r["instalment_cents"]), ref=r["ref"]), prefix=prefix)


def _approval(ctx: Ctx, st: State, text: str) -> Reply:
    t = _t(ctx, st)
    loan_id = st["d"]["loan"]
    if text == BACK:
        return _show_approvals(ctx, st, st["d"].get("back_start", 0))
    if text not in ("1", "2"):
        return _show_approval(ctx, st, loan_id, prefix=t.get("choose_again"))
    r = lending.get_loan(ctx.conn, loan_id)
    st["d"]["approve"] = text == "1"
    return _ask_answer_pin(ctx, st, r)


def _ask_answer_pin(ctx: Ctx, st: State, r: sqlite3.Row, prefix: str = "") -> Reply:
    t = _t(ctx, st)
    key = "ask_pin_approve" if st["d"]["approve"] else "ask_pin_decline"
    return _show(ctx, st, "answer_pin", t.get(
        key, amount=ksh(r["principal_cents"]), who=who(r["borrower_name"], r["borrower_msisdn"])),
        prefix=prefix)


def _answer_pin(ctx: Ctx, st: State, text: str) -> Reply:
    t = _t(ctx, st)
    loan_id = st["d"]["loan"]
    wrong = _apply_pin(ctx, st, ctx.user, lambda msg: _show(ctx, st, "answer_pin", msg))
    if wrong is not None:
        return wrong
    approve = st["d"]["approve"]
    try:
        loan, notices = lending.answer_request(ctx.conn, ctx.settings.site, loan_id, ctx.user.id,
                                               approve, ctx.now)
    except LendingError as e:
        state = e.params.get("state", "expired")
        return _end(ctx, st, t.get("request_gone", state=_state_word(t, state)
                                   if state in _STATES else state))
    ctx.notices += notices
    name = who(loan["borrower_name"], loan["borrower_msisdn"])
    if approve:
        return _end(ctx, st, t.get("approved", amount=ksh(loan["principal_cents"]), who=name))
    return _end(ctx, st, t.get("declined", who=name))


_STATES = ("requested", "approved", "funded", "active", "repaid", "declined", "expired", "failed")


# -- balance and transactions ----------------------------------------------------------

def _show_balance(ctx: Ctx, st: State) -> Reply:
    t = _t(ctx, st)
    b = lending.balance_of(ctx.conn, ctx.user.id, ctx.now)
    return _show(ctx, st, "balance", t.get(
        "balance", owe=ksh(b["owe"]), owed=ksh(b["owed"]), requests=b["requests"],
        requests_amount=ksh(b["requests_cents"]), actions=b["actions"],
        actions_amount=ksh(b["actions_cents"])))


def _back_home(ctx: Ctx, st: State, text: str) -> Reply:
    return show_main(ctx, st)


def _show_txns(ctx: Ctx, st: State, start: int) -> Reply:
    t = _t(ctx, st)
    rows = lending.postings_of(ctx.conn, ctx.user.id, 0, LIST_CAP)
    if not rows:
        return show_main(ctx, st, prefix=t.get("no_txns"))
    items = []
    for r in rows:
        key = f"txn_{r['kind']}"
        if key not in t.keys() and (t.fallback is None or key not in t.fallback.keys()):
            key = "txn_other"
        items.append(clip(t.get(key, date=short_date(r["at"]), amount=ksh(abs(r["amount_cents"])),
                                who=who(r["other_name"], r["other_msisdn"])[:12]), 60))
    return _page(ctx, st, "txns", t.get("txns_header"), items, [r["id"] for r in rows], start)


def _txns(ctx: Ctx, st: State, text: str) -> Reply:
    d = st["d"]
    if text == MORE and d.get("start", 0) + d.get("count", 0) < len(d.get("ids", [])):
        return _show_txns(ctx, st, d["start"] + d["count"])
    return show_main(ctx, st)


# -- repay -----------------------------------------------------------------------------

def _show_repayable(ctx: Ctx, st: State, start: int) -> Reply:
    t = _t(ctx, st)
    rows = lending.repayable(ctx.conn, ctx.user.id, 0, LIST_CAP)
    if not rows:
        return show_main(ctx, st, prefix=t.get("no_repayable"))
    items = [clip(t.get("repay_line", n=n, who=who(r["lender_name"], r["lender_msisdn"])[:12],
                        owed=ksh(r["outstanding_cents"])), 60) for n, r in enumerate(rows, 1)]
    return _page(ctx, st, "repay_list", t.get("repay_header"), items, [r["id"] for r in rows], start)


def _repay_list(ctx: Ctx, st: State, text: str) -> Reply:
    return _list_input(ctx, st, text, _show_repayable, _show_repay_choice)


def _show_repay_choice(ctx: Ctx, st: State, loan_id: int, prefix: str = "") -> Reply:
    t = _t(ctx, st)
    r = lending.get_loan(ctx.conn, loan_id)
    room = r["outstanding_cents"] - r["repaying_cents"]
    if r["state"] != "active" or room <= 0:
        return show_main(ctx, st, prefix=t.get("repay_nothing_left"))
    st["d"].update(loan=loan_id, room=room, instalment=min(r["instalment_cents"], room),
                   who=who(r["lender_name"], r["lender_msisdn"]))
    st["d"]["back_start"] = st["d"].get("start", 0)
    return _show(ctx, st, "repay_choice", t.get(
        "repay_choice", who=st["d"]["who"], owed=ksh(r["outstanding_cents"]),
        instalment=ksh(st["d"]["instalment"])), prefix=prefix)


def _repay_choice(ctx: Ctx, st: State, text: str) -> Reply:
    t = _t(ctx, st)
    d = st["d"]
    if text == BACK:
        return _show_repayable(ctx, st, d.get("back_start", 0))
    if text == "1":
        d["amount"] = d["instalment"]
        return _ask_repay_pin(ctx, st)
    if text == "2":
        return _show(ctx, st, "repay_amount", t.get("ask_repay_amount",
                                                    max=f"{d['room'] // 100:,}"))
    return _show_repay_choice(ctx, st, d["loan"], prefix=t.get("choose_again"))


def _repay_amount(ctx: Ctx, st: State, text: str) -> Reply:
    t = _t(ctx, st)
    d = st["d"]
    cents, err, params = parse_amount(text, 100, d["room"])
    if cents is None:
        return _show(ctx, st, "repay_amount", t.get("ask_repay_amount", max=f"{d['room'] // 100:,}"),
                     prefix=t.get(err, **params))
    d["amount"] = cents
    return _ask_repay_pin(ctx, st)


def _ask_repay_pin(ctx: Ctx, st: State, prefix: str = "") -> Reply:
    d = st["d"]
    return _show(ctx, st, "repay_pin", _t(ctx, st).get("ask_pin_repay", amount=ksh(d["amount"]),
                                                       who=d["who"]), prefix=prefix)


def _repay_pin(ctx: Ctx, st: State, text: str) -> Reply:
    t = _t(ctx, st)
    d = st["d"]
    wrong = _apply_pin(ctx, st, ctx.user, lambda msg: _show(ctx, st, "repay_pin", msg))
    if wrong is not None:
        return wrong
    try:
        lending.start_repayment(ctx.conn, ctx.settings.site, d["loan"], ctx.user.id, d["amount"],
                                ctx.now)
    except LendingError:
        return _end(ctx, st, t.get("repay_nothing_left"))
    return _end(ctx, st, t.get("repay_started", amount=ksh(d["amount"])))


# -- my account ------------------------------------------------------------------------

def _show_account(ctx: Ctx, st: State, prefix: str = "") -> Reply:
    return _show(ctx, st, "account", _t(ctx, st).get("account_menu", name=ctx.user.name),
                 prefix=prefix)


def _account(ctx: Ctx, st: State, text: str) -> Reply:
    t = _t(ctx, st)
    if text == "1":
        return _show(ctx, st, "account_lang", t.get("language_menu"))
    if text == "2":
        return _show(ctx, st, "pin_old", t.get("ask_old_pin"))
    if text == BACK:
        return show_main(ctx, st)
    return _show_account(ctx, st, prefix=t.get("choose_again"))


def _account_lang(ctx: Ctx, st: State, text: str) -> Reply:
    if text in ("1", "2"):
        st["lang"] = "en" if text == "1" else "sw"
        lending.set_language(ctx.conn, ctx.user.id, st["lang"], ctx.now)
        ctx.reload_user()
        return _show_account(ctx, st, prefix=_t(ctx, st).get("language_set").strip())
    if text == BACK:
        return _show_account(ctx, st)
    return _show(ctx, st, "account_lang", _t(ctx, st).get("language_menu"),
                 prefix=_t(ctx, st).get("choose_again"))


def _pin_old(ctx: Ctx, st: State, text: str) -> Reply:
    wrong = _apply_pin(ctx, st, ctx.user, lambda msg: _show(ctx, st, "pin_old", msg))
    if wrong is not None:
        return wrong
    return _show(ctx, st, "pin_new", _t(ctx, st).get("ask_new_pin_change"))


def _pin_new(ctx: Ctx, st: State, text: str) -> Reply:
    return _new_pin(ctx, st, "pin_new", "pin_new2")


def _pin_new2(ctx: Ctx, st: State, text: str) -> Reply:
    t = _t(ctx, st)
    pin_hash = st["d"].pop("pin_hash", None)
    if not (ctx.pin and ctx.pin.shape_ok and ctx.pin.match and pin_hash):
        return _show(ctx, st, "pin_new", t.get("pin_mismatch"))
    lending.set_pin(ctx.conn, ctx.user.id, pin_hash, ctx.now)
    return _end(ctx, st, t.get("pin_changed"))


def _ended(ctx: Ctx, st: State, text: str) -> Reply:
    return start(ctx)[0]


_HANDLERS: dict[str, Callable[[Ctx, State, str], Reply]] = {
    "reg_lang": _reg_lang, "reg_name": _reg_name, "reg_pin": _reg_pin, "reg_pin2": _reg_pin2,
    "main": _main,
    "req_lender": _req_lender, "req_amount": _req_amount, "req_instalment": _req_instalment,
    "req_confirm": _req_confirm,
    "loans": _loans, "loan": _loan,
    "approvals": _approvals, "approval": _approval, "answer_pin": _answer_pin,
    "balance": _back_home, "txns": _txns,
    "repay_list": _repay_list, "repay_choice": _repay_choice, "repay_amount": _repay_amount,
    "repay_pin": _repay_pin,
    "account": _account, "account_lang": _account_lang, "pin_old": _pin_old,
    "pin_new": _pin_new, "pin_new2": _pin_new2,
    "ended": _ended,
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


def _sms_params(p: dict[str, Any]) -> dict[str, Any]:
    out = dict(p)
    for k in ("amount", "instalment", "paid", "balance"):
        if k in out and isinstance(out[k], int):
            out[k] = ksh(out[k])
    for role in ("borrower", "lender"):
        if role in out:
            out[f"{role}_name"] = who(out.get(f"{role}_name"), out[role])
            out[role] = phone.local(out[role])
    return out
