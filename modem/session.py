"""One open port, and what the modem can fail with. Shared by modem.worker and
modem.receive."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from modem.serialmodem import SerialModem


class ModemDown(Exception):
    """The modem cannot take commands now (closed, hung, unplugged)."""


class NotSent(ModemDown):
    """The modem was down before the SMS reached it: no attempt was made."""


class SendError(Exception):
    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


@dataclass
class Session:
    modem: SerialModem
    urc_send: trio.MemorySendChannel
    urc_recv: trio.MemoryReceiveChannel
    on_fail: Callable[[str], None]
    broken: trio.Event = field(default_factory=trio.Event)
    reason: str = ""
    # Set by the command thread that saw the hang or the EOF, before the limiter lets
    # the next one in: that one must not start on this port (an SMS sent on a port
    # about to be closed would be sent again on the next one).
    dead: bool = False

    def fail(self, reason: str) -> None:
        """The port is no good any more. Said at once (the worker stops taking SMS and
        the pool takes back what was lined up for it), closed and reopened after."""
        self.dead = True
        if not self.broken.is_set():
            self.reason = reason
            self.broken.set()
            self.on_fail(reason)


class Stale(Exception):
    """A command that was waiting its turn when its port died: it never started."""
