"""The version 2 body (sync/columns.py): seq deltas, integer-millisecond times and
inheritance within a batch, all lossless; and every malformed body refused by name."""

from __future__ import annotations

import copy
import gzip
import json
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sync import columns
from sync.batch import (
    BatchError,
    Record,
    build_batches,
    canonical_json,
    decode_batch,
    encode_batch,
    next_batch,
)
from tests.sync.helpers import SITE, forge, header_for, records

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import sync_codec  # the bench's village: records as the store writes them

T = 1764316800.25   # exactly representable in milliseconds, like every store timestamp


def _canon(r: Record) -> bytes:
    # Python says 1 == 1.0 == True and 0.0 == -0.0; JSON (and the upstream) does not.
    return canonical_json([r.seq, r.entity, r.key, r.op, r.at, r.payload])


def _same_records(got, want) -> None:
    assert [_canon(r) for r in got] == [_canon(r) for r in want]
    assert list(got) == list(want)


def _body(recs: list[Record], after: int = 0) -> dict:
    return json.loads(canonical_json(columns.encode(recs, after)))


# -- round trips ------------------------------------------------------------------------------

_VILLAGE = sync_codec.generate(4000, seed=7)


def test_a_village_round_trips_exactly_through_many_batches():
    bs = build_batches(_VILLAGE, SITE, 0, max_bytes=24 << 10, level=3)
    assert len(bs) > 3
    got = [r for b in bs for r in decode_batch(b.wire, site=SITE).records]
    _same_records(got, _VILLAGE)
    # The village is what the three codings are for: each of them is in use.
    body = _body(list(bs[0].records), bs[0].after)
    assert set(body["seq"]) == {1} and set(body["at"]) == {"ms", "d"}
    assert body["groups"]["loan"]["times"] == ["created_at", "expires_at", "updated_at"]
    assert any(inh for _, inh in body["groups"]["loan"]["shapes"])
    assert any(inh for _, inh in body["groups"]["mpesa_action"]["shapes"])


def test_inheritance_never_crosses_batches():
    # Any slice of the log, cut from any checkpoint, decodes alone: its first record of
    # an entity and key carries every field, whatever came before it in the log.
    for start in (0, 1, 2, 17, 333):
        part = _VILLAGE[start:start + 300]
        d = decode_batch(encode_batch(SITE, part[0].seq - 1, part, level=1).wire)
        _same_records(d.records, part)
        body = _body(part, part[0].seq - 1)
        for e, g in body["groups"].items():
            seen = set()
            for k, s in zip(g["key"], g["shape"]):
                assert k in seen or g["shapes"][s][1] == [], (e, k)
                seen.add(k)


def _edge_records() -> list[Record]:
    postings = [{"account": "mpesa", "amount_cents": 5000},
                {"account": "loan:K1", "amount_cents": -5000}]
    return [
        Record(11, "user", "K1", "invited", {"msisdn": "K1", "name": None, "lang": "sw",
               "registered_at": 1764316800, "updated_at": T}, T),
        # The same key under another entity: inheritance is per entity and key.
        Record(12, "loan", "K1", "requested", {"ref": "K1", "state": "requested",
               "created_at": T, "updated_at": T, "expires_at": T + 259200.0}, T + 0.5),
        # The clock jumps back; name changes, lang does not; an int timestamp stays int.
        Record(14, "user", "K1", "registered", {"msisdn": "K1", "name": "Amina", "lang": "sw",
               "registered_at": 1764316700, "updated_at": T - 100.0}, T - 100.0),
        # A later record drops a field (expires_at) and keeps the others.
        Record(15, "loan", "K1", "approved", {"ref": "K1", "state": "approved",
               "created_at": T, "updated_at": T + 60.125}, T + 60.125),
        Record(16, "ledger_txn", "7", "posted", {"id": 7, "postings": postings}, T + 61.0),
        # Nested values are inherited whole; -0.0, 1.0 and True are not 0.0, 1 and 1.
        Record(17, "ledger_txn", "7", "posted", {"id": 7, "postings": copy.deepcopy(postings),
               "z": -0.0, "f": 1.0, "b": True}, T + 61.0),
        Record(18, "ledger_txn", "7", "posted", {"id": 7, "postings": copy.deepcopy(postings),
               "z": 0.0, "f": 1, "b": 1, "locked_until": None}, T + 61.0),
    ]


