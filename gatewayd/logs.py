"""JSON logs to stdout for journald, with phone numbers masked and never a PIN.

Masking happens in one processor on every event, so a log call cannot leak by
forgetting to mask. Use the sync methods (`log.info`): structlog's `ainfo` needs asyncio.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

import structlog

from menus.msisdn import mask

_MSISDN_KEYS = {"msisdn", "phone", "phone_number", "phoneNumber", "lender", "borrower", "to"}
_SECRET_KEYS = {"pin", "pin_hash", "text", "input", "password", "secret"}
# A Kenyan number anywhere in free text (an error message quoting a request, say).
_NUMBER = re.compile(r"(?<!\d)(?:\+?254|0)[17]\d{8}(?!\d)")


def _mask_value(value: Any) -> Any:
    if isinstance(value, str):
        return _NUMBER.sub(lambda m: mask(m.group(0)), value)
    return value


def scrub(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    for key in list(event):
        if key in _SECRET_KEYS:
            # USSD input can be a PIN; its length is all an operator needs.
            value = event[key]
            event[key] = f"<{len(value)} chars>" if isinstance(value, str) else "<hidden>"
        elif key in _MSISDN_KEYS and isinstance(event[key], str):
            event[key] = mask(event[key])
        else:
            event[key] = _mask_value(event[key])
    return event


def setup(level: str = "info", fmt: str = "json", stream: Any = None) -> None:
    renderer = (structlog.processors.JSONRenderer() if fmt == "json"
                else structlog.dev.ConsoleRenderer(colors=False))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            scrub,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            getattr(logging, level.upper(), logging.INFO)),
        # One write per line (PrintLogger writes the newline apart): the stdlib handler
        # below, fed from the modems' threads, must not land between a line and its end.
        logger_factory=structlog.WriteLoggerFactory(stream or sys.stdout),
        cache_logger_on_first_use=False,
    )
    # hypercorn and others log through the stdlib: keep them, in the same stream.
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        stream=stream or sys.stdout, format="%(name)s %(levelname)s %(message)s",
                        force=True)
    # httpx logs every request at INFO: the sync push loop's idle polls and the M-PESA
    # executor's queries would put a line of no news in the journal every few seconds;
    # the daemon's own sync_* and mpesa_* events say what happened.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))


def get(name: str = "gatewayd") -> Any:
    return structlog.get_logger(name)
