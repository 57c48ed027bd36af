"""AT lines from a GSM modem (3GPP TS 27.005 / 27.007): what each one is. Sans-I/O.

Two kinds of line come up the serial port: the answer to the command in progress,
and unsolicited result codes (URCs) that arrive whenever the network has news —
+CMTI (an SMS was stored), +CDSI (a status report was stored), +CDS (a status report
given directly, its PDU on the next line), +CUSD, RING. A URC can land between the
lines of another command's answer (Kannel and Gammu see +CMTI inside AT+CMGS
traffic), so answers are filtered for URCs before they are parsed (`split_urcs`).

Lines that are neither are classified, never raised on: a modem that prints noise
after a brown-out must not take the channel down. `UrcParser` keeps the one piece of
state the format needs (the PDU line after +CDS).
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Cmti:
    """+CMTI: an SMS-DELIVER was stored at `memory`, `index`."""
    memory: str
    index: int


@dataclass(frozen=True)
class Cdsi:
    """+CDSI: a status report was stored (usually in "SR")."""
    memory: str
    index: int


@dataclass(frozen=True)
class Cds:
    """+CDS: a status report given directly, not stored: nothing to delete."""
    length: int
    pdu: str


@dataclass(frozen=True)
class Cusd:
    """+CUSD: a USSD answer or a network release. `+CUSD: 2` (no text, no quotes) is
    the network ending a session; python-gsmmodem-new's parser dies on it."""
    status: int
    text: str | None


@dataclass(frozen=True)
class Ring:
    line: str


@dataclass(frozen=True)
class Info:
    """A status line some modems send on their own (Huawei ^RSSI, ^BOOT, +CREG: n…)."""
    line: str


@dataclass(frozen=True)
class Garbage:
    """A line that is no AT syntax: line noise, a baud-rate mismatch, a half line."""
    line: str


Urc = Cmti | Cdsi | Cds | Cusd | Ring | Info | Garbage

_CMTI = re.compile(r'^\+CMTI:\s*"?([A-Za-z]{2})"?\s*,\s*(\d+)\s*$')
_CDSI = re.compile(r'^\+CDSI:\s*"?([A-Za-z]{2})"?\s*,\s*(\d+)\s*$')
_CDS = re.compile(r'^\+CDS:\s*(\d+)\s*$')
_CUSD = re.compile(r'^\+CUSD:\s*(\d)\s*(?:,\s*"?(.*?)"?\s*(?:,\s*(\d+))?)?\s*$', re.DOTALL)
_HEX = re.compile(r"^[0-9A-Fa-f]+$")
# What a well-formed line looks like: "+NAME: …", "^NAME…", "*NAME…" or one word.
_WELL_FORMED = re.compile(r"^(?:[+^*$%#][A-Z0-9]+[:\s]?.*|[A-Z][A-Z ]*)$")
_RING = ("RING", "+CRING", "+CLIP", "NO CARRIER")


def is_hex(line: str) -> bool:
    return bool(_HEX.match(line)) and len(line) % 2 == 0


def _printable(line: str) -> bool:
    return all(" " <= ch <= "~" or ch == "\t" for ch in line)


def _noise(line: str) -> bool:
    """Bytes that were not text (decoded as U+FFFD) or control characters. An operator
    name with non-ASCII letters in it is text, not noise."""
    return any(ch == "\ufffd" or (ch < " " and ch != "\t") or ch == "\x7f" for ch in line)


def classify(line: str) -> Urc:
    """One unsolicited line -> what it is. Never raises."""
    line = line.strip()
    if m := _CMTI.match(line):
        return Cmti(m[1].upper(), int(m[2]))
    if m := _CDSI.match(line):
        return Cdsi(m[1].upper(), int(m[2]))
    if m := _CUSD.match(line):
        return Cusd(int(m[1]), m[2] if m[2] is not None else None)
    if line.startswith(_RING):
        return Ring(line)
    if _printable(line) and _WELL_FORMED.match(line):
        return Info(line)
    return Garbage(line)


class UrcParser:
    """Unsolicited lines in, URCs out; holds the +CDS header until its PDU line."""

    def __init__(self) -> None:
        self._cds_length: int | None = None

    def feed(self, line: str) -> list[Urc]:
        line = line.strip()
        if not line:
            return []
        if self._cds_length is not None:
            length, self._cds_length = self._cds_length, None
            if is_hex(line):
                return [Cds(length, line)]
            # The PDU never came: the header alone is noise; read this line afresh.
            return [Garbage(f"+CDS: {length}"), *self.feed(line)]
        if m := _CDS.match(line):
            self._cds_length = int(m[1])
            return []
        return [classify(line)]


_URC_PREFIXES = ("+CMTI", "+CDSI", "+CDS:", "+CUSD", "RING", "+CRING", "+CLIP")


