"""The reference upstream against the box's own sync code on the box's real store: the
push loop of sync/service.py, and the pull API of gatewayd/sync_api.py. A loan is
funded and paid out through the upstream, each M-PESA action executed exactly once."""

from __future__ import annotations

import time

import hypercorn.config
import hypercorn.trio
import trio

from gatewayd.sync_api import SyncApp
from store import changelog, lending
from sync.daraja import DarajaClient
from sync.service import SyncService
from sync.upstream_sim import UpstreamSim
from tests.upstream.conftest import FAST, KEY, SITE, daraja_config

BORROWER, LENDER = "254711111111", "254722222222"


def no_notices(conn, notices, now):
    pass


async def approved_loan(store) -> int:
    def job(conn):
        b = lending.register(conn, BORROWER, "Amina", "en", "h", time.time())
        loan, _ = lending.request_loan(conn, b, LENDER, 150_000, 50_000, time.time(), 3600, 5)
        lending.answer_request(conn, SITE, loan["id"], loan["lender_id"], True, time.time())
        return loan["id"]
    return await store.write(job)


async def until(check, what: str, timeout: float = 15.0) -> None:
    """The box's tasks do the work here, with no event of ours to wait on: look again
    every 20 ms, up to a deadline."""
    with trio.move_on_after(timeout):
        while not await check():
            await trio.sleep(0.02)
        return
    raise AssertionError(f"never happened: {what}")


def paid(fake) -> list[tuple[str, str, int]]:
    return sorted((p["kind"], p["msisdn"], p["amount"]) for p in fake.payments)


async def test_the_boxs_push_loop_against_the_reference_upstream(store, sim, fake, nursery):
    loan_id = await approved_loan(store)
    svc = SyncService(store, SITE, KEY, no_notices, upstream=sim.url, idle_poll_seconds=0.05)
    await svc.load()
    nursery.start_soon(svc.push_loop)

    async def active() -> bool:
        return (await store.read(lending.get_loan, loan_id))["state"] == "active"

    await until(active, "the loan funded and paid out")
    assert paid(fake) == [("b2c", BORROWER, 1500), ("stk_push", LENDER, 1500)]
    state = sim.store.state(SITE)
    assert state["sends"] == 2 and svc.cursor == 2 and svc.stats.failures == 0

    async def caught_up() -> bool:
        return svc.outbound.checkpoint == await store.read(changelog.last_seq)

    await until(caught_up, "every record acknowledged")
    assert sim.store.state(SITE)["checkpoint"] == svc.outbound.checkpoint


async def test_the_reference_upstream_pulls_from_the_boxs_sync_api(store, fake, nursery,
                                                                    tmp_path):
    loan_id = await approved_loan(store)
    svc = SyncService(store, SITE, KEY, no_notices)        # no upstream URL: pull only
    await svc.load()
    hc = hypercorn.config.Config()
    hc.bind, hc.accesslog = ["127.0.0.1:0"], None
    box_url = (await nursery.start(lambda task_status: hypercorn.trio.serve(
        SyncApp(svc), hc, task_status=task_status)))[0]
    sim = UpstreamSim(str(tmp_path / "up.db"), {SITE: KEY},
                      DarajaClient(fake.url, daraja_config()), policy=FAST)
    await nursery.start(lambda task_status: sim.serve(
        "127.0.0.1:0", pulls={SITE: box_url}, poll=0.02, task_status=task_status))

    async def active() -> bool:
        return (await store.read(lending.get_loan, loan_id))["state"] == "active"

    await until(active, "the loan funded and paid out")
    assert paid(fake) == [("b2c", BORROWER, 1500), ("stk_push", LENDER, 1500)]
    assert sim.store.state(SITE)["sends"] == 2 and svc.cursor == 2

    async def caught_up() -> bool:
        return svc.outbound.checkpoint == await store.read(changelog.last_seq)

    await until(caught_up, "every record acknowledged")
    assert sim.store.state(SITE)["box_cursor"] == 2
    await sim.client.aclose()
