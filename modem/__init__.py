"""GSM modems: the short code's SMS where there is no SMPP link.

python-gsmmodem-new's GsmModem (init, AT writes, error parsing) runs each modem in
worker threads; everything with a decision in it is sans-I/O and tested directly.

Sans-I/O (no trio, no clock: every time is an explicit `now`):

- `text`    GSM-7 or UCS-2, and where a long text is cut (never inside a pair)
- `pdu`     SMS-SUBMIT out; SMS-DELIVER, SMS-STATUS-REPORT in (why not gsmmodem.pdu: there)
- `at`      AT lines: +CMTI, +CDSI, +CDS, +CUSD, RING, garbage; answers to our commands
- `inbox`   multipart reassembly with a timeout, duplicate keys, TP-MR -> outbox matching
- `config`  one `[[modems]]` table -> ModemConfig, errors that name the key
- `events`  what comes out (SmsIn, StatusReport, Undecodable, Submitted, SendFailed)
- `view`    `gatewayd modems`: the operator's table from `pool.status()` rows

Trio shells: `serialmodem` (GsmModem with our port handling; blocking), `worker` (one
modem: open, watch, read, send, reopen with backoff), `pool` (all of them).

The daemon's side::

    pool = ModemPool(settings.modems, commit)      # list of dicts (or ModemConfig)
    await nursery.start(supervisor.run, "modems", pool.run)

    pool.submit(outbox_id, msisdn, text, deadline)   # an sms_outbox row; False if held
    pool.held                             # ids in the pool: don't offer or expire them
    pool.cancel(outbox_id)                # an operator cancelled it before it went out
    pool.remember(outbox_id, modem, references, msisdn)   # at start: TP-MRs from the store
    pool.status()                         # one dict per modem (see ModemWorker.health)
    view.table(pool.status(), pool.queued)  # what `gatewayd modems` prints
    pool.healthy()                        # some modem can send
    pool.queued                           # SMS waiting for a modem

`commit(event)` is an async callable the pool awaits for every event:

- SmsIn, StatusReport, Undecodable: commit it durably, then return. Only then is it
  deleted from the SIM (by index, AT+CMGD=<i>). Raising leaves it there; the next
  listing (every `list_seconds`) offers it again. Make the insert idempotent on
  SmsIn.key: a crash between commit and delete offers the same SMS again.
- Submitted: the SMSC took every part; store `references` (the TP-MRs, per part) and
  the modem's name with the outbox row: status reports name them.
- SendFailed: `final` False is one failed attempt (the SMS is queued again, on another
  modem when there is one); True means give up (permanent +CMS ERROR, max attempts,
  or `expired`: its deadline passed before any modem could send it).

A modem that hangs (no answer within `at_timeout`), answers only garbage, or
disappears (EOF on the port) is closed and reopened with backoff, under the same
name (udev: systemd/99-gatewayd-modems.rules), and what was lined up for it goes back
to the queue. A wrong SIM PIN is not retried (state "failed").
"""

from modem.config import ConfigError, ModemConfig
from modem.events import (
    Event,
    Location,
    OutgoingSms,
    SendFailed,
    SmsIn,
    StatusReport,
    Submitted,
    Undecodable,
)


def __getattr__(name: str):
    # Lazily: `import modem.pdu` (sans-I/O) must not pull in trio and the serial stack.
    if name == "ModemPool":
        from modem.pool import ModemPool
        return ModemPool
    raise AttributeError(f"module 'modem' has no attribute {name!r}")


__all__ = [
    "ConfigError", "Event", "Location", "ModemConfig", "ModemPool", "OutgoingSms",
    "SendFailed", "SmsIn", "StatusReport", "Submitted", "Undecodable",
]
