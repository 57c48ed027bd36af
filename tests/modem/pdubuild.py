"""SMS-DELIVER and SMS-STATUS-REPORT PDUs as a network would store them, for the fake
modem. Written apart from modem/pdu.py on purpose (septets packed by
python-gsmmodem-new's packSeptets, which is right, and the characters mapped by
menus/gsm0338.py), so that the fake does not share the code it tests.
"""

from __future__ import annotations

import datetime as dt

from gsmmodem.pdu import packSeptets

from menus import gsm0338

EAT = dt.timezone(dt.timedelta(hours=3))


def _swap(digits: str) -> bytes:
    if len(digits) % 2:
        digits += "F"
    return bytes.fromhex("".join(digits[i + 1] + digits[i] for i in range(0, len(digits), 2)))


def address(number: str) -> bytes:
    if number.startswith("+"):
        return bytes((len(number) - 1, 0x91)) + _swap(number[1:])
    if number.isdigit():
        return bytes((len(number), 0x81)) + _swap(number)
    septets = gsm0338.encode_septets(number)
    packed = bytes(packSeptets(bytearray(septets)))
    # An alphanumeric address's length counts the semi-octets the septets fill.
    return bytes((-(-len(septets) * 7 // 4), 0xD0)) + packed


def smsc_field(number: str | None) -> bytes:
    if not number:
        return b"\x00"
    body = b"\x91" + _swap(number.lstrip("+"))
    return bytes((len(body),)) + body


def timestamp(when: dt.datetime) -> bytes:
    q = int((when.utcoffset() or dt.timedelta(0)).total_seconds() // 900)
    s = when.strftime("%y%m%d%H%M%S") + f"{abs(q):02d}"
    raw = bytearray(_swap(s))
    if q < 0:
        raw[-1] |= 0x08
    return bytes(raw)


def deliver(sender: str, text: str, *, when: dt.datetime | None = None,
            concat: tuple[int, int, int] | None = None, concat16: bool = False,
            ucs2: bool = False, user_data: bytes | None = None,
            smsc: str | None = "+254722500029") -> tuple[str, int]:
    """(hex, TPDU length) of one SMS-DELIVER part. `user_data` overrides the text's
    encoding (septet values for GSM-7, octets for UCS-2), to cut pairs on purpose."""
    when = when or dt.datetime(2026, 11, 28, 18, 30, 5, tzinfo=EAT)
    udh = b""
    if concat:
        ref, total, seq = concat
        udh = (bytes((6, 0x08, 4)) + ref.to_bytes(2, "big") + bytes((total, seq)) if concat16
               else bytes((5, 0x00, 3, ref & 0xFF, total, seq)))
    fo = 0x04 | (0x40 if udh else 0)            # TP-MMS set: no more messages waiting
    if ucs2:
        body = user_data if user_data is not None else text.encode("utf-16-be")
        ud = udh + body
        udl, dcs = len(ud), 0x08
    else:
        septets = user_data if user_data is not None else bytes(gsm0338.encode_septets(text))
        fill = (7 - (len(udh) * 8) % 7) % 7 if udh else 0
        # packSeptets' padBits is its bit position after the header ((UDH octets * 8)
        # mod 7, as the library's own encoder passes it), not the number of fill bits.
        shift = (len(udh) * 8) % 7 if udh else 0
        packed = bytes(packSeptets(bytearray(septets), padBits=shift)) if septets else b""
        ud = udh + packed
        udl = ((len(udh) * 8 + fill) // 7 if udh else 0) + len(septets)
        dcs = 0x00
    tpdu = bytes((fo,)) + address(sender) + bytes((0x00, dcs)) + timestamp(when) + bytes((udl,)) + ud
    return (smsc_field(smsc) + tpdu).hex().upper(), len(tpdu)


def status_report(mr: int, recipient: str, st: int = 0, *, when: dt.datetime | None = None,
                  smsc: str | None = "+254722500029") -> tuple[str, int]:
    when = when or dt.datetime(2026, 11, 28, 18, 31, 0, tzinfo=EAT)
    done = when + dt.timedelta(seconds=4)
    tpdu = (bytes((0x06, mr & 0xFF)) + address(recipient) + timestamp(when) + timestamp(done)
            + bytes((st,)))
    return (smsc_field(smsc) + tpdu).hex().upper(), len(tpdu)


def submit_destination(pdu_hex: str) -> tuple[str, int]:
    """(destination, first octet) of an SMS-SUBMIT, read by hand."""
    b = bytes.fromhex(pdu_hex)
    pos = 1 + b[0]
    fo = b[pos]
    n = b[pos + 2]
    toa = b[pos + 3]
    digits = "".join(f"{x & 0xF}{x >> 4}" for x in b[pos + 4:pos + 4 + (n + 1) // 2])[:n]
    dest = ("+" if toa == 0x91 else "") + digits
    return dest, fo
