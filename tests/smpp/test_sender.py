"""Submit rate, slow-down on ESME_RTHROTTLED / ESME_RMSGQFUL, retries, expiry."""

from __future__ import annotations

from gatewayd.smpp import pdu as P
from gatewayd.smpp.sender import Accepted, Expired, Failed, Retrying, Sender
from gatewayd.smpp.session import RetryRule, SubmitSmResp


def resp(ref, status=0, message_id="1"):
    return SubmitSmResp(ref, 1, status, message_id if status == 0 else None)


def refs(outgoing):
    return [o.ref for o in outgoing]


def test_rate_limits_releases():
    s = Sender(rate=2.0, burst=1)
    for i in range(5):
        s.enqueue(i, {}, 0.0)
    out, _ = s.ready(0.0, window_free=10)
    assert refs(out) == [0]
    assert s.next_deadline(0.0) == 0.5
    assert refs(s.ready(0.4, 10)[0]) == []
    assert refs(s.ready(0.5, 10)[0]) == [1]
    assert refs(s.ready(2.0, 10)[0]) == [2]       # burst 1: no saving up


def test_window_limits_releases():
    s = Sender(rate=100.0, burst=10)
    for i in range(5):
        s.enqueue(i, {}, 0.0)
    assert refs(s.ready(0.0, window_free=2)[0]) == [0, 1]
    assert s.inflight == 2 and s.queued == 3


def test_throttled_pauses_everything_halves_rate_and_retries():
    s = Sender(rate=10.0, burst=10, initial_pause=1.0)
    s.enqueue("a", {}, 0.0)
    s.enqueue("b", {}, 0.0)
    assert refs(s.ready(0.0, 1)[0]) == ["a"]
    got = s.on_submit_sm_resp(resp("a", P.ESME_RTHROTTLED), 0.1)
    assert got == Retrying("a", P.ESME_RTHROTTLED, 1.1, 1)
    assert s.current_rate == 5.0 and s.paused_until == 1.1
    assert refs(s.ready(1.0, 10)[0]) == []                   # b waits too
    assert refs(s.ready(1.1, 10)[0]) == ["a", "b"]           # order kept
    # A second throttle in a row pauses twice as long.
    assert s.on_submit_sm_resp(resp("a", P.ESME_RTHROTTLED), 1.2).at == 3.2
    assert s.current_rate == 2.5
    # Acceptance resets the pause growth and brings the rate back step by step.
    assert s.on_submit_sm_resp(resp("b", 0, "ff"), 1.3) == Accepted("b", "ff", 1)
    assert s.current_rate == 3.5


def test_queue_full_slows_down_too():
    s = Sender(rate=10.0)
    s.enqueue("a", {}, 0.0)
    s.ready(0.0, 1)
    assert isinstance(s.on_submit_sm_resp(resp("a", P.ESME_RMSGQFUL), 0.0), Retrying)
    assert s.current_rate == 5.0 and s.paused_until > 0.0


def test_system_error_retries_a_few_times_then_fails():
    s = Sender(rate=100.0, burst=10, policy={P.ESME_RSYSERR: RetryRule(2, 30.0)})
    s.enqueue("a", {}, 0.0)
    s.ready(0.0, 1)
    got = s.on_submit_sm_resp(resp("a", P.ESME_RSYSERR), 0.0)
    assert got == Retrying("a", P.ESME_RSYSERR, 30.0, 1)
    assert s.current_rate == 100.0                              # not a slow-down
    assert refs(s.ready(29.0, 1)[0]) == []
    assert refs(s.ready(30.0, 1)[0]) == ["a"]
    got = s.on_submit_sm_resp(resp("a", P.ESME_RSYSERR), 31.0)
    assert isinstance(got, Failed) and got.attempts == 2


def test_permanent_error_fails_at_once():
    s = Sender()
    s.enqueue("a", {}, 0.0)
    s.ready(0.0, 1)
    got = s.on_submit_sm_resp(resp("a", 0x0B), 0.0)
    assert isinstance(got, Failed) and "RINVDSTADR" in got.reason and got.attempts == 1


def test_unanswered_is_retried():
    s = Sender()
    s.enqueue("a", {}, 0.0)
    s.ready(0.0, 1)
    assert s.on_unanswered("a", 5.0) == Retrying("a", None, 15.0, 1)
    assert s.on_unanswered("zzz", 5.0) is None


