"""bench/modem.py end to end, tiny: it runs every series and writes its JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_modem_bench_runs(tmp_path: Path) -> None:
    out = tmp_path / "modem.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "modem.py"), "--mo", "5", "--mo-lost", "1",
         "--list-seconds", "0.2", "--mt", "20", "--mt-slow", "1", "--delay", "0.1",
         "--out", str(out)],
        check=False, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert str(out) in proc.stdout and "network delay dominates" in proc.stdout
    r = json.loads(out.read_text())
    assert r["mo_cmti"]["to_reply"]["n"] == 5 and r["mo_listing_only"]["to_reply"]["n"] == 1
    assert [(m["modems"], m["delay_s"]) for m in r["mt"]] == [
        (1, 0.0), (2, 0.0), (4, 0.0), (1, 0.1), (2, 0.1), (4, 0.1)]
    assert all(m["sms_per_s"] > 0 for m in r["mt"])
