"""Screens and the pager: what one USSD reply may hold.

182 GSM-7 septets is the most a USSD screen carries; the pager fills a screen with as
many list items as fit and keeps "98 More" / "0 Back" on it.
"""

from __future__ import annotations

from dataclasses import dataclass

from menus import gsm0338

SCREEN_LIMIT = 182
MORE = "98"
BACK = "0"
HOME = "00"


@dataclass(frozen=True)
class Reply:
    text: str
    end: bool

    def wire(self) -> str:
        """The aggregator style body: `CON …` keeps the dialog open, `END …` closes it."""
        return ("END " if self.end else "CON ") + self.text


def length(text: str) -> int:
    """Septets when the text is GSM-7; otherwise a UCS-2 screen holds ~80 characters,
    so count each as 182/80 to compare against the same limit."""
    if gsm0338.is_gsm7(text):
        return gsm0338.septet_length(text)
    return (len(text) * SCREEN_LIMIT + 79) // 80


def clip(text: str, limit: int = SCREEN_LIMIT) -> str:
    """Last resort for text we did not write (a name typed long ago); ours always fits."""
    if length(text) <= limit:
        return text
    while text and length(text + "..") > limit:
        text = text[:-1]
    return text + ".."


@dataclass(frozen=True)
class Page:
    text: str
    first: int          # index of the first item shown
    count: int          # items shown
    has_more: bool


def paginate(header: str, items: list[str], start: int, more_label: str, back_label: str,
             limit: int = SCREEN_LIMIT) -> Page:
    """Items from `start` on, as many as fit between the header and the footer.
    Every item is shown whole, even alone on a page: clip it before if it may be long."""
    back = f"{BACK} {back_label}"
    more = f"{MORE} {more_label}"
    lines = [header]
    shown = 0
    for i in range(start, len(items)):
        last = i == len(items) - 1
        footer = [back] if last else [more, back]
        candidate = "\n".join(lines + [items[i]] + footer)
        if length(candidate) > limit and shown:
            break
        lines.append(items[i])
        shown += 1
    has_more = start + shown < len(items)
    lines += ([more] if has_more else []) + [back]
    return Page("\n".join(lines), start, shown, has_more)
