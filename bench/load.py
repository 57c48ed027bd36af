"""Load benchmark: N simulated villagers walk whole *383# flows against gatewayd.

    .venv/bin/python bench/load.py [--villagers 100] [--duration 20] [--think-ms 0]

By default it starts its own daemon (fresh temp state dir, free 127.0.0.1 port) and,
before that, a baseline: a trivial ASGI app ("END ok") on the same hypercorn, so the
figures can be read against the HTTP floor of this machine (project rule: a benchmark
compares against a baseline in the same run). Villagers come in pairs: B registers,
A registers and requests a loan from B, B approves it with the PIN, and both look at
My loans / Balance / Transactions between loans, each dialog on a fresh session id.
Every reply is checked; any failure makes the exit status non-zero.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import math
import os
import random
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the checkout's packages, even outside the venv's -e install

from gatewayd.asgi import lifespan, respond  # noqa: E402
from store.pins import is_weak_pin  # noqa: E402

SERVICE_CODE = "*383#"
FIRST_PHONE = 710000000   # villager i dials from 0710000000 + i
NAMES = ["Amina", "Baraka", "Chebet", "Daudi", "Esther", "Faraji", "Gathoni", "Hamisi",
         "Imani", "Jabali", "Kerubo", "Lemayian", "Makena", "Njeri", "Otieno", "Wanjiru"]
MAX_OUTSTANDING = 3     # requests a borrower keeps waiting; below [lending] max_open_requests
HOP_TIMEOUT = 30.0      # far above any sane hop: a stuck hop shows up as a failure, not a hang
FAIL_PAUSE = 0.05       # seconds a villager waits after a failed dialog
VIEWS = {"loans": ("2", ("My loans", "You have no loans yet")),
         "balance": ("4", ("You owe",)),
         "txns": ("5", ("Transactions", "No transactions yet"))}

# One hop of a scripted dialog: what is typed (None: the dial itself), whether it is a
# PIN entry (scrypt on the daemon), the reply prefix and the texts one of which it shows.
Step = tuple[str | None, bool, str, tuple[str, ...]]


# -- measuring ---------------------------------------------------------------------------

@dataclass
class Recorder:
    pin_ms: list[float] = field(default_factory=list)
    other_ms: list[float] = field(default_factory=list)
    dialogs: dict[str, int] = field(default_factory=dict)
    per_second: collections.Counter = field(default_factory=collections.Counter)
    failures: int = 0
    failure_samples: list[dict[str, Any]] = field(default_factory=list)  # the first 20


def summary(samples: list[float], seconds: float) -> dict[str, Any]:
    s = sorted(samples)

    def pct(p: float) -> float | None:  # nearest rank: always a latency that was observed
        return round(s[max(0, math.ceil(p / 100 * len(s)) - 1)], 2) if s else None
    return {"hops": len(s), "hops_per_s": round(len(s) / seconds, 1) if seconds > 0 else 0.0,
            "latency_ms": {"p50": pct(50), "p95": pct(95), "p99": pct(99),
                           "max": round(s[-1], 2) if s else None,
                           "mean": round(sum(s) / len(s), 2) if s else None}}


# -- the simulated villagers -------------------------------------------------------------

@dataclass
class Villager:
    n: int
    phone: str                     # 07XXXXXXXX, as a villager types it
    name: str
    pin: str
    lender: Villager | None = None
    client: httpx.AsyncClient | None = None  # one connection per phone, see drive()
    registered: trio.Event = field(default_factory=trio.Event)
    pending: int = 0               # requests to this villager not yet approved
    borrowers_done: int = 0
    borrowers: int = 0


class Bench:
    """Shared by all villagers of one run: the target, the clock, the dice, the results."""

    def __init__(self, url: str, think_ms: float, seed: int, flows: int) -> None:
        self.url, self.rec, self.flows = url, Recorder(), flows
        self.think_s = think_ms / 1000
        self.rng = random.Random(seed)
        self.sessions = 0
        self.t0 = 0.0  # set when the window opens

    async def think(self) -> None:
        # Exponential think time (people are bursty), capped so every loop stays bounded.
        if self.think_s > 0:
            await trio.sleep(min(self.rng.expovariate(1 / self.think_s), 5 * self.think_s))

    async def dialog(self, v: Villager, kind: str, steps: list[Step]) -> bool:
        self.sessions += 1
        session, inputs = f"bench-{v.n}-{self.sessions}", []
        for typed, is_pin, prefix, want in steps:
            if typed is not None:
                inputs.append(typed)
            await self.think()
            text = "*".join(inputs)
            t0 = time.perf_counter()
            try:
                r = await v.client.post(self.url, data={
                    "sessionId": session, "serviceCode": SERVICE_CODE, "phoneNumber": v.phone,
                    "networkCode": "63902", "text": text})
            except httpx.HTTPError as e:
                return await self.failed(dialog=kind, phone=v.phone, text=text, error=repr(e))
            (self.rec.pin_ms if is_pin else self.rec.other_ms).append(
                (time.perf_counter() - t0) * 1000)
            self.rec.per_second[int(trio.current_time() - self.t0)] += 1
            if r.status_code != 200 or not r.text.startswith(prefix) or \
                    not any(w in r.text for w in want):
                return await self.failed(dialog=kind, phone=v.phone, text=text,
                                         status=r.status_code, got=r.text[:200],
                                         want=f"{prefix}... {' | '.join(want)}")
        self.rec.dialogs[kind] = self.rec.dialogs.get(kind, 0) + 1
        return True

    async def failed(self, **what: Any) -> bool:
        self.rec.failures += 1
        if len(self.rec.failure_samples) < 20:
            self.rec.failure_samples.append(what)
        await trio.sleep(FAIL_PAUSE)  # so a broken daemon cannot spin a villager's loop
        return False

    async def register(self, v: Villager) -> None:
        while not await self.dialog(v, "register", [
                (None, False, "CON ", ("1 English",)),
                ("1", False, "CON ", ("Enter your name",)),
                (v.name, False, "CON ", ("Set a 4-digit PIN",)),
                (v.pin, True, "CON ", ("Enter the same PIN again",)),
                (v.pin, True, "CON ", ("You are registered",))]):
            pass
        v.registered.set()

    async def view(self, v: Villager, which: str) -> None:
        option, want = VIEWS[which]
        # "00" is the menus' way home from any screen, then "0" Exit ends the dialog.
        await self.dialog(v, which, [
            (None, False, "CON ", ("1 Request loan",)),
            (option, False, "CON ", want),
            ("00", False, "CON ", ("1 Request loan",)),
            ("0", False, "END ", ("Thank you for using",))])

    async def request(self, v: Villager) -> None:
        assert v.lender is not None
        amount = self.rng.randrange(100, 5001, 50)
        if await self.dialog(v, "request", [
                (None, False, "CON ", ("1 Request loan",)),
                ("1", False, "CON ", ("Lender's phone number",)),
                (v.lender.phone, False, "CON ", ("Amount to borrow",)),
                (str(amount), False, "CON ", ("Repayment per instalment",)),
                (str(max(1, amount // 4)), False, "CON ", ("1 Confirm",)),
                ("1", False, "END ", ("Loan request sent",))]):
            v.lender.pending += 1

    async def approve(self, v: Villager) -> None:
        # Any waiting request will do: only this villager's borrowers ask this lender.
        if await self.dialog(v, "approve", [
                (None, False, "CON ", ("3 Approve loans",)),
                ("3", False, "CON ", ("Requests to you",)),
                ("1", False, "CON ", ("1 Approve",)),
                ("1", False, "CON ", ("Enter your PIN to approve",)),
                (v.pin, True, "END ", ("Approved.",))]):
            v.pending -= 1

    async def borrower(self, v: Villager) -> None:
        assert v.lender is not None
        await self.register(v)
        done = 0
        while not self.flows or done < self.flows:
            # B registers before A asks (the brief's order); views meanwhile.
            asked = v.lender.registered.is_set() and v.lender.pending < MAX_OUTSTANDING
            if asked:
                await self.request(v)
            for which in VIEWS:
                await self.view(v, which)
            done += asked
        v.lender.borrowers_done += 1

    async def lender(self, v: Villager) -> None:
        await self.register(v)
        turn = 0
        while v.pending or v.borrowers_done < v.borrowers:
            if v.pending:
                await self.approve(v)
            else:
                await self.view(v, list(VIEWS)[turn % len(VIEWS)])
                turn += 1

    async def baseline_caller(self, v: Villager) -> None:
        # Same client path and body shapes as a 5-hop dialog; the app answers "END ok".
        while True:
            await self.dialog(v, "baseline", [(t, False, "END ", ("ok",))
                                              for t in (None, "1", v.name, "4826", "4826")])


def villagers(count: int, first_phone: int, rng: random.Random) -> list[Villager]:
    out = []
    for i in range(count):
        pin = "1234"
        while is_weak_pin(pin):
            pin = f"{rng.randrange(10000):04d}"
        out.append(Villager(i, f"0{first_phone + i}", NAMES[i % len(NAMES)], pin))
    for a in out[0::2]:  # pairs: even index borrows from the next; an odd last one from #1
        a.lender = out[a.n + 1] if a.n + 1 < count else out[1]
        a.lender.borrowers += 1
    return out


async def drive(url: str, args: argparse.Namespace, duration: float, baseline: bool,
                first_phone: int) -> tuple[Recorder, float]:
    bench = Bench(url, args.think_ms, args.seed, args.flows)
    people = villagers(args.villagers, first_phone, bench.rng)
    # A client per villager, not one shared pool: httpcore's pool does O(connections x
    # waiting requests) work per request (encode/httpcore#1035), which at 100 villagers
    # made the client, not the daemon, the bottleneck. One shared SSLContext (plain HTTP
    # never uses it) because each client would otherwise load the CA store, ~20 ms apiece.
    tls = ssl.create_default_context()
    async with contextlib.AsyncExitStack() as clients:
        for v in people:
            v.client = await clients.enter_async_context(httpx.AsyncClient(
                limits=httpx.Limits(max_connections=1), timeout=HOP_TIMEOUT, verify=tls,
                trust_env=False))  # no HTTP(S)_PROXY detour for loopback
        bench.t0 = t0 = trio.current_time()
        # The window closes at the deadline; hops still in flight then are not counted.
        with trio.move_on_after(duration):
            async with trio.open_nursery() as nursery:
                for v in people:
                    role = bench.baseline_caller if baseline else \
                        bench.borrower if v.lender else bench.lender
                    nursery.start_soon(role, v)
        return bench.rec, trio.current_time() - t0


# -- processes we start ----------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_status(pid: int | None) -> dict[str, Any]:
    """Peak RSS (VmHWM, KiB) and CPU seconds so far of a process, from /proc."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, TypeError):  # gone, or no pid given with --url
        return {"peak_rss_kib": None, "cpu_s": None}
    hwm = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
    ticks = int(stat[11]) + int(stat[12])  # utime + stime
    return {"peak_rss_kib": hwm, "cpu_s": round(ticks / os.sysconf("SC_CLK_TCK"), 2)}


