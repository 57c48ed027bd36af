"""The supervisor: restarts with growing backoff, fails fast on a first start, and lets
a task that finishes during shutdown go."""

from __future__ import annotations

import pytest
import trio

from gatewayd import logs
from gatewayd.supervisor import Supervisor, at_once


@pytest.fixture(autouse=True)
def quiet():
    logs.setup("error")


async def test_crashing_task_is_restarted_with_growing_backoff(autojump_clock, nursery):
    sup = Supervisor(min_backoff=1.0, max_backoff=8.0)
    starts: list[float] = []

    async def flaky():
        starts.append(trio.current_time())
        raise RuntimeError("modem went away")

    await nursery.start(sup.run, "flaky", at_once(flaky))
    await trio.sleep(60)
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert len(starts) >= 5
    # Jittered doubling: each pause within [0.5, 1.5] x the backoff, capped at 8 s.
    for n, gap in enumerate(gaps[:4]):
        assert 0.5 * min(8, 2 ** n) <= gap <= 1.5 * min(8, 2 ** n)
    assert all(g <= 12 for g in gaps)
    # Counted when the pause begins: the last start may still be waiting.
    assert sup.tasks["flaky"].restarts in (len(starts) - 1, len(starts))
    assert "modem went away" in sup.tasks["flaky"].last_error
    nursery.cancel_scope.cancel()


async def test_first_start_failure_is_raised():
    sup = Supervisor()

    async def broken(task_status=trio.TASK_STATUS_IGNORED):
        raise OSError("address already in use")

    with pytest.raises(OSError, match="address already in use"):
        await sup.run("http", broken)
    assert sup.tasks["http"].state == "failed"


async def test_task_finishing_during_shutdown_is_not_restarted(autojump_clock):
    sup = Supervisor()
    runs = 0
    done = trio.Event()

    async def server():
        nonlocal runs
        runs += 1
        await done.wait()

    async with trio.open_nursery() as n:
        await n.start(sup.run, "http", at_once(server))
        assert sup.healthy()
        sup.stopping = True
        done.set()
    assert runs == 1 and sup.tasks["http"].state == "stopped"
