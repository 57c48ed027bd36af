"""The executor's trio shell against the fake Daraja: the write-ahead before an STK push,
a lost STK answer never resent, B2C resent and paid once, and direct mode on the box's
own store with store.settlement as the sink."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import trio
import trio.testing

from store import lending, outbox, settlement
from sync.executor import Action, Executor, Result
from tests.peers import daraja_fake as df
from tests.upstream.conftest import FAST, T0

STK = Action(key="site-1-mp-0a1b2c3d4e5f", kind="stk_push", msisdn="254712345678",
             amount_cents=50_000, purpose="repayment", loan_ref="K7QX2M", site="site-1")
B2C = replace(STK, key="site-1-mp-b2c000000001", kind="b2c", purpose="loan_payout")


class Book:
    """An in-memory source, save and sink, with an event per change to wait on."""

    def __init__(self, *actions: Action) -> None:
        self.actions = {a.key: a for a in actions}
        self.saved: list[Action] = []
        self.results: list[Result] = []
        self.changed = trio.Event()
        self.on_save: Callable[[Action], None] = lambda a: None

    async def source(self) -> list[Action]:
        return [a for a in self.actions.values() if a.state in ("queued", "sent", "unknown")]

    async def save(self, a: Action) -> None:
        self.on_save(a)
        self.actions[a.key] = a
        self.saved.append(a)
        self.changed.set()
        self.changed = trio.Event()

    async def sink(self, r: Result, a: Action) -> None:
        self.results.append(r)

    async def wait_for(self, predicate: Callable[[Book], bool], timeout: float = 10) -> None:
        with trio.fail_after(timeout):
            while not predicate(self):
                await self.changed.wait()


def executor(client, book: Book) -> Executor:
    return Executor(client, book.source, book.sink, save=book.save, policy=FAST)


def stk_requests(fake) -> int:
    return [p for p, _ in fake.requests].count(df.STK)


async def test_an_stk_push_is_saved_unknown_before_daraja_sees_it(fake, client):
    book = Book(STK)
    seen: list[tuple[str, int]] = []
    book.on_save = lambda a: seen.append((a.state, stk_requests(fake)))
    await executor(client, book).step(STK)
    assert seen == [("unknown", 0), ("sent", 1)]
    assert book.actions[STK.key].checkout_request_id.startswith("ws_CO_")


async def test_a_dropped_stk_answer_ends_unknown_and_is_never_resent(fake, client, nursery):
    fake.drop_next(df.STK)
    book = Book(STK)
    ex = executor(client, book)
    nursery.start_soon(ex.run)
    await book.wait_for(lambda b: b.actions[STK.key].note.startswith("answer lost"))
    await fake.wait_for(lambda f: len(f.payments) == 1)        # Daraja did take the money
    a = book.actions[STK.key]
    assert a.state == "unknown" and a.checkout_request_id is None and a.sends == 1
    # Many passes later, still one request: nothing may send it again.
    for _ in range(20):
        await ex.run_once()
    assert stk_requests(fake) == 1 and book.results == []
    assert book.actions[STK.key].state == "unknown"


async def test_an_stk_push_hit_by_a_500_is_not_resent_either(fake, client):
    fake.fail_next(df.STK)
    book = Book(STK)
    ex = executor(client, book)
    await ex.step(STK)
    for _ in range(5):
        await ex.run_once()
    assert stk_requests(fake) == 1 and book.actions[STK.key].state == "unknown"


async def test_b2c_resent_after_a_dropped_answer_is_paid_exactly_once(fake, client, nursery):
    fake.drop_next(df.B2C)
    book = Book(B2C)
    nursery.start_soon(executor(client, book).run)
    await book.wait_for(lambda b: b.actions[B2C.key].state == "sent")
    a = book.actions[B2C.key]
    assert a.sends == 2 and "duplicate" in a.note
    await fake.wait_for(lambda f: len(f.payments) == 1)
    assert [p["id"] for p in fake.payments] == [B2C.key]
    assert [p for p, _ in fake.requests].count(df.B2C) == 2


async def test_throttled_then_sent_once_and_settled_by_query(fake, client, nursery):
    await client.token()           # spike arrest covers the token endpoint too
    fake.throttle_next(2)
    book = Book(STK)
    nursery.start_soon(executor(client, book).run)
    await book.wait_for(lambda b: b.results)
    assert book.results == [Result(STK.key, True, None, "0", df.SUCCESS)]
    assert stk_requests(fake) == 3 and len(fake.payments) == 1   # two refused, one made


async def test_a_cancelled_prompt_is_reported_failed_with_its_code(fake, client, nursery):
    fake.script(msisdn=STK.msisdn, result_code=1032)
    book = Book(STK)
    nursery.start_soon(executor(client, book).run)
    await book.wait_for(lambda b: b.results)
    assert book.results == [Result(STK.key, False, None, "1032", "Request cancelled by user")]
    assert fake.payments == []


async def test_a_new_action_is_picked_up_on_wake(fake, client, nursery):
    book = Book()
    ex = Executor(client, book.source, book.sink, save=book.save, policy=FAST, idle=3600)
    nursery.start_soon(ex.run)
    await trio.testing.wait_all_tasks_blocked()
    book.actions[STK.key] = STK
    ex.wake()                                   # without it, nothing for an hour
    await book.wait_for(lambda b: b.results)
    assert book.results[0].succeeded


# -- direct mode, on the box's own store -----------------------------------------------------

async def test_direct_mode_funds_a_loan_and_pays_it_out_once(fake, client, conn, nursery):
    """What the daemon's direct mode does: open actions from mpesa_actions, the state
    saved with its change-log record, results through store.settlement. The B2C payout's
    result goes to a ResultURL the box cannot receive, so it stays `sent` here."""
    conn.execute("BEGIN")
    borrower = lending.register(conn, "254711111111", "Amina", "en", "x", T0)
    loan, _ = lending.request_loan(conn, borrower, "254722222222", 100_000, 25_000, T0, 3600, 5)
    lending.answer_request(conn, "site-1", loan["id"], loan["lender_id"], True, T0)
    conn.execute("COMMIT")
    extra: dict[str, Action] = {}      # the executor's own fields (a side table in the daemon)
    changed = trio.Event()

    async def source() -> list[Action]:
        rows = outbox.mpesa_actions(conn)
        return [replace(extra.get(r["key"]) or Action.from_payload("site-1", r), state=r["state"])
                for r in rows if r["state"] in ("queued", "sent", "unknown")]

    async def save(a: Action) -> None:
        nonlocal changed
        extra[a.key] = a
        now_state = conn.execute("SELECT state FROM mpesa_actions WHERE key = ?",
                                 (a.key,)).fetchone()[0]
        # Settled states are the sink's job; a query that changed nothing logs nothing.
        if a.state not in ("succeeded", "failed") and a.state != now_state:
            with conn:
                conn.execute("UPDATE mpesa_actions SET state = ? WHERE key = ?", (a.state, a.key))
                outbox.action_changed(conn, a.key, T0)
        changed.set()
        changed = trio.Event()

    async def sink(r: Result, a: Action) -> None:
        with conn:
            settlement.apply_mpesa_result(conn, "site-1", r.key, r.succeeded, T0, r.receipt,
                                          r.result_code, r.result_desc)

    nursery.start_soon(Executor(client, source, sink, save=save, policy=FAST).run)
    with trio.fail_after(10):
        while {a["purpose"]: a["state"] for a in outbox.mpesa_actions(conn)} != {
                "loan_funding": "succeeded", "loan_payout": "sent"}:
            await changed.wait()
    assert lending.get_loan(conn, loan["id"])["state"] == "funded"
    await fake.wait_for(lambda f: len(f.payments) == 2)
    assert sorted((p["kind"], p["msisdn"], p["amount"]) for p in fake.payments) == [
        ("b2c", "254711111111", 1000), ("stk_push", "254722222222", 1000)]
    ops = [r[0] for r in conn.execute("SELECT op FROM change_log WHERE entity = 'mpesa_action' "
                                      "ORDER BY seq")]
    # The write-ahead is in the change log too: `unknown` before `sent`.
    assert ops[:4] == ["queued", "unknown", "sent", "succeeded"]


async def test_a_b2c_settled_by_a_relayed_result_while_it_was_read_is_not_sent(fake, client):
    """Direct mode: a relayed result is applied outside the executor's lock. If it settles
    a B2C (queued again after a lost answer) between the executor reading the action and
    sending it, the store's fresh word stops the send."""
    a = replace(B2C, sends=1, note="answer lost")
    book = Book(a)
    loads = 0

    async def load(site: str, key: str) -> Action | None:
        nonlocal loads
        loads += 1
        if loads == 1:
            return book.actions[key]
        return replace(book.actions[key], state="succeeded", receipt="QK7XYZ1234")
    ex = Executor(client, book.source, book.sink, save=book.save, load=load, policy=FAST)
    done = await ex.step(a)
    assert done.state == "succeeded" and loads == 2
    assert book.actions[a.key].note == "settled before it was sent"
    assert [p for p, _ in fake.requests].count(df.B2C) == 0 and fake.payments == []
