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
