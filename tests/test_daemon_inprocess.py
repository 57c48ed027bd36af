"""The daemon in this process: graceful stop with hops in flight, store failure."""

from __future__ import annotations

import threading

import httpx
import pytest
import trio
import trio.testing

from gatewayd import config, logs
from gatewayd.daemon import Daemon
from store.writer import StoreUnavailable
from tests.daemon_proc import free_port


def _cfg(tmp_path, **over):
    data = {"store": {"state_dir": str(tmp_path / "var")},
            "http": {"listen": f"127.0.0.1:{free_port()}", "graceful_seconds": 5.0},
            "security": {"pin_hash_log2_n": 10},
            "rate_limit": {"hops_per_minute": 10000, "burst": 10000},
            "log": {"level": "warning"}}
    for k, v in over.items():
        data.setdefault(k, {}).update(v)
    return config.validate(data)


@pytest.fixture(autouse=True)
def quiet_logs():
    logs.setup("warning", "json")


def _form(i, text=""):
    return {"sessionId": f"s{i}", "serviceCode": "*383#", "phoneNumber": f"07{i:08d}",
            "networkCode": "63902", "text": text}


async def test_stop_answers_every_hop_already_in_flight(tmp_path, nursery):
    cfg = _cfg(tmp_path)
    daemon = await nursery.start(Daemon(cfg).run)
    url = f"http://{cfg.http.listen}/ussd"
    gate = threading.Event()
    # Hold the writer: every hop that arrives now is stuck inside its transaction.
    nursery.start_soon(daemon.store.write, lambda conn: gate.wait(10))
    replies: list[httpx.Response] = []

    async with httpx.AsyncClient(timeout=20) as client:
        async def one(i):
            replies.append(await client.post(url, data=_form(i)))

        async with trio.open_nursery() as n:
            for i in range(20):
                n.start_soon(one, i)
            while daemon.ussd._in_flight < 20:
                await trio.sleep(0.01)
            daemon.stop.set()
            # Shutdown has begun once the listener refuses new connections; the 20
            # hops are still held inside the writer at that point.
            host, port = cfg.http.listen.split(":")
            for _ in range(500):
                try:
                    stream = await trio.open_tcp_stream(host, int(port))
                except OSError:
                    break
                await stream.aclose()
                await trio.sleep(0.01)
            else:
                pytest.fail("the listener never closed")
            assert replies == []
            gate.set()
    assert len(replies) == 20
    assert all(r.status_code == 200 and r.text.startswith("CON Welcome") for r in replies)


async def test_store_failure_gives_a_polite_screen_and_a_failing_health(tmp_path, nursery):
    cfg = _cfg(tmp_path)
    daemon = await nursery.start(Daemon(cfg).run)
    base = f"http://{cfg.http.listen}"

    real_write = daemon.store.write

    async def broken_write(fn, *args):
        daemon.store.last_error = "OperationalError: disk I/O error"
        raise StoreUnavailable("disk I/O error")

    daemon.store.write = broken_write
    async with httpx.AsyncClient(timeout=20) as client:
        r = await client.post(base + "/ussd", data=_form(1))
        assert r.status_code == 200 and r.text.startswith("END Service unavailable")
        h = await client.get(base + "/healthz")
        assert h.status_code == 503 and h.json()["parts"]["store"].startswith("failing")
        daemon.store.write = real_write
        daemon.store.last_error = None
        r = await client.post(base + "/ussd", data=_form(2))
        assert r.text.startswith("CON Welcome")
        assert (await client.get(base + "/healthz")).status_code == 200
    daemon.stop.set()


async def test_a_bug_in_a_screen_costs_one_villager_one_screen(tmp_path, nursery, monkeypatch):
    cfg = _cfg(tmp_path)
    daemon = await nursery.start(Daemon(cfg).run)
    from menus import lending

    def boom(ctx):
        raise KeyError("a bug")

    monkeypatch.setattr(lending, "start", boom)
    async with httpx.AsyncClient(timeout=20) as client:
        r = await client.post(f"http://{cfg.http.listen}/ussd", data=_form(1))
        assert r.text.startswith("END Service unavailable")
        monkeypatch.undo()
        r = await client.post(f"http://{cfg.http.listen}/ussd", data=_form(2))
        assert r.text.startswith("CON Welcome")
    assert daemon.ussd.stats.errors == 1
    daemon.stop.set()


