"""Every screen of every locale fits 182 GSM-7 characters (a test walks them all).

Three layers: each text alone with the longest values the configuration allows; the
combinations the menus put on one screen (an error line above a prompt, a notice above
the main menu, "choose again" above a full list page); and a walk of the real state
machine through every screen in `menus.lending._HANDLERS`, in both languages.
"""

from __future__ import annotations

import inspect
import re
import sqlite3
from collections.abc import Callable

import pytest

from menus import account, gsm0338, loans, money
from menus import lending as app
from menus.screens import SCREEN_LIMIT, Reply, clip, length, paginate
from menus.texts import LANGUAGES, Texts, ksh, load_all, load_table, placeholders
from store import lending
from tests.test_menus_lending import Phone, World, request

TEXTS = load_all()
SMS_PART = 160
SMS_TWO_PARTS = 306  # 2 x 153 septets once the text is concatenated

# The longest values the configuration and the data allow (gatewayd/config.py):
SERVICE = "Mkopo wa Jirani Yetu"         # lending.service_name: at most 20 characters
NAME = "Wanjiku Nyambura Abc"            # clean_name(): at most 20
PHONE = "0712345678"
LABEL = f"{NAME} {PHONE}"                # label(): a name and a number
BIG = ksh(250_000_00)                    # lending.max_amount: at most 250,000 (M-PESA)
TOTAL = ksh(9_999_999_00)                # sums over many loans (balance screen)
CODE = "*483*123#"
REASON = "The balance is insufficient for the transaction."  # an M-PESA ResultDesc
RECEIPT = "QKJ1ABCDE2"
assert len(SERVICE) == 20 and len(NAME) == 20 and app.clean_name(NAME) == NAME


def worst(t: Texts) -> dict[str, object]:
    def longest(prefix: str) -> str:
        return max((t.get(k) for k in t.keys() if k.startswith(prefix)), key=length)
    return {
        "service": SERVICE, "name": NAME, "borrower_name": NAME, "lender_name": NAME,
        "who": LABEL, "lender": LABEL, "borrower": PHONE,
        "amount": BIG, "instalment": BIG, "paid": BIG, "balance": BIG, "received": BIG,
        "owe": TOTAL, "owed": TOTAL, "requests_amount": TOTAL, "actions_amount": TOTAL,
        "min": "250,000", "max": "250,000",
        "n": app.LIST_CAP, "count": 99, "requests": 999, "actions": 999,
        "limit": 50,            # lending.max_open_requests <= 50
        "attempts": 10, "tries": 9,  # security.pin_attempts <= 10
        "minutes": 10080,       # security.pin_lock_minutes <= a week
        "date": "28/11", "ref": "ABCDEF", "code": CODE, "reason": REASON, "receipt": RECEIPT,
        "state": longest("state_"), "direction": longest("direction_"),
        "waiting": t.get("waiting_count", count=99),
    }


def every_key() -> list[tuple[str, str]]:
    return [(lang, key) for lang in LANGUAGES for key in sorted(TEXTS[lang].keys())]


# -- the tables ------------------------------------------------------------------------

def test_locales_have_the_same_keys_and_placeholders():
    en, sw = load_table("en"), load_table("sw")
    assert set(en) - set(sw) == set(), "missing in sw.toml"
    assert set(sw) - set(en) == set(), "only in sw.toml"
    differ = {k: (placeholders(en[k]), placeholders(sw[k]))
              for k in en if placeholders(en[k]) != placeholders(sw[k])}
    assert differ == {}


def test_worst_case_values_cover_every_placeholder():
    used = set().union(*(placeholders(v) for lang in LANGUAGES
                         for v in load_table(lang).values()))
    assert used - set(worst(TEXTS["en"])) == set()


@pytest.mark.parametrize("lang,key", every_key())
def test_text_is_gsm7(lang, key):
    template = TEXTS[lang].table[key]
    assert gsm0338.is_gsm7(template), [c for c in template if not gsm0338.is_gsm7(c)]
    assert gsm0338.is_gsm7(TEXTS[lang].get(key, **worst(TEXTS[lang])))


@pytest.mark.parametrize("lang,key", [(lang, k) for lang, k in every_key()
                                      if not k.startswith("sms_")])
