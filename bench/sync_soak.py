"""Sync soak: villagers borrow, approve and repay through the real daemon while the link
between the box and the upstream drops, cuts, corrupts, delays, duplicates and reorders
at random (seeded); then the link heals and the run waits for everything to settle.

    .venv/bin/python bench/sync_soak.py [--villagers 24] [--duration 30] [--seed 1]
        [--rates cut_response=0.08,delay=0.1,...] [--spacing 2] [--converge 120]
        [--mode push|pull] [--retry-base 5] [--keep]

Every part is a process, as in tests/test_e2e_sync.py: `gatewayd run`, `gatewayd
upstream-sim`, the fake Daraja (tests/peers/daraja_fake.py), and between the box and the
upstream the faulty link (tests/faultylink.py, in this process). Villagers come in
pairs: the borrower registers and asks the lender for a loan, the lender registers and
approves it, and once the upstream has funded and paid it out the borrower repays
instalments until the fault window closes. One lender has no money (the funding fails)
and one borrower cancels every repayment prompt (those fail), so failed actions are in
the mix too.

At the end it stops everything and checks, from the two SQLite files and the fake's
record of payments: the upstream holds exactly the box's change log (same seqs, same
entity, key, op and payload); every M-PESA action was paid at most once, every
succeeded one exactly once with its receipt, no failed one at all; the upstream's
actions and loans agree with the box's; `gatewayd db check` passes. It prints the
faults injected, batches, retries, time to converge and final lag, and writes JSON to
bench/results/sync-soak-<timestamp>.json (`--out`). Exit status 1 on any problem.

Reading the figures: in push mode the box backs off uniform(0, 5 s x 2^k) after its
k-th failed call in a row (sync/checkpoint.retry_delay), so a hard fault costs about
5 s of a window and a 30 s window holds only a handful; a longer --duration gets more,
and so does a smaller base (--retry-base, the box's `sync.retry_base_seconds`).
--spacing keeps k at 1. In pull mode (--mode pull: the box serves /sync only, and the
upstream polls it every 0.05 s through the link) there is no back-off and hundreds of
requests are broken a minute. Convergence is timed from the heal to the moment both
sides have settled, and includes the repayments pairs make once the link is healed.

tests/test_e2e_sync_faults.py runs the same soak, shorter, under pytest.
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the checkout's packages and tests/, even outside the venv

from store.pins import is_weak_pin
from sync.daraja import originator_conversation_id
from tests.daemon_proc import DaemonProcess, Phone
from tests.faultylink import FaultyLink, Plan

KEY = bytes(range(32))
SITE = "site-1"
# Per request, except refuse: per new connection (recycle, a polite close after a whole
# answer, makes new connections happen). About one request in three is touched; the hard
# ones (the box hears no good answer) are about one in six.
DEFAULT_RATES = {"refuse": 0.15, "drop_request": 0.03, "cut_request": 0.04,
                 "cut_response": 0.06, "corrupt_response": 0.02, "late": 0.03,
                 "delay": 0.08, "duplicate": 0.06, "recycle": 0.08}
TERMINAL = ("succeeded", "failed")
PUSH = f"POST /v1/sites/{SITE}/batches"
SCRIPTED = {
    "push": [("cut_response", PUSH), ("duplicate", PUSH), ("late", PUSH),
             ("cut_request", PUSH), ("corrupt_response", PUSH), ("recycle", PUSH),
             ("refuse", "")],
    # Pull: the box's own API. The first ack is lost (the upstream applied the batch,
    # the box never hears that it did), then its other exchanges each go wrong once.
    "pull": [("drop_request", "POST /sync/ack"), ("cut_response", "GET /sync/batches"),
             ("cut_response", "POST /sync/ack"), ("cut_response", "POST /sync/inbound"),
             ("duplicate", "POST /sync/inbound"), ("late", "POST /sync/ack"),
             ("cut_request", "GET /sync/batches"), ("recycle", ""), ("refuse", "")],
}
NAMES = ["Amina", "Baraka", "Chebet", "Daudi", "Esther", "Faraji", "Gathoni", "Hamisi",
         "Imani", "Jabali", "Kerubo", "Lemayian", "Makena", "Njeri", "Otieno", "Wanjiru"]


def until(check, what: str, timeout: float, every: float = 0.05) -> float:
    """Other processes do the work: look again every `every` s, up to a deadline.
    Returns the seconds it took."""
    start = time.monotonic()
    while True:
        if check():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"never happened within {timeout:.0f} s: {what}")
        time.sleep(every)


class Peer:
    """A helper process that prints {"event": "listening", "url": ...} first."""

    def __init__(self, tmp: Path, name: str, *args: str) -> None:
        self.log_path = tmp / f"{name}.log"
        self.log = self.log_path.open("w")
        self.proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE,
                                     stderr=self.log, text=True)
        line = self.proc.stdout.readline()
        assert line, f"{name} did not start: see {self.log_path}"
        self.url = json.loads(line)["url"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.log.close()


class Stack:
    """The fake Daraja, the upstream, the faulty link and the daemon, all on loopback.

    push: the box's `upstream_url` is the link, which forwards to the upstream.
    pull: the box serves /sync only; the upstream polls it (`--pull`) through the link."""

    def __init__(self, tmp: Path, plan: Plan | None = None, *, mode: str = "push",
                 idle_poll: float = 0.2, pull_poll: float = 0.05,
                 retry_base: float = 5.0) -> None:
        self.tmp, self.mode = tmp, mode
        self.upstream_db = tmp / "upstream.db"
        self.fake = self.sim = self.link = self.daemon = None
        key_file = tmp / "sync.key"
        key_file.write_text(KEY.hex())
        key_file.chmod(0o600)
        sim_args = ["-m", "gatewayd", "upstream-sim", "--listen", "127.0.0.1:0", "--site",
                    f"{SITE}:{KEY.hex()}", "--db", str(self.upstream_db), "--first-query", "0"]
        config = ("[rate_limit]\nhops_per_minute = 10000\nburst = 1000\n"
                  "[lending]\nmax_open_requests = 50\n"
                  f'[sync]\nenabled = true\nkey_file = "{key_file}"\n'
                  f"idle_poll_seconds = {idle_poll}\nretry_base_seconds = {retry_base}\n")
        try:
            self.fake = Peer(tmp, "daraja", "tests/peers/daraja_fake.py", "--port", "0")
            sim_args += ["--daraja", self.fake.url]
            if mode == "push":
                self.sim = Peer(tmp, "upstream", *sim_args)
                self.link = FaultyLink(self.sim.url, plan).start()
                config += f'upstream_url = "{self.link.url}"\n'
                self.daemon = DaemonProcess(tmp, extra_config=config)
                self.daemon.start()
            else:
                self.daemon = DaemonProcess(tmp, extra_config=config)
                self.daemon.start()
                self.link = FaultyLink(self.daemon.base, plan).start()
                self.sim = Peer(tmp, "upstream", *sim_args, "--pull", f"{SITE}={self.link.url}",
                                "--poll", str(pull_poll))
        except BaseException:
            self.stop()
            raise
        self.box_db = self.daemon.state_dir / "gatewayd.db"
        self.http = httpx.Client(timeout=10)

    # -- looking -----------------------------------------------------------------------
    def sync_status(self) -> dict[str, Any]:
        """The box's own word (admin socket, as `gatewayd status --json` asks it)."""
        sock = str(self.daemon.state_dir / "admin.sock")
        with httpx.Client(transport=httpx.HTTPTransport(uds=sock), base_url="http://gatewayd",
                          timeout=10) as c:
            return c.get("/status").json()["sync"]

    def cli_status(self) -> dict[str, Any]:
        r = self.daemon.gatewayd("status", "--json")
        assert r.returncode == 0, r.stdout + r.stderr
        return json.loads(r.stdout)["sync"]

    def upstream_state(self) -> dict[str, Any]:
        return self.http.get(f"{self.sim.url}/v1/sites/{SITE}/state").json()

    def payments(self) -> list[dict[str, Any]]:
        return self.http.get(self.fake.url + "/_fake/state").json()["payments"]

    def script_daraja(self, **kw: Any) -> None:
        r = self.http.post(self.fake.url + "/_fake/control", json={"op": "script", **kw})
        assert r.status_code == 200, r.text

    def box(self) -> sqlite3.Connection:
        conn = sqlite3.connect(f"file:{self.box_db}?mode=ro", uri=True, timeout=10)
        conn.row_factory = sqlite3.Row
        return conn

    def settled(self) -> bool:
        """The box's log all acknowledged, every action settled on both sides, and every
        inbound change the upstream made applied by the box."""
        s = self.sync_status()
        if s["records"] != 0:
            return False
        with self.box() as c:
            open_actions = c.execute("SELECT COUNT(*) FROM mpesa_actions WHERE state NOT IN "
                                     "('succeeded', 'failed')").fetchone()[0]
        if open_actions:
            return False
        up = self.upstream_state()
        return (set(up["actions"]) <= set(TERMINAL) and up["awaiting_receipt"] == 0
                and s["inbound_cursor"] >= up["inbound_seq"]
                and up["checkpoint"] == s["checkpoint"] == s["last_seq"])

    def stop(self) -> None:
        for part in (self.daemon, self.sim, self.fake):
            if part is None:
                continue
            try:
                if isinstance(part, DaemonProcess):
                    if part.proc is not None and part.proc.poll() is None:
                        part.stop()
                else:
                    part.stop()
            except Exception:  # noqa: BLE001 - stop the rest whatever happened
                if isinstance(part, DaemonProcess):
                    part.kill()
        if self.link is not None:
            self.link.stop()


