"""A batch of triggers decides as the rules do, trigger by trigger (real PostgreSQL).

The consumer hands the handler a whole batch: the students and their open cases are read in
one statement, the batch is stored and its CaseOpened events written into the outbox by
PostgreSQL. Whatever the mix
(several triggers per student, students with their own open case, a closed one, an open case
transferred in beside or instead of their own, students the roster does not know yet,
entries off or enabled after the trigger), one batch must leave what the triggers leave
applied one at a time, each in its own transaction, and what domain.decide and
domain.trigger_case say, computed here from a plain read of every case."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from contracts.cases import (
    FileSubmitted,
    FormSubmitted,
    InterventionGroupMemberAdded,
    PlanCreated,
    PlanReviewConducted,
    StudentMeetingScheduled,
    TaskAssigned,
)
from contracts.roster import StudentEnrolled
from services.cases import domain, handlers, store
from services.kit.consumer import UnitOfWork
from services.kit.settings import AuthSettings, KafkaSettings, Settings
from services.roster.domain import student_id_for

pytestmark = pytest.mark.integration

SETTINGS = Settings(service="cases", database_url="", kafka=KafkaSettings(), auth=AuthSettings(secret="x" * 40),
                    http_port=0)
T0 = datetime(2026, 9, 1, tzinfo=UTC)
ENABLED_AT = T0 + timedelta(days=10)
BATCH, ONE_BY_ONE = "batch", "single"  # two districts fed the same triggers
STUDENTS = 40


def event_id(district: str, k: int) -> uuid.UUID:
    return uuid.uuid5(uuid.NAMESPACE_URL, f"trigger/{district}/{k}")


def trigger(district: str, kind: int, source_id: str, at: datetime, k: int):
    common = dict(district_id=district, occurred_at=at, student_source_id=source_id, actor_email="c@x.org",
                  correlation_id=f"c{k}", event_id=event_id(district, k))
    match kind:
        case 0:
            return FormSubmitted(**common, form_id=f"f{k}", form_name="Counseling referral")
        case 1:
            return PlanCreated(**common, plan_id=f"p{k}", plan_name="Tier 2 reading")
        case 2:
            return InterventionGroupMemberAdded(**common, group_id="g", group_name="Tier 2, period 3")
        case 3:
            return TaskAssigned(**common, task_id=uuid.uuid5(uuid.NAMESPACE_URL, f"{district}/{k}"),
                                title="Call home", assignee_email="C@x.org", due_date=at.date())
        case 4:
            return StudentMeetingScheduled(**common, meeting_id=f"m{k}", title="Attendance", scheduled_for=at)
        case 5:
            return PlanReviewConducted(**common, plan_id=f"p{k}", review_id=f"r{k}", outcome="continue")
        case _:
            return FileSubmitted(**common, file_id=f"x{k}", file_name="504 plan.pdf")


async def world(conn, district: str, rng: random.Random) -> None:
    """STUDENTS students; some with their own open case, a closed one, an open case
    transferred in (beside their own or alone); five dictionary entries on (one enabled
    after some triggers happened), submit_file off."""
    uow = UnitOfWork(conn, source="caseflow.cases", settings=SETTINGS)
    await handlers.on_roster_students(uow, [StudentEnrolled(
        district_id=district, occurred_at=T0, student_id=student_id_for(district, f"s{i}"), source_id=f"s{i}",
        school_id=f"H{i % 3}", grade="10", given_name="G", family_name="F") for i in range(STUDENTS)])
    for kind in ("submit_form", "create_plan", "assign_task", "schedule_meeting"):
        await store.set_entry(conn, district, kind, True, "admin", T0)
    await store.set_entry(conn, district, "conduct_plan_review", True, "admin", ENABLED_AT)
    for i in range(STUDENTS):
        student = student_id_for(district, f"s{i}")
        state = rng.choice(["none", "none", "open", "closed", "transferred_in", "both"])
        if state in ("open", "closed", "both"):
            await conn.execute(
                """INSERT INTO cases (case_id, district_id, case_number, student_id, school_id, status, trigger_kind,
                                      source_event_id, opened_at, closed_at)
                   VALUES ($1, $2, $3, $4, 'H0', $5, 'submit_form', $1, $6, $7)""",
                uuid.uuid4(), district, f"25-{i:06d}", student, "closed" if state == "closed" else "open",
                T0 - timedelta(days=rng.randint(1, 300)), T0 if state == "closed" else None)
        if state in ("transferred_in", "both"):
            for n in range(rng.choice([1, 1, 2])):
                await conn.execute(
                    """INSERT INTO cases (case_id, district_id, case_number, student_id, school_id, status,
                                          trigger_kind, source_event_id, opened_at, transferred_in_from,
                                          transferred_in_request, transferred_in_case_id, transferred_in_at)
                       VALUES ($1, $2, $3, $4, NULL, 'open', 'create_plan', $5, $6, 'elsewhere', $5, $7, $6)""",
                    uuid.uuid4(), district, f"24-{i:04d}{n:02d}", student, uuid.uuid4(),
                    T0 - timedelta(days=rng.randint(1, 300)), uuid.uuid4())


async def outcome(conn, district: str) -> dict:
    """What the triggers left, by trigger (ids and case numbers differ between districts)."""
    number = {r["case_id"]: r["case_number"] for r in await conn.fetch(
        "SELECT case_id, case_number FROM cases WHERE district_id = $1", district)}
    entries = [(r["source_id"], r["kind"], r["summary"].split(": ")[0], number.get(r["case_id"], "none")[:3])
               for r in await conn.fetch(
                   """SELECT s.source_id, t.kind, t.summary, t.case_id FROM timeline t JOIN students s USING (student_id)
                      WHERE t.district_id = $1 ORDER BY t.entry_id""", district)]
    tasks = sorted((r["source_id"], r["has_case"]) for r in await conn.fetch(
        """SELECT s.source_id, t.case_id IS NOT NULL AS has_case FROM tasks t JOIN students s USING (student_id)
           WHERE t.district_id = $1""", district))
    opened = await conn.fetchval("SELECT count(*) FROM cases WHERE district_id = $1 AND opened_at >= $2",
                                 district, T0)
    waiting = await conn.fetchval("SELECT count(*) FROM waiting_triggers WHERE district_id = $1", district)
    return {"opened": opened, "timeline": entries, "tasks": tasks, "waiting": waiting}


async def case_opened_count(conn, district: str) -> int:
    """The CaseOpened events in the outbox for the district (PostgreSQL writes them there)."""
    return await conn.fetchval(
        """SELECT count(*) FROM outbox
           WHERE convert_from(payload, 'UTF8')::json ->> 'event_type' = 'cases.case_opened.v1'
             AND convert_from(payload, 'UTF8')::json ->> 'district_id' = $1""", district)


async def expected_joins(conn, district: str) -> dict:
    """domain.trigger_case over every open case of each student, from a plain read."""
    found: dict = {}
    for r in await conn.fetch(
            """SELECT s.district_id, s.source_id, s.student_id, c.case_id, c.transferred_in_from IS NOT NULL AS t_in,
                      c.opened_at
               FROM students s JOIN cases c USING (student_id) WHERE s.district_id = $1 AND c.status = 'open'""",
            district):
        found.setdefault(r["student_id"], []).append(domain.OpenCase(r["case_id"], r["t_in"], r["opened_at"]))
    return {student: domain.trigger_case(cases) for student, cases in found.items()}


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_a_batch_of_triggers_leaves_what_they_leave_one_at_a_time_and_what_the_rules_say(service_db, seed):
    pool = await service_db("cases")
    rng = random.Random(seed)
    async with pool.acquire() as conn, conn.transaction():
        for district in (BATCH, ONE_BY_ONE):
            await world(conn, district, random.Random(seed))
    async with pool.acquire() as conn:
        initial = {district: await expected_joins(conn, district) for district in (BATCH, ONE_BY_ONE)}

    # The student lookup the handler uses: the joined case is the rule's, for every student.
    async with pool.acquire() as conn:
        pairs = {(BATCH, f"s{i}") for i in range(STUDENTS)} | {(BATCH, "nobody")}
        students, joins = await store.students_for_triggers(conn, pairs)
        assert set(students) == pairs - {(BATCH, "nobody")}
        assert joins == await expected_joins(conn, BATCH)
        assert await store.open_cases(conn, [s["student_id"] for s in students.values()]) == joins

    plan = [(rng.randrange(7), f"s{rng.randrange(STUDENTS + 3)}",  # s40..s42: not on the roster
             T0 + timedelta(days=rng.choice([1, 20]), seconds=k)) for k in range(150)]
    async with pool.acquire() as conn, conn.transaction():
        uow = UnitOfWork(conn, source="caseflow.cases", settings=SETTINGS)
        await handlers.on_triggers(uow, [trigger(BATCH, kind, src, at, k) for k, (kind, src, at) in enumerate(plan)])
    for k, (kind, src, at) in enumerate(plan):
        async with pool.acquire() as conn, conn.transaction():
            uow = UnitOfWork(conn, source="caseflow.cases", settings=SETTINGS)
            await handlers.on_triggers(uow, [trigger(ONE_BY_ONE, kind, src, at, k)])

    async with pool.acquire() as conn:
        batch, single = await outcome(conn, BATCH), await outcome(conn, ONE_BY_ONE)
        emitted = {district: await case_opened_count(conn, district) for district in (BATCH, ONE_BY_ONE)}
        assert batch == single
        assert emitted[BATCH] == emitted[ONE_BY_ONE] == batch["opened"] > 0
        assert batch["waiting"] == sum(1 for _, src, _ in plan if int(src[1:]) >= STUDENTS) > 0
        for district in (BATCH, ONE_BY_ONE):
            # The rules, trigger by trigger: the case each trigger went to is the one
            # domain.trigger_case names among the cases open before the triggers, or the one
            # a trigger before it opened where domain.decide said so; none where neither.
            joins = initial[district]
            entries = await store.dictionaries(conn, {district})
            case_of = {r["event_id"]: r["case_id"] for r in await conn.fetch(
                "SELECT event_id, case_id FROM timeline WHERE district_id = $1 AND kind <> 'case_opened'", district)}
            opened_by = {r["source_event_id"]: r["case_id"] for r in await conn.fetch(
                "SELECT source_event_id, case_id FROM cases WHERE district_id = $1 AND opened_at >= $2", district, T0)}
            for k, (kind, src, at) in enumerate(plan):
                if int(src[1:]) >= STUDENTS:
                    continue
                t = trigger(district, kind, src, at, k)
                student = student_id_for(district, src)
                name = domain.KIND_OF[type(t)]
                action, _ = domain.decide(name, at, entries.get((district, name)), student in joins)
                if action == domain.OPEN:
                    joins[student] = opened_by[t.event_id]
                assert case_of[t.event_id] == joins.get(student), (district, k, action)
            assert len(opened_by) == batch["opened"]


async def test_a_case_a_trigger_opens_is_written_only_into_the_indexes_a_read_needs(service_db):
    """Each index entry of an opened case is written in the trigger path's transaction: the
    case opened (open, at a school, no team, leader or manager yet) goes into the indexes of
    its id, its number, its student (all its cases), its student's open ones (one open case
    per student, and the trigger path's probe: one index, migration 011) and a school's open
    cases (search by school); none other (migrations 008, 009, 011). Its id is time-ordered
    (domain.time_ordered_id: version 7), so a batch's cases sit together in cases_pkey."""
    pool = await service_db("cases")
    async with pool.acquire() as conn, conn.transaction():
        await world(conn, BATCH, random.Random(1))
        uow = UnitOfWork(conn, source="caseflow.cases", settings=SETTINGS)
        await handlers.on_triggers(uow, [trigger(BATCH, 0, f"s{i}", T0 + timedelta(days=1), i) for i in range(STUDENTS)])
        assert await case_opened_count(conn, BATCH)
    async with pool.acquire() as conn:
        case_id = await conn.fetchval("SELECT case_id FROM cases WHERE district_id = $1 AND opened_at > $2 LIMIT 1",
                                      BATCH, T0)
        written = set()
        for r in await conn.fetch(
                """SELECT c.relname AS name, pg_get_expr(i.indpred, i.indrelid) AS predicate
                   FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = 'cases'::regclass"""):
            if await conn.fetchval(f"SELECT count(*) FROM cases WHERE case_id = $1 AND ({r['predicate'] or 'true'})",
                                   case_id):
                written.add(r["name"])
    assert written == {"cases_pkey", "cases_district_id_case_number_key", "cases_by_student",
                       "cases_one_open_per_student", "cases_open_by_school"}
    assert case_id.version == 7


