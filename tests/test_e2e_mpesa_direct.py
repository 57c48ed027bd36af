"""Direct mode on one machine, every part a process: the daemon calls the fake Daraja
itself, settles its STK pushes by the STK query, and gets its B2C results from the
reference upstream, which receives Daraja's ResultURL callbacks and relays them over
sync. A loan is funded and paid out; a lost STK answer stays unknown and is never sent
again; each payment happens exactly once at Daraja, which says so itself."""

from __future__ import annotations

import json
import sqlite3

import httpx
import pytest

from tests.daemon_proc import DaemonProcess, Phone
from tests.peers import daraja_fake as df
from tests.test_e2e_sync import KEY, Peer, actions, until

pytestmark = pytest.mark.e2e


def fake_state(fake) -> dict:
    return httpx.get(fake.url + "/_fake/state").json()


def control(fake, op: str, **kw) -> None:
    assert httpx.post(fake.url + "/_fake/control", json={"op": op, **kw}).status_code == 200


def rows(d) -> list[dict]:
    r = d.gatewayd("mpesa", "list", "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["actions"]


def peers(tmp_path, mpesa_extra: str = "") -> tuple[Peer, Peer, DaemonProcess]:
    """The fake Daraja, the reference upstream and a daemon in direct mode (not started)."""
    fake = Peer(tmp_path, "daraja", "tests/peers/daraja_fake.py", "--port", "0")
    sim = Peer(tmp_path, "upstream", "-m", "gatewayd", "upstream-sim", "--listen",
               "127.0.0.1:0", "--daraja", fake.url, "--site", f"site-1:{KEY.hex()}",
               "--db", str(tmp_path / "upstream.db"))
    key_file = tmp_path / "sync.key"
    key_file.write_text(KEY.hex())
    key_file.chmod(0o600)
    creds = tmp_path / "daraja.toml"
    creds.write_text(f'consumer_key = "{df.KEY}"\nconsumer_secret = "{df.SECRET}"\n'
                     f'passkey = "{df.PASSKEY}"\nsecurity_credential = "{df.CREDENTIAL}"\n')
    creds.chmod(0o600)
    d = DaemonProcess(tmp_path, extra_config=(
        f'[sync]\nenabled = true\nupstream_url = "{sim.url}"\nkey_file = "{key_file}"\n'
        "idle_poll_seconds = 0.2\n"
        f'[mpesa]\nmode = "direct"\ndaraja_url = "{fake.url}"\ncredentials_file = "{creds}"\n'
        f'shortcode = "{df.SHORTCODE}"\nb2c_shortcode = "{df.B2C_SHORTCODE}"\n'
        f'initiator_name = "{df.INITIATOR}"\ncallback_base_url = "{sim.url}"\n'
        "first_query_seconds = 0\nquery_retry_seconds = 0.05\n" + mpesa_extra +
        "[rate_limit]\nhops_per_minute = 1000\nburst = 100\n"))
    return fake, sim, d


def fund_a_loan(d) -> tuple[Phone, Phone]:
    amina, baraka = Phone(d, "0712345678"), Phone(d, "0722000111")
    amina.run("1", "Amina", "1357", "1357", "1", "0722000111", "5000", "500", "1")
    assert baraka.run("1", "Baraka", "2468", "2468", "3", "1", "1", "2468") \
        .startswith("END Approved.")
    return amina, baraka


def test_direct_mode_funds_and_pays_out_a_loan_and_never_resends_a_lost_stk_push(tmp_path):
    fake, sim, d = peers(tmp_path)
    # The STK callback would reach the upstream too; without it only the box's own
    # query can settle an STK push, which is what this test is about.
    control(fake, "callbacks", on=False, kind="stk_push")
    d.start()
    try:
        amina, baraka = fund_a_loan(d)

        # Funding: the box's STK push, settled by its STK query (no receipt in it).
        # Payout: the box's B2C, settled by the ResultURL callback the upstream relays.
        until(lambda: {("loan_funding", "succeeded"), ("loan_payout", "succeeded")}
              <= actions(d), "the loan funded and paid out")
        assert "From Baraka Ksh 5,000 active" in amina.run("2")
        by_purpose = {a["purpose"]: a for a in rows(d)}
        paid = {p["kind"]: p for p in fake_state(fake)["payments"]}
        assert by_purpose["loan_funding"]["receipt"] is None
        assert by_purpose["loan_payout"]["receipt"] == paid["b2c"]["receipt"]
        relayed = [c for c in fake_state(fake)["callbacks"] if c["delivered"]]
        assert [c["url"].split("/daraja/")[1].split("/")[0] for c in relayed] == ["b2c"]

        # A second loan's STK push reaches Daraja, which collects, but its answer is cut.
        control(fake, "drop_next", path=df.STK)
        amina.run("1", "0722000111", "3000", "300", "1")
        assert baraka.run("3", "1", "1", "2468").startswith("END Approved.")
        until(lambda: ("loan_funding", "unknown") in actions(d), "the lost answer recorded")
        # Then a repayment of the first loan and its forward: the executor makes many
        # passes before they settle, and sends the unknown one nothing in any of them.
        assert amina.run("6", "1", "1", "1357").startswith("END M-PESA will ask you to pay")
        until(lambda: ("repayment_forward", "succeeded") in actions(d), "the repayment settled")

        state = fake_state(fake)
        assert state["requests_by_path"][df.STK] == 3         # funding, lost funding, repayment
        assert state["requests_by_path"][df.B2C] == 2         # payout, forward
        kinds = sorted((p["kind"], p["msisdn"], p["amount"]) for p in state["payments"])
        # Daraja disagrees with the box, as it should: it collected the second funding,
        # which the box holds as unknown until a statement settles it.
        assert kinds == sorted([("stk_push", "254722000111", 5000),
                                ("stk_push", "254722000111", 3000),
                                ("b2c", "254712345678", 5000),
                                ("stk_push", "254712345678", 500),
                                ("b2c", "254722000111", 500)]), kinds
        fundings = [a for a in rows(d) if a["purpose"] == "loan_funding"]
        assert sorted(a["state"] for a in fundings) == ["succeeded", "unknown"]

        status = json.loads(d.gatewayd("status", "--json").stdout)
        assert status["mpesa"]["mode"] == "direct" and status["mpesa"]["unknown"] == 1
        assert status["tasks"]["mpesa_direct"]["state"] == "running"
        assert 'gatewayd_mpesa_direct_total{event="unknown"} 1' in \
            httpx.get(d.base + "/metrics").text
        assert "direct to" in d.gatewayd("status").stdout
        # The upstream ran none of them: every one was the box's.
        up = httpx.get(f"{sim.url}/v1/sites/site-1/state").json()
        assert up["actions"] == {} and up["sends"] == 0
    finally:
        d.stop()
        sim.stop()
        fake.stop()
    assert d.gatewayd("db", "check").returncode == 0
    conn = sqlite3.connect(d.state_dir / "gatewayd.db")
    executors = {r[0] for r in conn.execute("SELECT executor FROM mpesa_actions")}
    assert executors == {"box"}
    payloads = [json.loads(p) for (p,) in conn.execute(
        "SELECT payload FROM change_log WHERE entity = 'mpesa_action'")]
    assert {p["executor"] for p in payloads} == {"box"}
    log = "\n".join(d.lines)
    assert df.SECRET not in log and df.PASSKEY not in log


def test_a_payout_whose_result_is_lost_is_settled_by_the_status_query_the_upstream_relays(
        tmp_path):
    """Daraja pays the borrower but its B2C result never comes. The box asks with the
    Transaction Status query; the verdict goes to the upstream's status URL, which
    relays it over sync like the B2C result; the payout is made once."""
    fake, sim, d = peers(tmp_path, "status_after_seconds = 0.3\n")
    control(fake, "callbacks", on=False, kind="stk_push")
    control(fake, "callbacks", on=False, kind="b2c")
    d.start()
    try:
        fund_a_loan(d)
        until(lambda: ("loan_payout", "succeeded") in actions(d), "the payout settled")
        state = fake_state(fake)
        [paid] = [p for p in state["payments"] if p["kind"] == "b2c"]
        payout = next(a for a in rows(d) if a["purpose"] == "loan_payout")
        assert payout["receipt"] == paid["receipt"]
        assert state["requests_by_path"][df.B2C] == 1
        assert state["requests_by_path"][df.STATUS] >= 1
        delivered = {c["url"].split("/daraja/")[1].split("/")[0] for c in state["callbacks"]
                     if c["delivered"]}
        assert delivered == {"status"}
        assert json.loads(d.gatewayd("status", "--json").stdout)["mpesa"]["status_queries"] >= 1
        from prometheus_client.parser import text_string_to_metric_families
        [direct] = [f for f in text_string_to_metric_families(
            httpx.get(d.base + "/metrics").text) if f.name == "gatewayd_mpesa_direct"]
        assert {s.labels["event"]: s.value for s in direct.samples}["status_query"] >= 1
        up = httpx.get(f"{sim.url}/v1/sites/site-1/state").json()
        assert up["actions"] == {} and [c["action_key"] for c in up["inbound"]] == [payout["key"]]
    finally:
        d.stop()
        sim.stop()
        fake.stop()
    assert d.gatewayd("db", "check").returncode == 0
