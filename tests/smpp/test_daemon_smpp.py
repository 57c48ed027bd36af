"""The SMPP channel end to end: the real daemon process bound to node-smpp's SMSC."""

from __future__ import annotations

import json
import signal

import pytest
from prometheus_client.parser import text_string_to_metric_families

from menus import gsm0340
from menus.texts import load_all
from tests.daemon_proc import Phone
from tests.smpp.e2e import (
    collect,
    daemon,
    health,
    rows,
    seed_outbox,
    status,
    wait_logged,
)

pytestmark = pytest.mark.e2e

AMINA, PETER, NEEMA = "254711000001", "254722000002", "254733000003"
TEXTS = load_all()


def sms_to(smsc, msisdn):
    return lambda e: (e["event"] == "recv" and e["command"] == "submit_sm"
                      and e["destination_addr"] == msisdn)


def test_wrong_credentials_logged_once_and_health_says_why_then_the_right_ones_bind(
        tmp_path, smsc):
    d = daemon(tmp_path, smsc.port, password="Zq9Wk2x", bad_credentials_retry_seconds=0.1)
    d.start()
    try:
        binds = collect(smsc, lambda e: e["event"] == "bind", 3)
        assert [b["status"] for b in binds] == [0x0E] * 3           # ESME_RINVPASWD
        refused = d.events("smpp_bind_refused_bad_credentials")
        assert len(refused) == 1 and refused[0]["level"] == "error"
        code, body = health(d)
        assert code == 503
        assert body["parts"]["smpp_bind"] == ("transceiver failing: bind refused: "
                                              "ESME_RINVPASWD (check smpp.system_id and "
                                              "smpp.password)")
        assert Phone(d, "0711000001").dial().startswith("CON ")      # HTTP serves on
        screen = d.gatewayd("status")
        assert screen.returncode == 1 and "bind refused: ESME_RINVPASWD" in screen.stdout
        assert not [ln for ln in d.lines if "Zq9Wk2x" in ln]        # never logged
    finally:
        assert d.stop() == 0
    d.config_path.write_text(d.config_path.read_text().replace('"Zq9Wk2x"', '"secret"'))
    d.start()
    try:
        wait_logged(d, "smpp_bound")
        assert health(d)[0] == 200 and health(d)[1]["parts"]["smpp_bind"] == "bound"
    finally:
        assert d.stop() == 0
    assert smsc.wait_for_sync(smsc.recv("unbind"))["status"] == 0       # unbound on stop


def test_loan_request_sms_goes_out_and_duplicate_out_of_order_receipts_settle_it(
        tmp_path, smsc_factory):
    smsc = smsc_factory("--receipts", "dup,out-of-order,decimal")
    d = daemon(tmp_path, smsc.port).start()
    try:
        amina = Phone(d, AMINA)
        reply = amina.run("1", "Amina", "4826", "4826", "1", "0722000002", "500", "50", "1")
        assert "Loan request sent" in reply
        sub = smsc.wait_for_sync(sms_to(smsc, PETER))
        [sms] = rows(d, "SELECT * FROM sms_outbox WHERE msisdn = ?", PETER)
        assert sub["short_message"] == sms["body"] and "asks to borrow Ksh 500" in sub["short_message"]
        assert sub["registered_delivery"] == 1 and sub["user_message_reference"] == sms["id"]
        assert sub["source_addr"] == "383" and sub["data_coding"] == 0
        resp = smsc.wait_for_sync(lambda e: e["event"] == "submit_sm_resp"
                                  and e["seq"] == sub["seq"])
        # DELIVRD (decimal id), then a stale ENROUTE, then DELIVRD again: each answered
        # after its commit; one changed the SMS.
        acks = collect(smsc, smsc.recv("deliver_sm_resp"), 3)
        assert all(a["status"] == 0 for a in acks)
        wait_logged(d, "sms_receipt")
        [sms] = rows(d, "SELECT * FROM sms_outbox WHERE msisdn = ?", PETER)
        assert (sms["state"], sms["attempts"]) == ("delivered", 1)
        [part] = rows(d, "SELECT * FROM sms_parts WHERE sms_id = ?", sms["id"])
        assert (part["message_id"], part["receipt"]) == (resp["message_id"], "DELIVERED")
        ops = [r["op"] for r in rows(d, "SELECT op FROM change_log WHERE entity = 'sms' "
                                        "AND entity_key = ? ORDER BY seq", sms["key"])]
        assert ops == ["queued", "submitted", "delivered"]
        s = status(d)["smpp"]
        assert (s["accepted"], s["receipts"], s["receipts_duplicate"]) == (1, 1, 2)
        assert "delivered 1" in d.gatewayd("status").stdout

        smsc.command(cmd="receipt", id="ffffffff", source=PETER, dest="383")
        assert wait_logged(d, "smpp_receipt_unknown")[0]["state"] == "DELIVERED"
        assert smsc.wait_for_sync(smsc.recv("deliver_sm_resp"))["status"] == 0
    finally:
        assert d.stop() == 0


