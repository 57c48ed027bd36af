"""GET /metrics in the Prometheus text format (0.0.4)."""

from __future__ import annotations

from typing import Any

from store import outbox


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
    metric("gatewayd_store_commits_total", "counter", "fsync'd commits (groups).", [("", st.commits)])
    metric("gatewayd_store_commit_failures_total", "counter", "Commits that failed.",
           [("", st.failed_commits)])
    metric("gatewayd_store_last_commit_seconds", "gauge", "Duration of the last COMMIT.",
           [("", st.last_commit_ms / 1000)])
    sms = await store.read(outbox.sms_counts)
    metric("gatewayd_sms_outbox", "gauge", "SMS by state.",
           [(f'{{state="{k}"}}', v) for k, v in sorted(sms.items())])
    mp = await store.read(outbox.mpesa_counts)
    metric("gatewayd_mpesa_actions", "gauge", "M-PESA actions by state.",
           [(f'{{state="{k}"}}', v) for k, v in sorted(mp.items())])
    metric("gatewayd_task_up", "gauge", "1 when a supervised task is running.",
           [(f'{{task="{n}"}}', 1 if t.state == "running" else 0)
            for n, t in daemon.supervisor.tasks.items()])
    return "\n".join(out) + "\n"
