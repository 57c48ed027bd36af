"""Sync over a link that breaks: every part a process (the daemon, `gatewayd
upstream-sim`, the fake Daraja) and between the box and the upstream the faulty link of
tests/faultylink.py, refusing, cutting, corrupting, delaying, duplicating and reordering
requests. Whatever byte the link drops at, nothing is lost or applied twice
(docs/sync-protocol.md, section 9): afterwards the upstream holds exactly the box's
change log, Daraja paid each action once, and the books balance.

The long run is bench/sync_soak.py's, shorter; `.venv/bin/python bench/sync_soak.py`
runs it for as long as you like and prints what happened.
"""

from __future__ import annotations

import importlib.util
import json
import sqlite3
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import httpx
import pytest

from tests.daemon_proc import ROOT, Phone
from tests.faultylink import FaultyLink, Plan

_spec = importlib.util.spec_from_file_location("sync_soak", ROOT / "bench" / "sync_soak.py")
soak = sys.modules["sync_soak"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(soak)


# -- the link itself, against a counting HTTP server -------------------------------------------

class _Counting(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: ClassVar[list[bytes]] = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"]))
        type(self).seen.append(body)
        answer = b'{"n":%d,"body":"%s"}' % (len(self.seen), body)
        self.send_response(200)
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


class _Quiet(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass    # the cut requests, on purpose


@pytest.fixture
def counting():
    _Counting.seen = []
    server = _Quiet(("127.0.0.1", 0), _Counting)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _Counting.seen
    server.shutdown()
    server.server_close()


def test_the_faulty_link_does_to_each_request_what_it_says(counting):
    url, seen = counting
    link = FaultyLink(url).start()
    try:
        def post(body: bytes) -> httpx.Response:
            with httpx.Client(timeout=10) as c:   # a fresh connection each time
                return c.post(link.url + "/x", content=body)

        assert post(b"a").json() == {"n": 1, "body": "a"}
        link.script("cut_response", arg=5)
        with pytest.raises(httpx.HTTPError):
            post(b"b")
        assert seen[-1] == b"b"                     # applied, never heard
        link.script("cut_request", arg=30)
        with pytest.raises(httpx.HTTPError):
            post(b"c" * 100)
        link.script("duplicate")
        assert post(b"d").json() == {"n": 4, "body": "d"}     # the second answer
        assert seen[-2:] == [b"d", b"d"]
        link.script("duplicate", arg=0)
        assert post(b"e").json() == {"n": 5, "body": "e"}     # the first answer
        link.script("late")
        with pytest.raises(httpx.HTTPError):
            post(b"f")
        assert seen[-1] == b"e"                     # held back...
        assert post(b"g").json()["body"] == "g"
        link.wait_for(lambda lk: lk.stats["late_sent"] == 1, "the late request sent")
        assert seen[-2:] == [b"g", b"f"]            # ...until a newer one went first
        link.script("corrupt_response")
        r = post(b"h")
        clean = b'{"n":%d,"body":"h"}' % len(seen)
        assert r.status_code == 200 and len(r.content) == len(clean)
        assert sum(x != y for x, y in zip(r.content, clean)) == 1      # one byte flipped
        link.script("refuse")
        with pytest.raises(httpx.HTTPError):
            post(b"i")
        with httpx.Client(timeout=10) as c:         # recycle: answered, then a new connection
            assert c.post(link.url + "/x", content=b"r0").json()["body"] == "r0"
            link.script("recycle")
            assert c.post(link.url + "/x", content=b"r1").json()["body"] == "r1"
            assert c.post(link.url + "/x", content=b"r2").json()["body"] == "r2"
            r0, r1, r2 = link.exchanges()[-3:]
            assert r0.conn == r1.conn != r2.conn
        link.script("delay", arg=0.3)
        t = time.monotonic()
        assert post(b"j").json()["body"] == "j" and time.monotonic() - t >= 0.3
        link.script("hold_response")
        got: list = []
        caller = threading.Thread(target=_capture, args=(post, b"k", got))
        caller.start()
        link.wait_for(lambda lk: lk.held, "an answer held")
        assert seen[-1] == b"k"                     # the upstream answered; the caller waits
        link.release()
        caller.join(10)
        assert got and isinstance(got[0], httpx.HTTPError)
        link.script("hold_response")                # or held, then delivered late
        got = []
        caller = threading.Thread(target=_capture, args=(post, b"l", got))
        caller.start()
        link.wait_for(lambda lk: lk.held, "an answer held")
        link.release(deliver=True)
        caller.join(10)
        assert got and got[0].json()["body"] == "l"
        assert seen.count(b"c" * 100) == 0          # a cut request never arrived whole
        assert link.stats >= Counter({"cut_response": 1, "cut_request": 1, "duplicate": 2,
                                      "late": 1, "corrupt_response": 1, "refuse": 1,
                                      "delay": 1, "hold_response": 2, "recycle": 1})
        assert link.summary()["applied_unheard"] >= 3   # cut, late, held
    finally:
        link.stop()

    # The random plan is the seed's: the same decisions, request for request.
    def decisions(seed):
        lk = FaultyLink(url, Plan(seed=seed, rates={"cut_response": 0.3, "delay": 0.2}, spacing=0))
        return [lk._decide("POST", "/x") for _ in range(50)]
    assert decisions(5) == decisions(5) != decisions(6)
    assert {f for f, _, _ in decisions(5)} == {None, "cut_response", "delay"}


def _capture(post, body, out):
    try:
        out.append(post(body))
    except httpx.HTTPError as e:
        out.append(e)


# -- the long run -----------------------------------------------------------------------------

@pytest.mark.e2e
def test_a_village_day_over_a_breaking_link_loses_and_duplicates_nothing(tmp_path):
    """24 villagers borrow, approve and repay for 35 s while the link between box and
    upstream breaks at random (seeded), then heals; then everything settles."""
    r = soak.soak(tmp_path, villagers=24, duration=35.0, seed=20261128, converge=75.0)
    raw = r.pop("_raw")
    summary = json.dumps({k: r[k] for k in ("link", "box_sync", "upstream", "converge_s",
                                            "box", "pairs") if k in r}, indent=1, default=str)

    # The link did break, in every way, pushes the upstream applied unheard among them,
    # and the box saw it (failed calls it had to retry).
    faults = r["link"]["faults"]
    for kind in ("cut_response", "cut_request", "duplicate", "late", "corrupt_response",
                 "refuse"):
        assert faults.get(kind, 0) >= 1, (kind, summary)
    assert r["link"]["applied_unheard"] >= 3, summary
    assert r["box_sync"]["failures"] >= 5, summary
    # ...and the replays the link made were refused by the upstream, never applied twice.
    dups = [e for e in r["faulted_exchanges"] if e["fault"] == "duplicate"]
    assert dups and all(e["statuses"][1] == 401 for e in dups), dups

    # It converged: the box says the upstream has everything.
    assert r["converge_s"] is not None, r["problems"]
    assert r["box_sync"]["records"] == 0, summary
    assert r["box_sync"]["checkpoint"] == r["box_sync"]["last_seq"] == r["upstream"]["checkpoint"]

    # The upstream holds exactly the box's change log: same seqs, same records.
    box, up = raw["box_records"], raw["upstream_records"]
    assert [x[0] for x in up] == [x[0] for x in box] == list(range(1, len(box) + 1))
    assert [x[:5] for x in up] == [x[:5] for x in box]
    assert soak.compare_records(box, up) == []

    # Every M-PESA action paid at most once; each succeeded one exactly once.
    payments, actions = raw["payments_list"], raw["box_actions"]
    assert all(n == 1 for n in Counter(p["id"] for p in payments).values()), payments
    assert soak.compare_payments(payments, actions, raw["upstream_actions"]) == []
    assert len(payments) == sum(a["state"] == "succeeded" for a in actions.values())
    assert all(a["sends"] <= 1 for a in raw["upstream_actions"].values() if a["kind"] == "stk_push")
    # The workload did run through the faults: loans funded and paid out, repayments
    # collected and forwarded, and the planned failures failed without a payment.
    by = Counter((a["purpose"], a["state"]) for a in actions.values())
    assert by[("loan_payout", "succeeded")] >= 8 and by[("repayment_forward", "succeeded")] >= 3, by
    assert by[("loan_funding", "failed")] == 1 and by[("repayment", "failed")] >= 1, by
    assert not [p for p in r["pairs"] if p["error"]], summary

    # The books balance, the upstream agrees with the box, nothing else went wrong.
    assert r["db_check"].endswith("ok")
    assert r["problems"] == [], r["problems"]


# -- a power cut in the worst place ------------------------------------------------------------

@pytest.mark.e2e
def test_killed_after_the_upstream_applied_a_batch_but_before_the_box_heard(tmp_path):
    stack = soak.Stack(tmp_path)           # a healthy link, until told otherwise
    try:
        amina, baraka = Phone(stack.daemon, "0712345678"), Phone(stack.daemon, "0722000111")
        assert amina.run("1", "Amina", "1357", "1357", "1", "0722000111", "5000", "500",
                         "1").startswith("END Loan request sent")
        assert "Welcome, Baraka!" in baraka.run("1", "Baraka", "2468", "2468")
        soak.until(lambda: stack.sync_status()["records"] == 0, "in step before the cut", 20)
        before = stack.sync_status()["checkpoint"]

        # The approval's push reaches the upstream, which applies it and answers; the
        # answer is held in the link, and the box is killed while it waits for it.
        stack.link.script("hold_response", match=soak.PUSH)
        assert baraka.run("3", "1", "1", "2468").startswith("END Approved.")
        stack.link.wait_for(lambda lk: lk.held, "the approval's push answered and held")
        up = stack.upstream_state()
        assert up["checkpoint"] > before == stack.sync_status()["checkpoint"]
        # The upstream acts on what it applied: the funding is collected, box dead or not.
        soak.until(lambda: len(stack.payments()) == 1, "the funding collected", 20)
        stack.daemon.kill()
        stack.link.release()
        with stack.box() as c:
            durable = c.execute("SELECT value FROM kv WHERE key = 'sync.checkpoint'").fetchone()
        assert int(durable[0]) == before < up["checkpoint"]

        # Restarted: it pushes from its checkpoint again, the upstream applies nothing
        # twice and acks, and the loan goes on to its payout.
        stack.daemon.start()
        soak.until(stack.settled, "the box caught up after the restart", 45, 0.1)
        status = stack.cli_status()
        assert status["records"] == 0 and status["checkpoint"] == status["last_seq"]
        assert stack.upstream_state()["checkpoint"] == status["checkpoint"]
        payments = stack.payments()
    finally:
        stack.stop()

    box, upstream = soak.box_records(stack.box_db), soak.upstream_records(stack.upstream_db)
    assert soak.compare_records(box, upstream) == []
    with sqlite3.connect(stack.upstream_db) as c:
        n, distinct, last = c.execute("SELECT COUNT(*), COUNT(DISTINCT seq), MAX(seq) FROM "
                                      "records WHERE site = 'site-1'").fetchone()
    assert n == distinct == last == box[-1][0]
    actions = soak.box_actions(stack.box_db)
    assert sorted((a["purpose"], a["state"]) for a in actions.values()) == [
        ("loan_funding", "succeeded"), ("loan_payout", "succeeded")]
    assert sorted((p["kind"], p["msisdn"], p["amount"]) for p in payments) == [
        ("b2c", "254712345678", 5000), ("stk_push", "254722000111", 5000)]
    assert soak.compare_payments(payments, actions, soak.upstream_actions(stack.upstream_db)) == []
    assert stack.daemon.gatewayd("db", "check").returncode == 0


# -- pull: the upstream fetches from the box's own /sync API ------------------------------------

@pytest.mark.e2e
def test_pull_over_a_breaking_link_loses_and_duplicates_nothing(tmp_path):
    """The upstream polls the box's /sync API through the link (no back-off on that side,
    so many faults a second). The first ack is lost on its way to the box: the upstream
    applied the batch and the box never heard. Section 9 says the upstream resends the
    ack or fetches from the box's checkpoint again; the box's lag must come back to 0."""
    r = soak.soak(tmp_path, mode="pull", villagers=8, duration=12.0, seed=7, spacing=0,
                  converge=15.0)
    raw = r.pop("_raw")
    lost_ack = [e for e in r["faulted_exchanges"] if e["target"] == "/sync/ack"
                and e["fault"] == "drop_request"]
    assert lost_ack, r["link"]
    assert r["link"]["requests"] >= 100 and sum(r["link"]["faults"].values()) >= 20, r["link"]
    # Nothing is lost upstream even now...
    assert soak.compare_records(raw["box_records"], raw["upstream_records"]) == []
    assert soak.compare_payments(raw["payments_list"], raw["box_actions"],
                                 raw["upstream_actions"]) == []
    # ...but the box must also learn that: its checkpoint catches up with the upstream's.
    box, up = r["box_sync"], r["upstream"]
    assert box["checkpoint"] == box["last_seq"] == up["checkpoint"], (
        f"box checkpoint stuck at {box['checkpoint']} (log at {box['last_seq']}) while the "
        f"upstream holds up to {up['checkpoint']}; the box answered the upstream's acks: "
        f"{r['link']['statuses'].get('POST /sync/ack')}")
    assert r["problems"] == [], r["problems"]


@pytest.mark.e2e
def test_pull_a_lost_first_ack_heals_while_the_box_is_idle(tmp_path):
    """The upstream has just started (it knows nothing of the box's checkpoint), applies
    the box's first batch, and the ack is lost; then no villager does anything. The
    upstream must fetch from the box's checkpoint again and ack (section 9), not wait
    for a new record to earn a 409 that names it: the box's lag must go back to 0."""
    stack = soak.Stack(tmp_path, mode="pull")
    try:
        stack.link.script("drop_request", match="POST /sync/ack")
        assert "Welcome, Amina!" in Phone(stack.daemon, "0712345678").run(
            "1", "Amina", "1357", "1357")
        stack.link.wait_for(lambda lk: lk.stats["drop_request"] == 1, "the first ack lost")
        soak.until(lambda: stack.upstream_state()["checkpoint"] == stack.sync_status()["last_seq"],
                   "the upstream applied the batch", 10)
        try:
            soak.until(lambda: stack.sync_status()["records"] == 0, "the box in step", 10)
        except AssertionError:
            s = stack.sync_status()
            pytest.fail(f"box checkpoint stuck at {s['checkpoint']} of {s['last_seq']} while "
                        f"idle; the upstream asked {sorted({e.target for e in stack.link.exchanges()[-20:]})}")
    finally:
        stack.stop()
