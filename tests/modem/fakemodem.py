"""A GSM modem on a pseudo-terminal, answering AT commands from its own thread.

The worker opens `link` (a symlink in tmp_path, as udev's /dev/gsmmodem-<serial>
would be), so unplugging (`eof`) and replugging (`reappear`: a new pty behind the
same name) look to it exactly as they do on a box. The SIM's stored messages survive
a replug, as a SIM's do.

Besides its own answers it can play a real device's transcript from
python-gsmmodem-new's sdist (`profile`: one of test/fakemodems.py's descriptors),
keeping the SMS commands (storage, sending, signal) for itself.
"""

from __future__ import annotations

import os
import re
import selectors
import threading
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.modem import pdubuild


@dataclass
class Sent:
    pdu: str
    tpdu_length: int
    mr: int
    at: float

    @property
    def destination(self) -> str:
        return pdubuild.submit_destination(self.pdu)[0]


# What the fake answers itself even when it plays a transcript: SMS storage and
# sending, and the network state the tests change.
_STATE_COMMANDS = ("AT+CMGS=", "AT+CMGL", "AT+CMGR=", "AT+CMGD=", "AT+CSQ", "AT+CREG?",
                   "AT+COPS?")


_NO_PIN_NEEDED = {"AT", "ATZ", "ATE0", "ATE1", "AT+CMEE=1", "AT+CFUN?", "AT+CFUN=1"}


