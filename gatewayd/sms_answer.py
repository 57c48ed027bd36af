"""An SMS to the short code, answered and filed: the part every SMS channel shares.

The SMPP channel (gatewayd.smpp_jobs) and the modem channel (gatewayd.modem_channel)
each turn what they received into one whole text, then call `answer_and_store` inside
the store's transaction, so the message, the command it was taken for and the reply
queued for it commit together or not at all, whichever way the SMS came in.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from gatewayd import logs
from menus import msisdn as phone
from menus import sms_commands
from store import outbox
from store import sms as sms_store

log = logs.get("gatewayd.sms")


def answer_and_store(conn: sqlite3.Connection, ctx: Any, source: str, code: str, text: str,
                     parts: int, dedupe_key: str, complete: bool,
                     now: float) -> tuple[str, int | None]:
    """-> (command, reply outbox id or None). `ctx` is a smpp_jobs.JobContext (settings,
    texts, validity, reply_limiter)."""
    msisdn = phone.normalize(source)
    reply_id = None
    if msisdn is None:
        # Not a Kenyan phone (another short code, an alphanumeric sender): kept, not answered.
        command, kept, msisdn = "not_a_phone", sms_commands.mask_pins(text), source
    else:
        ans = sms_commands.answer(conn, msisdn, text, now, ctx.settings, ctx.texts)
        command, kept = ans.command, ans.kept_text
        if ctx.reply_limiter.allow(msisdn, time.monotonic()):
            reply_id = outbox.queue_sms(conn, ctx.settings.site, msisdn, ans.reply, now,
                                        ttl=ctx.validity)
        else:
            log.warning("sms_reply_rate_limited", msisdn=msisdn)
    sms_store.store_inbox(conn, ctx.settings.site, dedupe_key, msisdn, code, kept, parts,
                          complete, command, reply_id, now)
    return command, reply_id
