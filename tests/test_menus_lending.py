"""The lending menus end to end at the core: real migrated SQLite, real texts, real PIN
hashing (cheap parameters), driven the way gatewayd/ussd.py drives them."""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
from dataclasses import dataclass, field
from typing import Any

import pytest

from menus import gsm0338, screens
from menus import lending as app
from menus.screens import SCREEN_LIMIT, Reply
from menus.texts import Texts, short_date
from store import lending, pins, settlement

KEY = bytes(range(32))
LOG2_N = 10
T0 = 1_764_300_000.0  # late November 2025

# -- the driver ----------------------------------------------------------------------

@dataclass
class World:
    conn: sqlite3.Connection
    settings: app.Settings
    texts: dict[str, Texts]
    now: float = T0
    replies: list[Reply] = field(default_factory=list)

    @property
    def en(self) -> Texts:
        return self.texts["en"]

    @property
    def sw(self) -> Texts:
        return self.texts["sw"]

    @contextlib.contextmanager
    def txn(self):
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def phone(self, msisdn: str) -> "Phone":
        return Phone(self, msisdn)

    def register(self, msisdn: str, name: str, lang: str = "en", pin: str = "2580") -> "Phone":
        p = self.phone(msisdn)
        p.dial()
        p.send("1" if lang == "en" else "2")
        p.send(name)
        p.send(pin)
        r = p.send(pin)
        assert p.screen == "main", r.text
        return p

    # -- store look-ups -------------------------------------------------------------
    def one(self, sql: str, *args: Any) -> Any:
        return self.conn.execute(sql, args).fetchone()

    def all(self, sql: str, *args: Any) -> list[sqlite3.Row]:
        return self.conn.execute(sql, args).fetchall()

    def counts(self) -> dict[str, int]:
        return {t: self.one(f"SELECT COUNT(*) FROM {t}")[0] for t in (
            "users", "loans", "sms_outbox", "mpesa_actions", "change_log", "ledger_txns",
            "ledger_postings")}

    def user(self, msisdn: str) -> lending.User:
        u = lending.get_user(self.conn, msisdn)
        assert u is not None
        return u

    def loan(self, loan_id: int) -> sqlite3.Row:
        return lending.get_loan(self.conn, loan_id)

    def loans_between(self, borrower: str, lender: str) -> list[sqlite3.Row]:
        return self.all(
            "SELECT l.* FROM loans l JOIN users b ON b.id = l.borrower_id "
            "JOIN users k ON k.id = l.lender_id WHERE b.msisdn = ? AND k.msisdn = ? "
            "ORDER BY l.id", borrower, lender)

    def sms_to(self, msisdn: str) -> list[str]:
        return [r["body"] for r in self.all(
            "SELECT body FROM sms_outbox WHERE msisdn = ? ORDER BY id", msisdn)]

    def actions(self, loan_id: int, purpose: str | None = None) -> list[sqlite3.Row]:
        sql = "SELECT * FROM mpesa_actions WHERE loan_id = ?"
        args: list[Any] = [loan_id]
        if purpose:
            sql += " AND purpose = ?"
            args.append(purpose)
        return self.all(sql + " ORDER BY id", *args)

    def changes_since(self, seq: int) -> list[sqlite3.Row]:
        return self.all("SELECT * FROM change_log WHERE seq > ? ORDER BY seq", seq)

    def last_seq(self) -> int:
        return self.one("SELECT COALESCE(MAX(seq), 0) FROM change_log")[0]

    # -- M-PESA results, as the dispatcher applies them -------------------------------
    def settle(self, key: str, ok: bool, receipt: str | None = None,
               desc: str | None = None) -> tuple[bool, list[lending.Notice]]:
        with self.txn():
            applied, notices = settlement.apply_mpesa_result(
                self.conn, self.settings.site, key, ok, self.now, receipt=receipt,
                result_desc=desc)
            ctx = app.Ctx(conn=self.conn, msisdn="", now=self.now, settings=self.settings,
                          texts=self.texts)
            app.queue_notices(ctx, notices)
        return applied, notices

    def sweep(self) -> int:
        """What UssdService.sweep does for loans: expire unanswered requests, with SMS."""
        with self.txn():
            notices = lending.expire_requests(self.conn, self.now)
            ctx = app.Ctx(conn=self.conn, msisdn="", now=self.now, settings=self.settings,
                          texts=self.texts)
            app.queue_notices(ctx, notices)
        return len(notices)

    def fund(self, loan_id: int) -> None:
        """Lender pays the STK push, then the B2C payout to the borrower succeeds."""
        (funding,) = self.actions(loan_id, "loan_funding")
        assert self.settle(funding["key"], True, receipt=f"RF{loan_id:08d}")[0]
        (payout,) = self.actions(loan_id, "loan_payout")
        assert self.settle(payout["key"], True, receipt=f"RP{loan_id:08d}")[0]
        assert self.loan(loan_id)["state"] == "active"


class Phone:
    """One villager's handset: what UssdService._dialog_hop/_pin_result/_step_job do."""

    def __init__(self, world: World, msisdn: str) -> None:
        self.w = world
        self.msisdn = msisdn
        self.state: dict[str, Any] = {}
        self.last: Reply | None = None

    @property
    def screen(self) -> str:
        return self.state.get("s", "")

    def _ctx(self, pin: app.PinResult | None = None) -> app.Ctx:
        return app.Ctx(conn=self.w.conn, msisdn=self.msisdn, now=self.w.now,
                       settings=self.w.settings, texts=self.w.texts, pin=pin)

    def _record(self, reply: Reply) -> Reply:
        assert isinstance(reply, Reply)
        assert screens.length(reply.text) <= SCREEN_LIMIT, reply.text
        self.w.replies.append(reply)
        self.last = reply
        return reply

    def dial(self) -> Reply:
        with self.w.txn():
            ctx = self._ctx()
            reply, self.state = app.start(ctx)
            app.queue_notices(ctx, ctx.notices)
        json.dumps(self.state)  # the dialog state is persisted as JSON
        return self._record(reply)

    def send(self, text: str) -> Reply:
        assert self.last is not None and not self.last.end, "the dialog has ended; dial again"
        work = app.pin_work(self.state)
        pin = None
        if work is not app.PinWork.NONE:
            stored = (lending.pin_hash_of(self.w.conn, self.msisdn)
                      if work is app.PinWork.ACCOUNT else None)
            pin = app.do_pin_work(work, text, KEY, LOG2_N, stored,
                                  app.pending_pin_hash(self.state))
        with self.w.txn():
            ctx = self._ctx(pin)
            reply, self.state = app.step(ctx, self.state, text)
            app.queue_notices(ctx, ctx.notices)
        json.dumps(self.state)
        return self._record(reply)

    def walk(self, *inputs: str) -> Reply:
        reply = self.last
        for text in inputs:
            reply = self.send(text)
        assert reply is not None
        return reply


@pytest.fixture
def w(conn, settings, texts) -> World:
    return World(conn, settings, texts)


BORROWER = "254712345678"
LENDER = "254722000111"
OTHER = "254733000222"


def main_menu(t: Texts, settings: app.Settings, waiting: int = 0) -> str:
    return t.get("main_menu", service=settings.service,
                 waiting=t.get("waiting_count", count=waiting) if waiting else "")


def request(w: World, p: Phone, lender: str, amount: str, instalment: str) -> Reply:
    """From the main menu of `p` through a confirmed loan request."""
    p.dial()
    r = p.walk("1", lender, amount, instalment)
    assert p.screen == "req_confirm", r.text
    return p.send("1")


