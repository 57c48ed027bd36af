"""The ESME session state machine, driven with explicit bytes and explicit time."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatewayd.smpp import pdu as P
from gatewayd.smpp.pdu import Framer, Pdu
from gatewayd.smpp.session import (
    Backoff,
    BindFailed,
    BindMode,
    Bound,
    Closed,
    DeliverSm,
    EsmeSession,
    ProtocolWarning,
    SessionConfig,
    SessionError,
    State,
    SubmitSmResp,
    SubmitUnanswered,
    retry_rule,
)

CONFIG = SessionConfig("gatewayd", "secret", window=2, response_timeout=5.0,
                       enquire_link_interval=30.0, enquire_link_timeout=10.0)


def sent(session: EsmeSession) -> list[Pdu]:
    out = []
    for frame in Framer().feed(session.data_to_send()):
        out.append(P.decode(frame))
    return out


def resp(command: str, seq: int, status: int = 0, **fields) -> bytes:
    return P.encode(Pdu(command, seq, status, fields))


def bound_session(config: SessionConfig = CONFIG, now: float = 0.0) -> EsmeSession:
    s = EsmeSession(config)
    s.start(now)
    (bind,) = sent(s)
    events = s.receive_data(resp(bind.command + "_resp", bind.sequence_number,
                                 system_id="smsc"), now)
    assert events == [Bound("smsc")]
    return s


def test_bind_sends_credentials_and_becomes_bound():
    s = EsmeSession(CONFIG)
    assert s.state is State.CLOSED
    s.start(0.0)
    (bind,) = sent(s)
    assert bind.command == "bind_transceiver"
    assert (bind["system_id"], bind["password"], bind["interface_version"]) == (
        "gatewayd", "secret", 0x34)
    assert s.state is State.BINDING
    assert s.receive_data(resp("bind_transceiver_resp", bind.sequence_number), 1.0) == [
        Bound("")]
    assert s.state is State.BOUND


@pytest.mark.parametrize("mode, command", [(BindMode.TRANSMITTER, "bind_transmitter"),
                                           (BindMode.RECEIVER, "bind_receiver")])
def test_bind_modes(mode, command):
    s = EsmeSession(SessionConfig("a", "b", bind_mode=mode))
    s.start(0.0)
    assert sent(s)[0].command == command


@pytest.mark.parametrize("status, bad", [(P.ESME_RINVPASWD, True), (P.ESME_RBINDFAIL, True),
                                         (P.ESME_RINVSYSID, True), (P.ESME_RSYSERR, False),
                                         (P.ESME_RALYBND, False)])
def test_bind_refused_says_whether_credentials_are_bad(status, bad):
    s = EsmeSession(CONFIG)
    s.start(0.0)
    seq = sent(s)[0].sequence_number
    events = s.receive_data(resp("bind_transceiver_resp", seq, status), 0.5)
    assert isinstance(events[0], BindFailed)
    assert events[0].bad_credentials is bad and events[0].command_status == status
    assert isinstance(events[-1], Closed) and s.state is State.CLOSED


def test_bind_timeout():
    s = EsmeSession(CONFIG)
    s.start(0.0)
    assert s.next_deadline() == CONFIG.bind_timeout
    assert s.tick(CONFIG.bind_timeout - 0.01) == []
    events = s.tick(CONFIG.bind_timeout)
    assert events[0] == BindFailed(None, False, "no bind response in time")
    assert s.state is State.CLOSED


def test_submit_window_and_response():
    s = bound_session()
    a = s.send_submit_sm({"destination_addr": "1", "short_message": b"a"}, "A", 1.0)
    b = s.send_submit_sm({"destination_addr": "2", "short_message": b"b"}, "B", 1.0)
    assert a != b and s.window_free == 0 and not s.can_submit
    with pytest.raises(SessionError, match="window full"):
        s.send_submit_sm({}, "C", 1.0)
    assert [p.command for p in sent(s)] == ["submit_sm", "submit_sm"]
    events = s.receive_data(resp("submit_sm_resp", b, message_id="1F"), 2.0)
    assert events == [SubmitSmResp("B", b, 0, "1F")]
    assert s.window_free == 1 and s.can_submit
    events = s.receive_data(resp("submit_sm_resp", a, P.ESME_RTHROTTLED), 2.0)
    assert events == [SubmitSmResp("A", a, P.ESME_RTHROTTLED, None)]


def test_submit_response_timeout_frees_the_window():
    s = bound_session()
    seq = s.send_submit_sm({"short_message": b"a"}, "A", 10.0)
    assert s.next_deadline() == 15.0
    assert s.tick(14.9) == []
    assert s.tick(15.0) == [SubmitUnanswered("A", seq, "timeout")]
    assert s.window_free == 2
    # The late answer is only a warning: the sender already decided.
    assert isinstance(s.receive_data(resp("submit_sm_resp", seq, message_id="x"), 16.0)[0],
                      ProtocolWarning)


def test_generic_nack_answers_a_submit():
    s = bound_session()
    seq = s.send_submit_sm({"short_message": b"a"}, "A", 1.0)
    events = s.receive_data(resp("generic_nack", seq, P.ESME_RINVCMDLEN), 1.5)
    assert events == [SubmitSmResp("A", seq, P.ESME_RINVCMDLEN, None)]


def test_enquire_link_on_idle_and_dead_link_detected():
    s = bound_session(now=0.0)
    sent(s)
    assert s.next_deadline() == 30.0
    assert s.tick(29.0) == [] and s.data_to_send() == b""
    s.tick(30.0)
    (el,) = sent(s)
    assert el.command == "enquire_link"
    assert s.next_deadline() == 40.0
    events = s.tick(40.0)
    assert events == [Closed("enquire_link_resp missed", False)]
    assert s.state is State.CLOSED


def test_enquire_link_answered_keeps_the_link():
    s = bound_session(now=0.0)
    s.tick(30.0)
    (el,) = sent(s)
    assert s.receive_data(resp("enquire_link_resp", el.sequence_number), 31.0) == []
    assert s.tick(45.0) == [] and s.state is State.BOUND
    assert s.next_deadline() == 61.0        # idle again from the last thing heard


def test_traffic_postpones_enquire_link():
    s = bound_session(now=0.0)
    s.receive_data(P.encode(Pdu("enquire_link", 99)), 25.0)
    assert [p.command for p in sent(s)] == ["enquire_link_resp"]
    assert s.tick(30.0) == [] and s.data_to_send() == b""
    assert s.next_deadline() == 55.0


def test_answers_smsc_enquire_link_with_same_sequence():
    s = bound_session()
    s.receive_data(P.encode(Pdu("enquire_link", 1234)), 1.0)
    (r,) = sent(s)
    assert (r.command, r.sequence_number, r.command_status) == ("enquire_link_resp", 1234, 0)


def test_smsc_unbind_is_answered_and_outstanding_submits_are_unanswered():
    s = bound_session()
    seq = s.send_submit_sm({"short_message": b"a"}, "A", 1.0)
    sent(s)
    events = s.receive_data(P.encode(Pdu("unbind", 50)), 2.0)
    assert events == [SubmitUnanswered("A", seq, "unbind by the SMSC"),
                      Closed("unbind by the SMSC", True)]
    (r,) = sent(s)
    assert (r.command, r.sequence_number) == ("unbind_resp", 50)


def test_our_unbind():
    s = bound_session()
    sent(s)
    s.unbind(1.0)
    (u,) = sent(s)
    assert u.command == "unbind" and s.state is State.UNBINDING
    with pytest.raises(SessionError):
        s.send_submit_sm({}, "A", 1.0)
    assert s.receive_data(resp("unbind_resp", u.sequence_number), 1.5) == [
        Closed("unbound", False)]


def test_deliver_sm_is_answered_only_when_the_caller_says():
    s = bound_session()
    sent(s)
    deliver = Pdu("deliver_sm", 77, 0, {"source_addr": "254712345678", "short_message": b"hi"})
    events = s.receive_data(P.encode(deliver), 1.0)
    assert len(events) == 1 and isinstance(events[0], DeliverSm)
    assert events[0].sequence_number == 77 and events[0].pdu["short_message"] == b"hi"
    assert s.data_to_send() == b""          # nothing until committed
    assert s.respond(77) is True
    (r,) = sent(s)
    assert (r.command, r.sequence_number, r.command_status) == ("deliver_sm_resp", 77, 0)
    with pytest.raises(SessionError):
        s.respond(77)


def test_respond_after_the_connection_went_is_a_no_op():
    s = bound_session()
    s.receive_data(P.encode(Pdu("deliver_sm", 5, 0, {"short_message": b"x"})), 1.0)
    s.connection_lost(2.0)
    assert s.respond(5) is False and s.data_to_send() == b""


def test_deliver_sm_to_a_transmitter_is_refused():
    s = bound_session(SessionConfig("a", "b", bind_mode=BindMode.TRANSMITTER))
    sent(s)
    events = s.receive_data(P.encode(Pdu("deliver_sm", 5, 0, {"short_message": b"x"})), 1.0)
    assert isinstance(events[0], ProtocolWarning)
    (r,) = sent(s)
    assert (r.command, r.command_status) == ("deliver_sm_resp", P.ESME_RINVBNDSTS)


def test_undecodable_request_gets_generic_nack_with_its_sequence():
    s = bound_session()
    sent(s)
    bad = P.HEADER.pack(16, 0x00000005, 0, 4242)          # deliver_sm without a body
    unknown = P.HEADER.pack(16, 0x00000077, 0, 4243)
    events = s.receive_data(bad + unknown, 1.0)
    assert all(isinstance(e, ProtocolWarning) for e in events) and len(events) == 2
    nacks = sent(s)
    assert [(n.command, n.command_status, n.sequence_number) for n in nacks] == [
        ("generic_nack", P.ESME_RINVCMDLEN, 4242), ("generic_nack", P.ESME_RINVCMDID, 4243)]
    assert s.state is State.BOUND          # one bad PDU costs one PDU


def test_framing_error_nacks_and_closes():
    s = bound_session()
    seq = s.send_submit_sm({"short_message": b"a"}, "A", 1.0)
    sent(s)
    events = s.receive_data(P.HEADER.pack(8, 5, 0, 31), 2.0)
    assert events[0] == SubmitUnanswered("A", seq, events[0].reason)
    assert isinstance(events[-1], Closed) and "framing" in events[-1].reason
    (n,) = sent(s)
    assert (n.command, n.command_status, n.sequence_number) == (
        "generic_nack", P.ESME_RINVCMDLEN, 31)
    assert s.receive_data(P.encode(Pdu("enquire_link", 1)), 3.0) == []


def test_sequence_numbers_wrap_and_skip_outstanding():
    s = bound_session(SessionConfig("a", "b", window=10))
    s._next_sequence = P.MAX_SEQUENCE
    first = s.send_submit_sm({}, "A", 0.0)
    second = s.send_submit_sm({}, "B", 0.0)
    assert (first, second) == (P.MAX_SEQUENCE, 1)
    s._next_sequence = 1                     # 1 is still outstanding
    assert s.send_submit_sm({}, "C", 0.0) == 2


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=12))
def test_arbitrary_bytes_never_crash_a_bound_session(chunks):
    s = bound_session()
    for i, chunk in enumerate(chunks):
        for e in s.receive_data(chunk, float(i)):
            assert isinstance(e, (ProtocolWarning, Closed, DeliverSm, SubmitUnanswered))
        s.tick(float(i))
        s.data_to_send()


def test_retry_policy_table():
    assert retry_rule(P.ESME_RTHROTTLED).slow_down
    assert retry_rule(P.ESME_RMSGQFUL).slow_down
    assert retry_rule(P.ESME_RSYSERR).attempts == 3
    assert retry_rule(0x0B) is None         # ESME_RINVDSTADR: permanent


def test_backoff_grows_with_jitter_and_is_slow_for_bad_credentials():
    b = Backoff(initial=1.0, maximum=8.0, jitter=0.5, bad_credentials_delay=300.0,
                rng=random.Random(1))
    delays = [b.next_delay() for _ in range(6)]
    for d, base in zip(delays, [1, 2, 4, 8, 8, 8]):
        assert base * 0.5 <= d <= base
    assert len(set(delays)) == len(delays)   # jittered
    assert 150.0 <= b.next_delay(bad_credentials=True) <= 300.0
    b.reset()
    assert b.next_delay() <= 1.0