class Child:
    """A server subprocess of ours: started, awaited until it answers, stopped by SIGTERM."""

    def __init__(self, argv: list[str], log: Path) -> None:
        self.log = log
        with open(log, "wb") as f:
            self.proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)

    async def ready(self, url: str, timeout: float = 30.0) -> None:
        async with httpx.AsyncClient(timeout=2.0, trust_env=False) as c:
            with trio.move_on_after(timeout):
                while self.proc.poll() is None:
                    with contextlib.suppress(httpx.HTTPError):
                        if (await c.get(url)).status_code == 200:
                            return
                    await trio.sleep(0.05)
        self.stop()
        raise SystemExit(f"load.py: {' '.join(self.proc.args[1:4])} did not come up at {url}:\n"
                         + self.log.read_text(errors="replace")[-3000:])

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:  # a stop that hangs is a finding: report it as -9
            self.proc.kill()
            self.proc.wait(10)
            return -9

    def errors(self) -> list[str]:
        """Lines logged at error level: JSON from structlog, text from the stdlib."""
        def bad(line: str) -> bool:
            try:
                return json.loads(line).get("level") in ("error", "critical")
            except (ValueError, AttributeError):
                return any(w in line for w in (" ERROR ", " CRITICAL ", "Traceback"))
        return [line[:500] for line in self.log.read_text(errors="replace").splitlines()
                if bad(line)]


