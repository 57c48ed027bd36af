"""What moves a sync cursor, in both directions. Sans-I/O: the caller reads and writes
the store and the network; these objects only decide.

Outbound (box -> upstream): one checkpoint, the highest seq the upstream acknowledged.
It moves only on an acknowledgement naming a batch this box handed out, only forward,
and only contiguously (the batch must start at or below the checkpoint). Everything
else is either harmless (an old or repeated ack) or refused with the checkpoint, so the
upstream can ask again from there (409).

Inbound (upstream -> box): changes carry the upstream's per-site `seq` and a stable `id`.
The box applies each id once and keeps the highest seq applied as its inbound cursor;
the upstream sends what lies above it.
"""

from __future__ import annotations

import random
import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from menus.msisdn import normalize
from sync.batch import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_RECORDS,
    Batch,
    Record,
    canonical_json,
    next_batch,
    strict_loads,
)

_HEX64 = re.compile(r"[0-9a-f]{64}")
_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_RECEIPT = re.compile(r"[A-Z0-9]{6,20}")
_CODE = re.compile(r"[A-Za-z0-9.]{1,16}")
# Above 2^53 a JSON number is no longer exact in JavaScript, a likely upstream.
_MAX_INT = 2 ** 53
# One envelope is applied in one writer transaction; a thousand keeps it to milliseconds
# so villagers' hops queued behind it do not notice.
MAX_INBOUND_CHANGES = 1000
MAX_INBOUND_BYTES = 1 << 20


class SyncConflict(ValueError):
    """A cursor cannot move as asked (HTTP 409); `checkpoint` is where this side stands,
    for the 409 body, so the other side can start again from there."""

    def __init__(self, reason: str, checkpoint: int) -> None:
        super().__init__(reason)
        self.reason, self.checkpoint = reason, checkpoint


class InboundError(ValueError):
    """A malformed inbound envelope (400): nothing in it is applied."""


@dataclass(frozen=True)
class Ack:
    site: str
    last_seq: int
    batch_sha256: str

    def to_json(self) -> bytes:
        return canonical_json({"site": self.site, "last_seq": self.last_seq,
                               "batch_sha256": self.batch_sha256})


def _obj(data: bytes | dict[str, Any], what: str, err: type[ValueError]) -> dict[str, Any]:
    if isinstance(data, dict):
        return data
    try:
        obj = strict_loads(data)
    except ValueError as e:
        raise err(f"{what} is not JSON: {e}") from None
    if not isinstance(obj, dict):
        raise err(f"{what} must be a JSON object")
    return obj


def decode_ack(data: bytes | dict[str, Any]) -> Ack:
    obj = _obj(data, "ack", ValueError)
    if set(obj) != {"site", "last_seq", "batch_sha256"}:
        raise ValueError("ack must have exactly site, last_seq, batch_sha256")
    if type(obj["site"]) is not str or type(obj["last_seq"]) is not int or obj["last_seq"] < 1:
        raise ValueError("ack: site must be a string and last_seq a positive integer")
    if type(obj["batch_sha256"]) is not str or not _HEX64.fullmatch(obj["batch_sha256"]):
        raise ValueError("ack: batch_sha256 must be 64 lowercase hex digits")
    return Ack(obj["site"], obj["last_seq"], obj["batch_sha256"])


@dataclass(frozen=True)
class Advanced:
    old: int
    checkpoint: int        # persist this, then answer 200


@dataclass(frozen=True)
class AlreadyAcked:
    checkpoint: int        # nothing to do: answer 200 with it


