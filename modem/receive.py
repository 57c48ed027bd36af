"""SMS in, for ModemWorker: the +CMTI handler, the listing poll under it, the commit
and the delete from the SIM that waits for it.

A mixin, so that modem/worker.py stays about the port's life; it uses the worker's
`_call` (one command at a time, in a thread), its Inbox and its `_inbound` callback.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
import trio
from gsmmodem.exceptions import CommandError

from modem import at
from modem import pdu as P
from modem.config import ModemConfig
from modem.events import Location, Undecodable
from modem.inbox import Drop, Inbox, Ready
from modem.session import Session

log = structlog.get_logger("gatewayd.modem")

# How long a commit may take before the message is left on the SIM for next time.
COMMIT_GRACE = 10.0


class Receiving:
    name: str
    config: ModemConfig
    inbox: Inbox
    received: int
    _inbound: Callable[[Any, Any], Awaitable[None]]
    _inbound_lock: trio.Lock
    _deleted: OrderedDict[Location, int]
    _call: Callable[..., Awaitable[Any]]

    async def _urc_loop(self, s: Session) -> None:
        async for urc in s.urc_recv:
            if isinstance(urc, (at.Cmti, at.Cdsi)):
                try:
                    n, stored = await self._call(s, "AT+CMGR", s.modem.read_stored,
                                                 urc.memory, urc.index)
                except CommandError as e:   # already read and deleted by a listing
                    log.info("modem_read_failed", modem=self.name, index=urc.index, error=str(e))
                    continue
                if stored is not None:
                    await self._stored(s, Location(urc.memory, urc.index), stored, n)
            elif isinstance(urc, at.Cds):
                await self._stored(s, None, at.Stored(None, 0, urc.length, urc.pdu), 0)
            elif isinstance(urc, at.Cusd):
                log.info("modem_cusd", modem=self.name, status=urc.status)
            elif isinstance(urc, at.Ring):
                log.info("modem_ring", modem=self.name)
            else:
                log.debug("modem_urc", modem=self.name, line=getattr(urc, "line", ""))

    async def _list_loop(self, s: Session) -> None:
        """The safety net under +CMTI: lost notifications (two in one burst, one during
        another command, one while the port was closed) leave the SMS on the SIM."""
        while True:
            await self.check_stored(s)
            for ready in self.inbox.expire(trio.current_time()):
                async with self._inbound_lock:
                    await self._commit_sms(s, ready)
            wait = self.config.list_seconds
            deadline = self.inbox.next_deadline()
            if deadline is not None:
                wait = max(0.0, min(wait, deadline - trio.current_time()))
            await trio.sleep(wait)

    async def check_stored(self, s: Session) -> None:
        memories = [s.modem.sms_memory]
        if "SR" in s.modem.memories and "SR" not in memories:
            memories.append("SR")
        for memory in memories:
            try:
                n, listed = await self._call(s, "AT+CMGL", s.modem.list_stored, memory)
            except CommandError as e:
                log.warning("modem_list_failed", modem=self.name, memory=memory, error=str(e))
                continue
            for stored in listed:
                await self._stored(s, Location(memory, stored.index), stored, n)

    async def _stored(self, s: Session, loc: Location | None, stored: at.Stored,
                      read_no: int) -> None:
        async with self._inbound_lock:
            if loc is not None and self._deleted.get(loc, -1) > read_no:
                return           # read before we deleted it: handled already
            try:
                msg = P.decode(stored.pdu, stored.length)
            except P.PduError as e:
                log.warning("modem_pdu_undecodable", modem=self.name, error=str(e))
                await self._commit(s, Undecodable(self.name, stored.pdu, str(e), loc), loc)
                return
            if isinstance(msg, P.Deliver):
                for out in self.inbox.offer(loc, msg, trio.current_time()):
                    if isinstance(out, Drop):
                        log.info("modem_duplicate_dropped", modem=self.name, key=out.key)
                        await self._delete(s, out.location)
                    else:
                        await self._commit_sms(s, out)
            elif isinstance(msg, P.StatusReport):
                await self._commit(s, (msg, loc), loc)
            # An SMS-SUBMIT stored on the SIM is not ours to touch.

    async def _committed(self, item: Any) -> bool:
        """Hand `item` to the daemon; True once it says it is committed.

        Shielded for COMMIT_GRACE: a session ending or the daemon stopping does not cut
        a commit in half, and a store that hangs does not hold the modem forever. A
        commit that ran out of time counts as not done: the SIM keeps the message."""
        with trio.CancelScope(shield=True,
                              deadline=trio.current_time() + COMMIT_GRACE) as scope:
            try:
                await self._inbound(self, item)
            except Exception as e:  # noqa: BLE001 - whatever the store raised, keep it on the SIM
                log.error("modem_commit_failed", modem=self.name,
                          error=f"{type(e).__name__}: {e}")
                return False
        if scope.cancelled_caught:
            log.error("modem_commit_failed", modem=self.name,
                      error=f"no answer from the store in {COMMIT_GRACE:g} s")
            return False
        return True

    async def _commit(self, s: Session, item: Any, loc: Location | None) -> None:
        if await self._committed(item) and loc is not None:
            await self._delete(s, loc)

    async def _commit_sms(self, s: Session, ready: Ready) -> None:
        if not await self._committed(ready.sms):
            self.inbox.not_committed(ready)    # still on the SIM: offered again
            return
        self.inbox.committed(ready, trio.current_time())
        self.received += 1
        for loc in ready.sms.locations:
            await self._delete(s, loc)

    async def _delete(self, s: Session, loc: Location) -> None:
        try:
            n, _ = await self._call(s, "AT+CMGD", s.modem.delete_stored, loc.memory, loc.index)
            self._deleted[loc] = n
            self._deleted.move_to_end(loc)
            while len(self._deleted) > 1024:
                self._deleted.popitem(last=False)
        except CommandError as e:
            if getattr(e, "code", None) == 321:      # invalid index: already gone
                log.debug("modem_delete_gone", modem=self.name, index=loc.index)
            else:
                # Left on the SIM; the next listing finds it committed and tries again.
                log.warning("modem_delete_failed", modem=self.name, index=loc.index, error=str(e))
        self.inbox.deleted(loc)