def test_sms_in_single_multipart_resent_and_a_pin_get_one_answer_each(tmp_path, smsc):
    d = daemon(tmp_path, smsc.port).start()
    try:
        Phone(d, AMINA).run("1", "Amina", "4826", "4826")
        wait_logged(d, "smpp_bound")
        mo = dict(cmd="mo", source=AMINA, dest="383")
        smsc.command(**mo, text="BAL")
        smsc.command(**mo, text="BAL")                  # the SMSC's resend: dropped
        long_text = "MSAADA tafadhali " + "nataka kujua jinsi ya kukopa pesa " * 8
        smsc.command(**mo, text=long_text, parts=3, order="reverse", dup=[2])
        smsc.command(**mo, text="4826")
        smsc.command(cmd="mo", source="254799000001", dest="383", text="HELP")  # last one
        got = []
        while not got or got[-1]["destination_addr"] != "254799000001":
            got.append(smsc.wait_for_sync(smsc.recv("submit_sm")))
        to_amina = [g["short_message"] for g in got if g["destination_addr"] == AMINA]
        assert len(to_amina) == 3
        assert to_amina[0].startswith("You owe Ksh 0. Owed to you Ksh 0.")
        assert to_amina[1].startswith("Mkopo Jirani: dial *383# to ask for")  # her language
        assert to_amina[2].startswith("Never send your PIN by SMS.")
        acks = collect(smsc, smsc.recv("deliver_sm_resp"), 8)
        assert all(a["status"] == 0 for a in acks)
        inbox = rows(d, "SELECT msisdn, body, parts, command FROM sms_inbox ORDER BY id")
        assert [(r["command"], r["parts"]) for r in inbox] == [
            ("balance", 1), ("help", 3), ("pin_refused", 1), ("help", 1)]
        assert inbox[1]["body"] == long_text and inbox[2]["body"] == "****"
        assert not rows(d, "SELECT 1 FROM change_log WHERE payload LIKE '%4826%'")
        assert not [ln for ln in d.lines if "4826" in ln]
        s = status(d)["smpp"]
        assert (s["mo_messages"], s["mo_duplicates"]) == (4, 2)
    finally:
        assert d.stop() == 0


