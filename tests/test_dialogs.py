"""The sans-I/O dialog engine: both input styles, retries, expiry."""

from __future__ import annotations

from menus.dialogs import Dialogs, Hop, Kind, TextMode

C = TextMode.CUMULATIVE
P = TextMode.PER_HOP


def hop(text, session="s1", msisdn="254712345678", channel="http"):
    return Hop(channel, session, msisdn, "*383#", text)


def test_cumulative_text_yields_only_the_new_input():
    d = Dialogs()
    s = d.on_hop(hop(""), C, 0)
    assert s.kind is Kind.START and s.inputs == ()
    d.answered(s.dialog, "menu", False)
    s = d.on_hop(hop("1"), C, 1)
    assert s.kind is Kind.CONTINUE and s.inputs == ("1",)
    d.answered(s.dialog, "phone?", False)
    s = d.on_hop(hop("1*0712345678"), C, 2)
    assert s.inputs == ("0712345678",)
    d.answered(s.dialog, "amount?", False)
    # An input that itself contains '*' survives whole.
    s = d.on_hop(hop("1*0712345678*5*0"), C, 3)
    assert s.inputs == ("5*0",)


def test_shortcut_dial_carries_inputs_on_the_first_hop():
    s = Dialogs().on_hop(hop("1*2"), C, 0)
    assert s.kind is Kind.START and s.inputs == ("1", "2")


def test_retried_hop_repeats_the_last_reply_without_new_input():
    d = Dialogs()
    s = d.on_hop(hop(""), C, 0)
    d.answered(s.dialog, "menu", False)
    s = d.on_hop(hop("1"), C, 1)
    d.answered(s.dialog, "phone?", False)
    again = d.on_hop(hop("1"), C, 2)
    assert again.kind is Kind.REPEAT and again.dialog.last_reply == ("phone?", False)


def test_ended_dialog_answers_a_retry_with_the_same_end_not_a_replay():
    d = Dialogs()
    s = d.on_hop(hop(""), C, 0)
    d.answered(s.dialog, "menu", False)
    s = d.on_hop(hop("1*1"), C, 1)
    d.answered(s.dialog, "Loan request sent", True)
    retry = d.on_hop(hop("1*1"), C, 2)
    assert retry.kind is Kind.REPEAT
    assert retry.dialog.last_reply == ("Loan request sent", True)


def test_network_sending_only_the_newest_input_is_understood():
    d = Dialogs()
    s = d.on_hop(hop(""), C, 0)
    d.answered(s.dialog, "menu", False)
    s = d.on_hop(hop("1"), C, 1)
    d.answered(s.dialog, "phone?", False)
    s = d.on_hop(hop("0712345678"), C, 2)
    assert s.inputs == ("0712345678",)


def test_per_hop_mode_takes_each_text_whole():
    d = Dialogs()
    s = d.on_hop(hop(""), P, 0)
    d.answered(s.dialog, "menu", False)
    s = d.on_hop(hop("1"), P, 1)
    d.answered(s.dialog, "x", False)
    s = d.on_hop(hop("1"), P, 2)  # the same key twice is two inputs here
    assert s.kind is Kind.CONTINUE and s.inputs == ("1",)


def test_idle_dialogs_expire_and_a_late_hop_starts_over():
    d = Dialogs(idle_seconds=180)
    s = d.on_hop(hop(""), C, 0)
    d.answered(s.dialog, "menu", False)
    assert d.expire(100) == [] and len(d) == 1
    assert [x.session_id for x in d.expire(181)] == ["s1"]
    assert len(d) == 0
    s = d.on_hop(hop(""), C, 500)
    assert s.kind is Kind.START


def test_dialogs_are_keyed_by_channel_and_session():
    d = Dialogs()
    a = d.on_hop(hop("", channel="http"), C, 0)
    b = d.on_hop(hop("", channel="smpp"), C, 0)
    assert a.dialog is not b.dialog and len(d) == 2


def test_another_phone_on_the_same_session_id_gets_a_fresh_dialog():
    d = Dialogs()
    s = d.on_hop(hop(""), C, 0)
    d.answered(s.dialog, "menu", False)
    s.dialog.app_state["secret"] = 1
    other = d.on_hop(hop("", msisdn="254722000000"), C, 1)
    assert other.kind is Kind.START and other.dialog.app_state == {}
