"""A faulty link for sync tests: an HTTP/1.1-aware TCP proxy on 127.0.0.1 between a box
and its upstream (the box's `[sync] upstream_url` points at it), breaking exchanges on
purpose, by a seeded random plan or by scripted faults.

    link = FaultyLink("http://127.0.0.1:PORT", plan=Plan(seed=7, rates={...}))
    link.start()                       # link.url is what the box dials
    link.script("hold_response", match="POST /v1/sites/site-1/batches")
    link.wait_for(lambda l: l.held, "a held answer")
    link.heal()                        # no more random faults (scripted ones still apply)
    link.stop()

It reads each request whole (head and Content-Length or chunked body), decides a fault,
forwards it to the upstream on a fresh connection, reads the whole answer and sends it
back, keeping the box's connection alive. The faults, and what each does to a box:

| fault | the upstream | the box |
|---|---|---|
| `refuse` | nothing | its new connection is reset before a byte is read |
| `drop_request` | nothing | the connection closes under a request sent whole |
| `cut_request` | the first N bytes, then a close (N < the request) | no answer |
| `cut_response` | the whole request, answered | the first M bytes of the answer, then a close (the dangerous case: applied upstream, never heard) |
| `corrupt_response` | the whole request, answered | the answer with one body byte flipped |
| `delay` | the request, late | the answer, late (both under `max_delay`) |
| `duplicate` | the same bytes twice, one after the other | one of the two answers (`dup_second`: how often the second, the replay's 401) |
| `late` | nothing now: after the *next* request (any connection) was answered, the old bytes on a new connection; that answer is thrown away | no answer (the connection closes) |
| `recycle` | the request | the whole answer with `Connection: close`, then a polite close (no failure: the next request needs a new connection, which `refuse` can then refuse) |
| `hold_response` | the whole request, answered | nothing until `release()`, then a close (or the answer, late): for killing the box in the window (scripted only) |

`late` is the reordering that means something for HTTP/1.1: requests on one connection
cannot pass each other, but a request stuck in the network can reach the upstream after
the box's newer request on another connection did.

Everything runs in threads with blocking sockets, bounded: 64 connections at once, 64 KiB
of head, 8 MiB of body, 60 s per socket read. Loopback only. `stats` counts faults by
kind; `conns` keeps, per connection, what happened to each request (`Exchange`).
"""

from __future__ import annotations

import random
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

FAULTS = ("refuse", "drop_request", "cut_request", "cut_response", "corrupt_response",
          "delay", "duplicate", "late", "hold_response", "recycle")
# Faults after which the box has no good answer: it will retry after a back-off.
HARD = frozenset({"refuse", "drop_request", "cut_request", "cut_response", "corrupt_response",
                  "late", "hold_response"})
MAX_HEAD = 64 * 1024
MAX_BODY = 8 * 1024 * 1024
MAX_CONNS = 64
SOCKET_TIMEOUT = 60.0


class LinkError(Exception):
    """A peer closed or sent something this proxy cannot frame."""


@dataclass
class Plan:
    """A seeded random fault plan. `rates` maps a fault to its probability per request
    (`refuse`: per new connection). After a fault the box sees as a failure, the next
    `spacing` requests pass untouched: the box backs off for uniform(0, 5 s x 2^k) after
    its k-th failure in a row, so faults in a row would mostly measure its sleep."""
    seed: int = 0
    rates: dict[str, float] = field(default_factory=dict)
    spacing: int = 2
    max_delay: float = 1.5
    dup_second: float = 0.5       # how often a duplicate answers with the replay's 401

    def __post_init__(self) -> None:
        unknown = set(self.rates) - set(FAULTS) - {"refuse"}
        if unknown or "hold_response" in self.rates:
            raise ValueError(f"no random fault {sorted(unknown) or 'hold_response'}")
        if sum(v for k, v in self.rates.items() if k != "refuse") > 1:
            raise ValueError("request fault rates add up to more than 1")
        self.rng = random.Random(self.seed)


