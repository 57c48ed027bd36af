"""The SMS route: SMPP while bound, the modems after a grace period without a bind,
back to SMPP at once, and never a row two channels could both offer."""

from __future__ import annotations

from dataclasses import dataclass, field

from gatewayd.sms_route import MODEMS, SMPP, SmsRoute


@dataclass
class Fake:
    ok: bool = True
    held: set[int] = field(default_factory=set)

    def can_send(self) -> bool:
        return self.ok

    def held_ids(self) -> frozenset[int]:
        return frozenset(self.held)


def route(takeover: float = 60.0, smpp: Fake | None = None,
          modems: Fake | None = None) -> SmsRoute:
    r = SmsRoute(takeover)
    if smpp is not None:
        r.channels[SMPP] = smpp
    if modems is not None:
        r.channels[MODEMS] = modems
    return r


def test_modems_alone_send_while_one_can():
    m = Fake()
    r = route(modems=m)
    assert r.sender(0) == MODEMS
    m.ok = False
    assert r.sender(1) is None


def test_smpp_alone_sends_even_unbound_its_sender_queues():
    assert route(smpp=Fake(ok=False)).sender(0) == SMPP


def test_takeover_after_the_grace_and_back_at_once_on_the_bind():
    s, m = Fake(ok=True), Fake()
    r = route(60.0, s, m)
    assert r.sender(0) == SMPP
    s.ok = False
    assert r.sender(10) == SMPP          # unbound since 10
    assert r.sender(69.9) == SMPP        # a bind that comes back within the grace: no flap
    assert r.sender(70) == MODEMS
    assert r.sender(500) == MODEMS
    s.ok = True
    assert r.sender(501) == SMPP
    s.ok = False                         # a new outage starts its own grace
    assert r.sender(502) == SMPP
    assert r.sender(561) == SMPP
    assert r.sender(562) == MODEMS
    assert r.switches == 4               # smpp, modems, smpp, modems


def test_no_takeover_when_disabled_or_no_modem_can_send():
    s, m = Fake(ok=False), Fake(ok=False)
    assert route(60.0, s, m).sender(10_000) == SMPP
    assert route(0.0, Fake(ok=False), Fake()).sender(10_000) == SMPP


def test_held_is_every_channels_rows():
    r = route(60.0, Fake(held={1, 2}), Fake(held={2, 3}))
    assert r.held() == {1, 2, 3}