async def test_the_probe_of_open_cases_stays_a_probe_in_a_plan_made_while_the_tables_are_young(service_db):
    """The statement is prepared once per connection and its generic plan kept: made while
    the cases table was empty, it walked a school's open cases (cases_open_by_school) for
    each student when no index of a student's open cases was there (a batch went from 25 to
    830 ms as cases were opened, bench/cases.py --only throughput). The index of a student's
    open cases is the one that keeps one open case per student (migration 011)."""
    pool = await service_db("cases")
    async with pool.acquire() as conn:
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        plan = "\n".join(r[0] for r in await conn.fetch(
            f"EXPLAIN SELECT c.case_id FROM unnest($1::uuid[]) AS k(id) "
            f"LEFT JOIN LATERAL ({store._OPEN_CASES_OF.format(student='k.id')}) c ON true", [uuid.uuid4()]))
    assert "Index Scan using cases_one_open_per_student" in plan, plan


async def test_one_open_case_per_student_among_those_opened_here_beside_any_number_transferred_in(service_db):
    """Seed 004's one open case per student, kept by PostgreSQL (migration 011): a second open
    case opened here for the student is refused, while open or closed; open cases transferred in
    (one per request and source case) sit beside the student's own, as many as came."""
    import asyncpg

    pool = await service_db("cases")
    student = uuid.uuid4()

    async def case(number: str, status: str = "open", transferred: bool = False) -> None:
        await conn.execute(
            """INSERT INTO cases (case_id, district_id, case_number, student_id, school_id, status, trigger_kind,
                                  source_event_id, opened_at, closed_at, transferred_in_from, transferred_in_request,
                                  transferred_in_case_id)
               VALUES ($1, 'd', $2, $3, CASE WHEN NOT $5::boolean THEN 'H0' END, $4::text, 'submit_form', $1,
                       $6::timestamptz, CASE WHEN $4 = 'closed' THEN $6::timestamptz END,
                       CASE WHEN $5 THEN 'elsewhere' END,
                       CASE WHEN $5 THEN $7::uuid END, CASE WHEN $5 THEN $8::uuid END)""",
            uuid.uuid4(), number, student, status, transferred, T0, uuid.uuid4(), uuid.uuid4())

    async with pool.acquire() as conn:
        await case("26-000001")
        await case("26-000002", status="closed")
        await case("26-000003", transferred=True)
        await case("26-000004", transferred=True)
        with pytest.raises(asyncpg.UniqueViolationError, match="cases_one_open_per_student"):
            await case("26-000005")
        await conn.execute("UPDATE cases SET status = 'closed', closed_at = $2 WHERE case_number = $1",
                           "26-000001", T0)
        await case("26-000006")
        assert await conn.fetchval("SELECT count(*) FROM cases WHERE student_id = $1 AND status = 'open'",
                                   student) == 3
