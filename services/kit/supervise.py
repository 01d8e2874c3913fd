"""A service's long-running tasks, kept running.

`supervise(name, job)` runs `job()` as a task. When it raises, the failure is logged with
its exception, the task is down (`/readyz` answers 503 naming it, `caseflow_task_up` is 0)
and it is started again after a pause that doubles from 0.5 s up to 30 s. A job that
returns has finished: a one-shot job (settling interrupted imports) is then done, and
stays ready; a job that must never end (the outbox relay: `may_return=False`) is failing
when it returns, like when it raises.

A job records its progress by calling `succeeded()` once per pass, from its own task:
the time of its last success is exported (`caseflow_task_last_success_timestamp_seconds`),
and a job that succeeded since it last started is restarted after the shortest pause
when it fails again. A pass that did part of its work (one district's folder could not be
read, the others were) calls `failing(why)` instead: the task goes on, and is not ready
until a pass succeeds. Called outside a supervised task, both do nothing.

`spawn(coro, name)` runs a task that is not restarted (an import started over HTTP):
it is cancelled at stop like the others, and if it fails the failure is logged.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from services.kit import logs
from services.kit.metrics import Metrics

log = logs.get("caseflow.tasks")

FIRST_PAUSE = 0.5
LONGEST_PAUSE = 30.0


@dataclass
class _Task:
    name: str
    may_return: bool
    state: str = "running"  # running, restarting (down), finished (a one-shot job that returned)
    restarts: int = 0
    error: str | None = None
    succeeded_since_start: bool = False
    trouble: str | None = None  # a pass that failed in part, until one succeeds


_current: ContextVar[_Task | None] = ContextVar("caseflow_supervised_task", default=None)


class Tasks:
    def __init__(self, metrics: Metrics, *, first_pause: float = FIRST_PAUSE,
                 longest_pause: float = LONGEST_PAUSE) -> None:
        self._metrics = metrics
        self._first_pause = first_pause
        self._longest_pause = longest_pause
        self._tasks: dict[str, _Task] = {}
        self._running: list[asyncio.Task] = []

    def supervise(self, name: str, job: Callable[[], Awaitable[None]], *, may_return: bool = True) -> None:
        if name in self._tasks:
            raise ValueError(f"a task named {name} is already supervised")
        task = self._tasks[name] = _Task(name, may_return)
        self._track(asyncio.create_task(self._keep_running(task, job), name=name))

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task:
        spawned = asyncio.create_task(coro, name=name)
        self._track(spawned)
        spawned.add_done_callback(_log_failure)
        return spawned

    def succeeded(self) -> None:
        """Record one successful pass of the calling supervised job."""
        task = _current.get()
        if task is not None:
            task.succeeded_since_start = True
            task.trouble = None
            self._metrics.task_last_success.labels(task=task.name).set(time.time())

    def failing(self, why: str) -> None:
        """Record a pass of the calling supervised job that failed in part: it goes on, and
        is not ready until a pass succeeds."""
        task = _current.get()
        if task is not None:
            task.trouble = why

    def checks(self) -> dict[str, dict[str, Any]]:
        """For /readyz: each supervised task, ok unless it is down waiting for its restart."""
        out = {}
        for t in self._tasks.values():
            check: dict[str, Any] = {"ok": t.state != "restarting" and t.trouble is None, "state": t.state,
                                     "restarts": t.restarts}
            if t.state == "restarting":
                check["error"] = t.error
            elif t.trouble is not None:
                check["error"] = t.trouble
            out[t.name] = check
        return out

    async def stop(self) -> None:
        for running in self._running:
            running.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)

    def _track(self, running: asyncio.Task) -> None:
        self._running.append(running)
        running.add_done_callback(lambda t: t in self._running and self._running.remove(t))

    async def _keep_running(self, task: _Task, job: Callable[[], Awaitable[None]]) -> None:
        _current.set(task)  # this task's own context: the job, and the tasks it starts, see it
        up = self._metrics.task_up.labels(task=task.name)
        self._metrics.task_restarts.labels(task=task.name)  # exported as 0 from the start
        pause = self._first_pause
        while True:
            task.state, task.succeeded_since_start, task.trouble = "running", False, None
            started = time.monotonic()
            up.set(1)
            try:
                await job()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - the point of a supervisor: log it, restart it
                task.error = type(e).__name__
                log.error("task failed; restarting it", task=task.name, error=repr(e), restart_in=pause,
                          exc_info=e)
            else:
                if task.may_return:
                    task.state = "finished"
                    return
                task.error = "returned"
                log.error("task ended, which it never should; restarting it", task=task.name, restart_in=pause)
            task.state = "restarting"
            task.restarts += 1
            up.set(0)
            self._metrics.task_restarts.labels(task=task.name).inc()
            if task.succeeded_since_start or time.monotonic() - started > self._longest_pause:
                pause = self._first_pause  # it had been working: this is a new failure, not the same one
            await asyncio.sleep(pause)
            pause = min(pause * 2, self._longest_pause)


def _log_failure(spawned: asyncio.Task) -> None:
    if spawned.cancelled():
        return
    error = spawned.exception()
    if error is not None:
        log.error("background task failed", task=spawned.get_name(), error=repr(error), exc_info=error)
