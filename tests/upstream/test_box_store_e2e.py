"""A loan's money through the upstream: the box's real store writes the change log, the
scripted box pushes it, the simulator executes the actions against the fake Daraja, and
the results come back and are applied with store.inbound, exactly once."""

from __future__ import annotations

from store import changelog, check, inbound, lending, outbox
from sync.batch import Record
from sync.checkpoint import decode_inbound, to_apply
from tests.upstream.conftest import SITE, T0, Box


async def sync_once(conn, box: Box) -> None:
    """One round of the box's push loop: push what is new, then take what came back."""
    records = [Record.from_row(r) for r in changelog.since(conn, box.checkpoint)]
    if records:
        r = await box.push(box.batch(records))
        assert r.status == 200 and r.server_time is not None
        ack, env = r.push()
        box.checkpoint = ack.last_seq
    else:
        r = await box.inbound()
        assert r.status == 200 and r.server_time is not None
        env = decode_inbound(r.body, SITE)
    if env is not None and len(env):
        todo = to_apply(env, box.cursor)
        with conn:
            inbound.apply(conn, SITE, todo, env.last_seq, T0 + 60)
        box.cursor = inbound.get_int(conn, inbound.INBOUND_CURSOR)


def states(conn) -> dict[str, str]:
    return {a["purpose"]: a["state"] for a in outbox.mpesa_actions(conn)}


async def test_a_loan_is_funded_and_paid_out_through_the_upstream_once(sim, box, fake, conn):
    with conn:
        borrower = lending.register(conn, "254711111111", "Amina", "en", "x", T0)
        loan, _ = lending.request_loan(conn, borrower, "254722222222", 150_000, 50_000, T0,
                                       3600, 5)
        lending.answer_request(conn, SITE, loan["id"], loan["lender_id"], True, T0)
    assert states(conn) == {"loan_funding": "queued"}

    await sync_once(conn, box)                      # the approval and its STK push go up
    await sim.wait_for(lambda s: len(s.store.state(SITE)["inbound"]) == 1)
    await sync_once(conn, box)                      # the funding result comes down
    assert states(conn) == {"loan_funding": "succeeded", "loan_payout": "queued"}
    assert lending.get_loan(conn, loan["id"])["state"] == "funded"

    await sync_once(conn, box)                      # the payout B2C goes up
    await sim.wait_for(lambda s: len(s.store.state(SITE)["inbound"]) == 2)
    await sync_once(conn, box)
    assert states(conn) == {"loan_funding": "succeeded", "loan_payout": "succeeded"}
    assert lending.get_loan(conn, loan["id"])["state"] == "active"

    # Every later record of those actions (their `succeeded` states) went up too, and
    # none of them was executed again.
    await sync_once(conn, box)
    assert box.checkpoint == changelog.last_seq(conn)
    assert sorted((p["kind"], p["msisdn"], p["amount"]) for p in fake.payments) == [
        ("b2c", "254711111111", 1500), ("stk_push", "254722222222", 1500)]
    assert sim.store.state(SITE)["sends"] == 2
    receipts = {r[0] for r in conn.execute("SELECT receipt FROM mpesa_actions")}
    assert receipts == {p["receipt"] for p in fake.payments}
    assert check.run(conn) == []              # `gatewayd db check`: the books balance
