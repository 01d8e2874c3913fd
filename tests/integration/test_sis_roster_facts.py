"""The roster publishes exact changes to what SIS events say about students and staff: a new
student is enrolled, a changed one updated (saying what changed), identical facts say
nothing; only a new or changed staff account says anything. Each
example runs as the service runs it: SIS facts through the roster's handler into a real
PostgreSQL, where the rule (domain.student_change_sql) decides and writes the events into
the outbox; every event is read back through the contract."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from uuid import uuid4

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contracts import cloudevents
from contracts.roster import StaffUpserted, StudentEnrolled, StudentUpdated
from contracts.sis import SisStaffUpserted, SisStudentEnrolled
from contracts.topics import ROSTER_STAFF, ROSTER_STUDENTS
from services.roster import handlers
from services.roster.domain import staff_id_for, student_id_for
from services.kit.consumer import UnitOfWork
from services.kit.settings import AuthSettings, KafkaSettings, Settings

pytestmark = pytest.mark.integration

SETTINGS = Settings(service="roster", database_url="", kafka=KafkaSettings(), auth=AuthSettings(secret="x" * 40),
                    http_port=0)
T0 = datetime(2026, 9, 1, 12, tzinfo=UTC)


def fact(source_id="S-1", **changes) -> SisStudentEnrolled:
    base = dict(district_id="d1", source_id=source_id, school_id="02M001", grade="05", given_name="Ana",
                family_name="Reyes", birth_date=date(2015, 3, 1), occurred_at=T0)
    return SisStudentEnrolled(**{**base, **changes})


async def enrol(conn, facts: list[SisStudentEnrolled]) -> tuple[dict, list]:
    """The facts as one batch through the handler, on conn: (the students it saved, as
    {student_id: record}, and the events it wrote, decoded with the contract, in order)."""
    before = await conn.fetchval("SELECT coalesce(max(id), 0) FROM outbox")
    uow = UnitOfWork(conn, source="caseflow.roster", settings=SETTINGS)
    await handlers.on_sis_students_enrolled(uow, facts)
    assert uow.outgoing == []  # the database wrote them
    events = []
    for r in await conn.fetch("SELECT topic, key, payload, headers FROM outbox WHERE id > $1 ORDER BY id", before):
        headers = [(n, v.encode()) for n, v in zip(r["headers"][::2], r["headers"][1::2], strict=True)]
        # the fast path: the body is the whole event and agrees with its headers
        assert cloudevents._whole_event(ROSTER_STUDENTS, r["payload"], {n: v.decode() for n, v in headers})
        event = cloudevents.decode(ROSTER_STUDENTS, r["payload"], headers)
        assert (r["topic"], r["key"]) == (ROSTER_STUDENTS.name, str(event.student_id).encode())
        events.append(event)
    saved = await conn.fetch("SELECT * FROM students WHERE updated_at = now()")  # this transaction's
    return {r["student_id"]: r for r in saved}, events


@pytest.fixture
async def roster(service_db):
    """A connection in a transaction on a migrated roster database, rolled back after."""
    pool = await service_db("roster")
    async with pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        yield conn
        await tx.rollback()


async def test_a_student_the_roster_does_not_hold_is_enrolled(roster):
    saved, events = await enrol(roster, [fact(correlation_id="sis-run-7")])
    sid = student_id_for("d1", "S-1")
    assert list(saved) == [sid]
    (event,) = events
    assert isinstance(event, StudentEnrolled)
    assert (event.student_id, event.source_id, event.grade, event.district_id) == (sid, "S-1", "05", "d1")
    assert (event.given_name, event.family_name, event.birth_date) == ("Ana", "Reyes", date(2015, 3, 1))
    assert (event.school_ids, event.email, event.state_id) == (["02M001"], None, None)
    assert (event.producer, event.occurred_at, event.correlation_id) == ("caseflow.roster", T0, "sis-run-7")


async def test_every_fact_of_a_student_reaches_the_roster_and_its_event_in_its_own_field(roster):
    """The facts go to PostgreSQL as rows of sis_enrolment_fact (migration 004): each value
    lands in its own column and field, none shifted to its neighbour's."""
    f = fact(source_id="S-9", school_id="02M475", grade="07", given_name="Zoë", family_name="O'Neil \"Jr\"",
             birth_date=date(2014, 2, 3), email="zoe@schools.example.org", state_id="OSIS-9",
             school_ids=["02M475", "01M015"], correlation_id="sis-run-9")
    saved, (event,) = await enrol(roster, [f])
    row = saved[student_id_for("d1", "S-9")]
    held = (row["district_id"], row["source_id"], row["school_id"], row["grade"], row["given_name"],
            row["family_name"], row["birth_date"], row["email"], row["state_id"], row["school_ids"])
    said = (event.district_id, event.source_id, event.school_id, event.grade, event.given_name, event.family_name,
            event.birth_date, event.email, event.state_id, event.school_ids)
    assert held == said == ("d1", "S-9", "02M475", "07", "Zoë", "O'Neil \"Jr\"", date(2014, 2, 3),
                            "zoe@schools.example.org", "OSIS-9", ["02M475", "01M015"])
    assert (event.occurred_at, event.correlation_id, event.producer) == (T0, "sis-run-9", "caseflow.roster")


