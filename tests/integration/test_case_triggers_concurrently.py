"""Two transactions at once on one student (real PostgreSQL): whichever commits second
sees the first, so no trigger is lost and no second case opens."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from contracts.cases import FileSubmitted, FormSubmitted
from contracts.roster import StudentEnrolled
from services.cases import handlers, store
from services.kit.consumer import UnitOfWork
from services.kit.settings import AuthSettings, KafkaSettings, Settings
from services.roster.domain import student_id_for
from tests.support import second_runs_before_first_commits

pytestmark = pytest.mark.integration

SETTINGS = Settings(service="cases", database_url="", kafka=KafkaSettings(), auth=AuthSettings(secret="x" * 40),
                    http_port=0)
T0 = datetime(2026, 9, 1, tzinfo=UTC)


def student(source_id: str) -> StudentEnrolled:
    return StudentEnrolled(district_id="d1", occurred_at=T0, student_id=student_id_for("d1", source_id),
                           source_id=source_id, school_id="A", grade="10", given_name="G", family_name="F")


def form(source_id: str) -> FormSubmitted:
    return FormSubmitted(district_id="d1", occurred_at=T0 + timedelta(days=1), student_source_id=source_id,
                         form_id="f", form_name="Counseling referral")


async def at_once(pool, first, second) -> None:
    await second_runs_before_first_commits(pool, first, second, settings=SETTINGS)


@pytest.fixture
async def pool(service_db):
    pool = await service_db("cases")
    async with pool.acquire() as conn:
        await store.set_entry(conn, "d1", "submit_form", True, "admin", T0)
        await store.set_entry(conn, "d1", "submit_file", True, "admin", T0)
    return pool


@pytest.mark.parametrize("first", ["trigger", "student"])
async def test_a_trigger_and_its_student_arriving_at_once_open_the_case(pool, first):
    trigger = (handlers.on_triggers, [form("s1")])
    enrol = (handlers.on_roster_students, [student("s1")])
    await at_once(pool, *((trigger, enrol) if first == "trigger" else (enrol, trigger)))
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM cases") == 1
        assert await conn.fetchval("SELECT count(*) FROM waiting_triggers") == 0


async def test_two_triggers_for_one_student_at_once_open_one_case(pool):
    async with pool.acquire() as conn, conn.transaction():
        await handlers.on_roster_students(UnitOfWork(conn, source="caseflow.cases", settings=SETTINGS),
                                          [student("s2")])
    file = FileSubmitted(district_id="d1", occurred_at=T0 + timedelta(days=1), student_source_id="s2",
                         file_id="x", file_name="504 plan.pdf")
    await at_once(pool, (handlers.on_triggers, [form("s2")]), (handlers.on_triggers, [file]))
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM cases") == 1
        joined = await conn.fetch("SELECT kind, case_id FROM timeline ORDER BY entry_id")
    assert [r["kind"] for r in joined] == ["submit_form", "case_opened", "submit_file"]
    assert len({r["case_id"] for r in joined}) == 1


async def test_the_dashboards_counters_always_equal_a_count_over_every_case(pool):
    async with pool.acquire() as conn, conn.transaction():
        uow = UnitOfWork(conn, source="caseflow.cases", settings=SETTINGS)
        await handlers.on_roster_students(uow, [student(f"c{i}") for i in range(12)])
        await handlers.on_triggers(uow, [form(f"c{i}") for i in range(12)])
    async with pool.acquire() as conn:
        await conn.execute("UPDATE cases SET team_name = 'SST', team_leader = 'lee@x.org' WHERE case_number < '26-000007'")
        await conn.execute("UPDATE cases SET case_manager = 'ok@x.org', school_id = 'B' WHERE case_number > '26-000004'")
        await conn.execute("UPDATE cases SET status = 'closed' WHERE case_number IN ('26-000002', '26-000009')")
        await conn.execute("DELETE FROM cases WHERE case_number = '26-000011'")
        kept = {(r["school_id"], r["dimension"], r["key"]): r["open_cases"] for r in await conn.fetch(
            "SELECT school_id, dimension, key, open_cases FROM open_case_counts WHERE open_cases <> 0")}
        counted = {(r["school_id"], r["dimension"], r["key"]): r["n"] for r in await conn.fetch(
            """SELECT c.school_id, d.dimension, d.key, count(*) AS n FROM cases c,
                      LATERAL (VALUES ('school', ''), ('team', coalesce(c.team_name, '')),
                                      ('team_leader', coalesce(c.team_leader, '')),
                                      ('case_manager', coalesce(c.case_manager, ''))) AS d(dimension, key)
               WHERE c.status = 'open' AND (d.dimension = 'school' OR d.key <> '') GROUP BY 1, 2, 3""")}
        weekly = await conn.fetchval("SELECT sum(opened) FROM weekly_openings")
    assert kept == counted
    assert kept[("A", "school", "")] == 3  # 1-4 at A, 2 closed
    assert weekly == 12  # opened, whatever became of them since
