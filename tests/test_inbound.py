"""Upstream changes applied to the store: M-PESA results, money received (automatic
repayment), account changes — each once, the ledger balanced throughout."""

from __future__ import annotations

import json

from store import check, inbound, ledger, lending, migrations, settlement
from sync.checkpoint import decode_inbound

SITE = "site-1"
AMINA, BARAKA = "254711000001", "254711000002"


def envelope(after, *changes):
    return decode_inbound(json.dumps({"v": 1, "site": SITE, "after": after,
                                      "changes": list(changes)}).encode(), SITE)


def active_loan(conn, principal=500_000, instalment=50_000):
    b = lending.register(conn, AMINA, "Amina", "en", "h", 1.0)
    lending.register(conn, BARAKA, "Baraka", "sw", "h", 1.0)
    loan, _ = lending.request_loan(conn, b, BARAKA, principal, instalment, 2.0, 3600, 5)
    lending.answer_request(conn, SITE, loan["id"], loan["lender_id"], True, 3.0)
    for purpose, receipt in (("loan_funding", "QA1"), ("loan_payout", "QA2")):
        key = conn.execute("SELECT key FROM mpesa_actions WHERE purpose = ?", (purpose,)).fetchone()[0]
        settlement.apply_mpesa_result(conn, SITE, key, True, 4.0, receipt=receipt)
    return lending.get_loan(conn, loan["id"])


def test_migration_4_keeps_existing_actions(conn):
    assert migrations.current_version(conn) == migrations.LATEST
    active_loan(conn)
    assert conn.execute("SELECT COUNT(*) FROM mpesa_actions").fetchone()[0] == 2


def test_mpesa_result_applied_once_even_when_sent_twice(conn):
    b = lending.register(conn, AMINA, "Amina", "en", "h", 1.0)
    loan, _ = lending.request_loan(conn, b, BARAKA, 100_000, 10_000, 2.0, 3600, 5)
    lending.answer_request(conn, SITE, loan["id"], loan["lender_id"], True, 3.0)
    key = conn.execute("SELECT key FROM mpesa_actions").fetchone()[0]
    change = {"kind": "mpesa_result", "seq": 1, "id": "r-1", "action_key": key,
              "result": "succeeded", "receipt": "QK12345678"}
    env = envelope(0, change)
    counts, _ = inbound.apply(conn, SITE, env.changes, env.last_seq, 5.0)
    assert counts == {"applied": 1}
    assert inbound.get_int(conn, inbound.INBOUND_CURSOR) == 1
    counts, _ = inbound.apply(conn, SITE, env.changes, env.last_seq, 6.0)
    assert counts == {"duplicate": 1}
    # The same result under another id (the upstream re-sent it) settles nothing twice.
    counts, _ = inbound.apply(conn, SITE, envelope(1, {**change, "seq": 2, "id": "r-2"}).changes, 2, 7.0)
    assert counts == {"already_settled": 1}
    assert conn.execute("SELECT COUNT(*) FROM ledger_txns").fetchone()[0] == 1
    assert check.run(conn) == []


def test_result_for_an_unknown_action_is_recorded_not_retried(conn):
    env = envelope(0, {"kind": "mpesa_result", "seq": 1, "id": "r-9", "action_key": "nope",
                       "result": "failed", "result_code": "1032"})
    counts, _ = inbound.apply(conn, SITE, env.changes, 1, 5.0)
    assert counts == {"refused:unknown_action": 1}
    assert conn.execute("SELECT outcome FROM inbound_applied").fetchone()[0] == "refused:unknown_action"


def test_money_received_deducts_the_instalment_and_pays_on_the_rest(conn):
    loan = active_loan(conn)
    ref = loan["ref"]
    env = envelope(0, {"kind": "money_received", "seq": 1, "id": "m-1", "msisdn": AMINA,
                       "amount_cents": 120_000, "receipt": "QM1000001"})
    counts, notices = inbound.apply(conn, SITE, env.changes, 1, 10.0)
    assert counts == {"applied": 1}
    assert ledger.balance(conn, f"loan:{ref}") == 450_000        # 500 deducted of 5,000
    assert ledger.balance(conn, f"payable:{AMINA}") == -70_000   # 700 owed on to Amina
    actions = {r["purpose"]: (r["msisdn"], r["amount_cents"]) for r in conn.execute(
        "SELECT purpose, msisdn, amount_cents FROM mpesa_actions WHERE state = 'queued'")}
    assert actions == {"repayment_forward": (BARAKA, 50_000), "remainder_payout": (AMINA, 70_000)}
    kinds = {(n.msisdn, n.kind) for n in notices}
    assert kinds == {(AMINA, "money_received_deducted"), (BARAKA, "repaid_lender")}
    deducted = next(n for n in notices if n.kind == "money_received_deducted").params
    assert (deducted["received"], deducted["paid"], deducted["balance"]) == (120_000, 50_000, 450_000)
    # The payout settles the villager's share; the books balance at every step.
    key = conn.execute("SELECT key FROM mpesa_actions WHERE purpose = 'remainder_payout'").fetchone()[0]
    settlement.apply_mpesa_result(conn, SITE, key, True, 11.0, receipt="QM1000002")
    assert ledger.balance(conn, f"payable:{AMINA}") == 0
    assert check.run(conn) == []


