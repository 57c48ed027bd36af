"""What every lending screen shares: the dialog context, settings, PIN outcomes, and
the helpers that build screens, lists and PIN checks.

Screens run inside the store writer's transaction (see menus.lending), so a helper
here may read and write through `ctx.conn`, and must never wait on anything else.
"""

from __future__ import annotations

import enum
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from menus import msisdn as phone
from menus.screens import BACK, MORE, Reply, clip, paginate
from menus.texts import Texts
from store import lending
from store.lending import Notice, User

State = dict[str, Any]
Handler = Callable[["Ctx", State, str], Reply]
LIST_CAP = 90  # list numbers stay below "98 More"
LOAN_STATES = ("requested", "approved", "funded", "active", "repaid", "declined", "expired",
               "failed")


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

def texts_for(ctx: Ctx, st: State) -> Texts:
    return ctx.texts.get(st.get("lang", "en")) or ctx.texts["en"]


def show(ctx: Ctx, st: State, screen: str, text: str, *, prefix: str = "") -> Reply:
    st["s"] = screen
    return Reply(clip(f"{prefix}\n{text}" if prefix else text), False)


def end(ctx: Ctx, st: State, text: str) -> Reply:
    st["s"] = "ended"
    return Reply(clip(text), True)


def locked_screen(ctx: Ctx, st: State, user: User) -> Reply:
    minutes = max(1, int(((user.locked_until or ctx.now) - ctx.now + 59) // 60))
    return end(ctx, st, texts_for(ctx, st).get("locked", minutes=minutes,
                                         attempts=ctx.settings.pin_attempts))


def who(name: str | None, msisdn: str, width: int | None = None) -> str:
    """How a villager is named on a screen: their registered name, else their number;
    cut to `width` for a list line."""
    shown = name or (phone.local(msisdn) if msisdn else "")
    return shown[:width].rstrip() if width else shown


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
    s = s.lstrip("0") or "0"
    if len(s) > 9:
        return None, "amount_too_large", {"max": f"{max_cents // 100:,}"}
    cents = int(s) * 100
    if cents < min_cents:
        return None, "amount_too_small", {"min": f"{min_cents // 100:,}"}
    if cents > max_cents:
        return None, "amount_too_large", {"max": f"{max_cents // 100:,}"}
    return cents, "", {}


def apply_pin(ctx: Ctx, st: State, user: User, retry: Callable[[str], Reply]) -> Reply | None:
    """None when the PIN was right; otherwise the screen to show (retry or locked)."""
    t = texts_for(ctx, st)
    result = ctx.pin
    if result is not None and result.shape_ok and result.match:
        lending.pin_succeeded(ctx.conn, user.id, ctx.now)
        return None
    tries = lending.pin_failed(ctx.conn, user.id, ctx.now, ctx.settings.pin_attempts,
                               ctx.settings.pin_lock_seconds)
    if tries <= 0:
        return end(ctx, st, t.get("locked_now", attempts=ctx.settings.pin_attempts,
                                   minutes=int(ctx.settings.pin_lock_seconds // 60)))
    return retry(t.get("wrong_pin", tries=tries))


# -- main menu -------------------------------------------------------------------------

def show_main(ctx: Ctx, st: State, prefix: str = "") -> Reply:
    t = texts_for(ctx, st)
    st["d"] = {}
    user = ctx.user
    waiting = lending.count_requests_to(ctx.conn, user.id, ctx.now) if user else 0
    text = t.get("main_menu", service=ctx.settings.service,
                 waiting=t.get("waiting_count", count=waiting) if waiting else "")
    return show(ctx, st, "main", text, prefix=prefix)


def page(ctx: Ctx, st: State, screen: str, header: str, items: list[str], ids: list[int],
          start: int, prefix: str = "") -> Reply:
    """A list screen; `prefix` (a "choose again" line) goes into the header, so the
    pager leaves room for it instead of it pushing the footer off the screen."""
    t = texts_for(ctx, st)
    if prefix:
        header = f"{prefix}\n{header}"
    page = paginate(header, items, start, t.get("more"), t.get("back"))
    st["d"].update(ids=ids, start=page.first, count=page.count)
    return show(ctx, st, screen, page.text)


def pick(st: State, text: str) -> int | None:
    """The loan id a list number names, if it is on the page shown."""
    if not text.isdigit():
        return None
    n = int(text)
    d = st["d"]
    first = d.get("start", 0)
    if first < n <= first + d.get("count", 0) and n <= len(d.get("ids", [])):
        return d["ids"][n - 1]
    return None


def list_input(ctx: Ctx, st: State, text: str, show_list: Callable[..., Reply],
                open_item: Callable[[Ctx, State, int], Reply]) -> Reply:
    """Input on a paged list: 0 home, 98 the next page, a shown number opens that item."""
    d = st["d"]
    if text == BACK:
        return show_main(ctx, st)
    if text == MORE and d.get("start", 0) + d.get("count", 0) < len(d.get("ids", [])):
        return show_list(ctx, st, d["start"] + d["count"])
    loan_id = pick(st, text)
    if loan_id is None:
        return show_list(ctx, st, d.get("start", 0),
                         prefix=texts_for(ctx, st).get("choose_again"))
    return open_item(ctx, st, loan_id)


def state_word(t: Texts, state: str) -> str:
    return t.get(f"state_{state}")
