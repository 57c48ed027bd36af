"""The operator's table of modems."""

from __future__ import annotations

from modem import view


def test_table_from_status_rows():
    rows = [
        {"name": "gsmmodem-3F2A9C01", "port": "/dev/gsmmodem-3F2A9C01", "state": "ready",
         "operator": "Safaricom", "signal_rssi": 20, "signal_dbm": -73, "registration": "home",
         "queue_depth": 2, "imsi": "639020000000001", "last_error": None},
        {"name": "gsmmodem-B", "port": "/dev/gsmmodem-B", "state": "down", "operator": None,
         "signal_rssi": None, "signal_dbm": None, "registration": None, "queue_depth": 0,
         "imsi": None, "last_error": "port gone: device reports readiness to read but returned no data"},
    ]
    out = view.table(rows, queued=5).splitlines()
    assert out[0].split() == ["modem", "port", "state", "operator", "signal", "network", "queue",
                              "imsi", "last", "error"]
    assert out[1].split()[:9] == ["gsmmodem-3F2A9C01", "/dev/gsmmodem-3F2A9C01", "ready",
                                  "Safaricom", "-73", "dBm", "(20/31)", "home", "2"]
    assert out[2].endswith("port gone: device reports readiness to read but returned no data")
    assert out[1].index("ready") == out[2].index("down")          # columns line up
    assert out[3] == "waiting for a modem: 5"
    assert view.table([]).startswith("no modems configured")


async def test_table_from_a_live_pool(fakes, recorder):
    from tests.modem.conftest import fast, running
    fake = fakes()
    async with running([fast(fake.link)], recorder) as pool:
        while pool.workers[0].operator is None:          # the first health poll
            await pool._changed.wait()
        text = view.table(pool.status(), pool.queued)
    assert "gsmmodem-A" in text and "Safaricom" in text and "639020000000001" in text
