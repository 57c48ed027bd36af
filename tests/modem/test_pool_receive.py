"""SMS in through fake modems: notifications (one, two in a burst, lost, inside another
answer), listings, multipart, duplicates, and the SIM delete that waits for the commit."""

from __future__ import annotations

import datetime as dt

from modem.events import SmsIn, Undecodable
from tests.modem import pdubuild as B
from tests.modem.conftest import fast, running, until

ALICE = "+254712345678"


async def test_receive_one_and_delete_after_commit(fakes, recorder):
    fake = fakes()
    async with running([fast(fake.link, list_seconds=30)], recorder):
        i = fake.deliver(ALICE, "BAL")
        [sms] = await recorder.wait_count(SmsIn, 1)
        assert (sms.sender, sms.text, sms.parts, sms.missing) == (ALICE, "BAL", 1, ())
        assert sms.scts == dt.datetime(2026, 11, 28, 18, 30, 5, tzinfo=B.EAT)
        await until(fake, lambda: ("SM", i) in fake.deletes)
        assert f"AT+CMGR={i}" in fake.commands                 # read through +CMTI
        assert not any(c.startswith("AT+CMGD=1,") for c in fake.commands)


async def test_two_notifications_in_one_burst(fakes, recorder):
    fake = fakes()
    async with running([fast(fake.link, list_seconds=30)], recorder):
        a = fake.deliver(ALICE, "first", notify=False)
        b = fake.deliver("+254712345679", "second", notify=False)
        fake.notify_together("SM", [a, b])
        smss = await recorder.wait_count(SmsIn, 2)
        assert {s.text for s in smss} == {"first", "second"}
        await until(fake, lambda: fake.stored() == {})


async def test_a_lost_notification_is_found_by_the_listing(fakes, recorder):
    fake = fakes()
    async with running([fast(fake.link, list_seconds=0.2)], recorder):
        fake.deliver(ALICE, "no +CMTI for this one", notify=False)
        [sms] = await recorder.wait_count(SmsIn, 1)
        assert sms.text == "no +CMTI for this one"
        await until(fake, lambda: fake.stored() == {})


async def test_notification_inside_another_answer(fakes, recorder):
    fake = fakes()
    async with running([fast(fake.link, list_seconds=30, poll_seconds=0.05)], recorder):
        i = fake.deliver(ALICE, "during AT+CSQ", notify=False)
        fake.urc_in_answer["AT+CSQ"] = f'\r\n+CMTI: "SM",{i}\r\n'.encode()
        [sms] = await recorder.wait_count(SmsIn, 1)
        assert sms.text == "during AT+CSQ"


async def test_multipart_out_of_order_reassembled(fakes, recorder):
    fake = fakes()
    async with running([fast(fake.link, list_seconds=30)], recorder):
        fake.deliver(ALICE, "wa Ksh 500", concat=(33, 3, 3))
        fake.deliver(ALICE, "Nimepokea ", concat=(33, 3, 1))
        assert not recorder.of(SmsIn)
        fake.deliver(ALICE, "mkopo ", concat=(33, 3, 2))
        [sms] = await recorder.wait_count(SmsIn, 1)
        assert (sms.text, sms.parts) == ("Nimepokea mkopo wa Ksh 500", 3)
        await until(fake, lambda: fake.stored() == {} and len(fake.deletes) == 3)


async def test_missing_part_is_handed_over_after_the_timeout(fakes, recorder):
    fake = fakes()
    async with running([fast(fake.link, list_seconds=0.1)], recorder, reassembly_timeout=0.5):
        fake.deliver(ALICE, "Hello ", concat=(8, 2, 1))
        [sms] = await recorder.wait_count(SmsIn, 1)
        assert (sms.text, sms.missing) == ("Hello ", (2,))
        await until(fake, lambda: fake.stored() == {})


async def test_duplicate_mo_dropped(fakes, recorder):
    fake = fakes()
    async with running([fast(fake.link, list_seconds=0.2)], recorder) as pool:
        fake.deliver(ALICE, "REPAY 500")
        await recorder.wait_count(SmsIn, 1)
        fake.deliver(ALICE, "REPAY 500")                       # same SMS, delivered again
        await until(fake, lambda: len(fake.deletes) == 2)
        await pool.check_stored()
        assert len(recorder.of(SmsIn)) == 1 and pool.status()[0]["duplicates"] == 1
        # The same text a minute later is a new message.
        fake.deliver(ALICE, "REPAY 500", when=dt.datetime(2026, 11, 28, 18, 31, 9, tzinfo=B.EAT))
        await recorder.wait_count(SmsIn, 2)


async def test_nothing_leaves_the_sim_before_it_is_committed(fakes, recorder):
    fake = fakes()
    recorder.refuse = 2                                       # the store is down, twice
    async with running([fast(fake.link, list_seconds=0.1)], recorder):
        i = fake.deliver(ALICE, "BAL")
        await recorder.wait_for(lambda r: r.refused == 2)
        assert i in fake.stored() and not fake.deletes         # still on the SIM
        [sms] = await recorder.wait_count(SmsIn, 1)           # the listing offers it again
        assert sms.text == "BAL"
        await until(fake, lambda: fake.deletes == [("SM", i)])


async def test_a_store_that_hangs_does_not_lose_the_sms(fakes, recorder, monkeypatch):
    import modem.receive
    monkeypatch.setattr(modem.receive, "COMMIT_GRACE", 0.3)
    fake = fakes()
    recorder.stall = 1
    async with running([fast(fake.link, list_seconds=0.1)], recorder) as pool:
        i = fake.deliver(ALICE, "BAL")
        [sms] = await recorder.wait_count(SmsIn, 1)          # the second offer, after 0.3 s
        assert sms.text == "BAL" and recorder.refused == 1
        await until(fake, lambda: fake.deletes == [("SM", i)])
        assert pool.status()[0]["state"] == "ready"


async def test_garbage_and_a_network_ussd_release_are_survived(fakes, recorder):
    fake = fakes()
    async with running([fast(fake.link, list_seconds=30)], recorder) as pool:
        fake.raw(b"\r\n\xff\xfe\x00garbage\r\n+CUSD: 2\r\n~~~\r\n")
        fake.deliver(ALICE, "still here")
        [sms] = await recorder.wait_count(SmsIn, 1)
        assert sms.text == "still here"
        row = pool.status()[0]
        # "~~~" is noise too, but printable: inside an answer it is only ignored.
        assert row["garbage_lines"] >= 1 and row["state"] == "ready" and row["sessions"] == 1


async def test_undecodable_pdu_is_committed_raw_then_deleted(fakes, recorder):
    fake = fakes()
    async with running([fast(fake.link, list_seconds=30)], recorder):
        i = fake.store("0004", 2)                              # truncated SMS-DELIVER
        [bad] = await recorder.wait_count(Undecodable, 1)
        assert bad.pdu == "0004"
        await until(fake, lambda: ("SM", i) in fake.deletes)


async def test_messages_waiting_on_the_sim_at_start(fakes, recorder):
    fake = fakes()
    for n in range(5):
        fake.deliver(ALICE, f"while we were down {n}", notify=False,
                     when=dt.datetime(2026, 11, 28, 6, 0, n, tzinfo=B.EAT))
    async with running([fast(fake.link)], recorder):
        smss = await recorder.wait_count(SmsIn, 5)
        assert sorted(s.text for s in smss) == [f"while we were down {n}" for n in range(5)]
        await until(fake, lambda: fake.stored() == {})
