"""Per-site request signing for sync, and replay protection. Sans-I/O: the caller passes
the clock (`now`) and the raw request; nothing here reads a clock, a socket or a file.

Every sync request, in both directions, carries four headers:

    X-Gatewayd-Site: site-1
    X-Gatewayd-Timestamp: 1764316800            (unix seconds of the signer's clock)
    X-Gatewayd-Nonce: 32 hex digits, fresh per request
    X-Gatewayd-Signature: hex HMAC-SHA256(site key, canonical request)

canonical request = "GWD1-HMAC-SHA256\\n" site "\\n" METHOD "\\n" target "\\n"
                    hex SHA-256(body) "\\n" timestamp "\\n" nonce
(target: the request line's path and query exactly as sent). Separate headers rather
than one Authorization header, because every HTTP stack reads a named header without a
parser of ours. Answers are signed too, bound to the request's nonce, so a forged or
replayed ack or M-PESA result on the way back is refused as well.

Clocks: a box often has no RTC and boots in 1970. The window only needs the two sides to
agree, so the *client* adopts the server's clock: every signed answer carries the
server's timestamp (a 401 for a stale timestamp included, when the signature was good),
and `clock_offset` turns it into an offset the client adds to its own clock.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from email.utils import parsedate_to_datetime

SCHEME = "GWD1-HMAC-SHA256"
RESPONSE_SCHEME = "GWD1-HMAC-SHA256-RESPONSE"
H_SITE = "X-Gatewayd-Site"
H_TIMESTAMP = "X-Gatewayd-Timestamp"
H_NONCE = "X-Gatewayd-Nonce"
H_SIGNATURE = "X-Gatewayd-Signature"
# Five minutes each way: room for a slow link and a clock learnt to within a second,
# short enough that the nonces to remember stay few.
DEFAULT_WINDOW = 300
# Per site. A box sends a request every few seconds at most; 10,000 in one window is a
# misbehaving client, refused rather than allowed to grow the verifier's memory.
DEFAULT_NONCE_CACHE = 10_000
# Restricted alphabets: a newline in any field could make two requests sign alike.
_SITE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_NONCE = re.compile(r"[A-Za-z0-9_-]{16,64}")
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_SIGNATURE = re.compile(r"[0-9a-f]{64}")

Headers = Mapping[str, str] | Iterable[tuple[bytes | str, bytes | str]]


class AuthError(Exception):
    """Answer 401 and change nothing. `code` is one of: missing, malformed, unknown_site,
    bad_signature, stale, replay, busy. Only for `stale` is the signature known good:
    then `site` and `nonce` are set, so the server can sign its 401 with its own time."""

    def __init__(self, code: str, reason: str, site: str | None = None,
                 nonce: str | None = None) -> None:
        super().__init__(reason)
        self.code, self.reason, self.site, self.nonce = code, reason, site, nonce


def _mac(key: bytes, text: str) -> str:
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


def canonical_request(site: str, method: str, target: str, body: bytes, timestamp: int,
                      nonce: str) -> str:
    return "\n".join((SCHEME, site, method.upper(), target, hashlib.sha256(body).hexdigest(),
                      str(timestamp), nonce))


def canonical_response(site: str, status: int, request_nonce: str, body: bytes,
                       timestamp: int) -> str:
    return "\n".join((RESPONSE_SCHEME, site, str(status), request_nonce,
                      hashlib.sha256(body).hexdigest(), str(timestamp)))


def new_nonce() -> str:
    return secrets.token_hex(16)


def sign(method: str, target: str, body: bytes, site_id: str, key: bytes, now: float,
         nonce: str | None = None) -> dict[str, str]:
    """The four headers for a request. `now` is the signer's clock plus its learnt offset."""
    nonce = new_nonce() if nonce is None else nonce
    if not _SITE.fullmatch(site_id) or not _NONCE.fullmatch(nonce):
        raise ValueError("site id or nonce outside their alphabets")
    ts = int(now)
    return {H_SITE: site_id, H_TIMESTAMP: str(ts), H_NONCE: nonce,
            H_SIGNATURE: _mac(key, canonical_request(site_id, method, target, body, ts, nonce))}


def sign_response(status: int, body: bytes, site_id: str, key: bytes, request_nonce: str,
                  now: float) -> dict[str, str]:
    ts = int(now)
    return {H_TIMESTAMP: str(ts),
            H_SIGNATURE: _mac(key, canonical_response(site_id, status, request_nonce, body, ts))}


def _lower(headers: Headers) -> dict[str, str]:
    """Header names case-insensitively (ASGI gives lowercase bytes pairs); a header given
    twice is refused, since two stacks may each pick a different copy."""
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    out: dict[str, str] = {}
    for name, value in pairs:
        n = (name.decode("latin-1") if isinstance(name, bytes) else name).lower()
        v = value.decode("latin-1") if isinstance(value, bytes) else value
        if n in out and n.startswith("x-gatewayd-"):
            raise AuthError("malformed", f"{n} given twice")
        out[n] = v
    return out


def _get(h: dict[str, str], name: str, pattern: re.Pattern[str]) -> str:
    v = h.get(name.lower())
    if v is None:
        raise AuthError("missing", f"missing header {name}")
    if not pattern.fullmatch(v):
        raise AuthError("malformed", f"malformed header {name}")
    return v


