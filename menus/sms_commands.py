"""SMS commands on the short code, as pure functions over one read of the store:
HELP/MSAADA, BAL/SALIO, LOANS/MIKOPO, and a short help for anything else.

The answer is in the villager's language: their own once they have one on record,
else the language of the keyword they used (MSAADA gets Kiswahili), else the box's
default. Answers fit one SMS (160 GSM-7 characters) where they can: the loans list
takes as many loans as fit and says how many more there are.

A PIN is never accepted by SMS: a message that is four digits, or a keyword followed
by four digits, or that names a PIN with digits, gets a warning and nothing else; and
every four-digit group is masked in the text kept (it is synced upstream).
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass

from menus import gsm0338
from menus.flow import Settings, state_word, who
from menus.texts import Texts, ksh
from store import lending

SMS_LIMIT = 160
OPEN_STATES = ("requested", "approved", "funded", "active")

# keyword -> (command, language it is a word of)
KEYWORDS: dict[str, tuple[str, str | None]] = {
    "HELP": ("help", "en"), "MSAADA": ("help", "sw"), "INFO": ("help", None),
    "BAL": ("balance", "en"), "BALANCE": ("balance", "en"), "SALIO": ("balance", "sw"),
    "LOANS": ("loans", "en"), "LOAN": ("loans", "en"), "MIKOPO": ("loans", "sw"),
    "MKOPO": ("loans", "sw"),
}
_FOUR_DIGITS = re.compile(r"(?<!\d)\d{4}(?!\d)")
_WORDS = re.compile(r"[A-Za-z]+|\d+")


@dataclass(frozen=True)
class Answer:
    command: str       # help | balance | loans | unknown | pin_refused
    reply: str
    lang: str
    kept_text: str     # the message as stored: every four-digit group masked


def mask_pins(text: str) -> str:
    return _FOUR_DIGITS.sub("****", text)


def looks_like_pin(text: str) -> bool:
    words = _WORDS.findall(text)
    if not words or not any(_FOUR_DIGITS.fullmatch(w) for w in words):
        return False
    first = words[0].upper()
    return (len(words) == 1 or first in KEYWORDS
            or any(w.upper() in ("PIN", "NENOSIRI") for w in words))


def answer(conn: sqlite3.Connection, msisdn: str, text: str, now: float,
           settings: Settings, texts: dict[str, Texts]) -> Answer:
    """The reply to `text` from `msisdn` (normalised, 2547...). Reads only."""
    words = _WORDS.findall(text or "")
    command, keyword_lang = KEYWORDS.get(words[0].upper(), ("unknown", None)) \
        if words else ("unknown", None)
    user = lending.get_user(conn, msisdn)
    lang = (user.lang if user is not None and user.registered
            else keyword_lang or settings.default_lang)
    t = texts.get(lang) or texts["en"]
    params = {"service": settings.service, "code": settings.short_code}
    kept = mask_pins(text or "")
    if looks_like_pin(text or ""):
        return Answer("pin_refused", t.get("sms_pin_refused", **params), lang, kept)
    if command == "help":
        return Answer(command, t.get("sms_help", **params), lang, kept)
    if command == "unknown":
        return Answer(command, t.get("sms_unknown", **params), lang, kept)
    if user is None or not user.registered:
        return Answer(command, t.get("sms_not_registered", **params), lang, kept)
    if command == "balance":
        b = lending.balance_of(conn, user.id, now)
        reply = t.get("sms_balance", owe=ksh(b["owe"]), owed=ksh(b["owed"]),
                      requests=b["requests"], requests_amount=ksh(b["requests_cents"]),
                      actions=b["actions"], actions_amount=ksh(b["actions_cents"]))
        return Answer(command, reply, lang, kept)
    return Answer(command, _loans(conn, user.id, t, params), lang, kept)


def _loans(conn: sqlite3.Connection, user_id: int, t: Texts, params: dict[str, str]) -> str:
    rows = [r for r in lending.loans_of(conn, user_id, 0, 50) if r["state"] in OPEN_STATES]
    if not rows:
        return t.get("sms_no_loans", **params)
    lines = [t.get("sms_loans_header", count=len(rows))]
    for i, r in enumerate(rows):
        mine = r["borrower_id"] == user_id
        line = t.get("sms_loan_line", ref=r["ref"],
                     direction=t.get("direction_from" if mine else "direction_to"),
                     who=who(r["lender_name"] if mine else r["borrower_name"],
                             r["lender_msisdn"] if mine else r["borrower_msisdn"], 12),
                     amount=ksh(r["outstanding_cents"] if r["state"] == "active"
                                else r["principal_cents"]),
                     state=state_word(t, r["state"]))
        rest = len(rows) - i - 1
        more = [t.get("sms_loans_more", count=rest, **params)] if rest else []
        if _septets("\n".join(lines + [line] + more)) > SMS_LIMIT:
            lines.append(t.get("sms_loans_more", count=rest + 1, **params))
            break
        lines.append(line)
    return "\n".join(lines)


def _septets(text: str) -> int:
    return gsm0338.septet_length(text) if gsm0338.is_gsm7(text) else len(text) * 2
