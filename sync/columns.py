"""The batch body, format version 2: change-log records as columns of canonical JSON.

Sans-I/O and unaware of framing: sync/batch.py compresses, hashes and frames what this
module lays out, and gives it back the parsed JSON to rebuild. docs/sync-protocol.md
section 4 is the description an upstream team implements.

    {"at": [...] or {"ms": int, "d": [...]}, "entity": [...], "seq": [first - after, d1, ...],
     "groups": {"<entity>": {"fields": {...}, "key": [...], "op": [...], "shape": [...],
                             "shapes": [[all names, inherited names], ...], "times": [...]}}}

Every part is lossless and earns its place in bench/sync_codec.py's figures:
- columns per entity: records of one entity share their field names, and like values sit
  side by side where zstd finds them (a third smaller than one JSON line per record);
- seq as deltas: nearly all 1s, where whole seqs are six ever-changing digits;
- times as integer milliseconds: the store rounds its clock to the millisecond
  (store/changelog._ms), so `1764316800.123` is 13 digits of which the box knows every
  one; a delta from the previous record is a few digits, and a payload timestamp as an
  offset from its record's own `at` is mostly 0 (`updated_at`) or a constant (`expires_at`);
- inheritance: the store writes the whole entity at each change (an upsert), so a loan's
  tenth state change repeats nine tenths of its first; within one batch a record sends only
  what changed since the previous record of the same entity and key.
"""

from __future__ import annotations

import copy
import json
import math
from collections import Counter
from collections.abc import Sequence
from itertools import pairwise
from typing import Any

# Rebuilt millisecond values stay strictly inside +-2**52, so every integer a valid body
# holds (a value, or the difference of two) is below 2**53: exact in a double, so a
# decoder in JavaScript or Go reads the same numbers, and k / 1000 is one correctly
# rounded division everywhere. 2**52 ms is 142,000 years: no clock the box has is near.
MS_LIMIT = 1 << 52
# Payload fields the encoder considers timestamps. Only the encoder looks at names; the
# decoder trusts "times", so a new store field needs no new decoder.
TIME_SUFFIXES = ("_at", "_until")
BODY_KEYS = frozenset({"at", "entity", "groups", "seq"})
GROUP_KEYS = frozenset({"fields", "key", "op", "shape", "shapes", "times"})


class BodyError(ValueError):
    """The body's JSON is not a valid version 2 layout (sync/batch.py adds the framing's
    context and raises it as a BatchError)."""


def canonical_json(obj: Any) -> bytes:
    # ASCII escapes keep a lone surrogate in a name encodable; sorted keys make the bytes,
    # and so both hashes, a function of the content alone.
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def exact_ms(v: Any) -> int | None:
    """v's integer milliseconds k when v is a float that k / 1000 gives back exactly
    (type float included: an int timestamp must come back an int), else None."""
    if type(v) is not float or not -MS_LIMIT < v * 1000 < MS_LIMIT:   # NaN, inf fail too
        return None
    k = round(v * 1000)
    if not -MS_LIMIT < k < MS_LIMIT or k / 1000 != v:
        return None
    if k == 0 and math.copysign(1.0, v) < 0:   # -0.0 == 0.0, but 0 / 1000 is +0.0
        return None
    return k


def _same(a: Any, b: Any) -> bool:
    """Equal as JSON texts, so that inheriting b gives back exactly a: 1 and 1.0 and True
    differ, and so do 0.0 and -0.0 though Python calls them equal."""
    if type(a) is not type(b):
        return False
    if type(a) is float:
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)   # NaN: never
    if isinstance(a, (list, dict)):
        return canonical_json(a) == canonical_json(b)
    return a == b


# -- encoding -------------------------------------------------------------------------------

