"""M-PESA results settle what the menus queued: each action once, with its postings.

A loan's money moves in four actions: the funding collection from the lender (STK
push), the payout to the borrower (B2C), each repayment collected from the borrower
(STK push) and forwarded to the lender (B2C). A result for an action already settled
is ignored — results arrive twice — so the caller may apply at least once.

Money received for a villager (paid to the service's paybill on their account) is the
seed's automatic repayment: the instalment of their oldest active loan is deducted and
forwarded to the lender, and the rest is paid on to the villager.
"""

from __future__ import annotations

import sqlite3

import structlog

from store import ledger, lending, outbox
from store.lending import LendingError, Notice

log = structlog.get_logger("gatewayd.settlement")


def apply_mpesa_result(conn: sqlite3.Connection, site: str, key: str, succeeded: bool,
                       now: float, receipt: str | None = None, result_code: str | None = None,
                       result_desc: str | None = None) -> tuple[bool, list[Notice]]:
    """Settle an action once. Returns (applied, notices); a result for an action already
    settled is ignored (results arrive twice), except that a receipt for a success that
    came without one (Daraja's STK query carries none) is filled in. An unknown key
    raises LendingError."""
    action = conn.execute("SELECT * FROM mpesa_actions WHERE key = ?", (key,)).fetchone()
    if action is None:
        raise LendingError("unknown_action")
    if action["state"] not in lending.OPEN_ACTION_STATES:
        return _settled_again(conn, action, succeeded, receipt, now), []
    state = "succeeded" if succeeded else "failed"
    conn.execute("UPDATE mpesa_actions SET state = ?, receipt = ?, result_code = ?, "
                 "result_desc = ?, updated_at = ? WHERE id = ?",
                 (state, receipt, result_code, result_desc, now, action["id"]))
    outbox.action_changed(conn, key, now)
    if action["purpose"] == "remainder_payout":
        return True, _settle_remainder(conn, action, succeeded, now, receipt,
                                       result_desc or result_code or "")
    loan = lending.get_loan(conn, action["loan_id"])
    assert loan is not None
    ref, amount, purpose = loan["ref"], action["amount_cents"], action["purpose"]
    params = {**lending.loan_params(loan), "paid": amount, "receipt": receipt or "",
              "reason": result_desc or result_code or ""}
    b, k = loan["borrower_id"], loan["lender_id"]
    notices: list[Notice] = []

    def post(kind: str, postings: list[tuple[str, int, int | None]]) -> None:
        ledger.post(conn, kind, postings, now, loan_id=loan["id"], loan_ref=ref, receipt=receipt,
                    action_key=key)

    if purpose == "loan_funding":
        if succeeded:
            post("funding_collected", [("mpesa", amount, k), (f"escrow:{ref}", -amount, None)])
            lending.set_state(conn, loan["id"], ("approved",), "funded", now)
            outbox.queue_mpesa(conn, site, "loan_payout", loan["id"], ref,
                               loan["borrower_msisdn"], amount, now)
        else:
            lending.set_state(conn, loan["id"], ("approved",), "failed", now)
            notices += [Notice(loan["lender_msisdn"], "funding_failed_lender", params),
                        Notice(loan["borrower_msisdn"], "funding_failed_borrower", params)]
    elif purpose == "loan_payout":
        if succeeded:
            post("payout", [(f"escrow:{ref}", amount, None), ("mpesa", -amount, b)])
            # The debt itself; each villager already sees the money move above.
            post("disbursement", [(f"loan:{ref}", amount, None), (f"lender:{ref}", -amount, None)])
            lending.set_state(conn, loan["id"], ("funded",), "active", now)
            notices += [Notice(loan["borrower_msisdn"], "loan_active_borrower", params),
                        Notice(loan["lender_msisdn"], "loan_active_lender", params)]
        else:
            lending.set_state(conn, loan["id"], ("funded",), "failed", now)
            outbox.queue_mpesa(conn, site, "lender_refund", loan["id"], ref,
                               loan["lender_msisdn"], amount, now)
            notices += [Notice(loan["lender_msisdn"], "payout_failed_lender", params),
                        Notice(loan["borrower_msisdn"], "funding_failed_borrower", params)]
    elif purpose == "repayment":
        if succeeded:
            post("repayment", [("mpesa", amount, None), (f"loan:{ref}", -amount, b)])
            outbox.queue_mpesa(conn, site, "repayment_forward", loan["id"], ref,
                               loan["lender_msisdn"], amount, now)
            left = ledger.balance(conn, f"loan:{ref}")
            if left <= 0 and loan["state"] == "active":
                lending.set_state(conn, loan["id"], ("active",), "repaid", now)
            notices += [Notice(loan["borrower_msisdn"], "repaid_borrower", {**params, "balance": left}),
                        Notice(loan["lender_msisdn"], "repaid_lender", {**params, "balance": left})]
        else:
            notices.append(Notice(loan["borrower_msisdn"], "repayment_failed", params))
    elif purpose == "repayment_forward":
        if succeeded:
            post("repayment_forwarded", [(f"lender:{ref}", amount, k), ("mpesa", -amount, None)])
    elif purpose == "lender_refund":
        if succeeded:
            post("lender_refund", [(f"escrow:{ref}", amount, None), ("mpesa", -amount, k)])
    return True, notices


