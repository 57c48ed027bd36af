"""Arbitrary bytes from an SMSC never take the daemon down: a fake SMSC binds the real
daemon's ESME and sends it garbage (random bytes, well-framed PDUs with random bodies,
valid deliver_sm with bytes flipped), connection after connection, while villagers
keep dialling over HTTP."""

from __future__ import annotations

import random
import socket
import struct
import threading

import pytest

from gatewayd.smpp import pdu as P
from gatewayd.smpp.sms import concat_udh
from tests.daemon_proc import Phone
from tests.smpp.e2e import daemon, health, wait_logged

pytestmark = pytest.mark.e2e

CONNECTIONS = 20
SEED = 20261128
COMMANDS = [0x00000004, 0x00000005, 0x00000103, 0x80000004, 0x80000015, 0x80000000,
            0x00000015, 0x00000102, 0x00000009, 0x80000009, 0x00000006, 0x0000BEEF]


def valid_deliver_sms(rng: random.Random) -> list[bytes]:
    phone = f"2547{rng.randrange(10**8):08d}"
    fields = [
        {"short_message": rng.choice([b"BAL", b"HELP", b"4826", b"MIKOPO"])},
        {"esm_class": 0x40, "short_message": concat_udh(rng.randrange(256), 2, 1) + b"HE"},
        {"esm_class": 0x04, "receipted_message_id": f"{rng.randrange(1 << 32):x}",
         "message_state": 2, "short_message": b"id:1 stat:DELIVRD"},
        {"ussd_service_op": rng.choice([1, 18, 33]), "its_session_info": rng.randrange(1 << 16),
         "short_message": b"*383#"},
    ]
    return [P.encode(P.Pdu("deliver_sm", rng.randrange(1, 1 << 31), 0, {
        "source_addr": phone, "destination_addr": "383", "data_coding": rng.choice([0, 8, 4]),
        **f})) for f in fields]


def garbage(rng: random.Random) -> bytes:
    """One connection's worth: framed random PDUs, mutated valid ones, then raw bytes."""
    out = bytearray()
    for _ in range(rng.randrange(5, 25)):
        kind = rng.random()
        if kind < 0.45:
            body = rng.randbytes(rng.randrange(0, 300))
            out += struct.pack(">IIII", 16 + len(body), rng.choice(COMMANDS),
                               rng.randrange(1 << 32), rng.randrange(1 << 31)) + body
        else:
            raw = bytearray(rng.choice(valid_deliver_sms(rng)))
            for _ in range(rng.randrange(0, 6)):
                i = rng.randrange(16, len(raw))           # keep the framing, spoil the body
                raw[i] = rng.randrange(256)
            out += raw
    out += rng.randbytes(rng.randrange(0, 64))             # often a framing error: the end
    return bytes(out)


class FakeSmsc:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.binds = 0
        self.from_daemon = bytearray()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        for _ in range(CONNECTIONS):
            conn, _ = self.sock.accept()
            with conn:
                conn.settimeout(5)
                header = _read(conn, 16)
                length, command_id, _, seq = struct.unpack(">IIII", header)
                _read(conn, length - 16)
                assert command_id == 0x00000009                      # bind_transceiver
                conn.sendall(P.encode(P.Pdu("bind_transceiver_resp", seq, 0,
                                            {"system_id": "fuzz"})))
                self.binds += 1
                conn.sendall(garbage(self.rng))
                self.from_daemon += _drain(conn)
        self.done.set()

    def close(self) -> None:
        self.sock.close()


def _read(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def _drain(conn: socket.socket) -> bytes:
    """What the daemon answers, until it gives up the connection (or goes quiet)."""
    conn.settimeout(0.2)
    data = b""
    try:
        while chunk := conn.recv(65536):
            data += chunk
    except (TimeoutError, ConnectionError):
        pass
    return data


def test_garbage_from_the_smsc_never_stops_the_daemon_serving(tmp_path):
    smsc = FakeSmsc(random.Random(SEED))
    d = daemon(tmp_path, smsc.port, reconnect_max_seconds=0.1).start()
    try:
        phone = Phone(d, "0744000009")
        for _ in range(CONNECTIONS // 4):
            assert phone.dial().startswith("CON ")           # villagers keep being served
            assert phone.send("1").startswith("CON ")
        assert smsc.done.wait(60), f"only {smsc.binds} binds"
        assert d.proc.poll() is None
        assert phone.dial().startswith("CON ") and health(d)[1]["parts"]["smpp"] == "running"
        assert d.events("task_crashed") == [] and d.events("smpp_op_failed") == []
        assert smsc.binds == CONNECTIONS                      # it came back every time
        nacks = _commands(bytes(smsc.from_daemon)).count(0x80000000)
        assert nacks >= CONNECTIONS                           # the protocol's own answer
        assert len(d.events("smpp_protocol_warning")) >= nacks
        wait_logged(d, "smpp_closed", CONNECTIONS)
    finally:
        assert d.stop() == 0
        smsc.close()


def _commands(data: bytes) -> list[int]:
    out, pos = [], 0
    while pos + 16 <= len(data):
        length, command_id = struct.unpack_from(">II", data, pos)
        if length < 16:
            break
        out.append(command_id)
        pos += length
    return out
