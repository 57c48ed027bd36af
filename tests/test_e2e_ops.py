"""Operating the box: SIGHUP reload under live dialogs."""

from __future__ import annotations

import signal

import pytest

from tests.daemon_proc import DaemonProcess, Phone

pytestmark = pytest.mark.e2e


def test_sighup_applies_live_settings_without_dropping_a_dialog(tmp_path):
    d = DaemonProcess(tmp_path).start()
    try:
        p = Phone(d, "0744000001")
        reply = p.run("1", "Neema", "4826", "4826")
        assert "Mkopo Jirani" in reply
        assert "Lender's phone" in p.send("1")  # mid-dialog when the reload comes

        original = d.config_path.read_text()
        d.config_path.write_text(original.replace("[security]", '[lending]\nservice_name = "Jirani Bora"\nmax_amount = 900\n[security]').replace(
            f'listen = "127.0.0.1:{d.port}"', 'listen = "127.0.0.1:1"'))
        d.proc.send_signal(signal.SIGHUP)
        # The reload is logged when done; wait for that line, not for a guessed time.
        d.wait_for_event("reloaded")
        ev = d.events("reloaded")[-1]
        assert "lending.service_name" in ev["applied"] and "lending.max_amount" in ev["applied"]
        assert ev["needs_restart"] == ["http.listen"]

        # The same dialog goes on, under the new rules.
        reply = p.send("0722000111")
        assert "Amount to borrow (Ksh 10 to 900)" in reply
        assert "Jirani Bora" in Phone(d, "0744000001").run()

        # A broken file changes nothing and says why.
        d.config_path.write_text(original + "\n[bogus]\nx = 1\n")
        d.proc.send_signal(signal.SIGHUP)
        d.wait_for_event("reload_failed")
        assert any("bogus" in p for p in d.events("reload_failed")[-1]["problems"])
        assert "Jirani Bora" in Phone(d, "0744000001").run()
    finally:
        assert d.stop() == 0


def test_status_outbox_and_backup_while_serving(tmp_path):
    import json
    import sqlite3
    import threading

    d = DaemonProcess(tmp_path, extra_config="[rate_limit]\nhops_per_minute = 10000\n"
                                              "burst = 10000\n").start()
    try:
        amina = Phone(d, "0744000002")
        amina.run("1", "Amina", "4826", "4826", "1", "0744000003", "500", "50", "1")

        r = d.gatewayd("status")
        assert r.returncode == 0, r.stderr
        assert "site site-1" in r.stdout and "OK" in r.stdout
        assert "sms       queued 1" in r.stdout and "free of" in r.stdout
        s = json.loads(d.gatewayd("status", "--json").stdout)
        assert s["queues"]["sms"] == {"queued": 1} and s["ussd"]["hops"] >= 10

        # Outbox: list, cancel, retry; wrong transitions are refused with a reason.
        r = d.gatewayd("outbox", "list", "--json")
        [sms] = json.loads(r.stdout)
        assert sms["state"] == "queued" and "asks to borrow Ksh 500" in sms["body"]
        assert "0744000003" in d.gatewayd("outbox", "list").stdout
        r = d.gatewayd("outbox", "retry", str(sms["id"]))
        assert r.returncode == 1 and "only failed, expired or cancelled" in r.stderr
        assert "cancelled" in d.gatewayd("outbox", "cancel", str(sms["id"])).stdout
        assert "queued" in d.gatewayd("outbox", "retry", str(sms["id"])).stdout
        assert d.gatewayd("outbox", "cancel", "99999").returncode == 1

        # Backups while villagers keep dialling: each copy is whole and checks out.
        stop = threading.Event()

        def traffic():
            p = Phone(d, "0744000004")
            while not stop.is_set():
                p.run("0")

        t = threading.Thread(target=traffic)
        t.start()
        try:
            for i in range(3):
                path = tmp_path / f"backup-{i}.db"
                r = d.gatewayd("db", "backup", str(path))
                assert r.returncode == 0, r.stderr
                assert "checked ok" in r.stdout and "pin.key" in r.stdout
                conn = sqlite3.connect(path)
                assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
                assert conn.execute("SELECT COUNT(*) FROM loans").fetchone()[0] == 1
                conn.close()
                assert d.gatewayd("db", "check", "--db", str(path)).returncode == 0
        finally:
            stop.set()
            t.join()
    finally:
        assert d.stop() == 0
    r = d.gatewayd("status")
    assert r.returncode == 2 and "cannot reach the daemon" in r.stderr


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB filesystem of its own for the state directory (tmpfs; we run as root)."""
    import subprocess
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    assert r.returncode == 0, f"cannot mount a tmpfs here: {r.stderr}"
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _health(d):
    import httpx
    return httpx.get(d.base + "/healthz", timeout=10)


def test_disk_full_gives_a_short_screen_and_service_resumes_by_itself(tmp_path, small_disk):
    import subprocess
    d = DaemonProcess(tmp_path)
    d.config_path.write_text(d.config_path.read_text().replace(
        f'state_dir = "{d.state_dir}"', f'state_dir = "{small_disk / "var"}"'))
    d.state_dir = small_disk / "var"
    d.start()
    try:
        p = Phone(d, "0744000010")
        assert p.run("1", "Pendo", "4826", "4826").startswith("CON Welcome, Pendo")
        # Fill the disk to the last byte.
        filler = small_disk / "filler"
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True)
        replies = [Phone(d, f"07440001{i:02d}").dial() for i in range(3)]
        assert all(r == "END Service unavailable. Please try again later." for r in replies)
        assert d.events("ussd_store_unavailable")
        assert _health(d).status_code == 503
        # Space returns: health recovers with no villager dialling, then service does.
        filler.unlink()
        d.wait_for_event("store_recovered")
        assert _health(d).status_code == 200
        assert Phone(d, "0744000010").dial().startswith("CON Mkopo Jirani")
    finally:
        assert d.stop() == 0
    r = d.gatewayd("db", "check")
    assert r.returncode == 0, r.stdout