# -- villagers --------------------------------------------------------------------------------

def pins(rng: random.Random) -> str:
    while True:
        pin = f"{rng.randrange(10000):04d}"
        if not is_weak_pin(pin):
            return pin


@dataclass
class Pair:
    i: int
    borrower: str          # local 07... numbers, as villagers type them
    lender: str
    lang: str              # "1" English, "2" Kiswahili
    amount: int            # whole Ksh
    instalment: int
    pin_b: str
    pin_l: str
    lender_broke: bool = False          # the funding STK push fails (insufficient funds)
    borrower_cancels: bool = False      # every repayment prompt is cancelled
    log: list[str] = field(default_factory=list)
    repayments: int = 0
    error: str | None = None

    @property
    def borrower_msisdn(self) -> str:
        return "254" + self.borrower[1:]

    @property
    def lender_msisdn(self) -> str:
        return "254" + self.lender[1:]


def make_pairs(n: int, seed: int) -> list[Pair]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        amount = rng.randrange(20, 90) * 100
        out.append(Pair(i, f"0711{i:06d}", f"0722{i:06d}", rng.choice("12"), amount,
                        amount // rng.choice((5, 10, 20)) + i % 7, pins(rng), pins(rng),
                        lender_broke=(i == 0), borrower_cancels=(i == 1 and n > 2)))
    return out


