"""SMS out through the pool and fake modems: single, multipart, UCS-2, status reports,
failures handed back to the queue and on to another modem."""

from __future__ import annotations

import gsmmodem.pdu as lib
import trio

from modem import pdu as P
from modem.events import SendFailed, StatusReport, Submitted
from tests.modem.conftest import fast, running, until, until_state

BOB = "254712345678"


async def test_single_sms(fakes, recorder):
    fake = fakes()
    async with running([fast(fake.link)], recorder) as pool:
        assert pool.submit(1, BOB, "Loan approved. Ksh 500 sent.")
        assert not pool.submit(1, BOB, "Loan approved. Ksh 500 sent.")   # already held
        [sub] = await recorder.wait_count(Submitted, 1)
        assert sub == Submitted(1, "gsmmodem-A", (fake.sent[0].mr,), 1)
        sent = P.decode(fake.sent[0].pdu)
        assert (sent.destination, sent.text, sent.status_report) == (
            "+" + BOB, "Loan approved. Ksh 500 sent.", True)
        # An independent reader agrees.
        assert lib.decodeSmsPdu(fake.sent[0].pdu)["text"] == "Loan approved. Ksh 500 sent."
        assert not pool.holds(1) and pool.status()[0]["sent"] == 1


async def test_multipart_gsm7_and_ucs2(fakes, recorder):
    fake = fakes()
    long_text = "Ombi la mkopo wa Ksh 5,000 kutoka kwa Amina {ref 17} € " * 6
    emoji = "Asante sana 😀 " * 8          # UCS-2, an emoji per 15 characters
    async with running([fast(fake.link)], recorder) as pool:
        pool.submit(10, BOB, long_text)
        pool.submit(11, BOB, emoji)
        subs = await recorder.wait_count(Submitted, 2)
    by_id = {s.outbox_id: s for s in subs}
    texts: dict[int, list] = {10: [], 11: []}
    for sent in fake.sent:
        d = P.decode(sent.pdu)
        texts[d.concat.reference].append(d)
    for outbox_id, text in ((10, long_text), (11, emoji)):
        parts = texts[outbox_id]
        assert len(by_id[outbox_id].references) == len(parts) == parts[0].concat.total > 1
        assert "".join(p.text for p in sorted(parts, key=lambda p: p.concat.seq)) == text
    assert texts[11][0].alphabet == 0x08


async def test_status_reports_stored_and_direct_match_the_outbox(fakes, recorder):
    fake = fakes()
    async with running([fast(fake.link)], recorder) as pool:
        pool.submit(7, BOB, "x" * 200)                   # two parts
        [sub] = await recorder.wait_count(Submitted, 1)
        first, second = sub.references
        fake.status_report(second, "+" + BOB, 0x00)                 # +CDSI, stored in SR
        r1 = (await recorder.wait_count(StatusReport, 1))[0]
        assert (r1.outbox_id, r1.part, r1.outcome, r1.message_outcome) == (7, 2, "delivered", None)
        await until(fake, lambda: fake.stored("SR") == {})          # deleted after commit
        fake.status_report(first, "+" + BOB, 0x00, direct=True)    # +CDS, not stored
        r2 = (await recorder.wait_count(StatusReport, 2))[1]
        assert (r2.outbox_id, r2.part, r2.message_outcome) == (7, 1, "delivered")
        fake.status_report(200, "+254700000000", 0x46)              # not one of ours
        r3 = (await recorder.wait_count(StatusReport, 3))[2]
        assert r3.outbox_id is None and r3.outcome == "failed"


async def test_report_for_a_message_sent_before_a_restart(fakes, recorder):
    fake = fakes()
    async with running([fast(fake.link)], recorder) as pool:
        pool.remember(99, "gsmmodem-A", [42], BOB)       # from the store, at start
        fake.status_report(42, "+" + BOB, 0x00)
        [r] = await recorder.wait_count(StatusReport, 1)
        assert r.outbox_id == 99 and r.message_outcome == "delivered"


