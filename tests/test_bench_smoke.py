"""bench/load.py end to end, tiny: it starts the baseline server and the real daemon,
drives a few villagers through whole flows, stops both and writes its JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.e2e
def test_load_bench_runs_clean(tmp_path: Path) -> None:
    out = tmp_path / "load.json"
    # --pin-cost 10: the smallest scrypt the config takes, so the few PIN hops stay cheap.
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "load.py"), "--villagers", "4", "--duration", "2",
         "--baseline-duration", "1", "--pin-cost", "10", "--out", str(out)],
        check=False, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert str(out) in proc.stdout  # the table names the file it wrote

    r = json.loads(out.read_text())
    assert r["ok"] is True and r["failures"] == 0
    assert r["hops"] > 0 and r["hops_per_s"] > 0
    for stats in (r, r["pin_hops"], r["other_hops"], r["baseline"]):
        assert set(stats["latency_ms"]) >= {"p50", "p95", "p99", "max"}
    assert r["pin_hops"]["hops"] > 0  # registration and approval PINs were timed apart
    assert r["latency_ms"]["p50"] <= r["latency_ms"]["p99"] <= r["latency_ms"]["max"]
    # Every kind of dialog completed at least once: the whole lending flow ran.
    assert {"register", "request", "approve", "loans", "balance", "txns"} <= set(r["dialogs"])
    assert r["baseline"]["hops"] > 0 and r["baseline"]["failures"] == 0
    assert set(r["vs_baseline"]) == {"hops_per_s", "p50", "p99"}
    daemon = r["daemon"]
    assert daemon["peak_rss_kib"] > 0
    assert daemon["exit_code"] == 0 and daemon["log_errors"] == 0 and daemon["db_check_ok"]