class Outbound:
    """Box side of the outbound stream, shared by push and pull.

    It remembers the batches it handed out (by id) so that an ack can be checked, and a
    resend after a timeout or a dropped link is the very same bytes. It forgets them on
    restart: an ack that then arrives is refused with the checkpoint, and the upstream
    fetches from there again; the rebuilt batch is the same bytes unless records were
    added since, and harmless either way."""

    def __init__(self, site: str, checkpoint: int, *, max_records: int = DEFAULT_MAX_RECORDS,
                 max_bytes: int = DEFAULT_MAX_BYTES, codec: str = "zstd",
                 level: int | None = None, remember: int = 16) -> None:
        self.site, self.checkpoint = site, checkpoint
        self.max_records, self.max_bytes = max_records, max_bytes
        self.codec, self.level, self.remember = codec, level, remember
        self._by_sha: OrderedDict[str, Batch] = OrderedDict()
        self._by_after: dict[int, Batch] = {}

    def cached(self, after: int | None = None) -> Batch | None:
        """The batch already cut from `after` (default: the checkpoint), if any; when it
        is, send it again rather than reading the store (a resend must be identical)."""
        return self._by_after.get(self.checkpoint if after is None else after)

    def build(self, records: Sequence[Record], after: int | None = None) -> Batch | None:
        """Cut the batch from `after` out of `records` (those with seq > after, read with
        LIMIT max_records) and remember it as handed out; None when there are none."""
        after = self.checkpoint if after is None else after
        if (b := self._by_after.get(after)) is not None:
            return b
        b = next_batch(records, self.site, after, max_records=self.max_records,
                       max_bytes=self.max_bytes, codec=self.codec, level=self.level)
        if b is not None:
            self._by_sha[b.sha256] = self._by_after[after] = b
            while len(self._by_sha) > self.remember:
                self._forget(next(iter(self._by_sha)))
        return b

    def on_ack(self, ack: Ack) -> Advanced | AlreadyAcked:
        if ack.site != self.site:
            raise SyncConflict(f"ack for site {ack.site!r}, this box is {self.site!r}",
                               self.checkpoint)
        if ack.last_seq <= self.checkpoint:
            # An old or repeated ack (its response was lost and it came again): harmless.
            return AlreadyAcked(self.checkpoint)
        b = self._by_sha.get(ack.batch_sha256)
        if b is None or b.last_seq != ack.last_seq:
            raise SyncConflict("ack names no batch this box handed out", self.checkpoint)
        if b.after > self.checkpoint:
            raise SyncConflict(f"out of order: that batch starts after {b.after}, the "
                               f"checkpoint is {self.checkpoint}", self.checkpoint)
        old, self.checkpoint = self.checkpoint, b.last_seq
        for sha, kept in list(self._by_sha.items()):
            if kept.last_seq <= self.checkpoint:
                self._forget(sha)
        return Advanced(old, self.checkpoint)

    def on_timeout(self) -> Batch | None:
        """No answer (or a dropped link): the batch to send again, unchanged."""
        return self.cached()

    def _forget(self, sha: str) -> None:
        b = self._by_sha.pop(sha)
        if self._by_after.get(b.after) is b:
            del self._by_after[b.after]


def retry_delay(attempt: int, rng: random.Random, base: float = 5.0, cap: float = 900.0) -> float:
    """Seconds before try `attempt` (1 = first retry): full jitter, so a hundred boxes
    that lost backhaul together do not call the upstream together when it returns."""
    return rng.uniform(0, min(cap, base * 2 ** min(attempt, 30)))


# -- inbound ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class InboundChange:
    kind: ClassVar[str] = ""
    seq: int
    id: str

    def to_json(self) -> dict[str, Any]:
        out = {"kind": self.kind}
        out.update({k: v for k, v in self.__dict__.items() if v is not None})
        return out


@dataclass(frozen=True)
class MpesaResult(InboundChange):
    kind: ClassVar[str] = "mpesa_result"
    action_key: str
    result: str                    # "succeeded" | "failed"
    receipt: str | None = None
    result_code: str | None = None
    result_desc: str | None = None
    amount_cents: int | None = None
    # Daraja's names for the payment, on a callback relayed for a box in direct mode:
    # the box settles only a result whose ids agree with what Daraja told it (section 11).
    checkout_request_id: str | None = None
    conversation_id: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.result == "succeeded"