async def test_sweep_expires_requests_with_an_sms_and_forgets_idle_dialogs(tmp_path, nursery):
    import time as _time

    from store import lending as domain

    cfg = _cfg(tmp_path)
    daemon = await nursery.start(Daemon(cfg).run)

    def setup(conn):
        now = _time.time()
        borrower = domain.register(conn, "254711000001", "Amina", "en", "scrypt1$x", now)
        loan, _ = domain.request_loan(conn, borrower, "254711000002", 10000, 1000,
                                      now - 100, ttl=50, max_open=5)
        conn.execute("INSERT INTO ussd_dialogs VALUES ('http', 'old', '254711000001', "
                     "'*383#', '{}', ?)", (now - 10_000,))
        return loan["ref"]

    ref = await daemon.store.write(setup)
    await daemon.ussd.sweep()

    def after(conn):
        state = conn.execute("SELECT state FROM loans WHERE ref = ?", (ref,)).fetchone()[0]
        sms = [r[0] for r in conn.execute("SELECT body FROM sms_outbox WHERE msisdn = '254711000001'")]
        dialogs = conn.execute("SELECT COUNT(*) FROM ussd_dialogs").fetchone()[0]
        return state, sms, dialogs

    state, sms, dialogs = await daemon.store.read(after)
    assert state == "expired"
    assert any("expired without an answer" in s and ref in s for s in sms)
    assert dialogs == 0
    daemon.stop.set()


async def test_store_refusing_writes_like_a_read_only_filesystem(tmp_path, nursery):
    """The kernel remounts a failing SD card read-only under open files; SQLite then
    answers every write 'attempt to write a readonly database'. query_only gives the
    writer's connection exactly that answer."""
    cfg = _cfg(tmp_path)
    daemon = await nursery.start(Daemon(cfg).run)
    base = f"http://{cfg.http.listen}"
    conn = daemon.store.writer_connection
    async with httpx.AsyncClient(timeout=20) as client:
        assert (await client.post(base + "/ussd", data=_form(1))).text.startswith("CON ")
        conn.execute("PRAGMA query_only = ON")  # the writer thread is idle between jobs
        r = await client.post(base + "/ussd", data=_form(2))
        assert r.text == "END Service unavailable. Please try again later."
        h = await client.get(base + "/healthz")
        assert h.status_code == 503 and "readonly" in h.json()["parts"]["store"]
        conn.execute("PRAGMA query_only = OFF")
        # Recovery comes from the daemon's own write probe, not from a villager.
        with trio.fail_after(20):
            while (await client.get(base + "/healthz")).status_code != 200:
                await trio.sleep(0.2)
        assert (await client.post(base + "/ussd", data=_form(2))).text.startswith("CON ")
    daemon.stop.set()


@pytest.mark.parametrize("jump", [10 * 365 * 86400.0, -3 * 86400.0])
async def test_wall_clock_jumps_do_not_expire_dialogs_or_limits(tmp_path, nursery, monkeypatch,
                                                               jump):
    """No RTC: the clock jumps years when NTP first answers, or back after a bad sync.
    Dialog expiry and rate limits run on the monotonic clock and do not notice."""
    import time as real_time

    cfg = _cfg(tmp_path, rate_limit={"hops_per_minute": 60, "burst": 20})
    daemon = await nursery.start(Daemon(cfg).run)
    url = f"http://{cfg.http.listen}/ussd"
    form = _form(7)
    async with httpx.AsyncClient(timeout=20) as client:
        assert (await client.post(url, data=form)).text.startswith("CON Welcome")
        offset = real_time.time() + jump
        monkeypatch.setattr(real_time, "time", lambda: offset)
        await daemon.ussd.sweep()  # a sweep right after the jump
        r = await client.post(url, data={**form, "text": "1"})
        assert r.text.startswith("CON Enter your name")  # same dialog, next screen
        r = await client.post(url, data={**form, "text": "1*Rehema"})
        assert r.text.startswith("CON Set a 4-digit PIN")
        assert daemon.ussd.stats.rate_limited == 0
    daemon.stop.set()
