"""M-PESA direct mode in the daemon: the Daraja credentials, and the supervised task that
runs sync.executor.Executor on the box's own store (store.mpesa_direct).

The executor is woken by every commit (a new action may be among them) and otherwise
sleeps until the next action is due. Every write goes through the store writer, and a
settlement queues its SMS in the same transaction, as an upstream result does.
"""

from __future__ import annotations

import os
import time
import tomllib
from dataclasses import dataclass
from typing import Any

import httpx

from gatewayd import logs, upstream
from gatewayd.upstream import notice_sink
from store import mpesa_direct
from store.writer import Store
from sync import auth, daraja
from sync.executor import DEFAULT_POLICY, Action, Executor, Policy, Result

log = logs.get("gatewayd.mpesa")

SECRETS = ("consumer_key", "consumer_secret", "passkey", "security_credential")


class CredentialsError(RuntimeError):
    pass


def load_credentials(path: str) -> dict[str, str]:
    """The Daraja secrets: a TOML (or JSON, which this reads as well) file of exactly
    SECRETS, apart from the main config so that the config can be shown, diffed and
    logged. Its values are never logged; a file others can read is warned about."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise CredentialsError(f"mpesa.credentials_file {path}: {e.strerror}") from None
    try:
        data = _parse(raw)
    except ValueError as e:
        raise CredentialsError(f"mpesa.credentials_file {path}: {e}") from None
    missing = [k for k in SECRETS if not isinstance(data.get(k), str) or not data[k].strip()]
    unknown = sorted(set(data) - set(SECRETS))
    if missing or unknown:
        raise CredentialsError(f"mpesa.credentials_file {path}: "
                               + "; ".join(([f"needs {', '.join(missing)} (strings)"]
                                            if missing else [])
                                           + ([f"unknown keys {', '.join(unknown)}"]
                                              if unknown else [])))
    if os.stat(path).st_mode & 0o077:
        log.warning("mpesa_credentials_readable_by_others", path=path)
    return {k: data[k].strip() for k in SECRETS}


def _parse(raw: bytes) -> dict[str, Any]:
    import json
    text = raw.decode("utf-8", errors="replace")
    if text.lstrip().startswith("{"):
        try:
            obj = json.loads(text)
        except ValueError:
            raise ValueError("not valid JSON") from None
        if not isinstance(obj, dict):
            raise ValueError("must be a table of keys")
        return obj
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        # The parser's message can quote the line, and the line holds a secret.
        raise ValueError("not valid TOML") from None


def daraja_config(m: Any, secrets: dict[str, str], sync_key: bytes) -> daraja.DarajaConfig:
    # The upstream's relay routes (section 11), each with the action's token made from
    # the site key the upstream shares, so that it can tell Daraja's callbacks from forgeries.
    return daraja.DarajaConfig(
        consumer_key=secrets["consumer_key"], consumer_secret=secrets["consumer_secret"],
        shortcode=m.shortcode, passkey=secrets["passkey"],
        b2c_shortcode=m.b2c_shortcode or m.shortcode, initiator_name=m.initiator_name,
        security_credential=secrets["security_credential"],
        transaction_type=m.transaction_type, command_id=m.command_id,
        callback_token=lambda site, key: auth.callback_token(sync_key, site, key),
        **daraja.callback_urls(m.callback_base_url))


@dataclass
class DirectStats:
    sent: int = 0              # Daraja accepted the request
    settled_ok: int = 0
    settled_failed: int = 0
    unknown: int = 0           # an STK push whose answer was lost: reconciled, never resent
    retried: int = 0           # to be sent again: refused before anything happened (token,
                               # throttle, link), or a B2C whose answer was lost
    status_queries: int = 0    # a B2C without its result, asked about (Transaction Status)


class DirectMpesa:
    """The executor over the store. `run` is the supervised task; `wake` the commit
    listener."""

    def __init__(self, store: Store, site: str, client: daraja.DarajaClient, notices: Any,
                 policy: Policy = DEFAULT_POLICY, idle: float = 300.0) -> None:
        self.store, self.site, self.client, self.notices = store, site, client, notices
        self.stats = DirectStats()
        self.executor = Executor(client, self._source, self._sink, save=self._save,
                                 load=self._load, policy=policy, idle=idle)

    def wake(self) -> None:
        self.executor.wake()

    async def run(self) -> None:
        await self.executor.run()

    def status(self) -> dict[str, Any]:
        return {"mode": "direct", "daraja": self.client.base, **vars(self.stats)}

    async def _source(self) -> list[Action]:
        return [Action(site=self.site, **a)
                for a in await self.store.read(mpesa_direct.open_actions)]

    async def _load(self, site: str, key: str) -> Action | None:
        a = await self.store.read(mpesa_direct.load, key)
        return Action(site=self.site, **a) if a else None

    async def _save(self, a: Action) -> None:
        fields = a.to_json()
        del fields["site"]
        changed = await self.store.write(mpesa_direct.save, fields, time.time())
        if a.note.startswith("accepted"):
            self.stats.sent += 1
        elif a.state == "queued" and a.note.startswith(("not sent", "answer lost")):
            self.stats.retried += 1
        elif a.note.startswith("status query"):
            self.stats.status_queries += 1
            log.info("mpesa_status_query", key=a.key, n=a.status_queries, note=a.note)
        elif a.state == "unknown" and a.note.startswith("answer lost"):
            self.stats.unknown += 1
            log.warning("mpesa_action_unknown", key=a.key, reason=a.note)
        if changed:
            log.info("mpesa_action", key=a.key, kind=a.kind, state=a.state, note=a.note)

    async def _sink(self, r: Result, a: Action) -> None:
        applied = await self.store.write(self._settle_job, r)
        if r.succeeded:
            self.stats.settled_ok += 1
        else:
            self.stats.settled_failed += 1
        log.info("mpesa_settled", key=r.key, result="succeeded" if r.succeeded else "failed",
                 code=r.result_code, receipt=bool(r.receipt), applied=applied)

    def _settle_job(self, conn: Any, r: Result) -> bool:
        now = time.time()
        applied, notices = mpesa_direct.settle(conn, self.site, r.key, r.succeeded, r.receipt,
                                               r.result_code, r.result_desc, now)
        self.notices(conn, notices, now)
        return applied


async def _set_mode(store: Store, direct: bool) -> int:
    def job(conn: Any) -> int:
        mpesa_direct.set_mode(conn, direct, time.time())
        return mpesa_direct.stranded(conn)
    return await store.write(job)


async def build(cfg: Any, store: Store, ussd: Any) -> DirectMpesa | None:
    """Records the mode for new actions; in direct mode, the service (None otherwise)."""
    m = cfg.mpesa
    direct = m.mode == "direct"
    secrets = load_credentials(cfg.mpesa_credentials_path) if direct else None
    stranded = await _set_mode(store, direct)
    if not direct:
        if stranded:
            # Queued in direct mode and not settled: no one executes them now. A relayed
            # callback still settles them, or the operator does (gatewayd mpesa resolve).
            log.warning("mpesa_direct_actions_stranded", open=stranded)
        return None
    client = daraja.DarajaClient(m.daraja_url, daraja_config(
                                     m, secrets, upstream.load_key(cfg.sync_key_path)),
                                 http=httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=15.0)))
    policy = Policy(first_query=m.first_query_seconds, query_retry=m.query_retry_seconds,
                    status_after=m.status_after_seconds)
    return DirectMpesa(store, cfg.site.id, client, notice_sink(ussd), policy)