async def test_failed_send_goes_to_the_other_modem(fakes, recorder):
    a, b = fakes("gsmmodem-A"), fakes("gsmmodem-B")
    a.fail_sends = ["+CMS ERROR: 38"] * 10            # network out of order, on A's SIM only
    async with running([fast(a.link), fast(b.link)], recorder) as pool:
        for i in range(1, 5):
            pool.submit(i, BOB, f"message {i}")
        subs = await recorder.wait_count(Submitted, 4)
    assert {s.modem for s in subs} == {"gsmmodem-B"}
    failed = recorder.of(SendFailed)
    assert failed and all(f.modem == "gsmmodem-A" and not f.final for f in failed)
    # Each SMS that A failed went to B, once: nothing lost, nothing sent twice.
    assert sorted(s.outbox_id for s in subs) == [1, 2, 3, 4]
    assert len(b.sent) == 4


async def test_permanent_error_fails_at_once_and_retries_stop(fakes, recorder):
    fake = fakes()
    fake.fail_sends = ["+CMS ERROR: 21", "+CMS ERROR: 42", "+CMS ERROR: 42"]
    async with running([fast(fake.link)], recorder, max_attempts=2) as pool:
        pool.submit(1, BOB, "rejected")                  # 21: short message transfer rejected
        pool.submit(2, BOB, "congested")                 # 42 twice: gives up after 2 tries
        await recorder.wait_for(lambda r: len([f for f in r.of(SendFailed) if f.final]) == 2)
        final = {f.outbox_id: f for f in recorder.of(SendFailed) if f.final}
        assert final[1].attempts == 1 and final[1].error == "+CMS ERROR: 21"
        assert final[2].attempts == 2
        assert pool.queued == 0 and not pool.holds(1) and not pool.holds(2)


async def test_least_busy_modem_first(fakes, recorder):
    a = fakes("gsmmodem-A", send_delay=0.3)
    b = fakes("gsmmodem-B", send_delay=0.3)
    async with running([fast(a.link), fast(b.link)], recorder) as pool:
        for i in range(8):
            pool.submit(i, BOB, f"n{i}")
        await until(a, lambda: len(a.sent) + len(b.sent) >= 2)
        rows = {r["name"]: r["queue_depth"] for r in pool.status()}
        assert rows["gsmmodem-A"] >= 1 and rows["gsmmodem-B"] >= 1   # both working at once
        await recorder.wait_count(Submitted, 8)
    assert len(a.sent) == 4 and len(b.sent) == 4


async def test_a_modem_off_the_network_gets_nothing_to_send(fakes, recorder):
    a, b = fakes("gsmmodem-A"), fakes("gsmmodem-B")
    a.creg = 2                                        # searching
    async with running([fast(a.link), fast(b.link)], recorder) as pool:
        w = pool.workers[0]
        while w.registration is None:
            await pool._changed.wait()
        pool.submit(1, BOB, "hi")
        pool.submit(2, BOB, "hi")
        await recorder.wait_count(Submitted, 2)
        assert not a.sent and len(b.sent) == 2
        assert pool.status()[0]["registration"] == "searching"
        await until_state(pool, "gsmmodem-A", "ready")


def test_the_package_exports_the_pool_lazily():
    import modem
    assert modem.ModemPool is __import__("modem.pool").pool.ModemPool


def test_cancel_before_sending(tmp_path, recorder):
    from modem.pool import ModemPool
    pool = ModemPool([fast(tmp_path / "gsmmodem-A")], recorder)    # not running: nothing goes
    assert pool.submit(5, BOB, "later") and pool.queued == 1
    assert pool.cancel(5) and not pool.holds(5) and pool.queued == 0
    assert not pool.cancel(5)


async def test_past_their_deadline_they_expire_not_go(fakes, recorder, monkeypatch):
    import time

    import modem.pool
    monkeypatch.setattr(modem.pool, "SWEEP_SECONDS", 0.05)
    fake = fakes()
    fake.hang()                                        # nothing can be sent for now
    cfg = fast(fake.link, at_timeout=0.3)
    pool = modem.pool.ModemPool([cfg], recorder, min_backoff=0.05, max_backoff=0.1)
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run)
        pool.submit(1, BOB, "stale soon", deadline=time.time() + 0.2)
        pool.submit(2, BOB, "still fresh", deadline=time.time() + 3600)
        assert pool.held == {1, 2}
        [gone] = await recorder.wait_count(SendFailed, 1)
        assert (gone.outbox_id, gone.final, gone.expired, gone.attempts) == (1, True, True, 0)
        assert pool.held == {2}
        fake.unhang()
        [sub] = await recorder.wait_count(Submitted, 1)
        assert sub.outbox_id == 2 and len(fake.sent) == 1
        nursery.cancel_scope.cancel()