def test_screen_text_fits_with_worst_case_values(lang, key):
    text = TEXTS[lang].get(key, **worst(TEXTS[lang]))
    assert length(text) <= SCREEN_LIMIT, f"{length(text)} septets: {text!r}"


@pytest.mark.parametrize("lang,key", [(lang, k) for lang, k in every_key()
                                      if k.startswith("sms_")])
def test_sms_fits_two_parts_with_worst_case_values(lang, key):
    text = TEXTS[lang].get(key, **worst(TEXTS[lang]))
    assert length(text) <= SMS_TWO_PARTS, f"{length(text)} septets: {text!r}"


def test_sms_length_report():
    """Only SMS that quote an M-PESA reason (capped at REASON_CHARS) may take two parts."""
    rows = []
    for lang, key in every_key():
        if key.startswith("sms_"):
            n = length(TEXTS[lang].get(key, **worst(TEXTS[lang])))
            rows.append((n, lang, key))
    assert [key for n, _, key in rows if n > SMS_PART] in ([], ["sms_funding_failed_lender"])
    assert all(n <= SMS_TWO_PARTS for n, _, _ in rows)
    # With ordinary values the common ones still fit one part.
    t = TEXTS["en"]
    assert length(t.get("sms_loan_approved", lender_name="Peter", amount="Ksh 500",
                        ref="ABCDEF")) <= SMS_PART


# -- what the menus put together on one screen ----------------------------------------

# Every screen module of the lending service, read as source.
_MENU_SOURCE = "\n".join(inspect.getsource(m) for m in (app, account, loans, money))
MAIN_MENU_NOTICES = sorted(set(re.findall(r'show_main\(ctx, st, prefix=t\.get\("(\w+)"',
                                           _MENU_SOURCE)))


def test_main_menu_notices_found():
    assert {"registered", "choose_again", "no_loans", "request_gone"} <= set(MAIN_MENU_NOTICES)


def _main(t: Texts, waiting: int | None = 99) -> str:
    return t.get("main_menu", service=SERVICE,
                 waiting=t.get("waiting_count", count=waiting) if waiting else "")


def _full_page(t: Texts, header: str, line: Callable[[int], str]) -> str:
    items = [clip(line(n), 60) for n in range(1, app.LIST_CAP + 1)]
    return paginate(header, items, 0, t.get("more"), t.get("back")).text


def combos(t: Texts) -> dict[str, str]:
    W = worst(t)
    main = _main(t)
    out: dict[str, str] = {}
    # Notices shown above the main menu: every show_main(ctx, st, prefix=t.get(KEY...))
    # in menus/lending.py.
    for key in MAIN_MENU_NOTICES:
        if key == "request_gone":
            for s in app.LOAN_STATES:
                out[f"request_gone({s}) + main_menu"] = (
                    t.get("request_gone", state=t.get(f"state_{s}")) + "\n" + main)
        else:
            out[f"{key} + main_menu"] = t.get(key, **W) + "\n" + main
    # Errors above an amount prompt.
    for err in ("amount_not_number", "amount_whole", "amount_too_small", "amount_too_large"):
        for prompt in ("ask_amount", "ask_instalment", "ask_repay_amount"):
            out[f"{err} + {prompt}"] = t.get(err, **W) + "\n" + t.get(prompt, **W)
    # "Choose again" above a screen.
    for key in ("confirm_request", "approval_detail", "repay_choice", "account_menu",
                "language_menu"):
        out[f"choose_again + {key}"] = t.get("choose_again") + "\n" + t.get(key, **W)
    out["language_set + account_menu"] = t.get("language_set").strip() + "\n" + t.get(
        "account_menu", name=NAME)
    # "Choose again" above a list page the pager filled with the longest lines.
    w12, w14 = NAME[:12], NAME[:14]
    pages = {
        "loans": _full_page(t, t.get("loans_header"), lambda n: t.get(
            "loan_line_from", n=n, who=w12, amount=BIG, state=W["state"])),
        "approvals": _full_page(t, t.get("approvals_header"), lambda n: t.get(
            "approval_line", n=n, who=w14, amount=BIG)),
        "repay_list": _full_page(t, t.get("repay_header"), lambda n: t.get(
            "repay_line", n=n, who=w12, owed=BIG)),
    }
    # ("Choose again" above such a page is checked by the walk below: how the menus
    # make room for it is theirs to choose.)
    for name, page in pages.items():
        out[f"{name} page"] = page
    return out


