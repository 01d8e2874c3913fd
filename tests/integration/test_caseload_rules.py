"""Caseloads kept incrementally, event by event, always equal the caseloads the rules
(domain.AUTOMATIC_CASELOADS and the manual records) give when recomputed from scratch over
the projection, and seed 000's rules hold, example by example (real PostgreSQL)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contracts.roster import (
    ClassRemoved,
    ClassUpserted,
    EnrollmentAdded,
    EnrollmentRemoved,
    StaffDeactivated,
    StaffUpserted,
    StudentEnrolled,
    StudentUpdated,
    StudentWithdrawn,
)
from services.caseload import handlers
from services.caseload import store
from services.caseload.domain import student_schools
from services.kit import outbox
from services.kit.consumer import UnitOfWork
from services.kit.settings import AuthSettings, KafkaSettings, Settings
from tests.support import second_runs_before_first_commits

pytestmark = pytest.mark.integration

SETTINGS = Settings(service="caseload", database_url="", kafka=KafkaSettings(), auth=AuthSettings(secret="x" * 40),
                    http_port=0)
NS = uuid.UUID("5f0c1d2e-0000-4000-8000-000000000000")
STUDENTS = [uuid.uuid5(NS, f"s{i}") for i in range(4)]
TEACHERS = [uuid.uuid5(NS, f"t{i}") for i in range(2)]
CLASSES = [uuid.uuid5(NS, f"c{i}") for i in range(3)]
CLASS_SCHOOL = {CLASSES[0]: "A", CLASSES[1]: "B", CLASSES[2]: "C"}  # a class stays at its school

GRADES = st.sampled_from(["KG", "03", "07", "10"])
HOMES = st.sampled_from(["A", "B"])
LISTED = st.none() | st.lists(st.sampled_from(["A", "B", "C"]), unique=True)
# A roster where caseloads exist (a homeroom and two sections with matched teachers, four
# students in them), its facts arriving in an order hypothesis picks; random steps then
# change it. Random steps alone almost never assemble a membership.
_CLASS_LISTS = [("class", 0, "homeroom"), ("class", 1, "scheduled"), ("class", 2, "scheduled"),
                ("staff", 0, "a@x.org"), ("staff", 1, " B@x.org"), ("join", 0, 4), ("join", 1, 5), ("join", 2, 4),
                ("join", 0, 0), ("join", 0, 1), ("join", 1, 2), ("join", 1, 3), ("join", 2, 3), ("join", 2, 0)]
scene = st.tuples(*(st.tuples(st.just("enrol"), st.just(i), GRADES, HOMES, LISTED) for i in range(4))).flatmap(
    lambda enrolments: st.permutations([*enrolments, *_CLASS_LISTS]))

steps = st.lists(st.one_of(
    # A student's home school and the schools they are enrolled in (dual enrolment): none
    # from an older producer, in any order, the home school among them or not.
    st.tuples(st.just("enrol"), st.integers(0, 3), GRADES, HOMES, LISTED),
    st.tuples(st.just("withdraw"), st.integers(0, 3)),
    # Every spelling of "no email" an older producer or an SIS bridge may send, and a login
    # email written with spaces and capitals.
    st.tuples(st.just("staff"), st.integers(0, 1), st.sampled_from([None, "", "  ", "a@x.org", " A@x.org ",
                                                                    "b@x.org"])),
    st.tuples(st.just("deactivate"), st.integers(0, 1)),
    st.tuples(st.just("class"), st.integers(0, 2), st.sampled_from(["homeroom", "scheduled"])),
    st.tuples(st.just("remove_class"), st.integers(0, 2)),
    st.tuples(st.just("join"), st.integers(0, 2), st.integers(0, 5)),
    st.tuples(st.just("leave"), st.integers(0, 2), st.integers(0, 5)),
), min_size=0, max_size=30)
plans = st.tuples(scene, steps).map(lambda parts: [*parts[0], *parts[1]])

# Manual actions between roster events: a point person assigned or removed, a support's
# student added or removed, a support handed to a new lead.
manual_steps = st.lists(st.one_of(
    st.tuples(st.just("point"), st.integers(0, 3), st.sampled_from(["attendance", "regents"]),
              st.sampled_from([None, "a@x.org", "c@x.org"])),
    st.tuples(st.just("support"), st.integers(0, 3), st.booleans()),
    st.tuples(st.just("lead"), st.sampled_from(["a@x.org", "c@x.org"])),
), min_size=1, max_size=8)
SUPPORT = uuid.uuid5(NS, "support")


def roster_events(district: str, plan) -> list:
    t0 = datetime(2026, 9, 1, tzinfo=UTC)
    events, known = [], set()
    for n, step in enumerate(plan):
        at = dict(district_id=district, occurred_at=t0 + timedelta(seconds=n))
        match step:
            case ("enrol", i, grade, home, listed):
                cls = StudentUpdated if STUDENTS[i] in known else StudentEnrolled
                extra = {"changed": ["grade"]} if cls is StudentUpdated else {}
                events.append(cls(student_id=STUDENTS[i], source_id=f"s{i}", school_id=home, school_ids=listed,
                                  grade=grade, given_name="G", family_name="F", **extra, **at))
                known.add(STUDENTS[i])
            case ("withdraw", i):
                events.append(StudentWithdrawn(student_id=STUDENTS[i], source_id=f"s{i}", school_id="A",
                                               reason="tobedeleted", **at))
            case ("staff", i, email):
                events.append(StaffUpserted(staff_id=TEACHERS[i], source_id=f"t{i}", role="teacher", given_name="T",
                                            family_name="T", email=email, school_ids=["A"], matched=bool(email), **at))
            case ("deactivate", i):
                events.append(StaffDeactivated(staff_id=TEACHERS[i], source_id=f"t{i}", **at))
            case ("class", i, kind):
                events.append(ClassUpserted(class_id=CLASSES[i], source_id=f"c{i}", school_id=CLASS_SCHOOL[CLASSES[i]],
                                            class_type=kind, title=f"C{i}", grades=[], periods=[], **at))
            case ("remove_class", i):
                events.append(ClassRemoved(class_id=CLASSES[i], source_id=f"c{i}",
                                           school_id=CLASS_SCHOOL[CLASSES[i]], **at))
            case ("join" | "leave", c, p):
                person, role = (STUDENTS[p], "student") if p < 4 else (TEACHERS[p - 4], "teacher")
                cls = EnrollmentAdded if step[0] == "join" else EnrollmentRemoved
                extra = {"primary": True} if cls is EnrollmentAdded else {}
                events.append(cls(person_id=person, role=role, class_id=CLASSES[c], class_source_id=f"c{c}",
                                  user_source_id=f"p{p}", school_id=CLASS_SCHOOL[CLASSES[c]], **extra, **at))
    return events


HANDLER = {StudentEnrolled: handlers.on_roster_students, StudentUpdated: handlers.on_roster_students,
           StudentWithdrawn: handlers.on_roster_students, StaffUpserted: handlers.on_roster_staff,
           StaffDeactivated: handlers.on_roster_staff, ClassUpserted: handlers.on_roster_classes,
           ClassRemoved: handlers.on_roster_classes, EnrollmentAdded: handlers.on_roster_enrollments,
           EnrollmentRemoved: handlers.on_roster_enrollments}


async def held_memberships(conn) -> set[tuple]:
    return {(r["owner_email"], r["student_id"], r["reason"], r["source_ref"])
            for r in await conn.fetch("SELECT * FROM memberships")}


async def published(conn, after: int = 0) -> list[dict]:
    """The events in the outbox after id `after`, in the order the relay sends them: the
    membership events the refresh wrote itself, and what handlers emitted."""
    import json

    return [json.loads(r["payload"]) for r in await conn.fetch(
        "SELECT payload FROM outbox WHERE id > $1 ORDER BY id", after)]


_pool: dict = {}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plan=plans, batch=st.integers(1, 4), manual=manual_steps, where=st.randoms())
async def test_incremental_caseloads_equal_caseloads_recomputed_from_scratch(service_db, plan, batch, manual, where):
    if service_db not in _pool:
        _pool.clear()
        _pool[service_db] = await service_db("caseload")
    pool = _pool[service_db]
    async with pool.acquire() as conn:
        await conn.execute("TRUNCATE students, staff, classes, class_members, memberships, outbox, point_persons, "
                           "supports, support_members")
        await conn.execute("INSERT INTO supports (support_id, district_id, school_id, name, lead_email, created_by) "
                           "VALUES ($1, 'd1', 'A', 'Tier 2 reading', 'a@x.org', 'test')", SUPPORT)
    events = roster_events("d1", plan)
    # Manual actions land at random points among the roster events.
    at = sorted(where.randint(0, len(events)) for _ in manual)
    point_persons: dict = {}
    members: set = set()
    lead = "a@x.org"

    async def act(step) -> None:
        nonlocal lead
        async with pool.acquire() as conn, conn.transaction():
            uow = UnitOfWork(conn, source="caseflow.caseload", settings=SETTINGS)
            match step:
                case ("point", i, type_, owner):
                    await store.assign_point_persons(conn, district_id="d1", student_ids=[STUDENTS[i]], type_=type_,
                                                     owner_email=owner, by="test")
                    point_persons.pop((STUDENTS[i], type_), None)
                    if owner:
                        point_persons[(STUDENTS[i], type_)] = owner
                    touched = [STUDENTS[i]]
                case ("support", i, add):
                    if add:
                        await conn.execute("INSERT INTO support_members (support_id, student_id, added_by) "
                                           "VALUES ($1, $2, 'test') ON CONFLICT DO NOTHING", SUPPORT, STUDENTS[i])
                        members.add((SUPPORT, STUDENTS[i]))
                    else:
                        await conn.execute("DELETE FROM support_members WHERE student_id = $1", STUDENTS[i])
                        members.discard((SUPPORT, STUDENTS[i]))
                    touched = [STUDENTS[i]]
                case ("lead", email):
                    await conn.execute("UPDATE supports SET lead_email = $1", email)
                    lead = email
                    touched = [s for _, s in members]
            await handlers.refresh(uow, touched)
            await outbox.write(conn, uow.outgoing)

    # Events of one type arrive in batches, as the consumer hands them over.
    i = 0
    while i < len(events):
        while at and at[0] <= i:
            at.pop(0)
            await act(manual[len(manual) - len(at) - 1])
        run = [events[i]]
        while len(run) < batch and i + len(run) < len(events) and HANDLER[type(events[i + len(run)])] is HANDLER[type(events[i])]:
            run.append(events[i + len(run)])
        if at and at[0] < i + len(run):
            run = run[:max(1, at[0] - i)]
        async with pool.acquire() as conn, conn.transaction():
            uow = UnitOfWork(conn, source="caseflow.caseload", settings=SETTINGS)
            await HANDLER[type(run[0])](uow, run)
            await outbox.write(conn, uow.outgoing)
        i += len(run)
    while at:
        at.pop(0)
        await act(manual[len(manual) - len(at) - 1])
    async with pool.acquire() as conn:
        held = await held_memberships(conn)
        from_scratch = await store.wanted_memberships(conn)
        events = await published(conn)
        statuses = {r["student_id"]: r["status"] for r in await conn.fetch("SELECT * FROM students")}
        schools = {r["student_id"]: tuple(r["school_ids"]) for r in await conn.fetch("SELECT * FROM students")}
        class_schools = {(r["owner_email"], r["student_id"], r["source_ref"]): r["school_id"]
                         for r in await conn.fetch("SELECT * FROM memberships WHERE reason IN ('homeroom', 'section')")}
    assert held == from_scratch
    # The manual ones are exactly the point persons and supports assigned, for active students.
    active = {s for s, status in statuses.items() if status == "active"}
    assert {m for m in held if m[2] in ("point_person", "support")} == (
        {(owner, student, "point_person", type_) for (student, type_), owner in point_persons.items()
         if student in active}
        | {(lead, student, "support", str(SUPPORT)) for _, student in members if student in active})
    # Each student belongs to every school of their newest enrolment, whatever its order; a
    # homeroom or section membership to the school of its class.
    newest = {STUDENTS[step[1]]: student_schools(step[3], step[4]) for step in plan if step[0] == "enrol"}
    assert schools == newest
    assert all(school == CLASS_SCHOOL[uuid.UUID(ref)] for (_, _, ref), school in class_schools.items())
    # ... and a subscriber replaying the membership events holds the same caseloads.
    replayed: set[tuple] = set()
    for e in events:
        if not e["event_type"].startswith("caseload.membership_"):
            continue  # the teachers' access by the roster default (caseload.access.v1)
        key = (e["owner_email"], uuid.UUID(e["student_id"]), e["reason"], e["source_ref"])
        if e["reason"] in ("homeroom", "section"):
            assert e["school_id"] == CLASS_SCHOOL[uuid.UUID(e["source_ref"])]
        if e["event_type"] == "caseload.membership_added.v1":
            assert key not in replayed
            replayed.add(key)
        else:
            replayed.remove(key)
    assert replayed == held


@pytest.mark.parametrize("first", ["student", "homeroom"])
async def test_a_students_facts_arriving_at_once_on_different_topics_still_make_the_membership(service_db, first):
    """The student's enrolment and their place in a homeroom come on different topics,
    handled concurrently. Whichever commits second must see the first."""
    pool = await service_db("caseload")
    t0 = datetime(2026, 9, 1, tzinfo=UTC)
    at = dict(district_id="d1", occurred_at=t0)
    async with pool.acquire() as conn, conn.transaction():
        uow = UnitOfWork(conn, source="caseflow.caseload", settings=SETTINGS)
        await handlers.on_roster_staff(uow, [StaffUpserted(staff_id=TEACHERS[0], source_id="t0", role="teacher",
                                                           given_name="T", family_name="T", email="a@x.org",
                                                           school_ids=["A"], matched=True, **at)])
        await handlers.on_roster_classes(uow, [ClassUpserted(class_id=CLASSES[0], source_id="c0", school_id="A",
                                                             class_type="homeroom", title="3-401", grades=["03"],
                                                             periods=[], **at)])
        await handlers.on_roster_enrollments(uow, [EnrollmentAdded(
            person_id=TEACHERS[0], role="teacher", class_id=CLASSES[0], class_source_id="c0", user_source_id="t0",
            school_id="A", primary=True, **at)])
    student = (handlers.on_roster_students, [StudentEnrolled(
        student_id=STUDENTS[0], source_id="s0", school_id="A", grade="03", given_name="G", family_name="F", **at)])
    homeroom = (handlers.on_roster_enrollments, [EnrollmentAdded(
        person_id=STUDENTS[0], role="student", class_id=CLASSES[0], class_source_id="c0", user_source_id="s0",
        school_id="A", primary=False, **at)])
    one, two = (student, homeroom) if first == "student" else (homeroom, student)

    await second_runs_before_first_commits(pool, one, two, settings=SETTINGS)
    async with pool.acquire() as conn:
        held = await conn.fetch("SELECT owner_email, reason FROM memberships WHERE student_id = $1", STUDENTS[0])
    assert [(r["owner_email"], r["reason"]) for r in held] == [("a@x.org", "homeroom")]


async def test_the_change_feed_forgets_what_is_older_than_its_retention(service_db):
    from services.caseload.upkeep import forget_old_changes

    pool = await service_db("caseload")
    async with pool.acquire() as conn:
        await conn.execute(
            """INSERT INTO membership_changes (at, change, district_id, owner_email, student_id, reason, source_ref,
                                               detail, school_id)
               SELECT now() - make_interval(days => d), 'added', 'd1', 'a@x.org', gen_random_uuid(), 'homeroom',
                      'c', 'homeroom 3-401', 'A'
               FROM generate_series(0, 119) AS d""")
    assert await forget_old_changes(pool, retention_days=90, batch=7) == 30  # 90 days old and older
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM membership_changes") == 90


@pytest.mark.parametrize("first", ["class_change", "enrolment"])
async def test_a_class_becoming_a_homeroom_as_a_student_joins_it_still_makes_the_membership(service_db, first):
    """A change to a class finds the students it affects in the class lists; a student
    joining the class at that moment must not fall between the two."""
    pool = await service_db("caseload")
    at = dict(district_id="d1", occurred_at=datetime(2026, 9, 1, tzinfo=UTC))
    later = dict(district_id="d1", occurred_at=datetime(2026, 9, 2, tzinfo=UTC))
    async with pool.acquire() as conn, conn.transaction():
        uow = UnitOfWork(conn, source="caseflow.caseload", settings=SETTINGS)
        await handlers.on_roster_staff(uow, [StaffUpserted(staff_id=TEACHERS[0], source_id="t0", role="teacher",
                                                           given_name="T", family_name="T", email="a@x.org",
                                                           school_ids=["A"], matched=True, **at)])
        await handlers.on_roster_students(uow, [StudentEnrolled(
            student_id=STUDENTS[0], source_id="s0", school_id="A", grade="03", given_name="G", family_name="F", **at)])
        await handlers.on_roster_classes(uow, [ClassUpserted(class_id=CLASSES[0], source_id="c0", school_id="A",
                                                             class_type="scheduled", title="3-401", grades=["03"],
                                                             periods=[], **at)])
        await handlers.on_roster_enrollments(uow, [EnrollmentAdded(
            person_id=TEACHERS[0], role="teacher", class_id=CLASSES[0], class_source_id="c0", user_source_id="t0",
            school_id="A", primary=True, **at)])
    becomes_homeroom = (handlers.on_roster_classes, [ClassUpserted(
        class_id=CLASSES[0], source_id="c0", school_id="A", class_type="homeroom", title="3-401", grades=["03"],
        periods=[], **later)])
    joins = (handlers.on_roster_enrollments, [EnrollmentAdded(
        person_id=STUDENTS[0], role="student", class_id=CLASSES[0], class_source_id="c0", user_source_id="s0",
        school_id="A", primary=False, **later)])
    one, two = (becomes_homeroom, joins) if first == "class_change" else (joins, becomes_homeroom)
    await second_runs_before_first_commits(pool, one, two, settings=SETTINGS)
    async with pool.acquire() as conn:
        held = await conn.fetch("SELECT owner_email, reason FROM memberships WHERE student_id = $1", STUDENTS[0])
    assert [(r["owner_email"], r["reason"]) for r in held] == [("a@x.org", "homeroom")]


async def handled(pool, handler, events) -> list[dict]:
    """Run one handler on these events in its own transaction; the events it published."""
    async with pool.acquire() as conn, conn.transaction():
        before = await conn.fetchval("SELECT coalesce(max(id), 0) FROM outbox")
        uow = UnitOfWork(conn, source="caseflow.caseload", settings=SETTINGS)
        await handler(uow, events)
        await outbox.write(conn, uow.outgoing)
        return await published(conn, before)


def teacher(email: str | None, at: datetime) -> StaffUpserted:
    return StaffUpserted(district_id="d1", occurred_at=at, staff_id=TEACHERS[0], source_id="t0", role="teacher",
                         given_name="T", family_name="T", email=email, school_ids=["A"], matched=bool(email))


@pytest.mark.parametrize("blank", ["", "  ", "\t"])
async def test_a_teacher_whose_email_is_blank_owns_no_membership_until_a_real_one_arrives(service_db, blank):
    """An older producer or another SIS bridge may still send email "" (or spaces) in
    StaffUpserted: that teacher is unmatched, whatever the spelling of "none"."""
    pool = await service_db("caseload")
    t0 = datetime(2026, 9, 1, tzinfo=UTC)
    at = dict(district_id="d1", occurred_at=t0)
    emitted = await handled(pool, handlers.on_roster_staff, [teacher(blank, t0)])
    emitted += await handled(pool, handlers.on_roster_classes, [ClassUpserted(
        class_id=CLASSES[0], source_id="c0", school_id="A", class_type="homeroom", title="3-401", grades=["03"],
        periods=[], **at)])
    emitted += await handled(pool, handlers.on_roster_students, [StudentEnrolled(
        student_id=s, source_id=f"s{i}", school_id="A", grade="03", given_name="G", family_name="F", **at)
        for i, s in enumerate(STUDENTS[:2])])
    emitted += await handled(pool, handlers.on_roster_enrollments, [
        EnrollmentAdded(person_id=person, role=role, class_id=CLASSES[0], class_source_id="c0", user_source_id="x",
                        school_id="A", primary=role == "teacher", **at)
        for person, role in [(TEACHERS[0], "teacher"), (STUDENTS[0], "student"), (STUDENTS[1], "student")]])
    async with pool.acquire() as conn:
        assert await conn.fetch("SELECT owner_email FROM memberships") == []
        assert await conn.fetchval("SELECT email FROM staff WHERE staff_id = $1", TEACHERS[0]) is None
    assert emitted == []

    # The next day's file gives the teacher a login email: the homeroom is on her caseload.
    emitted = await handled(pool, handlers.on_roster_staff, [teacher(" Rivera@X.org ", t0 + timedelta(days=1))])
    assert sorted((e["event_type"], e["owner_email"], e["reason"]) for e in emitted
                  if e["event_type"].startswith("caseload.membership_")) == [
        ("caseload.membership_added.v1", "rivera@x.org", "homeroom")] * 2
    # ... and, matched to a login, she holds the district's default for teachers (caseload.access.v1).
    assert [(e["event_type"], e["staff_email"], e["level"], e["basis"]) for e in emitted
            if e["event_type"].startswith("caseload.access_")] == [
        ("caseload.access_granted.v1", "rivera@x.org", "caseload_viewer", "roster_default")]
    async with pool.acquire() as conn:
        held = await conn.fetch("SELECT owner_email, student_id FROM memberships ORDER BY student_id")
    assert sorted(r["student_id"] for r in held) == sorted(STUDENTS[:2])
    assert {r["owner_email"] for r in held} == {"rivera@x.org"}

    # ... and losing it again ("" from a bridge) takes the caseload away.
    emitted = await handled(pool, handlers.on_roster_staff, [teacher(blank, t0 + timedelta(days=2))])
    assert sorted(e["event_type"] for e in emitted) == ["caseload.access_revoked.v1"] + \
        ["caseload.membership_removed.v1"] * 2  # and the access her email had by the default


async def test_memberships_a_blank_email_held_from_before_leave_as_the_service_starts(service_db):
    """Before a blank email was no email, "" owned memberships. They leave once, at start,
    each removal published like any other."""
    from contextlib import asynccontextmanager

    from services.caseload.upkeep import drop_blank_owners

    pool = await service_db("caseload")
    at = dict(district_id="d1", occurred_at=datetime(2026, 9, 1, tzinfo=UTC))
    await handled(pool, handlers.on_roster_students, [StudentEnrolled(
        student_id=STUDENTS[0], source_id="s0", school_id="A", grade="03", given_name="G", family_name="F", **at)])
    async with pool.acquire() as conn:  # as a StaffUpserted with email "" left it
        await conn.execute("""INSERT INTO memberships (owner_email, student_id, reason, source_ref, district_id,
                                                       school_id, detail)
                              VALUES ('', $1, 'homeroom', $2, 'd1', 'A', 'homeroom 3-401')""",
                           STUDENTS[0], str(CLASSES[0]))

    class Runtime:
        @asynccontextmanager
        async def unit_of_work(self):
            async with pool.acquire() as conn, conn.transaction():
                uow = UnitOfWork(conn, source="caseflow.caseload", settings=SETTINGS)
                yield uow
                await outbox.write(conn, uow.outgoing)

    runtime = Runtime()
    async with pool.acquire() as conn:
        before = await conn.fetchval("SELECT coalesce(max(id), 0) FROM outbox")
    await drop_blank_owners(runtime)
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM memberships") == 0
        assert [(e["event_type"], e["owner_email"]) for e in await published(conn, before)] == [
            ("caseload.membership_removed.v1", "")]
    await drop_blank_owners(runtime)  # nothing left to do
    async with pool.acquire() as conn:
        assert len(await published(conn, before)) == 1


async def test_a_dual_enrolled_student_is_on_the_section_teachers_caseload_with_the_school_of_the_section(
        service_db):
    """stu-0007 is enrolled at 02M104 and at 02M475, and takes a section at 02M475 taught by
    a matched teacher: the membership belongs to 02M475 (the class's school); the order the
    roster lists the schools in changes nothing."""
    pool = await service_db("caseload")
    t0 = datetime(2026, 9, 1, tzinfo=UTC)
    at = dict(district_id="d1", occurred_at=t0)
    stu7, section = STUDENTS[0], CLASSES[0]
    await handled(pool, handlers.on_roster_staff, [StaffUpserted(
        staff_id=TEACHERS[0], source_id="stf-1004", role="teacher", given_name="Wei", family_name="Chen",
        email="wei.chen1@x.org", school_ids=["02M475"], matched=True, **at)])
    await handled(pool, handlers.on_roster_classes, [ClassUpserted(
        class_id=section, source_id="cls-02M475-ALG1-01", school_id="02M475", class_type="scheduled",
        title="Algebra I", class_code="ALG1-01", grades=["09"], periods=["2"], **at)])
    enrolled = StudentEnrolled(student_id=stu7, source_id="stu-0007", school_id="02M104", grade="07",
                               given_name="G", family_name="F", school_ids=["02M104", "02M475"], **at)
    await handled(pool, handlers.on_roster_students, [enrolled])
    emitted = await handled(pool, handlers.on_roster_enrollments, [
        EnrollmentAdded(person_id=person, role=role, class_id=section, class_source_id="cls-02M475-ALG1-01",
                        user_source_id=source, school_id="02M475", primary=role == "teacher", **at)
        for person, role, source in [(TEACHERS[0], "teacher", "stf-1004"), (stu7, "student", "stu-0007")]])
    assert [(e["owner_email"], e["reason"], e["school_id"]) for e in emitted] == [
        ("wei.chen1@x.org", "section", "02M475")]
    # A point person belongs to the student's home school.
    async with pool.acquire() as conn, conn.transaction():
        uow = UnitOfWork(conn, source="caseflow.caseload", settings=SETTINGS)
        await store.assign_point_persons(conn, district_id="d1", student_ids=[stu7], type_="attendance",
                                         owner_email="okafor@x.org", by="test")
        assert [(c["reason"], c["school_id"]) for c in await handlers.refresh(uow, [stu7], report=True)] == [
            ("point_person", "02M104")]
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT school_ids FROM students WHERE student_id = $1", stu7) == [
            "02M104", "02M475"]

    # The same schools listed the other way round: nothing changes, nothing is published.
    reordered = StudentUpdated(**{**enrolled.model_dump(exclude={"event_type", "event_id", "occurred_at"}),
                                  "school_ids": ["02M475", "02M104"], "changed": ["school_ids"]},
                               occurred_at=t0 + timedelta(hours=1))
    assert await handled(pool, handlers.on_roster_students, [reordered]) == []
    async with pool.acquire() as conn:
        held = await conn.fetch("SELECT owner_email, reason, school_id FROM memberships ORDER BY reason")
        assert await conn.fetchval("SELECT school_ids FROM students WHERE student_id = $1", stu7) == [
            "02M104", "02M475"]
    assert [tuple(r) for r in held] == [("okafor@x.org", "point_person", "02M104"),
                                        ("wei.chen1@x.org", "section", "02M475")]


async def test_students_are_projected_as_rows_of_their_fields_and_an_older_fact_changes_nothing(service_db):
    """store.project_students sends one array of projected_student rows (migration 009):
    the type's attributes are ProjectedStudent's fields, in order; a student with no schools
    listed is in their home school alone; a fact older than the one held is not written."""
    from services.caseload.domain import ProjectedStudent

    pool = await service_db("caseload")
    t0 = datetime(2026, 9, 1, tzinfo=UTC)
    async with pool.acquire() as conn:
        attributes = await conn.fetch(
            """SELECT a.attname FROM pg_attribute a JOIN pg_type t ON t.typrelid = a.attrelid
               WHERE t.typname = 'projected_student' AND a.attnum > 0 ORDER BY a.attnum""")
        assert tuple(r["attname"] for r in attributes) == ProjectedStudent._fields
        one = ProjectedStudent(STUDENTS[0], "d1", "A", "03", "Zoë", "O'Neil \"Jr\"", None, "active", t0, "s0")
        two = ProjectedStudent(STUDENTS[1], "d1", "B", "07", "G", "F", "OSIS-1", "active", t0, "s1", ("A", "B"))
        async with conn.transaction():
            await store.project_students(conn, [one, two])
        async with conn.transaction():  # older, then newer
            await store.project_students(conn, [two._replace(grade="08", as_of=t0 - timedelta(days=1)),
                                                one._replace(status="withdrawn", as_of=t0 + timedelta(days=1))])
        held = {r["student_id"]: r for r in await conn.fetch("SELECT * FROM students")}
    assert (held[STUDENTS[0]]["family_name"], held[STUDENTS[0]]["status"], held[STUDENTS[0]]["school_ids"]) == \
        ("O'Neil \"Jr\"", "withdrawn", ["A"])
    assert (held[STUDENTS[1]]["grade"], held[STUDENTS[1]]["state_id"], held[STUDENTS[1]]["school_ids"]) == \
        ("07", "OSIS-1", ["A", "B"])