def page_items(text: str) -> list[str]:
    """The numbered list lines of a paged screen (not 98 More / 0 Back)."""
    return [ln for ln in text.split("\n")[1:] if re.match(r"\d+ ", ln)
            and not ln.startswith(("98 ", "0 "))]


# -- registration --------------------------------------------------------------------

def test_first_dial_registration_with_every_kind_of_mistake(w):
    en = w.en
    p = w.phone(BORROWER)
    r = p.dial()
    assert not r.end and p.screen == "reg_lang"
    assert r.text == en.get("choose_language", service=w.settings.service)

    for bad in ("3", "", "english", "00"):
        r = p.send(bad)
        assert (r.text, r.end, p.screen) == (en.get("choose_language_again"), False, "reg_lang")
    r = p.send("1")
    assert (r.text, p.screen) == (en.get("ask_name"), "reg_name")

    for bad in ("A", "X" * 21, "J0hn", "Mary 2", "***", "#", "😀 Smile", "  ", "--",
                "Mary*Jane", "Mary#"):
        r = p.send(bad)
        assert (r.text, r.end, p.screen) == (en.get("bad_name"), False, "reg_name"), bad
    r = p.send("  Mary   Wanjiru’s  ")
    assert (r.text, p.screen) == (en.get("ask_new_pin"), "reg_pin")
    assert p.state["d"]["name"] == "Mary Wanjiru's"

    for bad in ("12", "12345", "12a4", "", "abcd", "١٢٣٤"):
        r = p.send(bad)
        assert (r.text, r.end, p.screen) == (en.get("bad_pin_shape"), False, "reg_pin"), bad
    for weak in ("1234", "1111", "4321", "0000"):
        r = p.send(weak)
        assert (r.text, r.end, p.screen) == (en.get("weak_pin"), False, "reg_pin"), weak
    r = p.send("2580")
    assert (r.text, p.screen) == (en.get("ask_pin_again"), "reg_pin2")
    assert "2580" not in json.dumps(p.state)  # only the hash is held in the dialog
    r = p.send("2581")
    assert (r.text, r.end, p.screen) == (en.get("pin_mismatch"), False, "reg_pin")
    assert lending.get_user(w.conn, BORROWER) is None

    seq = w.last_seq()
    p.send("4826")
    r = p.send("4826")
    assert not r.end and p.screen == "main"
    assert r.text == (en.get("registered", name="Mary Wanjiru's") + "\n"
                      + main_menu(en, w.settings))

    u = w.user(BORROWER)
    assert (u.name, u.lang, u.registered, u.pin_failures) == ("Mary Wanjiru's", "en", True, 0)
    assert pins.verify_pin("4826", u.pin_hash, KEY)
    assert not pins.verify_pin("2580", u.pin_hash, KEY)
    changes = w.changes_since(seq)
    assert [(c["entity"], c["entity_key"]) for c in changes] == [("user", BORROWER)] * 2
    assert [c["op"] for c in changes] == ["invited", "registered"]
    for c in changes:
        assert "pin" not in c["payload"] and u.pin_hash not in c["payload"]


def test_mismatch_on_confirmation_with_bad_shape(w):
    p = w.phone(BORROWER)
    p.dial()
    p.walk("1", "Mary", "4826")
    r = p.send("48")
    assert (r.text, p.screen) == (w.en.get("pin_mismatch"), "reg_pin")
    assert lending.get_user(w.conn, BORROWER) is None


def test_registration_in_kiswahili(w):
    sw = w.sw
    p = w.phone(BORROWER)
    p.dial()
    r = p.send("2")
    assert r.text == sw.get("ask_name")
    assert p.send("A").text == sw.get("bad_name")
    assert p.send("Juma Hamisi").text == sw.get("ask_new_pin")
    assert p.send("1234").text == sw.get("weak_pin")
    assert p.send("123").text == sw.get("bad_pin_shape")
    assert p.send("4826").text == sw.get("ask_pin_again")
    assert p.send("4827").text == sw.get("pin_mismatch")
    p.send("4826")
    r = p.send("4826")
    assert r.text == sw.get("registered", name="Juma Hamisi") + "\n" + main_menu(sw, w.settings)
    assert w.user(BORROWER).lang == "sw"
    # The next dial goes straight to the Kiswahili main menu.
    assert p.dial().text == main_menu(sw, w.settings)


def test_unregistered_caller_on_a_menu_state_is_sent_to_registration(w):
    p = w.phone(BORROWER)
    p.state = {"s": "main", "lang": "en", "d": {}}
    p.last = Reply("", False)
    r = p.send("1")
    assert p.screen == "reg_lang" and r.text.startswith("Welcome to")


def test_unknown_screen_from_an_older_release_goes_home(w):
    p = w.register(BORROWER, "Mary")
    p.state = {"s": "no_such_screen", "lang": "en", "d": {"x": 1}}
    r = p.send("1")
    assert (r.text, p.screen) == (main_menu(w.en, w.settings), "main")


# -- request a loan ------------------------------------------------------------------

BAD_LENDER_NUMBERS = [
    "0812345678", "071234567", "07123456789", "0722 000 11", "254822000111",
    "+255722000111", "abc", "", "+1 202 555 0100", "٠٧٢٢٠٠٠١١١", "0722000111x",
    "22000111", "0", "*", "0722*000111",
]


def test_request_loan_bad_phone_numbers_each_get_a_retry(w):
    p = w.register(BORROWER, "Mary")
    assert p.send("1").text == w.en.get("ask_lender")
    for bad in BAD_LENDER_NUMBERS:
        r = p.send(bad)
        assert (r.text, r.end, p.screen) == (w.en.get("bad_phone"), False, "req_lender"), bad
    for me in ("0712345678", "+254712345678", "254712345678", "712345678", "0712 345 678"):
        r = p.send(me)
        assert (r.text, r.end, p.screen) == (w.en.get("self_lender"), False, "req_lender"), me
    r = p.send("0722-000-111")
    assert p.screen == "req_amount"
    assert r.text == w.en.get("ask_amount", min="10", max="70,000")
    assert p.state["d"]["lender"] == LENDER
    assert w.counts()["loans"] == 0


@pytest.mark.parametrize("text,err,params", [
    ("abc", "amount_not_number", {}),
    ("", "amount_not_number", {}),
    ("-500", "amount_not_number", {}),
    ("5OO", "amount_not_number", {}),
    ("0", "amount_too_small", {"min": "10"}),
    ("9", "amount_too_small", {"min": "10"}),
    ("500.50", "amount_whole", {}),
    ("99.9", "amount_whole", {}),
    ("70001", "amount_too_large", {"max": "70,000"}),
    ("1000000", "amount_too_large", {"max": "70,000"}),
    ("12345678901234567890", "amount_too_large", {"max": "70,000"}),
])
def test_request_loan_bad_amounts_each_get_a_retry(w, text, err, params):
    en = w.en
    p = w.register(BORROWER, "Mary")
    p.walk("1", "0722000111")
    r = p.send(text)
    assert not r.end and p.screen == "req_amount"
    assert r.text == en.get(err, **params) + "\n" + en.get("ask_amount", min="10", max="70,000")
    # ... and the retry still works.
    r = p.send("1,500")
    assert p.screen == "req_instalment"
    assert r.text == en.get("ask_instalment", max="1,500")
    assert w.counts()["loans"] == 0


