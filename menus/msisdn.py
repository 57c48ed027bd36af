"""Kenyan mobile numbers, in every form villagers and aggregators write them.

Canonical form is the international one without '+', `2547XXXXXXXX` / `2541XXXXXXXX`:
it is what M-PESA's `PhoneNumber`/`PartyA` take and what SMSCs send as source_addr.
"""

from __future__ import annotations

import re

COUNTRY = "254"
# Kenyan mobile ranges start 7 (Safaricom, Airtel, Telkom) or 1 (010x Airtel, 011x Safaricom).
_NATIONAL = re.compile(r"[17]\d{8}")
_SEPARATORS = re.compile(r"[\s\-().]")


def normalize(raw: str) -> str | None:
    """`0712 345 678`, `+254712345678`, `254712345678`, `00254712345678`,
    `712345678` -> `254712345678`; anything else -> None."""
    s = _SEPARATORS.sub("", raw or "")
    if s.startswith("+"):
        s = s[1:]
    elif s.startswith("00"):
        s = s[2:]
    if not s.isdigit() or not s.isascii():
        return None
    if s.startswith(COUNTRY) and len(s) == 12:
        national = s[3:]
    elif s.startswith("0") and len(s) == 10:
        national = s[1:]
    elif len(s) == 9:
        national = s
    else:
        return None
    return COUNTRY + national if _NATIONAL.fullmatch(national) else None


def local(msisdn: str) -> str:
    """`254712345678` -> `0712345678`, the form a villager reads and types."""
    if msisdn.startswith(COUNTRY) and len(msisdn) == 12:
        return "0" + msisdn[3:]
    return msisdn


def mask(msisdn: str) -> str:
    """For logs: enough to tell two callers apart, not enough to dial them."""
    if len(msisdn) < 7:
        return "*" * len(msisdn)
    return msisdn[:4] + "*" * (len(msisdn) - 7) + msisdn[-3:]
