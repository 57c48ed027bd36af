"""Modem benchmark: MO-to-reply latency through a fake AT modem, and the pool's
sustained MT rate with 1, 2 and 4 modems.

    .venv/bin/python bench/modem.py [--mo 200] [--mt 400] [--delay 2.0] [--mt-slow 8]

The modems are tests/modem/fakemodem.py: a pty answering AT commands from a thread,
opened by the real ModemPool through python-gsmmodem-new and pyserial, so every byte
goes through the same reader thread, to_thread hops and AT parsing as on a box.

- MO -> reply: the fake stores an SMS and says +CMTI; the pool reads it (AT+CMGR),
  hands it to a commit that answers at once (submit of the reply), deletes it
  (AT+CMGD) and sends the reply (AT+CMGS, prompt, PDU). Measured from the +CMTI
  write to the reply PDU arriving at the modem, one SMS at a time. Baseline in the
  same run: the AT round trip over the same kind of pty with pyserial alone, times the
  four commands the path needs. A second series gives the fake no +CMTI (a lost
  notification), so only the AT+CMGL listing finds the SMS.
- MT rate: N SMS queued at once, with the fake answering +CMGS at once, and again with
  a per-SMS network delay (`--delay`, 1-3 s on a real network).

A real modem's network delay dominates: one AT+CMGS takes the radio and the SMSC
1-3 s, so a modem sends well under one SMS a second and the pool's own cost (under a
millisecond or so per SMS) does not show. More modems is the way to more SMS/s.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import serial
import structlog
import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the checkout's packages, even outside the venv's -e install

from modem.events import Event, SmsIn, Submitted  # noqa: E402
from modem.pool import ModemPool  # noqa: E402
from tests.modem.fakemodem import FakeModem, Sent  # noqa: E402

EAT = dt.timezone(dt.timedelta(hours=3))


def cfg(link: Path, **kw: Any) -> dict[str, Any]:
    base = {"port": str(link), "at_timeout": 5.0, "send_timeout": 30.0,
            "poll_seconds": 30.0, "list_seconds": 30.0}
    base.update(kw)
    return base


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def summary(ms: list[float]) -> dict[str, float]:
    return {"n": len(ms), "p50_ms": round(pct(ms, 50), 2), "p95_ms": round(pct(ms, 95), 2),
            "p99_ms": round(pct(ms, 99), 2), "max_ms": round(max(ms), 2),
            "mean_ms": round(statistics.fmean(ms), 2)}


# -- baseline -------------------------------------------------------------------------
def at_round_trip(tmp: Path, n: int) -> dict[str, float]:
    """AT -> OK over a pty with pyserial alone: the transport's floor."""
    fake = FakeModem(tmp / "baseline")
    try:
        port = serial.Serial(str(fake.link), 115200, timeout=2)
        port.write(b"ATE0\r")
        port.read_until(b"OK\r\n")
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            port.write(b"AT\r")
            port.read_until(b"OK\r\n")
            times.append((time.perf_counter() - t0) * 1000)
        port.close()
    finally:
        fake.close()
    return summary(times)


# -- MO -> reply ----------------------------------------------------------------------
async def mo_to_reply(tmp: Path, n: int, notify: bool, list_seconds: float) -> dict[str, Any]:
    fake = FakeModem(tmp / f"mo-{notify}")
    replies: list[Sent] = []
    got_reply = trio.Event()
    token = trio.lowlevel.current_trio_token()

    def on_sent(sent: Sent) -> None:        # fake modem's thread
        replies.append(sent)
        token.run_sync_soon(got_reply.set)

    fake.on_sent = on_sent
    pool: ModemPool
    committed_at: list[float] = []

    async def commit(event: Event) -> None:
        if isinstance(event, SmsIn):        # the reply function: answers at once
            committed_at.append(time.monotonic())
            pool.submit(len(committed_at), "254712345678", "Salio lako ni Ksh 1,250.")

    pool = ModemPool([cfg(fake.link, list_seconds=list_seconds)], commit)
    total, to_commit = [], []
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.run)
            while not pool.workers[0].ready:
                await pool._changed.wait()
            for i in range(n):
                got_reply = trio.Event()
                when = dt.datetime(2026, 11, 28, 18, 0, tzinfo=EAT) + dt.timedelta(seconds=i)
                t0 = time.monotonic()
                fake.deliver("+254712345678", f"BAL {i}", notify=notify, when=when)
                with trio.fail_after(list_seconds * 3 + 10):
                    await got_reply.wait()
                total.append((replies[-1].at - t0) * 1000)
                to_commit.append((committed_at[-1] - t0) * 1000)
            nursery.cancel_scope.cancel()
    finally:
        fake.close()
    return {"notify": notify, "list_seconds": list_seconds, "to_reply": summary(total),
            "to_commit": summary(to_commit)}