def test_request_loan_bad_instalments(w):
    en = w.en
    p = w.register(BORROWER, "Mary")
    p.walk("1", "0722000111", "1500")
    for text, err, params in [("0", "amount_too_small", {"min": "1"}),
                              ("1501", "amount_too_large", {"max": "1,500"}),
                              ("x", "amount_not_number", {}),
                              ("10.5", "amount_whole", {})]:
        r = p.send(text)
        assert not r.end and p.screen == "req_instalment", text
        assert r.text == en.get(err, **params) + "\n" + en.get("ask_instalment", max="1,500")
    r = p.send("500")
    assert p.screen == "req_confirm"
    assert r.text == en.get("confirm_request", amount="Ksh 1,500", instalment="Ksh 500",
                            lender="0722000111")
    assert p.send("7").text == en.get("choose_again") + "\n" + r.text
    assert p.screen == "req_confirm"


def test_confirm_creates_loan_sms_and_change_log_in_one_go(w):
    en = w.en
    w.register(LENDER, "Peter Otieno")
    p = w.register(BORROWER, "Mary Wanjiru")
    p.walk("1", "0722000111", "2000")
    r = p.send("500")
    assert r.text == en.get("confirm_request", amount="Ksh 2,000", instalment="Ksh 500",
                            lender="Peter Otieno 0722000111")
    before, seq = w.counts(), w.last_seq()
    r = p.send("1")
    assert r.end
    after = w.counts()
    (loan,) = w.loans_between(BORROWER, LENDER)
    assert r.text == en.get("request_sent", lender="Peter Otieno", ref=loan["ref"])
    assert re.fullmatch(r"[2-9A-HJKMNP-Z]{6}", loan["ref"])
    assert (loan["principal_cents"], loan["instalment_cents"], loan["state"]) == (
        2000_00, 500_00, "requested")
    assert loan["expires_at"] == pytest.approx(w.now + w.settings.request_ttl)
    assert after["loans"] - before["loans"] == 1
    assert after["sms_outbox"] - before["sms_outbox"] == 1
    assert after["mpesa_actions"] == before["mpesa_actions"]
    assert after["ledger_txns"] == before["ledger_txns"]
    (sms,) = w.sms_to(LENDER)
    assert sms == en.get("sms_loan_requested", borrower_name="Mary Wanjiru",
                         borrower="0712345678", amount="Ksh 2,000", instalment="Ksh 500",
                         code="*383#", ref=loan["ref"])
    changes = w.changes_since(seq)
    assert [(c["entity"], c["op"]) for c in changes] == [("loan", "requested"), ("sms", "queued")]
    assert {c["at"] for c in changes} == {w.now}
    payload = json.loads(changes[0]["payload"])
    assert payload["ref"] == loan["ref"] and payload["lender"] == LENDER
    assert w.sms_to(BORROWER) == []


def test_request_to_an_unregistered_number_invites_them(w):
    p = w.register(BORROWER, "Mary", lang="sw")
    seq = w.last_seq()
    r = request(w, p, "0733000222", "100", "50")
    (loan,) = w.loans_between(BORROWER, OTHER)
    assert r.text == w.sw.get("request_sent", lender="0733000222", ref=loan["ref"])
    invited = w.user(OTHER)
    assert not invited.registered and invited.lang == "sw"
    assert [(c["entity"], c["op"]) for c in w.changes_since(seq)] == [
        ("user", "invited"), ("loan", "requested"), ("sms", "queued")]
    # The SMS is in the language the invitation was made in.
    (sms,) = w.sms_to(OTHER)
    assert sms == w.sw.get("sms_loan_requested", borrower_name="Mary", borrower="0712345678",
                           amount="Ksh 100", instalment="Ksh 50", code="*383#",
                           ref=loan["ref"])

    # The invited lender registers on first dial and finds the request waiting.
    q = w.phone(OTHER)
    q.dial()
    r = q.walk("1", "Otieno", "4826", "4826")
    assert r.text.endswith(main_menu(w.en, w.settings, waiting=1))
    r = q.send("3")
    assert page_items(r.text) == ["1 Mary Ksh 100"]


def test_cancel_creates_nothing(w):
    p = w.register(BORROWER, "Mary")
    before = w.counts()
    seq = w.last_seq()
    r = p.walk("1", "0733000222", "500", "100")
    assert p.screen == "req_confirm"
    r = p.send("0")
    assert (r.text, r.end) == (w.en.get("cancelled"), True)
    assert w.counts() == before
    assert w.last_seq() == seq
    assert lending.get_user(w.conn, OTHER) is None


def test_too_many_open_requests(w):
    p = w.register(BORROWER, "Mary")
    for i in range(w.settings.max_open_requests):
        request(w, p, f"07330002{i:02d}", "100", "100")
    p.dial()
    r = p.send("1")
    assert p.screen == "main"
    assert r.text == (w.en.get("too_many_requests", limit=5) + "\n"
                      + main_menu(w.en, w.settings))
    assert w.counts()["loans"] == 5


# -- approve or decline --------------------------------------------------------------

@pytest.fixture
def requested(w):
    """Lender Peter and borrower Mary, with Mary's request of Ksh 1,000 (300 a time)."""
    lender = w.register(LENDER, "Peter Otieno", pin="4826")
    borrower = w.register(BORROWER, "Mary Wanjiru", pin="2580")
    request(w, borrower, "0722000111", "1000", "300")
    (loan,) = w.loans_between(BORROWER, LENDER)
    return lender, borrower, loan["id"]


def open_approval(w: World, lender: Phone, n: str = "1") -> Reply:
    r = lender.dial()
    assert "(" in r.text  # the waiting count is on the main menu
    lender.send("3")
    return lender.send(n)


def test_approve_after_two_wrong_pins(w, requested):
    en = w.en
    lender, borrower, loan_id = requested
    loan = w.loan(loan_id)
    r = lender.dial()
    assert r.text == main_menu(en, w.settings, waiting=1)
    r = lender.send("3")
    assert lender.screen == "approvals"
    assert r.text == "\n".join([en.get("approvals_header"), "1 Mary Wanjiru Ksh 1,000", "0 Back"])
    r = lender.send("1")
    assert lender.screen == "approval"
    assert r.text == en.get("approval_detail", who="Mary Wanjiru 0712345678", amount="Ksh 1,000",
                            instalment="Ksh 300", ref=loan["ref"])
    r = lender.send("1")
    assert (r.text, lender.screen) == (
        en.get("ask_pin_approve", amount="Ksh 1,000", who="Mary Wanjiru"), "answer_pin")

    r = lender.send("2580")
    assert (r.text, r.end) == (en.get("wrong_pin", tries=2), False)
    assert w.user(LENDER).pin_failures == 1
    r = lender.send("12")
    assert (r.text, r.end) == (en.get("wrong_pin", tries=1), False)
    assert w.loan(loan_id)["state"] == "requested"
    assert w.actions(loan_id) == []

    before, seq = w.counts(), w.last_seq()
    r = lender.send("4826")
    assert r.end
    assert r.text == en.get("approved", amount="Ksh 1,000", who="Mary Wanjiru")
    assert w.loan(loan_id)["state"] == "approved"
    u = w.user(LENDER)
    assert (u.pin_failures, u.locked_until) == (0, None)
    (action,) = w.actions(loan_id)
    assert (action["purpose"], action["kind"], action["msisdn"], action["amount_cents"],
            action["state"]) == ("loan_funding", "stk_push", LENDER, 1000_00, "queued")
    (sms,) = w.sms_to(BORROWER)
    assert sms == en.get("sms_loan_approved", lender_name="Peter Otieno", amount="Ksh 1,000",
                         ref=loan["ref"])
    after = w.counts()
    assert after["mpesa_actions"] - before["mpesa_actions"] == 1
    assert after["sms_outbox"] - before["sms_outbox"] == 1
    assert [(c["entity"], c["op"]) for c in w.changes_since(seq)] == [
        ("loan", "approved"), ("mpesa_action", "queued"), ("sms", "queued")]
    # Answered: gone from the list and from the waiting count.
    r = lender.dial()
    assert r.text == main_menu(en, w.settings)
    r = lender.send("3")
    assert r.text == en.get("no_approvals") + "\n" + main_menu(en, w.settings)