async def test_identical_facts_change_nothing_and_say_nothing(roster):
    await enrol(roster, [fact()])
    await roster.execute("UPDATE students SET updated_at = now() - interval '1 day'")  # not this batch's
    saved, events = await enrol(roster, [fact(occurred_at=T0 + timedelta(days=1))])
    assert saved == {} and events == []


async def test_a_changed_student_is_updated_with_the_fields_that_changed(roster):
    await enrol(roster, [fact()])
    saved, events = await enrol(roster, [fact(grade="06", school_id="02M002")])
    (event,) = events
    assert isinstance(event, StudentUpdated)
    assert event.changed == ["school_id", "grade", "school_ids"]
    assert (event.grade, event.school_id, event.school_ids) == ("06", "02M002", ["02M002"])
    assert saved[event.student_id]["grade"] == "06"


async def test_a_withdrawn_student_the_sis_enrols_again_is_enrolled_again(roster):
    await enrol(roster, [fact()])
    await roster.execute("UPDATE students SET status = 'withdrawn', withdrawn_at = now()")
    saved, events = await enrol(roster, [fact()])
    assert [type(e) for e in events] == [StudentEnrolled]
    assert next(iter(saved.values()))["status"] == "active"


def test_the_same_student_in_two_districts_is_two_students():
    assert student_id_for("d1", "S-1") != student_id_for("d2", "S-1")
    assert student_id_for("d1", "S-1") == student_id_for("d1", "S-1")


async def test_facts_in_one_batch_apply_in_order(roster):
    saved, events = await enrol(roster, [fact(grade="05"), fact(grade="06"), fact(grade="06"),
                                         fact(source_id="S-2")])
    one = student_id_for("d1", "S-1")
    assert [(type(e), e.grade) for e in events if e.student_id == one] == [(StudentEnrolled, "05"),
                                                                            (StudentUpdated, "06")]
    assert saved[one]["grade"] == "06" and len(saved) == 2


async def test_each_roster_event_id_is_derived_from_the_fact_that_caused_it(roster):
    f = fact()
    (first,) = (await enrol(roster, [f]))[1]
    await roster.execute("DELETE FROM students")
    (again,) = (await enrol(roster, [f]))[1]
    assert first.event_id == again.event_id != f.event_id


async def test_a_student_of_several_schools_belongs_to_each_whatever_order_the_sis_lists_them(roster):
    _, (enrolled,) = await enrol(roster, [fact(school_ids=["02M475", "02M001"])])
    assert enrolled.school_id == "02M001" and enrolled.school_ids == ["02M001", "02M475"]
    assert (await enrol(roster, [fact(school_ids=["02M001", "02M475"])]))[1] == []


async def test_a_school_id_holding_any_character_is_one_school(roster):
    """School ids were joined by U+001F on their way to SQL: an id holding it became two.
    (The SIS contract now refuses control characters in ids; what the roster stores keeps
    any text whole all the same.)"""
    odd = 'X\x1fY "Annex", {2}'
    student = fact(school_ids=["02M001", "02M475"]).model_copy(update={"school_ids": ["02M001", odd]})
    _, (enrolled,) = await enrol(roster, [student])
    assert enrolled.school_ids == ["02M001", odd]
    (staff,) = await upsert(roster, [staff_fact().model_copy(update={"school_ids": [odd, "02M001"]})])
    assert staff.school_ids == [odd, "02M001"]


def test_a_blank_overlong_or_control_character_id_is_refused_with_the_reason():
    """A staff member listing one blank school was saved with no school at all; a student
    whose SIS id is "staff\nT-1" would be given staff member T-1's id (the roster derives
    ids with line breaks between the parts)."""
    for listed in ([" "], ["02M001", ""], ["S" * 129], ["02M\x1f001"]):
        with pytest.raises(ValueError, match=r"school_ids\.\d"):
            staff_fact(school_ids=listed)
        with pytest.raises(ValueError, match=r"school_ids\.\d"):
            fact(school_ids=listed)
    for sid in ("staff\nT-1", "S-\t1", "S\x7f1", " "):
        with pytest.raises(ValueError, match=r"source_id"):
            fact(source_id=sid)
        with pytest.raises(ValueError, match=r"source_id"):
            staff_fact(source_id=sid)
    with pytest.raises(ValueError, match=r"school_id"):
        fact(school_id="02M\r001")
    assert staff_fact(school_ids=[" 02M001 "]).school_ids == ["02M001"]
    assert fact(source_id=" S-1 ").source_id == "S-1"


async def test_text_the_sis_sends_reaches_the_event_as_sent(roster):
    """Quotes, backslashes, accents and line breaks survive the database's JSON."""
    name = 'O\'Brien "Jr." \\ Ñuñez\tzé\u2028x 😀'
    _, (event,) = await enrol(roster, [fact(given_name=name, email="ana+1@school.org", state_id="OSIS-1")])
    assert (event.given_name, event.email, event.state_id) == (name, "ana+1@school.org", "OSIS-1")