def test_ussd_dialog_over_smpp_registers_a_villager_through_the_lending_menus(tmp_path, smsc):
    d = daemon(tmp_path, smsc.port).start()
    try:
        wait_logged(d, "smpp_bound")

        def hop(text, op, session):
            smsc.command(cmd="ussd", source=NEEMA, dest="383", text=text, op=op,
                         session=session)
            return smsc.wait_for_sync(sms_to(smsc, NEEMA))

        first = hop("*383#", 1, 0x2100)
        assert "1 English\n2 Kiswahili" in first["short_message"]
        assert (first["ussd_service_op"], first["its_session_info"]) == (2, "2100")
        assert first["service_type"] == "USSD" and first["source_addr"] == "383"
        assert hop("2", 18, 0x2102)["short_message"] == "Weka jina lako:"
        assert "tarakimu 4" in hop("Neema", 18, 0x2104)["short_message"]
        assert hop("4826", 18, 0x2106)["short_message"] == "Weka PIN ileile tena:"
        menu = hop("4826", 18, 0x2108)
        assert "Karibu, Neema!" in menu["short_message"] and "1 Omba mkopo" in menu["short_message"]
        bye = hop("0", 18, 0x210A)
        assert (bye["ussd_service_op"], bye["its_session_info"]) == (17, "210b")  # end bit
        [user] = rows(d, "SELECT name, lang, pin_hash IS NOT NULL AS has_pin FROM users "
                         "WHERE msisdn = ?", NEEMA)
        assert tuple(user) == ("Neema", "sw", 1)
        # A shortcut dial reuses session number 0x21: a new dialog, "4" typed ahead.
        assert hop("*383*4#", 1, 0x2100)["short_message"].startswith("Unadaiwa Ksh 0")
        # The same villager over HTTP: registered, in her language.
        assert "1 Omba mkopo" in Phone(d, "0733000003").dial()

        hops = [e for e in d.events("ussd_hop") if e["channel"] == "smpp"]
        assert len(hops) == 7 and all("733000003" not in e["session"] for e in hops)
        assert not [ln for ln in d.lines if "4826" in ln]
        import httpx
        text = httpx.get(d.base + "/metrics", timeout=10).text
        samples = {s.name + json.dumps(s.labels, sort_keys=True): s.value
                   for f in text_string_to_metric_families(text) for s in f.samples}
        assert samples['gatewayd_smpp_ussd_hops_total{}'] == 7
        assert samples['gatewayd_smpp_bound{"bind": "transceiver"}'] == 1
    finally:
        assert d.stop() == 0


def test_smsc_killed_mid_load_and_restarted_no_sms_lost_or_sent_twice(tmp_path, smsc_factory):
    # Every 7th message takes four UCS-2 parts: parts of one SMS may straddle the crash.
    bodies = [f"Message {i}: " + ("Habari 😀 " * 20 if i % 7 == 0 else "loan approved")
              for i in range(240)]
    total_parts = sum(len(gsm0340.split(b)) for b in bodies)
    assert total_parts == 240 + 35 * 3
    first = smsc_factory("--receipts", "none", "--crash-after", "90")
    d = daemon(tmp_path, first.port, window=10)
    ids = seed_outbox(d, bodies)
    d.start()
    try:
        took_first = []
        while True:
            e = first.wait_for_sync(lambda e: e["event"] in ("recv", "crashing"))
            if e["event"] == "crashing":
                break
            if e["command"] == "submit_sm":
                took_first.append(e)
        assert len(took_first) == 90
        wait_logged(d, "smpp_closed")
        second = smsc_factory("--receipts", "none", "--port", str(first.port),
                              "--first-id", "2b000000")
        took_second = collect(second, second.recv("submit_sm"), total_parts - 90)
    finally:
        assert d.stop() == 0        # records every answer before it unbinds
    # Nothing more came before the unbind.
    last = second.wait_for_sync(lambda e: e["event"] == "recv"
                                and e["command"] in ("submit_sm", "unbind"))
    assert last["command"] == "unbind"

    def key(e):
        udh = e.get("short_message_udh")
        return (e["user_message_reference"], udh[0][-2:] if udh else "01")
    sent = [key(e) for e in took_first + took_second]
    assert len(sent) == len(set(sent)) == total_parts          # none twice
    assert {ref for ref, _ in sent} == set(ids)                 # none lost
    assert rows(d, "SELECT COUNT(*) FROM sms_outbox WHERE state = 'submitted'")[0][0] == 240
    # The message id kept for each part is the one the SMSC that took it gave.
    kept = {(r["sms_id"], r["message_id"]) for r in rows(d, "SELECT * FROM sms_parts")}
    assert len(kept) == total_parts
    assert {m[:2] for _, m in kept} == {"1a", "2b"}