def test_approval_detail_navigation(w, requested):
    en = w.en
    lender, _, loan_id = requested
    detail = open_approval(w, lender)
    r = lender.send("5")
    assert r.text == en.get("choose_again") + "\n" + detail.text
    r = lender.send("0")
    assert lender.screen == "approvals" and page_items(r.text) == ["1 Mary Wanjiru Ksh 1,000"]
    r = lender.send("2")  # not on the list
    assert lender.screen == "approvals" and r.text.startswith(en.get("choose_again") + "\n")
    r = lender.send("0")
    assert lender.screen == "main"


def test_three_wrong_pins_lock_until_the_lock_passes(w, requested):
    en = w.en
    lender, _, loan_id = requested
    open_approval(w, lender)
    lender.send("1")
    lender.send("0000")
    lender.send("1111")
    seq = w.last_seq()
    r = lender.send("9999")
    assert r.end
    assert r.text == en.get("locked_now", attempts=3, minutes=30)
    u = w.user(LENDER)
    assert u.locked_until == pytest.approx(w.now + 30 * 60)
    assert [(c["entity"], c["op"]) for c in w.changes_since(seq)] == [("user", "locked")]
    assert w.loan(loan_id)["state"] == "requested"
    assert w.actions(loan_id) == []

    r = lender.dial()
    assert (r.text, r.end) == (en.get("locked", attempts=3, minutes=30), True)
    # A dialog that was open elsewhere is locked too.
    stale = w.phone(LENDER)
    stale.state, stale.last = {"s": "main", "lang": "en", "d": {}}, Reply("", False)
    r = stale.send("3")
    assert (r.text, r.end) == (en.get("locked", attempts=3, minutes=30), True)

    w.now += 29 * 60 + 30
    assert lender.dial().text == en.get("locked", attempts=3, minutes=1)
    w.now += 30
    r = lender.dial()
    assert (r.text, r.end) == (main_menu(en, w.settings, waiting=1), False)
    # A fresh count of tries after the lock.
    lender.walk("3", "1", "1")
    assert lender.send("0000").text == en.get("wrong_pin", tries=2)
    r = lender.send("4826")
    assert r.end and w.loan(loan_id)["state"] == "approved"
    u = w.user(LENDER)
    assert (u.pin_failures, u.locked_until) == (0, None)


def test_wrong_pins_count_across_dialogs(w, requested):
    lender, _, _ = requested
    open_approval(w, lender)
    lender.walk("1", "0000", "1111")
    r = open_approval(w, lender)
    lender.send("2")
    r = lender.send("7777")
    assert r.end and r.text == w.en.get("locked_now", attempts=3, minutes=30)


def test_decline(w, requested):
    en = w.en
    lender, _, loan_id = requested
    open_approval(w, lender)
    r = lender.send("2")
    assert r.text == en.get("ask_pin_decline", who="Mary Wanjiru")
    r = lender.send("4826")
    assert (r.text, r.end) == (en.get("declined", who="Mary Wanjiru"), True)
    loan = w.loan(loan_id)
    assert loan["state"] == "declined"
    assert w.actions(loan_id) == []
    assert w.sms_to(BORROWER) == [en.get("sms_loan_declined", lender_name="Peter Otieno",
                                         amount="Ksh 1,000", ref=loan["ref"])]


def test_request_answered_elsewhere_meanwhile(w, requested):
    en = w.en
    lender, _, loan_id = requested
    open_approval(w, lender)
    lender.send("1")
    other = w.phone(LENDER)
    open_approval(w, other)
    other.send("2")
    assert other.send("4826").end
    r = lender.send("4826")
    assert (r.text, r.end) == (en.get("request_gone", state=en.get("state_declined")), True)
    assert w.loan(loan_id)["state"] == "declined"
    assert w.actions(loan_id) == []


def test_sweep_expires_unanswered_requests_and_tells_the_borrower(w, requested):
    en = w.en
    _, _, loan_id = requested
    assert w.sweep() == 0
    w.now += w.settings.request_ttl + 1
    assert w.sweep() == 1
    assert w.sweep() == 0
    loan = w.loan(loan_id)
    assert loan["state"] == "expired"
    assert w.sms_to(BORROWER) == [en.get("sms_loan_expired", amount="Ksh 1,000",
                                         lender_name="Peter Otieno", ref=loan["ref"])]


def test_request_expiring_while_the_lender_answers_tells_the_borrower(w, requested):
    """The lender opened the request just before it expired and enters the PIN after.
    Whoever expires the loan (this answer or the next sweep) must tell the borrower,
    exactly once."""
    en = w.en
    lender, _, loan_id = requested
    open_approval(w, lender)
    lender.send("1")
    w.now += w.settings.request_ttl + 1
    r = lender.send("4826")
    assert (r.text, r.end) == (en.get("request_gone", state=en.get("state_expired")), True)
    assert w.actions(loan_id) == []
    w.sweep()
    loan = w.loan(loan_id)
    assert loan["state"] == "expired"
    assert w.actions(loan_id) == []
    assert w.sms_to(BORROWER) == [en.get("sms_loan_expired", amount="Ksh 1,000",
                                         lender_name="Peter Otieno", ref=loan["ref"])]


def test_expired_request_is_not_offered(w, requested):
    lender, _, loan_id = requested
    w.now += w.settings.request_ttl + 1
    r = lender.dial()
    assert r.text == main_menu(w.en, w.settings)
    r = lender.send("3")
    assert r.text == w.en.get("no_approvals") + "\n" + main_menu(w.en, w.settings)


# -- money moves ---------------------------------------------------------------------

def test_mpesa_results_make_the_loan_active_and_repayable(w, requested):
    en = w.en
    lender, borrower, loan_id = requested
    open_approval(w, lender)
    lender.walk("1", "4826")
    ref = w.loan(loan_id)["ref"]

    (funding,) = w.actions(loan_id, "loan_funding")
    applied, _ = w.settle(funding["key"], True, receipt="QKF1234567")
    assert applied
    assert w.loan(loan_id)["state"] == "funded"
    (payout,) = w.actions(loan_id, "loan_payout")
    assert (payout["kind"], payout["msisdn"], payout["amount_cents"]) == ("b2c", BORROWER, 1000_00)
    # Not repayable before the borrower has the money.
    borrower.dial()
    assert borrower.send("6").text == en.get("no_repayable") + "\n" + main_menu(en, w.settings)

    sms_before = len(w.sms_to(BORROWER))
    assert w.settle(payout["key"], True, receipt="QKP7654321")[0]
    loan = w.loan(loan_id)
    assert (loan["state"], loan["outstanding_cents"]) == ("active", 1000_00)
    assert w.sms_to(BORROWER)[sms_before:] == [en.get(
        "sms_loan_active_borrower", amount="Ksh 1,000", lender_name="Peter Otieno",
        instalment="Ksh 300", code="*383#", ref=ref)]
    assert w.sms_to(LENDER)[-1] == en.get("sms_loan_active_lender", amount="Ksh 1,000",
                                          borrower_name="Mary Wanjiru", ref=ref)
    # A second delivery of the payout result changes nothing.
    counts = w.counts()
    assert w.settle(payout["key"], True, receipt="QKP7654321") == (False, [])
    assert w.counts() == counts

    borrower.dial()
    r = borrower.send("6")
    assert borrower.screen == "repay_list"
    assert r.text == "\n".join([en.get("repay_header"), "1 Peter Otieno owed Ksh 1,000", "0 Back"])
    r = borrower.send("1")
    assert r.text == en.get("repay_choice", who="Peter Otieno", owed="Ksh 1,000",
                            instalment="Ksh 300")

    b = lending.balance_of(w.conn, w.user(BORROWER).id, w.now)
    k = lending.balance_of(w.conn, w.user(LENDER).id, w.now)
    assert (b["owe"], b["owed"], k["owe"], k["owed"]) == (1000_00, 0, 0, 1000_00)

    # The ledger: both M-PESA legs for each villager, the debt and its mirror.
    txns = [r["kind"] for r in w.all("SELECT kind FROM ledger_txns ORDER BY id")]
    assert txns == ["funding_collected", "payout", "disbursement"]
    assert w.one("SELECT SUM(amount_cents) FROM ledger_postings")[0] == 0