@dataclass
class Exchange:
    """One request through the link and what the link did to it."""
    method: str
    target: str
    fault: str | None
    request_bytes: int
    conn: int = 0
    at: float = 0.0               # time.time() when the request was read whole
    forwarded: int = 0            # copies that reached the upstream whole
    statuses: list[int] = field(default_factory=list)   # the upstream's answers
    answered: bool = False        # the box got a whole, unaltered answer
    answered_status: int | None = None   # ... with this status
    note: str = ""


@dataclass
class Conn:
    id: int
    refused: bool = False
    exchanges: list[Exchange] = field(default_factory=list)


@dataclass
class _Scripted:
    fault: str
    match: str                    # "METHOD /path-prefix", "/path-prefix" or ""
    arg: float | None
    spaced: bool = False

    def matches(self, method: str, target: str) -> bool:
        if not self.match:
            return True
        m, _, path = self.match.partition(" ") if " " in self.match else ("", "", self.match)
        return (not m or m == method) and target.startswith(path)


class _Message:
    def __init__(self, head: bytes, body: bytes) -> None:
        self.head, self.body = head, body
        first = head.split(b"\r\n", 1)[0].decode("latin-1")
        self.first = first
        self.headers = _headers(head)

    @property
    def raw(self) -> bytes:
        return self.head + self.body

    @property
    def close(self) -> bool:
        return "close" in self.headers.get("connection", "").lower()


