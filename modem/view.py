"""`gatewayd modems`: one line per modem from ModemPool.status() rows (plain dicts, as
they come over the operator socket as JSON). Sans-I/O."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

COLUMNS = ("modem", "port", "state", "operator", "signal", "network", "queue", "imsi",
           "last error")


def _signal(row: Mapping[str, Any]) -> str:
    if row.get("signal_dbm") is None:
        return "-"
    return f"{row['signal_dbm']} dBm ({row['signal_rssi']}/31)"


def _cells(row: Mapping[str, Any]) -> list[str]:
    return [str(row.get("name") or "-"), str(row.get("port") or "-"), str(row.get("state") or "-"),
            str(row.get("operator") or "-"), _signal(row), str(row.get("registration") or "-"),
            str(row.get("queue_depth", 0)), str(row.get("imsi") or "-"),
            str(row.get("last_error") or "-")]


def table(rows: Sequence[Mapping[str, Any]], queued: int | None = None) -> str:
    """Aligned columns; the last error is last so that a long one only makes its own
    line long. `queued`: SMS waiting in the pool for any modem."""
    if not rows:
        return "no modems configured ([[modems]] in the config)"
    cells = [list(COLUMNS)] + [_cells(r) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS) - 1)]
    lines = ["  ".join(c[i].ljust(widths[i]) for i in range(len(widths))) + "  " + c[-1]
             for c in cells]
    if queued is not None:
        lines.append(f"waiting for a modem: {queued}")
    return "\n".join(line.rstrip() for line in lines)
