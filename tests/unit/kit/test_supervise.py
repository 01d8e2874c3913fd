"""Supervised tasks: a failure is logged and restarted, and the task is not ready while it
is down; a one-shot job that returns is done; a job that must run forever and returns is
failing."""

from __future__ import annotations

import asyncio

from services.kit.metrics import Metrics
from services.kit.supervise import Tasks


async def until(check, what: str) -> None:
    async with asyncio.timeout(10):
        while not check():
            await asyncio.sleep(0.01)


def value(metrics: Metrics, name: str, task: str) -> float:
    return metrics.registry.get_sample_value(f"caseflow_{name}", {"task": task})


async def test_a_failing_task_is_down_until_it_is_restarted_and_then_up():
    metrics = Metrics("test")
    tasks = Tasks(metrics, first_pause=0.05)
    failing = asyncio.Event()
    failing.set()
    passes = []

    async def job() -> None:
        while True:
            if failing.is_set():
                raise RuntimeError("the job broke")
            tasks.succeeded()
            passes.append(1)
            await asyncio.sleep(0.01)

    tasks.supervise("job", job, may_return=False)
    try:
        await until(lambda: tasks.checks()["job"]["restarts"] >= 2, "two restarts")
        await until(lambda: tasks.checks()["job"]["state"] == "restarting", "the job down")
        assert tasks.checks()["job"] == {"ok": False, "state": "restarting", "restarts": tasks.checks()["job"]["restarts"],
                                         "error": "RuntimeError"}
        assert value(metrics, "task_restarts_total", "job") >= 2
        assert value(metrics, "task_last_success_timestamp_seconds", "job") is None

        failing.clear()
        await until(lambda: passes, "a good pass")
        assert tasks.checks()["job"]["ok"] and tasks.checks()["job"]["state"] == "running"
        assert value(metrics, "task_up", "job") == 1
        assert value(metrics, "task_last_success_timestamp_seconds", "job") > 0
    finally:
        await tasks.stop()


async def test_a_one_shot_job_that_returns_is_done_and_stays_ready():
    metrics = Metrics("test")
    tasks = Tasks(metrics)
    ran = []

    async def recover_on_start() -> None:
        ran.append(1)

    tasks.supervise("recover_on_start", recover_on_start)
    try:
        await until(lambda: tasks.checks()["recover_on_start"]["state"] == "finished", "the job done")
        assert ran == [1] and tasks.checks()["recover_on_start"]["ok"]
    finally:
        await tasks.stop()


async def test_a_task_that_must_never_end_is_restarted_when_it_returns():
    metrics = Metrics("test")
    tasks = Tasks(metrics, first_pause=0.01)
    runs = []

    async def relay() -> None:
        runs.append(1)

    tasks.supervise("outbox_relay", relay, may_return=False)
    try:
        await until(lambda: len(runs) >= 3, "three runs")
        assert value(metrics, "task_restarts_total", "outbox_relay") >= 2
    finally:
        await tasks.stop()


async def test_a_spawned_task_that_fails_is_logged():
    import io

    from services.kit import logs

    stream = io.StringIO()
    logs.configure("test", stream=stream)
    tasks = Tasks(Metrics("test"))

    async def import_package() -> None:
        raise ValueError("the package broke")

    spawned = tasks.spawn(import_package(), name="import-1")
    await asyncio.gather(spawned, return_exceptions=True)
    await asyncio.sleep(0)
    err = stream.getvalue()
    assert "background task failed" in err and "import-1" in err and "the package broke" in err


async def test_a_pass_that_fails_in_part_is_not_ready_until_a_pass_succeeds():
    tasks = Tasks(Metrics("test"), first_pause=0.05)
    passes = asyncio.Queue()

    async def job() -> None:
        while True:
            outcome = await passes.get()
            if outcome == "ok":
                tasks.succeeded()
            else:
                tasks.failing(outcome)

    tasks.supervise("drop_folder", job)
    await passes.put("drop folder of d2 (NotADirectoryError)")
    await until(lambda: not tasks.checks()["drop_folder"]["ok"], "not ready")
    check = tasks.checks()["drop_folder"]
    assert check["state"] == "running" and check["restarts"] == 0  # it goes on: no restart
    assert check["error"] == "drop folder of d2 (NotADirectoryError)"
    await passes.put("ok")
    await until(lambda: tasks.checks()["drop_folder"]["ok"], "ready again")
    await tasks.stop()