def test_edge_cases_round_trip_and_lay_out_as_documented():
    recs = _edge_records()
    d = decode_batch(encode_batch(SITE, 10, recs).wire)
    _same_records(d.records, recs)
    assert type(d.records[0].payload["registered_at"]) is int
    assert type(d.records[0].payload["updated_at"]) is float
    body = _body(recs, 10)
    assert body["seq"] == [1, 1, 2, 1, 1, 1, 1]          # 13 is a gap
    assert body["at"] == {"ms": 1764316800250, "d": [500, -100500, 160125, 875, 0, 0]}
    user, loan, ledger = (body["groups"][e] for e in ("user", "loan", "ledger_txn"))
    # registered_at holds ints: it is not a millisecond column, it goes as it is.
    assert user["times"] == ["updated_at"] and user["fields"]["registered_at"] == [
        1764316800, 1764316700]
    assert user["fields"]["updated_at"] == [0, 0]       # each record's own clock
    assert user["shapes"][user["shape"][1]][1] == ["lang", "msisdn"]
    assert user["fields"]["name"] == [None, "Amina"]
    assert loan["times"] == ["created_at", "expires_at", "updated_at"]
    assert loan["fields"]["expires_at"] == [259199500]  # from its record's at, not created_at
    assert loan["fields"]["created_at"] == [-500]
    assert loan["shapes"][loan["shape"][1]] == [["created_at", "ref", "state", "updated_at"],
                                                ["created_at", "ref"]]
    assert ledger["shapes"][ledger["shape"][1]][1] == ["id", "postings"]
    assert ledger["shapes"][ledger["shape"][2]][1] == ["id", "postings"]
    assert ledger["fields"]["z"] == [-0.0, 0.0] and ledger["fields"]["f"] == [1.0, 1]
    # The decoded records share no list: editing one payload leaves the others alone.
    d.records[4].payload["postings"].append("x")
    assert d.records[5].payload["postings"] == recs[5].payload["postings"]


@pytest.mark.parametrize("odd", [T + 1e-4, 1764316800, -0.0, 1e300])
def test_one_at_not_in_exact_milliseconds_sends_the_column_as_numbers(odd):
    recs = _edge_records()
    recs[2] = Record(14, "user", "K1", "registered", recs[2].payload, odd)
    body = _body(recs, 10)
    assert body["at"] == [r.at for r in recs]
    assert all(g["times"] == [] for g in body["groups"].values())
    _same_records(decode_batch(encode_batch(SITE, 10, recs).wire).records, recs)


def test_one_timestamp_not_in_milliseconds_leaves_only_its_field_as_it_is():
    recs = _edge_records()
    recs[3].payload["updated_at"] = T + 60.1251
    body = _body(recs, 10)
    assert body["groups"]["loan"]["times"] == ["created_at", "expires_at"]
    assert body["groups"]["user"]["times"] == ["updated_at"]
    _same_records(decode_batch(encode_batch(SITE, 10, recs).wire).records, recs)


def test_exact_ms():
    assert columns.exact_ms(T) == 1764316800250 and columns.exact_ms(-1.5) == -1500
    assert columns.exact_ms(0.0) == 0 and columns.exact_ms(0.001) == 1
    for v in (-0.0, 1, True, "1.5", None, 0.0001, 1764316800.2501, float("nan"),
              float("inf"), 2.0 ** 52, 1e300):
        assert columns.exact_ms(v) is None, v
    # Every value the store writes (store/changelog._ms rounds to 3 decimals) qualifies.
    for x in (1764316800.0004, 1764316800.9996, 0.1 + 0.2, 12345.6789):
        assert columns.exact_ms(round(x, 3)) is not None


def test_helpers_records_round_trip_with_microsecond_clocks():
    # helpers.records has clocks finer than a millisecond: the raw path, still lossless.
    recs = records(60)
    assert isinstance(_body(recs)["at"], list)
    _same_records(decode_batch(encode_batch(SITE, 0, recs).wire).records, recs)


# -- a property: any records, any batch cut, exactly back ------------------------------------

