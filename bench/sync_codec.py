"""Sync batch benchmark: bytes on the wire per change, round trips and changes/s for
100,000 realistic change-log records, against the seed's approach (one JSON POST per
unsynced record) measured in the same run on the same hypercorn.

    .venv/bin/python bench/sync_codec.py [--records 100000] [--baseline-sample 5000]

1. Generates what a village box writes: interleaved loans through their whole life
   (request, approval, M-PESA funding and payout, repayments and forwards, each step's
   SMS and ledger postings), registrations, language changes; one clock reading per
   store transaction; the payloads store/*.py writes.
2. Encodes them with each codec, level and cap (CPU only); the shipping defaults with
   one JSON line per record instead of columns; the same batches in body format 1 (plain
   columns) with format 2's parts added one at a time; and a what-if change to the
   store's records (no rendered SMS body).
3. Starts a server on the daemon's hypercorn settings that answers the baseline's POSTs
   like a REST backend and our pushes like the upstream (HMAC, batch decode, signed
   ack), and talks to it over a raw socket with httpx's default headers, counting every
   byte of requests and responses. The baseline posts `--baseline-sample` records spread
   over the whole log (0: all); its bytes per change are their mean.
4. Prints a table and the ratios against the targets (>= 50x fewer bytes, >= 1000x fewer
   round trips); writes JSON to bench/results/sync-codec-<timestamp>.json.

Beyond the measured HTTP bytes, `on_wire` adds TLS 1.3 and TCP/IPv4 framing by an
explicit model, and `LINKS` turns bytes and round trips into changes/s on a backhaul.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import h11
import httpx
import zstandard

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sync import auth, columns  # noqa: E402
from sync.batch import (  # noqa: E402
    DEFAULT_LEVEL,
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_RECORDS,
    Record,
    build_batches,
    canonical_json,
    decode_batch,
    encode_batch,
)
from sync.checkpoint import Ack, decode_push_response  # noqa: E402

SITE, KEY, HOST = "site-1", bytes.fromhex("6b" * 32), "upstream.example.org"
CONFIGS = [("zstd", 3), ("zstd", 9), ("zstd", 17), ("zstd", 19), ("gzip", 6), ("gzip", 9)]
CAPS = [64 << 10, 256 << 10, 1 << 20]
MAX_RECORDS = 60_000        # never binds in the matrix: the byte cap is what is measured
# TLS 1.3 record: 5 header + 1 type + 16 tag per 16 KiB; TCP/IPv4 with timestamps: 52
# per segment of <= 1448 bytes; the receiver ACKs every second segment of a long message,
# a one-segment message's ACK rides piggyback (which favours the baseline).
TLS_RECORD, TLS_OVERHEAD, MSS, TCPIP = 16384, 22, 1448, 52
HANDSHAKE = 7 * TCPIP + 4000   # a new connection: TCP open/close, TLS 1.3 with 2 certs
LINKS = {"EDGE (200 kbit/s, RTT 600 ms)": (200e3, 0.6), "3G (2 Mbit/s, RTT 150 ms)": (2e6, 0.15)}

# -- realistic records ---------------------------------------------------------------------

NAMES = (["Amina", "Baraka", "Chebet", "Daudi", "Esther", "Faraji", "Gathoni", "Hamisi",
          "Imani", "Jabali", "Kerubo", "Makena", "Njeri", "Otieno", "Wanjiru", "Nafula"],
         ["Wanjiru", "Otieno", "Kiprono", "Mwangi", "Achieng", "Hassan", "Njeri", "Juma",
          "Kamau", "Mutua", "Moraa", "Gitau", "Wambui", "Ouma", "Kariuki", "Barasa"])
OK = "The service request is processed successfully."
FAILS = [("1032", "Request cancelled by user"), ("1", "The balance is insufficient for "
         "the transaction."), ("2001", "The initiator information is invalid."),
         ("1037", "DS timeout user cannot be reached")]


def ksh(cents: int) -> str:
    return f"Ksh {cents // 100:,}"


from store.changelog import _ms  # noqa: E402  the store's own rounding, not a copy


class Village:
    """Records as store/lending.py, settlement.py, outbox.py and ledger.py write them."""

    def __init__(self, seed: int) -> None:
        self.rng, self.out, self.users, self.loans = random.Random(seed), [], [], []
        self.now, self.txn = 1764316800.0, 0
        self.run, self.keys = self.rng.getrandbits(48), 0

    def hop(self) -> None:   # people's pace, with time.time()'s sub-microsecond digits
        self.now += self.rng.expovariate(1 / 20.0) + self.rng.getrandbits(20) / 1e7

    def emit(self, entity: str, key: str, op: str, payload: dict[str, Any]) -> None:
        # store.changelog keeps timestamps to the millisecond, and so does this model.
        payload = {k: _ms(v) for k, v in payload.items()}
        self.out.append(Record(len(self.out) + 1, entity, key, op, payload, _ms(self.now)))

    def key(self, kind: str) -> str:
        # store.outbox.new_key: the site, the kind, the process's 48-bit random run id and
        # its counter, e.g. site-1-mp-3f9a0c1b2d4e-17 (one run: one process, no restart).
        self.keys += 1
        return f"{SITE}-{kind}-{self.run:012x}-{self.keys}"

    def user(self, u: dict, op: str) -> None:
        self.emit("user", u["m"], op, {"msisdn": u["m"], "name": u.get("name"), "lang": u["lang"],
                                       "registered_at": u.get("reg"), "locked_until": None,
                                       "updated_at": self.now})

    def new_user(self, registered: bool) -> dict:
        r = self.rng
        u = {"m": f"254{r.choice('71')}{r.randrange(10 ** 8):08d}",
             "lang": r.choice(("en", "sw", "sw"))}
        self.user(u, "invited")
        if registered:
            u.update(name=f"{r.choice(NAMES[0])} {r.choice(NAMES[1])}", reg=self.now)
            self.user(u, "registered")
        self.users.append(u)
        return u

    def sms(self, to: dict, body: str) -> None:
        k = self.key("sms")
        self.emit("sms", k, "queued", {"key": k, "msisdn": to["m"], "body": body,
                                       "state": "queued", "created_at": self.now})

    def loan(self, L: dict, state: str) -> None:
        L["state"] = state
        self.emit("loan", L["ref"], state, {
            "ref": L["ref"], "borrower": L["b"]["m"], "lender": L["k"]["m"],
            "principal_cents": L["amt"], "instalment_cents": L["inst"], "state": state,
            "expires_at": L["exp"], "created_at": L["at"], "updated_at": self.now})

    def action(self, L: dict, purpose: str, to: dict, amount: int, state: str = "queued",
               key: str = "", receipt: str | None = None, code: str | None = None,
               desc: str | None = None) -> tuple:
        key = key or self.key("mp")
        self.emit("mpesa_action", key, state, {
            "key": key, "kind": "b2c" if purpose in ("loan_payout", "repayment_forward") else
            "stk_push", "purpose": purpose, "loan_ref": L["ref"], "msisdn": to["m"],
            "amount_cents": amount, "state": state, "receipt": receipt, "result_code": code,
            "result_desc": desc, "updated_at": self.now})
        return purpose, to, amount, key

    def ledger(self, L: dict, kind: str, a: str, b: str, amount: int, receipt: str) -> None:
        self.txn += 1
        self.emit("ledger_txn", str(self.txn), "posted", {
            "id": self.txn, "kind": kind, "loan_ref": L["ref"], "receipt": receipt,
            "postings": [{"account": a, "amount_cents": amount},
                         {"account": b, "amount_cents": -amount}]})

    def request(self) -> None:
        r = self.rng
        b = r.choice(self.users)
        k = self.new_user(False) if r.random() < 0.1 else r.choice(self.users)
        if k is b or "name" not in b:
            return
        amt = r.choice([200, 500, 1000, 1500, 2000, 3000, 5000, 10000, 20000]) * 100
        L = {"ref": "".join(r.choice("23456789ABCDEFGHJKMNPQRSTUVWXYZ") for _ in range(6)),
             "b": b, "k": k, "amt": amt, "inst": amt // r.choice([1, 2, 4, 5, 10]) // 100 * 100,
             "at": self.now, "exp": self.now + 72 * 3600.0, "left": amt, "pending": None}
        self.loan(L, "requested")
        self.sms(k, f"{b['name']} (0{b['m'][3:]}) asks to borrow {ksh(amt)} from you, repaying "
                    f"{ksh(L['inst'])} per instalment. Dial *383# and choose 3 to approve. "
                    f"Ref {L['ref']}")
        self.loans.append(L)

    def step(self, L: dict) -> None:
        r, b, k, ref = self.rng, L["b"], L["k"], L["ref"]
        if L["state"] == "requested":
            if r.random() < 0.12 or "name" not in k:
                self.loan(L, "declined" if "name" in k else "expired")
                self.sms(b, f"Your loan request of {ksh(L['amt'])} was not approved. Ref {ref}")
                return self.loans.remove(L)
            self.loan(L, "approved")
            L["pending"] = self.action(L, "loan_funding", k, L["amt"])
            return self.sms(b, f"{k['name']} approved your loan of {ksh(L['amt'])}. You get it "
                               f"on M-PESA once they pay. Ref {ref}")
        if L["pending"] is None:
            if L["state"] != "active":
                return self.loans.remove(L)
            L["pending"] = self.action(L, "repayment", b, min(L["inst"], L["left"]))
            return
        (purpose, to, amount, key), L["pending"] = L["pending"], None
        if purpose in ("loan_funding", "repayment") and r.random() < 0.08:
            code, desc = r.choice(FAILS)
            self.action(L, purpose, to, amount, "failed", key, None, code, desc)
            if purpose == "repayment":
                return self.sms(b, f"Your repayment of {ksh(amount)} failed ({desc}). Dial "
                                   f"*383# to try again. Ref {ref}")
            self.loan(L, "failed")
            self.sms(k, f"Your M-PESA payment of {ksh(amount)} for {b['name']}'s loan failed "
                        f"({desc}). The loan is cancelled. Ref {ref}")
            return self.loans.remove(L)
        rc = "".join(r.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") for _ in range(10))
        self.action(L, purpose, to, amount, "succeeded", key, rc, "0", OK)
        if purpose == "loan_funding":
            self.ledger(L, "funding_collected", "mpesa", f"escrow:{ref}", amount, rc)
            self.loan(L, "funded")
            L["pending"] = self.action(L, "loan_payout", b, amount)
        elif purpose == "loan_payout":
            self.ledger(L, "payout", f"escrow:{ref}", "mpesa", amount, rc)
            self.ledger(L, "disbursement", f"loan:{ref}", f"lender:{ref}", amount, rc)
            self.loan(L, "active")
            self.sms(b, f"You received a loan of {ksh(amount)} from {k['name']}. Repay "
                        f"{ksh(L['inst'])} per instalment: dial *383#, choose 6. Ref {ref}")
            self.sms(k, f"{ksh(amount)} was paid to {b['name']}. Ref {ref}")
        elif purpose == "repayment":
            self.ledger(L, "repayment", "mpesa", f"loan:{ref}", amount, rc)
            L["left"] -= amount
            L["pending"] = self.action(L, "repayment_forward", k, amount)
            if L["left"] <= 0:
                self.loan(L, "repaid")
            self.sms(b, f"Repayment of {ksh(amount)} received. New balance {ksh(L['left'])}. "
                        f"Receipt {rc}. Ref {ref}")
            self.sms(k, f"{b['name']} repaid {ksh(amount)}. Still owed {ksh(L['left'])}. Ref {ref}")
        else:
            self.ledger(L, "repayment_forwarded", f"lender:{ref}", "mpesa", amount, rc)


def generate(n: int, seed: int = 383) -> list[Record]:
    v = Village(seed)
    for _ in range(30):
        v.hop()
        v.new_user(True)
    while len(v.out) < n:
        v.hop()
        x = v.rng.random()
        if x < 0.04:
            v.new_user(True)
        elif x < 0.06 and (u := v.rng.choice(v.users)).get("name"):
            u["lang"] = "en" if u["lang"] == "sw" else "sw"
            v.user(u, "language")
        elif x < 0.25 or not v.loans:
            v.request()
        else:
            v.step(v.rng.choice(v.loans))
    return v.out[:n]


def baseline_body(r: Record) -> bytes:
    """The seed's sync: the unsynced record itself as the JSON body of its own POST."""
    return canonical_json({"seq": r.seq, "entity": r.entity, "key": r.key, "op": r.op,
                           "payload": r.payload, "at": r.at})


