"""SMS failover end to end: the real daemon with SMPP enabled but no SMSC listening,
and a fake AT modem. The modems take over sending after the grace period; when the
SMSC comes up and the bind succeeds, SMPP sends again, and no SMS goes out twice."""

from __future__ import annotations

import socket

import pytest

from tests.daemon_proc import Phone
from tests.modem.conftest import fakes, quick_prompt_settle  # noqa: F401  fixtures
from tests.modem.test_daemon_modems import sent_to, wait_logged
from tests.smpp.conftest import smsc_factory  # noqa: F401  fixture
from tests.smpp.e2e import collect, daemon, rows

pytestmark = pytest.mark.e2e

AMINA, PETER, NEEMA = "254711000001", "254722000002", "254733000003"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_modems_send_while_smpp_is_unbound_and_hand_back_on_the_bind(
        tmp_path, fakes, smsc_factory):  # noqa: F811
    fake = fakes("gsmmodem-A")
    port = free_port()
    d = daemon(tmp_path, port, extra=(
        "[modem_pool]\nbackoff_min_seconds = 0.05\nbackoff_max_seconds = 0.3\n"
        "takeover_after_seconds = 0.5\n"
        f'[[modems]]\nport = "{fake.link}"\nat_timeout = 1.0\nsend_timeout = 5.0\n'
        "poll_seconds = 0.3\nlist_seconds = 0.3\n")).start()
    try:
        wait_logged(d, "modem_state", state="ready")
        wait_logged(d, "sms_route", sender="modems")
        reply = Phone(d, AMINA).run("1", "Amina", "4826", "4826", "1", "0722000002", "500",
                                    "50", "1")
        assert "Loan request sent" in reply
        [to_peter] = sent_to(fake, PETER)
        assert "asks to borrow Ksh 500" in to_peter.text
        assert "sending while SMPP is unbound" in d.gatewayd("status").stdout

        smsc = smsc_factory("--receipts", "none", "--port", str(port))
        wait_logged(d, "sms_route", sender="smpp")
        assert "receive only: SMPP sends" in d.gatewayd("status").stdout
        reply = Phone(d, NEEMA).run("1", "Neema", "1593", "1593", "1", "0722000002", "700",
                                    "70", "1")
        assert "Loan request sent" in reply
        is_submit = smsc.recv("submit_sm")
        [pdu] = collect(smsc, lambda e: is_submit(e) and e["destination_addr"] == PETER, 1)
        assert "Ksh 700" in pdu["short_message"]
        wait_logged(d, "sms_submitted")                 # SMPP's submit_sm_resp, committed
        # The first SMS went once, by modem; the second only by SMPP.
        assert len([s for s in fake.sent if s.destination == "+" + PETER]) == 1
        states = [r["state"] for r in rows(d, "SELECT state FROM sms_outbox WHERE msisdn = ? "
                                              "ORDER BY id", PETER)]
        assert len(states) == 2 and "queued" not in states
    finally:
        d.stop()