_ms_float = st.integers(-(10 ** 13), 10 ** 13).map(lambda k: k / 1000)
_value = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-3, 3), _ms_float,
              st.floats(allow_nan=False, allow_infinity=False), st.sampled_from(["", "a", "é"])),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.sampled_from(["p", "q"]), inner, max_size=2)),
    max_leaves=4)
_payload = st.dictionaries(st.sampled_from(["a", "b", "c_at", "d_until", "e_at"]),
                           st.one_of(_ms_float, _value), max_size=5)


@st.composite
def _logs(draw):
    n = draw(st.integers(1, 30))
    seqs = sorted(draw(st.sets(st.integers(1, 200), min_size=n, max_size=n)))
    clock = st.one_of(_ms_float, st.floats(-1e12, 1e12), st.integers(0, 2 ** 40))
    ms_only = draw(st.booleans())
    return [Record(s, draw(st.sampled_from(["loan", "sms"])), draw(st.sampled_from(["k", "j"])),
                   draw(st.sampled_from(["o", "p"])), draw(_payload),
                   draw(_ms_float if ms_only else clock)) for s in seqs]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_logs(), st.integers(0, 29))
def test_any_log_round_trips_exactly_from_any_cut(recs, cut):
    cut = min(cut, len(recs) - 1)
    for after, part in ((0, recs), (recs[cut - 1].seq if cut else 0, recs[cut:])):
        b = encode_batch(SITE, after, part, level=1)
        assert encode_batch(SITE, after, part, level=1).wire == b.wire
        _same_records(decode_batch(b.wire, site=SITE).records, part)


# -- malformed bodies: each one change from a valid template ---------------------------------

# Two records of one key: the second inherits `a`, and its `t_at` is 5 ms after its `at`,
# which is 250 ms before the first's.
GOOD = {"seq": [1, 1], "entity": ["x", "x"], "at": {"ms": 1500, "d": [-250]},
        "groups": {"x": {"key": ["k", "k"], "op": ["o", "p"], "shape": [0, 1],
                         "shapes": [[["a", "t_at"], []], [["a", "t_at"], ["a"]]],
                         "fields": {"a": [[1]], "t_at": [0, 5]}, "times": ["t_at"]}}}
WANT = (Record(1, "x", "k", "o", {"a": [1], "t_at": 1.5}, 1.5),
        Record(2, "x", "k", "p", {"a": [1], "t_at": 1.255}, 1.25))


def _with(**changes) -> dict:
    body = copy.deepcopy(GOOD)
    for path, value in changes.items():
        *parents, last = path.split("__")
        node = body
        for p in parents:
            node = node[p]
        node[last] = value
    return body


def _blob(body, **header) -> bytes:
    raw = json.dumps(body).encode()
    return forge(header_for(raw, **{"count": 2, "last": 2, **header}),
                 gzip.compress(raw, mtime=0), codec=2)


def test_the_template_is_valid():
    d = decode_batch(_blob(GOOD))
    _same_records(d.records, WANT)
    # A batch cut from another checkpoint: the first delta counts from `after`.
    d = decode_batch(_blob(_with(seq=[3, 2]), after=7, first=10, last=12))
    assert [r.seq for r in d.records] == [10, 12]


