"""Who the villager is: first-dial registration and My account (language, PIN)."""

from __future__ import annotations

from menus import gsm0338
from menus.flow import (BACK, Ctx, Handler, Reply, State, apply_pin, end, show, show_main,
                        texts_for)
from store import lending

def _reg_lang(ctx: Ctx, st: State, text: str) -> Reply:
    if text not in ("1", "2"):
        return show(ctx, st, "reg_lang", texts_for(ctx, st).get("choose_language_again"))
    st["lang"] = "en" if text == "1" else "sw"
    return show(ctx, st, "reg_name", texts_for(ctx, st).get("ask_name"))


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
        return show(ctx, st, "reg_name", texts_for(ctx, st).get("bad_name"))
    st["d"]["name"] = name
    return show(ctx, st, "reg_pin", texts_for(ctx, st).get("ask_new_pin"))


def _new_pin(ctx: Ctx, st: State, screen: str, confirm_screen: str) -> Reply:
    t = texts_for(ctx, st)
    r = ctx.pin
    if r is None or not r.shape_ok:
        return show(ctx, st, screen, t.get("bad_pin_shape"))
    if r.weak or not r.new_hash:
        return show(ctx, st, screen, t.get("weak_pin"))
    st["d"]["pin_hash"] = r.new_hash
    return show(ctx, st, confirm_screen, t.get("ask_pin_again"))


def _reg_pin(ctx: Ctx, st: State, text: str) -> Reply:
    return _new_pin(ctx, st, "reg_pin", "reg_pin2")


def _confirmed_pin(ctx: Ctx, st: State) -> str | None:
    """The new PIN's hash when the second entry matched the first; either way the first
    is forgotten, so a mismatch starts the pair again."""
    pin_hash = st["d"].pop("pin_hash", None)
    ok = ctx.pin is not None and ctx.pin.shape_ok and ctx.pin.match and pin_hash
    return pin_hash if ok else None


def _reg_pin2(ctx: Ctx, st: State, text: str) -> Reply:
    t = texts_for(ctx, st)
    pin_hash = _confirmed_pin(ctx, st)
    if pin_hash is None:
        return show(ctx, st, "reg_pin", t.get("pin_mismatch"))
    existing = ctx.user
    if existing is not None and existing.registered:  # registered meanwhile on another dialog
        return show_main(ctx, st)
    user = lending.register(ctx.conn, ctx.msisdn, st["d"].pop("name"), st["lang"], pin_hash,
                            ctx.now)
    ctx._user = user
    return show_main(ctx, st, prefix=t.get("registered", name=user.name))


def show_account(ctx: Ctx, st: State, prefix: str = "") -> Reply:
    return show(ctx, st, "account", texts_for(ctx, st).get("account_menu", name=ctx.user.name),
                 prefix=prefix)


def _account(ctx: Ctx, st: State, text: str) -> Reply:
    t = texts_for(ctx, st)
    if text == "1":
        return show(ctx, st, "account_lang", t.get("language_menu"))
    if text == "2":
        return show(ctx, st, "pin_old", t.get("ask_old_pin"))
    if text == BACK:
        return show_main(ctx, st)
    return show_account(ctx, st, prefix=t.get("choose_again"))


def _account_lang(ctx: Ctx, st: State, text: str) -> Reply:
    if text in ("1", "2"):
        st["lang"] = "en" if text == "1" else "sw"
        lending.set_language(ctx.conn, ctx.user.id, st["lang"], ctx.now)
        ctx.reload_user()
        return show_account(ctx, st, prefix=texts_for(ctx, st).get("language_set").strip())
    if text == BACK:
        return show_account(ctx, st)
    return show(ctx, st, "account_lang", texts_for(ctx, st).get("language_menu"),
                 prefix=texts_for(ctx, st).get("choose_again"))


def _pin_old(ctx: Ctx, st: State, text: str) -> Reply:
    wrong = apply_pin(ctx, st, ctx.user, lambda msg: show(ctx, st, "pin_old", msg))
    if wrong is not None:
        return wrong
    return show(ctx, st, "pin_new", texts_for(ctx, st).get("ask_new_pin_change"))


def _pin_new(ctx: Ctx, st: State, text: str) -> Reply:
    return _new_pin(ctx, st, "pin_new", "pin_new2")


def _pin_new2(ctx: Ctx, st: State, text: str) -> Reply:
    t = texts_for(ctx, st)
    pin_hash = _confirmed_pin(ctx, st)
    if pin_hash is None:
        return show(ctx, st, "pin_new", t.get("pin_mismatch"))
    lending.set_pin(ctx.conn, ctx.user.id, pin_hash, ctx.now)
    return end(ctx, st, t.get("pin_changed"))


HANDLERS: dict[str, Handler] = {
    "reg_lang": _reg_lang, "reg_name": _reg_name, "reg_pin": _reg_pin, "reg_pin2": _reg_pin2,
    "account": _account, "account_lang": _account_lang, "pin_old": _pin_old,
    "pin_new": _pin_new, "pin_new2": _pin_new2,
}
