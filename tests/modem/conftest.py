"""Fixtures for the modem tests: fake modems on ptys, a running pool, an event recorder,
and python-gsmmodem-new's real-device transcripts from its sdist (downloaded once,
cached outside the repository)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tarfile
import warnings
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from modem.events import Event
from modem.pool import ModemPool
from tests.modem.fakemodem import FakeModem

SDIST = "python-gsmmodem-new==0.13.0"
CACHE = Path(os.environ.get("GATEWAYD_TEST_CACHE", Path.home() / ".cache" / "gatewayd-tests"))


def fast(port: Path | str, **kw: Any) -> dict[str, Any]:
    """A modem config with the timing of a test, not of a real network."""
    cfg = {"port": str(port), "at_timeout": 1.0, "send_timeout": 5.0,
           "poll_seconds": 0.3, "list_seconds": 0.3}
    cfg.update(kw)
    return cfg


class Recorder:
    """The pool's `commit` callback: records events; can refuse the next N commits."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.refuse = 0
        self.refused = 0
        self.stall = 0          # the next N commits never return (a store that hangs)
        self._changed = trio.Event()

    async def __call__(self, event: Event) -> None:
        if self.stall:
            self.stall -= 1
            self.refused += 1
            self._poke()
            await trio.sleep_forever()
        if self.refuse:
            self.refuse -= 1
            self.refused += 1
            self._poke()
            raise RuntimeError("store unavailable (test)")
        self.events.append(event)
        self._poke()

    def _poke(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def of(self, kind: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]

    async def wait_for(self, predicate: Callable[[Recorder], bool], timeout: float = 10.0) -> None:
        with trio.fail_after(timeout):
            while not predicate(self):
                await self._changed.wait()

    async def wait_count(self, kind: type, n: int, timeout: float = 10.0) -> list[Any]:
        await self.wait_for(lambda r: len(r.of(kind)) >= n, timeout)
        return self.of(kind)


async def until(fake: FakeModem, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait for a condition on the fake modem's side (its own lock and condition)."""
    ok = await trio.to_thread.run_sync(fake.wait_until, predicate, timeout)
    assert ok, "condition on the fake modem not reached in time"


async def until_state(pool: ModemPool, name: str, state: str, timeout: float = 10.0) -> None:
    """Wait for a modem's state; the pool calls on_state, which pokes `changed`."""
    w = next(w for w in pool.workers if w.name == name)
    with trio.fail_after(timeout):
        while w.state != state:
            await pool._changed.wait()


@pytest.fixture(autouse=True)
def quick_prompt_settle(monkeypatch):
    """The fake answers the ESC sent at open within a millisecond; a real modem gets
    0.2 s. Every test opens modems, often several times: keep that wait short here."""
    import modem.serialmodem
    monkeypatch.setattr(modem.serialmodem, "PROMPT_SETTLE", 0.02)


@pytest.fixture
def fakes(tmp_path: Path):
    made: list[FakeModem] = []

    def make(name: str = "gsmmodem-A", **kw: Any) -> FakeModem:
        fake = FakeModem(tmp_path / name, **kw)
        made.append(fake)
        return fake

    yield make
    for fake in made:
        fake.close()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@asynccontextmanager
async def running(configs: list[dict[str, Any]], commit: Any, **kw: Any) -> AsyncIterator[ModemPool]:
    kw.setdefault("min_backoff", 0.05)
    kw.setdefault("max_backoff", 0.3)
    pool = ModemPool(configs, commit, **kw)
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run)
        for w in pool.workers:
            await until_state(pool, w.name, "ready")
        yield pool
        nursery.cancel_scope.cancel()


@pytest.fixture(scope="session")
def sdist_fakemodems():
    """python-gsmmodem-new's test/fakemodems.py, loaded from its sdist.

    The wheel does not carry the tests; the sdist does. It is downloaded once with pip
    into CACHE (never into the repository) and the module is imported from there."""
    CACHE.mkdir(parents=True, exist_ok=True)
    tarball = CACHE / "python-gsmmodem-new-0.13.0.tar.gz"
    if not tarball.exists():
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-binary", ":all:",
                        "--no-deps", SDIST, "-d", str(CACHE)], check=True,
                       capture_output=True, timeout=300)
    source = CACHE / "python-gsmmodem-new-0.13.0" / "test" / "fakemodems.py"
    if not source.exists():
        with tarfile.open(tarball) as tar:
            tar.extract("python-gsmmodem-new-0.13.0/test/fakemodems.py", CACHE, filter="data")
    spec = importlib.util.spec_from_file_location("gsmmodem_sdist_fakemodems", source)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    with warnings.catch_warnings():
        # Their +CLAC transcript has "\\S" escapes that Python 3.11 warns about.
        warnings.simplefilter("ignore", DeprecationWarning)
        spec.loader.exec_module(module)
    return module
