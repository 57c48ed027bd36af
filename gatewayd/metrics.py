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
    if daemon.smpp is not None:
        _smpp(daemon.smpp, metric)
    if daemon.modems is not None:
        _modems(daemon.modems, metric)
    if daemon.sync is not None:
        lag, st = await daemon.sync.lag(), daemon.sync.stats
        metric("gatewayd_sync_lag_records", "gauge", "Change-log records the upstream has "
               "not acknowledged.", [("", lag["records"])])
        metric("gatewayd_sync_lag_seconds", "gauge", "Age of the oldest unacknowledged record.",
               [("", lag["seconds"])])
        metric("gatewayd_sync_checkpoint", "gauge", "Highest seq the upstream acknowledged.",
               [("", lag["checkpoint"])])
        metric("gatewayd_sync_bytes_sent_total", "counter", "Batch bytes sent (push and pull).",
               [("", st.bytes_sent)])
        metric("gatewayd_sync_batches_total", "counter", "Batches handed to the upstream.",
               [('{way="push"}', st.batches_pushed), ('{way="pull"}', st.batches_pulled)])
        metric("gatewayd_sync_failures_total", "counter", "Push or poll attempts that failed.",
               [("", st.failures)])
        metric("gatewayd_sync_backhaul_up", "gauge", "1 when the last call to the upstream "
               "succeeded.", [("", 1 if st.backhaul else 0)])
        metric("gatewayd_sync_inbound_applied_total", "counter", "Upstream changes applied.",
               [("", st.inbound_applied)])
    if getattr(daemon, "mpesa", None) is not None:
        st = daemon.mpesa.stats
        metric("gatewayd_mpesa_direct_total", "counter", "Direct mode: Daraja requests "
               "accepted (sent), results settled, STK pushes left unknown (never resent), "
               "sends put off to retry, and B2Cs without a result asked about (Transaction "
               "Status).",
               [('{event="sent"}', st.sent), ('{event="settled_ok"}', st.settled_ok),
                ('{event="settled_failed"}', st.settled_failed),
                ('{event="unknown"}', st.unknown), ('{event="retried"}', st.retried),
                ('{event="status_query"}', st.status_queries)])
    metric("gatewayd_task_up", "gauge", "1 when a supervised task is running.",
           [(f'{{task="{n}"}}', 1 if t.state == "running" else 0)
            for n, t in daemon.supervisor.tasks.items()])
    return "\n".join(out) + "\n"


def _smpp(channel: Any, metric: Any) -> None:
    st = channel.stats
    status = channel.status()
    metric("gatewayd_smpp_bound", "gauge", "1 when the bind is up (each bind of a pair).",
           [(f'{{bind="{m}"}}', 1 if v == "bound" else 0)
            for m, v in sorted(st.bind_state.items())])
    metric("gatewayd_smpp_binds_total", "counter", "Binds made and refused.",
           [('{result="ok"}', st.binds), ('{result="refused"}', st.bind_failures)])
    metric("gatewayd_smpp_window_in_use", "gauge", "submit_sm in flight, unanswered.",
           [("", status["window_in_use"])])
    metric("gatewayd_smpp_window", "gauge", "The window: submit_sm allowed in flight.",
           [("", status["window"])])
    metric("gatewayd_smpp_sender_queued", "gauge", "submit_sm waiting in the sender.",
           [("", status["sender_queued"])])
    metric("gatewayd_smpp_submit_rate", "gauge", "The sender's pace now, submit_sm per "
           "second (halved by ESME_RTHROTTLED, creeping back).", [("", status["submit_rate"])])
    metric("gatewayd_smpp_submits_total", "counter", "SMS parts by the SMSC's answer.",
           [(f'{{outcome="{k}"}}', getattr(st, k))
            for k in ("accepted", "retried", "failed", "expired")])
    metric("gatewayd_smpp_receipts_total", "counter", "Delivery receipts by what they did.",
           [('{result="applied"}', st.receipts), ('{result="duplicate"}', st.receipts_duplicate),
            ('{result="unknown"}', st.receipts_unknown)])
    metric("gatewayd_smpp_sms_in_total", "counter", "Inbound SMS: whole messages, parts "
           "waiting for the rest, and resends dropped.",
           [('{result="message"}', st.mo_messages), ('{result="part"}', st.mo_parts_waiting),
            ('{result="duplicate"}', st.mo_duplicates)])
    metric("gatewayd_smpp_ussd_hops_total", "counter", "USSD hops that came over SMPP.",
           [("", st.ussd_hops)])
    metric("gatewayd_smpp_ussd_replies_lost_total", "counter",
           "USSD screens that could not be sent in time.", [("", st.ussd_replies_lost)])
    metric("gatewayd_smpp_protocol_warnings_total", "counter",
           "PDUs from the SMSC we could not use (answered with generic_nack or ignored).",
           [("", st.protocol_warnings)])


def _modems(channel: Any, metric: Any) -> None:
    rows = channel.pool.status()

    def per_modem(name: str, kind: str, help_: str, value: Any) -> None:
        metric(name, kind, help_, [(f'{{modem="{r["name"]}"}}', value(r)) for r in rows])

    per_modem("gatewayd_modem_up", "gauge", "1 when the modem is open and answering.",
              lambda r: 1 if r["state"] == "ready" else 0)
    # No sample for a modem whose signal is unknown (+CSQ 99, or not polled yet).
    metric("gatewayd_modem_signal_dbm", "gauge", "Signal strength from AT+CSQ.",
           [(f'{{modem="{r["name"]}"}}', r["signal_dbm"]) for r in rows
            if r["signal_dbm"] is not None])
    per_modem("gatewayd_modem_registered", "gauge", "1 when registered (home or roaming).",
              lambda r: 1 if r["registration"] in ("home", "roaming") else 0)
    per_modem("gatewayd_modem_queue_depth", "gauge", "SMS lined up for or being sent by it.",
              lambda r: r["queue_depth"])
    per_modem("gatewayd_modem_sent_total", "counter", "SMS the SMSC accepted from it.",
              lambda r: r["sent"])
    per_modem("gatewayd_modem_send_failures_total", "counter", "Sends that failed on it.",
              lambda r: r["send_failures"])
    per_modem("gatewayd_modem_received_total", "counter", "SMS received on it.",
              lambda r: r["received"])
    per_modem("gatewayd_modem_duplicates_total", "counter", "Repeated SMS it dropped.",
              lambda r: r["duplicates"])
    per_modem("gatewayd_modem_garbage_lines_total", "counter", "Lines it sent that were "
              "no answer to anything.", lambda r: r["garbage_lines"])
    per_modem("gatewayd_modem_reopens_total", "counter", "Times it was reopened after a "
              "hang, garbage or EOF.", lambda r: max(0, r["sessions"] - 1))
    per_modem("gatewayd_modem_parts_waiting", "gauge", "Parts of long SMS waiting for "
              "the rest.", lambda r: r["parts_waiting"])
    metric("gatewayd_modem_pool_queued", "gauge", "SMS waiting for any modem.",
           [("", channel.pool.queued)])
