"""AT line classification and answer parsing."""

from __future__ import annotations

import pytest

from modem import at


@pytest.mark.parametrize("line, urc", [
    ('+CMTI: "SM",3', at.Cmti("SM", 3)),
    ("+CMTI: SM, 12", at.Cmti("SM", 12)),
    ('+CMTI: "me",1', at.Cmti("ME", 1)),
    ('+CDSI: "SR",7', at.Cdsi("SR", 7)),
    ("+CUSD: 2", at.Cusd(2, None)),                              # the library dies on this
    ('+CUSD: 0,"Your balance is Ksh 20",15', at.Cusd(0, "Your balance is Ksh 20")),
    ("RING", at.Ring("RING")),
    ("+CRING: VOICE", at.Ring("+CRING: VOICE")),
    ("^RSSI: 17", at.Info("^RSSI: 17")),
    ("+CREG: 1", at.Info("+CREG: 1")),
    ("OK", at.Info("OK")),
    ("\x00\x13\xfe~~", at.Garbage("\x00\x13\xfe~~")),
    ("h\ufffdllo w\ufffdrld", at.Garbage("h\ufffdllo w\ufffdrld")),
    ("the quick brown fox", at.Garbage("the quick brown fox")),
])
def test_classify(line, urc):
    assert at.classify(line) == urc


def test_cds_is_two_lines():
    p = at.UrcParser()
    assert p.feed("+CDS: 25") == []
    pdu = "0006D60B911326880736F4111011719551401110117195714000"
    assert p.feed(pdu) == [at.Cds(25, pdu)]
    # A header whose PDU never comes is noise; the line after it is read afresh.
    assert p.feed("+CDS: 25") == []
    assert p.feed('+CMTI: "SM",2') == [at.Garbage("+CDS: 25"), at.Cmti("SM", 2)]


def test_urcs_inside_an_answer_are_taken_out():
    lines = ["+CSQ: 20,99", '+CMTI: "SM",4', "\x00\ufffd", "+CDS: 25",
             "0006D60B911326880736F4111011719551401110117195714000", "OK"]
    answer, urcs = at.split_urcs(lines)
    assert answer == ["+CSQ: 20,99", "OK"]
    assert urcs == [at.Cmti("SM", 4), at.Garbage("\x00\ufffd"),
                    at.Cds(25, "0006D60B911326880736F4111011719551401110117195714000")]
    assert at.parse_csq(answer) == 20


def test_listing_with_noise():
    lines = ["+CMGL: 1,0,,24", "0791527201000000040C91527214365870000062112181950004C8329BFD",
             "\ufffd\ufffd", "+CMGL: 2,1,,5", "not hex", "+CMGL: 3,1,\"\",22", "00AB", "OK"]
    stored = at.parse_cmgl(lines)
    assert [(s.index, s.stat, s.length) for s in stored] == [(1, 0, 24), (3, 1, 22)]


def test_read_one():
    lines = ["+CMGR: 0,,24", "0791527201000000040C91527214365870000062112181950004C8329BFD", "OK"]
    assert at.parse_cmgr(lines, 5) == at.Stored(5, 0, 24, lines[1])
    assert at.parse_cmgr(["OK"], 5) is None


@pytest.mark.parametrize("lines, rssi", [(["+CSQ: 31,99", "OK"], 31), (["+CSQ: 99,99", "OK"], None),
                                         (["garbage", "OK"], None), (["+CSQ: x", "OK"], None)])
def test_csq(lines, rssi):
    assert at.parse_csq(lines) == rssi


def test_registration_operator_and_reference():
    assert at.parse_creg(["+CREG: 0,1", "OK"]) == 1
    assert at.parse_creg(["+CREG: 2,5,\"1A2B\",\"00C3\"", "OK"]) == 5
    assert at.parse_creg(["+CREG: 3"]) == 3
    assert at.parse_cops(['+COPS: 0,0,"Safaricom",2', "OK"]) == "Safaricom"
    assert at.parse_cops(["+COPS: 0", "OK"]) is None
    assert at.parse_cmgs(["+CMGS: 12", "OK"]) == 12
    assert at.parse_cmgs(["+CMGS: 300,\"26/11/28,18:30:05+12\"", "OK"]) == 300 & 0xFF
    assert at.parse_cpms_support(['+CPMS: ("ME","MT","SM","SR"),("ME","SM"),("SM")', "OK"]) == [
        "ME", "MT", "SM", "SR"]
    assert at.plain_value(["639020000000001", "OK"]) == "639020000000001"


def test_permanent_cms_errors():
    assert at.cms_permanent(21) and at.cms_permanent(304)
    assert not at.cms_permanent(38) and not at.cms_permanent(42) and not at.cms_permanent(500)


def test_the_sans_io_core_imports_no_trio_and_no_serial():
    import subprocess
    import sys
    code = ("import sys, modem, menus.gsm0340, modem.pdu, modem.at, modem.inbox, modem.config, "
            "modem.events; bad = {'trio', 'serial', 'gsmmodem'} & {m.split('.')[0] for m in sys.modules}; "
            "print(sorted(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
