"""The ESME core and its trio shell against node-smpp's SMSC on 127.0.0.1."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any

import pytest
import structlog
import trio

from gatewayd.smpp import pdu as P
from gatewayd.smpp import sms, ussd
from gatewayd.smpp.client import Esme, Inbound
from gatewayd.smpp.mo import MoMessage, Reassembler, mo_part
from gatewayd.smpp.receipts import MessageState, ReceiptMatcher, parse_receipt
from gatewayd.smpp.sender import Accepted, Failed, Retrying, Sender
from gatewayd.smpp.session import (
    Backoff,
    BindFailed,
    BindMode,
    Bound,
    Closed,
    SessionConfig,
)

PHONE, CODE = "254712345678", "383"
EVENT_TIMEOUT = 10.0


def config(**kw: Any) -> SessionConfig:
    return SessionConfig(**{"system_id": "gatewayd", "password": "secret", **kw})


@asynccontextmanager
async def running(smsc, cfg: SessionConfig | None = None, **kw: Any):
    kw.setdefault("backoff", Backoff(initial=0.01, maximum=0.05, jitter=0.0,
                                     bad_credentials_delay=0.01))
    esme = Esme("127.0.0.1", smsc.port, cfg or config(), **kw)
    async with trio.open_nursery() as nursery:
        await nursery.start(esme.run)
        yield esme
        with trio.move_on_after(EVENT_TIMEOUT):
            await esme.stop()
            await until(esme, Closed)
        nursery.cancel_scope.cancel()


async def until(esme: Esme, *kinds: type, seen: list | None = None) -> Any:
    with trio.fail_after(EVENT_TIMEOUT):
        while True:
            ev = await esme.events.receive()
            if isinstance(ev, kinds):
                return ev
            if seen is not None:
                seen.append(ev)


async def test_wrong_password_is_bad_credentials_logged_once_and_retried(smsc):
    with structlog.testing.capture_logs() as logs:
        async with running(smsc, config(password="wrong")) as esme:
            failures = [await until(esme, BindFailed) for _ in range(3)]
    assert all(f.bad_credentials and f.command_status == P.ESME_RINVPASWD for f in failures)
    refused = [e for e in logs if e["event"] == "smpp_bind_refused_bad_credentials"]
    assert len(refused) == 1 and refused[0]["log_level"] == "error"
    assert "system_id" in refused[0]["hint"]
    for _ in range(3):
        assert (await smsc.wait_for(lambda e: e["event"] == "bind"))["status"] == P.ESME_RINVPASWD


async def test_unknown_system_id_is_bad_credentials(smsc):
    async with running(smsc, config(system_id="nobody")) as esme:
        failed = await until(esme, BindFailed)
    assert failed.bad_credentials and failed.command_status == P.ESME_RINVSYSID


@pytest.mark.parametrize("modes", ["one", "decimal", "upper-zeros", "text-only",
                                   "dup,out-of-order,decimal"])
async def test_submit_then_receipt_matched(smsc_factory, modes):
    smsc = smsc_factory("--receipts", modes)
    matcher = ReceiptMatcher()
    text = "Loan approved € {1}"
    async with running(smsc) as esme:
        await until(esme, Bound)
        (fields,) = sms.submit_sm_fields(text, source_addr=CODE, destination_addr=PHONE,
                                         reference=1)
        esme.submit("msg-1", fields)
        accepted = await until(esme, Accepted)
        assert accepted.ref == "msg-1" and accepted.message_id == "1a2b3c00"
        matcher.submitted(accepted.message_id, accepted.ref, trio.current_time())
        updates = []
        expected = 2 if "dup" in modes else 1
        expected += "out-of-order" in modes
        for _ in range(expected):
            inbound = await until(esme, Inbound)
            receipt = parse_receipt(inbound.pdu)
            updates.append(matcher.match(receipt, trio.current_time()))
            assert await esme.respond(inbound.token)
            resp = await smsc.wait_for(smsc.recv("deliver_sm_resp"))
            assert resp["seq"] == inbound.token[1] and resp["status"] == 0
    got = await smsc.wait_for(smsc.recv("submit_sm"))
    assert got["short_message"] == text        # node-smpp's GSM 03.38 table reads it back
    assert got["registered_delivery"] == 1
    assert [u.ref for u in updates] == ["msg-1"] * expected
    assert updates[0].changed and updates[0].state is MessageState.DELIVERED
    assert not any(u.changed for u in updates[1:])   # duplicates and stale ENROUTE


@pytest.mark.parametrize("text", ["a" * 150 + "€€€" + "b" * 60, "Habari 😀 " * 12])
async def test_long_message_as_udh_parts(smsc, text):
    parts = sms.submit_sm_fields(text, source_addr=CODE, destination_addr=PHONE, reference=9,
                                 registered_delivery=0)
    assert len(parts) == 2
    async with running(smsc) as esme:
        await until(esme, Bound)
        for i, f in enumerate(parts):
            esme.submit(("long", i), f)
        accepted = {(await until(esme, Accepted)).ref for _ in parts}
    assert accepted == {("long", 0), ("long", 1)}
    got = [await smsc.wait_for(smsc.recv("submit_sm")) for _ in parts]
    got.sort(key=lambda e: e["short_message_udh"][0])
    assert [e["short_message_udh"] for e in got] == [["0003090201"], ["0003090202"]]
    assert "".join(e["short_message"] for e in got) == text


async def test_long_message_as_message_payload(smsc):
    text = "x" * 200 + "€"
    (f,) = sms.submit_sm_fields(text, source_addr=CODE, destination_addr=PHONE, reference=1,
                                long_mode=sms.LongMode.PAYLOAD, registered_delivery=0)
    async with running(smsc) as esme:
        await until(esme, Bound)
        esme.submit("p", f)
        await until(esme, Accepted)
    got = await smsc.wait_for(smsc.recv("submit_sm"))
    assert got["message_payload"] == text


@pytest.mark.parametrize("cmd", [
    {"text": "BAL", "parts": 1},
    {"text": "Nataka mkopo wa € 500 " * 12, "parts": 3, "order": "reverse", "dup": [2]},
    {"text": "a€" * 100, "parts": 2, "scheme": "udh16", "ref": 513},
    {"text": "Habari 😀 rafiki", "parts": 2, "scheme": "sar", "coding": "ucs2"},
])
async def test_mo_single_and_multipart_reassembled(smsc, cmd):
    reassembler = Reassembler()
    async with running(smsc) as esme:
        await until(esme, Bound)
        smsc.command(cmd="mo", source=PHONE, dest=CODE, **cmd)
        done = None
        while done is None:
            inbound = await until(esme, Inbound)
            result = reassembler.add(mo_part(inbound.pdu), trio.current_time())
            # Here the daemon commits the part; only then the SMSC hears back.
            assert await esme.respond(inbound.token)
            if isinstance(result, MoMessage):
                done = result
        resps = [await smsc.wait_for(smsc.recv("deliver_sm_resp"))
                 for _ in range(cmd["parts"])]
    assert done.text == cmd["text"] and done.parts == cmd["parts"]
    assert done.source_addr == PHONE
    assert all(r["status"] == 0 for r in resps)


async def test_ussd_dialog_over_smpp(smsc):
    prof = ussd.profile("standard")
    async with running(smsc) as esme:
        await until(esme, Bound)
        smsc.command(cmd="ussd", source=PHONE, dest=CODE, text="*383*1#", op=1, session=0x2A00)
        inbound = await until(esme, Inbound)
        # smpplib alone raises KeyError on this deliver_sm (its issue #104).
        hop = ussd.parse_deliver_sm(inbound.pdu, prof)
        assert (hop.kind, hop.text, hop.msisdn) == (ussd.HopKind.START, "*383*1#", PHONE)
        assert hop.session_key == f"{PHONE}/42"
        await esme.respond(inbound.token)
        esme.submit("screen-1", ussd.submit_sm_fields(hop, "1 Request loan", False, prof),
                    urgent=True)
        await until(esme, Accepted)
        smsc.command(cmd="ussd", source=PHONE, dest=CODE, text="2", op=18, session=0x2A02)
        hop2 = ussd.parse_deliver_sm((await until(esme, Inbound)).pdu, prof)
        assert (hop2.kind, hop2.text, hop2.session_key) == (
            ussd.HopKind.CONTINUE, "2", hop.session_key)
        esme.submit("screen-2", ussd.submit_sm_fields(hop2, "Asante", True, prof))
        await until(esme, Accepted)
    first = await smsc.wait_for(smsc.recv("submit_sm"))
    last = await smsc.wait_for(smsc.recv("submit_sm"))
    assert (first["ussd_service_op"], first["its_session_info"]) == (2, "2a00")
    assert (last["ussd_service_op"], last["its_session_info"]) == (17, "2a03")
    assert first["service_type"] == "USSD" and first["destination_addr"] == PHONE
    assert last["short_message"] == "Asante"


async def test_throttled_and_queue_full_slow_down_and_retry(smsc_factory):
    smsc = smsc_factory("--throttle", "2", "--queue-full", "1")
    sender = Sender(rate=50.0, initial_pause=0.02)
    async with running(smsc, sender=sender) as esme:
        await until(esme, Bound)
        (f,) = sms.submit_sm_fields("hi", source_addr=CODE, destination_addr=PHONE,
                                    reference=1, registered_delivery=0)
        esme.submit("t", f)
        retries = [await until(esme, Retrying) for _ in range(3)]
        accepted = await until(esme, Accepted)
    assert [r.command_status for r in retries] == [P.ESME_RTHROTTLED] * 2 + [P.ESME_RMSGQFUL]
    assert accepted.attempts == 4
    assert sender.current_rate < 50.0          # slowed down, recovering
    for _ in range(4):
        await smsc.wait_for(smsc.recv("submit_sm"))


async def test_permanent_error_is_not_retried(smsc_factory):
    smsc = smsc_factory("--reject", "254700000000=11")
    async with running(smsc) as esme:
        await until(esme, Bound)
        (f,) = sms.submit_sm_fields("hi", source_addr=CODE, destination_addr="254700000000",
                                    reference=1)
        esme.submit("bad", f)
        failed = await until(esme, Failed)
    assert failed.command_status == 0x0B        # ESME_RINVDSTADR
    assert failed.attempts == 1


async def test_garbage_from_the_smsc_gets_generic_nack_and_the_bind_survives(smsc):
    async with running(smsc) as esme:
        await until(esme, Bound)
        smsc.command(cmd="raw", hex="00000010000000770000000000000bad")   # unknown command
        smsc.command(cmd="raw", hex="000000100000000500000000000000aa")   # deliver_sm, no body
        nacks = [await smsc.wait_for(smsc.recv("generic_nack")) for _ in range(2)]
        smsc.command(cmd="enquire_link")
        assert (await smsc.wait_for(smsc.recv("enquire_link_resp")))["status"] == 0
    assert [(n["seq"], n["status"]) for n in nacks] == [(0xBAD, P.ESME_RINVCMDID),
                                                        (0xAA, P.ESME_RINVCMDLEN)]


async def test_smsc_unbind_answered_then_reconnect(smsc):
    async with running(smsc) as esme:
        await until(esme, Bound)
        smsc.command(cmd="unbind")
        closed = await until(esme, Closed)
        assert closed.by_peer and "unbind" in closed.reason
        await smsc.wait_for(smsc.recv("unbind_resp"))
        await until(esme, Bound)                  # reconnected with backoff
        smsc.command(cmd="close")                 # the SMSC drops the TCP connection
        await until(esme, Closed)
        await until(esme, Bound)
    assert (await smsc.wait_for(smsc.recv("unbind")))["status"] == 0    # ours, on stop


async def test_transmitter_and_receiver_pair(smsc):
    async with running(smsc, config(bind_mode=BindMode.RECEIVER)) as rx, \
            running(smsc, config(bind_mode=BindMode.TRANSMITTER)) as tx:
        await until(rx, Bound)
        await until(tx, Bound)
        smsc.command(cmd="mo", source=PHONE, dest=CODE, text="hi")
        inbound = await until(rx, Inbound)
        assert mo_part(inbound.pdu).body == b"hi"
        await rx.respond(inbound.token)
        (f,) = sms.submit_sm_fields("ok", source_addr=CODE, destination_addr=PHONE,
                                    reference=1, registered_delivery=0)
        tx.submit("r", f)
        await until(tx, Accepted)
    binds = {(await smsc.wait_for(lambda e: e["event"] == "bind"))["command"] for _ in "ab"}
    assert binds == {"bind_receiver", "bind_transmitter"}


async def test_cancellation_still_unbinds(smsc):
    esme = Esme("127.0.0.1", smsc.port, config())
    async with trio.open_nursery() as nursery:
        await nursery.start(esme.run)
        await until(esme, Bound)
        nursery.cancel_scope.cancel()
    unbind = await smsc.wait_for(smsc.recv("unbind"))
    assert unbind["status"] == 0


async def test_enquire_link_keeps_the_bind_and_a_hung_smsc_is_left(smsc):
    async with running(smsc, config(enquire_link_interval=0.05,
                                    enquire_link_timeout=0.2)) as esme:
        await until(esme, Bound)
        await smsc.wait_for(smsc.recv("enquire_link"))
        await smsc.wait_for(smsc.recv("enquire_link"))     # answered, so probed again
        smsc.command(cmd="mute")
        await smsc.wait_for(lambda e: e["event"] == "muted")
        closed = await until(esme, Closed)
        assert closed.reason == "enquire_link_resp missed"
        await until(esme, Bound)                             # a fresh connection


async def test_with_no_smsc_at_all_a_message_past_its_expiry_still_comes_out_expired():
    # Nothing listens: the client never binds, so `ready` never runs. Between its
    # connection attempts it expires what is due, so the SMS is recorded expired
    # instead of waiting, past its validity, for an SMSC that may be gone for days.
    import socket

    from gatewayd.smpp.sender import Expired
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    esme = Esme("127.0.0.1", port, config(),
                backoff=Backoff(initial=0.01, maximum=0.05, jitter=0.0))
    async with trio.open_nursery() as nursery:
        await nursery.start(esme.run)
        esme.submit(("sms", 1, 0, 1), {"destination_addr": "254712345678",
                                       "short_message": b"Habari"},
                    expires_at=trio.current_time() + 0.2)
        expired = await until(esme, Expired)
        assert expired.ref == ("sms", 1, 0, 1) and expired.attempts == 0
        nursery.cancel_scope.cancel()
