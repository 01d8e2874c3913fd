"""Background upkeep of the caseload service: the change feed keeps a bounded history;
memberships a blank email held before it was no email leave once, published."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass

from services.caseload import actions, handlers, pages, store
from services.kit import logs

log = logs.get("caseflow.caseload.upkeep")


@dataclass(frozen=True)
class CaseloadOptions:
    """The caseload service's own settings (CASEFLOW_CASELOAD_*)."""

    changes_retention_days: int = 90  # how far back a tool may catch up from the change feed
    upkeep_interval_seconds: float = 3600.0
    # Each district's first district admin(s), from CASEFLOW_DISTRICT_ADMINS: comma-separated
    # district=email pairs, e.g. "nycdoe=it.admin@schools.nyc.gov,d2=it@d2.org".
    district_admins: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> CaseloadOptions:
        env = dict(os.environ if env is None else env)
        return cls(
            changes_retention_days=int(env.get("CASEFLOW_CASELOAD_CHANGES_RETENTION_DAYS", 90)),
            upkeep_interval_seconds=float(env.get("CASEFLOW_CASELOAD_UPKEEP_INTERVAL_SECONDS", 3600)),
            district_admins=parse_district_admins(env.get("CASEFLOW_DISTRICT_ADMINS", "")),
        )


def parse_district_admins(text: str) -> tuple[tuple[str, str], ...]:
    """"d1=a@d1.org, d2=b@d2.org" -> (("d1", "a@d1.org"), ("d2", "b@d2.org")); raises
    ValueError naming the pair that is not district=email."""
    pairs = []
    for item in (p.strip() for p in text.split(",")):
        if not item:
            continue
        district, _, email = (x.strip() for x in item.partition("="))
        if not district or "@" not in email:
            raise ValueError(f"CASEFLOW_DISTRICT_ADMINS: {item!r} is not district=email")
        pairs.append((district, email))
    return tuple(pairs)


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


async def keep_page_changes_bounded(runtime) -> None:
    """Background job: forget the caseload page changes (migration 008) no kept page can
    still need. Each pass notes the oldest running transaction, and removes the rows older
    than the one noted a pass before, FORGET_AFTER_SECONDS ago: every page kept by any
    instance was read since (pages expire after KEEP_SECONDS), in a snapshot that sees them."""
    horizon = None
    while True:
        async with runtime.pool.acquire() as conn:
            if horizon is not None:
                forgotten = await store.forget_caseload_page_changes(conn, before=horizon)
                if forgotten:
                    log.info("old caseload page changes forgotten", rows=forgotten)
            horizon = await store.caseload_page_horizon(conn)
        runtime.tasks.succeeded()
        await asyncio.sleep(pages.FORGET_AFTER_SECONDS)


async def drop_blank_owners(runtime) -> None:
    """Before migration 005 a staff member with email "" (or spaces) owned memberships.
    Their students' caseloads are brought in line once as the service starts: those
    memberships leave, each removal published like any other. A one-shot job: it returns
    when done; if it fails, the kit's supervisor runs it again (and /readyz says so)."""
    async with runtime.unit_of_work() as uow:
        students = await store.students_with_blank_owners(uow.conn)
        changes = await handlers.refresh(uow, students, report=True)
    if changes:
        log.info("memberships of blank emails removed", students=len(students), changes=len(changes))


async def grant_configured_admins(runtime) -> None:
    """Once as the service starts: the district admins CASEFLOW_DISTRICT_ADMINS names hold
    district_admin (a district's first admin, who then grants the rest); one no longer
    named loses what configuration gave (an admin's grant to them stays). A one-shot job."""
    options: CaseloadOptions = runtime.definition.options
    async with runtime.unit_of_work() as uow:
        changes = await actions.grant_configured_admins(uow, list(options.district_admins))
    if changes:
        log.info("configured district admins", granted=sum(r["held"] for r in changes),
                 revoked=sum(not r["held"] for r in changes))


async def bring_roster_defaults_in_line(runtime) -> None:
    """Once as the service starts: every district's staff hold what its roster defaults give
    them (staff projected before access levels existed get theirs; nothing changes, and
    nothing is published, for a district already in line). One district per transaction."""
    async with runtime.pool.acquire() as conn:
        districts = [r[0] for r in await conn.fetch("SELECT DISTINCT district_id FROM staff")]
    for district_id in districts:
        async with runtime.unit_of_work() as uow:
            changes = await handlers.refresh_roster_defaults(uow, await store.staff_ids_of(uow.conn, district_id))
        if changes:
            log.info("roster defaults brought in line", district_id=district_id, changes=len(changes))