def split_urcs(lines: list[str]) -> tuple[list[str], list[Urc]]:
    """A command's answer -> (the answer without URCs, the URCs found in it).

    Only URCs that cannot be part of an answer are taken out: our commands never
    answer with +CMTI/+CDSI/+CDS/+CUSD/RING, so those lines came from the network.
    Line noise (control characters, bytes that were not text) is taken out too, as
    Garbage, so that it is counted wherever it lands."""
    answer: list[str] = []
    urcs: list[Urc] = []
    parser = UrcParser()
    for line in lines:
        stripped = line.strip()
        if stripped.startswith(_URC_PREFIXES) or parser._cds_length is not None:
            urcs.extend(parser.feed(stripped))
        elif _noise(stripped):
            urcs.append(Garbage(stripped))
        else:
            answer.append(line)
    if parser._cds_length is not None:
        urcs.append(Garbage(f"+CDS: {parser._cds_length}"))
    return answer, urcs


# -- answers --------------------------------------------------------------------------
def _field(lines: list[str], prefix: str) -> str | None:
    for line in lines:
        line = line.strip()
        if line.startswith(prefix):
            return line[len(prefix):].strip()
    return None


def parse_csq(lines: list[str]) -> int | None:
    """+CSQ: <rssi>,<ber> -> rssi 0..31; None for 99 (not known) or no such line.
    dBm = -113 + 2 * rssi."""
    value = _field(lines, "+CSQ:")
    if value is None:
        return None
    try:
        rssi = int(value.split(",")[0])
    except ValueError:
        return None
    return rssi if 0 <= rssi <= 31 else None


REGISTRATION = {0: "not registered", 1: "home", 2: "searching", 3: "denied",
                4: "unknown", 5: "roaming"}


def parse_creg(lines: list[str]) -> int | None:
    """+CREG: <n>,<stat>[,<lac>,<ci>] -> stat (REGISTRATION)."""
    value = _field(lines, "+CREG:")
    if value is None:
        return None
    fields = [f.strip() for f in value.split(",")]
    try:
        return int(fields[1] if len(fields) >= 2 else fields[0])
    except ValueError:
        return None


def parse_cops(lines: list[str]) -> str | None:
    """+COPS: <mode>[,<format>,"<operator>"[,<AcT>]] -> the operator, if registered."""
    value = _field(lines, "+COPS:")
    if value is None:
        return None
    m = re.search(r'"([^"]*)"', value)
    return m[1] if m and m[1] else None


def parse_cmgs(lines: list[str]) -> int | None:
    """+CMGS: <mr>[,<scts>] -> the TP-MR the SMSC's status reports will carry."""
    value = _field(lines, "+CMGS:")
    if value is None:
        return None
    try:
        return int(value.split(",")[0]) & 0xFF
    except ValueError:
        return None


def plain_value(lines: list[str]) -> str | None:
    """The first line of an answer that is a bare value (AT+CIMI, AT+CGSN)."""
    for line in lines:
        line = line.strip()
        if line and line not in ("OK", "ERROR") and not line.startswith(("+", "AT")):
            return line
    return None


@dataclass(frozen=True)
class Stored:
    """One message as AT+CMGL / AT+CMGR show it in PDU mode."""
    index: int | None
    stat: int        # 0 received unread, 1 received read, 2 stored unsent, 3 stored sent
    length: int      # TPDU length in octets
    pdu: str


_CMGL = re.compile(r"^\+CMGL:\s*(\d+)\s*,\s*(\d+)\s*,[^,]*,\s*(\d+)\s*$")
_CMGR = re.compile(r"^\+CMGR:\s*(\d+)\s*,[^,]*,\s*(\d+)\s*$")


def parse_cmgl(lines: list[str]) -> list[Stored]:
    """AT+CMGL=4 in PDU mode: header line, PDU line, repeated. A header without a PDU
    line after it, or a PDU line without a header, is skipped (and logged above)."""
    out: list[Stored] = []
    header = None
    for line in lines:
        line = line.strip()
        if m := _CMGL.match(line):
            header = (int(m[1]), int(m[2]), int(m[3]))
        elif header is not None and is_hex(line):
            out.append(Stored(header[0], header[1], header[2], line))
            header = None
        else:
            header = None
    return out


def parse_cmgr(lines: list[str], index: int) -> Stored | None:
    header = None
    for line in lines:
        line = line.strip()
        if m := _CMGR.match(line):
            header = (int(m[1]), int(m[2]))
        elif header is not None and is_hex(line):
            return Stored(index, header[0], header[1], line)
    return None


def parse_cpms_support(lines: list[str]) -> list[str]:
    """AT+CPMS=? -> the memories that can be read and deleted (the first list)."""
    value = _field(lines, "+CPMS:")
    if not value:
        return []
    first = value.split(")")[0]
    return re.findall(r'"([A-Z]{2})"', first)


# 27.005 §3.2.5 and 24.011 causes that no retry on another modem can fix: the number
# or the message is wrong, or the subscriber is barred. Anything else (network out of
# order, congestion, no SIM service, a modem error) may work elsewhere or later.
PERMANENT_CMS = frozenset({1, 8, 10, 21, 28, 29, 30, 96, 97, 304, 305, 306})


def cms_permanent(code: int) -> bool:
    return code in PERMANENT_CMS