def _headers(head: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in head.split(b"\r\n")[1:]:
        if b":" in line:
            k, v = line.split(b":", 1)
            out[k.decode("latin-1").strip().lower()] = v.decode("latin-1").strip()
    return out


class _Reader:
    """Reads whole HTTP/1.1 messages off a blocking socket, keeping what it read past one."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.buf = sock, b""

    def _more(self) -> bool:
        data = self.sock.recv(65536)
        self.buf += data
        return bool(data)

    def _head(self) -> bytes | None:
        while b"\r\n\r\n" not in self.buf:
            if len(self.buf) > MAX_HEAD:
                raise LinkError("head too long")
            if not self._more():
                if self.buf:
                    raise LinkError("closed inside a head")
                return None
        i = self.buf.index(b"\r\n\r\n") + 4
        head, self.buf = self.buf[:i], self.buf[i:]
        return head

    def _exactly(self, n: int) -> bytes:
        if n > MAX_BODY:
            raise LinkError(f"body of {n} bytes")
        while len(self.buf) < n:
            if not self._more():
                raise LinkError("closed inside a body")
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _chunked(self) -> bytes:
        out = b""
        while True:
            while b"\r\n" not in self.buf:
                if len(self.buf) > MAX_HEAD or not self._more():
                    raise LinkError("bad chunk size line")
            i = self.buf.index(b"\r\n") + 2
            line, self.buf = self.buf[:i], self.buf[i:]
            out += line
            size = int(line.split(b";")[0].strip(), 16)
            if size == 0:       # trailers, then an empty line
                while True:
                    while b"\r\n" not in self.buf:
                        if not self._more():
                            raise LinkError("closed inside trailers")
                    i = self.buf.index(b"\r\n") + 2
                    line, self.buf = self.buf[:i], self.buf[i:]
                    out += line
                    if line == b"\r\n":
                        return out
            out += self._exactly(size + 2)
            if len(out) > MAX_BODY:
                raise LinkError("chunked body too long")

    def request(self) -> _Message | None:
        head = self._head()
        if head is None:
            return None
        h = _headers(head)
        if "chunked" in h.get("transfer-encoding", "").lower():
            return _Message(head, self._chunked())
        return _Message(head, self._exactly(int(h.get("content-length", "0"))))

    def response(self, method: str) -> _Message:
        head = self._head()
        if head is None:
            raise LinkError("closed before an answer")
        msg = _Message(head, b"")
        status = int(msg.first.split()[1])
        h = msg.headers
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            return msg
        if "chunked" in h.get("transfer-encoding", "").lower():
            msg.body = self._chunked()
        elif "content-length" in h:
            msg.body = self._exactly(int(h["content-length"]))
        else:                   # framed by the close
            while self._more():
                if len(self.buf) > MAX_BODY:
                    raise LinkError("body too long")
            msg.body, self.buf = self.buf, b""
        return msg


def _reset(sock: socket.socket) -> None:
    """Close with an RST, as a link that drops does, rather than a polite FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


class FaultyLink:
    def __init__(self, upstream_url: str, plan: Plan | None = None) -> None:
        u = urlsplit(upstream_url)
        if u.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError("the faulty link is for loopback only")
        self.upstream = (u.hostname, u.port or 80)
        self.plan = plan
        self.healed = plan is None
        self.stats: Counter[str] = Counter()
        self.conns: list[Conn] = []
        self.held: list[Exchange] = []
        self._scripted: list[_Scripted] = []
        self._late: list[tuple[Exchange, bytes, str]] = []
        self._quiet = 0
        self._cond = threading.Condition()
        self._release = threading.Event()
        self._deliver_held = False
        self._slots = threading.BoundedSemaphore(MAX_CONNS)
        self._sock: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._open: set[socket.socket] = set()
        self._stopping = False
        self.url = ""

    # -- control ---------------------------------------------------------------------
    def start(self) -> FaultyLink:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        self._sock = s
        self.url = f"http://127.0.0.1:{s.getsockname()[1]}"
        t = threading.Thread(target=self._accept, name="faultylink-accept", daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._release.set()
            self.stats["late_never_sent"] += len(self._late)
            self._late.clear()
            for s in list(self._open):
                _reset(s)
            self._open.clear()
        if self._sock:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)   # wakes the thread in accept()
            except OSError:
                pass
            self._sock.close()
        for t in self._threads:
            t.join(5)

    def script(self, fault: str, match: str = "", arg: float | None = None,
               count: int = 1, spaced: bool = False) -> None:
        """Apply `fault` to the next `count` requests matching `match` ("POST /v1/..."),
        whatever the random plan says and healed or not. `arg`: the delay in seconds
        for `delay`, the byte count for `cut_request`/`cut_response`, 0 for a
        `duplicate` answered with the first answer (default: the second). `spaced`: wait,
        like a random fault, for the plan's `spacing` clean requests after a hard one."""
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}")
        with self._cond:
            if fault == "hold_response":
                self._release.clear()
            self._scripted.extend(_Scripted(fault, match, arg, spaced) for _ in range(count))

    def heal(self) -> None:
        """No more random faults. Scripted ones still apply, held answers wait for
        `release()`, and late requests still go after the next request."""
        with self._cond:
            self.healed = True
            self._cond.notify_all()

    def release(self, deliver: bool = False) -> None:
        """End every hold: close the box's connection (the answer never arrives), or
        with `deliver` send the held answer after all."""
        with self._cond:
            self._deliver_held = deliver
        self._release.set()

    def wait_for(self, check: Callable[[FaultyLink], bool], what: str,
                 timeout: float = 30.0) -> None:
        """Wait until `check(self)` holds; it is looked at whenever the link does
        something (an event, not a sleep)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not check(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"faulty link: never happened: {what} "
                                         f"(stats {dict(self.stats)})")
                self._cond.wait(left)

    def exchanges(self) -> list[Exchange]:
        with self._cond:
            return [e for c in self.conns for e in c.exchanges]

    def summary(self) -> dict:
        ex = self.exchanges()
        return {"connections": len(self.conns), "requests": len(ex),
                "refused": sum(c.refused for c in self.conns),
                "faults": {k: v for k, v in sorted(self.stats.items()) if k in FAULTS},
                "counters": {k: v for k, v in sorted(self.stats.items()) if k not in FAULTS},
                "answered": sum(e.answered for e in ex),
                # What the upstream answered, by route: {"POST /sync/ack": {"200": 3}}.
                "statuses": {route: dict(Counter(str(st) for e in ex
                                                 if f"{e.method} {e.target.split('?')[0]}" == route
                                                 for st in e.statuses))
                             for route in sorted({f"{e.method} {e.target.split('?')[0]}"
                                                  for e in ex})},
                # Pushes the upstream applied (answered 200) while the box heard no 200.
                "applied_unheard": sum(1 for e in ex if e.method == "POST" and 200 in e.statuses
                                       and e.answered_status != 200)}

    # -- the plan --------------------------------------------------------------------
    def _count(self, key: str, n: int = 1) -> None:
        with self._cond:
            self.stats[key] += n
            self._cond.notify_all()

    def _decide_conn(self) -> bool:
        with self._cond:
            if self._stopping:
                return True
            for s in self._scripted:
                if s.fault == "refuse" and not (s.spaced and self._quiet > 0):
                    self._scripted.remove(s)
                    self.stats["refuse"] += 1
                    self.stats["scripted"] += 1
                    if self.plan is not None:
                        self._quiet = self.plan.spacing
                    return True
            if self.healed or self.plan is None or self._quiet > 0:
                return False
            if self.plan.rng.random() < self.plan.rates.get("refuse", 0.0):
                self._quiet = self.plan.spacing
                self.stats["refuse"] += 1
                return True
            return False

    def _decide(self, method: str, target: str) -> tuple[str | None, float | None, float]:
        """(fault, arg, frac): `frac` in [0, 1) places a random cut, flip or delay. Every
        draw is made here, under the lock, so a seed gives the same plan request for
        request whatever the threads do."""
        with self._cond:
            for s in self._scripted:
                if s.fault != "refuse" and s.matches(method, target) \
                        and not (s.spaced and self._quiet > 0):
                    self._scripted.remove(s)
                    self.stats[s.fault] += 1
                    self.stats["scripted"] += 1
                    hard = s.fault in HARD or (s.fault == "duplicate" and s.arg != 0)
                    if hard and self.plan is not None:
                        self._quiet = self.plan.spacing
                    return s.fault, s.arg, self._frac()
            if self._quiet > 0:
                self._quiet -= 1
                return None, None, 0.0
            if self.healed or self.plan is None:
                return None, None, 0.0
            x, acc = self.plan.rng.random(), 0.0
            for fault, rate in sorted(self.plan.rates.items()):
                if fault == "refuse":
                    continue
                acc += rate
                if x < acc:
                    self.stats[fault] += 1
                    arg = None
                    if fault == "duplicate":    # the box hears the replay's 401: a failure
                        arg = float(self.plan.rng.random() < self.plan.dup_second)
                    if fault in HARD or arg:
                        self._quiet = self.plan.spacing
                    return fault, arg, self._frac()
            return None, None, 0.0

    def _frac(self) -> float:
        return self.plan.rng.random() if self.plan else 0.5

    # -- plumbing --------------------------------------------------------------------
    def _accept(self) -> None:
        assert self._sock is not None
        n = 0
        while True:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return          # stopped
            n += 1
            conn = Conn(n)
            with self._cond:
                self.conns.append(conn)
            if self._decide_conn():
                conn.refused = True
                _reset(client)
                self._count("connections")
                continue
            if not self._slots.acquire(timeout=SOCKET_TIMEOUT):
                _reset(client)
                continue
            t = threading.Thread(target=self._serve, args=(client, conn),
                                 name=f"faultylink-{n}", daemon=True)
            t.start()
            self._threads = [x for x in self._threads if x.is_alive()] + [t]

    def _serve(self, client: socket.socket, conn: Conn) -> None:
        self._count("connections")
        with self._cond:
            self._open.add(client)
        client.settimeout(SOCKET_TIMEOUT)
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = _Reader(client)
        abrupt = False
        try:
            while not self._stopping:
                req = reader.request()
                if req is None:
                    return
                parts = req.first.split()
                method, target = parts[0], parts[1] if len(parts) > 1 else ""
                fault, arg, frac = self._decide(method, target)
                ex = Exchange(method, target, fault, len(req.raw), conn.id, time.time())
                with self._cond:
                    conn.exchanges.append(ex)
                then = self._exchange(client, req, ex, fault, arg, frac)
                if then != "keep":
                    abrupt = then == "reset"
                    return
                self._flush_late()
                if req.close:
                    return
        except (OSError, LinkError, ValueError, IndexError) as e:
            self._count("link_errors")
            abrupt = True
            with self._cond:
                if conn.exchanges and not conn.exchanges[-1].note:
                    conn.exchanges[-1].note = f"{type(e).__name__}: {e}"
        finally:
            with self._cond:
                self._open.discard(client)
            if abrupt:
                _reset(client)
            else:
                try:
                    client.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                client.close()
            self._slots.release()
            self._count("closed")

    def _exchange(self, client: socket.socket, req: _Message, ex: Exchange,
                  fault: str | None, arg: float | None, frac: float) -> bool:
        """One request; then "keep" the box's connection, "close" it or "reset" it."""
        method = ex.method
        if fault == "drop_request":
            return "reset"
        if fault == "cut_request":
            raw = req.raw
            n = int(arg) if arg is not None else 1 + int(frac * (len(raw) - 1))
            ex.note = f"{min(n, len(raw))} of {len(raw)} bytes"
            self._send_partial(raw[:n])
            return "reset"
        if fault == "late":
            with self._cond:
                self._late.append((ex, req.raw, method))
            return "reset"
        if fault == "delay":
            d = arg if arg is not None else frac * (self.plan.max_delay if self.plan else 1.0)
            ex.note = f"{d:.2f} s"
            self._wait(d / 2)
        resp = self._forward(req.raw, method, ex)
        if fault == "duplicate":
            second = self._forward(req.raw, method, ex)
            if arg is None or arg:      # scripted: the second unless told arg=0
                resp = second
                ex.note = "answered with the second"
            else:
                ex.note = "answered with the first"
        if fault == "delay":
            self._wait(d / 2)
        if fault == "cut_response":
            raw = resp.raw
            m = int(arg) if arg is not None else int(frac * len(raw))
            ex.note = f"{m} of {len(raw)} answer bytes"
            client.sendall(raw[:m])
            return "reset"
        if fault == "hold_response":
            with self._cond:
                self.held.append(ex)
                self._cond.notify_all()
            self._release.wait()
            with self._cond:
                self.held.remove(ex)
                deliver = self._deliver_held
                self._cond.notify_all()
            if not deliver or self._stopping:
                ex.note = "held, then the box's connection closed"
                return "reset"
            ex.note = "held, then delivered"
        if fault == "corrupt_response":
            body = bytearray(resp.body)
            if body:
                i = int(frac * len(body))
                body[i] ^= 0x20 if chr(body[i]).isalpha() else 0x01
                ex.note = f"flipped answer body byte {i}"
            client.sendall(resp.head + bytes(body))
            return "close" if resp.close else "keep"
        if fault == "recycle" and not resp.close:
            resp.head = resp.head[:-2] + b"Connection: close\r\n\r\n"
        client.sendall(resp.raw)
        with self._cond:
            ex.answered, ex.answered_status = True, int(resp.first.split()[1])
            self._cond.notify_all()
        return "close" if resp.close or fault == "recycle" else "keep"

    def _wait(self, seconds: float) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._stopping, timeout=seconds)

    def _connect(self) -> socket.socket:
        s = socket.create_connection(self.upstream, timeout=SOCKET_TIMEOUT)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s

    def _forward(self, raw: bytes, method: str, ex: Exchange) -> _Message:
        """The request on a fresh upstream connection, and its whole answer."""
        with self._connect() as up:
            up.sendall(raw)
            resp = _Reader(up).response(method)
        with self._cond:
            ex.forwarded += 1
            ex.statuses.append(int(resp.first.split()[1]))
            self.stats["forwarded"] += 1
            self._cond.notify_all()
        return resp

    def _send_partial(self, data: bytes) -> None:
        """The first bytes of a request, then a reset: the upstream never gets it whole."""
        try:
            up = self._connect()
            up.sendall(data)
            _reset(up)
        except OSError:
            pass

    def _flush_late(self) -> None:
        """Requests held back by `late` reach the upstream now, after a newer one."""
        with self._cond:
            late, self._late = self._late, []
        for ex, raw, method in late:
            try:
                self._forward(raw, method, ex)
                ex.note = f"reached the upstream late: {ex.statuses[-1]}"
                self._count("late_sent")
            except (OSError, LinkError) as e:
                ex.note = f"late copy failed: {e}"