def expect(reply: str, *prefixes: str) -> str:
    if not reply.startswith(prefixes):
        raise AssertionError(f"expected {prefixes}, got {reply!r}")
    return reply


def run_pair(stack: Stack, p: Pair, start_at: float, stop_at: float,
             grace: float = 60.0) -> None:
    """One pair's whole life; stops starting new dialogs at `stop_at` (monotonic), except
    that a pair still waiting to make its first repayment waits up to `grace` more."""
    try:
        while time.monotonic() < start_at:
            time.sleep(0.02)
        b, lender = Phone(stack.daemon, p.borrower), Phone(stack.daemon, p.lender)
        expect(b.run(p.lang, NAMES[p.i % 16], p.pin_b, p.pin_b, "1", p.lender, str(p.amount),
                     str(p.instalment), "1"), "END ")
        p.log.append("requested")
        expect(lender.run(p.lang, NAMES[(p.i + 8) % 16], p.pin_l, p.pin_l, "3", "1", "1",
                          p.pin_l), "END ")
        p.log.append("approved")
        conn = stack.box()
        try:
            while True:
                now = time.monotonic()
                if now >= stop_at and (p.repayments or now >= stop_at + grace):
                    return
                state = loan_state(conn, p.borrower_msisdn)
                if state in ("failed", "repaid"):
                    p.log.append(state)
                    return
                if state == "active" and not repayment_open(conn, p.borrower_msisdn):
                    if p.repayments and p.borrower_cancels:
                        return      # one cancelled prompt is enough
                    expect(b.run("6", "1", "1", p.pin_b), "END ")
                    p.repayments += 1
                    p.log.append("repay")
                time.sleep(0.1)
        finally:
            conn.close()
    except Exception as e:  # noqa: BLE001 - reported, and fails the run
        p.error = f"{type(e).__name__}: {e}"