def what_ifs(recs: list[Record]) -> dict[str, list[Record]]:
    """The same log if the store wrote it differently (its choices, not the codec's).
    Gone: a rounded clock (store/changelog._ms does it) and keys from seq (the store's
    run id and counter, modelled in Village.key, compress as well: a restore from backup
    would reuse seqs, so they cannot be keys)."""
    no_body = [Record(r.seq, r.entity, r.key, r.op,
                      {k: v for k, v in r.payload.items() if k != "body"}, r.at) for r in recs]
    return {"no SMS body": no_body}


# -- CPU: codecs, levels, caps, layouts ----------------------------------------------------

def matrix(recs: list[Record]) -> list[dict[str, Any]]:
    rows, record_json = [], sum(len(baseline_body(r)) for r in recs)
    for cap in CAPS:
        for codec, level in CONFIGS:
            t = time.perf_counter()
            bs = build_batches(recs, SITE, 0, max_records=MAX_RECORDS, max_bytes=cap,
                               codec=codec, level=level)
            enc, t = time.perf_counter() - t, time.perf_counter()
            for b in bs:
                decode_batch(b.wire, site=SITE)
            dec, wire = time.perf_counter() - t, sum(b.size for b in bs)
            assert all(b.size <= cap for b in bs)
            rows.append({"codec": codec, "level": level, "cap": cap, "batches": len(bs),
                         "bytes_per_change": round(wire / len(recs), 2),
                         "ratio_vs_record_json": round(record_json / wire, 1),
                         "ratio_vs_own_raw": round(sum(b.raw_len for b in bs) / wire, 1),
                         "encode_changes_per_s": round(len(recs) / enc),
                         "decode_changes_per_s": round(len(recs) / dec)})
            x = rows[-1]
            print(f"  {codec:4} {level:>2}, cap {cap >> 10:>4} KiB: {x['bytes_per_change']:6.2f} "
                  f"B/change, {len(bs):>3} batches, encode {x['encode_changes_per_s']:>6}/s, "
                  f"decode {x['decode_changes_per_s']:>6}/s", flush=True)
    return rows