def daemon_config(state_dir: Path, port: int, args: argparse.Namespace) -> str:
    # Rate limits at their maxima (10000): a villager here hops far faster than a person.
    return (f'[store]\nstate_dir = "{state_dir}"\nsynchronous = "{args.synchronous}"\n'
            f'[http]\nlisten = "127.0.0.1:{port}"\n'
            f'[rate_limit]\nhops_per_minute = 10000\nburst = 10000\n'
            f'[lending]\nmax_open_requests = 50\n'
            f'[security]\npin_hash_log2_n = {args.pin_cost}\n'
            f'[log]\nlevel = "warning"\n')


async def baseline_app(scope: dict, receive: Any, send: Any) -> None:
    """The HTTP floor: read the body, answer like a hop would, do nothing else."""
    if scope["type"] == "lifespan":
        return await lifespan(receive, send)
    while scope["type"] == "http" and (await receive()).get("more_body"):
        pass
    await respond(send, 200, "END ok")


def serve_baseline(port: int) -> None:
    """The baseline server process; nothing to keep, so SIGTERM may end it outright."""
    import hypercorn.trio
    from gatewayd.daemon import _hypercorn_config  # the daemon's very hypercorn settings
    trio.run(hypercorn.trio.serve, baseline_app, _hypercorn_config(f"127.0.0.1:{port}", 1.0))