class FakeModem:
    def __init__(self, link: Path, *, profile: Any = None, send_delay: float = 0.0,
                 imsi: str = "639020000000001", operator: str = "Safaricom", rssi: int = 20,
                 pin: str | None = None, strict_pin: bool = False, mr_start: int = 0) -> None:
        self.link = Path(link)
        self.profile = profile
        self.send_delay = send_delay
        self.imsi, self.operator, self.rssi, self.creg = imsi, operator, rssi, 1
        self.pin, self.pin_locked = pin, pin is not None
        self.strict_pin = strict_pin     # refuse even ATZ until the PIN is in (some do)
        self.mr = mr_start
        self.cond = threading.Condition(threading.RLock())
        self.storage: dict[str, dict[int, tuple[int, str, int]]] = {"SM": {}, "ME": {}, "SR": {}}
        self.memory, self.recv_memory = "SM", "SM"
        self.sent: list[Sent] = []
        self.commands: list[str] = []
        self.errors: list[str] = []
        self.deletes: list[tuple[str, int]] = []
        self.fail_sends: list[str] = []          # answers for the next AT+CMGS PDUs
        self.urc_in_answer: dict[str, bytes] = {}  # command prefix -> URC inside its answer
        self.on_sent: Callable[[Sent], None] | None = None
        self.hung = False
        self.hang_at: str | None = None  # stop answering at the first command with this prefix
        self.babble = False        # answer every command with noise and a bare OK
        self.opened = 0
        self._out = bytearray()
        self._due: list[tuple[float, bytes]] = []
        self._pending_eof: threading.Event | None = None
        self._wake_r, self._wake_w = os.pipe()
        self._stop = False
        self.master: int | None = None
        self._open_pty()
        self._thread = threading.Thread(target=self._loop, daemon=True, name=f"fake {link.name}")
        self._thread.start()

    # -- test controls ------------------------------------------------------------------
    def store(self, pdu_hex: str, tpdu_length: int, *, memory: str | None = None,
              notify: bool = True, stat: int = 0) -> int:
        """Put a message on the SIM as the network would; +CMTI unless notify=False."""
        with self.cond:
            memory = memory or self.recv_memory
            box = self.storage[memory]
            index = next(i for i in range(1, 1000) if i not in box)
            box[index] = (stat, pdu_hex, tpdu_length)
            if notify:
                self._send(f'\r\n+CMTI: "{memory}",{index}\r\n'.encode())
            self.cond.notify_all()
            return index

    def deliver(self, sender: str, text: str, *, notify: bool = True, **kw: Any) -> int:
        return self.store(*pdubuild.deliver(sender, text, **kw), notify=notify)

    def notify_together(self, memory: str, indexes: list[int]) -> None:
        """Several +CMTI in one write: what the library loses all but the first of."""
        self._send(b"".join(f'\r\n+CMTI: "{memory}",{i}\r\n'.encode() for i in indexes))

    def status_report(self, mr: int, recipient: str, st: int = 0, *, direct: bool = False) -> None:
        pdu_hex, length = pdubuild.status_report(mr, recipient, st)
        if direct:
            self._send(f"\r\n+CDS: {length}\r\n{pdu_hex}\r\n".encode())
            return
        with self.cond:
            box = self.storage["SR"]
            index = next(i for i in range(1, 1000) if i not in box)
            box[index] = (0, pdu_hex, length)
        self._send(f'\r\n+CDSI: "SR",{index}\r\n'.encode())

    def raw(self, data: bytes) -> None:
        self._send(data)

    def hang(self) -> None:
        with self.cond:
            self.hung = True

    def unhang(self) -> None:
        with self.cond:
            self.hung = False

    def eof(self) -> None:
        """Unplug: the device node goes away and the open port reads EOF."""
        done = threading.Event()
        with self.cond:
            self._pending_eof = done
        os.write(self._wake_w, b"e")
        done.wait(5)
        self.link.unlink(missing_ok=True)

    def reappear(self) -> None:
        """Replug: a fresh modem (echo on, nothing set up) behind the same name."""
        with self.cond:
            self._open_pty()
            self.hung = False
        os.write(self._wake_w, b"r")

    def close(self) -> None:
        self._stop = True
        os.write(self._wake_w, b"x")
        self._thread.join(5)
        for fd in (self.master, self._slave, self._wake_r, self._wake_w):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.link.unlink(missing_ok=True)

    def wait_until(self, predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
        """Block (in a thread) until `predicate` holds: call through trio.to_thread."""
        with self.cond:
            return self.cond.wait_for(predicate, timeout)

    def stored(self, memory: str | None = None) -> dict[int, tuple[int, str, int]]:
        with self.cond:
            return dict(self.storage[memory or self.recv_memory])

    # -- the pty --------------------------------------------------------------------------
    def _open_pty(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)          # no echo, no CR/LF translation: bytes as a UART moves them
        os.set_blocking(master, False)
        self.master, self._slave = master, slave
        self.echo = self.profile is None
        self._inbuf = bytearray()
        self._pdu_len: int | None = None
        self._out.clear()
        self.opened += 1
        tmp = self.link.with_suffix(".new")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(os.ttyname(slave))
        os.replace(tmp, self.link)

    def _send(self, data: bytes, delay: float = 0.0) -> None:
        with self.cond:
            if delay > 0:
                self._due.append((time.monotonic() + delay, data))
            else:
                self._out += data
        os.write(self._wake_w, b"w")

    def _loop(self) -> None:
        pending_eof = None
        while not self._stop:
            with self.cond:
                master = self.master
                now = time.monotonic()
                for item in [d for d in self._due if d[0] <= now]:
                    self._due.remove(item)
                    self._out += item[1]
                timeout = min((d[0] for d in self._due), default=now + 0.5) - now
                want_write = bool(self._out) and master is not None
                pending_eof, self._pending_eof = self._pending_eof, None
            if pending_eof is not None:
                with self.cond:
                    for fd in (self.master, self._slave):
                        os.close(fd)
                    self.master = None
                pending_eof.set()
                continue
            sel = selectors.DefaultSelector()
            sel.register(self._wake_r, selectors.EVENT_READ)
            if master is not None:
                sel.register(master, selectors.EVENT_READ | (selectors.EVENT_WRITE if want_write else 0))
            for key, events in sel.select(max(0.0, timeout)):
                if key.fd == self._wake_r:
                    os.read(self._wake_r, 1024)
                    continue
                try:
                    if events & selectors.EVENT_WRITE:
                        with self.cond:
                            n = os.write(master, bytes(self._out[:4096]))
                            del self._out[:n]
                    if events & selectors.EVENT_READ:
                        data = os.read(master, 4096)
                        self._received(data)
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    pass           # nobody has the port open right now
            sel.close()
        self.stopped = True

    # -- the modem ------------------------------------------------------------------------
    def _received(self, data: bytes) -> None:
        with self.cond:
            if self.hung:
                return
            self._inbuf += data
            while self._inbuf:
                if self._pdu_len is not None:
                    end = next((i for i, b in enumerate(self._inbuf) if b in (0x1A, 0x1B)), None)
                    if end is None:
                        return
                    body, term = bytes(self._inbuf[:end]), self._inbuf[end]
                    del self._inbuf[:end + 1]
                    length, self._pdu_len = self._pdu_len, None
                    if term == 0x1A:
                        self._submit(body.decode("ascii", "replace").strip(), length)
                    else:
                        self._send(b"\r\nOK\r\n")
                    self.cond.notify_all()
                    continue
                end = self._inbuf.find(b"\r")
                if end < 0:
                    return
                cmd = self._inbuf[:end].decode("ascii", "replace").strip()
                del self._inbuf[:end + 1]
                if cmd and self.hang_at and cmd.startswith(self.hang_at):
                    self.hung, self.hang_at = True, None
                    self.commands.append(cmd)
                    self.cond.notify_all()
                    return
                if cmd:
                    self.commands.append(cmd)
                    if self.echo:
                        self._send(cmd.encode() + b"\r")
                    try:
                        self._command(cmd)
                    except Exception as e:  # noqa: BLE001 - a modem says ERROR, it does not die
                        self.errors.append(f"{cmd!r}: {type(e).__name__}: {e}")
                        self._reply("ERROR")
                    self.cond.notify_all()

    def _reply(self, *lines: str, prefix: str = "") -> None:
        body = b"".join(f"\r\n{line}\r\n".encode() for line in lines)
        inject = next((v for k, v in self.urc_in_answer.items() if prefix.startswith(k)), None)
        if inject is not None:
            del self.urc_in_answer[next(k for k in self.urc_in_answer if prefix.startswith(k))]
            first = body.find(b"\r\n", 2) + 2      # after the first line of the answer
            body = body[:first] + inject + body[first:]
        self._send(body)

    def _transcript_answers(self, cmd: str) -> bool:
        """The device's own answer, except for the commands whose state the fake keeps
        (a storage selection only when the transcript has an answer for it)."""
        if self.profile is None or cmd.startswith(_STATE_COMMANDS):
            return False
        return not cmd.startswith("AT+CPMS=") or cmd + "\r" in self.profile.responses

    def _command(self, cmd: str) -> None:
        if self._transcript_answers(cmd):
            lines = [ln for ln in self.profile.getResponse(cmd + "\r") if isinstance(ln, str)]
            self._send(b"".join(b"\r\n" + ln.encode() for ln in lines))
            return
        c = cmd.upper()
        if self.babble:
            return self._send(b"\r\n\x8f\xa3#\x00!\r\n\r\nOK\r\n")
        allowed = _NO_PIN_NEEDED - ({"ATZ"} if self.strict_pin else set())
        if self.pin_locked and not (c.startswith("AT+CPIN") or c in allowed):
            return self._reply("+CME ERROR: 11")
        simple = {
            "AT": (), "ATZ": (), "ATE0": (), "ATE1": (), "AT+CMEE=1": (),
            "AT+CFUN?": ("+CFUN: 1",), "AT+CGMI": ("FakeCom",), "AT+CGMM": ("FM-1",),
            "AT+CGMR": ("1.0",), "AT+CIMI": (self.imsi,), "AT+CGSN": ("356938035643809",),
            "AT+CLAC": ("+CLAC: +CMGS,+CMGL,+CMGR,+CMGD,+CPMS,+CNMI,+CSQ,+CREG,+COPS,+CSCA",),
            "AT+COPS?": (f'+COPS: 0,0,"{self.operator}",2',),
            "AT+CSQ": (f"+CSQ: {self.rssi},99",), "AT+CREG?": (f"+CREG: 0,{self.creg}",),
            "AT+CSCA?": ('+CSCA: "+254722500029",145',),
            "AT+CPMS=?": ('+CPMS: ("SM","SR"),("SM"),("SM")',),
            "AT+CSMP?": ("+CSMP: 49,167,0,0",),
            "AT+CPIN?": ("+CPIN: SIM PIN" if self.pin_locked else "+CPIN: READY",),
        }
        if c in simple:
            if c in ("ATZ", "ATE1"):
                self.echo = self.profile is None
            elif c == "ATE0":
                self.echo = False
            return self._reply(*simple[c], "OK", prefix=c)
        if c.startswith("AT+CPIN="):
            if cmd.split("=", 1)[1].strip('"') == self.pin:
                self.pin_locked = False
                return self._reply("OK")
            return self._reply("+CME ERROR: 16")
        if c.startswith(("AT+CMGF=", "AT+CNMI=", "AT+CSMP=", "AT+CLIP=", "AT+CRC=", "AT+CVHU=",
                         "AT+COPS=", "AT+CSCA=")):
            return self._reply("OK")
        if c.startswith("AT+CPMS="):
            mems = re.findall(r'"([A-Z]{2})"', cmd)
            if not mems or any(m not in self.storage for m in mems):
                return self._reply("+CMS ERROR: 302")
            self.memory = mems[0]
            if len(mems) >= 3:
                self.recv_memory = mems[2]
            n = len(self.storage[self.memory])
            return self._reply(f"+CPMS: {n},30,{n},30,{n},30", "OK")
        if c.startswith("AT+CMGL"):
            lines = []
            for i, (stat, pdu_hex, length) in sorted(self.storage[self.memory].items()):
                lines += [f"+CMGL: {i},{stat},,{length}", pdu_hex]
            return self._reply(*lines, "OK", prefix="AT+CMGL")
        if c.startswith("AT+CMGR="):
            i = int(c.split("=")[1])
            box = self.storage[self.memory]
            if i not in box:
                return self._reply("+CMS ERROR: 321")
            stat, pdu_hex, length = box[i]
            box[i] = (1 if stat == 0 else stat, pdu_hex, length)
            return self._reply(f"+CMGR: {stat},,{length}", pdu_hex, "OK")
        if c.startswith("AT+CMGD="):
            args = c.split("=")[1].split(",")
            if len(args) > 1 and args[1] != "0":
                return self._reply("ERROR")          # "delete all": this modem refuses it
            i = int(args[0])
            if i not in self.storage[self.memory]:
                return self._reply("+CMS ERROR: 321")
            del self.storage[self.memory][i]
            self.deletes.append((self.memory, i))
            return self._reply("OK")
        if c.startswith("AT+CMGS="):
            self._pdu_len = int(c.split("=")[1])
            return self._send(b"\r\n> ")
        self._reply("ERROR")

    def _submit(self, pdu_hex: str, length: int) -> None:
        if self.fail_sends:
            return self._reply(self.fail_sends.pop(0))
        octets = len(pdu_hex) // 2
        if (not re.fullmatch(r"(?:[0-9A-F]{2})+", pdu_hex)
                or octets - 1 - int(pdu_hex[:2], 16) != length):
            return self._reply("+CMS ERROR: 304")        # the length AT+CMGS announced

        mr = self.mr
        self.mr = (self.mr + 1) % 256
        sent = Sent(pdu_hex, length, mr, time.monotonic())
        self.sent.append(sent)
        self._send(f"\r\n+CMGS: {mr}\r\n\r\nOK\r\n".encode(), delay=self.send_delay)
        if self.on_sent is not None:
            self.on_sent(sent)
