"""Batches of student enrolments from different partitions are handled side by side (the
caseload service runs two members of the enrolments' consumer group, app.py): their
refreshes of (student, class) pairs take the students' locks shared, so neither waits
for the other even where their students share a lock, while a whole student's refresh
(the student's own event) still waits for them, and they for it. Real PostgreSQL; a wait
shows as lock_timeout's error rather than as a time."""

from __future__ import annotations

import asyncio
import uuid
import zlib

import asyncpg
import pytest

from contracts.roster import ClassUpserted, EnrollmentAdded, StaffUpserted, StudentEnrolled, StudentUpdated
from services.caseload import handlers
from services.kit import outbox
from services.kit.consumer import UnitOfWork
from tests.integration.test_automatic_caseloads import AT, SETTINGS

pytestmark = pytest.mark.integration

HOMEROOM, SECTION = uuid.uuid4(), uuid.uuid4()
MARIA, JOHN = uuid.uuid4(), uuid.uuid4()


def _bucket(student: uuid.UUID) -> int:
    return zlib.crc32(repr(student).encode()) % 256  # store.lock_students' lock of a student


ANA = uuid.uuid4()  # grade 03, in the homeroom
LEE = next(u for u in iter(uuid.uuid4, None) if _bucket(u) == _bucket(ANA))  # grade 09, same lock as ANA


async def _in_transaction(pool, handler, events, *, commit: asyncio.Event | None = None,
                          handled: asyncio.Event | None = None, lock_timeout: str | None = None) -> None:
    async with pool.acquire() as conn, conn.transaction():
        if lock_timeout:
            await conn.execute(f"SET LOCAL lock_timeout = '{lock_timeout}'")
        uow = UnitOfWork(conn, source="caseflow.caseload", settings=SETTINGS)
        await handler(uow, events)
        await outbox.write(conn, uow.outgoing)
        if handled is not None:
            handled.set()
        if commit is not None:
            await commit.wait()


def _enrol(student: uuid.UUID, klass: uuid.UUID) -> EnrollmentAdded:
    return EnrollmentAdded(person_id=student, role="student", class_id=klass, class_source_id=f"c-{klass}",
                           user_source_id=f"p-{student}", school_id="A", primary=True, **AT)


def _student(student: uuid.UUID, grade: str, cls=StudentEnrolled) -> StudentEnrolled:
    changed = {"changed": ["grade"]} if cls is StudentUpdated else {}
    return cls(student_id=student, source_id=f"s-{student}", school_id="A", grade=grade, given_name="G",
               family_name="F", **changed, **AT)


async def _roster(pool) -> None:
    await _in_transaction(pool, handlers.on_roster_staff, [
        StaffUpserted(staff_id=t, source_id=f"t-{t}", role="teacher", given_name="T", family_name="T", email=email,
                      school_ids=["A"], matched=True, **AT)
        for t, email in ((MARIA, "maria@school.org"), (JOHN, "john@school.org"))])
    await _in_transaction(pool, handlers.on_roster_classes, [
        ClassUpserted(class_id=c, source_id=f"c-{c}", school_id="A", class_type=kind, title=f"title {c}",
                      class_code=f"code {c}", grades=[], periods=[], **AT)
        for c, kind in ((HOMEROOM, "homeroom"), (SECTION, "scheduled"))])
    await _in_transaction(pool, handlers.on_roster_students, [_student(ANA, "03"), _student(LEE, "09")])
    await _in_transaction(pool, handlers.on_roster_enrollments, [
        EnrollmentAdded(person_id=t, role="teacher", class_id=c, class_source_id=f"c-{c}", user_source_id=f"p-{t}",
                        school_id="A", primary=True, **AT) for c, t in ((HOMEROOM, MARIA), (SECTION, JOHN))])


async def _handled(task: asyncio.Task, handled: asyncio.Event) -> None:
    await asyncio.wait([task, asyncio.create_task(handled.wait())], return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()  # raises what failed it
    assert handled.is_set()


async def _memberships(pool) -> set[tuple]:
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT owner_email, student_id, reason, source_ref FROM memberships")
        published = await conn.fetchval("SELECT count(*) FROM outbox WHERE convert_from(payload, 'UTF8')::json "
                                        "->> 'event_type' = 'caseload.membership_added.v1'")
    assert published == len(rows)  # each membership added, published once
    return {(r["owner_email"], r["student_id"], r["reason"], uuid.UUID(r["source_ref"])) for r in rows}


async def test_two_batches_of_student_enrolments_sharing_a_students_lock_do_not_wait_for_each_other(service_db):
    pool = await service_db("caseload")
    await _roster(pool)
    first_commits, handled = asyncio.Event(), asyncio.Event()
    first = asyncio.create_task(_in_transaction(pool, handlers.on_roster_enrollments, [_enrol(ANA, HOMEROOM)],
                                                commit=first_commits, handled=handled))
    try:
        await _handled(first, handled)  # the first batch holds its locks, uncommitted
        # Exclusive locks would keep this one waiting until the first commits: lock_timeout fails it.
        await _in_transaction(pool, handlers.on_roster_enrollments, [_enrol(LEE, SECTION)], lock_timeout="3s")
    finally:
        first_commits.set()
        await first
    assert await _memberships(pool) == {("maria@school.org", ANA, "homeroom", HOMEROOM),
                                        ("john@school.org", LEE, "section", SECTION)}


async def test_a_whole_students_refresh_still_waits_for_a_batch_of_enrolments_holding_their_lock(service_db):
    pool = await service_db("caseload")
    await _roster(pool)
    first_commits, handled = asyncio.Event(), asyncio.Event()
    first = asyncio.create_task(_in_transaction(pool, handlers.on_roster_enrollments, [_enrol(ANA, HOMEROOM)],
                                                commit=first_commits, handled=handled))
    try:
        await _handled(first, handled)  # the first batch holds its locks, uncommitted
        with pytest.raises(asyncpg.exceptions.LockNotAvailableError):
            await _in_transaction(pool, handlers.on_roster_students, [_student(LEE, "10", StudentUpdated)],
                                  lock_timeout="1s")
    finally:
        first_commits.set()
        await first
    await _in_transaction(pool, handlers.on_roster_students, [_student(LEE, "10", StudentUpdated)])
    assert await _memberships(pool) == {("maria@school.org", ANA, "homeroom", HOMEROOM)}
