"""python-gsmmodem-new 0.13.0 as it is: the bugs modem/ works around, each shown.

If one of these starts failing after an upgrade, the library fixed that bug and the
workaround (named in each test) can be reconsidered."""

from __future__ import annotations

import warnings

import gsmmodem.modem as libmodem
import gsmmodem.pdu as lib
import pytest
import serial
import trio
from gsmmodem.exceptions import CommandError, TimeoutException

from tests.modem import pdubuild as B
from tests.modem.conftest import until

# -- gsmmodem.pdu (replaced by modem/pdu.py) -------------------------------------------


def test_pdu_alphabet_table_is_wrong_at_0x5f_and_lacks_form_feed():
    assert lib.encodeGsm7("`") == bytearray(b"\x5f")          # 0x5F is '§' in GSM 03.38
    with pytest.raises(ValueError):
        lib.encodeGsm7("§")
    with pytest.raises(ValueError):
        lib.encodeGsm7("\f")
    assert lib.decodeGsm7(bytearray(b"\x5f")) == "`"


def test_pdu_unpacker_drops_a_final_at_sign():
    text = "abcdefg@"                                          # 8 septets in 7 octets
    packed = lib.packSeptets(lib.encodeGsm7(text))
    assert lib.decodeGsm7(lib.unpackSeptets(packed, 8)) == "abcdefg"


def test_pdu_escape_handling():
    with pytest.raises(StopIteration):                        # not an EncodingError
        lib.decodeGsm7(bytearray(b"A\x1b"))
    assert lib.decodeGsm7(bytearray(b"\x1bA")) == ""          # 03.38: show 'A'


def test_pdu_cannot_send_an_emoji_and_splits_ucs2_by_code_point():
    with pytest.raises(ValueError):
        lib.encodeSmsSubmitPdu("+254712345678", "Asante 😀")
    assert [len(p) for p in lib.divideTextUcs2("é" * 66 + "😀" + "x")] == [67, 1]  # 68 units


def test_pdu_reads_the_alphabet_only_in_the_general_group():
    assert lib._decodeDataCoding(0x48) == 0                   # UCS-2, auto-delete group
    assert lib._decodeDataCoding(0xF4) == 0                   # 8-bit data, class group


def test_pdu_decodes_an_emoji_as_lone_surrogates():
    pdu_hex, _ = B.deliver("+254712345678", "😀", ucs2=True)
    text = lib.decodeSmsPdu(pdu_hex)["text"]
    assert len(text) == 2 and all(0xD800 <= ord(c) <= 0xDFFF for c in text)
    with pytest.raises(UnicodeEncodeError):
        text.encode("utf-8")


# -- gsmmodem.modem / serial_comms (worked around in modem/serialmodem.py) --------------


def test_port_is_opened_with_hardware_flow_control_forced(monkeypatch):
    seen = {}

    class Recording:
        def __init__(self, *a, **kw):
            seen.update(kw)
            raise serial.SerialException("stop here")

    monkeypatch.setattr(serial, "Serial", Recording)
    with pytest.raises(serial.SerialException):
        libmodem.GsmModem("/dev/null").connect()
    assert seen["rtscts"] is True and seen["dsrdtr"] is True


def test_unquoted_cusd_release_kills_the_parser():
    m = libmodem.GsmModem("/dev/null")
    with pytest.raises(AttributeError):
        m._parseCusdResponse(["+CUSD: 2"])


def test_three_is_comparisons_with_literals():
    with open(libmodem.__file__, encoding="utf-8") as f:
        source = f.read()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compile(source, libmodem.__file__, "exec")
    assert sum("is not" in str(w.message) or '"is" with' in str(w.message) or "'is' with" in str(w.message)
               for w in caught if issubclass(w.category, SyntaxWarning)) == 3


async def _connect_plain(fake, **kw):
    m = libmodem.GsmModem(str(fake.link), **kw)
    await trio.to_thread.run_sync(m.connect)
    return m


async def test_two_notifications_in_one_burst_only_the_first_is_handled(fakes):
    fake = fakes()
    got = []
    m = await _connect_plain(fake, smsReceivedCallbackFunc=lambda sms: got.append(sms.text))
    try:
        a = fake.deliver("+254712345678", "first", notify=False)
        b = fake.deliver("+254712345679", "second", notify=False)
        fake.notify_together("SM", [a, b])
        await until(fake, lambda: ("SM", a) in fake.deletes)
        await trio.to_thread.run_sync(m.write, "AT")       # let any second handler finish
        assert got == ["first"] and fake.stored().keys() == {b}
    finally:
        await trio.to_thread.run_sync(m.close)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
async def test_reader_thread_dies_on_a_non_utf8_byte(fakes):
    fake = fakes()
    m = await _connect_plain(fake)
    try:
        fake.raw(b"\r\n\xff\xfe noise\r\n")
        await trio.to_thread.run_sync(m.rxThread.join, 5)
        assert not m.rxThread.is_alive()        # no fatal callback, nothing logged above debug
        with pytest.raises(TimeoutException):
            await trio.to_thread.run_sync(lambda: m.write("AT", timeout=0.5))
    finally:
        m.alive = False
        m.serial.close()


async def test_process_stored_sms_deletes_before_the_callback_commits(fakes):
    fake = fakes()
    fake.deliver("+254712345678", "BAL", notify=False)

    def callback(sms):
        raise RuntimeError("store is down")

    m = await _connect_plain(fake, smsReceivedCallbackFunc=callback)
    try:
        with pytest.raises(RuntimeError):
            await trio.to_thread.run_sync(m.processStoredSms)
        assert fake.stored() == {}              # gone from the SIM, never committed
        # listStoredSms(delete=True) with the default status sends "delete all", which
        # this modem (like some real ones) refuses.
        with pytest.raises(CommandError):
            await trio.to_thread.run_sync(lambda: m.listStoredSms(delete=True))
        assert fake.commands[-1] == "AT+CMGD=1,4"
    finally:
        await trio.to_thread.run_sync(m.close)