COMBOS = [(lang, name) for lang in LANGUAGES for name in combos(TEXTS[lang])]


@pytest.mark.parametrize("lang,combo", COMBOS)
def test_screen_combination_fits(lang, combo):
    text = combos(TEXTS[lang])[combo]
    assert gsm0338.is_gsm7(text)
    assert length(text) <= SCREEN_LIMIT, f"{length(text)} septets: {text!r}"


# -- the real state machine, every screen, both languages -----------------------------

A, B, C, D = "254712345678", "254722000111", "254733000222", "254744000333"
NAMES = {A: NAME, B: "Barasa Omondi Kipkem", C: "Chepkoech Atieno Xyz",
         D: "Daudi Mwangi Kariuki"}
assert all(len(n) == 20 for n in NAMES.values())


class WalkPhone(Phone):
    """A Phone that notes which handler each input went to and every screen it got."""

    def send(self, text: str) -> Reply:
        handler = self.screen
        reply = super().send(text)
        self.w.log.append((self.msisdn, handler, text, reply))  # type: ignore[attr-defined]
        return reply

    def dial(self) -> Reply:
        reply = super().dial()
        self.w.log.append((self.msisdn, "<dial>", "", reply))  # type: ignore[attr-defined]
        return reply

    def first_on_page(self) -> str:
        return str(self.state["d"]["start"] + 1)


