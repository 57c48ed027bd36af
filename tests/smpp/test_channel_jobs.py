"""The SMPP channel's writer jobs on a real store: inbound parts, their answers, the sweep,
and arbitrary deliver_sm content that must never cost more than that one PDU."""

from __future__ import annotations

import sqlite3

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gatewayd import smpp_jobs as jobs
from gatewayd.smpp.pdu import Pdu
from gatewayd.smpp.sms import concat_udh
from menus.gsm0338 import encode_septets
from store import migrations
from store.writer import connect

NOW = 1_800_000_000.0
PHONE = "254712345678"


def ctx(settings, texts) -> jobs.JobContext:
    return jobs.JobContext(settings=settings, texts=texts, validity=86400.0,
                           dedupe_window=600.0, concat_timeout=120.0,
                           reply_limiter=jobs.reply_limiter())


def run(conn, pdus, c, now=NOW):
    ops = [jobs.inbound_op(p) for p in pdus]
    conn.execute("BEGIN IMMEDIATE")
    results = jobs.apply_batch(conn, [o for o in ops if o], c, now)
    conn.execute("COMMIT")
    return results


def deliver(text: str = "", **fields) -> Pdu:
    base = {"source_addr": PHONE, "destination_addr": "383", "data_coding": 0,
            "esm_class": 0, "short_message": bytes(encode_septets(text))}
    return Pdu("deliver_sm", 1, 0, {**base, **fields})


def test_single_sms_is_answered_in_the_same_transaction(conn, settings, texts):
    [r] = run(conn, [deliver("HELP")], ctx(settings, texts))
    assert (r.kind, r.command) == ("message", "help")
    inbox = conn.execute("SELECT * FROM sms_inbox").fetchone()
    reply = conn.execute("SELECT * FROM sms_outbox WHERE id = ?", (r.reply_id,)).fetchone()
    assert inbox["reply_id"] == reply["id"] and reply["msisdn"] == PHONE
    assert reply["body"] == texts["en"].get("sms_help", service=settings.service,
                                            code=settings.short_code)
    # The SMSC's resend (its deliver_sm_resp was lost) is dropped.
    assert run(conn, [deliver("HELP")], ctx(settings, texts))[0].kind == "duplicate"
    assert conn.execute("SELECT COUNT(*) FROM sms_outbox").fetchone()[0] == 1


def test_parts_across_batches_and_a_long_sms_whose_parts_stopped(conn, settings, texts):
    c = ctx(settings, texts)
    text = "MSAADA " + "tafadhali nisaidie " * 12
    body = bytes(encode_septets(text))
    half = len(body) // 2
    p1 = deliver(esm_class=0x40, short_message=concat_udh(7, 2, 1) + body[:half])
    p2 = deliver(esm_class=0x40, short_message=concat_udh(7, 2, 2) + body[half:])
    assert run(conn, [p2], c)[0].kind == "waiting"     # committed: survives a restart
    assert run(conn, [p2], c)[0].kind == "duplicate"
    [whole] = run(conn, [p1], c)
    assert (whole.kind, whole.command, whole.parts) == ("message", "help", 2)
    assert conn.execute("SELECT body FROM sms_inbox").fetchone()[0] == text

    lost = deliver(esm_class=0x40, short_message=concat_udh(8, 3, 1) + b"BAL")
    run(conn, [lost], c)
    conn.execute("BEGIN IMMEDIATE")
    assert jobs.sweep(conn, c, NOW + 121, frozenset()) == {"expired": 0, "incomplete": 1}
    conn.execute("COMMIT")
    row = conn.execute("SELECT complete, command, parts FROM sms_inbox ORDER BY id DESC"
                       ).fetchone()
    assert tuple(row) == (0, "balance", 1)      # what came of it, answered as it is


def test_receipt_without_a_message_we_know_changes_nothing(conn, settings, texts):
    pdu = deliver(esm_class=0x04, receipted_message_id="abc", message_state=2)
    [r] = run(conn, [pdu], ctx(settings, texts))
    assert r.sms_id is None
    assert conn.execute("SELECT COUNT(*) FROM sms_inbox").fetchone()[0] == 0