@pytest.fixture
def active(w, requested):
    lender, borrower, loan_id = requested
    open_approval(w, lender)
    lender.walk("1", "4826")
    w.fund(loan_id)
    return lender, borrower, loan_id


def test_repay_instalment_then_other_amount(w, active):
    en = w.en
    lender, borrower, loan_id = active
    ref = w.loan(loan_id)["ref"]
    borrower.dial()
    borrower.walk("6", "1")
    r = borrower.send("1")
    assert (r.text, borrower.screen) == (
        en.get("ask_pin_repay", amount="Ksh 300", who="Peter Otieno"), "repay_pin")
    r = borrower.send("4826")  # the lender's PIN, not hers
    assert (r.text, r.end) == (en.get("wrong_pin", tries=2), False)
    seq = w.last_seq()
    r = borrower.send("2580")
    assert (r.text, r.end) == (en.get("repay_started", amount="Ksh 300"), True)
    (rep,) = w.actions(loan_id, "repayment")
    assert (rep["kind"], rep["msisdn"], rep["amount_cents"], rep["state"]) == (
        "stk_push", BORROWER, 300_00, "queued")
    assert [(c["entity"], c["op"]) for c in w.changes_since(seq)] == [("mpesa_action", "queued")]
    # Nothing moves before M-PESA confirms.
    assert lending.balance_of(w.conn, w.user(BORROWER).id, w.now)["owe"] == 1000_00

    # Other amount: only what no started payment covers yet (1,000 - 300).
    borrower.dial()
    borrower.walk("6", "1")
    r = borrower.send("2")
    assert (r.text, borrower.screen) == (en.get("ask_repay_amount", max="700"), "repay_amount")
    for text, err, params in [("701", "amount_too_large", {"max": "700"}),
                              ("1000", "amount_too_large", {"max": "700"}),
                              ("0", "amount_too_small", {"min": "1"}),
                              ("abc", "amount_not_number", {}),
                              ("50.5", "amount_whole", {})]:
        r = borrower.send(text)
        assert not r.end and borrower.screen == "repay_amount"
        assert r.text == en.get(err, **params) + "\n" + en.get("ask_repay_amount", max="700")
    r = borrower.send("700")
    assert r.text == en.get("ask_pin_repay", amount="Ksh 700", who="Peter Otieno")
    r = borrower.send("2580")
    assert r.text == en.get("repay_started", amount="Ksh 700")
    first, second = w.actions(loan_id, "repayment")
    assert second["amount_cents"] == 700_00

    # M-PESA confirms the first one: the balance moves, both are told.
    uid = w.user(BORROWER).id
    assert w.settle(first["key"], True, receipt="QKR0000001")[0]
    assert lending.balance_of(w.conn, uid, w.now)["owe"] == 700_00
    assert w.sms_to(BORROWER)[-1] == en.get("sms_repaid_borrower", paid="Ksh 300",
                                            balance="Ksh 700", receipt="QKR0000001", ref=ref)
    assert w.sms_to(LENDER)[-1] == en.get("sms_repaid_lender", borrower_name="Mary Wanjiru",
                                          paid="Ksh 300", balance="Ksh 700", ref=ref)
    (fwd,) = w.actions(loan_id, "repayment_forward")
    assert (fwd["msisdn"], fwd["amount_cents"], fwd["kind"]) == (LENDER, 300_00, "b2c")

    # The same result again (M-PESA retries callbacks): nothing changes at all.
    counts, seq = w.counts(), w.last_seq()
    assert w.settle(first["key"], True, receipt="QKR0000001") == (False, [])
    assert w.settle(first["key"], False, desc="late failure") == (False, [])
    assert w.counts() == counts and w.last_seq() == seq
    assert lending.balance_of(w.conn, uid, w.now)["owe"] == 700_00

    # The second one pays the loan off.
    assert w.settle(second["key"], True, receipt="QKR0000002")[0]
    loan = w.loan(loan_id)
    assert (loan["state"], loan["outstanding_cents"]) == ("repaid", 0)
    assert lending.balance_of(w.conn, uid, w.now)["owe"] == 0
    borrower.dial()
    assert borrower.send("6").text == en.get("no_repayable") + "\n" + main_menu(en, w.settings)


def test_failed_repayment_changes_no_balance(w, active):
    en = w.en
    _, borrower, loan_id = active
    borrower.dial()
    borrower.walk("6", "1", "1", "2580")
    (rep,) = w.actions(loan_id, "repayment")
    assert w.settle(rep["key"], False, desc="Request cancelled by user")[0]
    assert lending.balance_of(w.conn, w.user(BORROWER).id, w.now)["owe"] == 1000_00
    assert w.sms_to(BORROWER)[-1] == en.get(
        "sms_repayment_failed", paid="Ksh 300", reason="Request cancelled by user",
        code="*383#", ref=w.loan(loan_id)["ref"])
    # The room is back: the full instalment is offered again.
    borrower.dial()
    borrower.walk("6", "1")
    assert borrower.send("2").text == en.get("ask_repay_amount", max="1,000")


def test_instalment_offer_never_exceeds_what_is_left(w, active):
    en = w.en
    _, borrower, loan_id = active
    borrower.dial()
    borrower.walk("6", "1", "2", "800", "2580")
    borrower.dial()
    borrower.send("6")
    r = borrower.send("1")
    assert r.text == en.get("repay_choice", who="Peter Otieno", owed="Ksh 1,000",
                            instalment="Ksh 200")


@pytest.mark.parametrize("lang", ["en", "sw"])
def test_repay_when_started_payments_cover_the_loan(w, lang):
    """The loan is still listed under Repay but started payments cover it all: the
    explanation is shown above the main menu, and the whole menu must still fit."""
    lender = w.register(LENDER, "Peter Otieno", pin="4826")
    borrower = w.register(BORROWER, "Mary Wanjiru", lang=lang)
    request(w, borrower, "0722000111", "1000", "1000")
    (loan,) = w.loans_between(BORROWER, LENDER)
    open_approval(w, lender)
    lender.walk("1", "4826")
    w.fund(loan["id"])
    borrower.dial()
    borrower.walk("6", "1", "1", "2580")
    # Someone asks Mary for a loan meanwhile: the main menu shows her a waiting count.
    other = w.register(OTHER, "Juma")
    request(w, other, "0712345678", "100", "100")

    t = w.texts[lang]
    borrower.dial()
    r = borrower.send("6")
    assert page_items(r.text) == [t.get("repay_line", n=1, who="Peter Otieno", owed="Ksh 1,000")]
    r = borrower.send("1")
    assert ".." not in r.text, f"clipped: {r.text!r}"
    assert t.get("repay_nothing_left") in r.text
    assert w.actions(loan["id"], "repayment")[-1]["amount_cents"] == 1000_00
    assert len(w.actions(loan["id"], "repayment")) == 1
    if not r.end:  # shown above a menu: the menu must be whole
        assert borrower.screen == "main"
        assert r.text.endswith(main_menu(t, w.settings, waiting=1))


