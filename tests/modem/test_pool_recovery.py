"""Modems that hang, babble, disappear and come back, and SIM PINs: what the pool did."""

from __future__ import annotations

import logging

import trio

from modem.events import SendFailed, SmsIn, Submitted
from modem.pool import ModemPool
from tests.modem.conftest import fast, running, until, until_state

BOB = "254712345678"


async def test_hang_resets_and_comes_back_with_its_queue(fakes, recorder):
    fake = fakes()
    async with running([fast(fake.link, at_timeout=0.4, poll_seconds=0.1)], recorder) as pool:
        w = pool.workers[0]
        fake.hang()                                       # stops answering, port stays open
        for i in range(1, 4):
            pool.submit(i, BOB, f"while hung {i}")
        await until_state(pool, w.name, "down")
        assert w.last_error.startswith("hang: no answer to")
        assert not fake.sent
        fake.unhang()
        subs = await recorder.wait_count(Submitted, 3)
        assert sorted(s.outbox_id for s in subs) == [1, 2, 3]
        assert w.sessions >= 2 and w.state == "ready"
        assert len(fake.sent) == 3                        # none lost, none twice


async def test_garbage_answers_reset_the_modem(fakes, recorder):
    fake = fakes()
    async with running([fast(fake.link, poll_seconds=0.05)], recorder) as pool:
        w = pool.workers[0]
        fake.babble = True                                # noise and a bare OK to everything
        await until_state(pool, w.name, "down")
        assert w.last_error.startswith("garbage: 3 health polls")
        assert w.garbage_lines >= 3
        fake.babble = False
        await until_state(pool, w.name, "ready")
        pool.submit(1, BOB, "after the noise")
        await recorder.wait_count(Submitted, 1)


async def test_unplugged_and_plugged_back(fakes, recorder):
    fake = fakes()
    async with running([fast(fake.link)], recorder) as pool:
        w = pool.workers[0]
        fake.eof()                                        # EOF on the port, /dev name gone
        await until_state(pool, w.name, "down")
        assert w.last_error.startswith("port gone")
        pool.submit(1, BOB, "queued while unplugged")
        pool.submit(2, BOB, "this one too")
        fake.deliver("+254712345678", "sent to the SIM meanwhile", notify=False)
        await until_state(pool, w.name, "connecting")     # tries, fails, backs off ...
        assert pool.queued == 2
        fake.reappear()                                   # same name, a new device
        subs = await recorder.wait_count(Submitted, 2)
        [sms] = await recorder.wait_count(SmsIn, 1)
        assert sorted(s.outbox_id for s in subs) == [1, 2] and w.sessions == 2
        assert sms.text == "sent to the SIM meanwhile"
        assert fake.opened == 2 and pool.status()[0]["state"] == "ready"


async def test_unplugged_during_a_send(fakes, recorder):
    fake = fakes(send_delay=30.0)                         # the network is slow to answer
    async with running([fast(fake.link, send_timeout=60)], recorder) as pool:
        pool.submit(1, BOB, "in flight")
        await until(fake, lambda: len(fake.sent) == 1)    # the PDU reached the modem
        with trio.fail_after(3):                          # not the 60 s send timeout
            fake.eof()
            [failed] = await recorder.wait_count(SendFailed, 1)
        assert failed.error.startswith("port gone") and not failed.final
        fake.send_delay = 0.0
        fake.reappear()
        [sub] = await recorder.wait_count(Submitted, 1)
        # At least once: the SMSC may have had the first copy.
        assert sub.attempts == 2 and len(fake.sent) == 2


async def test_hang_while_sending_hands_over_to_the_other_modem(fakes, recorder):
    a, b = fakes("gsmmodem-A"), fakes("gsmmodem-B")
    a.hang_at = "AT+CMGS"                                 # A freezes on the send itself
    cfg = {"at_timeout": 0.4, "send_timeout": 0.6}
    async with running([fast(a.link, **cfg), fast(b.link, **cfg)], recorder) as pool:
        pool.submit(1, BOB, "A takes it first (least busy, then by name)")
        [failed] = await recorder.wait_count(SendFailed, 1)
        assert failed.modem == "gsmmodem-A" and failed.error.startswith("hang: no answer to AT+CMGS")
        [sub] = await recorder.wait_count(Submitted, 1)
        assert sub.modem == "gsmmodem-B" and sub.attempts == 2
        assert not a.sent and len(b.sent) == 1
        a.unhang()


async def test_sim_pin_is_entered_and_never_logged(fakes, recorder, caplog):
    caplog.set_level(logging.DEBUG, logger="gsmmodem")   # the library logs every command
    fake = fakes(pin="4321", strict_pin=True)            # ATZ refused: PIN entered, echo on
    async with running([fast(fake.link, pin="4321")], recorder) as pool:
        assert 'AT+CPIN="4321"' in fake.commands
        assert "4321" not in repr(pool.configs[0])
    assert "CPIN=<hidden>" in caplog.text and "4321" not in caplog.text


async def test_wrong_pin_is_not_tried_again(fakes, recorder):
    fake = fakes(pin="4321")
    pool = ModemPool([fast(fake.link, pin="1111")], recorder, min_backoff=0.01, max_backoff=0.02)
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run)
        await until_state(pool, "gsmmodem-A", "failed")
        assert "IncorrectPinError" in pool.workers[0].last_error
        assert not pool.healthy()
        # "failed" is where the worker stays (it sleeps until the daemon reloads it):
        # one PIN attempt spent, two left for the operator.
        assert sum(c.startswith("AT+CPIN=") for c in fake.commands) == 1
        nursery.cancel_scope.cancel()


async def test_no_pin_configured_is_retried_and_said(fakes, recorder):
    fake = fakes(pin="4321")
    pool = ModemPool([fast(fake.link)], recorder, min_backoff=0.01, max_backoff=0.02)
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run)
        w = pool.workers[0]
        while w.sessions == 0 and (w.last_error or "").find("PIN") < 0:
            await pool._changed.wait()
        assert "asks for a PIN" in w.last_error
        nursery.cancel_scope.cancel()


async def test_stopping_during_a_send_does_not_wait_out_the_network(fakes, recorder):
    fake = fakes(send_delay=30.0)
    with trio.fail_after(5):                              # not send_timeout's 60 s
        async with running([fast(fake.link, send_timeout=60)], recorder) as pool:
            pool.submit(1, BOB, "in flight at shutdown")
            await until(fake, lambda: len(fake.sent) == 1)
    assert not recorder.of(Submitted)