def test_an_alphanumeric_sender_is_kept_not_answered(conn, settings, texts):
    [r] = run(conn, [deliver("PROMO 1234", source_addr="SAFARICOM")], ctx(settings, texts))
    assert r.command == "not_a_phone" and r.reply_id is None
    assert conn.execute("SELECT body FROM sms_inbox").fetchone()[0] == "PROMO ****"


def test_a_phone_texting_in_a_loop_is_not_answered_in_a_loop(conn, settings, texts):
    c = ctx(settings, texts)
    results = [run(conn, [deliver(f"hello {i}")], c)[0] for i in range(jobs.REPLY_BURST + 3)]
    assert [r.reply_id is not None for r in results] == [True] * jobs.REPLY_BURST + [False] * 3
    assert conn.execute("SELECT COUNT(*) FROM sms_inbox").fetchone()[0] == len(results)


_fields = st.fixed_dictionaries({
    "source_addr": st.one_of(st.just(PHONE), st.text(max_size=21)),
    "destination_addr": st.text(max_size=21),
    "esm_class": st.integers(0, 255),
    "data_coding": st.integers(0, 255),
    "short_message": st.binary(max_size=254),
}, optional={
    "receipted_message_id": st.text(max_size=65),
    "message_state": st.integers(0, 255),
    "sar_msg_ref_num": st.integers(0, 0xFFFF),
    "sar_total_segments": st.integers(0, 255),
    "sar_segment_seqnum": st.integers(0, 255),
    "message_payload": st.binary(max_size=600),
})


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(_fields, min_size=1, max_size=6))
def test_arbitrary_deliver_sm_content_never_fails_an_op(tmp_path_factory, settings, texts,
                                                          batch):
    conn: sqlite3.Connection = connect(str(tmp_path_factory.mktemp("db") / "g.db"))
    try:
        migrations.migrate(conn)
        pdus = [Pdu("deliver_sm", i + 1, 0, f) for i, f in enumerate(batch)]
        results = run(conn, pdus, ctx(settings, texts))
        assert not [r for r in results if isinstance(r, jobs.OpFailed)]
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    finally:
        conn.close()


def test_a_receipt_that_overtook_its_id_waits_at_most_a_response_timeout():
    from gatewayd.smpp_stats import ReceiptParking
    from store.sms import ReceiptResult
    parking, unknown = ReceiptParking(), ReceiptResult(None)
    op = jobs.ReceiptIn(("t:1a2b",), "DELIVERED", None)
    assert not parking.park(op, ReceiptResult(None, ambiguous=True), False, 0.0, 10.0)
    assert not parking.park(op, ReceiptResult(7, 0, True, "delivered"), False, 0.0, 10.0)
    assert parking.park(op, unknown, False, now=0.0, wait=10.0)
    assert parking.expired(5.0) == [] and len(parking) == 1
    [again] = parking.take()
    assert again is op and len(parking) == 0
    assert parking.park(again, unknown, True, now=6.0, wait=10.0)     # keeps its deadline
    assert parking.expired(10.0) == [op] and len(parking) == 0


def test_only_the_sending_channel_expires(conn, settings, texts):
    # Each channel sweeps with its own validity; the one not sending must not expire
    # rows by a shorter one of its own.
    from store import outbox
    with conn:
        old = outbox.queue_sms(conn, "site-1", PHONE, "Habari", NOW - 2 * 86400)
    c = ctx(settings, texts)
    with conn:
        assert jobs.sweep(conn, c, NOW, frozenset(), False)["expired"] == 0
    assert conn.execute("SELECT state FROM sms_outbox WHERE id = ?", (old,)).fetchone()[0] \
        == "queued"
    with conn:
        assert jobs.sweep(conn, c, NOW, frozenset(), True)["expired"] == 1
    assert conn.execute("SELECT state FROM sms_outbox WHERE id = ?", (old,)).fetchone()[0] \
        == "expired"