def encode(records: Sequence[Any], after: int) -> dict[str, Any]:
    """Records (anything with seq, entity, key, op, payload, at) with seqs rising above
    `after` -> the body as a JSON-ready dict. ValueError when they cannot be one."""
    groups: dict[str, dict[str, Any]] = {}
    shape_index: dict[str, dict[tuple, int]] = {}
    owners: dict[str, dict[str, list[int]]] = {}   # entity -> field -> record index per value
    last: dict[tuple[str, str], dict[str, Any]] = {}   # (entity, key) -> previous payload
    seq_d, ents, ats = [], [], []
    prev = after
    for i, r in enumerate(records):
        if type(r.seq) is not int or r.seq <= prev:
            raise ValueError(f"record seqs must rise above {prev}; got {r.seq!r}")
        seq_d.append(r.seq - prev)
        prev = r.seq
        names = sorted(r.payload)
        if not (type(r.entity) is type(r.key) is type(r.op) is str
                and all(type(name) is str for name in names)):
            # JSON would turn a key 1 into "1": the batch would decode to another record.
            raise ValueError(f"record seq {r.seq}: entity, key, op and payload keys must be text")
        g = groups.get(r.entity)
        if g is None:
            g = groups[r.entity] = {"fields": {}, "key": [], "op": [], "shape": [],
                                    "shapes": [], "times": []}
            shape_index[r.entity], owners[r.entity] = {}, {}
        base = last.get((r.entity, r.key))
        last[(r.entity, r.key)] = r.payload
        inherited = ([] if base is None else
                     [f for f in names if f in base and _same(base[f], r.payload[f])])
        sk = (tuple(names), tuple(inherited))
        s = shape_index[r.entity].get(sk)
        if s is None:
            s = shape_index[r.entity][sk] = len(g["shapes"])
            g["shapes"].append([names, inherited])
        g["key"].append(r.key)
        g["op"].append(r.op)
        g["shape"].append(s)
        skip = set(inherited)
        for f in names:
            if f not in skip:
                g["fields"].setdefault(f, []).append(r.payload[f])
                owners[r.entity].setdefault(f, []).append(i)
        ents.append(r.entity)
        ats.append(r.at)
    at_ms = [exact_ms(a) for a in ats]
    if ats and None not in at_ms:
        at: Any = {"ms": at_ms[0], "d": [b - a for a, b in pairwise(at_ms)]}
        for e, g in groups.items():
            for f, col in g["fields"].items():
                if not f.endswith(TIME_SUFFIXES):
                    continue
                ks = [None if v is None else exact_ms(v) for v in col]
                if any(k is None and v is not None for k, v in zip(ks, col)):
                    continue   # an int, a string, a non-ms float: the column stays as it is
                g["fields"][f] = [None if k is None else k - at_ms[o]
                                  for k, o in zip(ks, owners[e][f])]
                g["times"].append(f)
            g["times"].sort()
    else:
        at = ats   # one int or one finer float and the whole column goes as plain numbers
    return {"seq": seq_d, "entity": ents, "at": at, "groups": groups}


# -- decoding -------------------------------------------------------------------------------

def _is_int(v: Any) -> bool:
    return type(v) is int


def _is_number(v: Any) -> bool:
    return (type(v) is int) or (type(v) is float and math.isfinite(v))


def _str_list(v: Any, n: int, what: str) -> list[str]:
    if not isinstance(v, list) or len(v) != n or not all(type(s) is str for s in v):
        raise BodyError(f"{what} must be {n} strings")
    return v


def _names(v: Any) -> bool:
    return (isinstance(v, list) and all(type(f) is str for f in v)
            and len(set(v)) == len(v))


def _ms_ok(k: int, what: str) -> int:
    if not -MS_LIMIT < k < MS_LIMIT:
        raise BodyError(f"{what} rebuilds to {k} ms, outside +-2**52")
    return k


def _seqs(v: Any, count: int, after: int) -> list[int]:
    if (not isinstance(v, list) or len(v) != count
            or not all(_is_int(d) and d >= 1 for d in v)):
        raise BodyError(f"seq must be {count} deltas, integers >= 1 (the first from after)")
    out, s = [], after
    for d in v:
        s += d
        out.append(s)
    return out


def _times(v: Any, count: int) -> tuple[list[Any], list[int] | None]:
    """The `at` column: plain numbers, or ms and deltas (then also the ms of each)."""
    if isinstance(v, list):
        if len(v) != count or not all(map(_is_number, v)):
            raise BodyError(f"at must be {count} numbers, or an object with ms and d")
        return v, None
    if not isinstance(v, dict) or set(v) != {"ms", "d"}:
        raise BodyError('at must be a list of numbers or an object with exactly "ms" and "d"')
    d = v["d"]
    if not _is_int(v["ms"]) or not isinstance(d, list) or len(d) != count - 1 \
            or not all(map(_is_int, d)):
        raise BodyError(f"at: ms must be an integer and d {count - 1} integers")
    ks = [_ms_ok(v["ms"], "at 0")]
    for i, x in enumerate(d, 1):
        ks.append(_ms_ok(ks[-1] + x, f"at {i}"))
    return [k / 1000 for k in ks], ks


