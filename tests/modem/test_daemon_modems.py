"""The modem channel end to end: the real daemon process with a fake AT modem on a pty
behind a udev-style symlink (tests/modem/fakemodem.py)."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from modem import pdu
from tests.daemon_proc import DaemonProcess, Phone

pytestmark = pytest.mark.e2e

AMINA, PETER, NEEMA = "254711000001", "254722000002", "254733000003"
WAIT = 20.0


def start(tmp_path, fake) -> DaemonProcess:
    return DaemonProcess(tmp_path, extra_config=(
        "[rate_limit]\nhops_per_minute = 10000\nburst = 10000\n"
        "[modem_pool]\nbackoff_min_seconds = 0.05\nbackoff_max_seconds = 0.3\n"
        f'[[modems]]\nport = "{fake.link}"\nat_timeout = 1.0\nsend_timeout = 5.0\n'
        "poll_seconds = 0.3\nlist_seconds = 0.3\n")).start()


def wait_logged(d: DaemonProcess, name: str, count: int = 1, **match: Any) -> list[dict]:
    """Until the daemon has logged `name` (with these fields) `count` times in all."""
    deadline = time.monotonic() + WAIT
    while True:
        seen = d.events(name)
        hits = [e for e in seen if all(e.get(k) == v for k, v in match.items())]
        if len(hits) >= count:
            return hits
        got = threading.Event()
        d._waiters.append((name, len(seen), got))     # woken by the next such line
        d._check_waiters()
        if not got.wait(max(0.0, deadline - time.monotonic())):
            raise AssertionError(f"daemon never logged {name} {match}:\n"
                                 + "\n".join(d.lines[-20:]))


def rows(d: DaemonProcess, sql: str, *args: Any) -> list[sqlite3.Row]:
    conn = sqlite3.connect(f"file:{d.state_dir / 'gatewayd.db'}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def sent_to(fake, msisdn: str, n: int = 1) -> list[pdu.Submit]:
    ok = fake.wait_until(lambda: len([s for s in fake.sent if s.destination == "+" + msisdn]) >= n,
                         WAIT)
    assert ok, f"no SMS to {msisdn}: {[s.destination for s in fake.sent]}"
    return [pdu.decode(s.pdu) for s in fake.sent if s.destination == "+" + msisdn]


def outbox(d: DaemonProcess, msisdn: str) -> list[dict]:
    r = d.gatewayd("outbox", "list", "--json")
    assert r.returncode == 0, r.stderr
    return [s for s in json.loads(r.stdout) if s["msisdn"] == msisdn]


def test_loan_sms_out_through_the_modem_receipt_mo_reply_and_operator_view(tmp_path, fakes):
    fake = fakes("gsmmodem-A")
    # What the SIM held when each delete came: the inbox as committed at that moment.
    committed_at_delete: dict[tuple[str, int], list[str]] = {}
    command = fake._command

    def watching(cmd: str) -> None:
        if cmd.startswith("AT+CMGD="):
            bodies = [r["body"] for r in rows(d, "SELECT body FROM sms_inbox")]
            committed_at_delete[(fake.memory, int(cmd.split("=")[1].split(",")[0]))] = bodies
        command(cmd)
    fake._command = watching

    d = start(tmp_path, fake)
    try:
        wait_logged(d, "modem_state", state="ready")
        reply = Phone(d, AMINA).run("1", "Amina", "4826", "4826", "1", "0722000002", "500",
                                    "50", "1")
        assert "Loan request sent" in reply
        [to_peter] = sent_to(fake, PETER)
        [row] = outbox(d, PETER)
        assert to_peter.text == row["body"] and "asks to borrow Ksh 500" in row["body"]
        assert to_peter.status_report                 # asked for, so that it can be matched
        wait_logged(d, "modem_submitted", outbox_id=row["id"])
        assert outbox(d, PETER)[0]["state"] == "submitted"

        fake.status_report(to_peter.tp_mr, "+" + PETER, st=0)
        wait_logged(d, "modem_receipt")
        assert outbox(d, PETER)[0]["state"] == "delivered"

        index = fake.deliver("+" + AMINA, "BAL")
        [answer] = sent_to(fake, AMINA)
        assert "Ksh" in answer.text                     # her balance, in an SMS
        [answer_row] = [o["id"] for o in outbox(d, AMINA)]
        [mo] = rows(d, "SELECT * FROM sms_inbox WHERE msisdn = ?", AMINA)
        assert (mo["body"], mo["command"], mo["short_code"]) == ("BAL", "balance",
                                                                 "gsm:gsmmodem-A")
        assert fake.wait_until(lambda: ("SM", index) in fake.deletes, WAIT)
        assert "BAL" in committed_at_delete[("SM", index)]      # committed, then deleted
        # The operator's view of what came in, and how it was answered.
        r = d.gatewayd("inbox", "list", "--json", "--msisdn", "0711000001")
        [seen] = json.loads(r.stdout)
        assert (seen["body"], seen["command"], seen["reply_id"]) == ("BAL", "balance", answer_row)
        table = d.gatewayd("inbox", "list").stdout
        assert "0711000001" in table and "balance" in table and "BAL" in table
        bad = d.gatewayd("inbox", "list", "--msisdn", "12")
        assert bad.returncode == 2 and "not a phone number" in bad.stderr
        assert fake.stored("SM") == {}

        # The same SMS again (the network's repeat: same sender, time stamp and text) is
        # dropped, by the modem's inbox or by the store's key, and deleted unanswered.
        again = fake.deliver("+" + AMINA, "BAL")
        assert fake.wait_until(lambda: ("SM", again) in fake.deletes and fake.stored("SM") == {},
                               WAIT)
        st = json.loads(d.gatewayd("status", "--json").stdout)["modems"]
        assert st["duplicate"] + st["modems"][0]["duplicates"] == 1
        assert len(rows(d, "SELECT * FROM sms_inbox WHERE msisdn = ?", AMINA)) == 1
        assert len(sent_to(fake, AMINA)) == 1

        view = d.gatewayd("modems")
        assert view.returncode == 0, view.stderr
        line = view.stdout.splitlines()[1]
        for cell in ("gsmmodem-A", str(fake.link), "ready", "Safaricom", "-73 dBm (20/31)",
                     "home", "639020000000001"):
            assert cell in line, view.stdout
        assert "waiting for a modem: 0" in view.stdout
        screen = d.gatewayd("status")
        assert "modems    1/1 ready (send and receive)" in screen.stdout

        r = httpx.get(d.base + "/healthz", timeout=10)
        assert r.status_code == 200 and r.json()["parts"]["modems"] == "gsmmodem-A ready"
        m = {(s.name, s.labels.get("modem")): s.value for f in text_string_to_metric_families(
            httpx.get(d.base + "/metrics", timeout=10).text) for s in f.samples}
        assert m[("gatewayd_modem_up", "gsmmodem-A")] == 1
        assert m[("gatewayd_modem_signal_dbm", "gsmmodem-A")] == -73
        assert m[("gatewayd_modem_registered", "gsmmodem-A")] == 1
        assert m[("gatewayd_modem_sent_total", "gsmmodem-A")] == 2
        assert m[("gatewayd_modem_received_total", "gsmmodem-A")] >= 1
        assert m[("gatewayd_modem_pool_queued", None)] == 0
    finally:
        assert d.stop() == 0


def test_modem_unplugged_and_back_mid_run_loses_nothing(tmp_path, fakes):
    fake = fakes("gsmmodem-A")
    d = start(tmp_path, fake)
    try:
        wait_logged(d, "modem_state", state="ready")
        fake.eof()
        wait_logged(d, "modem_state", state="down")
        r = httpx.get(d.base + "/healthz", timeout=10)
        assert r.status_code == 503 and r.json()["parts"]["modems"].startswith("gsmmodem-A ")
        # While it is gone: a loan request queues an SMS, and a villager's SMS reaches
        # the SIM (which keeps it across the replug).
        assert "Loan request sent" in Phone(d, NEEMA).run(
            "1", "Neema", "4826", "4826", "1", "0722000002", "700", "70", "1")
        fake.deliver("+" + AMINA, "HELP", notify=False)
        [queued] = outbox(d, PETER)
        assert queued["state"] == "queued"

        fake.reappear()
        [to_peter] = sent_to(fake, PETER)
        assert "Ksh 700" in to_peter.text
        [help_reply] = sent_to(fake, AMINA)
        wait_logged(d, "modem_submitted", count=2)
        assert {s["state"] for s in outbox(d, PETER) + outbox(d, AMINA)} == {"submitted"}
        [mo] = rows(d, "SELECT * FROM sms_inbox WHERE msisdn = ?", AMINA)
        assert mo["command"] == "help" and help_reply.text
        assert fake.wait_until(lambda: fake.stored("SM") == {}, WAIT)
        assert wait_logged(d, "modem_reopen")
        assert httpx.get(d.base + "/healthz", timeout=10).status_code == 200
    finally:
        assert d.stop() == 0
