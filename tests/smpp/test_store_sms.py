"""store.sms on a real SQLite file: outbox states, message ids, receipts, inbound parts."""

from __future__ import annotations

import json

import pytest

from gatewayd.smpp.receipts import message_id_keys
from store import outbox
from store import sms as S

NOW = 1_800_000_000.0
DAY = 86400.0


def txn(conn, fn, *args):
    """One writer transaction, as store.write runs it."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn(conn, *args)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return result


def queue(conn, body="hello", now=NOW, ttl=DAY):
    return txn(conn, outbox.queue_sms, "s1", "254712345678", body, now, ttl)


def state(conn, sms_id):
    return conn.execute("SELECT state, attempts, last_error FROM sms_outbox WHERE id = ?",
                        (sms_id,)).fetchone()


def changes(conn, sms_id):
    key = conn.execute("SELECT key FROM sms_outbox WHERE id = ?", (sms_id,)).fetchone()[0]
    return [r[0] for r in conn.execute(
        "SELECT op FROM change_log WHERE entity = 'sms' AND entity_key = ? ORDER BY seq", (key,))]


def accept(conn, sms_id, part, parts, message_id, attempts=1, now=NOW):
    return txn(conn, S.part_accepted, sms_id, part, parts, message_id,
               message_id_keys(message_id), attempts, now)


def receipt(conn, message_id, stat="DELIVERED", error=None, now=NOW + 5):
    return txn(conn, S.apply_receipt, message_id_keys(message_id), stat, error, now)


def test_sendable_skips_held_and_past_validity_and_names_accepted_parts(conn):
    a, b, c = queue(conn, "a"), queue(conn, "b"), queue(conn, "c", now=NOW - 2 * 3600)
    accept(conn, b, 0, 2, "b0")
    got = S.sendable(conn, NOW, held={a}, limit=10, validity=3600)
    assert [(r.id, r.done_parts) for r in got] == [(b, frozenset({0}))]      # c too old
    assert got[0].deadline == NOW + 3600          # the validity, shorter than expires_at
    assert [r.id for r in S.sendable(conn, NOW, held=(), limit=1, validity=3600)] == [a]
    assert c not in [r.id for r in S.sendable(conn, NOW, held=(), limit=9, validity=3600)]


def test_parts_accepted_then_submitted_once_with_a_change_log_record(conn):
    sms_id = queue(conn)
    assert accept(conn, sms_id, 1, 2, "aa01", attempts=2) is None
    assert state(conn, sms_id)["state"] == "queued"
    assert accept(conn, sms_id, 0, 2, "aa00") == "submitted"
    assert tuple(state(conn, sms_id))[:2] == ("submitted", 2)
    assert changes(conn, sms_id) == ["queued", "submitted"]
    payload = json.loads(conn.execute("SELECT payload FROM change_log ORDER BY seq DESC "
                                      "LIMIT 1").fetchone()[0])
    assert payload["state"] == "submitted" and payload["attempts"] == 2


@pytest.mark.parametrize("submit_id, receipt_id", [
    ("1a2b3c00", "1a2b3c00"), ("1a2b3c00", "439041024"), ("1a2b3c00", "0001A2B3C00")])
def test_receipt_matches_the_id_however_spelled(conn, submit_id, receipt_id):
    sms_id = queue(conn)
    accept(conn, sms_id, 0, 1, submit_id)
    r = receipt(conn, receipt_id)
    assert (r.sms_id, r.part, r.changed, r.state) == (sms_id, 0, True, "delivered")
    assert changes(conn, sms_id) == ["queued", "submitted", "delivered"]


def test_duplicate_and_out_of_order_receipts_change_nothing(conn):
    sms_id = queue(conn)
    accept(conn, sms_id, 0, 1, "77")
    assert receipt(conn, "77", "ENROUTE").changed
    assert state(conn, sms_id)["state"] == "submitted"
    assert receipt(conn, "77", "ENROUTE").changed is False          # the same again
    assert receipt(conn, "77", "DELIVERED").state == "delivered"
    late = receipt(conn, "77", "ENROUTE")                            # overtaken
    again = receipt(conn, "77", "DELIVERED")
    assert (late.changed, again.changed, again.state) == (False, False, "delivered")
    assert changes(conn, sms_id) == ["queued", "submitted", "delivered"]


def test_unknown_and_ambiguous_ids_are_refused(conn):
    assert receipt(conn, "deadbeef").sms_id is None
    a, b = queue(conn), queue(conn)
    accept(conn, a, 0, 1, "10")       # under "auto": hex 16 or decimal 10
    accept(conn, b, 0, 1, "16")       # decimal 16 or hex 22
    r = txn(conn, S.apply_receipt, ("n:16",), "DELIVERED", None, NOW)
    assert r.sms_id is None and r.ambiguous
    assert receipt(conn, "10").sms_id == a      # the exact spelling still matches


def test_long_sms_delivered_on_its_first_receipt_and_failed_by_a_later_part(conn):
    sms_id = queue(conn)
    accept(conn, sms_id, 0, 2, "a0")
    assert receipt(conn, "a0").state == "queued"          # part 2 not accepted yet
    assert accept(conn, sms_id, 1, 2, "a1") == "delivered"
    r = receipt(conn, "a1", "UNDELIVERABLE", error="034")
    assert r.state == "failed"
    assert tuple(state(conn, sms_id)) == ("failed", 1, "part 2/2: UNDELIVERABLE err:034")


def test_an_id_the_smsc_reused_names_its_latest_message(conn):
    old, new = queue(conn), queue(conn)
    accept(conn, old, 0, 1, "1a2b3c00", now=NOW - 3600)
    receipt(conn, "1a2b3c00", now=NOW - 3000)
    accept(conn, new, 0, 1, "1a2b3c00")
    assert receipt(conn, "1a2b3c00").sms_id == new


def test_failed_expired_retrying_and_expiry_by_validity(conn):
    a, b, c, held = queue(conn), queue(conn), queue(conn, now=NOW - 7200), queue(conn, now=NOW - 7200)
    txn(conn, S.part_retrying, a, 3, "ESME_RTHROTTLED", NOW)
    assert tuple(state(conn, a)) == ("queued", 3, "ESME_RTHROTTLED")
    assert txn(conn, S.part_failed, a, 4, "ESME_RINVDSTADR is permanent", NOW)
    assert txn(conn, S.part_expired, b, 0, NOW)
    assert txn(conn, S.expire_due, NOW, 3600, {held}) == [c]
    assert [state(conn, i)["state"] for i in (a, b, c, held)] == [
        "failed", "expired", "expired", "queued"]
    assert changes(conn, a) == ["queued", "failed"]
    assert not txn(conn, S.part_failed, b, 1, "late", NOW)          # expired stays expired


def test_inbound_dedupe_window(conn):
    assert txn(conn, S.seen_recently, "k", NOW, 600) is False
    assert txn(conn, S.seen_recently, "k", NOW + 599, 600) is True
    assert txn(conn, S.seen_recently, "k", NOW + 601, 600) is False     # a new message
    txn(conn, S.prune, NOW + 2000, 600)
    assert conn.execute("SELECT COUNT(*) FROM sms_mo_seen").fetchone()[0] == 0


def test_parts_filed_until_whole_and_stale_groups_given_up(conn):
    def add(group, seq, total, body, now=NOW):
        return txn(conn, S.add_part, group, seq, total, "254712345678", "383", 0, body,
                   f"{group}-{seq}", now)
    assert add("g", 2, 2, b"world") == []
    assert add("g", 2, 2, b"world") is None                    # the resend
    whole = add("g", 1, 2, b"hello ")
    assert [bytes(r["body"]) for r in whole] == [b"hello ", b"world"]
    assert add("h", 1, 3, b"lost", now=NOW - 500) == []
    [rows] = txn(conn, S.stale_groups, NOW - 120)
    assert [r["seq"] for r in rows] == [1]
    assert conn.execute("SELECT COUNT(*) FROM sms_mo_parts").fetchone()[0] == 0


def test_inbox_row_is_change_logged(conn):
    txn(conn, S.store_inbox, "s1", "dk", "254712345678", "383", "BAL ****", 1, True,
        "balance", None, NOW)
    [row] = S.inbox_list(conn)
    assert (row["body"], row["command"], row["complete"]) == ("BAL ****", "balance", 1)
    entity, payload = conn.execute("SELECT entity, payload FROM change_log").fetchone()
    assert entity == "sms_in" and json.loads(payload)["body"] == "BAL ****"


def test_an_operator_retry_sends_every_part_again(conn):
    sms_id = queue(conn)
    accept(conn, sms_id, 0, 2, "c0")
    accept(conn, sms_id, 1, 2, "c1")
    receipt(conn, "c1", "UNDELIVERABLE")
    assert state(conn, sms_id)["state"] == "failed"
    txn(conn, outbox.sms_retry, sms_id, NOW + 60)
    [again] = S.sendable(conn, NOW + 60, held=(), limit=5, validity=DAY)
    assert (again.id, again.done_parts) == (sms_id, frozenset())
    assert receipt(conn, "c0").sms_id is None          # the old ids name nothing now


def test_whole_only_leaves_a_partly_accepted_sms_to_the_channel_that_began_it(conn):
    # The modems could only send it all again, from another sender address: torn.
    a, b = queue(conn, "a"), queue(conn, "b")
    accept(conn, b, 0, 2, "b0")
    assert [r.id for r in S.sendable(conn, NOW, (), 10, 3600, True)] == [a]
    assert [r.id for r in S.sendable(conn, NOW, (), 10, 3600)] == [a, b]