def test_throttling_slows_the_sender_and_everything_still_goes(tmp_path, smsc_factory):
    smsc = smsc_factory("--throttle", "3", "--queue-full", "1", "--receipts", "none")
    d = daemon(tmp_path, smsc.port, throttle_pause_seconds=0.02, window=1)
    ids = seed_outbox(d, ["one", "two", "three"])
    d.start()
    try:
        resps = collect(smsc, lambda e: e["event"] == "submit_sm_resp", 7)
        assert [r["status"] for r in resps] == [0x58, 0x58, 0x58, 0x14, 0, 0, 0]
        subs = [e for e in smsc.seen if e["event"] == "recv" and e["command"] == "submit_sm"]
        gaps = [b["t"] - a["t"] for a, b in zip(subs, subs[1:5])]
        # Paused 20, 40, 80, 160 ms: each refusal in a row waits twice as long.
        assert all(g >= 20 * 2 ** i for i, g in enumerate(gaps)), gaps
        wait_logged(d, "sms_submitted", 3)
        s = status(d)["smpp"]
        assert (s["retried"], s["accepted"]) == (4, 3) and s["submit_rate"] < 1000
        first = rows(d, "SELECT attempts, last_error FROM sms_outbox WHERE id = ?", ids[0])[0]
        assert tuple(first) == (5, "ESME_RMSGQFUL")

        # SIGHUP: the pace applies at once, the bind's address waits for a restart.
        d.config_path.write_text(d.config_path.read_text().replace(
            "submit_rate = 1000.0", "submit_rate = 5.0").replace(
            f"port = {smsc.port}", "port = 1"))
        d.proc.send_signal(signal.SIGHUP)
        ev = wait_logged(d, "reloaded")[-1]
        assert "smpp.submit_rate" in ev["applied"] and ev["needs_restart"] == ["smpp.port"]
        assert status(d)["smpp"]["submit_rate_max"] == 5.0
    finally:
        assert d.stop() == 0


def test_a_transmitter_and_receiver_pair_carries_sms_receipts_and_ussd(tmp_path, smsc):
    d = daemon(tmp_path, smsc.port, bind_mode="pair").start()
    try:
        binds = {e["command"] for e in collect(smsc, lambda e: e["event"] == "bind", 2)}
        assert binds == {"bind_transmitter", "bind_receiver"}
        wait_logged(d, "smpp_bound", 2)
        assert health(d)[1]["parts"]["smpp_bind"] == "bound"
        smsc.command(cmd="mo", source=AMINA, dest="383", text="msaada")
        reply = smsc.wait_for_sync(sms_to(smsc, AMINA))
        assert reply["short_message"].startswith("Mkopo Jirani: piga *383#")
        # Its receipt comes on the receiver bind and settles the outbox row.
        wait_logged(d, "sms_receipt")
        assert rows(d, "SELECT state FROM sms_outbox")[0][0] == "delivered"
        smsc.command(cmd="ussd", source=NEEMA, dest="383", text="*383#", op=1, session=0x700)
        assert "1 English" in smsc.wait_for_sync(sms_to(smsc, NEEMA))["short_message"]
        s = status(d)["smpp"]
        assert s["binds_state"] == {"transmitter": "bound", "receiver": "bound"}
        assert (s["mo_messages"], s["receipts"], s["ussd_hops"]) == (1, 1, 1)
    finally:
        assert d.stop() == 0
    assert len(collect(smsc, smsc.recv("unbind"), 2)) == 2          # both binds unbound


def test_a_power_cut_between_the_parts_of_a_long_sms_loses_no_part(tmp_path, smsc):
    d = daemon(tmp_path, smsc.port).start()
    text = "SALIO " + "nataka kujua deni langu la mkopo " * 6
    long_sms = dict(cmd="mo", source=AMINA, dest="383", text=text, parts=2, ref=77)
    try:
        wait_logged(d, "smpp_bound")
        smsc.command(**long_sms, only=[1])
        assert smsc.wait_for_sync(smsc.recv("deliver_sm_resp"))["status"] == 0  # committed
        d.kill()                                           # the power goes
        d.start()
        wait_logged(d, "smpp_bound", 2)
        smsc.command(**long_sms, only=[2])
        reply = smsc.wait_for_sync(sms_to(smsc, AMINA))
        assert reply["short_message"] == TEXTS["sw"].get(
            "sms_not_registered", service="Mkopo Jirani", code="*383#")
        [msg] = rows(d, "SELECT body, parts, complete, command FROM sms_inbox")
        assert tuple(msg) == (text, 2, 1, "balance")
    finally:
        assert d.stop() == 0