def test_expiry_before_sending_and_on_retry():
    s = Sender(rate=1.0)
    s.enqueue("old", {}, 0.0, expires_at=10.0)
    s.enqueue("new", {}, 0.0, expires_at=1000.0)
    out, expired = s.ready(10.0, 5)
    assert expired == [Expired("old", 0)]
    assert refs(out) == ["new"]
    # Sent with the time it has left as validity_period (relative form).
    assert out[0].fields["validity_period"] == "000000001630000R"
    got = s.on_submit_sm_resp(resp("new", P.ESME_RSYSERR), 999.0)
    assert got == Expired("new", 1)              # its retry would come after expiry


def test_next_deadline_accounts_for_pause_and_expiry():
    s = Sender(rate=10.0, initial_pause=4.0)
    assert s.next_deadline(0.0) is None
    s.enqueue("a", {}, 0.0)
    s.enqueue("b", {}, 0.0, expires_at=2.0)
    s.ready(0.0, 1)
    s.on_submit_sm_resp(resp("a", P.ESME_RTHROTTLED), 0.0)
    assert s.next_deadline(0.0) == 2.0           # b's expiry comes before the pause ends


def test_each_status_counts_its_own_refusals():
    s = Sender(rate=1000.0, initial_pause=0.0,
               policy={P.ESME_RTHROTTLED: RetryRule(5, 1.0, slow_down=True),
                       P.ESME_RSYSERR: RetryRule(2, 0.0)})
    s.enqueue("a", {}, 0.0)
    for t, status in enumerate((P.ESME_RTHROTTLED, P.ESME_RTHROTTLED, P.ESME_RSYSERR)):
        assert refs(s.ready(10.0 + t, 1)[0]) == ["a"]
        assert isinstance(s.on_submit_sm_resp(resp("a", status), 10.0 + t), Retrying)
    assert refs(s.ready(20.0, 1)[0]) == ["a"]
    got = s.on_submit_sm_resp(resp("a", P.ESME_RSYSERR), 20.0)
    assert isinstance(got, Failed) and got.attempts == 4


def test_urgent_goes_first():
    s = Sender(rate=100.0, burst=10)
    s.enqueue("sms-1", {}, 0.0)
    s.enqueue("sms-2", {}, 0.0)
    s.enqueue("ussd", {}, 0.0, urgent=True)
    assert refs(s.ready(0.0, 3)[0]) == ["ussd", "sms-1", "sms-2"]


def test_lost_connection_resends_on_the_next_bind_without_the_timeout_delay():
    s = Sender()
    s.enqueue("a", {}, 0.0)
    s.ready(0.0, 1)
    assert s.on_unanswered("a", 5.0, connection_lost=True) == Retrying("a", None, 5.0, 1)
    assert refs(s.ready(5.0, 1)[0]) == ["a"]


def test_cancel_takes_a_queued_message_out_but_not_one_in_flight():
    s = Sender(rate=100.0, burst=10)
    for ref in ("p0", "p1", "p2"):
        s.enqueue(ref, {}, 0.0)
    assert refs(s.ready(0.0, 1)[0]) == ["p0"]
    assert s.cancel("p2") and not s.cancel("p0") and not s.cancel("nope")
    assert refs(s.ready(1.0, 10)[0]) == ["p1"]
    s.enqueue("p2", {}, 1.0)                 # the ref is free again
    assert s.queued == 1


def test_never_sent_is_only_a_message_no_smsc_can_have_seen():
    s = Sender(rate=100.0, burst=10)
    s.enqueue("a", {}, 0.0)
    s.enqueue("b", {}, 0.0)
    assert s.never_sent("a") and s.never_sent("b") and not s.never_sent("c")
    out, _ = s.ready(0.0, window_free=1)                 # "a" written to the SMSC
    assert refs(out) == ["a"] and not s.never_sent("a") and s.never_sent("b")
    s.on_unanswered("a", 1.0, connection_lost=True)      # back in the queue: maybe seen
    assert not s.never_sent("a")



def test_expire_due_takes_out_what_is_past_its_expiry_without_a_bind():
    # Between connection attempts nothing calls ready(): SMS past their validity must
    # still come out (and be recorded expired), not wait for an SMSC that is gone.
    s = Sender(rate=100.0, burst=10)
    s.enqueue("old", {}, 0.0, expires_at=10.0)
    s.enqueue("new", {}, 0.0, expires_at=100.0)
    assert [e.ref for e in s.expire_due(50.0)] == ["old"]
    assert s.queued == 1 and s.never_sent("new")
    assert s.expire_due(50.0) == []
