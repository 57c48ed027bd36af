"""The SMSC peer (node-smpp's server, tests/peers/smsc) for the SMPP integration tests.

`smsc_factory(*args)` starts one on a port the OS picks on 127.0.0.1 and returns a
handle whose `wait_for(predicate)` reads its JSON lines until one matches. The first
use installs node-smpp with `npm ci` from the committed package-lock.json when
node_modules is missing.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

SMSC_DIR = Path(__file__).resolve().parents[1] / "peers" / "smsc"
# Each wait is for something the SMSC does within milliseconds; generous for slow CI.
WAIT_SECONDS = 10.0
_install_lock = threading.Lock()


def ensure_installed() -> None:
    with _install_lock:
        if (SMSC_DIR / "node_modules" / "smpp" / "package.json").exists():
            return
        npm = shutil.which("npm")
        if npm is None:
            raise RuntimeError("npm is needed for the SMPP tests' SMSC (node-smpp)")
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=SMSC_DIR, check=True,
                       stdout=subprocess.DEVNULL)


class Smsc:
    def __init__(self, *args: str) -> None:
        node = shutil.which("node")
        if node is None:
            raise RuntimeError("node is needed for the SMPP tests' SMSC (node-smpp)")
        self.proc = subprocess.Popen(
            [node, str(SMSC_DIR / "smsc.js"), "--port", "0", *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, bufsize=1, env={**os.environ, "NODE_NO_WARNINGS": "1"})
        self.lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        threading.Thread(target=self._read, daemon=True).start()
        first = self.wait_for_sync(lambda e: e["event"] == "listening")
        self.port: int = first["port"]

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.lines.put(json.loads(line))
            except ValueError:
                self.lines.put({"event": "unparsed", "line": line})
        self.lines.put(None)

    def wait_for_sync(self, predicate: Callable[[dict[str, Any]], bool],
                      timeout: float = WAIT_SECONDS) -> dict[str, Any]:
        for e in self.seen:
            if predicate(e):
                self.seen.remove(e)
                return e
        while True:
            try:
                e = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"SMSC never printed the awaited line; saw {self.seen}")
            if e is None:
                err = self.proc.stderr.read() if self.proc.stderr else ""
                raise AssertionError(f"SMSC exited: {err}")
            if predicate(e):
                return e
            self.seen.append(e)

    async def wait_for(self, predicate: Callable[[dict[str, Any]], bool],
                       timeout: float = WAIT_SECONDS) -> dict[str, Any]:
        return await trio.to_thread.run_sync(self.wait_for_sync, predicate, timeout)

    def recv(self, command: str) -> Callable[[dict[str, Any]], bool]:
        return lambda e: e["event"] == "recv" and e["command"] == command

    def command(self, **cmd: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream:
                stream.close()


@pytest.fixture
def smsc_factory():
    ensure_installed()
    started: list[Smsc] = []

    def start(*args: str) -> Smsc:
        s = Smsc(*args)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


@pytest.fixture
def smsc(smsc_factory) -> Smsc:
    return smsc_factory()