def test_balance_screen_figures(w, active):
    en = w.en
    lender, borrower, loan_id = active
    # Mary: repaid 300 (confirmed), 200 started, and a request of 500 to Juma waiting.
    w.register(OTHER, "Juma")
    request(w, borrower, "0733000222", "500", "100")
    borrower.dial()
    borrower.walk("6", "1", "2", "300", "2580")
    (rep,) = w.actions(loan_id, "repayment")
    w.settle(rep["key"], True, receipt="QKR1")
    borrower.dial()
    borrower.walk("6", "1", "2", "200", "2580")

    borrower.dial()
    r = borrower.send("4")
    assert borrower.screen == "balance"
    assert r.text == ("You owe Ksh 700\nOwed to you Ksh 0\nWaiting: 1 requests Ksh 500\n"
                      "M-PESA not settled: 1 Ksh 200\n0 Back")
    assert borrower.send("0").text == main_menu(en, w.settings)

    # Peter: the 300 is on its way to him (forward queued), so he is still owed 1,000
    # until M-PESA confirms the forward.
    r = lender.dial()
    r = lender.send("4")
    assert r.text == ("You owe Ksh 0\nOwed to you Ksh 1,000\nWaiting: 0 requests Ksh 0\n"
                      "M-PESA not settled: 1 Ksh 300\n0 Back")
    (fwd,) = w.actions(loan_id, "repayment_forward")
    w.settle(fwd["key"], True, receipt="QKB1")
    lender.dial()
    r = lender.send("4")
    assert r.text == ("You owe Ksh 0\nOwed to you Ksh 700\nWaiting: 0 requests Ksh 0\n"
                      "M-PESA not settled: 0 Ksh 0\n0 Back")
    # Juma sees Mary's request to him as waiting too.
    juma = w.phone(OTHER)
    juma.dial()
    assert juma.send("4").text == ("You owe Ksh 0\nOwed to you Ksh 0\nWaiting: 1 requests "
                                   "Ksh 500\nM-PESA not settled: 0 Ksh 0\n0 Back")


def test_my_loans_list_and_detail(w, active):
    en = w.en
    lender, borrower, loan_id = active
    ref = w.loan(loan_id)["ref"]
    request(w, borrower, "0733000222", "250", "50")
    borrower.dial()
    r = borrower.send("2")
    assert borrower.screen == "loans"
    assert page_items(r.text) == ["1 From 0733000222 Ksh 250 waiting",
                                  "2 From Peter Otieno Ksh 1,000 active"]
    r = borrower.send("2")
    assert borrower.screen == "loan"
    assert r.text == en.get("loan_detail", ref=ref, direction="From", who="Peter Otieno",
                            amount="Ksh 1,000", instalment="Ksh 300", owed="Ksh 1,000",
                            state="active")
    assert borrower.send("0").text.startswith(en.get("loans_header"))
    lender.dial()
    r = lender.send("2")
    assert page_items(r.text) == ["1 To Mary Wanjiru Ksh 1,000 active"]


def test_transactions_paging(w):
    en = w.en
    lender = w.register(LENDER, "Peter Otieno", pin="4826")
    names = [f"Villager {chr(65 + i)}" for i in range(14)]
    dates = []
    for i, name in enumerate(names):
        b = w.register(f"2547110000{i:02d}", name)
        request(w, b, "0722000111", str(100 + i), "10")
        (loan,) = w.loans_between(f"2547110000{i:02d}", LENDER)
        with w.txn():
            _, notices = lending.answer_request(w.conn, w.settings.site, loan["id"],
                                                w.user(LENDER).id, True, w.now)
        w.fund(loan["id"])
        dates.append(short_date(w.now))
        w.now += 60
    want = [f"{dates[i]} Lent Ksh {100 + i} to {names[i]}" for i in reversed(range(14))]

    lender.dial()
    r = lender.send("5")
    seen: list[str] = []
    pages = 0
    while True:
        pages += 1
        assert lender.screen == "txns"
        assert screens.length(r.text) <= SCREEN_LIMIT and ".." not in r.text
        lines = r.text.split("\n")
        assert lines[0] == en.get("txns_header") and lines[-1] == "0 Back"
        body = [ln for ln in lines[1:-1] if ln != "98 More"]
        assert body
        seen += body
        if "98 More" not in lines:
            break
        r = lender.send("98")
    assert pages >= 3
    assert seen == want
    # On the last page "98" has nothing more to show: home.
    assert lender.send("98").text == main_menu(en, w.settings)

    # The borrower's side.
    b = w.phone("254711000003")
    b.dial()
    r = b.send("5")
    assert r.text.split("\n") == [en.get("txns_header"),
                                  f"{dates[3]} Got loan Ksh 103 from Peter Otieno", "0 Back"]


def test_no_transactions_yet(w):
    p = w.register(BORROWER, "Mary")
    assert p.send("5").text == w.en.get("no_txns") + "\n" + main_menu(w.en, w.settings)
    assert p.send("2").text == w.en.get("no_loans") + "\n" + main_menu(w.en, w.settings)


# -- paging the approvals list --------------------------------------------------------

def test_thirty_requests_page_through_every_item_once(w):
    en = w.en
    lender = w.register(LENDER, "Peter Otieno", pin="4826")
    names = [f"Borrower {chr(65 + i // 26)}{chr(97 + i % 26)}" for i in range(30)]
    for i, name in enumerate(names):
        b = w.register(f"2547110000{i:02d}", name)
        request(w, b, "0722000111", str(1000 + i), "100")

    r = lender.dial()
    assert r.text == main_menu(en, w.settings, waiting=30)
    r = lender.send("3")
    seen: list[str] = []
    pages: list[str] = []
    while True:
        pages.append(r.text)
        assert lender.screen == "approvals"
        assert screens.length(r.text) <= SCREEN_LIMIT
        lines = r.text.split("\n")
        assert lines[0] == en.get("approvals_header") and lines[-1] == "0 Back"
        items = page_items(r.text)
        assert items
        seen += items
        if lines[-2] != "98 More":
            break
        r = lender.send("98")
    assert len(pages) > 1
    want = [f"{i + 1} {names[i]} Ksh {1000 + i:,}" for i in range(30)]
    assert seen == want

    # Numbers are global: item 30 is picked on the last page, the right loan opens.
    r = lender.send("30")
    assert lender.screen == "approval" and r.text.startswith(names[29] + " 0711000029 ")
    # Back returns to the page it came from.
    r = lender.send("0")
    assert r.text == pages[-1]
    # A number from another page is not on this one: the page is shown again, and
    # nothing opens. (That the page stays whole is test_wrong_choice_on_a_full_page...)
    start = lender.state["d"]["start"]
    r = lender.send("1")
    assert lender.screen == "approvals" and lender.state["d"]["start"] == start
    assert r.text.startswith(en.get("choose_again") + "\n" + en.get("approvals_header"))


