"""PIN hashing: salted scrypt over an HMAC with a site key kept outside the database.

A 4-digit PIN has only 10,000 values, so no hash cost alone protects a stolen database;
the key (a file beside it, mode 0600, not in backups of the DB) does: without it the
hashes cannot be tested at all. scrypt adds cost for whoever holds both. The defence
that matters on-line is the lockout after three wrong PINs (store.lending).

These functions are slow on purpose: call them off the event loop and off the writer
thread (trio.to_thread); hashlib.scrypt releases the GIL.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets

SCHEME = "scrypt1"


def load_or_create_key(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            key = f.read()
        if len(key) >= 32:
            return key
        raise ValueError(f"PIN key file {path} is shorter than 32 bytes")
    except FileNotFoundError:
        pass
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    key = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
        f.flush()
        os.fsync(f.fileno())
    return key


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode("ascii").rstrip("=")


def _unb64(s: str) -> bytes:
    return base64.b64decode(s + "=" * (-len(s) % 4))


def _derive(pin: str, key: bytes, salt: bytes, log2_n: int) -> bytes:
    peppered = hmac.new(key, pin.encode("utf-8"), hashlib.sha256).digest()
    return hashlib.scrypt(peppered, salt=salt, n=1 << log2_n, r=8, p=1, dklen=32,
                          maxmem=256 * 1024 * 1024)


def hash_pin(pin: str, key: bytes, log2_n: int = 12) -> str:
    salt = secrets.token_bytes(16)
    return f"{SCHEME}${log2_n}${_b64(salt)}${_b64(_derive(pin, key, salt, log2_n))}"


def verify_pin(pin: str, stored: str | None, key: bytes) -> bool:
    if not stored:
        return False
    try:
        scheme, log2_n, salt, digest = stored.split("$")
        if scheme != SCHEME:
            return False
        want = _unb64(digest)
        got = _derive(pin, key, _unb64(salt), int(log2_n))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(want, got)


def is_pin_shape(text: str) -> bool:
    return len(text) == 4 and text.isascii() and text.isdigit()


def is_weak_pin(pin: str) -> bool:
    """1111, 1234, 4321 and the like: the first guesses of anyone holding the phone."""
    digits = [int(c) for c in pin]
    steps = {b - a for a, b in zip(digits, digits[1:])}
    return len(steps) == 1 and steps <= {0, 1, -1}
