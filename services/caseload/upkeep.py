"""Background upkeep of the caseload service: the change feed keeps a bounded history;
memberships a blank email held before it was no email leave once, published."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass

from services.caseload import handlers, store
from services.kit import logs

log = logs.get("caseflow.caseload.upkeep")


@dataclass(frozen=True)
class CaseloadOptions:
    """The caseload service's own settings (CASEFLOW_CASELOAD_*)."""

    changes_retention_days: int = 90  # how far back a tool may catch up from the change feed
    upkeep_interval_seconds: float = 3600.0

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> CaseloadOptions:
        env = dict(os.environ if env is None else env)
        return cls(
            changes_retention_days=int(env.get("CASEFLOW_CASELOAD_CHANGES_RETENTION_DAYS", 90)),
            upkeep_interval_seconds=float(env.get("CASEFLOW_CASELOAD_UPKEEP_INTERVAL_SECONDS", 3600)),
        )


async def forget_old_changes(pool, retention_days: int, batch: int = 50_000) -> int:
    """Delete change-feed rows older than the retention, a batch at a time (short locks)."""
    forgotten = 0
    while True:
        async with pool.acquire() as conn:
            done = await conn.execute(
                """DELETE FROM membership_changes WHERE seq IN (
                       SELECT seq FROM membership_changes WHERE at < now() - make_interval(days => $1)
                       ORDER BY seq LIMIT $2)""",
                retention_days, batch,
            )
        n = int(done.split()[-1])
        forgotten += n
        if n < batch:
            return forgotten


async def keep_change_feed_bounded(runtime) -> None:
    """Background job: forget changes older than the retention, every upkeep interval. A
    failure reaches the kit's supervisor (logged, restarted with backoff, on /readyz)."""
    options: CaseloadOptions = runtime.definition.options
    while True:
        forgotten = await forget_old_changes(runtime.pool, options.changes_retention_days)
        if forgotten:
            log.info("old caseload changes forgotten", rows=forgotten, retention_days=options.changes_retention_days)
        runtime.tasks.succeeded()
        await asyncio.sleep(options.upkeep_interval_seconds)


async def drop_blank_owners(runtime) -> None:
    """Before migration 005 a staff member with email "" (or spaces) owned memberships.
    Their students' caseloads are brought in line once as the service starts: those
    memberships leave, each removal published like any other. A one-shot job: it returns
    when done; if it fails, the kit's supervisor runs it again (and /readyz says so)."""
    async with runtime.unit_of_work() as uow:
        students = await store.students_with_blank_owners(uow.conn)
        changes = await handlers.refresh(uow, students)
    if changes:
        log.info("memberships of blank emails removed", students=len(students), changes=len(changes))