def test_wrong_choice_on_a_full_page_keeps_the_page_whole(w):
    """'Choose one of the numbers shown' above a page the pager filled: the screen must
    still show whole items and the 98 More / 0 Back footer, and paging on from it must
    still show every request exactly once."""
    en = w.en
    lender = w.register(LENDER, "Peter Otieno", pin="4826")
    names = [f"Borrower Longname {chr(65 + i)}" for i in range(8)]
    for i, name in enumerate(names):
        b = w.register(f"2547110000{i:02d}", name)
        request(w, b, "0722000111", "70000", "70000")
    want = [f"{i + 1} {name[:14]} Ksh 70,000" for i, name in enumerate(names)]
    lender.dial()
    page = lender.send("3")
    assert page.text.endswith("\n98 More\n0 Back")
    first = page_items(page.text)
    assert first == want[:len(first)]
    r = lender.send("77")
    assert lender.screen == "approvals"
    assert ".." not in r.text, f"clipped: {r.text!r}"
    assert r.text.startswith(en.get("choose_again") + "\n")
    assert r.text.endswith("\n98 More\n0 Back")
    items = page_items(r.text)
    assert items and items == first[:len(items)]
    seen = items
    while r.text.endswith("\n98 More\n0 Back"):
        r = lender.send("98")
        assert ".." not in r.text
        seen += page_items(r.text)
    assert seen == want


# -- my account ----------------------------------------------------------------------

def test_language_switch(w):
    en, sw = w.en, w.sw
    p = w.register(BORROWER, "Mary")
    r = p.send("7")
    assert (r.text, p.screen) == (en.get("account_menu", name="Mary"), "account")
    r = p.send("1")
    assert (r.text, p.screen) == (en.get("language_menu"), "account_lang")
    r = p.send("5")
    assert r.text == en.get("choose_again") + "\n" + en.get("language_menu")
    seq = w.last_seq()
    r = p.send("2")
    assert p.screen == "account"
    assert r.text == "Lugha imebadilishwa.\n" + sw.get("account_menu", name="Mary")
    assert w.user(BORROWER).lang == "sw"
    assert [(c["entity"], c["op"]) for c in w.changes_since(seq)] == [("user", "language")]
    # The very next screen is in Kiswahili.
    r = p.send("0")
    assert r.text == main_menu(sw, w.settings)
    assert p.dial().text == main_menu(sw, w.settings)
    # ... and so are her SMS from now on.
    lender = w.register(LENDER, "Peter", pin="4826")
    request(w, lender, "0712345678", "100", "100")
    (loan,) = w.loans_between(LENDER, BORROWER)
    assert w.sms_to(BORROWER) == [sw.get("sms_loan_requested", borrower_name="Peter",
                                         borrower="0722000111", amount="Ksh 100",
                                         instalment="Ksh 100", code="*383#", ref=loan["ref"])]
    # And back to English.
    p.dial()
    p.walk("7", "1")
    r = p.send("1")
    assert r.text == "Language changed.\n" + en.get("account_menu", name="Mary")
    r = p.send("0")
    assert r.text == main_menu(en, w.settings, waiting=1)


def test_change_pin(w):
    en = w.en
    p = w.register(BORROWER, "Mary", pin="2580")
    p.send("7")
    r = p.send("2")
    assert (r.text, p.screen) == (en.get("ask_old_pin"), "pin_old")
    r = p.send("1111")
    assert (r.text, r.end, p.screen) == (en.get("wrong_pin", tries=2), False, "pin_old")
    r = p.send("2580")
    assert (r.text, p.screen) == (en.get("ask_new_pin_change"), "pin_new")
    assert w.user(BORROWER).pin_failures == 0
    assert p.send("6789").text == en.get("weak_pin")
    assert p.send("67").text == en.get("bad_pin_shape")
    r = p.send("4826")
    assert (r.text, p.screen) == (en.get("ask_pin_again"), "pin_new2")
    r = p.send("4862")
    assert (r.text, p.screen) == (en.get("pin_mismatch"), "pin_new")
    assert pins.verify_pin("2580", w.user(BORROWER).pin_hash, KEY)
    p.send("4826")
    seq = w.last_seq()
    r = p.send("4826")
    assert (r.text, r.end) == (en.get("pin_changed"), True)
    h = w.user(BORROWER).pin_hash
    assert pins.verify_pin("4826", h, KEY) and not pins.verify_pin("2580", h, KEY)
    changes = w.changes_since(seq)
    assert [(c["entity"], c["op"]) for c in changes] == [("user", "pin_changed")]
    assert h not in changes[0]["payload"]
    # The new PIN is the one asked for from now on.
    p.dial()
    p.walk("7", "2")
    assert p.send("2580").text == en.get("wrong_pin", tries=2)
    assert p.send("4826").text == en.get("ask_new_pin_change")


def test_wrong_old_pin_three_times_locks(w):
    p = w.register(BORROWER, "Mary", pin="2580")
    p.walk("7", "2", "1111", "2222")
    r = p.send("3333")
    assert (r.text, r.end) == (w.en.get("locked_now", attempts=3, minutes=30), True)
    assert pins.verify_pin("2580", w.user(BORROWER).pin_hash, KEY)
    assert p.dial().end


def test_account_menu_navigation(w):
    en = w.en
    p = w.register(BORROWER, "Mary")
    p.send("7")
    assert p.send("9").text == en.get("choose_again") + "\n" + en.get("account_menu", name="Mary")
    p.send("1")
    assert p.send("0").text == en.get("account_menu", name="Mary")
    assert p.send("0").text == main_menu(en, w.settings)
    assert p.send("8").text == en.get("choose_again") + "\n" + main_menu(en, w.settings)
    r = p.send("0")
    assert (r.text, r.end) == (en.get("goodbye", service=w.settings.service), True)


# -- "00" goes home --------------------------------------------------------------------

def test_double_zero_goes_home_from_every_menu_screen(w, active):
    en = w.en
    lender, borrower, loan_id = active
    request(w, borrower, "0733000222", "100", "100")
    home = main_menu(en, w.settings)
    paths = [
        (borrower, ("1",)), (borrower, ("1", "0799000111")),
        (borrower, ("1", "0799000111", "100")), (borrower, ("1", "0799000111", "100", "50")),
        (borrower, ("2",)), (borrower, ("2", "1")), (borrower, ("4",)), (borrower, ("5",)),
        (borrower, ("6",)), (borrower, ("6", "1")), (borrower, ("6", "1", "2")),
        (borrower, ("6", "1", "1")), (borrower, ("7",)), (borrower, ("7", "1")),
        (borrower, ("7", "2")), (borrower, ("7", "2", "2580")),
        (borrower, ("7", "2", "2580", "4826")),
    ]
    screens_seen = set()
    for p, inputs in paths:
        p.dial()
        p.walk(*inputs)
        screens_seen.add(p.screen)
        failures = w.user(p.msisdn).pin_failures
        r = p.send("00")
        assert (r.text, r.end, p.screen) == (home, False, "main"), inputs
        assert w.user(p.msisdn).pin_failures == failures  # "00" is not a wrong PIN
    assert screens_seen >= {"req_lender", "req_amount", "req_instalment", "req_confirm",
                            "loans", "loan", "balance", "txns", "repay_list", "repay_choice",
                            "repay_amount", "repay_pin", "account", "account_lang", "pin_old",
                            "pin_new", "pin_new2"}
    # Nothing was requested or paid on the way.
    assert len(w.loans_between(BORROWER, "254799000111")) == 0
    assert w.actions(loan_id, "repayment") == []
    # The approval screens too, with the waiting count shown on the menu.
    request(w, w.register(OTHER, "Juma"), "0722000111", "100", "100")
    for inputs in (("3",), ("3", "1"), ("3", "1", "1")):
        lender.dial()
        lender.walk(*inputs)
        r = lender.send("00")
        assert (r.text, lender.screen) == (main_menu(en, w.settings, waiting=1), "main")


