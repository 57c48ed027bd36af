"""Two villagers walk the whole lending service through the real daemon process:
registration, request, wrong PIN, approval, lockout, views, repayment — with a
graceful restart mid-dialog and a power cut after an approval, losing nothing."""

from __future__ import annotations

import json
import re
import sqlite3

import pytest

from tests.daemon_proc import DaemonProcess, Phone

pytestmark = pytest.mark.e2e

AMINA = "0712345678"     # the borrower
BARAKA = "+254722000111"  # the lender, written the way an aggregator writes it


def mpesa(daemon: DaemonProcess, state: str | None = None) -> list[dict]:
    args = ["mpesa", "list", "--json"] + (["--state", state] if state else [])
    r = daemon.gatewayd(*args)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["actions"]


def resolve(daemon: DaemonProcess, key: str, *flags: str) -> str:
    r = daemon.gatewayd("mpesa", "resolve", key, *flags)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_two_villagers_whole_service(tmp_path):
    d = DaemonProcess(tmp_path).start()
    try:
        amina, baraka = Phone(d, AMINA), Phone(d, BARAKA)

        # Amina registers and asks Baraka, who has never dialled, for Ksh 5,000.
        reply = amina.run("1", "Amina", "1357", "1357")
        assert "Welcome, Amina!" in reply and "1 Request loan" in reply
        assert "Lender's phone number" in amina.send("1")
        reply = amina.send("0722000111")
        assert reply.startswith("CON ") and "Amount to borrow" in reply
        assert "not a Kenyan mobile" not in reply
        reply = amina.send("5000")
        assert "Repayment per instalment" in reply
        reply = amina.send("500")
        assert "Borrow Ksh 5,000 from 0722000111" in reply
        reply = amina.send("1")
        assert reply.startswith("END Loan request sent to 0722000111")

        # Baraka registers in Kiswahili; his menu shows one request waiting.
        reply = baraka.run("2", "Baraka", "2468", "2468")
        assert "Karibu, Baraka!" in reply and "Idhinisha mikopo (1)" in reply
        reply = baraka.send("3")
        assert "Amina Ksh 5,000" in reply
        reply = baraka.send("1")
        assert "Amina 0712345678 anaomba kukopa Ksh 5,000" in reply
        reply = baraka.send("1")
        assert "Weka PIN yako kuidhinisha" in reply
        reply = baraka.send("9999")
        assert reply.startswith("CON PIN si sahihi. Umebakiza majaribio 2.")
        reply = baraka.send("2468")
        assert reply.startswith("END Umeidhinisha.")

        # One funding collection queued, from the lender, for the principal.
        [funding] = mpesa(d)
        assert (funding["purpose"], funding["kind"], funding["state"]) == \
            ("loan_funding", "stk_push", "queued")
        assert funding["msisdn"] == "254722000111" and funding["amount_cents"] == 500_000

        # A power cut right after the approval: nothing the villagers saw is lost.
        d.kill()
        d.start()
        assert [a["key"] for a in mpesa(d)] == [funding["key"]]

        # M-PESA results (settled by the operator from the statement): funding, payout.
        assert "applied" in resolve(d, funding["key"], "--succeeded", "--receipt", "QK1ABC")
        assert "already settled" in resolve(d, funding["key"], "--succeeded", "--receipt", "QK1ABC")
        [payout] = [a for a in mpesa(d, "queued") if a["purpose"] == "loan_payout"]
        assert payout["msisdn"] == "254712345678"
        resolve(d, payout["key"], "--succeeded", "--receipt", "QK2DEF")

        # Views: the loan is active, owed and seen from both sides.
        reply = amina.run("2")
        assert "From Baraka Ksh 5,000 active" in reply
        reply = amina.send("1")
        assert "Owed Ksh 5,000" in reply and "State: active" in reply
        reply = amina.run("4")
        assert "You owe Ksh 5,000" in reply
        reply = amina.run("5")
        assert "Got loan Ksh 5,000 from Baraka" in reply
        reply = baraka.run("4")
        assert "Unadai Ksh 5,000" in reply

        # A graceful restart in the middle of Amina's repayment dialog.
        reply = amina.run("6")
        assert "1 Baraka owed Ksh 5,000" in reply
        reply = amina.send("1")
        assert "1 Pay instalment Ksh 500" in reply
        assert d.stop() == 0
        d.start()
        reply = amina.send("1")  # same session, continues where she was
        assert "Enter your PIN to repay Ksh 500 to Baraka" in reply
        reply = amina.send("1357")
        assert reply.startswith("END M-PESA will ask you to pay Ksh 500.")
        [repay] = [a for a in mpesa(d, "queued") if a["purpose"] == "repayment"]
        reply = amina.run("4")
        assert "You owe Ksh 5,000" in reply and "M-PESA not settled: 1 Ksh 500" in reply
        resolve(d, repay["key"], "--succeeded", "--receipt", "QK3GHI")
        assert "You owe Ksh 4,500" in amina.run("4")
        assert "Repaid Ksh 500 to Baraka" in amina.run("5")

        # Lockout: three wrong PINs when changing the PIN lock Baraka out.
        reply = baraka.run("7", "2", "1111")
        assert "PIN si sahihi" in reply
        reply = baraka.send("1112")
        reply = baraka.send("1113")
        assert reply.startswith("END PIN si sahihi mara 3.")
        assert baraka.dial().startswith("END Akaunti yako imefungwa")
        assert amina.dial().startswith("CON ")  # nobody else is affected

        assert d.gatewayd("db", "check").returncode == 0
    finally:
        rc = d.stop() if d.proc and d.proc.poll() is None else 0
    assert rc == 0
    assert d.events("gatewayd_stopped")

    # Logs: phone numbers masked, PINs never written.
    # Timestamps and hex ids are random digits that can hold "1357" by chance; a leaked
    # PIN or number stands alone (a JSON value, or an input joined by `*`).
    log = re.sub(r'"timestamp": "[^"]*"', "", "\n".join(d.lines))
    for secret in ("254712345678", "0712345678", "254722000111", "1357", "2468"):
        assert not re.search(rf"(?<![0-9A-Za-z]){secret}(?![0-9A-Za-z])", log), secret

    conn = sqlite3.connect(d.state_dir / "gatewayd.db")
    sms = conn.execute("SELECT msisdn, body FROM sms_outbox ORDER BY id").fetchall()
    assert sms[0][0] == "254722000111" and "asks to borrow Ksh 5,000" in sms[0][1]
    assert any(m == "254712345678" and "ameidhinisha" not in b and "approved" in b
               for m, b in sms)
    states = [r[0] for r in conn.execute(
        "SELECT op FROM change_log WHERE entity = 'loan' ORDER BY seq")]
    assert states == ["requested", "approved", "funded", "active"]
    total = conn.execute("SELECT SUM(amount_cents) FROM ledger_postings").fetchone()[0]
    assert total == 0


def test_restart_restores_an_open_dialog_and_a_retried_final_hop_is_not_replayed(tmp_path):
    d = DaemonProcess(tmp_path).start()
    try:
        amina = Phone(d, AMINA)
        amina.run("1", "Amina", "1357", "1357")
        amina.send("1")
        amina.send("0722000111")
        amina.send("700")
        amina.send("100")
        d.kill()  # power cut mid-dialog
        d.start()
        final = amina.send("1")
        assert final.startswith("END Loan request sent")
        # The aggregator retries the final hop (its reply was slow): same END, no new loan.
        again = amina._hop("*383#")
        assert again == final
        conn = sqlite3.connect(d.state_dir / "gatewayd.db")
        assert conn.execute("SELECT COUNT(*) FROM loans").fetchone()[0] == 1
    finally:
        d.stop()
