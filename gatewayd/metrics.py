"""GET /metrics in the Prometheus text format (0.0.4)."""

from __future__ import annotations

import shutil
import time
from typing import Any

from gatewayd import __version__
from store import outbox
from store.writer import COMMIT_BUCKETS_MS


async def render(daemon: Any) -> str:
    ussd, store = daemon.ussd, daemon.store
    out: list[str] = []

    def metric(name: str, kind: str, help_: str, samples: list[tuple[str, float]]) -> None:
        out.append(f"# HELP {name} {help_}")
        out.append(f"# TYPE {name} {kind}")
        out.extend(f"{name}{labels} {value}" for labels, value in samples)

    s = ussd.stats
    cumulative, running = [], 0
    for bound, count in zip(s.buckets, s.counts):
        running += count
        cumulative.append((f'{{le="{bound / 1000}"}}', running))
    cumulative.append(('{le="+Inf"}', s.hops))
    metric("gatewayd_ussd_hop_seconds", "histogram", "USSD hop latency, request to reply.",
           [(f"_bucket{lbl}", v) for lbl, v in cumulative])
    out.append(f"gatewayd_ussd_hop_seconds_sum {s.sum_ms / 1000}")
    out.append(f"gatewayd_ussd_hop_seconds_count {s.hops}")
    metric("gatewayd_ussd_rate_limited_total", "counter", "Hops refused by the per-phone limit.",
           [("", s.rate_limited)])
    metric("gatewayd_ussd_errors_total", "counter", "Hops that failed on a bug.", [("", s.errors)])
    metric("gatewayd_ussd_unavailable_total", "counter", "Hops refused because the store failed.",
           [("", s.unavailable)])
    metric("gatewayd_ussd_dialogs_open", "gauge", "Dialogs in memory.", [("", len(ussd.dialogs))])
    st = store.stats
    metric("gatewayd_store_transactions_total", "counter", "Write transactions committed.",
           [("", st.transactions)])
    cumulative, running = [], 0
    for bound, count in zip(COMMIT_BUCKETS_MS, st.commit_ms_counts):
        running += count
        cumulative.append((f'_bucket{{le="{bound / 1000}"}}', running))
    cumulative.append(('_bucket{le="+Inf"}', st.commits))
    metric("gatewayd_store_commit_seconds", "histogram",
           "COMMIT latency (one fsync shared by a group of transactions).", cumulative)
    out.append(f"gatewayd_store_commit_seconds_sum {st.commit_ms_sum / 1000}")
    out.append(f"gatewayd_store_commit_seconds_count {st.commits}")
    metric("gatewayd_store_max_group", "gauge", "Most transactions one commit has carried.",
           [("", st.max_group)])
    metric("gatewayd_store_commit_failures_total", "counter", "Commits that failed.",
           [("", st.failed_commits)])
    metric("gatewayd_store_last_commit_seconds", "gauge", "Duration of the last COMMIT.",
           [("", st.last_commit_ms / 1000)])
    q = await store.read(outbox.queue_stats, time.time())
    metric("gatewayd_sms_outbox", "gauge", "SMS by state.",
           [(f'{{state="{k}"}}', v) for k, v in sorted(q["sms"].items())])
    metric("gatewayd_sms_outbox_oldest_queued_seconds", "gauge",
           "Age of the oldest SMS waiting to go out.", [("", q["sms_oldest_queued_seconds"])])
    metric("gatewayd_mpesa_actions", "gauge", "M-PESA actions by state.",
           [(f'{{state="{k}"}}', v) for k, v in sorted(q["mpesa"].items())])
    metric("gatewayd_mpesa_oldest_open_seconds", "gauge",
           "Age of the oldest M-PESA action not yet settled.",
           [("", q["mpesa_oldest_open_seconds"])])
    metric("gatewayd_change_log_last_seq", "gauge", "Highest change-log sequence number.",
           [("", q["change_log_last_seq"])])
    disk = shutil.disk_usage(daemon.cfg.store.state_dir)
    metric("gatewayd_state_disk_free_bytes", "gauge", "Free space where the database lives.",
           [("", disk.free)])
    metric("gatewayd_build_info", "gauge", "Version and site of this daemon.",
           [(f'{{version="{__version__}",site="{daemon.cfg.site.id}"}}', 1)])
    metric("gatewayd_task_up", "gauge", "1 when a supervised task is running.",
           [(f'{{task="{n}"}}', 1 if t.state == "running" else 0)
            for n, t in daemon.supervisor.tasks.items()])
    return "\n".join(out) + "\n"