# -- the run -------------------------------------------------------------------------

def report(rec: Recorder, seconds: float) -> dict[str, Any]:
    return {"duration_s": round(seconds, 2), **summary(rec.pin_ms + rec.other_ms, seconds),
            "pin_hops": summary(rec.pin_ms, seconds), "other_hops": summary(rec.other_ms, seconds),
            "dialogs": rec.dialogs, "failures": rec.failures,
            "failure_samples": rec.failure_samples, "hops_per_second_timeline":
            [rec.per_second[i] for i in range(max(rec.per_second, default=-1) + 1)]}


async def baseline(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    port = free_port()
    server = Child([sys.executable, __file__, "--serve-baseline", str(port)], tmp / "base.log")
    try:
        await server.ready(f"http://127.0.0.1:{port}/")
        rec, secs = await drive(f"http://127.0.0.1:{port}/ussd", args, args.baseline_duration,
                                True, FIRST_PHONE)
        return {**report(rec, secs), **proc_status(server.proc.pid)}  # cpu_s: with startup
    finally:
        server.stop()


async def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    result: dict[str, Any] = {"started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                              "settings": vars(args), "cpus": os.cpu_count(), "baseline": None,
                              "vs_baseline": None}
    if not args.no_baseline:
        result["baseline"] = await baseline(args, tmp)
    daemon, url, pid, first_phone, config = None, args.url, args.pid, FIRST_PHONE, tmp / "gw.toml"
    if url:  # a daemon with history: numbers no earlier run took (their PINs are unknown)
        first_phone += random.randrange(1, 800) * 100_000
    else:
        port = free_port()
        config.write_text(daemon_config(tmp / "state", port, args))
        daemon = Child([sys.executable, "-m", "gatewayd", "run", "--config", str(config)],
                       tmp / "gatewayd.log")
        url, pid = f"http://127.0.0.1:{port}/ussd", daemon.proc.pid
    try:
        if daemon:
            await daemon.ready(url.removesuffix("/ussd") + "/healthz")
        cpu0, before = time.process_time(), proc_status(pid)
        rec, secs = await drive(url, args, args.duration, False, first_phone)
        after = proc_status(pid)  # before SIGTERM: the peak of the load itself
        if after["cpu_s"] is not None:  # the window's share, not the process's lifetime
            after["cpu_s"] = round(after["cpu_s"] - before["cpu_s"], 2)
        result.update(report(rec, secs), client_cpu_s=round(time.process_time() - cpu0, 2),
                      target={"url": url, "pid": pid, "started_by_bench": daemon is not None},
                      daemon=after)
    finally:
        code = daemon and await trio.to_thread.run_sync(daemon.stop)
    d, ok = result["daemon"], True
    if daemon:  # what the daemon thought of it: exit status, error logs, ledger check
        with trio.fail_after(120):
            check = await trio.run_process([sys.executable, "-m", "gatewayd", "db", "check",
                                            "--config", str(config)], check=False, cwd=ROOT,
                                           capture_stdout=True, capture_stderr=True)
        errors = daemon.errors()
        d.update(exit_code=code, log_errors=len(errors), log_error_samples=errors[:10],
                 db_check=(check.stdout + check.stderr).decode(errors="replace").strip()[-300:],
                 db_check_ok=check.returncode == 0)
        ok = code == 0 and not errors and check.returncode == 0
    base = result["baseline"]
    if base and base["hops"] and result["hops"]:
        b, g = base["latency_ms"], result["latency_ms"]
        result["vs_baseline"] = {"hops_per_s": round(result["hops_per_s"] / base["hops_per_s"], 3),
                                 "p50": round(g["p50"] / b["p50"], 2),
                                 "p99": round(g["p99"] / b["p99"], 2)}
    result["ok"] = bool(ok and result["hops"] and not result["failures"]
                        and not (base and base["failures"]))
    return result


def table(r: dict[str, Any]) -> str:
    rows = [("baseline (END ok)", r["baseline"])] if r["baseline"] else []
    rows += [("gatewayd, all hops", r), ("  PIN hops (scrypt)", r["pin_hops"]),
             ("  other hops", r["other_hops"])]
    lines = [f"{'':22}{'hops':>8}{'hops/s':>9}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'max ms':>9}"]
    for name, s in rows:
        cells = "".join(f"{'-' if s['latency_ms'][k] is None else s['latency_ms'][k]:>9}"
                        for k in ("p50", "p95", "p99", "max"))
        lines.append(f"{name:22}{s['hops']:>8}{s['hops_per_s']:>9}{cells}")
    if v := r["vs_baseline"]:
        lines.append(f"gatewayd / baseline: hops/s x{v['hops_per_s']}, p50 x{v['p50']}, "
                     f"p99 x{v['p99']}")
    d = r["daemon"]
    rss = f"{d['peak_rss_kib'] / 1024:.1f} MiB" if d["peak_rss_kib"] else "n/a (give --pid)"
    lines.append(f"daemon peak RSS (VmHWM) {rss}; CPU s: daemon {d['cpu_s']}, "
                 f"client {r['client_cpu_s']} ({r['cpus']} CPUs)")
    if "exit_code" in d:
        lines.append(f"daemon exit {d['exit_code']}, {d['log_errors']} error log lines; "
                     f"db check: {d['db_check'].splitlines()[-1] if d['db_check'] else '?'}")
    lines.append(f"dialogs {r['dialogs']}; failures {r['failures']}")
    lines += [f"  ! {str(f)[:300]}"
              for f in r["failure_samples"][:5] + d.get("log_error_samples", [])[:3]]
    return "\n".join(lines)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--villagers", type=int, default=100, help="concurrent simulated villagers")
    p.add_argument("--duration", type=float, default=20.0, help="seconds of load")
    p.add_argument("--think-ms", type=float, default=0.0, help="mean think time between hops "
                   "(0: closed loop, full speed)")
    p.add_argument("--flows", type=int, default=0, help="stop each borrower after this many "
                   "loans, its lender once all are approved (0: run for --duration)")
    p.add_argument("--pin-cost", type=int, default=12, help="[security] pin_hash_log2_n")
    p.add_argument("--synchronous", choices=["full", "extra"], default="full")
    p.add_argument("--baseline-duration", type=float, default=5.0)
    p.add_argument("--no-baseline", action="store_true")
    p.add_argument("--url", help="USSD callback of a running daemon instead of starting one")
    p.add_argument("--pid", type=int, help="with --url: the daemon's pid, for RSS and CPU")
    p.add_argument("--seed", type=int, default=383)
    p.add_argument("--out", help="JSON results (default bench/results/load-<timestamp>.json)")
    p.add_argument("--serve-baseline", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.villagers < 2 or args.duration <= 0 or args.baseline_duration <= 0:
        p.error("need --villagers >= 2 and positive durations")
    if args.url and not args.url.startswith(("http://127.0.0.1:", "http://localhost:")):
        p.error("--url must be on loopback (http://127.0.0.1:PORT/ussd)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.serve_baseline:
        serve_baseline(args.serve_baseline)
        return 0
    with tempfile.TemporaryDirectory(prefix="gatewayd-bench-") as tmp:
        result = trio.run(run, args, Path(tmp))
    out = Path(args.out or ROOT / "bench" / "results" /
               f"load-{time.strftime('%Y%m%d-%H%M%S')}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    print(f"{'OK' if result['ok'] else 'FAILED'}; results: {out}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
