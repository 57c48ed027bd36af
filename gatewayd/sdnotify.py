"""systemd notification (`Type=notify`): READY, STATUS, STOPPING and the watchdog.

Spoken directly over $NOTIFY_SOCKET (a datagram socket; '@' means the abstract
namespace): the protocol is one line per field, and a library would add nothing.
WATCHDOG=1 is sent from a task on the event loop itself, so a stalled loop stops the
pings and systemd restarts the daemon.
"""

from __future__ import annotations

import os
import socket

import trio

from gatewayd import logs

log = logs.get("gatewayd.sdnotify")


class Notifier:
    def __init__(self, env: dict[str, str] | None = None) -> None:
        env = dict(os.environ) if env is None else env
        addr = env.get("NOTIFY_SOCKET", "")
        self.address = ("\0" + addr[1:]) if addr.startswith("@") else addr
        self.watchdog_seconds: float | None = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_seconds = int(usec) / 1_000_000

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    async def notify(self, *fields: str) -> None:
        if not self.address:
            return
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            await sock.sendto("\n".join(fields).encode("utf-8"), self.address)
        except OSError as e:
            log.warning("sd_notify_failed", error=str(e))
        finally:
            sock.close()

    async def watchdog_loop(self) -> None:
        if not self.watchdog_seconds:
            return
        # Half the timeout, as sd_watchdog_enabled(3) advises.
        while True:
            await self.notify("WATCHDOG=1")
            await trio.sleep(self.watchdog_seconds / 2)
