"""Restart long-lived tasks with backoff and report what each is doing.

Cancellation (shutdown) passes straight through; any other exception is logged and
the task restarted after an exponentially growing, jittered pause, reset once the task
has stayed up for a while. A task that fails before its first start raises instead: a
port in use or an unreadable device is the operator's to see at once, and the daemon
says READY to systemd only when every part has started.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from gatewayd import logs

log = logs.get("gatewayd.supervisor")

STABLE_SECONDS = 60.0

# A supervised function takes `task_status` and calls `task_status.started()` once up.
Startable = Callable[..., Awaitable[None]]


@dataclass
class TaskState:
    state: str = "starting"
    restarts: int = 0
    last_error: str | None = None


def leaf(exc: BaseException) -> BaseException:
    """The one real error inside trio's nursery wrappers, when there is exactly one."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def at_once(fn: Callable[[], Awaitable[None]]) -> Startable:
    """Adapt a plain coroutine function that is 'up' as soon as it runs."""
    async def run(task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await fn()
    return run


@dataclass
class Supervisor:
    min_backoff: float = 1.0
    max_backoff: float = 60.0
    tasks: dict[str, TaskState] = field(default_factory=dict)
    # Set when the daemon stops: a task that then returns (a server told to shut down)
    # has finished its work, not crashed.
    stopping: bool = False

    def healthy(self) -> bool:
        return all(t.state == "running" for t in self.tasks.values())

    async def run(self, name: str, fn: Startable, *,
                  task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        ts = self.tasks.setdefault(name, TaskState())
        backoff = self.min_backoff
        first = True
        while True:
            started = trio.current_time()
            try:
                async with trio.open_nursery() as nursery:
                    await nursery.start(fn)
                    ts.state = "running"
                    if first:
                        first = False
                        task_status.started()
                if self.stopping:
                    ts.state = "stopped"
                    return
                log.warning("task_returned", task=name)
                ts.last_error = "returned"
            except Exception as group:  # restart it; cancellation is a BaseException, passes
                e = leaf(group)
                if first:
                    ts.state = "failed"
                    raise e from None
                log.error("task_crashed", task=name, error=f"{type(e).__name__}: {e}",
                          exc_info=e)
                ts.last_error = f"{type(e).__name__}: {e}"
            ts.state = "restarting"
            ts.restarts += 1
            if trio.current_time() - started > STABLE_SECONDS:
                backoff = self.min_backoff
            delay = backoff * random.uniform(0.5, 1.5)
            log.info("task_restarting", task=name, in_seconds=round(delay, 2))
            await trio.sleep(delay)
            backoff = min(self.max_backoff, backoff * 2)
