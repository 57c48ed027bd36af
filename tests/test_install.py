"""systemd/install and systemd/uninstall into a temporary root, the unit checked by
systemd-analyze, and the installed daemon started from its own virtual environment."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.daemon_proc import ROOT, DaemonProcess

pytestmark = pytest.mark.e2e

UNIT = "etc/systemd/system/gatewayd.service"


def sh(*args, **kw):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=300,
                          **kw)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    root = tmp_path_factory.mktemp("root")
    r = sh(ROOT / "systemd" / "install", "--root", root)
    assert r.returncode == 0, r.stdout + r.stderr
    return root


def test_layout(installed):
    root = installed
    for path in ("opt/gatewayd/venv/bin/gatewayd", "opt/gatewayd/README.md", UNIT,
                 "usr/lib/sysusers.d/gatewayd.conf", "usr/lib/tmpfiles.d/gatewayd.conf",
                 "etc/gatewayd/gatewayd.toml", "etc/udev/rules.d/99-gatewayd-modems.rules"):
        assert (root / path).exists(), path
    assert (root / "etc/udev/rules.d/99-gatewayd-modems.rules").read_bytes() == \
        (ROOT / "systemd/99-gatewayd-modems.rules").read_bytes()
    conf = (root / "etc/gatewayd/gatewayd.toml").read_text()
    assert 'state_dir = "/var/lib/gatewayd"' in conf
    r = sh(root / "opt/gatewayd/venv/bin/gatewayd", "check-config", root / "etc/gatewayd/gatewayd.toml")
    assert r.returncode == 0 and "state in /var/lib/gatewayd" in r.stdout
    # Not an editable install: the box runs its own copy, not this working tree.
    r = sh(root / "opt/gatewayd/venv/bin/python", "-c", "import gatewayd; print(gatewayd.__file__)",
           cwd=root)  # not from this checkout's folder, which is on sys.path as ''

    assert str(root) in r.stdout and str(ROOT / "gatewayd") not in r.stdout


def _unit_for_host(root: Path, tmp_path: Path) -> Path:
    """The installed unit with its paths moved under `root`, so the host's systemd can
    check that every command it names exists and runs."""
    text = (root / UNIT).read_text()
    text = text.replace("/opt/gatewayd/", f"{root}/opt/gatewayd/").replace(
        "/etc/gatewayd/", f"{root}/etc/gatewayd/")
    unit = tmp_path / "gatewayd.service"
    unit.write_text(text)
    return unit


def test_systemd_analyze_verify_and_security(installed, tmp_path):
    assert shutil.which("systemd-analyze"), "systemd-analyze missing: ./dev test installs it"
    unit = _unit_for_host(installed, tmp_path)
    r = sh("systemd-analyze", "verify", unit)
    assert r.returncode == 0 and r.stderr.strip() == "", r.stderr
    r = sh("systemd-analyze", "security", "--offline=true", unit)
    level = re.search(r"Overall exposure level for \S+: ([\d.]+)", r.stdout)
    assert level and float(level.group(1)) <= 2.5, r.stdout[-500:]
    text = (installed / UNIT).read_text()
    for needle in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "ExecReload=",
                   "SupplementaryGroups=dialout", "StateDirectory=gatewayd",
                   "ConfigurationDirectory=gatewayd", "ProtectSystem=strict", "ProtectHome=yes",
                   "PrivateTmp=yes", "NoNewPrivileges=yes", "DevicePolicy=closed",
                   "DeviceAllow=char-ttyUSB rw", "CapabilityBoundingSet=\n",
                   "SystemCallFilter=@system-service"):
        assert needle in text, needle


def test_installed_daemon_serves(installed, tmp_path):
    d = DaemonProcess(tmp_path)
    d.argv = [str(installed / "opt/gatewayd/venv/bin/gatewayd"), "run", "--config",
              str(d.config_path)]
    d.start()
    try:
        from tests.daemon_proc import Phone
        assert Phone(d, "0755000001").dial().startswith("CON Welcome")
    finally:
        assert d.stop() == 0


def test_uninstall_keeps_money_records_unless_purged(tmp_path):
    root = tmp_path / "root"
    assert sh(ROOT / "systemd" / "install", "--root", root).returncode == 0
    (root / "var/lib/gatewayd").mkdir(parents=True)
    (root / "var/lib/gatewayd/gatewayd.db").write_text("records")
    r = sh(ROOT / "systemd" / "uninstall", "--root", root)
    assert r.returncode == 0, r.stderr
    assert not (root / "opt/gatewayd").exists() and not (root / UNIT).exists()
    assert not (root / "etc/udev/rules.d/99-gatewayd-modems.rules").exists()
    assert (root / "etc/gatewayd/gatewayd.toml").exists()
    assert (root / "var/lib/gatewayd/gatewayd.db").exists()
    r = sh(ROOT / "systemd" / "uninstall", "--root", root, "--purge")
    assert r.returncode == 0
    assert not (root / "etc/gatewayd").exists() and not (root / "var/lib/gatewayd").exists()
