"""Sync batches: change-log records as one compressed, hashed, size-capped blob.

Sans-I/O: bytes in, bytes out, no clock and no store; docs/sync-protocol.md is the
byte-by-byte description an upstream team implements. Wire layout (version 2):

    "GWDB" | version u8 | codec u8 | header length u16 | body length u32 |
    header (JSON) | body (compressed columnar JSON) | SHA-256 of everything before it

The body's layout (columns, seq and time deltas, inheritance within a batch) is
sync/columns.py; this module frames, compresses, hashes and caps it.

Two hashes, for two different jobs. The trailer hashes every byte of the blob: it is the
batch's id in acknowledgements, is checked before anything is decompressed, and catches
a flip anywhere, even in bytes a decompressor ignores (gzip's mtime and OS fields,
zstd's window descriptor). `raw_sha256` in the header hashes the uncompressed content,
so a receiver knows the decompressor handed back what the box meant, whatever codec
carried it.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import zstandard

from sync import columns
from sync.columns import canonical_json

MAGIC = b"GWDB"
# 2: seq and times as deltas, inheritance within a batch (sync/columns.py). Nothing that
# wrote version 1 was ever deployed, so this side reads 2 alone.
VERSION = 2
_PREFIX = struct.Struct(">4sBBHI")   # magic, version, codec, header length, body length
_TRAILER = 32
MIN_SIZE = _PREFIX.size + _TRAILER
CODECS = {"zstd": 1, "gzip": 2}
_CODEC_NAMES = {v: k for k, v in CODECS.items()}
# From bench/sync_codec.py's figures (docs/sync-protocol.md, section 10): zstd 19 sends
# 40% fewer bytes than gzip 9; 256 KiB is about 10 s of EDGE and 18% smaller per change
# than 64 KiB. The record cap bounds memory (a full batch's encoding peaks near 70 MiB,
# most of it zstd 19's context); with body format 2 it binds a little before the byte
# cap for a village's records (20,000 make about 215 KiB).
DEFAULT_LEVEL = {"zstd": 19, "gzip": 9}
DEFAULT_MAX_BYTES = 256 << 10
DEFAULT_MAX_RECORDS = 20_000
# The header is a handful of integers and a site id; anything longer is not ours.
MAX_HEADER = 1024
# Decompression-bomb guard: a receiver never inflates more than this. A 256 KiB batch of
# real change-log records inflates about 13x, so 16 MiB leaves room without letting a
# 1 KiB blob claim gigabytes.
MAX_RAW = 16 << 20
# zstd picks its window from the content size; capping it caps the decoder's memory too.
_MAX_WINDOW = 1 << 24
# Real change-log records shrink about 13x (bench/sync_codec.py); the first cut assumes it.
_GUESS_RATIO = 13
_HEADER_KEYS = {"after", "count", "first", "last", "raw_len", "raw_sha256", "site"}


class BatchError(ValueError):
    """A blob that is not a valid batch, with the reason (for the log and the 400 body)."""


class RecordTooLarge(BatchError):
    """One record alone does not fit the byte cap: sync cannot pass it until the cap rises.
    An explicit stop rather than an oversized batch the upstream would refuse with 413."""

    def __init__(self, seq: int, size: int, cap: int) -> None:
        super().__init__(f"record seq {seq} alone encodes to {size} bytes, over the cap of {cap}")
        self.seq, self.size, self.cap = seq, size, cap


@dataclass(frozen=True)
class Record:
    seq: int
    entity: str
    key: str
    op: str
    payload: dict[str, Any]
    at: float

    @classmethod
    def from_row(cls, row: Sequence[Any] | Mapping[str, Any]) -> Record:
        """From a change_log row: by column name when it has names (sqlite3.Row, a dict),
        else positionally as (seq, entity, entity_key, op, payload JSON text, at)."""
        if hasattr(row, "keys"):
            row = [row[k] for k in ("seq", "entity", "entity_key", "op", "payload", "at")]
        seq, entity, key, op, payload, at = row
        return cls(int(seq), entity, key, op, json.loads(payload), at)


@dataclass(frozen=True)
class Batch:
    """One encoded batch and its parsed view. `sha256` (hex of the trailer) is its id."""
    site: str
    after: int              # the checkpoint it was cut from: it holds every seq in (after, last]
    records: tuple[Record, ...]
    codec: str
    raw_len: int
    raw_sha256: str
    sha256: str
    wire: bytes

    @property
    def first_seq(self) -> int:
        return self.records[0].seq

    @property
    def last_seq(self) -> int:
        return self.records[-1].seq

    @property
    def count(self) -> int:
        return len(self.records)

    @property
    def size(self) -> int:
        return len(self.wire)


def _is_int(v: Any) -> bool:
    return type(v) is int


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("duplicate key in a JSON object")
    return out


def strict_loads(data: bytes | str) -> Any:
    """JSON as every language parses it alike: no NaN, no duplicate keys (parsers differ on
    which one wins, and that difference is where forged fields hide)."""
    try:
        return json.loads(data, parse_constant=_reject_constant,
                          object_pairs_hook=_no_duplicates)
    except RecursionError:
        # `[[[[...` deep enough exhausts the parser's stack: malformed, like any other
        # bad JSON, rather than an exception no caller expects.
        raise ValueError("JSON nested too deeply") from None


# -- compression -----------------------------------------------------------------------------

def _compress(raw: bytes, codec: str, level: int) -> bytes:
    if codec == "zstd":
        # Content size in the frame lets the receiver bound its output before inflating.
        return zstandard.ZstdCompressor(level=level, write_content_size=True).compress(raw)
    return gzip.compress(raw, compresslevel=level, mtime=0)  # mtime=0: same records, same bytes


def _decompress(body: bytes, codec: str, raw_len: int) -> bytes:
    try:
        if codec == "zstd":
            params = zstandard.get_frame_parameters(body)
            if params.content_size != raw_len:
                raise BatchError(f"zstd frame declares {params.content_size} bytes, "
                                 f"header says {raw_len}")
            if params.window_size > _MAX_WINDOW:
                raise BatchError(f"zstd window {params.window_size} over {_MAX_WINDOW}")
            d = zstandard.ZstdDecompressor(max_window_size=_MAX_WINDOW).decompressobj()
            # libzstd stops a frame from writing past the size it declared (checked above).
            raw = d.decompress(body)
        else:
            d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)   # gzip framing only
            raw = d.decompress(body, raw_len + 1)
            if d.unconsumed_tail:
                raise BatchError(f"inflates past the {raw_len} bytes its header declares")
    except (zstandard.ZstdError, zlib.error) as e:
        raise BatchError(f"{codec} body does not decompress: {e}") from None
    if not d.eof:
        raise BatchError(f"{codec} body is truncated")
    if d.unused_data:
        raise BatchError(f"{len(d.unused_data)} bytes after the {codec} stream")
    if len(raw) != raw_len:
        raise BatchError(f"body inflates to {len(raw)} bytes, header says {raw_len}")
    return raw


# -- one batch ---------------------------------------------------------------------------------

def _raw(after: int, records: Sequence[Record]) -> bytes:
    if not records:
        raise ValueError("a batch holds at least one record")
    try:
        return canonical_json(columns.encode(records, after))
    except (TypeError, ValueError) as e:
        raise ValueError(f"records after seq {after} are not encodable: {e}") from None


def _seal(site: str, after: int, records: Sequence[Record], raw: bytes, codec: str,
          level: int | None) -> Batch:
    if codec not in CODECS:
        raise ValueError(f"codec must be one of {sorted(CODECS)}, not {codec!r}")
    if len(raw) > MAX_RAW:
        raise ValueError(f"{len(raw)} bytes uncompressed, over the {MAX_RAW} every receiver takes")
    raw_sha = hashlib.sha256(raw).hexdigest()
    header = canonical_json({"site": site, "after": after, "first": records[0].seq,
                             "last": records[-1].seq, "count": len(records),
                             "raw_len": len(raw), "raw_sha256": raw_sha})
    if len(header) > MAX_HEADER:
        raise ValueError(f"site id too long for the {MAX_HEADER}-byte header")
    body = _compress(raw, codec, DEFAULT_LEVEL[codec] if level is None else level)
    blob = _PREFIX.pack(MAGIC, VERSION, CODECS[codec], len(header), len(body)) + header + body
    digest = hashlib.sha256(blob).digest()
    return Batch(site, after, tuple(records), codec, len(raw), raw_sha, digest.hex(), blob + digest)


def encode_batch(site: str, after: int, records: Sequence[Record], codec: str = "zstd",
                 level: int | None = None) -> Batch:
    """Records with rising seqs above `after` -> one batch (no caps; see next_batch).
    Deterministic: the same arguments give the same bytes, so a resend is the same batch."""
    return _seal(site, after, records, _raw(after, records), codec, level)


def decode_batch(data: bytes, site: str | None = None, max_raw: int = MAX_RAW) -> Batch:
    """Validate everything and return the batch, or raise BatchError saying what is wrong."""
    data = bytes(data)
    if len(data) < MIN_SIZE:
        raise BatchError(f"truncated: {len(data)} bytes, a batch has at least {MIN_SIZE}")
    magic, version, codec_id, hlen, blen = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise BatchError("not a gatewayd batch (bad magic)")
    if version != VERSION:
        raise BatchError(f"unsupported batch version {version} (this side reads {VERSION})")
    want = _PREFIX.size + hlen + blen + _TRAILER
    if len(data) < want:
        raise BatchError(f"truncated: {len(data)} bytes of {want}")
    if len(data) > want:
        raise BatchError(f"{len(data) - want} bytes of trailing garbage")
    if hashlib.sha256(data[:-_TRAILER]).digest() != data[-_TRAILER:]:
        raise BatchError("SHA-256 mismatch: corrupted or altered")
    codec = _CODEC_NAMES.get(codec_id)
    if codec is None:
        raise BatchError(f"unknown codec {codec_id}")
    if not 0 < hlen <= MAX_HEADER:
        raise BatchError(f"header of {hlen} bytes (1..{MAX_HEADER})")
    try:
        h = strict_loads(data[_PREFIX.size:_PREFIX.size + hlen])
    except ValueError as e:   # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise BatchError(f"header is not JSON: {e}") from None
    if not isinstance(h, dict) or set(h) != _HEADER_KEYS:
        raise BatchError(f"header must have exactly {sorted(_HEADER_KEYS)}")
    if type(h["site"]) is not str or type(h["raw_sha256"]) is not str:
        raise BatchError("header: site and raw_sha256 must be strings")
    if not all(_is_int(h[k]) for k in ("after", "first", "last", "count", "raw_len")):
        raise BatchError("header: after, first, last, count and raw_len must be integers")
    if site is not None and h["site"] != site:
        raise BatchError(f"batch is for site {h['site']!r}, not {site!r}")
    if not (0 <= h["after"] < h["first"] <= h["last"] and 0 < h["count"] <= h["last"] - h["after"]):
        raise BatchError("header: need 0 <= after < first <= last and 0 < count <= last - after")
    if not 0 < h["raw_len"] <= max_raw:
        raise BatchError(f"header claims {h['raw_len']} bytes uncompressed (limit {max_raw})")
    raw = _decompress(data[_PREFIX.size + hlen:-_TRAILER], codec, h["raw_len"])
    if hashlib.sha256(raw).hexdigest() != h["raw_sha256"]:
        raise BatchError("raw_sha256 mismatch: the body is not what the sender hashed")
    try:
        body = strict_loads(raw)
    except ValueError as e:
        raise BatchError(f"body is not JSON: {e}") from None
    try:
        rows = columns.decode(body, h["after"], h["count"])
    except columns.BodyError as e:
        raise BatchError(f"body: {e}") from None
    except RecursionError:
        # A value nested a few hundred deep parses, but copying it when a later record
        # inherits it recurses past the stack: malformed, like any other bad body.
        raise BatchError("body: a value is nested too deeply") from None
    # Deltas >= 1 from `after` make the seqs rise; the header must name the same range.
    if rows[0][0] != h["first"] or rows[-1][0] != h["last"]:
        raise BatchError("header first/last do not match the records")
    records = tuple(Record(*row) for row in rows)
    return Batch(h["site"], h["after"], records, codec, h["raw_len"], h["raw_sha256"],
                 data[-_TRAILER:].hex(), data)


# -- caps ----------------------------------------------------------------------------------------

def next_batch(records: Sequence[Record], site: str, after: int, *,
               max_records: int = DEFAULT_MAX_RECORDS, max_bytes: int = DEFAULT_MAX_BYTES,
               codec: str = "zstd", level: int | None = None) -> Batch | None:
    """The longest prefix of `records` (seqs above `after`) that fits both caps, or None.

    Compressed size is only known after compressing, so the prefix is found by trying:
    start from everything the record cap allows, then scale by how far off the size was.
    Each try depends on the inputs alone, so the same records always cut the same batch
    (a rebuilt batch after a restart is byte for byte the one sent before). A fill of 90%
    of the cap stops the search: the last 10% is worth less than another compression."""
    if max_records < 1 or max_bytes < MIN_SIZE:
        raise ValueError("max_records must be >= 1 and max_bytes >= the smallest batch")
    pool = list(records[:max_records])
    if not pool:
        return None
    n, best, over = len(pool), None, len(pool) + 1   # over: fewest records known not to fit
    # Start near the answer, not at the record cap: a few hundred records tell the size
    # of one, without serialising thousands that will not be sent.
    probe = min(n, 256)
    per_record = len(_raw(after, pool[:probe])) / probe
    n = max(1, min(n, int(max_bytes * _GUESS_RATIO / per_record)))
    for _ in range(16):
        raw = _raw(after, pool[:n])
        b = _seal(site, after, pool[:n], raw, codec, level) if len(raw) <= MAX_RAW else None
        if b is not None and b.size <= max_bytes:
            best = b
            if n == len(pool) or n + 1 >= over or b.size >= 0.9 * max_bytes:
                return best
            n = min(over - 1, max(n + 1, int(n * max_bytes / b.size * 0.97)))
            continue
        over = n
        size, cap = (b.size, max_bytes) if b is not None else (len(raw), MAX_RAW)
        if n == 1:
            raise RecordTooLarge(pool[0].seq, size, cap)
        n = max(1, min(n - 1, int(n * cap / size * 0.97)))
        if best is not None and n <= best.count:
            return best
    while best is None:   # only a pathological size curve gets here: halve until it fits
        n = max(1, min(n, over - 1) // 2)
        raw = _raw(after, pool[:n])
        b = _seal(site, after, pool[:n], raw, codec, level) if len(raw) <= MAX_RAW else None
        if b is not None and b.size <= max_bytes:
            best = b
        elif n == 1:
            raise RecordTooLarge(pool[0].seq, b.size if b else len(raw), max_bytes)
        else:
            over = n
    return best


def build_batches(records: Sequence[Record], site: str, after: int, *,
                  max_records: int = DEFAULT_MAX_RECORDS, max_bytes: int = DEFAULT_MAX_BYTES,
                  codec: str = "zstd", level: int | None = None) -> list[Batch]:
    """All of `records` as consecutive batches, each cut from the previous one's last seq."""
    out: list[Batch] = []
    i = 0
    while i < len(records):
        b = next_batch(records[i:i + max_records], site, after, max_records=max_records,
                       max_bytes=max_bytes, codec=codec, level=level)
        assert b is not None
        out.append(b)
        i += b.count
        after = b.last_seq
    return out