def loan_state(conn: sqlite3.Connection, borrower: str) -> str | None:
    row = conn.execute("SELECT l.state FROM loans l JOIN users u ON u.id = l.borrower_id "
                       "WHERE u.msisdn = ? ORDER BY l.id DESC LIMIT 1", (borrower,)).fetchone()
    return row[0] if row else None


def repayment_open(conn: sqlite3.Connection, borrower: str) -> bool:
    return conn.execute("SELECT COUNT(*) FROM mpesa_actions WHERE purpose = 'repayment' AND "
                        "msisdn = ? AND state NOT IN ('succeeded', 'failed')",
                        (borrower,)).fetchone()[0] > 0


# -- after the run: what both sides hold -------------------------------------------------------

def box_records(db: Path) -> list[tuple]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
        return [(s, e, k, o, json.loads(p), at) for s, e, k, o, p, at in c.execute(
            "SELECT seq, entity, entity_key, op, payload, at FROM change_log ORDER BY seq")]


def upstream_records(db: Path) -> list[tuple]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
        return [(s, e, k, o, json.loads(p), at) for s, e, k, o, p, at in c.execute(
            "SELECT seq, entity, key, op, payload, at FROM records WHERE site = ? ORDER BY seq",
            (SITE,))]


def compare_records(box: list[tuple], up: list[tuple]) -> list[str]:
    problems = []
    box_seqs, up_seqs = [r[0] for r in box], [r[0] for r in up]
    if len(set(up_seqs)) != len(up_seqs):
        problems.append(f"upstream holds a seq twice: {[s for s, n in Counter(up_seqs).items() if n > 1][:10]}")
    if box_seqs != up_seqs:
        problems.append(f"seqs differ: box has {len(box_seqs)} (last {box_seqs[-1:]}), upstream "
                        f"{len(up_seqs)} (last {up_seqs[-1:]}); only on the box "
                        f"{sorted(set(box_seqs) - set(up_seqs))[:10]}, only upstream "
                        f"{sorted(set(up_seqs) - set(box_seqs))[:10]}")
    by_seq = {r[0]: r for r in up}
    for r in box:
        u = by_seq.get(r[0])
        if u is not None and (u[:5] != r[:5] or abs(u[5] - r[5]) > 0.0015):
            problems.append(f"seq {r[0]} differs: box {r}, upstream {u}")
            if len(problems) > 20:
                break
    return problems


def box_actions(db: Path) -> dict[str, dict[str, Any]]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
        c.row_factory = sqlite3.Row
        return {r["key"]: dict(r) for r in c.execute(
            "SELECT a.key, a.kind, a.purpose, a.msisdn, a.amount_cents, a.state, a.receipt, "
            "l.ref AS loan_ref FROM mpesa_actions a LEFT JOIN loans l ON l.id = a.loan_id")}


def upstream_actions(db: Path) -> dict[str, dict[str, Any]]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
        return {k: json.loads(d) for k, d in c.execute(
            "SELECT key, data FROM actions WHERE site = ?", (SITE,))}


def upstream_entities(db: Path, entity: str) -> dict[str, dict[str, Any]]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
        return {k: json.loads(p) for k, p in c.execute(
            "SELECT key, payload FROM entities WHERE site = ? AND entity = ?", (SITE, entity))}


