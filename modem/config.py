"""One modem's settings, from a `[[modems]]` table, checked with errors that name the key.

The daemon's config loader hands each table over as a dict; `parse` turns the list
into ModemConfig objects or raises ConfigError("modems[1].baud: …").
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

BAUD_RATES = (9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600)


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class ModemConfig:
    port: str                        # /dev/gsmmodem-<USB serial> (udev), or /dev/ttyUSB2
    name: str = ""                   # what status and logs call it; default: port's name
    baud: int = 115200
    pin: str | None = None           # SIM PIN; never logged
    smsc: str | None = None          # "+254722500029"; None keeps the SIM's own
    # Hardware flow control (RTS/CTS). Off by default: USB modems ignore it, and a
    # serial cable without the lines wired would block every write (python-gsmmodem-new
    # turns it on unconditionally).
    rtscts: bool = False
    at_timeout: float = 10.0         # an answer later than this is a hung modem
    send_timeout: float = 60.0       # AT+CMGS waits for the network: seconds, not ms
    poll_seconds: float = 30.0       # signal, registration, operator
    list_seconds: float = 15.0       # AT+CMGL for SMS whose +CMTI was lost
    cnmi: str = "2,1,0,2,0"          # +CMTI for SMS, +CDSI for stored status reports
    validity_hours: float = 24.0     # TP-VP of what we send: stale news is worse than none

    def __repr__(self) -> str:       # keeps the PIN out of logs and tracebacks
        pin = "'****'" if self.pin else "None"
        return (f"ModemConfig(name={self.name!r}, port={self.port!r}, baud={self.baud}, "
                f"pin={pin}, smsc={self.smsc!r}, rtscts={self.rtscts})")


_KNOWN = {f.name for f in fields(ModemConfig)}
_NUMBER = re.compile(r"^\+?\d{3,20}$")


def _check(where: str, raw: Mapping[str, Any]) -> ModemConfig:
    unknown = sorted(set(raw) - _KNOWN)
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown key (known: {', '.join(sorted(_KNOWN))})")
    if not isinstance(raw.get("port"), str) or not raw["port"]:
        raise ConfigError(f"{where}.port: required, a device path such as /dev/gsmmodem-ABC123")
    values = dict(raw)
    values.setdefault("name", os.path.basename(raw["port"]) or raw["port"])

    def want(key: str, ok: Any, why: str) -> None:
        v = values.get(key)
        if v is not None and not ok(v):
            raise ConfigError(f"{where}.{key}: {why} (got {v!r})")

    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0

    want("name", lambda v: isinstance(v, str) and re.fullmatch(r"[\w.:-]{1,40}", v),
         "letters, digits, '.', ':', '-', '_', at most 40")
    want("baud", lambda v: not isinstance(v, bool) and v in BAUD_RATES, f"one of {BAUD_RATES}")
    pin = values.get("pin")
    if pin is not None and not (isinstance(pin, str) and pin.isdigit() and 4 <= len(pin) <= 8):
        raise ConfigError(f"{where}.pin: 4 to 8 digits, as a string")   # never echo a PIN
    want("smsc", lambda v: isinstance(v, str) and _NUMBER.match(v), "a number such as +254722500029")
    want("rtscts", lambda v: isinstance(v, bool), "true or false")
    for key in ("at_timeout", "send_timeout", "poll_seconds", "list_seconds", "validity_hours"):
        unit = "hours" if key == "validity_hours" else "seconds"
        want(key, number, f"a positive number of {unit}")
        if key in values:
            values[key] = float(values[key])
    want("cnmi", lambda v: isinstance(v, str) and re.fullmatch(r"\d(,\d){1,4}", v),
         "AT+CNMI parameters such as 2,1,0,2,0")
    return ModemConfig(**values)


def parse(tables: Sequence[Mapping[str, Any] | ModemConfig], key: str = "modems") -> list[ModemConfig]:
    out: list[ModemConfig] = []
    for i, raw in enumerate(tables):
        cfg = raw if isinstance(raw, ModemConfig) else _check(f"{key}[{i}]", raw)
        out.append(cfg)
    names = [c.name for c in out]
    ports = [os.path.realpath(c.port) for c in out]
    for i, cfg in enumerate(out):
        if names.index(cfg.name) != i:
            raise ConfigError(f"{key}[{i}].name: {cfg.name!r} is used twice")
        if ports.index(ports[i]) != i:
            raise ConfigError(f"{key}[{i}].port: {cfg.port} is the same device as "
                              f"{key}[{ports.index(ports[i])}]")
    return out
