"""A modem left at the "> " prompt by a port that died between AT+CMGS and the PDU."""

from __future__ import annotations

from modem.events import Submitted
from tests.modem.conftest import fast, running


async def test_reopening_leaves_a_stuck_prompt(fakes, recorder):
    fake = fakes()
    fake.raw(b"")                        # the fake is up
    with fake.cond:
        fake._pdu_len = 24               # as if AT+CMGS=24 came and then the port died
    async with running([fast(fake.link)], recorder) as pool:
        pool.submit(1, "254712345678", "after the prompt")
        await recorder.wait_count(Submitted, 1)
    assert "\x1b" not in "".join(fake.commands)   # ESC ended PDU entry; no command ate it