def compare_payments(payments: list[dict[str, Any]], box: dict[str, dict[str, Any]],
                     up: dict[str, dict[str, Any]]) -> list[str]:
    """Each payment Daraja made belongs to one action; each action was paid at most once;
    each succeeded action exactly once, with its receipt; no failed action at all."""
    problems = []
    ids = Counter(p["id"] for p in payments)
    problems += [f"Daraja paid {i} {n} times" for i, n in ids.items() if n > 1]
    owner = {}
    for key, a in up.items():
        if a["kind"] == "b2c":
            owner[originator_conversation_id(key)] = key
        elif a.get("checkout_request_id"):
            owner[a["checkout_request_id"]] = key
    paid: dict[str, list[dict[str, Any]]] = {}
    for p in payments:
        key = owner.get(p["id"])
        if key is None:
            problems.append(f"a payment no action asked for: {p}")
            continue
        paid.setdefault(key, []).append(p)
    for key, a in box.items():
        got = paid.get(key, [])
        want = 1 if a["state"] == "succeeded" else 0
        if len(got) != want:
            problems.append(f"action {key} ({a['purpose']}, {a['state']}) paid {len(got)} times")
        elif got and (got[0]["receipt"] != a["receipt"] or got[0]["msisdn"] != a["msisdn"]
                      or got[0]["amount"] * 100 != a["amount_cents"]):
            problems.append(f"action {key}: box {a}, Daraja paid {got[0]}")
    return problems


def compare_views(box: dict[str, dict[str, Any]], up: dict[str, dict[str, Any]],
                  up_entities: dict[str, dict[str, Any]], box_loans: dict[str, str],
                  up_loans: dict[str, dict[str, Any]]) -> list[str]:
    """The upstream's actions (what it executed) and its copy of each action and loan
    (the latest record it got) agree with the box's own rows."""
    problems = []
    if set(box) != set(up):
        problems.append(f"actions only on the box {sorted(set(box) - set(up))[:5]}, only "
                        f"upstream {sorted(set(up) - set(box))[:5]}")
    for key, a in box.items():
        u, e = up.get(key), up_entities.get(key)
        if u is not None and (u["state"], u.get("receipt")) != (a["state"], a["receipt"]):
            problems.append(f"action {key}: box {a['state']} {a['receipt']}, upstream executed "
                            f"{u['state']} {u.get('receipt')}")
        if e is None or (e["state"], e.get("receipt")) != (a["state"], a["receipt"]):
            problems.append(f"action {key}: box {a['state']}, upstream's copy {e}")
    if set(box_loans) != set(up_loans):
        problems.append(f"loans differ: box {sorted(box_loans)}, upstream {sorted(up_loans)}")
    for ref, state in box_loans.items():
        if ref in up_loans and up_loans[ref]["state"] != state:
            problems.append(f"loan {ref}: box {state}, upstream's copy {up_loans[ref]['state']}")
    return problems


# -- the run ---------------------------------------------------------------------------------