@dataclass(frozen=True)
class MoneyReceived(InboundChange):
    kind: ClassVar[str] = "money_received"
    msisdn: str
    amount_cents: int
    receipt: str
    at: float | None = None


@dataclass(frozen=True)
class AccountChange(InboundChange):
    kind: ClassVar[str] = "account_change"
    msisdn: str
    name: str | None = None
    lang: str | None = None
    unlock: bool | None = None


@dataclass(frozen=True)
class Inbound:
    site: str
    after: int                     # the cursor the upstream believes the box has
    changes: tuple[InboundChange, ...]

    def __iter__(self):
        return iter(self.changes)

    def __len__(self) -> int:
        return len(self.changes)

    @property
    def last_seq(self) -> int:
        return self.changes[-1].seq if self.changes else self.after


def _text(pattern: re.Pattern[str] | None, limit: int = 256):
    def check(v: Any) -> str:
        if type(v) is not str or not 0 < len(v) <= limit or (pattern and not pattern.fullmatch(v)):
            raise ValueError("a string" + (f" matching {pattern.pattern}" if pattern else
                                           f" of 1..{limit} characters"))
        return v
    return check


def _amount(v: Any) -> int:
    if type(v) is not int or not 0 < v < _MAX_INT:
        raise ValueError("a positive integer number of cents")
    return v


def _seq(v: Any) -> int:
    if type(v) is not int or not 0 < v < _MAX_INT:
        raise ValueError("a positive integer")
    return v


def _at(v: Any) -> float:
    if type(v) not in (int, float) or not 0 < v < _MAX_INT:
        raise ValueError("unix seconds")
    return float(v)


def _msisdn(v: Any) -> str:
    if type(v) is not str or normalize(v) != v:
        raise ValueError("a canonical Kenyan mobile number, 2547XXXXXXXX or 2541XXXXXXXX")
    return v


def _code(v: Any) -> str:
    # Daraja sends ResultCode as a number and stores it as text elsewhere; take both.
    return _text(_CODE)(str(v) if type(v) is int else v)


def _one_of(*allowed: Any):
    def check(v: Any) -> Any:
        if v not in allowed or type(v) is not type(allowed[0]):
            raise ValueError("one of " + ", ".join(map(repr, allowed)))
        return v
    return check


_FIELDS: dict[str, tuple[type[InboundChange], dict[str, Any], dict[str, Any]]] = {
    "mpesa_result": (MpesaResult,
                     {"action_key": _text(_ID), "result": _one_of("succeeded", "failed")},
                     {"receipt": _text(_RECEIPT), "result_code": _code,
                      "result_desc": _text(None), "amount_cents": _amount,
                      "checkout_request_id": _text(_ID), "conversation_id": _text(_ID)}),
    "money_received": (MoneyReceived,
                       {"msisdn": _msisdn, "amount_cents": _amount, "receipt": _text(_RECEIPT)},
                       {"at": _at}),
    "account_change": (AccountChange, {"msisdn": _msisdn},
                       {"name": _text(None, 40), "lang": _one_of("en", "sw"),
                        "unlock": _one_of(True)}),
}


