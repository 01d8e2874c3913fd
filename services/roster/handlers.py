"""The roster's event handlers: load, decide with the domain, save, emit."""

from __future__ import annotations

from contracts.topics import ROSTER_STAFF, ROSTER_STUDENTS
from contracts.sis import SisStaffUpserted, SisStudentEnrolled, SisStudentWithdrawn
from services.kit.consumer import UnitOfWork
from services.roster import domain, store


async def on_sis_students_enrolled(uow: UnitOfWork, facts: list[SisStudentEnrolled]) -> None:
    """A student the roster does not hold is enrolled; one it holds is updated, naming what
    changed; identical facts change nothing and say nothing (domain.student_change_sql).
    Facts apply in order, a turn of students at a time, each turn one statement that also
    writes the events into the outbox."""
    for turn in domain.in_turns(facts):
        await store.enrol_students(uow.conn, uow.topic(ROSTER_STUDENTS.name), domain.enrolment_columns(turn))


async def on_sis_students_withdrawn(uow: UnitOfWork, facts: list[SisStudentWithdrawn]) -> None:
    for fact in facts:  # rare, and each touches the student's enrolments: one at a time is fine
        sid = domain.student_id_for(fact.district_id, fact.source_id)
        held = (await store.lock_students(uow.conn, [sid])).get(sid)
        enrolled = [domain.Enrollment(**dict(r)) for r in
                    await store.class_enrollments_of(uow.conn, fact.district_id, fact.source_id)] if held else []
        events = domain.withdraw(held, enrolled, fact)
        if events:
            await store.withdraw_student(uow.conn, fact.district_id, fact.source_id)
        for event in events:
            uow.emit(event)


async def on_sis_staff_upserted(uow: UnitOfWork, facts: list[SisStaffUpserted]) -> None:
    """Only a new or changed staff account says anything (domain.staff_change_sql); a login
    email of spaces is none (domain.login_email). Facts apply in order, a turn at a time."""
    for turn in domain.in_turns(facts):
        await store.upsert_staff(uow.conn, uow.topic(ROSTER_STAFF.name), domain.staff_columns(turn))
