"""Executes M-PESA actions against Daraja: a pure decision core per action, and a thin
trio shell that takes actions from a source and reports results to a sink. The box uses
it in direct mode; the upstream (sync/upstream_sim.py) uses it for the actions that ride
the sync batches.

The core's one rule is the STK-push hole (REFERENCES.md): Daraja has no idempotency key
for an STK push, so one that may have reached Daraja is never sent again. Before an STK
push leaves, the action is saved as `unknown` (a write-ahead: a crash or a lost answer
from then on leaves it there). Only a definite answer moves it on: accepted -> `sent`
with its CheckoutRequestID, which the STK query then settles; refused before anything
happened -> back to `queued`. An `unknown` without a CheckoutRequestID has nothing to
query; a callback (received upstream: the CallBackURL names the action) or a statement
settles it. A B2C carries a caller-chosen OriginatorConversationID derived from the
action key, so resending it after a lost answer is harmless (Daraja refuses the
duplicate and pays once); its result arrives at the ResultURL. That callback often
never comes, so a B2C `sent` for `status_after` without a verdict is asked about with
Daraja's Transaction Status query (sync/daraja_status.py), again with backoff; its
verdict comes by callback to the action's status URL and is trusted like the B2C
result. The B2C itself is never sent again on this path.

    queued --send--> sent (CheckoutRequestID) --query/callback--> succeeded | failed
       |  \\--refused (token, throttled, no connection)--> queued, later
       \\--answer lost--> unknown (STK push; B2C stays queued and is sent again)
    sent (B2C) --status_after--> status query --callback--> succeeded | failed

Results are `Result(key, succeeded, receipt, result_code, result_desc)`, the arguments
`store.settlement.apply_mpesa_result` takes after its connection and site; the shell
hands the sink the action too, so that an upstream serving many sites knows whose.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

import trio

from sync import daraja
from sync.daraja import Accepted, Failed, NotSent, Outcome, Succeeded, Unknown

OPEN_STATES = ("queued", "sent", "unknown")
TERMINAL_STATES = ("succeeded", "failed")
KINDS = ("stk_push", "b2c")
# What the payer sees on the prompt (TransactionDesc, at most 13 characters) and what the
# payee's statement says (B2C Remarks).
DESCRIPTIONS = {"loan_funding": "Loan funding", "repayment": "Repayment",
                "loan_payout": "Loan payout", "repayment_forward": "Loan repayment",
                "lender_refund": "Loan refund", "remainder_payout": "Money received"}


@dataclass(frozen=True)
class Policy:
    # After a refusal (token, throttling, no backhaul): 5 s doubling to 10 min, so a box
    # whose link comes back does not hammer Daraja's spike arrest.
    send_retry: float = 5.0
    send_retry_cap: float = 600.0
    # A villager needs time to read the prompt and type a PIN; querying sooner only
    # earns "being processed" and counts against the query's own rate limit.
    first_query: float = 20.0
    query_retry: float = 15.0
    query_retry_cap: float = 300.0
    # A B2C result usually comes within seconds; ten minutes without one means it was
    # lost. Then the Transaction Status query, doubling to six hours: each one is a
    # billed API call, and a payment Daraja still holds "in progress" can take hours.
    status_after: float = 600.0
    status_retry_cap: float = 6 * 3600.0

    @staticmethod
    def backoff(base: float, cap: float, attempt: int) -> float:
        return min(cap, base * 2 ** min(max(attempt - 1, 0), 30))


DEFAULT_POLICY = Policy()


@dataclass(frozen=True)
class Action:
    key: str
    kind: str                          # stk_push | b2c
    msisdn: str
    amount_cents: int
    purpose: str = ""
    loan_ref: str | None = None
    site: str = ""
    state: str = "queued"
    checkout_request_id: str | None = None
    merchant_request_id: str | None = None
    conversation_id: str | None = None
    receipt: str | None = None
    result_code: str | None = None
    result_desc: str | None = None
    sends: int = 0
    queries: int = 0
    status_queries: int = 0            # B2C: Transaction Status queries made
    not_before: float = 0.0
    note: str = ""                     # the last thing that happened, for operators

    @classmethod
    def from_payload(cls, site: str, p: dict[str, Any]) -> Action:
        """From an `mpesa_action` change-log payload (docs/sync-protocol.md, section 3)."""
        if p.get("kind") not in KINDS:
            raise ValueError(f"unknown action kind {p.get('kind')!r}")
        return cls(key=p["key"], kind=p["kind"], msisdn=p["msisdn"],
                   amount_cents=p["amount_cents"], purpose=p.get("purpose") or "",
                   loan_ref=p.get("loan_ref"), site=site)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Result:
    key: str
    succeeded: bool
    receipt: str | None
    result_code: str | None
    result_desc: str | None


@dataclass(frozen=True)
class Send:
    pass


@dataclass(frozen=True)
class Query:
    checkout_request_id: str


@dataclass(frozen=True)
class StatusQuery:
    receipt: str | None = None         # none while the result is missing: the key names it


@dataclass(frozen=True)
class Wait:
    until: float | None                # None: only a callback or a statement can help


# -- the pure core ---------------------------------------------------------------------------

def next_step(a: Action, now: float) -> Send | Query | StatusQuery | Wait:
    if a.state in TERMINAL_STATES:
        return Wait(None)
    if a.not_before > now:
        return Wait(a.not_before)
    if a.state == "queued":
        return Send()
    if a.kind == "stk_push" and a.checkout_request_id:
        return Query(a.checkout_request_id)
    if a.kind == "b2c" and a.state == "sent":
        return StatusQuery(a.receipt)
    # An STK push that may have gone out without our learning its CheckoutRequestID:
    # nothing here may send anything.
    return Wait(None)


def begin_send(a: Action, now: float) -> Action:
    """Save this before the request leaves (the write-ahead)."""
    if a.kind == "stk_push":
        return replace(a, state="unknown", sends=a.sends + 1, note="sending")
    return replace(a, sends=a.sends + 1, note="sending")    # B2C: a resend is harmless


def _settle(a: Action, o: Succeeded | Failed) -> tuple[Action, Result]:
    ok = isinstance(o, Succeeded)
    receipt = (o.receipt or a.receipt) if ok else None
    a = replace(a, state="succeeded" if ok else "failed", receipt=receipt,
                result_code=o.result_code, result_desc=o.result_desc, note="settled")
    return a, Result(a.key, ok, receipt, o.result_code, o.result_desc)


def after_send(a: Action, o: Outcome, now: float,
               policy: Policy = DEFAULT_POLICY) -> tuple[Action, Result | None]:
    if isinstance(o, Accepted):
        return replace(a, state="sent", checkout_request_id=o.checkout_request_id,
                       merchant_request_id=o.merchant_request_id,
                       conversation_id=o.conversation_id or a.conversation_id,
                       not_before=now + (policy.first_query if a.kind == "stk_push"
                                         else policy.status_after),
                       note="accepted again (duplicate)" if o.duplicate else "accepted"), None
    if isinstance(o, Failed):
        return _settle(a, o)
    if isinstance(o, NotSent):
        return replace(a, state="queued", note=f"not sent: {o.reason}"[:256],
                       not_before=now + policy.backoff(policy.send_retry,
                                                       policy.send_retry_cap, a.sends)), None
    reason = o.reason if isinstance(o, Unknown) else f"unexpected answer {o!r}"
    if a.kind == "b2c":
        # Same OriginatorConversationID next time: Daraja pays it at most once.
        return replace(a, state="queued", note=f"answer lost: {reason}"[:256],
                       not_before=now + policy.backoff(policy.send_retry,
                                                       policy.send_retry_cap, a.sends)), None
    return replace(a, state="unknown", note=f"answer lost, never resent: {reason}"[:256]), None


def after_query(a: Action, o: Outcome, now: float,
                policy: Policy = DEFAULT_POLICY) -> tuple[Action, Result | None]:
    if isinstance(o, (Succeeded, Failed)):
        return _settle(a, o)
    reason = getattr(o, "reason", repr(o))
    n = a.queries + 1
    return replace(a, queries=n, note=f"query: {reason}"[:256],
                   not_before=now + policy.backoff(policy.query_retry,
                                                   policy.query_retry_cap, n)), None


def after_status_query(a: Action, o: Outcome, now: float,
                       policy: Policy = DEFAULT_POLICY) -> tuple[Action, Result | None]:
    """The synchronous answer to a Transaction Status query. It never settles: even a
    definite refusal is about the question (a bad id, a wrong initiator), not the
    payment, and the verdict comes to the status ResultURL. Whatever it says, ask again
    later, further apart each time."""
    n = a.status_queries + 1
    what = "asked" if isinstance(o, Accepted) else getattr(o, "reason", None) or repr(o)
    return replace(a, status_queries=n, note=f"status query {n}: {what}"[:256],
                   not_before=now + policy.backoff(policy.status_after,
                                                   policy.status_retry_cap, n + 1)), None


def on_callback(a: Action, o: Outcome | None, now: float) -> tuple[Action, Result | None]:
    """A result POSTed by Daraja to the CallBackURL or ResultURL of this action, or to
    its status ResultURL (a B2C's Transaction Status verdict).

    Callbacks are unauthenticated, so one for an STK push whose CheckoutRequestID we
    never learnt does not settle it: it only lends the id, and the next step asks
    Daraja (the query) whether that id really settled."""
    if not isinstance(o, (Succeeded, Failed)):
        return a, None
    if a.state in TERMINAL_STATES:
        if (a.state == "succeeded" and a.receipt is None and isinstance(o, Succeeded)
                and o.receipt and o.checkout_request_id in (None, a.checkout_request_id)):
            # The query said "paid" without a receipt; the callback brings it.
            a = replace(a, receipt=o.receipt, note="receipt from callback")
            return a, Result(a.key, True, a.receipt, a.result_code, a.result_desc)
        return a, None
    if a.state == "queued" and (a.kind == "stk_push" or a.sends == 0):
        # Never reached Daraja (a B2C sent once may have, and is queued only to resend):
        # a callback for it is a stranger's, and must not stop it being sent.
        return a, None
    if a.kind == "stk_push":
        if a.checkout_request_id is None:
            if not o.checkout_request_id:
                return a, None
            hint = o.receipt if isinstance(o, Succeeded) else None
            return replace(a, state="sent", checkout_request_id=o.checkout_request_id,
                           receipt=hint, not_before=now, note="id from callback"), None
        if o.checkout_request_id not in (None, a.checkout_request_id):
            return a, None
    elif a.state == "queued" and a.sends == 0:
        return a, None        # never sent by us: not ours to settle
    elif (o.conversation_id and a.conversation_id and o.conversation_id != a.conversation_id) \
            or o.originator_conversation_id not in (None, daraja.originator_conversation_id(a.key)):
        # Another payment's verdict (the box checks relayed ones the same way).
        return a, None
    return _settle(a, o)


# -- the trio shell --------------------------------------------------------------------------

Source = Callable[[], Awaitable[Iterable[Action]]]
Sink = Callable[[Result, Action], Awaitable[None]]
Save = Callable[[Action], Awaitable[None]]
Load = Callable[[str, str], Awaitable[Action | None]]


async def _nothing(a: Action) -> None:
    return None


class Executor:
    """Moves bytes for the core. `source()` returns the open actions (its order is the
    order of work); `save(action)` must be durable before it returns, since the STK
    write-ahead depends on it; `sink(result, action)` must be idempotent: a crash
    between the sink and the save reports the result again; `load(site, key)` reads
    one action back, so that a callback and a step never act on a stale copy.

    Actions run one at a time, under one lock shared with callbacks: a village makes a
    few an hour, Daraja's spike arrest is per second, and a callback racing a query for
    the same action must not have its settlement overwritten by the query's copy."""

    def __init__(self, client: daraja.DarajaClient, source: Source, sink: Sink, *,
                 save: Save = _nothing, load: Load | None = None,
                 clock: Callable[[], float] = time.time, policy: Policy = DEFAULT_POLICY,
                 idle: float = 30.0) -> None:
        self.client, self.source, self.sink, self.save = client, source, sink, save
        self.load, self.clock, self.policy, self.idle = load, clock, policy, idle
        self._wake = trio.Event()
        self._lock = trio.Lock()

    def wake(self) -> None:
        """New actions (or callbacks) arrived: look now rather than at the next tick."""
        self._wake.set()

    async def _send(self, a: Action) -> Outcome:
        desc = DESCRIPTIONS.get(a.purpose, "Payment")
        try:
            if a.kind == "stk_push":
                return await self.client.stk_push(site=a.site, key=a.key, msisdn=a.msisdn,
                                                  amount_cents=a.amount_cents,
                                                  loan_ref=a.loan_ref, description=desc)
            return await self.client.b2c(site=a.site, key=a.key, msisdn=a.msisdn,
                                         amount_cents=a.amount_cents, remarks=desc,
                                         occasion=a.loan_ref or "")
        except ValueError as e:
            # Built before any byte left (e.g. not whole shillings): definite, and final.
            return Failed("gwd.invalid", str(e)[:256])

    async def _finish(self, a: Action, result: Result | None) -> Action:
        if result is not None:
            await self.sink(result, a)
            # Settling often queues the next action (the payout after a funding, the
            # forward after a repayment): look again at once rather than after `idle`.
            self.wake()
        await self.save(a)
        return a

    async def step(self, a: Action) -> Action:
        async with self._lock:
            if self.load is not None:
                a = await self.load(a.site, a.key) or a
            return await self._step(a)

    async def _step(self, a: Action) -> Action:
        s = next_step(a, self.clock())
        if isinstance(s, Send):
            a = begin_send(a, self.clock())
            await self.save(a)
            if self.load is not None:
                # A result relayed by the upstream may have settled it since it was read
                # (it is applied outside this lock): then there is nothing to send.
                fresh = await self.load(a.site, a.key)
                if fresh is not None and fresh.state in TERMINAL_STATES:
                    # The write-ahead said "sending": say what happened instead.
                    fresh = replace(fresh, note="settled before it was sent")
                    await self.save(fresh)
                    return fresh
            return await self._finish(*after_send(a, await self._send(a), self.clock(),
                                                  self.policy))
        if isinstance(s, Query):
            o = await self.client.stk_query(s.checkout_request_id)
            return await self._finish(*after_query(a, o, self.clock(), self.policy))
        if isinstance(s, StatusQuery):
            o = await self.client.transaction_status(site=a.site, key=a.key, receipt=s.receipt)
            return await self._finish(*after_status_query(a, o, self.clock(), self.policy))
        return a

    async def callback(self, a: Action, o: Outcome | None) -> Action:
        """A Daraja callback for `a` (read again through `load` when there is one)."""
        async with self._lock:
            if self.load is not None:
                a = await self.load(a.site, a.key) or a
            new, result = on_callback(a, o, self.clock())
            if new is a:
                # Ignored or no verdict (a status "in progress"): nothing to write, and
                # rewriting the last step's note would count it twice (gatewayd.mpesa).
                return a
            a = await self._finish(new, result)
        self.wake()
        return a

    async def run_once(self) -> float | None:
        """One pass over the open actions; the earliest time one is due again."""
        due: float | None = None
        for a in await self.source():
            a = await self.step(a)
            w = next_step(a, self.clock())
            until = self.clock() if not isinstance(w, Wait) else w.until
            if until is not None:
                due = until if due is None else min(due, until)
        return due

    async def run(self) -> None:
        while True:
            due = await self.run_once()
            delay = self.idle if due is None else min(self.idle, max(0.0, due - self.clock()))
            with trio.move_on_after(delay):
                await self._wake.wait()
            self._wake = trio.Event()
