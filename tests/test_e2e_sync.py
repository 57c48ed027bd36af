"""The whole loop on one machine, every part a process: the daemon pushes its change
log to the reference upstream (gatewayd upstream-sim), which runs the M-PESA actions
against the fake Daraja and sends the results back on its acks — a loan is funded,
paid out and repaid, each payment made exactly once, the books balanced."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import httpx
import pytest

from tests.daemon_proc import ROOT, DaemonProcess, Phone

pytestmark = pytest.mark.e2e

KEY = bytes(range(32))


class Peer:
    def __init__(self, tmp, name, *args):
        self.log = (tmp / f"{name}.log").open("w")
        self.proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE,
                                     stderr=self.log, text=True)
        line = self.proc.stdout.readline()
        assert line, f"{name} did not start: see {self.log.name}"
        self.url = json.loads(line)["url"]

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)
        self.log.close()


def until(check, what, timeout=30.0):
    """Other processes do the work: look again every 50 ms, up to a deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"never happened: {what}")


def actions(d):
    r = d.gatewayd("mpesa", "list", "--json")
    assert r.returncode == 0, r.stderr
    return {(a["purpose"], a["state"]) for a in json.loads(r.stdout)["actions"]}


def test_loan_funded_paid_out_and_repaid_through_the_upstream(tmp_path):
    fake = Peer(tmp_path, "daraja", "tests/peers/daraja_fake.py", "--port", "0")
    sim = Peer(tmp_path, "upstream", "-m", "gatewayd", "upstream-sim", "--listen",
               "127.0.0.1:0", "--daraja", fake.url, "--site", f"site-1:{KEY.hex()}",
               "--db", str(tmp_path / "upstream.db"), "--first-query", "0")
    key_file = tmp_path / "sync.key"
    key_file.write_text(KEY.hex())
    key_file.chmod(0o600)
    d = DaemonProcess(tmp_path, extra_config=(
        f'[sync]\nenabled = true\nupstream_url = "{sim.url}"\nkey_file = "{key_file}"\n'
        "idle_poll_seconds = 0.2\n[rate_limit]\nhops_per_minute = 1000\nburst = 100\n"))
    d.start()
    try:
        amina, baraka = Phone(d, "0712345678"), Phone(d, "0722000111")
        amina.run("1", "Amina", "1357", "1357", "1", "0722000111", "5000", "500", "1")
        reply = baraka.run("1", "Baraka", "2468", "2468", "3", "1", "1", "2468")
        assert reply.startswith("END Approved.")

        # Funding collected from Baraka, paid out to Amina: both by the upstream.
        until(lambda: {("loan_funding", "succeeded"), ("loan_payout", "succeeded")}
              <= actions(d), "the loan funded and paid out")
        assert "From Baraka Ksh 5,000 active" in amina.run("2")

        reply = amina.run("6", "1", "1", "1357")
        assert reply.startswith("END M-PESA will ask you to pay Ksh 500.")
        until(lambda: ("repayment", "succeeded") in actions(d)
              and ("repayment_forward", "succeeded") in actions(d), "the repayment settled")
        assert "You owe Ksh 4,500" in amina.run("4")

        # Each action was paid exactly once by Daraja.
        payments = httpx.get(fake.url + "/_fake/state").json()["payments"]
        kinds = sorted((p["kind"], p["msisdn"], p["amount"]) for p in payments)
        assert kinds == sorted([("b2c", "254712345678", 5000), ("b2c", "254722000111", 500),
                                ("stk_push", "254712345678", 500),
                                ("stk_push", "254722000111", 5000)]), kinds

        # The upstream holds the box's whole log; the box says it is in step.
        status = json.loads(d.gatewayd("status", "--json").stdout)["sync"]
        until(lambda: json.loads(d.gatewayd("status", "--json").stdout)["sync"]["records"] == 0,
              "the upstream acknowledged everything")
        state = httpx.get(f"{sim.url}/v1/sites/site-1/state").json()
        assert state["last_seq"] == json.loads(
            d.gatewayd("status", "--json").stdout)["sync"]["checkpoint"]
        assert status["enabled"] is True and status["batches_pushed"] >= 1
        assert "gatewayd_sync_lag_records 0" in httpx.get(d.base + "/metrics").text
        assert "push to" in d.gatewayd("status").stdout
    finally:
        d.stop()
        sim.stop()
        fake.stop()
    assert d.gatewayd("db", "check").returncode == 0
    import sqlite3
    conn = sqlite3.connect(d.state_dir / "gatewayd.db")
    bodies = [r[0] for r in conn.execute("SELECT body FROM sms_outbox ORDER BY id")]
    assert any("You received a loan of Ksh 5,000 from Baraka" in b for b in bodies)
    assert any("Repayment of Ksh 500 received. New balance Ksh 4,500." in b for b in bodies)