def _keys(k: bytes | Sequence[bytes]) -> Sequence[bytes]:
    return (k,) if isinstance(k, (bytes, bytearray)) else k


def verify_response(status: int, headers: Headers, body: bytes, site_id: str,
                    key: bytes | Sequence[bytes], request_nonce: str) -> int:
    """Check an answer to our own request; returns the server's timestamp (for
    `clock_offset`). No nonce memory needed: the signature binds our fresh nonce."""
    h = _lower(headers)
    ts = _get(h, H_TIMESTAMP, _TIMESTAMP)
    sig = _get(h, H_SIGNATURE, _SIGNATURE)
    text = canonical_response(site_id, status, request_nonce, body, int(ts))
    if not any(hmac.compare_digest(_mac(k, text), sig) for k in _keys(key)):
        raise AuthError("bad_signature", "response signature does not match")
    return int(ts)


class Verifier:
    """Server side: who sent this request, and is it fresh?

    `keys_by_site` maps a site id to its key, or to several during a key rotation (any
    one verifies). Nonces are remembered per site until their timestamp leaves the
    window (after that the timestamp check alone refuses a replay), at most
    `nonce_cache_size` per site."""

    def __init__(self, keys_by_site: Mapping[str, bytes | Sequence[bytes]],
                 window_seconds: int = DEFAULT_WINDOW,
                 nonce_cache_size: int = DEFAULT_NONCE_CACHE) -> None:
        self.keys = keys_by_site
        self.window, self.cache_size = window_seconds, nonce_cache_size
        self._seen: dict[str, dict[str, float]] = {}
        self._expiry: dict[str, list[tuple[float, str]]] = {}
        # The latest `now` seen. A clock stepped back (a box's RTC corrected) must not make
        # a request fresh again whose nonce was already forgotten.
        self._high = float("-inf")

    def verify(self, method: str, target: str, headers: Headers, body: bytes,
               now: float) -> str:
        """The authenticated site id, or AuthError. Checks run cheapest first, and the
        nonce is remembered only once the signature is good, so strangers cannot fill
        the memory."""
        now = self._high = max(self._high, now)
        h = _lower(headers)
        site = _get(h, H_SITE, _SITE)
        ts = int(_get(h, H_TIMESTAMP, _TIMESTAMP))
        nonce = _get(h, H_NONCE, _NONCE)
        sig = _get(h, H_SIGNATURE, _SIGNATURE)
        keys = self.keys.get(site)
        if keys is None:
            raise AuthError("unknown_site", f"unknown site {site!r}")
        text = canonical_request(site, method, target, body, ts, nonce)
        # compare_digest: the time taken must not tell how many leading digits were right.
        if not any(hmac.compare_digest(_mac(k, text), sig) for k in _keys(keys)):
            raise AuthError("bad_signature", "signature does not match")
        if abs(now - ts) > self.window:
            raise AuthError("stale", f"timestamp {ts} is {now - ts:+.0f} s from this side's "
                            f"clock (window ±{self.window} s)", site, nonce)
        seen = self._forget_expired(site, now)
        if nonce in seen:
            raise AuthError("replay", "nonce already used")
        if len(seen) >= self.cache_size:
            raise AuthError("busy", f"over {self.cache_size} requests in {self.window} s")
        expiry = ts + self.window
        seen[nonce] = expiry
        heapq.heappush(self._expiry.setdefault(site, []), (expiry, nonce))
        return site

    def _forget_expired(self, site: str, now: float) -> dict[str, float]:
        seen = self._seen.setdefault(site, {})
        heap = self._expiry.setdefault(site, [])
        while heap and heap[0][0] < now:
            _, nonce = heapq.heappop(heap)
            seen.pop(nonce, None)
        return seen

    def remembered(self, site: str) -> int:
        return len(self._seen.get(site, ()))


def clock_offset(server_time: float, sent_at: float, received_at: float) -> float:
    """Seconds to add to the local clock to read the server's. The server stamped some
    time between our send and receive, in whole seconds (floor): the middle, plus half
    a second, is the best guess, off by at most half the round trip plus half a second."""
    return server_time + 0.5 - (sent_at + received_at) / 2


def http_date(value: str) -> float | None:
    """Unix seconds of an HTTP `Date` header, None if unreadable. Unauthenticated: good
    for a log line ("the box's clock is 3 h slow"), never for setting the offset, which
    must come from a signed answer (`verify_response`), or a forged Date could move the
    box's clock back far enough for an old captured request to look fresh."""
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None


def callback_token(key: bytes, site: str, action_key: str) -> str:
    """The secret part of a Daraja callback URL for one action (docs/sync-protocol.md,
    section 11). Daraja's callbacks are unsigned and action keys are predictable (a run id
    and a counter), so without it anyone who learnt one key could post a forged verdict
    for the next. Made from the site key, so the box and the upstream both make and check
    it; 96 bits, hex, so it fits any URL path."""
    msg = b"gatewayd-daraja-callback\x00" + site.encode() + b"\x00" + action_key.encode()
    return hmac.new(key, msg, hashlib.sha256).hexdigest()[:24]

