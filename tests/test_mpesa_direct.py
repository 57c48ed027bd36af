"""M-PESA direct mode on the box's store: who executes each action (stamped and
replicated), the executor's source and save, settlement through the same rules as an
upstream result, a receipt that comes after the success, and the executor's timers on
the store (trio's autojump clock, with a scripted Daraja client)."""

from __future__ import annotations

import json
import sqlite3

import pytest
import trio
from structlog.testing import capture_logs

from gatewayd.mpesa import DirectMpesa
from store import check, lending, mpesa_direct, settlement
from sync.daraja import Accepted, NotSent, Pending, Succeeded, Unknown
from sync.executor import Action, Policy

SITE = "site-1"
BORROWER, LENDER = "254711111111", "254722222222"
T0 = 1764316800.0


def approved_loan(conn: sqlite3.Connection, now: float = T0) -> int:
    with conn:
        b = lending.register(conn, BORROWER, "Amina", "en", "h", now)
        loan, _ = lending.request_loan(conn, b, LENDER, 150_000, 50_000, now, 3600, 5)
        lending.answer_request(conn, SITE, loan["id"], loan["lender_id"], True, now)
    return loan["id"]


def row(conn, purpose: str) -> sqlite3.Row:
    return conn.execute("SELECT * FROM mpesa_actions WHERE purpose = ? ORDER BY id DESC",
                        (purpose,)).fetchone()


def records(conn, key: str) -> list[dict]:
    return [json.loads(p) for (p,) in conn.execute(
        "SELECT payload FROM change_log WHERE entity = 'mpesa_action' AND entity_key = ? "
        "ORDER BY seq", (key,))]


def direct(conn) -> None:
    with conn:
        mpesa_direct.set_mode(conn, True, T0)


# -- who executes --------------------------------------------------------------------------

def test_actions_belong_to_the_mode_they_were_queued_in(conn):
    approved_loan(conn)
    funding = row(conn, "loan_funding")
    assert funding["executor"] == "upstream"
    assert [r["executor"] for r in records(conn, funding["key"])] == ["upstream"]
    direct(conn)
    with conn:      # a later record of an upstream action stays the upstream's
        settlement.apply_mpesa_result(conn, SITE, funding["key"], True, T0 + 1, "QK1ABC2DEF")
    payout = row(conn, "loan_payout")
    assert payout["executor"] == "box" and records(conn, payout["key"])[0]["executor"] == "box"
    assert [r["executor"] for r in records(conn, funding["key"])] == ["upstream", "upstream"]
    assert mpesa_direct.open_actions(conn) == [mpesa_direct.load(conn, payout["key"])]
    assert mpesa_direct.load(conn, funding["key"]) is None


# -- source and save -----------------------------------------------------------------------

def test_save_writes_state_changes_to_the_log_and_never_reopens_a_settled_action(conn):
    direct(conn)
    approved_loan(conn)
    a = mpesa_direct.open_actions(conn)[0]
    assert (a["state"], a["sends"], a["checkout_request_id"]) == ("queued", 0, None)
    with conn:      # the STK write-ahead: unknown before the request leaves
        assert mpesa_direct.save(conn, {**a, "state": "unknown", "sends": 1}, T0 + 1)
    assert records(conn, a["key"])[-1]["state"] == "unknown"
    # Nothing to query (the answer may be lost): looking again would change nothing.
    assert mpesa_direct.open_actions(conn) == []
    with conn:
        mpesa_direct.save(conn, {**a, "state": "sent", "sends": 1,
                                 "checkout_request_id": "ws_CO_1", "not_before": T0 + 21}, T0 + 2)
    (again,) = mpesa_direct.open_actions(conn)
    assert (again["state"], again["checkout_request_id"], again["not_before"]) == \
        ("sent", "ws_CO_1", T0 + 21)
    n = len(records(conn, a["key"]))
    with conn:      # bookkeeping alone (another query) does not go upstream
        assert not mpesa_direct.save(conn, {**again, "queries": 1}, T0 + 3)
    assert len(records(conn, a["key"])) == n
    with conn:      # a relayed result settled it meanwhile: a stale copy changes nothing
        settlement.apply_mpesa_result(conn, SITE, a["key"], False, T0 + 4, None, "1032", "x")
        assert not mpesa_direct.save(conn, {**again, "state": "unknown"}, T0 + 5)
    assert row(conn, "loan_funding")["state"] == "failed"


