"""The HTTP channel against bad input, floods and shutdown, through the real daemon."""

from __future__ import annotations

import json
import socket

import httpx
import pytest

from tests.daemon_proc import DaemonProcess, Phone

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    d = DaemonProcess(tmp_path_factory.mktemp("http"),
                      extra_config="[rate_limit]\nhops_per_minute = 6\nburst = 8\n").start()
    yield d
    assert d.stop() == 0


def post(d, data=None, **kw):
    return httpx.post(d.url, data=data, timeout=10, **kw)


FORM = {"sessionId": "s-1", "serviceCode": "*383#", "phoneNumber": "0733000001",
        "networkCode": "63902", "text": ""}


@pytest.mark.parametrize("missing", ["sessionId", "serviceCode", "phoneNumber"])
def test_missing_field_is_a_400_that_names_it(daemon, missing):
    r = post(daemon, {k: v for k, v in FORM.items() if k != missing})
    assert r.status_code == 400 and missing in r.text


def test_wrong_method_content_type_and_size(daemon):
    assert httpx.get(daemon.url).status_code == 405
    r = post(daemon, content=json.dumps(FORM), headers={"content-type": "application/json"})
    assert r.status_code == 415 and "x-www-form-urlencoded" in r.text
    r = post(daemon, {**FORM, "text": "1" * 20000})
    assert r.status_code == 413
    r = post(daemon, content=b"sessionId=%ZZ&&&==", headers={
        "content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 400
    r = post(daemon, content=b"\xff\xfe", headers={
        "content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 400 and "malformed" in r.text
    r = post(daemon, content=b"sessionId=a&sessionId=b&serviceCode=*383%23&phoneNumber=0733000001")
    assert r.status_code == 400 and "given 2 times" in r.text
    assert httpx.get(daemon.base + "/nope").status_code == 404


def test_unknown_code_and_foreign_caller_get_a_polite_end(daemon):
    r = post(daemon, {**FORM, "sessionId": "s-2", "serviceCode": "*999#"})
    assert r.status_code == 200 and r.text.startswith("END ") and "not served here" in r.text
    r = post(daemon, {**FORM, "sessionId": "s-3", "phoneNumber": "+12025550100"})
    assert r.status_code == 200 and r.text.startswith("END ")


def test_a_flooding_phone_is_limited_and_others_are_not(daemon):
    flooder = Phone(daemon, "0733000002")
    replies = [flooder.dial() for _ in range(12)]
    assert replies[0].startswith("CON ")
    assert replies[-1].startswith("END Too many requests")
    assert Phone(daemon, "0733000003").dial().startswith("CON ")


def test_healthz_and_metrics(daemon):
    r = httpx.get(daemon.base + "/healthz")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok" and body["parts"]["store"] == "ok"
    assert body["parts"]["http"] == "running"
    Phone(daemon, "0733000004").dial()
    m = httpx.get(daemon.base + "/metrics").text
    assert "gatewayd_ussd_hop_seconds_count" in m
    count = [ln for ln in m.splitlines() if ln.startswith("gatewayd_ussd_hop_seconds_count")]
    assert int(count[0].split()[1]) >= 1
    assert 'gatewayd_task_up{task="http"} 1' in m
    for name in ("gatewayd_store_commit_seconds_bucket", "gatewayd_sms_outbox_oldest_queued_seconds",
                 "gatewayd_mpesa_oldest_open_seconds", "gatewayd_change_log_last_seq",
                 "gatewayd_state_disk_free_bytes", "gatewayd_build_info"):
        assert name in m, name
    commits = [ln for ln in m.splitlines() if ln.startswith("gatewayd_store_commit_seconds_count")]
    assert int(commits[0].split()[1]) >= 1
    # The whole page parses with Prometheus' own parser, histograms included.
    from prometheus_client.parser import text_string_to_metric_families
    families = {f.name: f for f in text_string_to_metric_families(m)}
    assert families["gatewayd_ussd_hop_seconds"].type == "histogram"
    assert families["gatewayd_store_commit_seconds"].type == "histogram"
    buckets = [s.value for s in families["gatewayd_ussd_hop_seconds"].samples
               if s.name.endswith("_bucket")]
    assert buckets == sorted(buckets)  # cumulative


def test_end_notification_closes_the_dialog(daemon):
    p = Phone(daemon, "0733000005")
    p.dial()
    r = httpx.post(daemon.base + "/ussd/end", data={
        "sessionId": p.session, "status": "Incomplete", "phoneNumber": "0733000005",
        "serviceCode": "*383#", "hopsCount": "1", "durationInMillis": "900"})
    assert r.status_code == 200
    ev = [e for e in daemon.events("ussd_end_notice") if e["session"] == p.session[-12:]]
    assert ev and ev[-1]["known"] is True
    assert httpx.post(daemon.base + "/ussd/end", data={}).status_code == 400


def test_raw_garbage_on_the_socket_does_not_stop_service(daemon):
    with socket.create_connection(("127.0.0.1", daemon.port)) as s:
        s.sendall(b"\x00\x01GARBAGE\r\n\r\n" * 10)
        s.settimeout(5)
        try:
            s.recv(100)
        except OSError:
            pass
    assert Phone(daemon, "0733000006").dial().startswith("CON ")


def test_sd_notify_ready_watchdog_and_stopping(tmp_path):
    sock_path = str(tmp_path / "notify.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(sock_path)
    srv.settimeout(20)
    d = DaemonProcess(tmp_path, env={"NOTIFY_SOCKET": sock_path, "WATCHDOG_USEC": "200000"})
    d.start()
    try:
        got: list[str] = []
        while not ("READY=1" in got and got.count("WATCHDOG=1") >= 2):
            got += srv.recv(4096).decode().split("\n")
    finally:
        assert d.stop() == 0
    while "STOPPING=1" not in got:
        got += srv.recv(4096).decode().split("\n")
    srv.close()
    assert got.index("READY=1") < got.index("STOPPING=1")


def test_dial_command_walks_the_menus_from_a_terminal(daemon):
    import subprocess
    import sys
    r = subprocess.run(
        [sys.executable, "-m", "gatewayd", "dial", "*383#", "--msisdn", "0733000007",
         "--url", daemon.url],
        input="1\nWanjiru\n4826\n4826\n0\n", capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    # The phone's screen wraps lines; read it back as running text.
    shown = " ".join(ln.strip("| ").strip() for ln in r.stdout.splitlines() if ln.startswith("|"))
    assert "Welcome to Mkopo Jirani" in shown
    assert "Welcome, Wanjiru! You are registered." in shown
    assert "Thank you for using Mkopo Jirani." in shown
    assert r.stdout.rstrip().endswith("(session ended)")


def test_dial_says_when_no_daemon_answers():
    import subprocess
    import sys
    from tests.daemon_proc import free_port
    r = subprocess.run(
        [sys.executable, "-m", "gatewayd", "dial", "*383#", "--msisdn", "0733000008",
         "--url", f"http://127.0.0.1:{free_port()}/ussd"],
        input="", capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "Cannot reach gatewayd" in r.stdout


def test_hops_from_outside_allow_from_are_refused(tmp_path):
    d = DaemonProcess(tmp_path)
    d.config_path.write_text(d.config_path.read_text().replace(
        "graceful_seconds = 5.0\n", 'graceful_seconds = 5.0\nallow_from = ["10.9.8.0/24"]\n'))
    d.start()
    try:
        r = httpx.post(d.url, data=FORM, timeout=10)
        assert r.status_code == 403 and "allow_from" in r.text
        assert httpx.get(d.base + "/healthz").status_code == 200  # health stays readable
    finally:
        assert d.stop() == 0


def test_a_taken_port_is_one_clear_line_and_exit_1(daemon, tmp_path):
    import subprocess
    import sys
    cfg = tmp_path / "second.toml"
    cfg.write_text(f'[store]\nstate_dir = "{tmp_path / "var2"}"\n'
                   f'[http]\nlisten = "127.0.0.1:{daemon.port}"\n')
    r = subprocess.run([sys.executable, "-m", "gatewayd", "run", "--config", str(cfg)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "gatewayd: cannot start:" in r.stderr and "Address already in use" in r.stderr
    assert "Traceback" not in r.stderr + r.stdout
