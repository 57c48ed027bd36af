"""`[[modems]]` tables: defaults, and errors that name the key (and never the PIN)."""

from __future__ import annotations

import re

import pytest

from modem.config import ConfigError, ModemConfig, parse


def test_defaults_and_name_from_the_udev_link():
    [cfg] = parse([{"port": "/dev/gsmmodem-3F2A9C01"}])
    assert cfg == ModemConfig(port="/dev/gsmmodem-3F2A9C01", name="gsmmodem-3F2A9C01")
    assert (cfg.baud, cfg.rtscts, cfg.at_timeout, cfg.cnmi) == (115200, False, 10.0, "2,1,0,2,0")


@pytest.mark.parametrize("table, message", [
    ({}, "modems[0].port: required"),
    ({"port": "/dev/x", "bauds": 9600}, "modems[0].bauds: unknown key"),
    ({"port": "/dev/x", "baud": 9601}, "modems[0].baud: one of"),
    ({"port": "/dev/x", "baud": True}, "modems[0].baud: one of"),
    ({"port": "/dev/x", "rtscts": "yes"}, "modems[0].rtscts: true or false"),
    ({"port": "/dev/x", "at_timeout": 0}, "modems[0].at_timeout: a positive number"),
    ({"port": "/dev/x", "poll_seconds": True}, "modems[0].poll_seconds: a positive number"),
    ({"port": "/dev/x", "smsc": "Safaricom"}, "modems[0].smsc: a number"),
    ({"port": "/dev/x", "cnmi": "2;1"}, "modems[0].cnmi: AT+CNMI parameters"),
    ({"port": "/dev/x", "name": "has space"}, "modems[0].name: letters"),
])
def test_errors_name_the_key(table, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse([table])


def test_pin_is_never_echoed():
    for pin in (1234, "12a4", "12"):
        with pytest.raises(ConfigError) as e:
            parse([{"port": "/dev/x", "pin": pin}])
        assert str(pin) not in str(e.value).replace("modems[0]", "")
    [cfg] = parse([{"port": "/dev/x", "pin": "0852"}])
    assert "0852" not in repr(cfg) and "0852" not in str(cfg)


def test_two_tables_for_one_device(tmp_path):
    (tmp_path / "ttyUSB2").touch()
    (tmp_path / "gsmmodem-A").symlink_to(tmp_path / "ttyUSB2")
    with pytest.raises(ConfigError, match=r"modems\[1\].port: .* is the same device as modems\[0\]"):
        parse([{"port": str(tmp_path / "gsmmodem-A")}, {"port": str(tmp_path / "ttyUSB2"), "name": "b"}])
    with pytest.raises(ConfigError, match=r"modems\[1\].name: 'a' is used twice"):
        parse([{"port": "/dev/x", "name": "a"}, {"port": "/dev/y", "name": "a"}])
