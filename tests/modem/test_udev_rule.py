"""systemd/99-gatewayd-modems.rules, read the way udev reads it (systemd 252 here has no
`udevadm verify`): every line is KEY op "value" pairs, jumps land, names are right."""

from __future__ import annotations

import re
from pathlib import Path

RULES = Path(__file__).resolve().parents[2] / "systemd" / "99-gatewayd-modems.rules"
PAIR = re.compile(r'\s*([A-Z_]+(?:\{[^}]+\})?)\s*(==|!=|\+=|-=|:=|=)\s*"([^"]*)"\s*(?:,|$)')
MATCH_KEYS = {"ACTION", "SUBSYSTEM", "SUBSYSTEMS", "KERNEL", "ENV"}
ASSIGN_KEYS = {"GOTO", "LABEL", "IMPORT", "GROUP", "MODE", "SYMLINK", "ENV"}


def rules() -> list[list[tuple[str, str, str]]]:
    out = []
    for raw in RULES.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pairs, pos = [], 0
        while pos < len(line):
            m = PAIR.match(line, pos)
            assert m, f"cannot read {raw!r} at {line[pos:]!r}"
            pairs.append(m.groups())
            pos = m.end()
        out.append(pairs)
    return out


def test_every_key_and_operator_is_udevs():
    for rule in rules():
        for key, op, _ in rule:
            base = key.split("{")[0]
            if op in ("==", "!="):
                assert base in MATCH_KEYS, key
            else:
                assert base in ASSIGN_KEYS, key


def test_jumps_land_and_the_names():
    flat = [p for r in rules() for p in r]
    gotos = {v for k, _, v in flat if k == "GOTO"}
    labels = {v for k, _, v in flat if k == "LABEL"}
    assert gotos == labels == {"gatewayd_modems_end"}
    links = [v for k, op, v in flat if k == "SYMLINK"]
    assert links == ["gsmmodem-$env{ID_SERIAL_SHORT}-if$env{ID_USB_INTERFACE_NUM}",
                     "gsmmodem-$env{ID_SERIAL_SHORT}"]
    assert ("GROUP", "=", "dialout") in flat and ("MODE", "=", "0660") in flat
    assert ("ENV{ID_MM_DEVICE_IGNORE}", "=", "1") in flat
    assert ("KERNEL", "!=", "ttyUSB[0-9]*|ttyACM[0-9]*") in flat
    assert "udevadm info" in RULES.read_text()