# -- a walk in Kiswahili --------------------------------------------------------------

def test_kiswahili_walk(w):
    sw = w.sw
    lender = w.register(LENDER, "Peter Otieno", lang="sw", pin="4826")
    p = w.register(BORROWER, "Mary Wanjiru", lang="sw")
    assert p.send("1").text == sw.get("ask_lender")
    assert p.send("0812345678").text == sw.get("bad_phone")
    assert p.send("0712345678").text == sw.get("self_lender")
    assert p.send("0722000111").text == sw.get("ask_amount", min="10", max="70,000")
    assert p.send("5").text == (sw.get("amount_too_small", min="10") + "\n"
                                + sw.get("ask_amount", min="10", max="70,000"))
    assert p.send("2000").text == sw.get("ask_instalment", max="2,000")
    r = p.send("500")
    assert r.text == sw.get("confirm_request", amount="Ksh 2,000", instalment="Ksh 500",
                            lender="Peter Otieno 0722000111")
    r = p.send("1")
    (loan,) = w.loans_between(BORROWER, LENDER)
    assert r.text == sw.get("request_sent", lender="Peter Otieno", ref=loan["ref"])
    assert w.sms_to(LENDER) == [sw.get("sms_loan_requested", borrower_name="Mary Wanjiru",
                                       borrower="0712345678", amount="Ksh 2,000",
                                       instalment="Ksh 500", code="*383#", ref=loan["ref"])]

    assert lender.dial().text == main_menu(sw, w.settings, waiting=1)
    r = lender.send("3")
    assert r.text == "\n".join([sw.get("approvals_header"), "1 Mary Wanjiru Ksh 2,000", "0 Rudi"])
    lender.send("1")
    r = lender.send("1")
    assert r.text == sw.get("ask_pin_approve", amount="Ksh 2,000", who="Mary Wanjiru")
    assert lender.send("0000").text == sw.get("wrong_pin", tries=2)
    r = lender.send("4826")
    assert r.text == sw.get("approved", amount="Ksh 2,000", who="Mary Wanjiru")
    assert w.sms_to(BORROWER) == [sw.get("sms_loan_approved", lender_name="Peter Otieno",
                                         amount="Ksh 2,000", ref=loan["ref"])]
    w.fund(loan["id"])

    p.dial()
    r = p.send("6")
    assert r.text == "\n".join([sw.get("repay_header"),
                                "1 Peter Otieno deni Ksh 2,000", "0 Rudi"])
    assert p.send("1").text == sw.get("repay_choice", who="Peter Otieno", owed="Ksh 2,000",
                                      instalment="Ksh 500")
    assert p.send("2").text == sw.get("ask_repay_amount", max="2,000")
    assert p.send("3000").text == (sw.get("amount_too_large", max="2,000") + "\n"
                                   + sw.get("ask_repay_amount", max="2,000"))
    assert p.send("1500").text == sw.get("ask_pin_repay", amount="Ksh 1,500",
                                         who="Peter Otieno")
    r = p.send("2580")
    assert (r.text, r.end) == (sw.get("repay_started", amount="Ksh 1,500"), True)
    p.dial()
    r = p.send("4")
    assert r.text == sw.get("balance", owe="Ksh 2,000", owed="Ksh 0", requests=0,
                            requests_amount="Ksh 0", actions=1, actions_amount="Ksh 1,500")
    p.send("0")
    r = p.send("2")
    assert page_items(r.text) == ["1 Kutoka Peter Otieno Ksh 2,000 hai"]
    p.send("00")
    r = p.send("0")
    assert (r.text, r.end) == (sw.get("goodbye", service=w.settings.service), True)
    # Every reply of the walk was pure GSM-7.
    assert all(gsm0338.is_gsm7(x.text) for x in w.replies)


# -- the lifecycle's failure ends: the loan `failed`, both told, seen in the menus ----------

def approved(w: World, requested) -> tuple[Phone, Phone, int, str]:
    lender, borrower, loan_id = requested
    open_approval(w, lender)
    lender.walk("1", "4826")
    return lender, borrower, loan_id, w.loan(loan_id)["ref"]


def test_a_failed_funding_ends_the_loan_failed_and_tells_both(w, requested):
    en = w.en
    lender, borrower, loan_id, ref = approved(w, requested)
    (funding,) = w.actions(loan_id, "loan_funding")
    assert w.settle(funding["key"], False, desc="Request cancelled by user")[0]
    assert w.loan(loan_id)["state"] == "failed"
    assert w.actions(loan_id, "loan_payout") == []                  # nothing paid out
    assert w.sms_to(LENDER)[-1] == en.get(
        "sms_funding_failed_lender", amount="Ksh 1,000", borrower_name="Mary Wanjiru",
        reason="Request cancelled by user", ref=ref)
    assert w.sms_to(BORROWER)[-1] == en.get(
        "sms_funding_failed_borrower", amount="Ksh 1,000", lender_name="Peter Otieno", ref=ref)
    # My loans says so on both phones; no money moved, so no transaction either.
    for phone, line in ((borrower, "1 From Peter Otieno Ksh 1,000 failed"),
                        (lender, "1 To Mary Wanjiru Ksh 1,000 failed")):
        phone.dial()
        assert line in phone.send("2").text.split("\n")
        phone.dial()
        assert phone.send("5").text == en.get("no_txns") + "\n" + main_menu(
            en, w.settings)
    assert lending.balance_of(w.conn, w.user(BORROWER).id, w.now)["owe"] == 0


def test_a_failed_payout_ends_the_loan_failed_and_refunds_the_lender(w, requested):
    en = w.en
    lender, borrower, loan_id, ref = approved(w, requested)
    (funding,) = w.actions(loan_id, "loan_funding")
    assert w.settle(funding["key"], True, receipt="RF00000001")[0]
    (payout,) = w.actions(loan_id, "loan_payout")
    assert w.settle(payout["key"], False, desc="The initiator information is invalid.")[0]
    assert w.loan(loan_id)["state"] == "failed"
    assert w.sms_to(LENDER)[-1] == en.get("sms_payout_failed_lender", amount="Ksh 1,000",
                                          borrower_name="Mary Wanjiru", ref=ref)
    assert w.sms_to(BORROWER)[-1] == en.get(
        "sms_funding_failed_borrower", amount="Ksh 1,000", lender_name="Peter Otieno", ref=ref)
    (refund,) = w.actions(loan_id, "lender_refund")
    assert (refund["msisdn"], refund["amount_cents"], refund["kind"]) == (LENDER, 1000_00, "b2c")
    assert w.settle(refund["key"], True, receipt="RR00000001")[0]
    # The lender's Transactions: lent, then refunded; the borrower never got the loan.
    day = short_date(w.now)
    lender.dial()
    assert lender.send("5").text.split("\n")[1:3] == [f"{day} Refund Ksh 1,000",
                                                      f"{day} Lent Ksh 1,000 to Mary Wanjiru"]
    borrower.dial()
    assert "1 From Peter Otieno Ksh 1,000 failed" in borrower.send("2").text.split("\n")
    assert lending.balance_of(w.conn, w.user(BORROWER).id, w.now)["owe"] == 0
    from store import check
    assert check.run(w.conn) == []                                   # the books balance