def test_money_received_never_deducts_more_than_is_owed(conn):
    loan = active_loan(conn, principal=60_000, instalment=50_000)
    for i, amount in enumerate((50_000, 50_000), 1):
        env = envelope(i - 1, {"kind": "money_received", "seq": i, "id": f"m-{i}",
                               "msisdn": AMINA, "amount_cents": amount, "receipt": f"QM10000{i}"})
        inbound.apply(conn, SITE, env.changes, i, 10.0 + i)
    assert ledger.balance(conn, f"loan:{loan['ref']}") == 0
    assert lending.get_loan(conn, loan["id"])["state"] == "repaid"
    forwards = [r[0] for r in conn.execute(
        "SELECT amount_cents FROM mpesa_actions WHERE purpose = 'repayment_forward'")]
    assert forwards == [50_000, 10_000]
    assert check.run(conn) == []


def test_money_received_without_a_loan_is_all_paid_on(conn):
    env = envelope(0, {"kind": "money_received", "seq": 1, "id": "m-1", "msisdn": AMINA,
                       "amount_cents": 30_000, "receipt": "QM2000001"})
    counts, notices = inbound.apply(conn, SITE, env.changes, 1, 10.0)
    assert counts == {"applied": 1} and [n.kind for n in notices] == ["money_received"]
    [(purpose, amount)] = conn.execute("SELECT purpose, amount_cents FROM mpesa_actions").fetchall()
    assert (purpose, amount) == ("remainder_payout", 30_000)
    assert check.run(conn) == []


def test_account_change_unlocks_and_renames(conn):
    u = lending.register(conn, AMINA, "Amina", "en", "h", 1.0)
    for _ in range(3):
        lending.pin_failed(conn, u.id, 2.0, 3, 1800)
    assert lending.get_user(conn, AMINA).locked(3.0)
    env = envelope(0, {"kind": "account_change", "seq": 1, "id": "a-1", "msisdn": AMINA,
                       "name": "Amina W", "lang": "sw", "unlock": True})
    counts, _ = inbound.apply(conn, SITE, env.changes, 1, 4.0)
    user = lending.get_user(conn, AMINA)
    assert counts == {"applied": 1} and not user.locked(4.0)
    assert (user.name, user.lang) == ("Amina W", "sw")
    env = envelope(1, {"kind": "account_change", "seq": 2, "id": "a-2", "msisdn": BARAKA,
                       "unlock": True})
    assert inbound.apply(conn, SITE, env.changes, 2, 5.0)[0] == {"refused:no_such_villager": 1}


def test_the_seed_sms_for_an_automatic_deduction(conn, texts):
    from menus import lending as app
    loan = active_loan(conn)
    env = envelope(0, {"kind": "money_received", "seq": 1, "id": "m-1", "msisdn": AMINA,
                       "amount_cents": 120_000, "receipt": "QM1000001"})
    _, notices = inbound.apply(conn, SITE, env.changes, 1, 10.0)
    ctx = app.Ctx(conn=conn, msisdn="", now=10.0, settings=app.Settings(site=SITE), texts=texts)
    app.queue_notices(ctx, notices)
    bodies = dict(conn.execute("SELECT msisdn, body FROM sms_outbox WHERE created_at = 10.0"))
    assert bodies[AMINA] == (f"Ksh 1,200 received. Ksh 500 deducted for loan {loan['ref']}. "
                             f"New balance Ksh 4,500. Receipt QM1000001")
    assert bodies[BARAKA].startswith("Amina amelipa Ksh 500. Bado anadaiwa Ksh 4,500.")