grades = st.sampled_from(["KG", "01", "05", "09", "12"])
facts = st.lists(
    st.builds(lambda s, g, school: fact(source_id=s, grade=g, school_id=school),
              st.sampled_from(["S-1", "S-2", "S-3"]), grades, st.sampled_from(["A", "B"])),
    max_size=12,
)


def per_student(events) -> dict:
    out = defaultdict(list)
    for e in events:
        out[e.student_id].append((type(e), e.grade, e.school_id, tuple(getattr(e, "changed", ()))))
    return dict(out)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sequence=facts, cut=st.integers(min_value=0, max_value=12))
async def test_one_batch_or_two_leave_the_same_roster_and_say_the_same(roster, sequence, cut):
    """Batches are an optimisation: one batch or two, the roster and each student's events
    agree, and the roster holds the last fact about each student."""
    async def apply(batches):
        await roster.execute("SAVEPOINT example")
        try:
            said = []
            for batch in batches:
                said += (await enrol(roster, batch))[1]
            rows = await roster.fetch("SELECT student_id, grade, school_id FROM students")
            return {r["student_id"]: (r["grade"], r["school_id"]) for r in rows}, per_student(said)
        finally:
            await roster.execute("ROLLBACK TO SAVEPOINT example")

    whole = await apply([sequence])
    assert await apply([sequence[:cut], sequence[cut:]]) == whole
    last = {student_id_for("d1", f.source_id): (f.grade, f.school_id) for f in sequence}
    assert whole[0] == last


# ------------------------------------------------------------------------- staff from the SIS


def staff_fact(**changes) -> SisStaffUpserted:
    base = dict(district_id="d1", source_id="T-1", role="teacher", given_name="Maria", family_name="Lopez",
                school_ids=["02M001"], occurred_at=T0)
    return SisStaffUpserted(**{**base, **changes})


async def upsert(conn, facts) -> list:
    """Staff facts as one batch through the handler: the events it wrote, decoded, in order."""
    before = await conn.fetchval("SELECT coalesce(max(id), 0) FROM outbox")
    uow = UnitOfWork(conn, source="caseflow.roster", settings=SETTINGS)
    await handlers.on_sis_staff_upserted(uow, facts)
    assert uow.outgoing == []
    events = []
    for r in await conn.fetch("SELECT topic, key, payload, headers FROM outbox WHERE id > $1 ORDER BY id", before):
        headers = [(n, v.encode()) for n, v in zip(r["headers"][::2], r["headers"][1::2], strict=True)]
        assert cloudevents._whole_event(ROSTER_STAFF, r["payload"], {n: v.decode() for n, v in headers})
        event = cloudevents.decode(ROSTER_STAFF, r["payload"], headers)
        assert (r["topic"], r["key"]) == (ROSTER_STAFF.name, str(event.staff_id).encode())
        events.append(event)
    return events


async def test_sis_staff_facts_say_only_what_changed_and_match_a_teacher_once_they_have_an_email(roster):
    fact = staff_fact(identifier="EIS-7", correlation_id="sis-run-8")
    (first,) = await upsert(roster, [fact])
    assert isinstance(first, StaffUpserted)
    assert (first.staff_id, first.matched, first.email) == (staff_id_for("d1", "T-1"), False, None)
    assert (first.role, first.identifier, first.school_ids) == ("teacher", "EIS-7", ["02M001"])
    assert (first.producer, first.occurred_at, first.correlation_id) == ("caseflow.roster", T0, "sis-run-8")
    assert await upsert(roster, [fact]) == []
    (matched,) = await upsert(roster, [fact.model_copy(update={"email": "mlopez@example.org"})])
    assert (matched.matched, matched.email) == (True, "mlopez@example.org")


async def test_a_staff_email_of_spaces_is_no_email(roster):
    staff = SisStaffUpserted.model_construct(district_id="d1", source_id="T-1", role="teacher", given_name="Ana",
                                             family_name="Reyes", email="  ", identifier=None, school_ids=["02M001"],
                                             event_id=uuid4(), occurred_at=T0, correlation_id=None)
    (event,) = await upsert(roster, [staff])
    assert event.email is None and event.matched is False


async def test_staff_facts_in_one_batch_apply_in_order_and_a_deactivated_account_comes_back(roster):
    events = await upsert(roster, [staff_fact(), staff_fact(role="aide"), staff_fact(role="aide"),
                                   staff_fact(source_id="T-2")])
    one = staff_id_for("d1", "T-1")
    assert [e.role for e in events if e.staff_id == one] == ["teacher", "aide"]
    await roster.execute("UPDATE staff SET status = 'inactive' WHERE staff_id = $1", one)
    (back,) = await upsert(roster, [staff_fact(role="aide")])
    assert back.staff_id == one
    assert await roster.fetchval("SELECT status FROM staff WHERE staff_id = $1", one) == "active"