def test_only_box_actions_are_saved(conn):
    approved_loan(conn)
    a = dict(row(conn, "loan_funding"))
    with pytest.raises(ValueError, match="not an action this box executes"), conn:
        mpesa_direct.save(conn, {**a, "state": "unknown"}, T0)


def test_settle_applies_the_result_like_an_upstream_one(conn):
    direct(conn)
    loan_id = approved_loan(conn)
    key = row(conn, "loan_funding")["key"]
    with conn:
        applied, notices = mpesa_direct.settle(conn, SITE, key, True, None, "0", "ok", T0 + 1)
    assert applied and notices == []
    assert lending.get_loan(conn, loan_id)["state"] == "funded"
    assert row(conn, "loan_payout")["executor"] == "box"
    with conn:
        again = mpesa_direct.settle(conn, SITE, key, True, None, "0", "ok", T0 + 2)
    assert again == (False, [])


# -- a receipt after the success -------------------------------------------------------------

def funded_without_receipt(conn) -> str:
    approved_loan(conn)
    key = row(conn, "loan_funding")["key"]
    with conn:
        settlement.apply_mpesa_result(conn, SITE, key, True, T0 + 1, None, "0", "ok")
    return key


def ledger_receipts(conn, key: str) -> list:
    return [r[0] for r in conn.execute("SELECT mpesa_receipt FROM ledger_txns "
                                       "WHERE action_key = ?", (key,))]


def test_a_later_receipt_fills_in_a_success_that_came_without_one(conn):
    key = funded_without_receipt(conn)
    assert ledger_receipts(conn, key) == [None]
    seq = conn.execute("SELECT MAX(seq) FROM change_log").fetchone()[0]
    with conn:
        applied, notices = settlement.apply_mpesa_result(conn, SITE, key, True, T0 + 2,
                                                         "QK1ABC2DEF", "0", "ok")
    assert applied and notices == []
    assert row(conn, "loan_funding")["receipt"] == "QK1ABC2DEF"
    assert ledger_receipts(conn, key) == ["QK1ABC2DEF"]
    new = conn.execute("SELECT entity, op, payload FROM change_log WHERE seq > ?",
                       (seq,)).fetchall()
    # Only the action's record: no new postings, no second payout.
    assert [(e, op) for e, op, _ in new] == [("mpesa_action", "succeeded")]
    assert json.loads(new[0][2])["receipt"] == "QK1ABC2DEF"
    assert conn.execute("SELECT COUNT(*) FROM mpesa_actions WHERE purpose = 'loan_payout'"
                        ).fetchone()[0] == 1
    assert check.run(conn) == []


@pytest.mark.parametrize("succeeded, receipt", [(False, None), (True, "QK9ZZZ9ZZZ")])
def test_a_contradicting_later_result_changes_nothing_and_is_logged(conn, succeeded, receipt):
    key = funded_without_receipt(conn)
    with conn:
        settlement.apply_mpesa_result(conn, SITE, key, True, T0 + 2, "QK1ABC2DEF", "0", "ok")
    seq = conn.execute("SELECT MAX(seq) FROM change_log").fetchone()[0]
    with conn, capture_logs() as logged:
        applied, _ = settlement.apply_mpesa_result(conn, SITE, key, succeeded, T0 + 3, receipt,
                                                   "0" if succeeded else "1032", "no")
    assert not applied
    assert (row(conn, "loan_funding")["state"], row(conn, "loan_funding")["receipt"]) == \
        ("succeeded", "QK1ABC2DEF")
    assert conn.execute("SELECT MAX(seq) FROM change_log").fetchone()[0] == seq
    assert [e["event"] for e in logged] == ["mpesa_result_contradicts"]


def test_a_success_after_a_failure_changes_nothing(conn):
    approved_loan(conn)
    key = row(conn, "loan_funding")["key"]
    with conn, capture_logs() as logged:
        settlement.apply_mpesa_result(conn, SITE, key, False, T0 + 1, None, "1032", "x")
        applied, _ = settlement.apply_mpesa_result(conn, SITE, key, True, T0 + 2, "QK1ABC2DEF")
    assert not applied and row(conn, "loan_funding")["state"] == "failed"
    assert [e["event"] for e in logged] == ["mpesa_result_contradicts"]


