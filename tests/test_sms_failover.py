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
        "takeover_after_seconds = 1.0\n"
        f'[[modems]]\nport = "{fake.link}"\nat_timeout = 1.0\nsend_timeout = 5.0\n'
        "poll_seconds = 0.3\nlist_seconds = 0.3\n")).start()
    try:
        wait_logged(d, "modem_state", state="ready")
        # Queued while SMPP is still the sender (unbound, within the grace): it waits in
        # the outbox, not in SMPP's sender, so the modems get it when they take over.
        reply = Phone(d, AMINA).run("1", "Amina", "4826", "4826", "1", "0722000002", "500",
                                    "50", "1")
        assert "Loan request sent" in reply
        wait_logged(d, "sms_route", sender="modems")
        [to_peter] = sent_to(fake, PETER)
        assert "asks to borrow Ksh 500" in to_peter.text
        assert "sending while SMPP is unbound" in d.gatewayd("status").stdout

        smsc = smsc_factory("--receipts", "none", "--port", str(port))
        wait_logged(d, "sms_route", count=2, sender="smpp")   # the first was at start
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


def test_sms_queued_in_smpps_sender_but_never_sent_go_to_the_modems_when_the_smsc_is_gone(
        tmp_path, fakes, smsc_factory):  # noqa: F811
    """SMPP took five SMS while bound but sends one every 5 s; the SMSC goes away with
    four never written to it. On the takeover SMPP gives those four back, the modems
    send them, and each of the five reaches the phone exactly once."""
    from tests.smpp.e2e import seed_outbox
    fake = fakes("gsmmodem-A")
    smsc = smsc_factory("--receipts", "none")
    d = daemon(tmp_path, smsc.port, submit_rate=0.2, extra=(
        "[modem_pool]\nbackoff_min_seconds = 0.05\nbackoff_max_seconds = 0.3\n"
        "takeover_after_seconds = 0.5\n"
        f'[[modems]]\nport = "{fake.link}"\nat_timeout = 1.0\nsend_timeout = 5.0\n'
        "poll_seconds = 0.3\nlist_seconds = 0.3\n"))
    bodies = [f"Ujumbe {i}" for i in range(5)]
    seed_outbox(d, bodies, msisdn=PETER)
    d.start()
    try:
        is_submit = smsc.recv("submit_sm")
        [first] = collect(smsc, is_submit, 1)
        smsc.stop()
        wait_logged(d, "sms_route", sender="modems")
        by_modem = sent_to(fake, PETER, 4)
        got = [first["short_message"]] + [s.text for s in by_modem]
        assert sorted(got) == bodies                    # each once, none lost
        assert [e["given_back"] for e in d.events("sms_route")
                if e["sender"] == "modems"] == [4]
    finally:
        d.stop()
