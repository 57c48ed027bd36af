"""Records shaped like the store's, and a way to forge a batch whose trailer is valid,
so the checks behind the trailer can be reached at all."""

from __future__ import annotations

import hashlib
import json
import struct

from sync.batch import MAGIC, VERSION, Record

SITE = "site-1"
T0 = 1764316800.0


def records(n: int, start: int = 1) -> list[Record]:
    """A mix of the store's entities, with the payloads store/*.py writes."""
    out = []
    for i in range(start, start + n):
        at = T0 + i * 7.0000123
        ref, phone = f"R{i % 97:05d}", f"2547{i % 89:08d}"
        kind = i % 4
        if kind == 0:
            out.append(Record(i, "loan", ref, "requested", {
                "ref": ref, "borrower": phone, "lender": f"2541{i % 83:08d}",
                "principal_cents": 100_000 + i, "instalment_cents": 25_000, "state": "requested",
                "expires_at": at + 72 * 3600, "created_at": at, "updated_at": at}, at))
        elif kind == 1:
            key = f"{SITE}-mp-{i:012x}"
            out.append(Record(i, "mpesa_action", key, "queued", {
                "key": key, "kind": "stk_push", "purpose": "repayment", "loan_ref": ref,
                "msisdn": phone, "amount_cents": 5000, "state": "queued", "receipt": None,
                "result_code": None, "result_desc": None, "updated_at": at}, at))
        elif kind == 2:
            key = f"{SITE}-sms-{i:012x}"
            out.append(Record(i, "sms", key, "queued", {
                "key": key, "msisdn": phone, "body": f"Repayment of Ksh {i} received. Ref {ref}",
                "state": "queued", "created_at": at}, at))
        else:
            out.append(Record(i, "ledger_txn", str(i), "posted", {
                "id": i, "kind": "repayment", "loan_ref": ref, "receipt": f"QK{i:08d}",
                "postings": [{"account": "mpesa", "amount_cents": 5000},
                             {"account": f"loan:{ref}", "amount_cents": -5000}]}, at))
    return out


def forge(header: dict | bytes, body: bytes, codec: int = 1, version: int = VERSION,
          magic: bytes = MAGIC) -> bytes:
    """A blob with a correct trailer around whatever header and compressed body."""
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    blob = struct.pack(">4sBBHI", magic, version, codec, len(h), len(body)) + h + body
    return blob + hashlib.sha256(blob).digest()


def header_for(raw: bytes, **over) -> dict:
    h = {"site": SITE, "after": 0, "first": 1, "last": 1, "count": 1, "raw_len": len(raw),
         "raw_sha256": hashlib.sha256(raw).hexdigest()}
    h.update(over)
    return h
