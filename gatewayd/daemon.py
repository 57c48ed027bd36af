"""`gatewayd run`: one root nursery, supervised tasks, graceful stop.

Order matters at both ends. Start: store (migrations) -> dialogs restored -> HTTP and
admin listeners -> the SMPP bind (when enabled) -> the modem pool (when [[modems]] are
configured; started at once, a dead modem is a status line) -> READY. Stop (SIGTERM/SIGINT):
STOPPING -> listeners stop accepting -> in-flight hops finish (bounded by
http.graceful_seconds) -> the SMPP channel unbinds and records every answer it got ->
background tasks are cancelled -> the store writer drains its queue, checkpoints the
WAL and closes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import sqlite3
import sys
import time
from typing import Any

import hypercorn.config
import hypercorn.trio
import trio

from gatewayd import __version__, config as config_mod, logs, metrics
from gatewayd import mpesa, smpp_jobs, upstream
from gatewayd.admin import AdminApp
from gatewayd.http import HttpApp
from gatewayd.modem_channel import ModemChannel
from gatewayd.ratelimit import RateLimiter
from gatewayd.router import Router
from gatewayd.sdnotify import Notifier
from gatewayd.smpp_channel import SmppChannel
from gatewayd.sms_route import SmsRoute
from gatewayd.sync_api import SyncApp
from gatewayd.supervisor import Supervisor, at_once, leaf
from gatewayd.ussd import UssdService
from menus import lending as app
from menus.dialogs import TextMode
from menus.texts import load_all
from store import outbox, pins
from store.writer import Store, StoreUnavailable, probe_write
from sync.service import SyncService

log = logs.get("gatewayd")

SWEEP_SECONDS = 30.0
PROBE_SECONDS = 2.0

# What SIGHUP may change under live dialogs; everything else waits for a restart.
LIVE_SECTIONS = {"rate_limit", "lending", "log"}
LIVE_KEYS = {"security.pin_attempts", "security.pin_lock_minutes", "security.pin_hash_log2_n",
             "ussd.service_codes", "ussd.session_idle_seconds", "ussd.text_mode",
             "http.allow_from", "http.max_body_bytes", "site.name",
             # SMPP: how messages are written and kept; the bind itself (address,
             # credentials, mode, window, timers) needs a new connection: a restart.
             "smpp.submit_rate", "smpp.throttle_pause_seconds", "smpp.source_addr", "smpp.source_addr_ton",
             "smpp.source_addr_npi", "smpp.long_sms", "smpp.sms_validity_hours",
             "smpp.submit_id_format", "smpp.receipt_id_format", "smpp.ussd_profile",
             "smpp.mo_dedupe_seconds", "smpp.mo_concat_timeout_seconds",
             "modem_pool.sms_validity_hours", "modem_pool.mo_dedupe_seconds"}


def settings_from(cfg: config_mod.Config) -> app.Settings:
    return app.Settings(
        site=cfg.site.id, service=cfg.lending.service_name, short_code=cfg.ussd.service_codes[0],
        min_cents=cfg.lending.min_amount * 100, max_cents=cfg.lending.max_amount * 100,
        request_ttl=cfg.lending.request_ttl_hours * 3600,
        max_open_requests=cfg.lending.max_open_requests,
        pin_attempts=cfg.security.pin_attempts,
        pin_lock_seconds=cfg.security.pin_lock_minutes * 60,
        default_lang=cfg.lending.default_language)


def _hypercorn_config(bind: str, graceful: float) -> hypercorn.config.Config:
    hc = hypercorn.config.Config()
    hc.bind = [bind]
    hc.graceful_timeout = graceful
    hc.accesslog = None        # hops are logged by us, with numbers masked
    hc.errorlog = logging.getLogger("hypercorn.error")
    hc.keep_alive_timeout = 30
    return hc


def _clear_stale_socket(path: str) -> None:
    """A socket file left by a killed daemon blocks the bind; a live one must not be stolen."""
    if not os.path.exists(path):
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)
    else:
        raise RuntimeError(f"another gatewayd is serving {path}")
    finally:
        probe.close()


class Daemon:
    def __init__(self, cfg: config_mod.Config) -> None:
        self.cfg = cfg
        self.supervisor = Supervisor()
        self.notifier = Notifier()
        self.stop = trio.Event()
        self.started_at = time.time()
        self.store: Store | None = None
        self.ussd: UssdService | None = None
        self.http_port: int | None = None
        self.http_app: HttpApp | None = None
        self.smpp: SmppChannel | None = None
        self.modems: ModemChannel | None = None
        self.sync: SyncService | None = None
        self.mpesa: mpesa.DirectMpesa | None = None
        self.sms_reply_limiter = smpp_jobs.reply_limiter()
        self.pending_restart: list[str] = []

    # -- health, status, metrics ------------------------------------------------------
    def health(self) -> tuple[bool, dict[str, Any]]:
        store_ok = self.store is not None and self.store.last_error is None
        parts = {name: t.state for name, t in self.supervisor.tasks.items()}
        parts["store"] = "ok" if store_ok else f"failing: {self.store and self.store.last_error}"
        ok = store_ok and self.supervisor.healthy() and not self.stop.is_set()
        if self.smpp is not None:
            # Unbound, the box sends no SMS and serves no USSD from the operator.
            parts["smpp_bind"] = self.smpp.bind_summary()
            ok = ok and self.smpp.bound()
        if self.modems is not None:
            # Not one modem that can send: no SMS go out (or come in) through them.
            parts["modems"] = self.modems.summary()
            ok = ok and self.modems.healthy()
        return ok, {"status": "ok" if ok else "failing", "parts": parts, "version": __version__}

    async def status(self) -> dict[str, Any]:
        """Everything `gatewayd status` shows, in one JSON-able document."""
        ok, health = self.health()
        assert self.ussd is not None and self.store is not None
        queues = await self.store.read(outbox.queue_stats, time.time())
        disk = shutil.disk_usage(self.cfg.store.state_dir)
        db_bytes = sum(os.path.getsize(p) for p in (self.cfg.db_path, self.cfg.db_path + "-wal")
                       if os.path.exists(p))
        st = self.store.stats
        return {**health, "site": self.cfg.site.id, "site_name": self.cfg.site.name,
                "uptime_seconds": round(time.time() - self.started_at),
                "listen": self.cfg.http.listen, "pending_restart": self.pending_restart,
                "ussd": {"dialogs_open": len(self.ussd.dialogs), "hops": self.ussd.stats.hops,
                         "rate_limited": self.ussd.stats.rate_limited,
                         "errors": self.ussd.stats.errors,
                         "unavailable": self.ussd.stats.unavailable},
                "store": {"transactions": st.transactions, "commits": st.commits,
                          "failed_commits": st.failed_commits, "max_group": st.max_group,
                          "last_commit_ms": round(st.last_commit_ms, 3),
                          "last_error": self.store.last_error, "db_bytes": db_bytes},
                "smpp": self.smpp.status() if self.smpp else {"enabled": False},
                "modems": self.modems.status() if self.modems else {"enabled": False},
                "sync": ({**await self.sync.lag(), **vars(self.sync.stats),
                          "upstream": self.sync.upstream, "enabled": True}
                         if self.sync else {"enabled": False}),
                "mpesa": self.mpesa.status() if self.mpesa else {"mode": "upstream"},
                "queues": queues,
                "disk": {"path": os.path.abspath(self.cfg.store.state_dir),
                         "free_bytes": disk.free, "total_bytes": disk.total},
                "tasks": {n: vars(t) for n, t in self.supervisor.tasks.items()}}

    # -- run ------------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        cfg = self.cfg
        os.makedirs(cfg.store.state_dir, mode=0o700, exist_ok=True)
        pin_key = pins.load_or_create_key(cfg.pin_key_path)
        texts = load_all()
        async with Store.open(cfg.db_path, synchronous=cfg.store.synchronous.upper(),
                              readers=cfg.store.readers) as store:
            self.store = store
            self.ussd = ussd = UssdService(
                store, settings_from(cfg), texts, pin_key, cfg.security.pin_hash_log2_n,
                Router({code: "lending" for code in cfg.ussd.service_codes}),
                RateLimiter(cfg.rate_limit.hops_per_minute, cfg.rate_limit.burst),
                cfg.ussd.session_idle_seconds)
            restored = await ussd.restore()
            self.http_app = http_app = HttpApp(
                ussd, TextMode(cfg.ussd.text_mode), cfg.http.max_body_bytes, self.health,
                lambda: metrics.render(self), cfg.http.allow_from)
            admin_app = AdminApp(store, lambda: ussd.settings, lambda: ussd.texts, self.status,
                                 self._modem_rows, self._cancelled)
            _clear_stale_socket(cfg.admin_socket)
            if cfg.sync.enabled:
                self.sync = upstream.build(cfg.sync, cfg.sync_key_path, cfg.site.id, store, ussd)
                await self.sync.load()
                store.commit_listeners.append(self.sync.changed)
                http_app.sync_app = SyncApp(self.sync)
            self.mpesa = await mpesa.build(cfg, store, ussd)
            if self.mpesa is not None:
                # Any commit may have queued an action: the executor looks at once.
                store.commit_listeners.append(self.mpesa.wake)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._signals)
                http_done = trio.Event()
                await nursery.start(self.supervisor.run, "http",
                                    self._server(http_app, cfg.http.listen, http_done, True))
                admin_done = trio.Event()
                await nursery.start(self.supervisor.run, "admin", self._server(
                    admin_app, f"unix:{cfg.admin_socket}", admin_done, False))
                os.chmod(cfg.admin_socket, 0o600)
                await nursery.start(self.supervisor.run, "sweeper", at_once(self._sweeper))
                route = SmsRoute(cfg.modem_pool.takeover_after_seconds)
                if cfg.smpp.enabled:
                    self.smpp = SmppChannel(cfg.smpp, store, ussd, self._sms_job_context, route)
                    await nursery.start(self.supervisor.run, "smpp", self.smpp.run)
                if cfg.modems:
                    # One route for both: only its current sender offers outbox rows,
                    # and never one the other holds, so no SMS goes out twice.
                    self.modems = ModemChannel(cfg, store, self._modem_job_context, route)
                    await nursery.start(self.supervisor.run, "modems", self.modems.run)
                if self.sync is not None and self.sync.upstream:
                    await nursery.start(self.supervisor.run, "sync_push",
                                        at_once(self.sync.push_loop))
                if self.mpesa is not None:
                    await nursery.start(self.supervisor.run, "mpesa_direct",
                                        at_once(self.mpesa.run))
                nursery.start_soon(self.notifier.watchdog_loop)

                await self.notifier.notify("READY=1", f"STATUS=serving {', '.join(cfg.ussd.service_codes)}")
                log.info("gatewayd_ready", version=__version__, listen=cfg.http.listen,
                         port=self.http_port, state_dir=os.path.abspath(cfg.store.state_dir),
                         dialogs_restored=restored, config=cfg.source or "<embedded default>")
                task_status.started(self)

                await self.stop.wait()
                self.supervisor.stopping = True
                await self.notifier.notify("STOPPING=1")
                log.info("gatewayd_stopping")
                with trio.move_on_after(cfg.http.graceful_seconds + 1):
                    await http_done.wait()
                    await ussd.drained()
                if self.smpp is not None:
                    await self.smpp.stop(cfg.smpp.response_timeout_seconds + 1)
                nursery.cancel_scope.cancel()
        log.info("gatewayd_stopped")

    def _server(self, asgi: Any, bind: str, done: trio.Event, public: bool) -> Any:
        hc = _hypercorn_config(bind, self.cfg.http.graceful_seconds)

        async def serve(task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
            try:
                async with trio.open_nursery() as n:
                    binds = await n.start(_serve_hypercorn, asgi, hc, self.stop)
                    if public and binds:
                        self.http_port = int(binds[0].rsplit(":", 1)[1])
                    task_status.started()
            finally:
                if self.stop.is_set():
                    done.set()
        return serve

    async def _signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as sigs:
            async for signum in sigs:
                if signum == signal.SIGHUP:
                    self.reload()
                    continue
                log.info("signal_received", signal=signal.Signals(signum).name)
                self.stop.set()

    def reload(self) -> dict[str, list[str]]:
        """SIGHUP: re-read the config file and apply what can change under live dialogs.

        Texts, limits, lending rules, USSD and HTTP settings apply at once; a dialog in
        progress keeps its state and sees the new rules on its next hop. What needs new
        sockets or another database (listen address, state dir, site id) is reported and
        waits for a restart. A file that does not validate changes nothing."""
        if self.cfg.source is None or self.ussd is None or self.http_app is None:
            log.info("reload_skipped", reason="running on the embedded default")
            return {"applied": [], "needs_restart": []}
        try:
            new = config_mod.load(self.cfg.source)
        except config_mod.ConfigError as e:
            log.error("reload_failed", problems=e.problems)
            return {"applied": [], "needs_restart": [], "problems": e.problems}
        changed = [(s, k) for s, keys in new.values.items() for k, v in keys.items()
                   if self.cfg.values[s][k] != v]
        applied = [f"{s}.{k}" for s, k in changed if f"{s}.{k}" in LIVE_KEYS or s in LIVE_SECTIONS]
        pending = [f"{s}.{k}" for s, k in changed if f"{s}.{k}" not in applied]
        values = {s: dict(keys) for s, keys in self.cfg.values.items()}
        for name in applied:
            s, k = name.split(".")
            values[s][k] = new.values[s][k]
        if new.modems != self.cfg.modems:
            pending.append("modems")        # ports are opened at start
        cfg = config_mod.Config(values, self.cfg.source, self.cfg.modems)

        ussd = self.ussd
        ussd.texts = load_all()
        ussd.settings = settings_from(cfg)
        ussd.router = Router({code: "lending" for code in cfg.ussd.service_codes})
        ussd.dialogs.idle_seconds = cfg.ussd.session_idle_seconds
        ussd.pin_log2_n = cfg.security.pin_hash_log2_n
        ussd.limiter.rate = cfg.rate_limit.hops_per_minute / 60.0
        ussd.limiter.burst = float(cfg.rate_limit.burst)
        self.http_app.configure(TextMode(cfg.ussd.text_mode), cfg.http.max_body_bytes,
                                cfg.http.allow_from)
        if self.smpp is not None:
            self.smpp.configure(cfg.smpp)
        logs.setup(cfg.log.level, cfg.log.format)
        self.cfg = cfg
        self.pending_restart = sorted(set(self.pending_restart) | set(pending))
        log.info("reloaded", applied=["texts"] + applied, needs_restart=self.pending_restart)
        return {"applied": ["texts"] + applied, "needs_restart": self.pending_restart}

    def _job_context(self, validity_hours: float, dedupe_seconds: float,
                     concat_timeout: float) -> smpp_jobs.JobContext:
        """Read at every batch, so a reload applies to the next one."""
        assert self.ussd is not None
        return smpp_jobs.JobContext(
            settings=self.ussd.settings, texts=self.ussd.texts,
            validity=validity_hours * 3600, dedupe_window=dedupe_seconds,
            concat_timeout=concat_timeout, reply_limiter=self.sms_reply_limiter)

    def _sms_job_context(self) -> smpp_jobs.JobContext:
        c = self.cfg.smpp
        return self._job_context(c.sms_validity_hours, c.mo_dedupe_seconds,
                                 c.mo_concat_timeout_seconds)

    def _modem_job_context(self) -> smpp_jobs.JobContext:
        c = self.cfg.modem_pool
        return self._job_context(c.sms_validity_hours, c.mo_dedupe_seconds,
                                 c.reassembly_timeout_seconds)

    def _modem_rows(self) -> dict[str, Any]:
        """GET /modems: what `gatewayd modems` prints."""
        if self.modems is None:
            return {"modems": [], "queued": 0}
        return {"modems": self.modems.pool.status(), "queued": self.modems.pool.queued}

    def _cancelled(self, sms_id: int) -> None:
        if self.modems is not None:
            self.modems.cancelled(sms_id)

    async def _sweeper(self) -> None:
        """Idle dialogs and expired requests; and while the store is failing (disk full,
        read-only), a write probe every few seconds, so health turns good again by
        itself once space returns, not only when the next villager dials."""
        assert self.ussd is not None and self.store is not None
        last_sweep = trio.current_time()
        while True:
            await trio.sleep(PROBE_SECONDS)
            try:
                if self.store.last_error is not None:
                    await self.store.write(probe_write, time.time())
                    log.info("store_recovered")
                if trio.current_time() - last_sweep >= SWEEP_SECONDS:
                    await self.ussd.sweep()
                    last_sweep = trio.current_time()
            except StoreUnavailable as e:
                log.error("store_unavailable", error=str(e))


async def _serve_hypercorn(asgi: Any, hc: hypercorn.config.Config, stop: trio.Event,
                           task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
    await hypercorn.trio.serve(asgi, hc, shutdown_trigger=stop.wait, task_status=task_status)


def run(cfg: config_mod.Config) -> int:
    logs.setup(cfg.log.level, cfg.log.format)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            trio.run(Daemon(cfg).run)
    except Exception as group:
        # A part that cannot start (port taken, state dir unwritable, newer schema): say
        # so in one line for the operator and journald; systemd's Restart= retries.
        e = leaf(group)
        if not isinstance(e, (OSError, RuntimeError, sqlite3.Error)):
            raise
        log.error("gatewayd_cannot_start", error=f"{type(e).__name__}: {e}")
        print(f"gatewayd: cannot start: {e}", file=sys.stderr)
        return 1
    return 0
