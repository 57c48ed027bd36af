"""python-gsmmodem-new's GsmModem with the port handling this box needs. Blocking: every
method here runs in a worker thread (modem.worker calls them through trio.to_thread).

What is kept from the library: GsmModem.connect() (the init sequence — ATZ, ATE0,
+CFUN, +CMEE, SIM PIN, +CLAC detection of Huawei/Wavecom/ZTE quirks, +CMGF, +CSCA,
+CPMS selection, +CNMI), and write() with its +CME/+CMS error parsing and its
retry on "SIM busy" (14) and "please wait" (515).

What is replaced, by a class that sits between GsmModem and SerialComms in the MRO
(so GsmModem's own `super().connect()` lands here):

- opening: the library forces `rtscts=True, dsrdtr=True`; a modem on a cable
  without those lines then never gets a byte. Flow control comes from the config;
- the reader thread: the library decodes each line with `bytes.decode()` and dies
  on the first non-UTF-8 byte (line noise), silently — every command after that
  times out. Here noise becomes U+FFFD and a `Garbage` URC;
- notifications: the library hands each burst of lines to one new thread that
  handles only the first URC in it (a second +CMTI in the same read is lost) and
  dies on an unquoted `+CUSD: 2`. Here every line goes through at.UrcParser to
  `on_urc`, and URCs found inside a command's answer are taken out of it;
- EOF: the library calls fatalErrorCallbackFunc but a command in progress still
  waits out its whole timeout; here it is woken and raises PortGone at once;
- timeouts: the library's own waits (15 s for +CPIN, 10 s for the rest) are capped
  at the configured `at_timeout`, which is also what decides that a modem hangs.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Callable

import serial
from gsmmodem.exceptions import CommandError, TimeoutException
from gsmmodem.modem import GsmModem
from gsmmodem.serial_comms import SerialComms

from modem import at
from modem.pdu import SubmitPdu

CTRL_Z = "\x1a"
ESC = "\x1b"
PROMPT_SETTLE = 0.2      # seconds for a modem to answer the ESC before it is flushed


class PortGone(Exception):
    """The serial device reported EOF or an error: unplugged, or the driver reset it."""


class _Port(SerialComms):
    # A short read timeout only bounds how fast close() sees `alive` go false; the
    # reader is woken at once by cancel_read() anyway.
    timeout = 0.5
    RESPONSE_TERM = re.compile(r"^\s*(OK|ERROR|\+CM[ES] ERROR:.*|COMMAND NOT SUPPORT)\s*$")

    rtscts = False
    on_urc: Callable[[at.Urc], None] = staticmethod(lambda urc: None)
    _fatal: BaseException | None = None

    def connect(self) -> None:
        self._fatal = None
        self._urc_parser = at.UrcParser()
        self.serial = serial.Serial(port=self.port, baudrate=self.baudrate, timeout=self.timeout,
                                    rtscts=self.rtscts, dsrdtr=False, exclusive=True)
        # A modem left at the "> " prompt (the port died between AT+CMGS and the PDU)
        # takes every command after it as PDU text, forever: ESC ends that, and the CR
        # ends whatever half line is in its buffer. What it answers is thrown away.
        self.serial.write(ESC.encode() + b"\r")
        time.sleep(PROMPT_SETTLE)
        self.serial.reset_input_buffer()
        self.alive = True
        self.rxThread = threading.Thread(target=self._readLoop, daemon=True,
                                         name=f"gsmmodem-reader {self.port}")
        self.rxThread.start()

    def close(self) -> None:
        """Safe from any thread, also while another thread waits for an answer: that
        wait ends at once (PortGone) instead of running out its timeout."""
        self.alive = False
        if self._fatal is None:
            self._fatal = PortGone("closed")
        event = getattr(self, "_responseEvent", None)
        if event is not None:
            event.set()
        ser = getattr(self, "serial", None)
        if ser is not None:
            with contextlib.suppress(Exception):    # a port already gone cannot be woken
                ser.cancel_read()
        thread = getattr(self, "rxThread", None)
        if thread is not None and thread is not threading.current_thread():
            thread.join(5)
        if ser is not None:
            with contextlib.suppress(Exception):    # closing a dead port fails; it is closed
                ser.close()

    def _readLoop(self) -> None:
        buf = bytearray()
        try:
            while self.alive:
                data = self.serial.read(self.serial.in_waiting or 1)
                for byte in data:
                    buf.append(byte)
                    if buf.endswith(b"\r\n"):
                        line = bytes(buf[:-2]).decode("utf-8", errors="replace")
                        buf.clear()
                        if line.strip():
                            self._handleLineRead(line)
                    elif self._expectResponseTermSeq and buf.endswith(bytes(self._expectResponseTermSeq)):
                        line = bytes(buf).decode("utf-8", errors="replace")
                        buf.clear()
                        self._handleLineRead(line, checkForResponseTerm=False)
        except Exception as e:  # noqa: BLE001 - SerialException, OSError: the device is gone
            if not self.alive:
                return          # close() in progress: not a failure
            self.alive = False
            self._fatal = e
            event = self._responseEvent
            if event is not None:
                event.set()     # wake the command waiting for an answer
            self.fatalErrorCallback(e)

    def _handleLineRead(self, line: str, checkForResponseTerm: bool = True) -> None:
        event = self._responseEvent
        if event is not None and not event.is_set():
            self._response.append(line)
            if not checkForResponseTerm or self.RESPONSE_TERM.match(line):
                event.set()
            return
        for urc in self._urc_parser.feed(line):
            self.on_urc(urc)

    def write(self, data, waitForResponse=True, timeout=5, expectedResponseTermSeq=None):
        if self._fatal is not None or not self.alive:
            raise PortGone(f"{self.port}: {self._fatal or 'closed'}")
        try:
            lines = super().write(data, waitForResponse, timeout, expectedResponseTermSeq)
        except TimeoutException as e:
            if self._fatal is not None:
                raise PortGone(f"{self.port}: {self._fatal}") from None
            if e.data:
                answer, urcs = at.split_urcs(list(e.data))
                self._deliver(urcs)
                raise TimeoutException(answer or None) from None
            raise
        except (serial.SerialException, OSError) as e:
            raise PortGone(f"{self.port}: {e}") from None
        except Exception as e:
            if self._fatal is not None or not self.alive:
                # close() from another thread pulled the port from under this write.
                raise PortGone(f"{self.port}: closed ({type(e).__name__})") from None
            raise
        if self._fatal is not None:
            raise PortGone(f"{self.port}: {self._fatal}")
        if lines is None:
            return None
        answer, urcs = at.split_urcs(lines)
        self._deliver(urcs)
        return answer

    def _deliver(self, urcs: list[at.Urc]) -> None:
        for urc in urcs:
            self.on_urc(urc)


class SerialModem(GsmModem, _Port):
    """One modem. Not thread-safe: the worker runs one call at a time (CapacityLimiter(1))."""

    def __init__(self, port: str, baud: int, *, rtscts: bool, at_timeout: float,
                 cnmi: str, smsc: str | None, on_urc: Callable[[at.Urc], None],
                 on_fatal: Callable[[BaseException], None]) -> None:
        super().__init__(port, baud, smsReceivedCallbackFunc=None, AT_CNMI=cnmi,
                         requestDelivery=True, fatalErrorCallbackFunc=on_fatal)
        self.rtscts = rtscts
        self.at_timeout = at_timeout
        self.on_urc = on_urc
        self.memory: str | None = None        # selected now for read/delete (+CPMS mem1)
        self.sms_memory = "SM"                # where received SMS are stored
        self.memories: list[str] = []
        if smsc:
            self.smsc = smsc     # not connected yet: only remembered, set by connect()

    def write(self, data, waitForResponse=True, timeout=None, parseError=True,
              writeTerm="\r", expectedResponseTermSeq=None, *, long: bool = False):
        if not long:
            timeout = self.at_timeout if timeout is None else min(timeout, self.at_timeout)
        return super().write(data, waitForResponse, timeout, parseError, writeTerm,
                             expectedResponseTermSeq)

    # -- what the worker calls --------------------------------------------------------
    def open(self, pin: str | None) -> dict[str, str | None]:
        """Open the port and run the library's init; the SIM's identity on success."""
        try:
            self.connect(pin=pin)
            # GsmModem.connect() chose where SMS are read from (with quotes).
            self.memory = self.sms_memory = (self._smsMemReadDelete or '"SM"').strip('"')
            self.memories = at.parse_cpms_support(self.write("AT+CPMS=?", parseError=False))
            imsi = at.plain_value(self.write("AT+CIMI", parseError=False))
            imei = at.plain_value(self.write("AT+CGSN", parseError=False))
        except BaseException:
            self.close()
            raise
        return {"imsi": imsi, "imei": imei}

    def health(self) -> dict[str, object]:
        """Signal, registration and operator. `answered` False: no line we could parse
        came back (garbage instead of +CSQ)."""
        csq_lines = self.write("AT+CSQ", parseError=False)
        rssi = at.parse_csq(csq_lines)
        creg = at.parse_creg(self.write("AT+CREG?", parseError=False))
        operator = at.parse_cops(self.write("AT+COPS?", parseError=False))
        answered = any(line.strip().startswith("+CSQ:") for line in csq_lines)
        return {"rssi": rssi, "registration": creg, "operator": operator, "answered": answered}

    def _use(self, memory: str) -> None:
        if memory != self.memory:
            self.write(f'AT+CPMS="{memory}"')
            self.memory = memory

    def list_stored(self, memory: str) -> list[at.Stored]:
        """Every message in `memory` (AT+CMGL=4: read, unread, sent and unsent)."""
        self._use(memory)
        return at.parse_cmgl(self.write("AT+CMGL=4"))

    def read_stored(self, memory: str, index: int) -> at.Stored | None:
        self._use(memory)
        return at.parse_cmgr(self.write(f"AT+CMGR={index}"), index)

    def delete_stored(self, memory: str, index: int) -> None:
        """One message by index. Never AT+CMGD=1,4 ("delete all read"): some modems
        reject it, and it would also take messages that are not committed yet."""
        self._use(memory)
        self.write(f"AT+CMGD={index}")

    def send_pdus(self, pdus: list[SubmitPdu], send_timeout: float) -> list[int]:
        """AT+CMGS for each part; the TP-MR of each. A part that fails raises, and the
        caller sends the whole message again (a phone joins parts by reference)."""
        refs = []
        for p in pdus:
            try:
                self.write(f"AT+CMGS={p.tpdu_length}", expectedResponseTermSeq="> ")
            except TimeoutException:
                self.write(ESC, waitForResponse=False, writeTerm="")   # leave PDU entry
                raise
            answer = self.write(p.hex, timeout=send_timeout, writeTerm=CTRL_Z, long=True)
            mr = at.parse_cmgs(answer)
            if mr is None:
                raise CommandError(f"AT+CMGS answered without +CMGS: {answer!r}")
            refs.append(mr)
        return refs
