"""Wiring upstream sync into the daemon: the site key, the notices inbound changes cause,
and the SyncService built from `[sync]`."""

from __future__ import annotations

import os
from typing import Any

from gatewayd import logs
from menus import lending as app
from store.lending import Notice
from store.writer import Store
from sync.service import SyncService

log = logs.get("gatewayd.upstream")


class SyncKeyError(RuntimeError):
    pass


def load_key(path: str) -> bytes:
    """The site's shared key: 64 hex characters (32 bytes) in a file only we can read,
    provisioned by the upstream team (the key that signs every sync request)."""
    try:
        with open(path, encoding="ascii") as f:
            text = f.read().strip()
    except OSError as e:
        raise SyncKeyError(f"sync key file {path}: {e.strerror}") from None
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise SyncKeyError(f"sync key file {path}: not hex") from None
    if len(key) < 32:
        raise SyncKeyError(f"sync key file {path}: {len(key)} bytes, need at least 32")
    if os.stat(path).st_mode & 0o077:
        log.warning("sync_key_readable_by_others", path=path)
    return key


def notice_sink(ussd: Any) -> Any:
    """Render the SMS an inbound change causes in each villager's language, queued in the
    same transaction as the change itself."""
    def sink(conn: Any, notices: list[Notice], now: float) -> None:
        ctx = app.Ctx(conn=conn, msisdn="", now=now, settings=ussd.settings, texts=ussd.texts)
        app.queue_notices(ctx, notices)
    return sink


def build(sync_cfg: Any, key_path: str, site: str, store: Store, ussd: Any) -> SyncService:
    return SyncService(
        store, site, load_key(key_path), notice_sink(ussd),
        upstream=sync_cfg.upstream_url or None, max_records=sync_cfg.max_batch_records,
        max_bytes=sync_cfg.max_batch_bytes, level=sync_cfg.zstd_level,
        idle_poll_seconds=sync_cfg.idle_poll_seconds, window_seconds=sync_cfg.window_seconds,
        retry_base_seconds=sync_cfg.retry_base_seconds,
        retry_max_seconds=sync_cfg.retry_max_seconds)