# -- the executor on the store, on trio's clock ----------------------------------------------

class InlineStore:
    """The writer's contract (one transaction per job) on one connection, run inline:
    no thread, so the autojump clock sees the executor's timers alone."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    async def write(self, fn, *args):
        with self.conn:
            return fn(self.conn, *args)

    async def read(self, fn, *args):
        return fn(self.conn, *args)


class Script:
    """A Daraja client whose every answer the test chooses, and which counts calls."""

    base = "http://daraja.test"

    def __init__(self, pushes, queries=(), b2cs=()) -> None:
        self.pushes, self.queries, self.b2cs = list(pushes), list(queries), list(b2cs)
        self.calls: list[tuple[str, float]] = []
        self.status_keys: list[str] = []

    async def stk_push(self, **kw):
        self.calls.append(("stk_push", trio.current_time()))
        return self.pushes.pop(0)

    async def stk_query(self, checkout_request_id):
        self.calls.append(("query", trio.current_time()))
        return self.queries.pop(0)

    async def b2c(self, **kw):
        self.calls.append(("b2c", trio.current_time()))
        return self.b2cs.pop(0)

    async def transaction_status(self, *, site, key, receipt=None):
        # Accepted: the verdict would come to the status ResultURL, via the upstream.
        self.calls.append(("status", trio.current_time()))
        self.status_keys.append(key)
        return Accepted(conversation_id="AG_status")


POLICY = Policy(first_query=20.0, query_retry=15.0, query_retry_cap=300.0)


def service(conn, client) -> DirectMpesa:
    svc = DirectMpesa(InlineStore(conn), SITE, client, lambda c, notices, now: None, POLICY)
    svc.executor.clock = trio.current_time
    return svc


async def test_an_stk_push_is_queried_on_time_settled_and_the_payout_follows(conn, nursery,
                                                                             autojump_clock):
    direct(conn)
    loan_id = approved_loan(conn)
    client = Script([Accepted(checkout_request_id="ws_CO_1")],
                    [Pending("processing"), Pending("processing"),
                     Succeeded("0", "ok", None, "ws_CO_1")],
                    [Accepted(conversation_id="AG_1")])
    svc = service(conn, client)
    nursery.start_soon(svc.run)
    await trio.sleep(3600)
    t0 = client.calls[0][1]
    # First query after 20 s, then 15 s and 30 s of backoff; the payout at once after,
    # and, its result never coming, the Transaction Status query 10 minutes later, then
    # 20 minutes after that.
    assert [(k, t - t0) for k, t in client.calls] == [
        ("stk_push", 0), ("query", 20), ("query", 35), ("query", 65), ("b2c", 65),
        ("status", 665), ("status", 1865)]
    assert lending.get_loan(conn, loan_id)["state"] == "funded"
    assert (row(conn, "loan_funding")["state"], row(conn, "loan_funding")["receipt"]) == \
        ("succeeded", None)
    # The B2C waits for its ResultURL (relayed by the upstream): never sent again.
    payout = mpesa_direct.load(conn, row(conn, "loan_payout")["key"])
    assert (payout["state"], payout["sends"], payout["status_queries"]) == ("sent", 1, 2)
    assert client.status_keys == [payout["key"]] * 2
    assert (svc.stats.sent, svc.stats.settled_ok, svc.stats.unknown,
            svc.stats.status_queries) == (2, 1, 0, 2)
    # A status verdict saying "in progress" (relayed or not) changes and counts nothing.
    same = await svc.executor.callback(Action(site=SITE, **payout), Pending("status: Pending"))
    assert same.state == "sent" and svc.stats.status_queries == 2


async def test_a_lost_stk_answer_stays_unknown_and_is_never_sent_again(conn, nursery,
                                                                       autojump_clock):
    direct(conn)
    approved_loan(conn)
    client = Script([Unknown("ReadError: connection reset")])
    svc = service(conn, client)
    nursery.start_soon(svc.run)
    await trio.sleep(7 * 24 * 3600)
    svc.wake()
    await trio.sleep(3600)
    assert [k for k, _ in client.calls] == ["stk_push"]
    assert row(conn, "loan_funding")["state"] == "unknown"
    assert svc.stats.unknown == 1
    # A relayed callback still settles it (section 11), through the inbound path.
    with conn:
        settlement.apply_mpesa_result(conn, SITE, row(conn, "loan_funding")["key"], False,
                                      T0, None, "1032", "Request cancelled by user")
    assert row(conn, "loan_funding")["state"] == "failed"


async def test_a_refused_b2c_is_sent_again_after_its_backoff(conn, nursery, autojump_clock):
    direct(conn)
    approved_loan(conn)
    with conn:
        settlement.apply_mpesa_result(conn, SITE, row(conn, "loan_funding")["key"], True, T0,
                                      "QK1ABC2DEF")
    client = Script([], [], [NotSent("500.003.02 Spike Arrest Violation"),
                             Accepted(conversation_id="AG_1")])
    svc = service(conn, client)
    nursery.start_soon(svc.run)
    await trio.sleep(3600)
    t0 = client.calls[0][1]
    assert [(k, t - t0) for k, t in client.calls] == [("b2c", 0), ("b2c", 5), ("status", 605),
                                                       ("status", 1805)]
    assert row(conn, "loan_payout")["state"] == "sent" and svc.stats.retried == 1


# -- the credentials file --------------------------------------------------------------------

CREDS = ('consumer_key = "ck"\nconsumer_secret = "cs-SECRET"\npasskey = "pk"\n'
         'security_credential = "sc"\n')


def test_credentials_load_from_toml_or_json_and_never_echo_a_secret(tmp_path):
    from gatewayd.mpesa import CredentialsError, load_credentials
    p = tmp_path / "daraja.toml"
    p.write_text(CREDS)
    p.chmod(0o600)
    with capture_logs() as logged:
        assert load_credentials(str(p))["consumer_secret"] == "cs-SECRET"
    assert logged == []
    p.write_text(json.dumps({"consumer_key": "ck", "consumer_secret": "cs", "passkey": "pk",
                             "security_credential": "sc"}))
    assert load_credentials(str(p))["passkey"] == "pk"
    p.chmod(0o644)
    with capture_logs() as logged:
        load_credentials(str(p))
    assert [e["event"] for e in logged] == ["mpesa_credentials_readable_by_others"]
    for text, expected in ((CREDS.replace('passkey = "pk"\n', ""), "needs passkey"),
                           (CREDS + 'shortcode = "1"\n', "unknown keys shortcode"),
                           (CREDS.replace('"cs-SECRET"', '"cs-SECRET'), "not valid TOML")):
        p.write_text(text)
        with pytest.raises(CredentialsError, match=expected) as e:
            load_credentials(str(p))
        assert "SECRET" not in str(e.value) and "mpesa.credentials_file" in str(e.value)
    with pytest.raises(CredentialsError, match="No such file"):
        load_credentials(str(tmp_path / "none.toml"))


# -- results relayed by the upstream (section 11) ------------------------------------------

def relay(conn, key: str, seq: int, **fields) -> str:
    """An upstream `mpesa_result` for `key`, through the box's own validator and apply."""
    from store import inbound
    from sync.checkpoint import decode_inbound
    change = {"seq": seq, "id": f"up-{seq}", "kind": "mpesa_result", "action_key": key,
              "result": "succeeded", "receipt": "QK9RELAY01", "result_code": "0", **fields}
    env = decode_inbound({"v": 1, "site": SITE, "after": seq - 1, "changes": [change]}, SITE)
    with conn:
        counts, _ = inbound.apply(conn, SITE, env.changes, seq, T0 + seq)
    [(outcome, _)] = counts.items()
    return outcome


