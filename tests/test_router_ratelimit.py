from __future__ import annotations

from gatewayd.ratelimit import RateLimiter
from gatewayd.router import Router


def test_router_base_code_and_shortcuts():
    r = Router({"*383#": "lending"})
    assert r.route("*383#").typed_ahead == ()
    assert r.route(" *383# ").service == "lending"
    assert r.route("*383*1*2#").typed_ahead == ("1", "2")
    assert r.route("*383*1*2#").code == "*383#"
    assert r.route("383").service == "lending"
    assert r.route("*384#") is None
    assert r.route("*3831#") is None
    assert r.route("") is None


def test_rate_limiter_bursts_then_refills():
    rl = RateLimiter(per_minute=60, burst=3)
    assert [rl.allow("a", 0.0) for _ in range(4)] == [True, True, True, False]
    assert rl.allow("b", 0.0)  # another phone is not affected
    assert not rl.allow("a", 0.5)
    assert rl.allow("a", 1.6)  # one token per second


def test_rate_limiter_memory_is_bounded():
    rl = RateLimiter(per_minute=60, burst=3, max_keys=100)
    for i in range(1000):
        rl.allow(str(i), float(i))
    assert len(rl) == 100
