"""bench/sync_codec.py end to end, tiny: generates records, pushes real batches through a
real hypercorn with HMAC and signed acks, posts the baseline, and writes its JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_sync_bench_runs_and_measures_both_sides(tmp_path: Path) -> None:
    out = tmp_path / "sync.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "sync_codec.py"), "--records", "3000",
         "--baseline-sample", "300", "--skip-matrix", "--out", str(out)],
        check=False, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert str(out) in proc.stdout and "targets:" in proc.stdout
    r = json.loads(out.read_text())
    assert set(r["mix"]) == {"user", "loan", "sms", "mpesa_action", "ledger_txn"}
    ours, base = r["ours_push"], r["baseline"]
    assert ours["changes"] == 3000 and ours["exchanges"] == r["round_trips"]["ours_push"] >= 1
    assert base["changes"] == base["exchanges"] == 300
    # Every exchange was measured on the socket: headers and bodies, both ways.
    assert base["request_bytes_mean"] > r["record_json_bytes_mean"] + 150
    assert base["response_bytes_mean"] > 100
    assert r["baseline_signed"]["http_bytes_per_change"] > base["http_bytes_per_change"]
    assert ours["wire_bytes_per_change"] > ours["http_bytes_per_change"] > 0
    assert r["vs_baseline"]["baseline"]["http_ratio"] > 10
    trips = r["round_trips"]
    assert trips["baseline"] == 3000 and trips["ours_pull"] == 2 * ours["exchanges"]
    assert set(r["targets"]) == {"bytes_50x_http", "bytes_50x_wire", "round_trips_1000x"}
    assert r["layouts"]["zstd 19"]["columns"] < r["layouts"]["zstd 19"]["rows"]
    # Each part of body format 2 earns its place on the same batches, and the last step
    # is the shipping format itself.
    steps = list(r["format_steps"].values())
    assert len(set(steps)) == 4 and steps == sorted(steps, reverse=True)
    assert steps[-1] <= ours["http_bytes_per_change"]
    # The what-if removes entropy the store puts in: it can only shrink the batches.
    assert list(r["what_if"]) == ["no SMS body"]
    assert r["what_if"]["no SMS body"] < steps[-1]