def sent_stk(conn, checkout: str | None) -> dict:
    direct(conn)
    approved_loan(conn)
    a = mpesa_direct.open_actions(conn)[0]
    state = "sent" if checkout else "unknown"
    with conn:
        mpesa_direct.save(conn, {**a, "state": state, "sends": 1,
                                 "checkout_request_id": checkout}, T0 + 1)
    return a


def test_a_relayed_callback_naming_another_checkout_id_settles_nothing(conn):
    a = sent_stk(conn, "ws_CO_mine")
    assert relay(conn, a["key"], 1, checkout_request_id="ws_CO_forged") == "refused:id_mismatch"
    assert row(conn, "loan_funding")["state"] == "sent"
    assert relay(conn, a["key"], 2, checkout_request_id="ws_CO_mine") == "applied"
    assert row(conn, "loan_funding")["state"] == "succeeded"
    assert check.run(conn) == []


def test_a_relayed_callback_lends_its_id_to_a_lost_push_and_the_query_decides(conn):
    a = sent_stk(conn, None)            # the push's answer was lost: no CheckoutRequestID
    assert mpesa_direct.open_actions(conn) == []
    assert relay(conn, a["key"], 1, checkout_request_id="ws_CO_told") == "id_adopted"
    funding = row(conn, "loan_funding")
    assert funding["state"] == "sent" and funding["receipt"] is None     # not settled
    [due] = mpesa_direct.open_actions(conn)                              # to be queried
    assert (due["key"], due["checkout_request_id"]) == (a["key"], "ws_CO_told")