def soak(tmp: Path, *, villagers: int = 24, duration: float = 30.0, seed: int = 1,
         rates: dict[str, float] | None = None, spacing: int = 2, converge: float = 120.0,
         scripted: bool = True, mode: str = "push", retry_base: float = 5.0,
         say=lambda *a: None) -> dict[str, Any]:
    """The whole run; returns what happened and what was found (`problems`)."""
    plan = Plan(seed=seed, rates=dict(DEFAULT_RATES if rates is None else rates),
                spacing=spacing)
    t0 = time.monotonic()
    stack = Stack(tmp, plan, mode=mode, retry_base=retry_base)
    result: dict[str, Any] = {"params": {"mode": mode, "villagers": villagers,
                                         "duration_s": duration, "seed": seed,
                                         "rates": plan.rates, "spacing": spacing,
                                         "retry_base_s": retry_base},
                              "problems": []}
    try:
        link = stack.link
        if scripted:
            # Whatever the dice say, the dangerous cases happen at least once each: the
            # receiver applied it and the sender never heard, and the other ways a
            # request goes wrong.
            for fault, match in SCRIPTED[mode]:
                link.script(fault, match=match, spaced=True)
        pairs = make_pairs(max(1, villagers // 2), seed)
        for p in pairs:
            if p.lender_broke:
                stack.script_daraja(msisdn=p.lender_msisdn, result_code=1)
            if p.borrower_cancels:
                stack.script_daraja(msisdn=p.borrower_msisdn, amount=p.instalment,
                                    result_code=1032)
        say(f"stack up in {time.monotonic() - t0:.1f} s; {len(pairs)} pairs for {duration:.0f} s "
            f"of faults (seed {seed})")
        start = time.monotonic()
        stop_at = start + duration
        threads = [threading.Thread(target=run_pair, args=(
            stack, p, start + duration * 0.5 * p.i / len(pairs), stop_at), daemon=True)
            for p in pairs]
        for t in threads:
            t.start()
        while time.monotonic() < stop_at and any(t.is_alive() for t in threads):
            time.sleep(0.1)     # the window closes on time, or when every pair is done
        link.heal()
        healed = time.monotonic()
        during = stack.sync_status()
        faults_at_heal = dict(link.summary()["faults"])
        for t in threads:     # pairs that had not repaid yet do so now, over a good link
            t.join(max(0.0, healed + 90 - time.monotonic()))
        say(f"link healed after {healed - start:.1f} s: {faults_at_heal}; "
            f"box lag {during['records']} records")
        try:
            until(stack.settled, "the box and the upstream settled", converge, 0.1)
            converge_s = time.monotonic() - healed
        except AssertionError as e:
            result["problems"].append(str(e))
            converge_s = None
        final = stack.cli_status()
        up_state = stack.upstream_state()
        payments = stack.payments()
        fault_exchanges = [vars(e) for e in link.exchanges() if e.fault]
        (tmp / "link.json").write_text(json.dumps([vars(e) for e in link.exchanges()], indent=1))
        result.update({
            "converge_s": None if converge_s is None else round(converge_s, 2),
            "fault_window_s": round(healed - start, 2),
            "faults_at_heal": faults_at_heal,
            "link": link.summary(),
            "box_sync": {k: final[k] for k in ("batches_pushed", "acks", "failures",
                                                "inbound_applied", "bytes_sent", "records",
                                                "checkpoint", "last_seq", "inbound_cursor")},
            "box_lag_at_heal": during["records"],
            "upstream": {k: up_state[k] for k in ("checkpoint", "records", "last_seq",
                                                  "actions", "sends", "inbound_seq")},
            "payments": len(payments),
            "pairs": [{"i": p.i, "log": p.log, "error": p.error} for p in pairs],
            "faulted_exchanges": fault_exchanges,
        })
        result["problems"] += [f"pair {p.i}: {p.error}" for p in pairs if p.error]
    finally:
        stack.stop()
    d = stack.daemon
    (tmp / "daemon.log").write_text("\n".join(d.lines) + "\n")
    failed = d.events("sync_push_failed")
    result["push_failed_logged"] = len(failed)
    result["push_errors"] = dict(Counter(e["error"].split(":")[0] + ": " +
                                         e["error"].split(":", 1)[-1][:60] for e in failed))
    result["daemon_errors"] = [ln for ln in d.lines if '"level": "error"' in ln
                               or '"level":"error"' in ln][:10]
    result["problems"] += [f"daemon logged an error: {ln[:300]}" for ln in result["daemon_errors"]]
    check = d.gatewayd("db", "check")
    result["db_check"] = check.stdout.strip()
    if check.returncode != 0:
        result["problems"].append(f"gatewayd db check: {check.stdout} {check.stderr}")
    box_recs, up_recs = box_records(stack.box_db), upstream_records(stack.upstream_db)
    b_act, u_act = box_actions(stack.box_db), upstream_actions(stack.upstream_db)
    with sqlite3.connect(f"file:{stack.box_db}?mode=ro", uri=True) as c:
        box_loans = dict(c.execute("SELECT ref, state FROM loans"))
    result["box"] = {"records": len(box_recs), "loans": dict(Counter(box_loans.values())),
                     "actions": dict(Counter((a["purpose"], a["state"]) for a in b_act.values()))}
    result["box"]["actions"] = {f"{k[0]}:{k[1]}": v for k, v in result["box"]["actions"].items()}
    result["problems"] += compare_records(box_recs, up_recs)
    result["problems"] += compare_payments(payments, b_act, u_act)
    result["problems"] += compare_views(b_act, u_act, upstream_entities(stack.upstream_db,
                                        "mpesa_action"), box_loans,
                                        upstream_entities(stack.upstream_db, "loan"))
    result["elapsed_s"] = round(time.monotonic() - t0, 1)
    result["ok"] = not result["problems"]
    # What the test asserts on, kept out of the JSON summary.
    result["_raw"] = {"box_records": box_recs, "upstream_records": up_recs,
                      "box_actions": b_act, "upstream_actions": u_act, "payments_list": payments}
    return result


def report(r: dict[str, Any]) -> str:
    link, box = r.get("link", {}), r.get("box_sync", {})
    up, par = r.get("upstream", {}), r["params"]
    verdict = "ok" if r["ok"] else f"{len(r['problems'])} problem(s)"
    faults = ", ".join(f"{k} {v}" for k, v in link.get("faults", {}).items())
    lines = [
        (f"fault window   {r.get('fault_window_s')} s, {par['mode']}, seed {par['seed']}, "
         f"{par['villagers']} villagers"),
        (f"link           {link.get('requests')} requests on {link.get('connections')} "
         f"connections; applied by the receiver but unheard by the sender: "
         f"{link.get('applied_unheard')}"),
        f"faults         {faults}",
        (f"box            {box.get('batches_pushed')} batches pushed, {box.get('acks')} acks, "
         f"{box.get('failures')} failed calls (each one a retry), {box.get('inbound_applied')} "
         f"inbound changes applied, {box.get('bytes_sent')} batch bytes"),
        (f"lag            {r.get('box_lag_at_heal')} records at heal; converged in "
         f"{r.get('converge_s')} s; final lag {box.get('records')} (checkpoint "
         f"{box.get('checkpoint')} of {box.get('last_seq')}, upstream at "
         f"{up.get('checkpoint')})"),
        (f"upstream       {up.get('records')} records, actions {up.get('actions')}, "
         f"Daraja payments {r.get('payments')}"),
        f"box            loans {r.get('box', {}).get('loans')}",
        f"               actions {r.get('box', {}).get('actions')}",
        f"db check       {r.get('db_check')}",
        f"verdict        {verdict} in {r.get('elapsed_s')} s",
    ]
    lines += [f"  - {p}" for p in r["problems"][:30]]
    return "\n".join(lines)


def parse_rates(text: str) -> dict[str, float]:
    rates = dict(DEFAULT_RATES)
    for part in filter(None, text.split(",")):
        k, _, v = part.partition("=")
        rates[k.strip()] = float(v)
    return rates


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--villagers", type=int, default=24, help="in pairs (default 24)")
    p.add_argument("--duration", type=float, default=30.0, help="seconds of faults")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--mode", choices=("push", "pull"), default="push",
                   help="push: the box posts to the upstream; pull: the upstream polls the "
                        "box's /sync API (both through the faulty link)")
    p.add_argument("--rates", default="", help="fault=rate,... over the defaults "
                   f"{DEFAULT_RATES}; 'none' for a clean link")
    p.add_argument("--spacing", type=int, default=2,
                   help="clean requests after each hard fault (the box's back-off grows "
                        "with failures in a row)")
    p.add_argument("--converge", type=float, default=120.0, help="seconds to wait after heal")
    p.add_argument("--retry-base", type=float, default=5.0,
                   help="the box's sync.retry_base_seconds (smaller: more faults a minute)")
    p.add_argument("--no-scripted", action="store_true",
                   help="only the random plan (by default each dangerous fault hits a push once)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs, both dbs)")
    p.add_argument("--out", help="JSON path (default bench/results/sync-soak-<time>.json)")
    a = p.parse_args(argv)
    rates = {} if a.rates == "none" else parse_rates(a.rates)
    tmp = Path(tempfile.mkdtemp(prefix="sync-soak-"))
    r = soak(tmp, villagers=a.villagers, duration=a.duration, seed=a.seed, rates=rates,
             spacing=a.spacing, converge=a.converge, scripted=not a.no_scripted, mode=a.mode,
             retry_base=a.retry_base,
             say=lambda *x: print(*x, flush=True))
    r.pop("_raw")
    out = Path(a.out) if a.out else ROOT / "bench" / "results" / \
        f"sync-soak-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(r, indent=2, default=str))
    print(report(r))
    print(f"JSON: {out}" + (f"; files in {tmp}" if a.keep else ""))
    if not a.keep:
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if r["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
