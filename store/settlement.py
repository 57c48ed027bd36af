"""M-PESA results settle what the menus queued: each action once, with its postings.

A loan's money moves in four actions: the funding collection from the lender (STK
push), the payout to the borrower (B2C), each repayment collected from the borrower
(STK push) and forwarded to the lender (B2C). A result for an action already settled
is ignored — results arrive twice — so the caller may apply at least once.
"""

from __future__ import annotations

import sqlite3

from store import ledger, lending, outbox
from store.lending import LendingError, Notice


def apply_mpesa_result(conn: sqlite3.Connection, site: str, key: str, succeeded: bool,
                       now: float, receipt: str | None = None, result_code: str | None = None,
                       result_desc: str | None = None) -> tuple[bool, list[Notice]]:
    """Settle an action once. Returns (applied, notices); a result for an action already
    settled is ignored (results arrive twice), and so is one for an unknown key."""
    action = conn.execute("SELECT * FROM mpesa_actions WHERE key = ?", (key,)).fetchone()
    if action is None:
        raise LendingError("unknown_action")
    if action["state"] not in lending.OPEN_ACTION_STATES:
        return False, []
    state = "succeeded" if succeeded else "failed"
    conn.execute("UPDATE mpesa_actions SET state = ?, receipt = ?, result_code = ?, "
                 "result_desc = ?, updated_at = ? WHERE id = ?",
                 (state, receipt, result_code, result_desc, now, action["id"]))
    outbox.action_changed(conn, key, now)
    loan = lending.get_loan(conn, action["loan_id"])
    assert loan is not None
    ref, amount, purpose = loan["ref"], action["amount_cents"], action["purpose"]
    params = {**lending.loan_params(loan), "paid": amount, "receipt": receipt or "",
              "reason": result_desc or result_code or ""}
    b, k = loan["borrower_id"], loan["lender_id"]
    notices: list[Notice] = []

    def post(kind: str, postings: list[tuple[str, int, int | None]]) -> None:
        ledger.post(conn, kind, postings, now, loan_id=loan["id"], loan_ref=ref, receipt=receipt)

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