# -- MT rate --------------------------------------------------------------------------
async def mt_rate(tmp: Path, modems: int, n: int, delay: float) -> dict[str, Any]:
    fakes = [FakeModem(tmp / f"mt-{modems}-{delay}-{i}", send_delay=delay) for i in range(modems)]
    done = trio.Event()
    submitted: list[tuple[float, str]] = []

    async def commit(event: Event) -> None:
        if isinstance(event, Submitted):
            submitted.append((time.monotonic(), event.modem))
            if len(submitted) == n:
                done.set()

    pool = ModemPool([cfg(f.link) for f in fakes], commit)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.run)
            while not all(w.ready for w in pool.workers):
                await pool._changed.wait()
            t0 = time.monotonic()
            for i in range(n):
                pool.submit(i, "254712345678", f"Ombi la mkopo {i} limepokelewa. Jibu 1 kukubali.")
            with trio.fail_after(n * (delay + 1) + 30):
                await done.wait()
            elapsed = submitted[-1][0] - t0
            nursery.cancel_scope.cancel()
    finally:
        for f in fakes:
            f.close()
    per_modem = {f"modem-{i}": sum(1 for _, m in submitted if m.endswith(f"-{i}"))
                 for i in range(modems)}
    ceiling = modems / delay if delay else None
    return {"modems": modems, "delay_s": delay, "sms": n, "seconds": round(elapsed, 3),
            "sms_per_s": round(n / elapsed, 2),
            "ceiling_sms_per_s": round(ceiling, 2) if ceiling else None,
            "per_modem": per_modem}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        result: dict[str, Any] = {"when": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                  "baseline_at_round_trip": at_round_trip(tmp, args.mo)}
        result["mo_cmti"] = await mo_to_reply(tmp, args.mo, True, 30.0)
        result["mo_listing_only"] = await mo_to_reply(tmp, args.mo_lost, False, args.list_seconds)
        result["mt"] = []
        for delay, n_per in ((0.0, args.mt), (args.delay, args.mt_slow)):
            for modems in (1, 2, 4):
                n = n_per if delay == 0 else n_per * modems
                result["mt"].append(await mt_rate(tmp, modems, n, delay))
    return result


def table(r: dict[str, Any], out: Path) -> str:
    b = r["baseline_at_round_trip"]
    lines = ["", "MO -> reply through one fake modem (ms; +CMTI write to reply PDU at the modem)",
             f"  {'path':38} {'n':>4} {'p50':>8} {'p95':>8} {'p99':>8} {'max':>8}"]
    for name, key in (("+CMTI, AT+CMGR, commit, AT+CMGD, AT+CMGS", "mo_cmti"),
                      (f"no +CMTI: AT+CMGL every {r['mo_listing_only']['list_seconds']:g} s",
                       "mo_listing_only")):
        s = r[key]["to_reply"]
        lines.append(f"  {name:38} {s['n']:>4} {s['p50_ms']:>8} {s['p95_ms']:>8} "
                     f"{s['p99_ms']:>8} {s['max_ms']:>8}")
    c = r["mo_cmti"]["to_commit"]
    lines.append(f"  {'  of which +CMTI to commit':38} {c['n']:>4} {c['p50_ms']:>8} "
                 f"{c['p95_ms']:>8} {c['p99_ms']:>8} {c['max_ms']:>8}")
    lines.append(f"  {'baseline: AT -> OK, pyserial alone':38} {b['n']:>4} {b['p50_ms']:>8} "
                 f"{b['p95_ms']:>8} {b['p99_ms']:>8} {b['max_ms']:>8}")
    header = (f"  {'network delay':>14} {'modems':>6} {'sms':>5} {'seconds':>8} {'sms/s':>8} "
              f"{'ceiling':>8}  per modem")
    lines += ["", "MT rate (SMS queued at once; sms/s from the first submit to the last +CMGS)",
              header]
    for m in r["mt"]:
        ceiling = f"{m['ceiling_sms_per_s']:g}" if m["ceiling_sms_per_s"] else "-"
        lines.append(f"  {m['delay_s']:>12g} s {m['modems']:>6} {m['sms']:>5} {m['seconds']:>8} "
                     f"{m['sms_per_s']:>8} {ceiling:>8}  {list(m['per_modem'].values())}")
    lines += ["", "A real modem's network delay dominates: an AT+CMGS takes the radio and the SMSC",
              "1-3 s, so each modem sends well under one SMS a second whatever the pool does;",
              "the rows without delay show the pool's own cost. More modems, more SMS/s.",
              f"JSON: {out}", ""]
    return "\n".join(lines)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mo", type=int, default=200, help="MO->reply samples via +CMTI")
    p.add_argument("--mo-lost", type=int, default=10, help="samples with the +CMTI lost")
    p.add_argument("--list-seconds", type=float, default=1.0, help="listing period for those")
    p.add_argument("--mt", type=int, default=400, help="SMS per MT run without network delay")
    p.add_argument("--delay", type=float, default=2.0, help="network delay per AT+CMGS, seconds")
    p.add_argument("--mt-slow", type=int, default=6, help="SMS per modem in the delayed runs")
    p.add_argument("--out", help="JSON results (default bench/results/modem-<timestamp>.json)")
    return p.parse_args(argv)


def cli(argv: list[str] | None = None) -> int:
    args = parse(argv)
    # The pool logs every state change; a benchmark wants the table.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    result = trio.run(main, args)
    out = Path(args.out) if args.out else (
        ROOT / "bench" / "results" / f"modem-{time.strftime('%Y%m%d-%H%M%S')}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(table(result, out))
    return 0


if __name__ == "__main__":
    sys.exit(cli())
