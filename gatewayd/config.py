"""The one TOML config file: schema, embedded defaults, validation.

The schema below *is* the embedded default: `gatewayd run` with no `--config` uses it
as is (HTTP on 127.0.0.1:8080, state under ./var/). A file only overrides keys. Every
error names the key, and the line where the file sets it, and stops the daemon before
it touches anything.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class ConfigError(Exception):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Key:
    type: type | tuple[type, ...]
    default: Any
    doc: str
    check: Callable[[Any], str | None] | None = None


def _range(lo: float, hi: float) -> Callable[[Any], str | None]:
    return lambda v: None if lo <= v <= hi else f"must be between {lo} and {hi}"


def _choice(*options: str) -> Callable[[Any], str | None]:
    return lambda v: None if v in options else f"must be one of {', '.join(options)}"


def _listen(v: str) -> str | None:
    host, sep, port = v.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        return "must be HOST:PORT, like 127.0.0.1:8080"
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        if host != "localhost":
            return "host must be an IP address or localhost"
    return None


def _networks(v: list) -> str | None:
    try:
        for item in v:
            ipaddress.ip_network(item, strict=False)
    except (TypeError, ValueError):
        return "must be a list of addresses or networks, like [\"127.0.0.1/32\", \"196.201.214.0/24\"]"
    return None


def _service_codes(v: list) -> str | None:
    if not v or not all(isinstance(c, str) and re.fullmatch(r"\*\d+(\*\d+)*#", c) for c in v):
        return "must be a non-empty list of codes like \"*383#\""
    return None


def _site_id(v: str) -> str | None:
    return None if re.fullmatch(r"[a-z0-9][a-z0-9-]{0,31}", v) else \
        "must be 1-32 characters of a-z, 0-9 and '-'"


def _service_name(v: str) -> str | None:
    from menus.gsm0338 import is_gsm7
    if not 1 <= len(v) <= 20:
        return "must be 1-20 characters"
    # One character outside GSM-7 would turn every main menu into UCS-2 (80 characters).
    return None if is_gsm7(v) else "must use only GSM 03.38 (GSM-7) characters"


def _url_or_empty(v: str) -> str | None:
    if not v:
        return None
    return None if re.fullmatch(r"https?://[^\s/]+(/\S*)?", v) else \
        "must be an http:// or https:// URL, or empty"


def _nonempty(v: str) -> str | None:
    return None if v.strip() else "must not be empty"


def _c_string(limit: int, *, required: bool = False) -> Callable[[Any], str | None]:
    """SMPP C-octet strings have a fixed maximum (3.4 §5.2); longer ones are refused by
    the SMSC with a bind error that does not say which field was too long."""
    def check(v: str) -> str | None:
        if required and not v.strip():
            return "must not be empty"
        if len(v) > limit or not v.isascii() or any(c.isspace() for c in v):
            return f"must be at most {limit} ASCII characters without spaces"
        return None
    return check


def _shortcode(v: str) -> str | None:
    return None if not v or re.fullmatch(r"[0-9]{5,7}", v) else \
        "must be 5-7 digits, or empty"


def _ussd_profile(v: str) -> str | None:
    from gatewayd.smpp.ussd import PROFILES
    return None if v in PROFILES else f"must be one of {', '.join(PROFILES)}"


SCHEMA: dict[str, dict[str, Key]] = {
    "site": {
        "id": Key(str, "site-1", "This box's id upstream; unique per site, never changed.", _site_id),
        "name": Key(str, "Village box", "A name for operators.", _nonempty),
    },
    "store": {
        "state_dir": Key(str, "var", "Where the database, PIN key and admin socket live. "
                         "Relative paths are from the working directory.", _nonempty),
        "synchronous": Key(str, "full", "SQLite synchronous mode: full or extra. Money is "
                           "involved: 'normal' is not offered.", _choice("full", "extra")),
        "readers": Key(int, 4, "Read-only connections for reads off the writer.", _range(1, 32)),
    },
    "http": {
        "listen": Key(str, "127.0.0.1:8080", "Where the USSD callback, /healthz listen.", _listen),
        "allow_from": Key(list, ["127.0.0.0/8", "::1/128"], "Client networks allowed to post "
                          "hops; others get 403. Add your aggregator's addresses: a USSD "
                          "callback trusts the phone number it is given.", _networks),
        "max_body_bytes": Key(int, 8192, "Larger requests get 413.", _range(512, 1 << 20)),
        "graceful_seconds": Key(float, 10.0, "On SIGTERM, how long in-flight hops may take.",
                                _range(0, 60)),
    },
    "ussd": {
        "service_codes": Key(list, ["*383#"], "Codes routed to the lending service.",
                             _service_codes),
        "session_idle_seconds": Key(float, 180.0, "A dialog idle this long is forgotten (the "
                                    "network drops it at about 180 s).", _range(30, 3600)),
        "text_mode": Key(str, "cumulative", "How the HTTP aggregator sends input: cumulative "
                         "('1*2*3', Africa's Talking) or per_hop.", _choice("cumulative", "per_hop")),
    },
    "rate_limit": {
        "hops_per_minute": Key(int, 40, "Sustained hops one phone may make.", _range(1, 10000)),
        "burst": Key(int, 15, "Hops one phone may make at once before the limit bites.",
                     _range(1, 10000)),
    },
    "lending": {
        "service_name": Key(str, "Mkopo Jirani", "The name on the main menu.", _service_name),
        "min_amount": Key(int, 10, "Smallest loan, whole Ksh.", _range(1, 250_000)),
        "max_amount": Key(int, 70_000, "Largest loan, whole Ksh (M-PESA: 250,000 a "
                          "transaction).", _range(1, 250_000)),
        "request_ttl_hours": Key(float, 72.0, "A request not answered by then expires.",
                                 _range(1, 24 * 30)),
        "max_open_requests": Key(int, 5, "Requests one borrower may have waiting.",
                                 _range(1, 50)),
        "default_language": Key(str, "en", "Language before a villager chooses.",
                                _choice("en", "sw")),
    },
    "security": {
        "pin_attempts": Key(int, 3, "Wrong PINs in a row before the account locks.",
                            _range(1, 10)),
        "pin_lock_minutes": Key(float, 30.0, "How long a lock lasts.", _range(1, 7 * 24 * 60)),
        "pin_hash_log2_n": Key(int, 12, "scrypt cost (2^N); 12 is about 6 ms and 4 MiB here. "
                               "Memory is 2^(N+10) bytes per hash in flight.", _range(10, 16)),
    },
    "smpp": {
        "enabled": Key(bool, False, "Bind to the operator's SMSC for SMS and USSD. Off by "
                       "default: the box then serves USSD over HTTP only."),
        "host": Key(str, "127.0.0.1", "The SMSC's address (IP or host name).",
                    _c_string(253, required=True)),
        "port": Key(int, 2775, "The SMSC's port.", _range(1, 65535)),
        "system_id": Key(str, "", "Bind user name from the operator (at most 15 characters).",
                         _c_string(15)),
        "password": Key(str, "", "Bind password (at most 8 characters).", _c_string(8)),
        "system_type": Key(str, "", "Often empty; some operators ask for one.", _c_string(12)),
        "bind_mode": Key(str, "transceiver", "transceiver (one bind both ways) or pair (a "
                         "transmitter and a receiver bind).", _choice("transceiver", "pair")),
        "window": Key(int, 10, "submit_sm in flight at once, unanswered.", _range(1, 1000)),
        "submit_rate": Key(float, 20.0, "submit_sm per second at most (the operator's TPS).",
                           _range(0.1, 10000)),
        "throttle_pause_seconds": Key(float, 1.0, "First pause of every message after "
                                      "ESME_RTHROTTLED or ESME_RMSGQFUL; doubles while the "
                                      "SMSC keeps refusing.", _range(0.01, 60)),
        "enquire_link_seconds": Key(float, 30.0, "Probe an idle bind this often.",
                                    _range(1, 600)),
        "response_timeout_seconds": Key(float, 10.0, "How long a request may go unanswered.",
                                        _range(0.5, 120)),
        "reconnect_max_seconds": Key(float, 60.0, "Longest wait between reconnects (the "
                                     "wait doubles from 1 s, jittered).", _range(0.1, 3600)),
        "bad_credentials_retry_seconds": Key(float, 300.0, "Wait after a bind refused for bad "
                                             "credentials.", _range(0.1, 86400)),
        "source_addr": Key(str, "383", "The short code SMS come from.",
                           _c_string(20, required=True)),
        "source_addr_ton": Key(int, 0, "Its type of number (0 unknown, 3 network specific, "
                               "5 alphanumeric).", _range(0, 6)),
        "source_addr_npi": Key(int, 0, "Its numbering plan (0 unknown, 1 E.164).",
                               _range(0, 18)),
        "long_sms": Key(str, "udh", "Long SMS as concatenated parts (udh) or one "
                        "message_payload the SMSC splits.", _choice("udh", "message_payload")),
        "sms_validity_hours": Key(float, 24.0, "An SMS not sent this long after it was queued "
                                  "expires instead.", _range(0.05, 168)),
        "submit_id_format": Key(str, "auto", "How submit_sm_resp spells message ids: auto, "
                                "hex, dec or text.", _choice("auto", "hex", "dec", "text")),
        "receipt_id_format": Key(str, "auto", "How delivery receipts spell them: auto, hex, "
                                 "dec or text.", _choice("auto", "hex", "dec", "text")),
        "ussd_profile": Key(str, "standard", "The USSD gateway's dialect.", _ussd_profile),
        "mo_dedupe_seconds": Key(float, 600.0, "A one-part SMS the same as one received this "
                                 "recently is the SMSC's resend and is dropped.",
                                 _range(0, 86400)),
        "mo_concat_timeout_seconds": Key(float, 120.0, "Parts of a long SMS still missing "
                                         "after this are given up.", _range(5, 3600)),
    },
    "modem_pool": {
        # Per-modem settings are [[modems]] tables (modem/config.py checks them).
        "max_attempts": Key(int, 5, "Sends of one SMS (across all modems) before it is "
                            "given up as failed.", _range(1, 100)),
        "backoff_min_seconds": Key(float, 1.0, "First wait before a dead modem is reopened "
                                   "(doubles each time).", _range(0.05, 600)),
        "backoff_max_seconds": Key(float, 60.0, "Longest wait between reopens.",
                                   _range(0.1, 3600)),
        "reassembly_timeout_seconds": Key(float, 300.0, "Parts of a long SMS still missing "
                                          "after this: the rest is answered as it is.",
                                          _range(5, 86400)),
        "sms_validity_hours": Key(float, 24.0, "An SMS the modems have not sent this long "
                                  "after it was queued expires instead.", _range(0.05, 168)),
        "takeover_after_seconds": Key(float, 60.0, "With SMPP enabled: the modems send while "
                                      "the bind has been down this long, and hand back when it "
                                      "binds; 0: never (the modems only receive).",
                                      _range(0, 86400)),
        "mo_dedupe_seconds": Key(float, 86400.0, "An SMS whose key (sender, time stamp, "
                                 "text) was committed this recently is the modem's repeat "
                                 "and is dropped.", _range(0, 30 * 86400)),
    },
    "sync": {
        "enabled": Key(bool, False, "Replicate the change log upstream and take back M-PESA "
                       "results: serves the pull API at /sync and, with upstream_url, pushes."),
        "upstream_url": Key(str, "", "The upstream's base URL for push (empty: pull only, "
                            "the upstream fetches from /sync).", _url_or_empty),
        "key_file": Key(str, "", "This site's key (64 hex characters), provisioned by the "
                        "upstream; empty means <state_dir>/sync.key."),
        "idle_poll_seconds": Key(float, 60.0, "With nothing to push, how often to ask for "
                                 "M-PESA results.", _range(0.1, 86400)),
        "max_batch_bytes": Key(int, 262144, "Cap on one compressed batch.",
                               _range(4096, 1 << 20)),
        "max_batch_records": Key(int, 20000, "Cap on the records in one batch.",
                                 _range(1, 100000)),
        "zstd_level": Key(int, 19, "zstd level for batches (19: ~12 B a change; 9 needs less "
                          "memory for ~20% more bytes).", _range(1, 22)),
        "retry_base_seconds": Key(float, 5.0, "After a failed push or probe, wait a random "
                                  "time up to this, doubling with each failure (full "
                                  "jitter: boxes that lost backhaul together do not call "
                                  "together when it returns).", _range(0.05, 3600)),
        "retry_max_seconds": Key(float, 900.0, "The longest such wait.", _range(0.1, 86400)),
        "window_seconds": Key(int, 300, "How far request timestamps may be from our clock.",
                              _range(30, 3600)),
    },
    "mpesa": {
        "mode": Key(str, "upstream", "Who calls Daraja: upstream (actions ride the sync "
                    "batches; the upstream executes them) or direct (this box calls Daraja "
                    "itself when backhaul is up; needs [sync] for the callbacks the upstream "
                    "relays).", _choice("upstream", "direct")),
        "daraja_url": Key(str, "", "Daraja's base URL, like https://sandbox.safaricom.co.ke "
                          "or https://api.safaricom.co.ke (direct mode).", _url_or_empty),
        "credentials_file": Key(str, "", "TOML file holding consumer_key, consumer_secret, "
                                "passkey and security_credential, readable by gatewayd "
                                "alone; empty means <state_dir>/daraja.toml (direct mode)."),
        "shortcode": Key(str, "", "BusinessShortCode (paybill or till) STK pushes collect "
                         "to (direct mode).", _shortcode),
        "transaction_type": Key(str, "CustomerPayBillOnline", "STK push TransactionType: "
                                "CustomerPayBillOnline (paybill) or CustomerBuyGoodsOnline "
                                "(till).", _choice("CustomerPayBillOnline",
                                                   "CustomerBuyGoodsOnline")),
        "b2c_shortcode": Key(str, "", "The B2C shortcode payouts come from (PartyA); empty: "
                             "the same as shortcode.", _shortcode),
        "initiator_name": Key(str, "", "The B2C API operator's user name (direct mode).",
                              _c_string(64)),
        "command_id": Key(str, "BusinessPayment", "B2C CommandID.",
                          _choice("BusinessPayment", "SalaryPayment", "PromotionPayment")),
        "callback_base_url": Key(str, "", "The upstream's public relay, where Daraja posts "
                                 "results: {this}/daraja/stk/<site>/<key>/<token> and the "
                                 "like (docs/sync-protocol.md section 11; direct mode: the "
                                 "box has no public address).", _url_or_empty),
        "first_query_seconds": Key(float, 20.0, "How long after an STK push the box first "
                                   "asks Daraja how it went (the villager needs time to "
                                   "type the PIN).", _range(0, 600)),
        "query_retry_seconds": Key(float, 15.0, "Then asks again after this, doubling up "
                                   "to 5 minutes.", _range(0.01, 600)),
        "status_after_seconds": Key(float, 600.0, "How long a payout (B2C) waits for "
                                    "Daraja's result before the box asks for it with the "
                                    "Transaction Status query; then again, doubling up to 6 "
                                    "hours. The payout is never sent twice.",
                                    _range(0.01, 86400)),
    },
    "log": {
        "level": Key(str, "info", "debug, info, warning or error.",
                     _choice("debug", "info", "warning", "error")),
        "format": Key(str, "json", "json (for journald) or console (for a person).",
                      _choice("json", "console")),
    },
}


class Section:
    def __init__(self, name: str, values: dict[str, Any]) -> None:
        self._name = name
        self.__dict__.update(values)

    def __repr__(self) -> str:
        fields = {k: v for k, v in self.__dict__.items() if not k.startswith("_")}
        return f"Section({self._name}, {fields})"


class Config:
    """Attribute access by section: `cfg.http.listen`."""

    def __init__(self, values: dict[str, dict[str, Any]], source: str | None,
                 modems: list[Any] | None = None) -> None:
        self.source = source
        self.values = values
        # [[modems]]: an array of tables, kept apart from `values` (sections of keys);
        # modem.config.ModemConfig objects, checked.
        self.modems = list(modems or [])
        for section, keys in values.items():
            setattr(self, section, Section(section, keys))

    def path(self, *parts: str) -> str:
        return os.path.join(self.store.state_dir, *parts)

    @property
    def db_path(self) -> str:
        return self.path("gatewayd.db")

    @property
    def admin_socket(self) -> str:
        return self.path("admin.sock")

    @property
    def sync_key_path(self) -> str:
        return self.sync.key_file or self.path("sync.key")

    @property
    def mpesa_credentials_path(self) -> str:
        return self.mpesa.credentials_file or self.path("daraja.toml")

    @property
    def pin_key_path(self) -> str:
        return self.path("pin.key")


def defaults() -> dict[str, dict[str, Any]]:
    return {s: {k: (list(key.default) if isinstance(key.default, list) else key.default)
                for k, key in keys.items()} for s, keys in SCHEMA.items()}


def _line_of(text: str, section: str, key: str | None) -> int | None:
    """Best effort: the line that sets `section.key` (tomllib keeps no positions)."""
    current = None
    for n, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if s.startswith("[["):      # an array table ([[modems]]) ends the section
            current = None
            continue
        m = re.match(r"^\[\s*([A-Za-z0-9_.-]+)\s*\]", s)
        if m:
            current = m.group(1)
            if key is None and current == section:
                return n
            continue
        if key is not None and current == section and re.match(
                rf"^\"?{re.escape(key)}\"?\s*=", s):
            return n
    return None


def _type_name(t: type | tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
             list: "a list"}
    return names.get(t, str(t)) if isinstance(t, type) else " or ".join(_type_name(x) for x in t)


def validate(data: dict[str, Any], text: str = "", source: str = "<config>") -> Config:
    problems: list[str] = []
    values = defaults()

    def where(section: str, key: str | None) -> str:
        line = _line_of(text, section, key) if text else None
        name = f"{section}.{key}" if key else section
        return f"{source}:{line}: {name}" if line else f"{source}: {name}"

    modems: list[Any] = []
    for section, table in data.items():
        if section == "modems":
            modems = _modems(table, text, source, problems)
            continue
        if section not in SCHEMA:
            problems.append(f"{where(section, None)}: unknown section "
                            f"(known: {', '.join(SCHEMA)})")
            continue
        if not isinstance(table, dict):
            problems.append(f"{where(section, None)}: must be a table")
            continue
        for key, value in table.items():
            spec = SCHEMA[section].get(key)
            if spec is None:
                problems.append(f"{where(section, key)}: unknown key "
                                f"(known: {', '.join(SCHEMA[section])})")
                continue
            if spec.type is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, spec.type) or (isinstance(value, bool) and spec.type is not bool):
                problems.append(f"{where(section, key)}: must be {_type_name(spec.type)}, "
                                f"not {value!r}")
                continue
            if spec.check and (msg := spec.check(value)):
                problems.append(f"{where(section, key)}: {msg} (got {value!r})")
                continue
            values[section][key] = value
    if not problems and values["lending"]["min_amount"] > values["lending"]["max_amount"]:
        problems.append(f"{where('lending', 'min_amount')}: must not exceed lending.max_amount")
    if not problems and values["smpp"]["enabled"] and not values["smpp"]["system_id"]:
        problems.append(f"{where('smpp', 'enabled')}: needs smpp.system_id, the bind user "
                        "name from the operator")
    if not problems:
        problems += _mpesa_direct(values, where)
    if problems:
        raise ConfigError(problems)
    return Config(values, source, modems)


def _mpesa_direct(values: dict[str, dict[str, Any]], where: Callable) -> list[str]:
    """What direct mode cannot run without, each named by its key. The secrets are in
    their own file, read at start (gatewayd.mpesa), never here."""
    m = values["mpesa"]
    if m["mode"] != "direct":
        return []
    needs = {"daraja_url": "Daraja's base URL",
             "shortcode": "the BusinessShortCode STK pushes collect to",
             "initiator_name": "the B2C initiator name",
             "callback_base_url": "the upstream's public relay for Daraja's callbacks"}
    problems = [f"{where('mpesa', k)}: needed when mpesa.mode is \"direct\" ({why})"
                for k, why in needs.items() if not m[k]]
    if not values["sync"]["enabled"]:
        # B2C results (and any STK result whose answer was lost) reach the box only as
        # callbacks the upstream relays over sync.
        problems.append(f"{where('mpesa', 'mode')}: \"direct\" needs sync.enabled = true "
                        "(Daraja's callbacks come back through the upstream)")
    return problems


def _modems(tables: Any, text: str, source: str, problems: list[str]) -> list[Any]:
    """[[modems]] tables -> ModemConfig list; a problem names modems[i].key and its line."""
    from modem.config import ConfigError as ModemConfigError, parse
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        problems.append(f"{source}: modems: must be [[modems]] tables")
        return []
    try:
        return parse(tables)
    except ModemConfigError as e:
        msg = str(e)
        m = re.match(r"modems\[(\d+)\]\.(\w+)", msg)
        line = _modem_line(text, int(m.group(1)), m.group(2)) if m and text else None
        problems.append(f"{source}:{line}: {msg}" if line else f"{source}: {msg}")
        return []


def _modem_line(text: str, index: int, key: str) -> int | None:
    """The line of `key` in the index-th [[modems]] table, or of its header."""
    seen, header = -1, None
    for n, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if s.startswith("["):
            if re.match(r"^\[\[\s*modems\s*\]\]", s):
                seen += 1
                if seen == index:
                    header = n
                    continue
            if header is not None:
                break
        elif header is not None and re.match(rf"^\"?{re.escape(key)}\"?\s*=", s):
            return n
    return header


def load(path: str | None) -> Config:
    """The file at `path`, or the embedded default when `path` is None."""
    if path is None:
        return Config(defaults(), None)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError([f"{path}: cannot read: {e.strerror}"]) from None
    text = raw.decode("utf-8", errors="replace")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"{path}: not valid TOML: {e}"]) from None
    return validate(data, text, path)