def format_steps(batches: list) -> dict[str, float]:
    """Bytes per change of the same batches in body format 1 (plain columns), then with
    format 2's parts added one at a time (sync/columns.py): what each part earns."""
    z = zstandard.ZstdCompressor(level=DEFAULT_LEVEL["zstd"], write_content_size=True)
    out = dict.fromkeys(["format 1: columns", "+ seq as deltas", "+ times in integer ms",
                         "+ inheritance: format 2"], 0)
    for b in batches:
        recs = list(b.records)
        frame = b.size - len(b.wire[12 + int.from_bytes(b.wire[6:8], "big"):-32])
        # Unique keys stop inheritance; the real keys then go back in their columns.
        body = columns.encode([Record(r.seq, r.entity, f"{r.key}\n{r.seq}", r.op, r.payload,
                                      r.at) for r in recs], b.after)
        rows: dict[str, list[Record]] = {}
        for r in recs:
            rows.setdefault(r.entity, []).append(r)
        for e, g in body["groups"].items():
            g["key"] = [r.key for r in rows[e]]
        ms_times = json.loads(canonical_json(body))
        if isinstance(body["at"], dict):   # back to plain numbers, as format 1 sent them
            body["at"] = [r.at for r in recs]
            for e, g in body["groups"].items():
                for f in g.pop("times"):
                    g["fields"][f] = [r.payload[f] for r in rows[e] if f in r.payload]
                g["times"] = []
        deltas = json.loads(canonical_json(body))
        body["seq"] = [r.seq for r in recs]
        for g in body["groups"].values():
            g["shapes"] = [names for names, _ in g["shapes"]]
            del g["times"]
        for name, x in zip(out, (body, deltas, ms_times, None)):
            raw = canonical_json(x) if x is not None else None
            out[name] += frame + (len(z.compress(raw)) if raw else b.size - frame)
    n = sum(b.count for b in batches)
    return {k: round(v / n, 2) for k, v in out.items()}


