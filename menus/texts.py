"""Locale texts (menus/texts/<lang>.toml) and how amounts and dates are written."""

from __future__ import annotations

import string
import time
import tomllib
from importlib import resources
from typing import Any

LANGUAGES = ("en", "sw")


def ksh(cents: int) -> str:
    """Integer cents -> `Ksh 5,000` (or `Ksh 5,000.50`): villagers think in shillings."""
    sign = "-" if cents < 0 else ""
    whole, part = divmod(abs(int(cents)), 100)
    return f"{sign}Ksh {whole:,}" + (f".{part:02d}" if part else "")


def short_date(ts: float) -> str:
    return time.strftime("%d/%m", time.localtime(ts))


class Texts:
    """One locale. `get(key, **params)` formats; a missing key falls back to English,
    so a half-done translation still serves."""

    def __init__(self, lang: str, table: dict[str, str], fallback: "Texts | None" = None):
        self.lang = lang
        self.table = table
        self.fallback = fallback

    def get(self, key: str, **params: Any) -> str:
        template = self.table.get(key)
        if template is None:
            if self.fallback is None:
                raise KeyError(f"no text {key!r} in locale {self.lang!r}")
            return self.fallback.get(key, **params)
        return template.format(**params)

    def keys(self) -> set[str]:
        return set(self.table)


def placeholders(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def load_table(lang: str) -> dict[str, str]:
    raw = resources.files("menus").joinpath("texts", f"{lang}.toml").read_text("utf-8")
    return tomllib.loads(raw)


def load_all() -> dict[str, Texts]:
    en = Texts("en", load_table("en"))
    out = {"en": en}
    for lang in LANGUAGES:
        if lang != "en":
            out[lang] = Texts(lang, load_table(lang), fallback=en)
    return out