def test_a_relayed_callback_for_a_push_never_sent_is_a_strangers(conn):
    direct(conn)
    approved_loan(conn)
    key = row(conn, "loan_funding")["key"]
    assert relay(conn, key, 1, checkout_request_id="ws_CO_x") == "refused:not_sent"
    assert row(conn, "loan_funding")["state"] == "queued"


def test_a_b2c_result_is_checked_by_its_conversation_id(conn):
    a = sent_stk(conn, "ws_CO_mine")
    assert relay(conn, a["key"], 1, checkout_request_id="ws_CO_mine") == "applied"
    payout = mpesa_direct.load(conn, row(conn, "loan_payout")["key"])
    with conn:
        mpesa_direct.save(conn, {**payout, "state": "sent", "sends": 1,
                                 "conversation_id": "AG_20261128_mine"}, T0 + 5)
    assert relay(conn, payout["key"], 2, conversation_id="AG_other") == "refused:id_mismatch"
    assert row(conn, "loan_payout")["state"] == "sent"
    # Without ids it is the upstream's own verdict (from the statement): applied.
    assert relay(conn, payout["key"], 3) == "applied"
    assert row(conn, "loan_payout")["state"] == "succeeded"


def test_a_sent_b2c_is_due_for_its_status_query_and_a_relayed_status_verdict_settles_it(conn):
    a = sent_stk(conn, "ws_CO_mine")
    assert relay(conn, a["key"], 1, checkout_request_id="ws_CO_mine") == "applied"
    payout = mpesa_direct.load(conn, row(conn, "loan_payout")["key"])
    with conn:
        mpesa_direct.save(conn, {**payout, "state": "sent", "sends": 1, "status_queries": 2,
                                 "conversation_id": "AG_20261128_mine",
                                 "not_before": T0 + 600}, T0 + 5)
    # The executor is handed it, to ask Daraja when it is due (not_before).
    [due] = mpesa_direct.open_actions(conn)
    assert (due["key"], due["status_queries"], due["not_before"]) == \
        (payout["key"], 2, T0 + 600)
    # The upstream relays the status verdict with the payment's ConversationID.
    assert relay(conn, payout["key"], 2, receipt="SB7STATUS1",
                 conversation_id="AG_20261128_mine") == "applied"
    assert (row(conn, "loan_payout")["state"], row(conn, "loan_payout")["receipt"]) == \
        ("succeeded", "SB7STATUS1")
    assert mpesa_direct.open_actions(conn) == [] and check.run(conn) == []


def test_migration_6_counts_status_queries_on_a_box_from_version_5(db_path, monkeypatch):
    from store import migrations
    from store.writer import connect
    c = connect(db_path)
    monkeypatch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:5])
    monkeypatch.setattr(migrations, "LATEST", 5)
    migrations.migrate(c)
    direct(c)
    approved_loan(c)
    with c:
        c.execute("INSERT INTO mpesa_direct (action_id, sends, updated_at) "
                  "SELECT id, 1, 0 FROM mpesa_actions")
    monkeypatch.undo()
    assert migrations.migrate(c) == [6]
    [a] = mpesa_direct.open_actions(c)
    assert (a["sends"], a["status_queries"]) == (1, 0)
    c.close()
