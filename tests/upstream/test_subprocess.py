"""Both peers as processes, the way a demo or another team's tests start them:
`python tests/peers/daraja_fake.py --port 0` and `python -m sync.upstream_sim ...`, each
printing its port on its first line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio

from sync.checkpoint import decode_inbound
from tests.upstream.conftest import KEY, SITE, Box, action, other

ROOT = Path(__file__).resolve().parents[2]
DEADLINE = 15.0


async def first_line(proc: subprocess.Popen) -> dict:
    with trio.fail_after(DEADLINE):
        line = await trio.to_thread.run_sync(proc.stdout.readline, abandon_on_cancel=True)
    assert line, f"{proc.args} exited: {proc.stderr.read() if proc.stderr else ''}"
    return json.loads(line)


@pytest.fixture
def procs(tmp_path):
    started: list[subprocess.Popen] = []
    logs = []

    def start(*args: str) -> subprocess.Popen:
        logs.append((tmp_path / f"stderr-{len(started)}.log").open("w"))
        p = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=logs[-1], text=True)
        started.append(p)
        return p

    yield start
    for p in started:          # only the processes this test started
        p.terminate()
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        p.stdout.close()
    for f in logs:
        f.close()


async def until(check, what: str) -> None:
    """Another process does the work: look again every 50 ms, up to a deadline."""
    with trio.move_on_after(DEADLINE):
        while not await check():
            await trio.sleep(0.05)
        return
    raise AssertionError(f"never happened: {what}")


async def test_fake_and_simulator_as_processes(procs, tmp_path):
    fake = await first_line(procs("tests/peers/daraja_fake.py", "--port", "0"))
    assert fake["event"] == "listening" and fake["port"] > 0
    sim = await first_line(procs("-m", "sync.upstream_sim", "--listen", "127.0.0.1:0",
                                 "--daraja", fake["url"], "--site", f"{SITE}:{KEY.hex()}",
                                 "--site", f"site-2:{'00' * 32}", "--db",
                                 str(tmp_path / "up.db"), "--first-query", "0"))
    box = Box(sim["url"])
    stk, b2c = "site-1-mp-0a1b2c3d4e5f", "site-1-mp-b2c000000001"
    b = box.batch([action(1, stk), action(2, b2c, kind="b2c", purpose="loan_payout"), other(3)])
    assert (await box.push(b)).status == 200
    assert (await box.push(b)).status == 200                 # a resend changes nothing

    async def settled() -> bool:
        r = await box.inbound(0)
        return r.status == 200 and len(decode_inbound(r.body, SITE)) == 2

    await until(settled, "both results")
    env = decode_inbound((await box.inbound(0)).body, SITE)
    assert {(c.action_key, c.result) for c in env} == {(stk, "succeeded"), (b2c, "succeeded")}
    async with httpx.AsyncClient() as h:
        paid = (await h.get(fake["url"] + "/_fake/state")).json()["payments"]
        state = (await h.get(f"{sim['url']}/v1/sites/{SITE}/state")).json()
    assert sorted(p["kind"] for p in paid) == ["b2c", "stk_push"]
    assert {c.receipt for c in env} == {p["receipt"] for p in paid}
    assert (state["records"], state["actions_executed"], state["sends"]) == (3, 2, 2)
    await box.aclose()