def _change(obj: Any, i: int) -> InboundChange:
    if not isinstance(obj, dict):
        raise InboundError(f"changes[{i}] must be an object")
    kind = obj.get("kind")
    if kind not in _FIELDS:
        raise InboundError(f"changes[{i}]: unknown kind {kind!r} (known: {', '.join(_FIELDS)})")
    cls, required, optional = _FIELDS[kind]
    common = {"kind": None, "seq": None, "id": None}
    extra = set(obj) - set(common) - set(required) - set(optional)
    if extra:
        raise InboundError(f"changes[{i}] ({kind}): unknown fields {sorted(extra)}")
    args: dict[str, Any] = {}
    checks = {"seq": _seq, "id": _text(_ID), **required}
    for name, check in list(checks.items()) + list(optional.items()):
        if name not in obj or (name in optional and obj[name] is None):
            if name in checks:
                raise InboundError(f"changes[{i}] ({kind}): {name} is required")
            continue
        try:
            args[name] = check(obj[name])
        except ValueError as e:
            raise InboundError(f"changes[{i}] ({kind}): {name} must be {e}") from None
    change = cls(**args)
    if isinstance(change, MpesaResult):
        # A success may come without its receipt: the STK push query never carries one
        # (a box in direct mode settles on it); the receipt may follow in a later change.
        if not change.succeeded and change.result_code in (None, "0"):
            raise InboundError(f"changes[{i}] (mpesa_result): a failure needs a result_code "
                               "other than 0")
    if isinstance(change, AccountChange) and not (change.name or change.lang or change.unlock):
        raise InboundError(f"changes[{i}] (account_change): changes nothing")
    return change


def decode_inbound(data: bytes | dict[str, Any], site: str | None = None) -> Inbound:
    """Validate a whole envelope; any bad change rejects all of it (400, nothing applied)."""
    if isinstance(data, (bytes, bytearray)) and len(data) > MAX_INBOUND_BYTES:
        raise InboundError(f"envelope of {len(data)} bytes, over {MAX_INBOUND_BYTES}")
    obj = _obj(data, "inbound", InboundError)
    if set(obj) != {"v", "site", "after", "changes"}:
        raise InboundError("inbound must have exactly v, site, after, changes")
    if obj["v"] != 1 or type(obj["v"]) is not int:
        raise InboundError(f"unsupported inbound version {obj['v']!r}")
    if type(obj["site"]) is not str or (site is not None and obj["site"] != site):
        raise InboundError(f"inbound is for site {obj['site']!r}, not {site!r}")
    if type(obj["after"]) is not int or not 0 <= obj["after"] < _MAX_INT:
        raise InboundError("after must be a non-negative integer")
    raw = obj["changes"]
    if not isinstance(raw, list) or len(raw) > MAX_INBOUND_CHANGES:
        raise InboundError(f"changes must be a list of at most {MAX_INBOUND_CHANGES}")
    changes = tuple(_change(c, i) for i, c in enumerate(raw))
    prev, ids = obj["after"], set()
    for c in changes:
        if c.seq <= prev:
            raise InboundError(f"change seq {c.seq} does not rise above {prev}")
        if c.id in ids:
            raise InboundError(f"change id {c.id!r} appears twice")
        prev = c.seq
        ids.add(c.id)
    return Inbound(obj["site"], obj["after"], changes)


def encode_inbound(site: str, after: int, changes: Sequence[InboundChange]) -> bytes:
    return canonical_json({"v": 1, "site": site, "after": after,
                           "changes": [c.to_json() for c in changes]})


def to_apply(inbound: Inbound, cursor: int) -> tuple[InboundChange, ...]:
    """The changes above the box's cursor. An envelope that starts above it would skip
    changes the box never saw: SyncConflict (409) with the cursor, so the upstream resends."""
    if inbound.after > cursor:
        raise SyncConflict(f"inbound starts after {inbound.after}, the box has {cursor}", cursor)
    return tuple(c for c in inbound.changes if c.seq > cursor)


def decode_push_response(data: bytes, site: str) -> tuple[Ack, Inbound | None]:
    """The upstream's 200 answer to a pushed batch: its ack, and changes for the box."""
    obj = _obj(data, "push response", ValueError)
    if set(obj) != {"ack", "inbound"}:
        raise ValueError("push response must have exactly ack and inbound")
    if not isinstance(obj["ack"], dict) or not isinstance(obj["inbound"], (dict, type(None))):
        raise ValueError("push response: ack must be an object, inbound an object or null")
    inbound = None if obj["inbound"] is None else decode_inbound(obj["inbound"], site)
    return decode_ack(obj["ack"]), inbound
