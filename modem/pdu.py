"""SMS PDUs (3GPP TS 23.040) in and out of a modem's PDU mode. Sans-I/O.

Out: SMS-SUBMIT, one per part, with a concatenation UDH (8-bit reference) when the
text needs more than one, GSM-7 packed into septets or UCS-2, TP-SRR set so that the
SMSC sends a status report, and a relative validity period.

In: SMS-DELIVER (UDH with 8- or 16-bit concatenation references), SMS-STATUS-REPORT,
and SMS-SUBMIT (what a modem lists as "stored sent"; the fake modem in the tests reads
ours with it).

Why not python-gsmmodem-new's `gsmmodem.pdu` (tests/modem/test_library_pdu.py shows
each): it encodes '`' as 0x5F and cannot encode '§' or the form feed; its septet
unpacker drops a final '@' when a text is a multiple of 8 septets; a trailing ESC
raises StopIteration and an unknown escape pair loses the character; it reads the
data coding scheme's alphabet only in the general group (a UCS-2 text with DCS 0x48
comes out as GSM-7 garbage); it cannot send an emoji (ValueError) and decodes one as
two lone surrogates; and it decodes each part to text on its own, so a pair split
across parts by a sloppy phone is lost. Its SMS-SUBMIT bytes are right for ordinary
GSM-7 and UCS-2 text, so the tests use its encoder as an independent oracle there.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from menus import gsm0340
from menus.gsm0340 import Concat, parse_concat

MTI_DELIVER, MTI_SUBMIT, MTI_STATUS_REPORT = 0, 1, 2
FO_UDHI = 0x40     # user data starts with a header
FO_SRR = 0x20      # SMS-SUBMIT: status report requested
FO_VPF_RELATIVE = 0x10


TOA_INTERNATIONAL = 0x91
TOA_UNKNOWN = 0x81
TON_ALPHANUMERIC = 0x50

_BCD = "0123456789*#abc"   # 23.040 §9.1.2.3: 0xA-0xE; 0xF pads an odd digit count


class PduError(ValueError):
    """A PDU that cannot be decoded (truncated, wrong lengths, unknown type)."""


@dataclass(frozen=True)
class SubmitPdu:
    hex: str           # what follows the "> " prompt (SMSC field first)
    tpdu_length: int   # AT+CMGS=<length>: octets after the SMSC field
    seq: int
    total: int


@dataclass(frozen=True)
class Deliver:
    sender: str
    scts: dt.datetime | None        # the SMSC's timestamp; None if not a real date
    scts_raw: bytes                 # the 7 octets as sent: part of the duplicate key
    dcs: int
    alphabet: int                   # text.DCS_GSM7 / DCS_8BIT / DCS_UCS2
    concat: Concat | None
    user_data: bytes                # septet values (GSM-7) or octets, UDH removed
    smsc: str | None = None

    @property
    def text(self) -> str:
        return gsm0340.decode_user_text(self.alphabet, self.user_data)


@dataclass(frozen=True)
class StatusReport:
    tp_mr: int                      # the TP-MR the modem gave in +CMGS
    recipient: str
    scts: dt.datetime | None        # when the SMSC accepted the message
    discharge: dt.datetime | None   # TP-DT: when it was delivered or given up
    tp_st: int                      # TP-ST (23.040 §9.2.3.15)
    smsc: str | None = None


@dataclass(frozen=True)
class Submit:
    tp_mr: int
    destination: str
    dcs: int
    alphabet: int
    concat: Concat | None
    user_data: bytes
    status_report: bool
    validity: int | None            # relative TP-VP octet, if any

    @property
    def text(self) -> str:
        return gsm0340.decode_user_text(self.alphabet, self.user_data)


# -- septets --------------------------------------------------------------------------
def pack_septets(septets: bytes, fill_bits: int = 0) -> bytes:
    """Septets packed LSB first (23.038 §6.1.2.1), after `fill_bits` zero bits that
    make the UDH end on a septet boundary. As one big integer: short and obviously
    right, and 160 septets are 1,120 bits."""
    value = 0
    for i, s in enumerate(septets):
        value |= (s & 0x7F) << (fill_bits + 7 * i)
    n_octets = (fill_bits + 7 * len(septets) + 7) // 8
    return value.to_bytes(n_octets, "little")


def unpack_septets(data: bytes, count: int, skip: int = 0) -> bytes:
    """`count` septets from packed `data`, dropping the first `skip` (the UDH's)."""
    if (7 * count + 7) // 8 > len(data):
        raise PduError(f"user data holds {len(data)} octets, not {count} septets")
    value = int.from_bytes(data, "little")
    return bytes((value >> (7 * i)) & 0x7F for i in range(skip, count))


# -- addresses ------------------------------------------------------------------------
def _bcd(digits: str) -> bytes:
    if len(digits) % 2:
        digits += "F"
    return bytes(int(digits[i + 1] + digits[i], 16) for i in range(0, len(digits), 2))


def _unbcd(data: bytes, n_digits: int | None = None) -> str:
    out = []
    for b in data:
        for nib in (b & 0x0F, b >> 4):
            if nib == 0x0F:
                break
            out.append(_BCD[nib])
    return "".join(out[:n_digits] if n_digits is not None else out)


def encode_address(number: str) -> bytes:
    """TP-DA: '+2547…' international, anything else as dialled (type unknown)."""
    digits = number.removeprefix("+")
    if not digits.isdigit() or not 1 <= len(digits) <= 20:
        raise ValueError(f"not a phone number: {number!r}")
    toa = TOA_INTERNATIONAL if number.startswith("+") else TOA_UNKNOWN
    return bytes((len(digits), toa)) + _bcd(digits)


def encode_smsc(number: str | None) -> bytes:
    """The SMSC field before the TPDU; a lone 00 means "the one set with AT+CSCA"."""
    if not number:
        return b"\x00"
    digits = number.lstrip("+")
    if not digits.isdigit():
        raise ValueError(f"not an SMSC number: {number!r}")
    body = bytes((TOA_INTERNATIONAL if number.startswith("+") else TOA_UNKNOWN,)) + _bcd(digits)
    return bytes((len(body),)) + body


def _decode_address(buf: bytes, pos: int) -> tuple[str, int]:
    n_digits, toa = _take(buf, pos, 2)
    n_octets = (n_digits + 1) // 2
    raw = _take(buf, pos + 2, n_octets)
    if toa & 0x70 == TON_ALPHANUMERIC:
        # An alphanumeric sender (a bank, "MPESA"): septets; the length counts nibbles.
        septets = unpack_septets(raw, n_digits * 4 // 7)
        value = gsm0340.decode_user_text(gsm0340.DCS_GSM7, septets)
    else:
        value = _unbcd(raw, n_digits)
        if toa & 0x70 == 0x10:
            value = "+" + value
    return value, pos + 2 + n_octets


def _decode_smsc(buf: bytes) -> tuple[str | None, int]:
    n = buf[0]
    if n == 0:
        return None, 1
    toa = _take(buf, 1, 1)[0]
    digits = _unbcd(_take(buf, 2, n - 1))
    return ("+" + digits if toa & 0x70 == 0x10 else digits) or None, 1 + n


# -- timestamps -----------------------------------------------------------------------
def _scts(raw: bytes) -> dt.datetime | None:
    """TP-SCTS/TP-DT: semi-octets YYMMDDhhmmss and a time zone in quarter hours whose
    sign is bit 3 of the octet. None when a modem sends something that is no date."""
    try:
        d = [int(f"{b & 0x0F}{b >> 4}") for b in raw[:6]]
        tz = raw[6]
        quarters = (tz & 0x07) * 10 + (tz >> 4)
        if tz >> 4 > 9:
            return None
        offset = dt.timedelta(minutes=15 * quarters) * (-1 if tz & 0x08 else 1)
        return dt.datetime(2000 + d[0], d[1], d[2], d[3], d[4], d[5],
                           tzinfo=dt.timezone(offset))
    except ValueError:
        return None


def encode_scts(when: dt.datetime) -> bytes:
    """The inverse of the above (for status reports and deliveries in tests)."""
    off = when.utcoffset() or dt.timedelta(0)
    quarters = int(abs(off.total_seconds()) // 900)
    fields = [when.year % 100, when.month, when.day, when.hour, when.minute, when.second]
    out = bytes(((v % 10) << 4) | (v // 10) for v in fields)
    tz = ((quarters % 10) << 4) | (quarters // 10) | (0x08 if off < dt.timedelta(0) else 0)
    return out + bytes((tz,))


def relative_validity(seconds: float) -> int:
    """TP-VP, relative format (23.040 §9.2.3.12.1), rounded down to what it can say."""
    s = int(seconds)
    if s <= 12 * 3600:
        return max(0, s // 300 - 1)
    if s <= 24 * 3600:
        return 143 + (s - 12 * 3600) // 1800
    days = s // 86400
    if days <= 30:
        return 166 + days
    return min(255, 192 + days // 7)


# -- SMS-SUBMIT out -------------------------------------------------------------------
def encode_submit(destination: str, text: str, *, reference: int = 0,
                  status_report: bool = True, validity_seconds: float | None = 86400.0,
                  smsc: str | None = None) -> list[SubmitPdu]:
    """The SMS-SUBMIT PDUs for `text`, one per part.

    TP-MR is 0: the modem sets its own and answers it in +CMGS, and that number is
    what status reports carry. `reference` numbers a concatenated message (its low
    8 bits go in the UDH): give each message its own, e.g. its outbox id."""
    parts = gsm0340.split(text)
    total = len(parts)
    da = encode_address(destination)
    sca = encode_smsc(smsc)
    out = []
    for seq, part in enumerate(parts, start=1):
        fo = MTI_SUBMIT | (FO_SRR if status_report else 0)
        vp = b""
        if validity_seconds is not None:
            fo |= FO_VPF_RELATIVE
            vp = bytes((relative_validity(validity_seconds),))
        udh = b""
        if total > 1:
            fo |= FO_UDHI
            udh = gsm0340.concat_udh(reference, total, seq)
        if part.dcs == gsm0340.DCS_GSM7:
            # The UDH takes whole octets; fill bits bring the text to a septet boundary,
            # and UDL counts septets of header, fill and text together.
            udh_bits = len(udh) * 8
            fill = (7 - udh_bits % 7) % 7
            udl = (udh_bits + fill) // 7 + len(part.data)
            ud = udh + pack_septets(part.data, fill)
        else:
            ud = udh + part.data
            udl = len(ud)
        tpdu = bytes((fo, 0x00)) + da + bytes((0x00, part.dcs)) + vp + bytes((udl,)) + ud
        out.append(SubmitPdu((sca + tpdu).hex().upper(), len(tpdu), seq, total))
    return out


# -- in -------------------------------------------------------------------------------
def _take(buf: bytes, pos: int, n: int) -> bytes:
    if pos + n > len(buf):
        raise PduError(f"PDU ends at octet {len(buf)}; needed {pos + n}")
    return buf[pos:pos + n]


def alphabet_of(dcs: int) -> int:
    """The alphabet a TP-DCS names (23.038 §4), whichever coding group it is in."""
    group = dcs >> 4
    if group <= 0x7:                    # general and automatic-deletion groups
        if dcs & 0x20:                  # compressed: nothing here can read it
            return gsm0340.DCS_8BIT
        return (gsm0340.DCS_GSM7, gsm0340.DCS_8BIT, gsm0340.DCS_UCS2, gsm0340.DCS_GSM7)[(dcs >> 2) & 3]
    if group == 0xE:                    # message waiting, store, UCS-2
        return gsm0340.DCS_UCS2
    if group == 0xF:                    # data coding / message class
        return gsm0340.DCS_8BIT if dcs & 0x04 else gsm0340.DCS_GSM7
    return gsm0340.DCS_GSM7                   # 0xC, 0xD (MWI, GSM-7) and reserved groups


def _user_data(buf: bytes, pos: int, fo: int, alphabet: int) -> tuple[Concat | None, bytes]:
    udl = _take(buf, pos, 1)[0]
    rest = buf[pos + 1:]
    udh = b""
    if alphabet == gsm0340.DCS_GSM7:
        ud = _take(rest, 0, (7 * udl + 7) // 8)
        skip = 0
        if fo & FO_UDHI:
            udh = _take(ud, 1, ud[0]) if ud else b""
            skip = ((1 + len(udh)) * 8 + 6) // 7
            if skip > udl:
                raise PduError("user data header longer than the user data")
        data = unpack_septets(ud, udl, skip)
    else:
        ud = _take(rest, 0, udl)
        data = ud
        if fo & FO_UDHI:
            if not ud or ud[0] + 1 > len(ud):
                raise PduError("user data header longer than the user data")
            udh, data = ud[1:1 + ud[0]], ud[1 + ud[0]:]
    return parse_concat(udh), data


def decode(pdu_hex: str, tpdu_length: int | None = None) -> Deliver | StatusReport | Submit:
    """A PDU as AT+CMGR/+CMGL/+CDS give it (hex, SMSC field first).

    `tpdu_length` is the length those responses announce: when the whole PDU is that
    long the modem left out the SMSC field (a few do), and it is read without one."""
    try:
        buf = bytes.fromhex(pdu_hex.strip())
    except ValueError:
        raise PduError("not hex") from None
    if not buf:
        raise PduError("empty PDU")
    smsc, pos = (None, 0) if tpdu_length == len(buf) else _decode_smsc(buf)
    fo = _take(buf, pos, 1)[0]
    mti = fo & 0x03
    pos += 1
    if mti == MTI_DELIVER:
        sender, pos = _decode_address(buf, pos)
        _pid, dcs = _take(buf, pos, 2)
        raw = _take(buf, pos + 2, 7)
        alphabet = alphabet_of(dcs)
        concat, data = _user_data(buf, pos + 9, fo, alphabet)
        return Deliver(sender, _scts(raw), raw, dcs, alphabet, concat, data, smsc)
    if mti == MTI_STATUS_REPORT:
        mr = _take(buf, pos, 1)[0]
        recipient, pos = _decode_address(buf, pos + 1)
        times = _take(buf, pos, 15)
        return StatusReport(mr, recipient, _scts(times[:7]), _scts(times[7:14]), times[14], smsc)
    if mti == MTI_SUBMIT:
        mr = _take(buf, pos, 1)[0]
        dest, pos = _decode_address(buf, pos + 1)
        _pid, dcs = _take(buf, pos, 2)
        pos += 2
        vpf = (fo >> 3) & 3
        vp = None
        if vpf == 2:
            vp = _take(buf, pos, 1)[0]
            pos += 1
        elif vpf in (1, 3):
            pos += 7
        alphabet = alphabet_of(dcs)
        concat, data = _user_data(buf, pos, fo, alphabet)
        return Submit(mr, dest, dcs, alphabet, concat, data, bool(fo & FO_SRR), vp)
    raise PduError(f"reserved message type {mti} (first octet {fo:#04x})")