def _walk(conn: sqlite3.Connection, lang: str) -> World:
    settings = app.Settings(site="walk", service=SERVICE, max_cents=250_000_00)
    w = World(conn, settings, TEXTS)
    w.log = []  # type: ignore[attr-defined]
    t = TEXTS[lang]
    choice = "1" if lang == "en" else "2"
    other_choice = "2" if lang == "en" else "1"

    def txn_call(fn, *args):
        with w.txn():
            return fn(w.conn, *args)

    # Registration, with a mistake on every screen.
    a = WalkPhone(w, A)
    a.dial()
    a.walk("9", choice, "J0", NAMES[A], "12", "1234", "4826", "4862", "4826", "4826")
    assert a.screen == "main", a.last
    others = {}
    for m in (B, C, D):
        p = WalkPhone(w, m)
        p.dial()
        p.walk(choice, NAMES[m], "2580", "2580")
        assert p.screen == "main"
        others[m] = p
    b, c, d = others[B], others[C], others[D]
    # Ten requests waiting for A (a two-digit count on A's main menu).
    for p in (b, c):
        for _ in range(5):
            request(w, p, "0712345678", "250000", "250000")
    # A borrows from B (active) and asks C (waiting).
    request(w, a, "0722000111", "250000", "250000")
    (from_b,) = w.loans_between(A, B)
    with w.txn():
        lending.answer_request(w.conn, settings.site, from_b["id"], w.user(B).id, True, w.now)
    w.fund(from_b["id"])
    request(w, a, "0733000222", "250000", "100000")

    # Main menu and a loan request with every mistake.
    a.dial()
    a.send("8")
    a.send("1")
    a.walk("0812345678", "0712345678", "0722000111",
           "abc", "0", "5.5", "250001", "250000",
           "x", "0", "250001", "1.5", "250000",
           "5", "0")
    assert a.last.end

    # My loans: wrong choice, next page, a loan, back.
    a.dial()
    a.walk("2", "77", "98")
    a.send(a.first_on_page())
    assert a.screen == "loan"
    a.walk("1", "0")

    # Approvals: wrong choice, next page, wrong choice on a request, approve after a
    # wrong PIN.
    a.walk("3", "77", "98")
    n = a.first_on_page()
    a.walk(n, "5", "0", n, "1", "0000", "4826")
    assert a.last.end
    (funding,) = w.all("SELECT loan_id FROM mpesa_actions WHERE purpose = 'loan_funding' "
                       "AND msisdn = ?", A)
    w.fund(funding["loan_id"])
    # Decline one.
    a.dial()
    a.walk("3", "1", "2", "4826")
    assert a.last.end
    # A request answered on another dialog while this one shows it.
    a.dial()
    a.send("3")
    elsewhere = WalkPhone(w, A)
    elsewhere.dial()
    elsewhere.walk("3", "1", "2", "4826")
    a.send("1")                      # request_gone above the main menu
    assert a.screen == "main" and a.last.text.startswith(t.get("request_gone", state="")[:12])
    a.walk("3", "1", "1")
    elsewhere.dial()
    elsewhere.walk("3", "1", "2", "4826")
    a.send("4826")                   # request_gone, END
    assert a.last.end and a.last.text.startswith(t.get("request_gone", state="")[:12])

    # Balance and transactions (a few repayments make two pages).
    for i in range(6):
        _, key = txn_call(lending.start_repayment, settings.site, from_b["id"],
                          w.user(A).id, 1000_00, w.now)
        w.settle(key, True, receipt=f"QKR{i:07d}")
    a.dial()
    a.walk("4", "0", "5", "98", "0")

    # Repay: wrong choices, every amount mistake, a wrong PIN.
    a.walk("6", "77", "1", "9", "2", "abc", "0", "250001", "1.5", "100", "0000", "4826")
    assert a.last.end
    a.dial()
    a.walk("6", "1", "1", "00")
    # Started payments now cover the loan.
    room = w.loan(from_b["id"])["outstanding_cents"] - w.loan(from_b["id"])["repaying_cents"]
    txn_call(lending.start_repayment, settings.site, from_b["id"], w.user(A).id, room, w.now)
    a.walk("6", "1")                 # repay_nothing_left (above the main menu)
    assert t.get("repay_nothing_left") in a.last.text

    # My account: both languages, change PIN with every mistake.
    a.dial()
    a.walk("7", "9", "1", "9", "0", "1", other_choice, "1", choice,
           "2", "0000", "4826", "1234", "12", "5739", "5793", "5739", "5739")
    assert a.last.end
    # An input on an ended dialog's state.
    a.state, a.last = {"s": "ended", "lang": lang, "d": {}}, Reply("", False)
    a.send("1")

    # Too many requests waiting.
    for i in range(4):
        borrower = w.user(A)
        txn_call(lending.request_loan, borrower, f"2547990000{i:02d}", 100_00, 100_00, w.now,
                 settings.request_ttl, settings.max_open_requests)
    a.dial()
    a.send("1")
    assert a.last.text.startswith(t.get("too_many_requests", limit=5))

    # A villager with nothing yet.
    d.dial()
    d.walk("2", "3", "5", "6", "4", "0", "0")
    assert d.last.end

    # Locked.
    a.dial()
    a.walk("7", "2", "0000", "1111", "2222")
    assert a.last.end
    a.dial()
    assert a.last.end
    return w


@pytest.mark.parametrize("lang", LANGUAGES)
def test_walk_every_screen_in_both_languages(conn, lang):
    w = _walk(conn, lang)
    log = w.log  # type: ignore[attr-defined]
    handled = {handler for _, handler, _, _ in log}
    assert set(app._HANDLERS) - handled == set(), "screens the walk did not reach"

    t = TEXTS[lang]
    # The walk stayed in its language (the other one only right after switching).
    switched = t.get("language_set").strip()
    other = TEXTS["sw" if lang == "en" else "en"].get("language_set").strip()
    assert any(r.text.startswith(other) for _, _, _, r in log)
    assert any(r.text.startswith(switched) for _, _, _, r in log)

    problems = []
    for msisdn, handler, text, reply in log:
        n = length(reply.text)
        if n > SCREEN_LIMIT or ".." in reply.text or not gsm0338.is_gsm7(reply.text):
            problems.append(f"{handler!r} <- {text!r}: {n} septets, {reply.text!r}")
    assert problems == [], "\n".join(["screens clipped or too long:"] + problems)


@pytest.mark.parametrize("lang", LANGUAGES)
def test_walk_sms_fit_two_parts(conn, lang):
    w = _walk(conn, lang)
    bodies = [r["body"] for r in w.all("SELECT body FROM sms_outbox")]
    assert len(bodies) > 20
    for body in bodies:
        assert gsm0338.is_gsm7(body), body
        assert length(body) <= SMS_TWO_PARTS, body
