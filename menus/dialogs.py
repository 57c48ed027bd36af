"""USSD dialog bookkeeping, sans-I/O: which dialog a hop belongs to and what was typed.

A dialog is keyed by (channel, session id). Channels deliver input in one of two styles:

- ``cumulative`` (Africa's Talking and most HTTP aggregators): ``text`` holds every input
  so far joined by ``*``; the first hop's text is empty, or holds the inputs of a
  shortcut dial such as ``*383*1#``. Some networks send only the newest input even so,
  and aggregators retry a hop whose reply was late: both are recognised here.
- ``per_hop`` (SMPP ``deliver_sm``): each hop carries exactly one new input.

The engine never reads a clock: the caller passes ``now`` (monotonic seconds).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

# The network keeps a USSD session about 180 s; past that the phone has long given up.
DEFAULT_IDLE_SECONDS = 180.0


class TextMode(str, enum.Enum):
    CUMULATIVE = "cumulative"
    PER_HOP = "per_hop"


@dataclass(frozen=True)
class Hop:
    channel: str
    session_id: str
    msisdn: str
    service_code: str
    text: str


@dataclass
class Dialog:
    channel: str
    session_id: str
    msisdn: str
    service_code: str
    started_at: float
    last_seen: float
    # Everything the caller has sent so far, as the channel wrote it (cumulative mode
    # compares the next hop against it).
    text_seen: str = ""
    hops: int = 0
    # Owned by the application (the menus); JSON-able so it can be persisted.
    app_state: dict[str, Any] = field(default_factory=dict)
    last_reply: tuple[str, bool] | None = None  # (screen, ends dialog)
    # An ended dialog stays until it idles out, so that an aggregator's retry of the
    # final hop gets the same END instead of replaying every input as a new dialog
    # (which would, say, send a loan request twice).
    ended: bool = False

    @property
    def key(self) -> tuple[str, str]:
        return (self.channel, self.session_id)


class Kind(enum.Enum):
    START = "start"      # a new dialog; `inputs` may carry a shortcut dial's inputs
    CONTINUE = "continue"
    REPEAT = "repeat"    # the same hop again: answer `dialog.last_reply`, change nothing


@dataclass(frozen=True)
class Step:
    kind: Kind
    dialog: Dialog
    inputs: tuple[str, ...]


class Dialogs:
    def __init__(self, idle_seconds: float = DEFAULT_IDLE_SECONDS) -> None:
        self.idle_seconds = idle_seconds
        self._open: dict[tuple[str, str], Dialog] = {}

    def __len__(self) -> int:
        return len(self._open)

    def get(self, channel: str, session_id: str) -> Dialog | None:
        return self._open.get((channel, session_id))

    def restore(self, dialog: Dialog) -> None:
        """Put back a dialog read from the store after a restart."""
        self._open[dialog.key] = dialog

    def on_hop(self, hop: Hop, mode: TextMode, now: float) -> Step:
        key = (hop.channel, hop.session_id)
        dialog = self._open.get(key)
        if dialog is not None and (
            now - dialog.last_seen > self.idle_seconds or dialog.msisdn != hop.msisdn
        ):
            # An idle-expired id reused by the network, or (never seen, but cheap to
            # guard) another phone on the same id: neither may see the old dialog.
            del self._open[key]
            dialog = None
        text = hop.text or ""
        if dialog is None:
            dialog = Dialog(
                channel=hop.channel, session_id=hop.session_id, msisdn=hop.msisdn,
                service_code=hop.service_code, started_at=now, last_seen=now,
            )
            self._open[key] = dialog
            if mode is TextMode.CUMULATIVE:
                inputs = tuple(text.split("*")) if text else ()
            else:
                inputs = (text,) if text else ()
            dialog.text_seen = text
            dialog.hops = 1
            return Step(Kind.START, dialog, inputs)

        dialog.last_seen = now
        if dialog.ended:
            return Step(Kind.REPEAT, dialog, ())
        if mode is TextMode.CUMULATIVE:
            seen = dialog.text_seen
            if text == seen and dialog.last_reply is not None:
                return Step(Kind.REPEAT, dialog, ())
            if seen and text.startswith(seen + "*"):
                new = text[len(seen) + 1:]
            elif not seen:
                new = text
            else:
                # The network sent only the newest input (Vumi saw this on Airtel).
                new = text
            dialog.text_seen = text
        else:
            new = text
        dialog.hops += 1
        return Step(Kind.CONTINUE, dialog, (new,))

    def answered(self, dialog: Dialog, screen: str, end: bool) -> None:
        """Record the reply sent; an ending reply closes the dialog to further input."""
        dialog.last_reply = (screen, end)
        dialog.ended = dialog.ended or end

    def close(self, channel: str, session_id: str) -> Dialog | None:
        """The network says the session is over (end notification, abort)."""
        return self._open.pop((channel, session_id), None)

    def expire(self, now: float) -> list[Dialog]:
        """Drop dialogs idle past the limit; returns them so the caller can forget them too."""
        gone = [d for d in self._open.values() if now - d.last_seen > self.idle_seconds]
        for d in gone:
            del self._open[d.key]
        return gone