def layouts(batches: list) -> dict[str, Any]:
    """The same batches' records as one JSON line each instead of columns, same codec."""
    n, out = sum(b.count for b in batches), {}
    for level in (3, 19):
        rows = sum(len(zstandard.ZstdCompressor(level=level).compress(
            b"\n".join(baseline_body(r) for r in b.records))) for b in batches)
        cols = sum(encode_batch(SITE, b.after, b.records, "zstd", level).size for b in batches)
        out[f"zstd {level}"] = {"rows": round(rows / n, 2), "columns": round(cols / n, 2)}
    return out


# -- HTTP: a real server, every byte counted -------------------------------------------------

def serve(port: int) -> None:
    import hypercorn.trio
    import trio

    from gatewayd.asgi import lifespan
    from gatewayd.daemon import _hypercorn_config
    from sync.batch import BatchError
    verifier, state = auth.Verifier({SITE: KEY}, nonce_cache_size=200_000), {"cp": 0}

    async def reply(send, status: int, body: bytes, headers: dict[str, str]) -> None:
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            *((k.encode(), v.encode()) for k, v in headers.items())]})
        await send({"type": "http.response.body", "body": body})

    async def app(scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            return await lifespan(receive, send)
        body, more = b"", True
        while more:
            m = await receive()
            body, more = body + m.get("body", b""), m.get("more_body", False)
        qs = scope["query_string"].decode()
        target, hdrs = scope["raw_path"].decode() + ("?" + qs if qs else ""), dict(scope["headers"])
        try:
            site = (verifier.verify(scope["method"], target, scope["headers"], body, time.time())
                    if b"x-gatewayd-signature" in hdrs else None)
            if scope["path"] == "/api/changes":   # a REST backend storing one record
                json.loads(body)
                return await reply(send, 200, b'{"ok":true}', {})
            b = decode_batch(body, site=site)
        except (auth.AuthError, BatchError, ValueError) as e:
            return await reply(send, 401 if isinstance(e, auth.AuthError) else 400,
                               json.dumps({"error": str(e)}).encode(), {})
        if b.after > state["cp"]:
            return await reply(send, 409, json.dumps({"checkpoint": state["cp"]}).encode(), {})
        state["cp"] = max(state["cp"], b.last_seq)
        out = canonical_json({"ack": json.loads(Ack(site, b.last_seq, b.sha256).to_json()),
                              "inbound": None})
        nonce = hdrs[b"x-gatewayd-nonce"].decode()
        await reply(send, 200, out, auth.sign_response(200, out, site, KEY, nonce, time.time()))

    trio.run(hypercorn.trio.serve, app, _hypercorn_config(f"127.0.0.1:{port}", 1.0))


class Client:
    """A keep-alive HTTP/1.1 connection through h11 (what httpx uses) with httpx's
    default headers, counting the bytes of every exchange."""
    DEFAULTS = [(k.decode(), v.decode()) for k, v in httpx.Client().headers.raw]

    def __init__(self, port: int) -> None:
        self.port, self.connections, self.exchanges = port, 0, []   # (request, response) bytes
        self._connect()

    def _connect(self) -> None:
        self.sock = socket.create_connection(("127.0.0.1", self.port))
        self.h = h11.Connection(h11.CLIENT)
        self.connections += 1

    def post(self, target: str, body: bytes, ctype: str, extra: dict[str, str]) -> tuple:
        headers = [("Host", HOST), *self.DEFAULTS, ("Content-Type", ctype),
                   ("Content-Length", str(len(body))), *extra.items()]
        data = (self.h.send(h11.Request(method="POST", target=target, headers=headers))
                + self.h.send(h11.Data(data=body)) + self.h.send(h11.EndOfMessage()))
        self.sock.sendall(data)
        got, status, hdrs, chunks = 0, 0, {}, []
        while not isinstance(ev := self.h.next_event(), h11.EndOfMessage):
            if ev is h11.NEED_DATA:
                more = self.sock.recv(65536)
                got += len(more)
                self.h.receive_data(more)
            elif isinstance(ev, h11.Response):
                status, hdrs = ev.status_code, {k.decode(): v.decode() for k, v in ev.headers}
            elif isinstance(ev, h11.Data):
                chunks.append(ev.data)
        if self.h.our_state is h11.MUST_CLOSE:   # hypercorn closes after 1,000 requests
            self.sock.close()
            self._connect()
        else:
            self.h.start_next_cycle()
        self.exchanges.append((len(data), got))
        return status, hdrs, b"".join(chunks)


def on_wire(n: int) -> int:
    """HTTP bytes -> bytes on the wire under TLS 1.3 over TCP/IPv4 (model above)."""
    tls = n + math.ceil(n / TLS_RECORD) * TLS_OVERHEAD
    segments = math.ceil(tls / MSS)
    return tls + segments * TCPIP + (segments // 2 * TCPIP if segments > 1 else 0)


def traffic(c: Client, changes: int, secs: float) -> dict[str, Any]:
    http = sum(a + b for a, b in c.exchanges)
    wire = sum(on_wire(a) + on_wire(b) for a, b in c.exchanges) + c.connections * HANDSHAKE
    n = len(c.exchanges)
    return {"exchanges": n, "connections": c.connections, "changes": changes,
            "http_bytes_per_change": round(http / changes, 2),
            "wire_bytes_per_change": round(wire / changes, 2),
            "request_bytes_mean": round(sum(a for a, _ in c.exchanges) / n, 1),
            "response_bytes_mean": round(sum(b for _, b in c.exchanges) / n, 1),
            "loopback_changes_per_s": round(changes / secs)}


def baseline(port: int, sample: list[Record], signed: bool) -> dict[str, Any]:
    c, t = Client(port), time.perf_counter()
    for r in sample:
        body = baseline_body(r)
        extra = auth.sign("POST", "/api/changes", body, SITE, KEY, time.time()) if signed else {}
        assert c.post("/api/changes", body, "application/json", extra)[0] == 200
    return traffic(c, len(sample), time.perf_counter() - t)


def push(port: int, batches: list) -> dict[str, Any]:
    c, t = Client(port), time.perf_counter()
    target = f"/v1/sites/{SITE}/batches?inbound_after=0"
    for b in batches:
        sig = auth.sign("POST", target, b.wire, SITE, KEY, time.time())
        status, hdrs, answer = c.post(target, b.wire, "application/vnd.gatewayd.batch", sig)
        assert status == 200, (status, answer)
        auth.verify_response(status, hdrs, answer, SITE, KEY, sig[auth.H_NONCE])
        ack, _ = decode_push_response(answer, SITE)
        assert (ack.last_seq, ack.batch_sha256) == (b.last_seq, b.sha256)
    return traffic(c, sum(b.count for b in batches), time.perf_counter() - t)


# -- the run -----------------------------------------------------------------------------------

def start_server() -> tuple[subprocess.Popen, int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("bench server did not start")


def run(args: argparse.Namespace) -> dict[str, Any]:
    recs = generate(args.records, args.seed)
    mix: dict[str, int] = {}
    for r in recs:
        mix[r.entity] = mix.get(r.entity, 0) + 1
    print(f"{len(recs)} records: {mix}")
    n, caps = len(recs), {"max_records": DEFAULT_MAX_RECORDS, "max_bytes": DEFAULT_MAX_BYTES}
    result: dict[str, Any] = {
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "settings": vars(args),
        "cpus": os.cpu_count(), "mix": mix,
        "record_json_bytes_mean": round(sum(len(baseline_body(r)) for r in recs) / n, 1)}
    if not args.skip_matrix:
        print("codec x level x cap (CPU only):")
    result["matrix"] = [] if args.skip_matrix else matrix(recs)
    t = time.perf_counter()
    batches = build_batches(recs, SITE, 0, **caps)
    encode_s = time.perf_counter() - t
    result["chosen"] = {"codec": "zstd", "level": DEFAULT_LEVEL["zstd"], **caps,
                        "batches": len(batches), "encode_changes_per_s": round(n / encode_s)}
    result["layouts"] = layouts(batches)
    result["format_steps"] = format_steps(batches)
    result["what_if"] = {name: round(sum(b.size for b in build_batches(v, SITE, 0, **caps)) / n, 2)
                         for name, v in what_ifs(recs).items()}
    sample = recs[::max(1, n // args.baseline_sample)] if args.baseline_sample else recs
    server, port = start_server()
    try:
        ours = result["ours_push"] = push(port, batches)
        result["baseline"] = baseline(port, sample, signed=False)
        result["baseline_signed"] = baseline(port, sample, signed=True)
    finally:
        server.terminate()
        server.wait(10)
    ours["loopback_with_encoding_changes_per_s"] = round(n / (n / ours["loopback_changes_per_s"]
                                                              + encode_s))
    trips = result["round_trips"] = {"baseline": n, "ours_push": len(batches),
                                     "ours_pull": 2 * len(batches)}
    def ratio(side: str, k: str) -> float:
        return round(result[side][f"{k}_bytes_per_change"] / ours[f"{k}_bytes_per_change"], 1)
    vs = result["vs_baseline"] = {side: {f"{k}_ratio": ratio(side, k) for k in ("http", "wire")}
                                  for side in ("baseline", "baseline_signed")}
    vs["round_trips_push"] = n // trips["ours_push"]
    vs["round_trips_pull"] = n // trips["ours_pull"]
    result["targets"] = {"bytes_50x_http": vs["baseline"]["http_ratio"] >= 50,
                         "bytes_50x_wire": vs["baseline"]["wire_ratio"] >= 50,
                         "round_trips_1000x": vs["round_trips_pull"] >= 1000}
    result["links"] = {name: {side: round(n / (trips[side] * rtt + result[side]
                                               ["wire_bytes_per_change"] * n * 8 / bw), 2)
                              for side in ("baseline", "ours_push")}
                       for name, (bw, rtt) in LINKS.items()}
    result["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return result


def table(r: dict[str, Any]) -> str:
    c, vs, trips = r["chosen"], r["vs_baseline"], r["round_trips"]
    lines = [f"chosen: zstd {c['level']}, cap {c['max_bytes'] >> 10} KiB / {c['max_records']} "
             f"records -> {c['batches']} batches, encode {c['encode_changes_per_s']} changes/s",
             f"{'':36}{'HTTP B/chg':>11}{'wire B/chg':>11}{'round trips':>12}"
             f"{'loopback chg/s':>15}"]
    for label, key, trip in (("baseline: 1 JSON POST per record", "baseline", "baseline"),
                             ("  the same, HMAC-signed", "baseline_signed", "baseline"),
                             ("gatewayd batches, push", "ours_push", "ours_push")):
        x = r[key]   # ours: including the time to build the batches, which the box must
        rate = x.get("loopback_with_encoding_changes_per_s", x["loopback_changes_per_s"])
        lines.append(f"{label:36}{x['http_bytes_per_change']:>11}{x['wire_bytes_per_change']:>11}"
                     f"{trips[trip]:>12}{rate:>15}")
    lines += [f"{'gatewayd batches, pull (GET + ack)':36}{'':>22}{trips['ours_pull']:>12}",
              f"fewer bytes: x{vs['baseline']['http_ratio']} HTTP, x{vs['baseline']['wire_ratio']} "
              f"wire (vs the signed baseline: x{vs['baseline_signed']['http_ratio']}, "
              f"x{vs['baseline_signed']['wire_ratio']}); fewer round trips: "
              f"x{vs['round_trips_push']} push, x{vs['round_trips_pull']} pull",
              "targets: " + ", ".join(f"{k} {'PASS' if v else 'FAIL'}"
                                      for k, v in r["targets"].items()),
              "layout, B/change: " + "; ".join(f"{k}: one line per record {v['rows']}, columns "
                                               f"{v['columns']}" for k, v in r["layouts"].items()),
              "body format, B/change: " + "; ".join(f"{k} {v}"
                                                    for k, v in r["format_steps"].items()),
              "what if the store wrote (B/change): " + "; ".join(
                  f"{k} {v}" for k, v in r["what_if"].items())]
    lines += [f"{name}: baseline {v['baseline']} changes/s, batches {v['ours_push']} changes/s"
              for name, v in r["links"].items()]
    lines.append(f"baseline sample {r['baseline']['changes']} records; "
                 f"bench peak RSS {r['peak_rss_mib']} MiB")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--records", type=int, default=100_000)
    p.add_argument("--baseline-sample", type=int, default=5000,
                   help="records the baseline posts, spread over the log (0: all)")
    p.add_argument("--skip-matrix", action="store_true", help="only the shipping defaults")
    p.add_argument("--seed", type=int, default=383)
    p.add_argument("--out", help="JSON results (default bench/results/sync-codec-<timestamp>.json)")
    p.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        serve(args.serve)
        return 0
    if args.records < 100 or args.baseline_sample < 0:
        p.error("need --records >= 100 and --baseline-sample >= 0")
    result = run(args)
    out = Path(args.out or ROOT / "bench" / "results" /
               f"sync-codec-{time.strftime('%Y%m%d-%H%M%S')}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
