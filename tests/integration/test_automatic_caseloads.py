"""Seed 000's automatic caseloads, example by example, as the service runs them: roster
events through the caseload handlers into a real PostgreSQL, where the rule
(domain.AUTOMATIC_CASELOADS, turned into SQL) decides. K-5 from the official class
(homeroom), 6-12 from course sections, only for active teachers matched to a login email."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from contracts.roster import (
    ClassUpserted,
    EnrollmentAdded,
    StaffDeactivated,
    StaffUpserted,
    StudentEnrolled,
    StudentWithdrawn,
)
from services.caseload import handlers
from services.kit import outbox
from services.kit.consumer import UnitOfWork
from services.kit.settings import AuthSettings, KafkaSettings, Settings

pytestmark = pytest.mark.integration

SETTINGS = Settings(service="caseload", database_url="", kafka=KafkaSettings(), auth=AuthSettings(secret="x" * 40),
                    http_port=0)
HOMEROOM, SECTION = uuid.uuid4(), uuid.uuid4()
ANA, LEE = uuid.uuid4(), uuid.uuid4()  # grade 03 and grade 09
MARIA, JOHN = uuid.uuid4(), uuid.uuid4()  # teachers
AT = dict(district_id="d1", occurred_at=datetime(2026, 9, 1, tzinfo=UTC))

GRADES = {ANA: "03", LEE: "09"}
CLASS_TYPES = {HOMEROOM: "homeroom", SECTION: "scheduled"}
CLASSES = {(HOMEROOM, ANA), (SECTION, LEE)}  # who takes which class
TEACHES = {(HOMEROOM, MARIA), (SECTION, JOHN)}
EMAILS = {MARIA: "maria@school.org", JOHN: "john@school.org"}


async def caseloads(service_db=None, *, pool=None, grades=GRADES, class_types=CLASS_TYPES, takes=CLASSES, teaches=TEACHES,
                    emails=EMAILS, withdrawn=(), left=()) -> set[tuple]:
    """The roster described, sent through the handlers: the memberships it leaves, as
    (owner_email, student, reason, class)."""
    pool = pool or await service_db("caseload")
    steps = [
        (handlers.on_roster_staff, [StaffUpserted(staff_id=t, source_id=f"t-{t}", role="teacher", given_name="T",
                                                  family_name="T", email=email, school_ids=["A"],
                                                  matched=bool(email), **AT) for t, email in emails.items()]),
        (handlers.on_roster_classes, [ClassUpserted(class_id=c, source_id=f"c-{c}", school_id="A", class_type=kind,
                                                    title=f"title {c}", class_code=f"code {c}", grades=[], periods=[],
                                                    **AT) for c, kind in class_types.items()]),
        (handlers.on_roster_students, [StudentEnrolled(student_id=s, source_id=f"s-{s}", school_id="A", grade=grade,
                                                       given_name="G", family_name="F", **AT)
                                       for s, grade in grades.items()]),
        (handlers.on_roster_enrollments, [
            EnrollmentAdded(person_id=p, role=role, class_id=c, class_source_id=f"c-{c}", user_source_id=f"p-{p}",
                            school_id="A", primary=True, **AT)
            for pairs, role in ((teaches, "teacher"), (takes, "student")) for c, p in pairs]),
        (handlers.on_roster_students, [StudentWithdrawn(student_id=s, source_id=f"s-{s}", school_id="A",
                                                        reason="sis_withdrawal", **{**AT, "occurred_at": datetime.now(UTC)})
                                       for s in withdrawn]),
        (handlers.on_roster_staff, [StaffDeactivated(staff_id=t, source_id=f"t-{t}",
                                                     **{**AT, "occurred_at": datetime.now(UTC)}) for t in left]),
    ]
    for handler, events in steps:
        if not events:
            continue
        async with pool.acquire() as conn, conn.transaction():
            uow = UnitOfWork(conn, source="caseflow.caseload", settings=SETTINGS)
            await handler(uow, events)
            await outbox.write(conn, uow.outgoing)
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT owner_email, student_id, reason, source_ref, detail FROM memberships")
    return {(r["owner_email"], r["student_id"], r["reason"], uuid.UUID(r["source_ref"]), r["detail"]) for r in rows}


async def test_an_elementary_student_is_on_the_caseload_of_their_official_class_teacher(service_db):
    assert ("maria@school.org", ANA, "homeroom", HOMEROOM, f"homeroom title {HOMEROOM}") in await caseloads(service_db)


async def test_a_secondary_student_is_on_the_caseload_of_each_section_teacher(service_db):
    assert ("john@school.org", LEE, "section", SECTION, f"section code {SECTION}") in await caseloads(service_db)


async def test_the_rule_follows_the_students_grade_not_the_school(service_db):
    # Lee in a homeroom and Ana in a section: neither rule applies to them there.
    assert await caseloads(service_db, takes={(HOMEROOM, LEE), (SECTION, ANA)}) == set()


@pytest.mark.parametrize("grade", ["UG", "PS", "AE"])
async def test_ungraded_students_are_on_no_automatic_caseload(service_db, grade):
    assert await caseloads(service_db, grades={ANA: grade, LEE: grade}) == set()


async def test_an_unmatched_teacher_has_no_caseload_until_their_email_arrives(service_db):
    held = await caseloads(service_db, emails={MARIA: None, JOHN: "john@school.org"})
    assert {m[0] for m in held} == {"john@school.org"}


@pytest.mark.parametrize("spelling", ["", "  "])
async def test_a_teacher_whose_email_is_blank_is_unmatched_and_owns_no_membership(service_db, spelling):
    held = await caseloads(service_db, emails={MARIA: spelling, JOHN: "john@school.org"})
    assert {m[0] for m in held} == {"john@school.org"}


async def test_the_owner_of_a_membership_is_the_teachers_login_email(service_db):
    held = await caseloads(service_db, emails={MARIA: " Maria@School.org ", JOHN: "john@school.org"})
    assert {m[0] for m in held} == {"maria@school.org", "john@school.org"}


async def test_withdrawn_students_are_on_no_caseload(service_db):
    assert await caseloads(service_db, withdrawn=(ANA, LEE)) == set()


async def test_a_teacher_who_left_the_roster_has_no_caseload(service_db):
    held = await caseloads(service_db, left=(JOHN,))
    assert {m[0] for m in held} == {"maria@school.org"}


async def test_each_membership_event_the_database_writes_is_the_contracts_event(service_db):
    """The refresh writes its CaseloadMembershipAdded / Removed into the outbox itself
    (services/kit/events_sql.py): each row decodes, headers and body agreeing, to the
    contract's event, keyed by student, with the time and correlation id of the student's
    own roster event (or of the batch's last one)."""
    from contracts import cloudevents
    from contracts.caseload import CaseloadMembershipAdded, CaseloadMembershipRemoved
    from contracts.topics import CASELOAD_MEMBERSHIPS

    pool = await service_db("caseload")
    await caseloads(pool=pool)
    withdrawal = StudentWithdrawn(student_id=ANA, source_id=f"s-{ANA}", school_id="A", reason="sis_withdrawal",
                                  district_id="d1", occurred_at=datetime(2026, 10, 1, 8, 30, tzinfo=UTC),
                                  correlation_id="import-42")
    async with pool.acquire() as conn, conn.transaction():
        await handlers.on_roster_students(UnitOfWork(conn, source="caseflow.caseload", settings=SETTINGS),
                                          [withdrawal])
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT topic, key, payload, headers FROM outbox ORDER BY id")
    events = []
    for r in rows:
        if r["topic"] != CASELOAD_MEMBERSHIPS.name:
            continue
        headers = [(n, v.encode()) for n, v in zip(r["headers"][::2], r["headers"][1::2], strict=True)]
        assert cloudevents._whole_event(CASELOAD_MEMBERSHIPS, r["payload"], {n: v.decode() for n, v in headers})
        event = cloudevents.decode(CASELOAD_MEMBERSHIPS, r["payload"], headers)
        assert r["key"] == str(event.student_id).encode()
        assert event.producer == "caseflow.caseload"
        events.append(event)
    added = [e for e in events if isinstance(e, CaseloadMembershipAdded)]
    assert {(e.owner_email, e.student_id, e.reason) for e in added} == {
        ("maria@school.org", ANA, "homeroom"), ("john@school.org", LEE, "section")}
    assert all(e.occurred_at == AT["occurred_at"] and e.correlation_id is None for e in added)
    (removed,) = [e for e in events if isinstance(e, CaseloadMembershipRemoved)]
    assert (removed.owner_email, removed.student_id, removed.detail, removed.school_id) == (
        "maria@school.org", ANA, f"homeroom title {HOMEROOM}", "A")
    assert (removed.occurred_at, removed.correlation_id) == (withdrawal.occurred_at, "import-42")
    assert len({e.event_id for e in events}) == len(events)



async def test_a_batch_brought_in_line_in_parts_leaves_the_same_caseloads(service_db, monkeypatch):
    """A large batch is brought in line a part at a time (store.REFRESH_STUDENTS /
    REFRESH_PAIRS): parts of one student or one pair give what one statement gives."""
    from services.caseload import store

    whole = await caseloads(service_db)
    monkeypatch.setattr(store, "REFRESH_STUDENTS", 1)
    monkeypatch.setattr(store, "REFRESH_PAIRS", 1)
    assert await caseloads(service_db) == whole
    assert len(whole) == 2
