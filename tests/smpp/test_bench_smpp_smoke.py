"""bench/smpp.py end to end, tiny: every part runs against the real SMSC and daemon,
and what it reports is consistent."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.e2e
def test_smpp_bench_runs_clean(tmp_path: Path) -> None:
    out = tmp_path / "smpp.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "smpp.py"), "--count", "200", "--repeat", "1",
         "--windows", "1,10", "--dialogs", "2", "--rounds", "2", "--out", str(out)],
        check=False, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert str(out) in proc.stdout and "esme_window_10" in proc.stdout

    r = json.loads(out.read_text())
    assert r["ok"] is True
    assert set(r["mt"]) == {"smpplib_blocking", "esme_window_1", "esme_window_10"}
    for m in [*r["mt"].values(), r["daemon_mt"]]:
        assert m["accepted"] == m["expected"] == 200 and m["per_s"] > 0
    assert r["daemon_mt"]["rows_submitted"] == 200
    for u in (r["ussd"]["smpp"], r["ussd"]["http_baseline"]):
        assert u["failures"] == 0 and u["hops"] == 2 * (8 + 5)
        assert 0 < u["latency_ms"]["p50"] <= u["latency_ms"]["max"]
