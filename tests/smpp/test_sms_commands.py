"""SMS commands on the short code, at the core: real store, real texts, real menus."""

from __future__ import annotations

import dataclasses

import pytest

from menus import sms_commands as C
from menus.sms_commands import SMS_LIMIT, _septets
from menus.texts import ksh
from tests.test_menus_lending import BORROWER, LENDER, World, request

STRANGER = "254799000999"


@pytest.fixture
def w(conn, settings, texts) -> World:
    return World(conn, settings, texts)


def ask(w: World, msisdn: str, text: str) -> C.Answer:
    return C.answer(w.conn, msisdn, text, w.now, w.settings, w.texts)


@pytest.mark.parametrize("text, command, lang", [
    ("HELP", "help", "en"), ("help me", "help", "en"), ("Msaada", "help", "sw"),
    ("BAL", "balance", "en"), ("salio", "balance", "sw"), ("LOANS", "loans", "en"),
    ("mikopo", "loans", "sw"), ("hello there", "unknown", "en"), ("", "unknown", "en"),
    ("😀", "unknown", "en")])
def test_a_stranger_gets_an_answer_in_the_keywords_language(w, text, command, lang):
    a = ask(w, STRANGER, text)
    assert (a.command, a.lang) == (command, lang)
    t = w.texts[lang]
    params = {"service": w.settings.service, "code": w.settings.short_code}
    expected = {"help": "sms_help", "unknown": "sms_unknown"}.get(command, "sms_not_registered")
    assert a.reply == t.get(expected, **params)
    assert _septets(a.reply) <= SMS_LIMIT


def test_balance_like_the_ussd_screen_in_the_villagers_own_language(w):
    w.register(LENDER, "Peter", lang="sw")
    mary = w.register(BORROWER, "Mary")
    request(w, mary, LENDER, "1000", "300")
    a = ask(w, BORROWER, "bal")
    assert a.command == "balance" and a.lang == "en"
    assert a.reply == w.en.get("sms_balance", owe=ksh(0), owed=ksh(0), requests=1,
                               requests_amount=ksh(1000_00), actions=0, actions_amount=ksh(0))
    # Peter chose Kiswahili: an English keyword still gets his language.
    assert ask(w, LENDER, "BAL").reply.startswith("Unadaiwa Ksh 0. Unadai Ksh 0.")


def test_loans_lists_open_loans_and_fits_one_sms(w):
    w.register(LENDER, "Peter Otieno")
    mary = w.register(BORROWER, "Mary")
    assert ask(w, BORROWER, "LOANS").reply == w.en.get("sms_no_loans",
                                                      code=w.settings.short_code)
    w.settings = dataclasses.replace(w.settings, max_open_requests=50)
    refs = []
    for amount in range(100, 1300, 100):
        request(w, mary, LENDER, str(amount), "10")
        refs.append(w.one("SELECT ref FROM loans ORDER BY id DESC LIMIT 1")[0])
    reply = ask(w, BORROWER, "loans").reply
    lines = reply.split("\n")
    assert lines[0] == "Your open loans (12):"
    assert lines[1] == f"{refs[-1]} From Peter Otieno Ksh 1,200 waiting"   # newest first
    shown = len(lines) - 2
    assert 1 <= shown < 12 and lines[-1] == f"+{12 - shown} more: dial *383#"
    assert _septets(reply) <= SMS_LIMIT
    assert ask(w, LENDER, "MIKOPO").reply.split("\n")[1].startswith(f"{refs[-1]} To Mary ")


@pytest.mark.parametrize("text", ["4826", " 4826 ", "BAL 4826", "salio 4826", "my pin is 4826",
                                  "PIN: 4826 please", "LOANS 4826"])
def test_a_pin_is_never_taken_by_sms(w, text):
    w.register(BORROWER, "Mary")
    a = ask(w, BORROWER, text)
    assert a.command == "pin_refused"
    assert "Never send your PIN by SMS" in a.reply and "Ksh" not in a.reply
    assert "4826" not in a.kept_text and "****" in a.kept_text


def test_four_digits_that_are_no_pin_are_still_masked_when_kept(w):
    a = ask(w, STRANGER, "nataka mkopo 5000 tafadhali")
    assert a.command == "unknown" and a.kept_text == "nataka mkopo **** tafadhali"
    assert ask(w, STRANGER, "BAL 12345").command == "balance"     # five digits: no PIN
