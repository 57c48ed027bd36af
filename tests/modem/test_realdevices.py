"""The worker against real devices' transcripts: python-gsmmodem-new's sdist carries the
answers of a Huawei E1752 and K3715, a Wavecom 900E/1800 (whose +CPIN? never ends
with OK), a Qualcomm M6280, a ZTE K3565-Z and a Nokia N79 (no SMS storage commands).
The fake modem plays each one's init answers; SMS storage and sending are its own."""

from __future__ import annotations

import pytest

from modem import pdu as P
from modem.events import SmsIn, Submitted
from tests.modem.conftest import fast, running

DEVICES = ["HuaweiE1752", "HuaweiK3715", "WavecomMultiband900E1800", "QualcommM6280",
           "ZteK3565Z", "NokiaN79"]


@pytest.mark.parametrize("device", DEVICES)
async def test_init_send_and_receive(device, sdist_fakemodems, fakes, recorder):
    profile = getattr(sdist_fakemodems, device)()
    fake = fakes(profile=profile)
    async with running([fast(fake.link)], recorder) as pool:
        row = pool.status()[0]
        assert row["state"] == "ready" and row["imsi"] == "111111111111111"   # the transcript's
        pool.submit(1, "254712345678", "Karibu! Ombi lako limepokelewa.")
        await recorder.wait_count(Submitted, 1)
        assert P.decode(fake.sent[0].pdu).text == "Karibu! Ombi lako limepokelewa."
        fake.deliver("+254712345678", "BAL")
        [sms] = await recorder.wait_count(SmsIn, 1)
        assert sms.text == "BAL"
    commands = set(fake.commands)
    assert "ATZ" in commands and "AT+CMGF=0" in commands


async def test_huawei_picks_phone_memory_and_its_non_standard_errors(sdist_fakemodems, fakes, recorder):
    fake = fakes(profile=sdist_fakemodems.HuaweiE1752())
    async with running([fast(fake.link)], recorder) as pool:
        # +CPMS=? lists ("ME","MT","SM","SR"): the library chooses ME; SMS are read there.
        assert fake.recv_memory == "ME"
        fake.deliver("+254712345678", "stored in ME")
        [sms] = await recorder.wait_count(SmsIn, 1)
        assert sms.locations[0].memory == "ME"
        # "COMMAND NOT SUPPORT" to AT+WIND? / AT+ZPAS? did not stop the init.
        assert {"AT+WIND?", "AT+ZPAS?"} <= set(fake.commands) or "AT^USSDMODE=0" in fake.commands
        assert pool.workers[0].sessions == 1