def _settled_again(conn: sqlite3.Connection, action: sqlite3.Row, succeeded: bool,
                   receipt: str | None, now: float) -> bool:
    """A result for an action already settled. The same verdict again changes nothing;
    a success's missing receipt is filled in (on the action, whose record replicates it,
    and on its ledger transactions); a contradiction changes nothing and is logged for
    the operator, since money may have moved in a way the books do not show."""
    was_ok, had = action["state"] == "succeeded", action["receipt"]
    if succeeded == was_ok and (receipt is None or receipt == had):
        return False
    if succeeded and was_ok and had is None:
        conn.execute("UPDATE mpesa_actions SET receipt = ?, updated_at = ? WHERE id = ?",
                     (receipt, now, action["id"]))
        conn.execute("UPDATE ledger_txns SET mpesa_receipt = ? WHERE action_key = ? "
                     "AND mpesa_receipt IS NULL", (receipt, action["key"]))
        outbox.action_changed(conn, action["key"], now)
        return True
    log.warning("mpesa_result_contradicts", key=action["key"], state=action["state"],
                receipt=had, result="succeeded" if succeeded else "failed",
                result_receipt=receipt)
    return False


def _settle_remainder(conn: sqlite3.Connection, action: sqlite3.Row, succeeded: bool,
                      now: float, receipt: str | None, reason: str) -> list[Notice]:
    amount, msisdn = action["amount_cents"], action["msisdn"]
    if not succeeded:
        # The money stays owed to the villager (payable:<msisdn>); the operator sees the
        # failed action and settles it by hand.
        return [Notice(msisdn, "remainder_failed", {"paid": amount, "reason": reason})]
    user = lending.get_user(conn, msisdn)
    ledger.post(conn, "remainder_paid", [(f"payable:{msisdn}", amount, None),
                                         ("mpesa", -amount, user.id if user else None)],
                now, receipt=receipt, action_key=action["key"])
    return []


def money_received(conn: sqlite3.Connection, site: str, msisdn: str, amount_cents: int,
                   receipt: str, now: float) -> list[Notice]:
    """Money paid in for `msisdn`: deduct the instalment of their oldest active loan (at
    most what is still owed and not already being repaid), forward it to the lender, and
    pay the rest on to the villager. The caller makes this once per receipt."""
    if amount_cents <= 0 or amount_cents % 100:
        raise LendingError("amount_not_whole_shillings")
    user = lending.get_user(conn, msisdn)
    if user is None:
        user = lending.user_by_id(conn, lending.ensure_user(conn, msisdn, "en", now))
    loan = next((r for r in lending.repayable(conn, user.id, 0, 50)
                 if r["outstanding_cents"] - r["repaying_cents"] > 0), None)
    ledger.post(conn, "money_received", [("mpesa", amount_cents, user.id),
                                         (f"payable:{msisdn}", -amount_cents, None)],
                now, loan_id=loan["id"] if loan else None, loan_ref=loan["ref"] if loan else None,
                receipt=receipt)
    deducted = 0
    notices: list[Notice] = []
    if loan is not None:
        room = loan["outstanding_cents"] - loan["repaying_cents"]
        deducted = min(amount_cents, loan["instalment_cents"], room) // 100 * 100
    if deducted:
        ref = loan["ref"]
        ledger.post(conn, "auto_repayment", [(f"payable:{msisdn}", deducted, None),
                                             (f"loan:{ref}", -deducted, user.id)],
                    now, loan_id=loan["id"], loan_ref=ref, receipt=receipt)
        outbox.queue_mpesa(conn, site, "repayment_forward", loan["id"], ref,
                           loan["lender_msisdn"], deducted, now)
        left = ledger.balance(conn, f"loan:{ref}")
        if left <= 0:
            lending.set_state(conn, loan["id"], ("active",), "repaid", now)
        params = {**lending.loan_params(loan), "received": amount_cents, "paid": deducted,
                  "balance": left, "receipt": receipt}
        notices += [Notice(msisdn, "money_received_deducted", params),
                    Notice(loan["lender_msisdn"], "repaid_lender", params)]
    remainder = amount_cents - deducted
    if remainder:
        outbox.queue_mpesa(conn, site, "remainder_payout", loan["id"] if loan else None,
                           loan["ref"] if loan else None, msisdn, remainder, now)
        if not deducted:
            notices.append(Notice(msisdn, "money_received", {"received": amount_cents,
                                                             "receipt": receipt}))
    return notices
