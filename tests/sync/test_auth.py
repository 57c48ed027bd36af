"""Request signing and replay protection: what passes, what gets 401, and why."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from sync.auth import (
    H_NONCE,
    H_SIGNATURE,
    H_SITE,
    H_TIMESTAMP,
    AuthError,
    Verifier,
    callback_token,
    canonical_request,
    clock_offset,
    http_date,
    sign,
    sign_response,
    verify_response,
)

KEY = bytes.fromhex("6b" * 32)
NOW = 1764316800
BODY = b'{"site":"site-1","last_seq":250,"batch_sha256":"' + b"ab" * 32 + b'"}'
NONCE = "5f0c7d2e9a4b1c3d8e6f0a2b4c6d8e0f"


def _verifier(**kw) -> Verifier:
    return Verifier({"site-1": KEY, "site-2": bytes(32)}, **kw)


def _signed(method="POST", target="/sync/ack", body=BODY, site="site-1", key=KEY, now=NOW,
            nonce=NONCE):
    return sign(method, target, body, site, key, now, nonce)


def test_worked_example_in_the_protocol_doc():
    # docs/sync-protocol.md quotes these exact values (cross-checked with `openssl dgst
    # -sha256 -mac HMAC`); if this changes, so must the doc.
    text = canonical_request("site-1", "POST", "/sync/ack", BODY, NOW, NONCE)
    assert text == ("GWD1-HMAC-SHA256\nsite-1\nPOST\n/sync/ack\n"
                    + hashlib.sha256(BODY).hexdigest() + f"\n{NOW}\n{NONCE}")
    assert hashlib.sha256(BODY).hexdigest() == \
        "619e17b3923430bf7602873f9981a65c3351ac09a4bb4c4376714ad4ae82f755"
    assert _signed()[H_SIGNATURE] == \
        "b42948bb22f6079542bd8cba406f67d70c3f45eb82eaad6c2590c8904b687771"
    answer = sign_response(200, b'{"checkpoint":250}', "site-1", KEY, NONCE, NOW + 1)
    assert answer[H_SIGNATURE] == \
        "06fea50542fe581a52ac5aeb1ecf5c5175f87ac315972459e337571313969d8a"
    doc = (Path(__file__).resolve().parents[2] / "docs" / "sync-protocol.md").read_text()
    for value in (hashlib.sha256(BODY).hexdigest(), _signed()[H_SIGNATURE],
                  answer[H_SIGNATURE], NONCE, BODY.decode()):
        assert value in doc


def test_a_good_request_passes_and_names_its_site():
    h = _signed()
    assert set(h) == {H_SITE, H_TIMESTAMP, H_NONCE, H_SIGNATURE}
    assert _verifier().verify("POST", "/sync/ack", h, BODY, NOW + 3) == "site-1"
    # ASGI hands headers over as lowercase byte pairs.
    pairs = [(k.lower().encode(), v.encode()) for k, v in _signed(nonce="b" * 32).items()]
    assert _verifier().verify("POST", "/sync/ack", pairs, BODY, NOW) == "site-1"


@pytest.mark.parametrize("change", [
    dict(method="PUT"), dict(target="/sync/ack?x=1"), dict(target="/sync/inbound"),
    dict(body=BODY + b" "), dict(body=BODY.replace(b"250", b"251")),
])
def test_anything_altered_fails_the_signature(change):
    args = {"method": "POST", "target": "/sync/ack", "body": BODY, **change}
    with pytest.raises(AuthError) as e:
        _verifier().verify(args["method"], args["target"], _signed(), args["body"], NOW)
    assert e.value.code == "bad_signature"


@pytest.mark.parametrize("header, value, code", [
    (H_TIMESTAMP, str(NOW + 1), "bad_signature"),
    (H_NONCE, "c" * 32, "bad_signature"),
    (H_SITE, "site-2", "bad_signature"),        # another site's key does not match
    (H_SITE, "site-9", "unknown_site"),
    (H_SIGNATURE, "0" * 64, "bad_signature"),
    (H_SIGNATURE, "XYZ", "malformed"),
    (H_NONCE, "short", "malformed"),
    (H_SITE, "site-1\nPOST", "malformed"),
    (H_TIMESTAMP, "-5", "malformed"),
])
def test_altered_headers_fail(header, value, code):
    h = {**_signed(), header: value}
    with pytest.raises(AuthError) as e:
        _verifier().verify("POST", "/sync/ack", h, BODY, NOW)
    assert e.value.code == code


def test_a_missing_or_doubled_header_fails():
    for name in (H_SITE, H_TIMESTAMP, H_NONCE, H_SIGNATURE):
        h = {k: v for k, v in _signed().items() if k != name}
        with pytest.raises(AuthError, match=f"missing header {name}"):
            _verifier().verify("POST", "/sync/ack", h, BODY, NOW)
    pairs = list(_signed().items()) + [(H_NONCE.lower(), "d" * 32)]
    with pytest.raises(AuthError, match="twice"):
        _verifier().verify("POST", "/sync/ack", pairs, BODY, NOW)


def test_a_replay_within_the_window_fails_and_a_new_nonce_passes():
    v = _verifier()
    assert v.verify("POST", "/sync/ack", _signed(), BODY, NOW) == "site-1"
    with pytest.raises(AuthError) as e:
        v.verify("POST", "/sync/ack", _signed(), BODY, NOW + 299)
    assert e.value.code == "replay"
    assert v.verify("POST", "/sync/ack", _signed(nonce="e" * 32), BODY, NOW + 1) == "site-1"
    # Nonces are per site: another site may happen to pick the same one.
    h = _signed(site="site-2", key=bytes(32))
    assert v.verify("POST", "/sync/ack", h, BODY, NOW) == "site-2"


@pytest.mark.parametrize("skew", [-301, 301, -86400, 10 ** 9])
def test_timestamps_outside_the_window_fail_as_stale(skew):
    with pytest.raises(AuthError) as e:
        _verifier(window_seconds=300).verify("POST", "/sync/ack", _signed(), BODY, NOW + skew)
    # The signature was good, so the server may tell this client its time (signed).
    assert (e.value.code, e.value.site, e.value.nonce) == ("stale", "site-1", NONCE)


def test_the_edges_of_the_window_pass():
    for skew, nonce in ((-300, "1" * 32), (300, "2" * 32)):
        assert _verifier().verify("POST", "/sync/ack", _signed(nonce=nonce), BODY,
                                  NOW + skew) == "site-1"


def test_nonce_memory_is_bounded_by_the_window_and_by_its_size():
    v = _verifier(window_seconds=60, nonce_cache_size=50)
    for i in range(50):
        v.verify("POST", "/sync/ack", _signed(nonce=f"{i:032d}", now=NOW), BODY, NOW)
    assert v.remembered("site-1") == 50
    with pytest.raises(AuthError) as e:   # full: refused, never evicting a live nonce
        v.verify("POST", "/sync/ack", _signed(nonce="f" * 32), BODY, NOW)
    assert e.value.code == "busy"
    # Once their timestamps leave the window they are forgotten; a replay of one of them
    # is then refused by the timestamp instead.
    later = NOW + 61
    v.verify("POST", "/sync/ack", _signed(nonce="f" * 32, now=later), BODY, later)
    assert v.remembered("site-1") == 1
    with pytest.raises(AuthError) as e:
        v.verify("POST", "/sync/ack", _signed(nonce=f"{0:032d}", now=NOW), BODY, later)
    assert e.value.code == "stale"


def test_a_clock_stepped_back_does_not_reopen_old_requests():
    v = _verifier(window_seconds=60)
    v.verify("POST", "/sync/ack", _signed(), BODY, NOW)
    v.verify("POST", "/sync/ack", _signed(nonce="a" * 32, now=NOW + 120), BODY, NOW + 120)
    assert v.remembered("site-1") == 1                  # the first nonce is forgotten
    with pytest.raises(AuthError) as e:                 # clock back to NOW: still stale
        v.verify("POST", "/sync/ack", _signed(), BODY, NOW)
    assert e.value.code == "stale"


def test_key_rotation_accepts_either_key():
    new = bytes.fromhex("7c" * 32)
    v = Verifier({"site-1": [new, KEY]})
    assert v.verify("POST", "/sync/ack", _signed(), BODY, NOW) == "site-1"
    assert v.verify("POST", "/sync/ack", _signed(key=new, nonce="9" * 32), BODY, NOW) == "site-1"


def test_signed_responses_bind_status_body_and_the_request_nonce():
    h = sign_response(200, b'{"checkpoint":250}', "site-1", KEY, NONCE, NOW + 2)
    assert verify_response(200, h, b'{"checkpoint":250}', "site-1", KEY, NONCE) == NOW + 2
    for status, body, nonce in ((409, b'{"checkpoint":250}', NONCE),
                                (200, b'{"checkpoint":251}', NONCE),
                                (200, b'{"checkpoint":250}', "0" * 32)):   # an old answer
        with pytest.raises(AuthError) as e:
            verify_response(status, h, body, "site-1", KEY, nonce)
        assert e.value.code == "bad_signature"
    with pytest.raises(AuthError, match="missing"):
        verify_response(200, {}, b"", "site-1", KEY, NONCE)


def test_clock_offset_from_a_signed_answer():
    # A box booted in 1970: sent at t=100, answer at t=101.2, server said NOW.
    off = clock_offset(NOW, 100.0, 101.2)
    assert abs((100.6 + off) - (NOW + 0.5)) < 1e-6
    signed_now = 101.2 + off
    assert _verifier().verify("POST", "/sync/ack", _signed(now=signed_now), BODY, NOW + 1)
    assert http_date("Sat, 28 Nov 2026 07:46:26 GMT") == 1795851986.0
    assert http_date("yesterday") is None


def test_signing_refuses_fields_that_could_blur_the_canonical_string():
    with pytest.raises(ValueError):
        sign("POST", "/x", b"", "site\n1", KEY, NOW, NONCE)
    with pytest.raises(ValueError):
        sign("POST", "/x", b"", "site-1", KEY, NOW, "n\n" * 10)
    assert len(sign("POST", "/x", b"", "site-1", KEY, NOW)[H_NONCE]) == 32   # fresh by default


def test_callback_tokens_are_per_site_and_action_and_need_the_key():
    key, other = bytes(range(32)), bytes(32)
    t = callback_token(key, "site-1", "site-1-mp-3f9a0c1b2d4e-17")
    assert len(t) == 24 and int(t, 16) >= 0                     # hex: fits a URL path
    assert t == callback_token(key, "site-1", "site-1-mp-3f9a0c1b2d4e-17")
    assert t != callback_token(key, "site-1", "site-1-mp-3f9a0c1b2d4e-18")  # the next key
    assert t != callback_token(key, "site-2", "site-1-mp-3f9a0c1b2d4e-17")
    assert t != callback_token(other, "site-1", "site-1-mp-3f9a0c1b2d4e-17")


def test_a_tokened_callback_url_without_a_token_maker_is_a_bug_not_a_guess():
    from sync import daraja
    cfg = daraja.DarajaConfig("k", "s", "174379", "p",
                              **daraja.callback_urls("https://up.example/"))
    with pytest.raises(ValueError, match="callback_token"):
        daraja.stk_push_body(cfg, site="site-1", key="k-1", msisdn="254712345678",
                             amount_cents=100, loan_ref="REF", description="Loan", now=0.0)
    from dataclasses import replace
    cfg = replace(cfg, callback_token=lambda site, key: f"T{site}{key}")
    body = daraja.stk_push_body(cfg, site="site-1", key="k-1", msisdn="254712345678",
                                amount_cents=100, loan_ref="REF", description="Loan", now=0.0)
    assert body["CallBackURL"] == "https://up.example/daraja/stk/site-1/k-1/Tsite-1k-1"
