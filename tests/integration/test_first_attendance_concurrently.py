"""A provider's first attendance and the facts it waits for, arriving at once in two
transactions (real PostgreSQL): whichever commits second sees the first, so the provider
gets the student. Found by the fault suite (bench/faults.py): before the lock, a first
attendance whose student or mandate committed at the same moment stayed pending for good."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from contracts.roster import StudentEnrolled
from contracts.special_education import FirstAttendanceRecorded, MandateRecorded
from services.caseload import handlers
from services.kit.consumer import UnitOfWork
from services.kit.settings import AuthSettings, KafkaSettings, Settings
from services.roster.domain import student_id_for
from tests.support import second_runs_before_first_commits

pytestmark = pytest.mark.integration

SETTINGS = Settings(service="caseload", database_url="", kafka=KafkaSettings(), auth=AuthSettings(secret="x" * 40),
                    http_port=0)
T0 = datetime(2026, 9, 1, tzinfo=UTC)
PROVIDER = "speech.provider@d1.example.org"


def student(source_id: str) -> StudentEnrolled:
    return StudentEnrolled(district_id="d1", occurred_at=T0, student_id=student_id_for("d1", source_id),
                           source_id=source_id, school_id="A", grade="03", given_name="G", family_name="F")


def mandate(source_id: str) -> MandateRecorded:
    return MandateRecorded(district_id="d1", mandate_id=f"m-{source_id}", student_source_id=source_id,
                           service="speech")


def attended(source_id: str) -> FirstAttendanceRecorded:
    return FirstAttendanceRecorded(district_id="d1", student_source_id=source_id, provider_email=PROVIDER,
                                   service="speech", session_date=date(2026, 10, 20))


@pytest.fixture
async def pool(service_db):
    pool = await service_db("caseload")
    async with pool.acquire() as conn:
        await conn.execute("INSERT INTO provider_authorisations (district_id, provider_email, school_id, granted_by) "
                           "VALUES ('d1', $1, '*', 'admin@d1.example.org')", PROVIDER)
    return pool


async def handle(pool, handler, events) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await handler(UnitOfWork(conn, source="caseflow.caseload", settings=SETTINGS), events)


async def linked(pool) -> tuple[list, list]:
    async with pool.acquire() as conn:
        attendances = [(r["status"], r["waiting_for"]) for r in
                       await conn.fetch("SELECT status, waiting_for FROM first_attendances")]
        members = [r["owner_email"] for r in await conn.fetch("SELECT owner_email FROM memberships")]
    return attendances, members


@pytest.mark.parametrize("first", ["attendance", "student"])
async def test_a_first_attendance_and_its_student_arriving_at_once_give_the_provider_the_student(pool, first):
    await handle(pool, handlers.on_mandates_recorded, [mandate("s1")])
    attendance = (handlers.on_first_attendances, [attended("s1")])
    enrol = (handlers.on_roster_students, [student("s1")])
    await second_runs_before_first_commits(pool, *((attendance, enrol) if first == "attendance" else
                                                   (enrol, attendance)), settings=SETTINGS)
    assert await linked(pool) == ([("applied", None)], [PROVIDER])


@pytest.mark.parametrize("first", ["mandate", "student"])
async def test_a_mandate_and_the_student_of_a_waiting_first_attendance_arriving_at_once_apply_it(pool, first):
    await handle(pool, handlers.on_first_attendances, [attended("s1")])  # waits: no student, no mandate
    recorded = (handlers.on_mandates_recorded, [mandate("s1")])
    enrol = (handlers.on_roster_students, [student("s1")])
    await second_runs_before_first_commits(pool, *((recorded, enrol) if first == "mandate" else
                                                   (enrol, recorded)), settings=SETTINGS)
    assert await linked(pool) == ([("applied", None)], [PROVIDER])


async def test_a_batch_of_students_of_many_districts_applies_the_first_attendance_waiting_for_one_of_them(pool):
    """on_roster_students asks for waiting first attendances once a batch, then only in the
    districts where one waits: a student of d1 among students of other districts still
    gets their provider."""
    await handle(pool, handlers.on_mandates_recorded, [mandate("s1")])
    await handle(pool, handlers.on_first_attendances, [attended("s1")])  # waits for the student
    others = [StudentEnrolled(district_id=f"d{n}", occurred_at=T0, student_id=student_id_for(f"d{n}", "s1"),
                              source_id="s1", school_id="A", grade="03", given_name="G", family_name="F")
              for n in (2, 3)]
    await handle(pool, handlers.on_roster_students, [others[0], student("s1"), others[1]])
    assert await linked(pool) == ([("applied", None)], [PROVIDER])
