"""The real daemon as a child process, and a phone that dials it like an aggregator."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DaemonProcess:
    def __init__(self, tmp: Path, extra_config: str = "", env: dict | None = None) -> None:
        self.tmp = tmp
        self.state_dir = tmp / "var"
        self.port = free_port()
        self.config_path = tmp / "gatewayd.toml"
        self.config_path.write_text(
            f'[store]\nstate_dir = "{self.state_dir}"\n'
            f'[http]\nlisten = "127.0.0.1:{self.port}"\ngraceful_seconds = 5.0\n'
            f'[security]\npin_hash_log2_n = 10\n' + extra_config)
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None
        self.argv = [sys.executable, "-m", "gatewayd", "run", "--config", str(self.config_path)]
        self.lines: list[str] = []
        self._ready = threading.Event()
        self._waiters: list[tuple[str, int, threading.Event]] = []
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/ussd"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> "DaemonProcess":
        # A fresh Event per run: a reader of an earlier process that is still draining
        # can only ever set its own.
        ready = self._ready = threading.Event()
        self.proc = subprocess.Popen(
            self.argv,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=self.env,
            cwd=self.tmp)
        self._reader = threading.Thread(target=self._read, args=(self.proc, ready),
                                        daemon=True)
        self._reader.start()
        if not ready.wait(timeout) or self.proc.poll() is not None:
            self.kill()
            raise RuntimeError("daemon did not become ready:\n" + "\n".join(self.lines[-30:]))
        return self

    def _read(self, proc: subprocess.Popen, ready: threading.Event) -> None:
        # `ready` is this process's own: a killed process's reader may still be draining
        # its pipe when the next start() has begun, and its EOF must not pass for the new
        # one's readiness (a flake: start() returned before the restarted daemon listened).
        for line in proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if '"gatewayd_ready"' in line:
                ready.set()
            if self._waiters:
                self._check_waiters()
        ready.set()  # it exited: start() sees that at once instead of timing out

    def wait_for_event(self, name: str, timeout: float = 20) -> dict:
        """Block until the daemon logs `name` (after the call) — an event, not a sleep."""
        seen = len(self.events(name))
        got = threading.Event()
        self._waiters.append((name, seen, got))
        self._check_waiters()
        if not got.wait(timeout):
            raise AssertionError(f"daemon never logged {name}:\n" + "\n".join(self.lines[-20:]))
        return self.events(name)[-1]

    def _check_waiters(self) -> None:
        with self._lock:  # the reader thread and the test both call this
            for name, seen, got in list(self._waiters):
                if len(self.events(name)) > seen:
                    got.set()
                    self._waiters.remove((name, seen, got))

    def events(self, name: str) -> list[dict]:
        out = []
        for line in self.lines:
            if line.startswith("{"):
                ev = json.loads(line)
                if ev.get("event") == name:
                    out.append(ev)
        return out

    def stop(self, timeout: float = 30) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout)
        self._drain()
        return rc

    def kill(self) -> None:
        """A power cut, as far as the process can tell."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._drain()

    def _drain(self) -> None:
        """Every line the process wrote is in self.lines before the caller goes on."""
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(10)

    def gatewayd(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "gatewayd", *args, "--config",
                               str(self.config_path)], capture_output=True, text=True,
                              timeout=60, cwd=self.tmp)


class Phone:
    """Dials like Africa's Talking: one session id per dialog, cumulative `text`."""

    def __init__(self, daemon: DaemonProcess, msisdn: str) -> None:
        self.daemon = daemon
        self.msisdn = msisdn
        self.session = ""
        self.inputs: list[str] = []
        self.client = httpx.Client(timeout=30)

    def dial(self, code: str = "*383#") -> str:
        self.session = f"e2e-{uuid.uuid4().hex[:12]}"
        self.inputs = []
        return self._hop(code)

    def send(self, text: str, code: str = "*383#") -> str:
        self.inputs.append(text)
        return self._hop(code)

    def _hop(self, code: str) -> str:
        r = self.client.post(self.daemon.url, data={
            "sessionId": self.session, "serviceCode": code, "phoneNumber": self.msisdn,
            "networkCode": "63902", "text": "*".join(self.inputs)})
        assert r.status_code == 200, r.text
        assert r.text.startswith(("CON ", "END ")), r.text
        return r.text

    def run(self, *inputs: str) -> str:
        """A whole dialog: dial, then each input; returns the last reply."""
        reply = self.dial()
        for i in inputs:
            assert reply.startswith("CON "), f"dialog ended early at {i!r}: {reply}"
            reply = self.send(i)
        return reply