_MS = 1 << 52
BAD = {
    "seq delta 0": (_with(seq=[1, 0]), "deltas, integers >= 1"),
    "seq delta negative": (_with(seq=[2, -1]), "deltas, integers >= 1"),
    "seq first from after 0": (_with(seq=[0, 1]), "deltas, integers >= 1"),
    "seq float": (_with(seq=[1, 1.0]), "deltas"),
    "seq too short": (_with(seq=[1]), "must be 2 deltas"),
    "seq misses the header": (_with(seq=[1, 2]), "first/last"),
    "at list too short": (_with(at=[1.5]), "at must be 2 numbers"),
    "at list of text": (_with(at=["noon", 1]), "at must be 2 numbers"),
    "at times with a raw at": (_with(at=[1.5, 1.25]), "needs at in milliseconds"),
    "at object without d": (_with(at={"ms": 1500}), 'exactly "ms" and "d"'),
    "at object, extra key": (_with(at={"ms": 1500, "d": [1], "x": 0}), 'exactly "ms" and "d"'),
    "at as text": (_with(at="1500"), "list of numbers or an object"),
    "at ms a float": (_with(at={"ms": 1500.0, "d": [-250]}), "ms must be an integer"),
    "at d a float": (_with(at={"ms": 1500, "d": [-250.5]}), "d 1 integers"),
    "at d too long": (_with(at={"ms": 1500, "d": [1, 1]}), "d 1 integers"),
    "at ms out of range": (_with(at={"ms": _MS, "d": [0]}), r"at 0 rebuilds .* outside"),
    "at delta out of range": (_with(at={"ms": _MS - 1, "d": [1]}), r"at 1 rebuilds .* outside"),
    "times not a list": (_with(groups__x__times="t_at"), "times must be a list"),
    "times twice": (_with(groups__x__times=["t_at", "t_at"]), "times must be a list of distinct"),
    "times names a stranger": (_with(groups__x__times=["t_at", "b_at"]), "'b_at', which no shape"),
    "times column of floats": (_with(groups__x__fields__t_at=[0, 5.0]), "integers .* or null"),
    "times column of text": (_with(groups__x__fields__t_at=["0", 5]), "integers .* or null"),
    "times offset out of range": (_with(groups__x__fields__t_at=[0, _MS]), "x.t_at of record 1"),
    "no times key": (_with(groups__x={k: v for k, v in GOOD["groups"]["x"].items()
                                      if k != "times"}), "exactly"),
    "v1 shapes": (_with(groups__x__shapes=[["a", "t_at"]]), "pairs"),
    "shape pair of three": (_with(groups__x__shapes=[[["a", "t_at"], [], []],
                                                      [["a", "t_at"], ["a"]]]), "pairs"),
    "inherits a name outside its shape": (
        _with(groups__x__shapes=[[["a", "t_at"], []], [["a", "t_at"], ["b"]]]), "not among"),
    "inherits with no earlier record": (
        _with(groups__x__shape=[1, 1], groups__x__fields={"a": [], "t_at": [0, 5]}),
        "inherits 'a', but no earlier record"),
    "inherits across keys": (_with(groups__x__key=["k", "j"]), "key 'j'.* no earlier record"),
    "inherits what the base lacks": (
        _with(groups__x__shapes=[[["t_at"], []], [["a", "t_at"], ["a"]]],
              groups__x__fields={"a": [], "t_at": [0, 5]}), "earlier record lacks it"),
    "inherited field still in its column": (_with(groups__x__fields={"a": [[1], [1]],
                                                                    "t_at": [0, 5]}),
                                            "do not match"),
    "column short": (_with(groups__x__fields={"a": [[1]], "t_at": [0]}), "do not match"),
    "shape index out of range": (_with(groups__x__shape=[0, 2]), "indexes"),
    "key count": (_with(groups__x__key=["k"]), "x.key must be 2 strings"),
    "entity of another group": (_with(entity=["x", "y"]), "groups must name"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_malformed_bodies_are_refused_with_a_reason(name):
    body, reason = BAD[name]
    with pytest.raises(BatchError, match=reason) as e:
        decode_batch(_blob(body))
    assert str(e.value).startswith(("body: ", "header first/last"))


def test_a_body_nested_past_the_parsers_stack_is_a_batch_error_not_a_crash():
    raw = b"[" * 200_000 + b"]" * 200_000
    blob = forge(header_for(raw, count=2, last=2), gzip.compress(raw, mtime=0), codec=2)
    with pytest.raises(BatchError, match="nested too deeply"):
        decode_batch(blob)



def test_an_inherited_value_nested_past_the_stack_is_a_batch_error():
    # 500 deep parses, but the second record inherits it and copying it recurses.
    v: object = 1
    for _ in range(500):
        v = [v]
    recs = [Record(1, "note", "k1", "upsert", {"x": v}, 1764316800.0),
            Record(2, "note", "k1", "upsert", {"x": v, "y": 1}, 1764316801.0)]
    b = next_batch(recs, SITE, 0, codec="gzip")
    with pytest.raises(BatchError, match="nested too deeply"):
        decode_batch(b.wire, SITE)
