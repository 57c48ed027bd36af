"""`gatewayd dial`: a phone in the terminal, speaking to a running daemon exactly as
an aggregator does (POST /ussd, cumulative `text`), so an operator can walk the menus
without a handset."""

from __future__ import annotations

import contextlib
import secrets
import sys
import textwrap
from typing import IO

import httpx

WIDTH = 30


def _screen(body: str, out: IO[str]) -> None:
    out.write("+" + "-" * WIDTH + "+\n")
    for line in body.splitlines() or [""]:
        for part in textwrap.wrap(line, WIDTH - 2) or [""]:
            out.write(f"| {part.ljust(WIDTH - 2)} |\n")
    out.write("+" + "-" * WIDTH + "+\n")


def dial(code: str, msisdn: str, url: str, stdin: IO[str] = sys.stdin,
         stdout: IO[str] = sys.stdout, session_id: str | None = None,
         network_code: str = "63902") -> int:
    session = session_id or f"dial-{secrets.token_hex(6)}"
    inputs: list[str] = []
    echo = not stdin.isatty()
    with httpx.Client(timeout=20.0) as client:
        while True:
            try:
                r = client.post(url, data={
                    "sessionId": session, "serviceCode": code, "phoneNumber": msisdn,
                    "networkCode": network_code, "text": "*".join(inputs)})
            except httpx.HTTPError as e:
                stdout.write(f"Cannot reach gatewayd at {url}: {e}\n"
                             "Is it running? Start it with: ./dev run\n")
                return 2
            if r.status_code != 200:
                stdout.write(f"gatewayd answered {r.status_code}: {r.text.strip()}\n")
                return 1
            body = r.text
            if body.startswith("END "):
                _screen(body[4:], stdout)
                stdout.write("(session ended)\n")
                return 0
            if not body.startswith("CON "):
                stdout.write(f"Unexpected reply (neither CON nor END): {body!r}\n")
                return 1
            _screen(body[4:], stdout)
            stdout.write("> ")
            stdout.flush()
            line = stdin.readline()
            if not line:
                # A phone hanging up: the network tells the service the session is over.
                with contextlib.suppress(httpx.HTTPError):
                    client.post(url.rstrip("/") + "/end", data={
                        "sessionId": session, "serviceCode": code, "phoneNumber": msisdn,
                        "networkCode": network_code, "status": "Incomplete",
                        "input": "*".join(inputs)})
                stdout.write("\n(hung up)\n")
                return 0
            typed = line.rstrip("\r\n")
            if echo:
                stdout.write(typed + "\n")
            inputs.append(typed)