def _group(e: str, g: Any, n: int, ms_mode: bool) -> list[tuple]:
    """Check one entity's group; return, per record of it, its decoding plan: a tuple of
    (field, inherited, timed) in shape order."""
    if not isinstance(g, dict) or set(g) != GROUP_KEYS:
        raise BodyError(f"group {e!r} must have exactly {sorted(GROUP_KEYS)}")
    _str_list(g["key"], n, f"{e}.key")
    _str_list(g["op"], n, f"{e}.op")
    shapes = g["shapes"]
    if (not isinstance(shapes, list) or not shapes
            or not all(isinstance(p, list) and len(p) == 2 and _names(p[0]) and _names(p[1])
                       for p in shapes)):
        raise BodyError(f"{e}.shapes must be pairs of lists of distinct field names")
    for all_, inh in shapes:
        if not set(inh) <= set(all_):
            raise BodyError(f"{e}.shapes: inherited {sorted(set(inh) - set(all_))} "
                            f"not among the shape's fields")
    shape = g["shape"]
    if (not isinstance(shape, list) or len(shape) != n
            or not all(_is_int(i) and 0 <= i < len(shapes) for i in shape)):
        raise BodyError(f"{e}.shape must be {n} indexes into {e}.shapes")
    want: Counter[str] = Counter({f: 0 for all_, _ in shapes for f in all_})
    for i, uses in Counter(shape).items():
        all_, inh = shapes[i]
        want.update({f: uses for f in all_ if f not in inh})
    fields = g["fields"]
    if (not isinstance(fields, dict) or set(fields) != set(want)
            or any(not isinstance(fields[f], list) or len(fields[f]) != c
                   for f, c in want.items())):
        raise BodyError(f"{e}.fields do not match {e}.shape and {e}.shapes")
    times = g["times"]
    if not _names(times):
        raise BodyError(f"{e}.times must be a list of distinct field names")
    if times and not ms_mode:
        raise BodyError(f"{e}.times needs at in milliseconds (an object with ms and d)")
    for f in times:
        if f not in fields:
            raise BodyError(f"{e}.times names {f!r}, which no shape has")
        if not all(v is None or _is_int(v) for v in fields[f]):
            raise BodyError(f"{e}.fields.{f} is in times: integers (ms from at) or null")
    timed = set(times)
    plans = [tuple((f, f in inh, f in timed) for f in all_) for all_, inh in shapes]
    return [plans[i] for i in shape]


def decode(body: Any, after: int, count: int) -> list[tuple]:
    """The parsed body -> (seq, entity, key, op, payload, at) per record, in seq order, or
    BodyError saying what is wrong. Every length, index, type and delta is checked before
    a record is built, so a forged body cannot index past a column."""
    if not isinstance(body, dict) or set(body) != BODY_KEYS:
        raise BodyError(f"expected exactly the keys {sorted(BODY_KEYS)}")
    ents = _str_list(body["entity"], count, "entity")
    seqs = _seqs(body["seq"], count, after)
    ats, at_ms = _times(body["at"], count)
    groups = body["groups"]
    if not isinstance(groups, dict) or set(groups) != set(ents):
        raise BodyError("groups must name exactly the entities present")
    n = Counter(ents)
    plans = {e: _group(e, g, n[e], at_ms is not None) for e, g in groups.items()}
    row = dict.fromkeys(groups, 0)
    cursor = {e: dict.fromkeys(g["fields"], 0) for e, g in groups.items()}
    last: dict[tuple[str, str], dict[str, Any]] = {}
    out = []
    for i in range(count):
        e = ents[i]
        g, j, cur = groups[e], row[e], cursor[e]
        row[e] = j + 1
        key = g["key"][j]
        base = last.get((e, key))
        payload = {}
        for f, inherited, timed in plans[e][j]:
            if inherited:
                if base is None or f not in base:
                    why = "no earlier record of it" if base is None else "its earlier record lacks it"
                    raise BodyError(f"{e} record {j} (key {key!r}) inherits {f!r}, but "
                                    f"{why} in this batch")
                v = base[f]
                # The decoded records must not share a list or an object: a receiver that
                # edits one payload must not edit another.
                payload[f] = copy.deepcopy(v) if isinstance(v, (list, dict)) else v
                continue
            v = g["fields"][f][cur[f]]
            cur[f] += 1
            if timed and v is not None:
                v = _ms_ok(at_ms[i] + v, f"{e}.{f} of record {j}") / 1000   # type: ignore[index]
            payload[f] = v
        last[(e, key)] = payload
        out.append((seqs[i], e, key, g["op"][j], payload, ats[i]))
    return out
