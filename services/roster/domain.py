"""The roster's rules, without I/O: what a district's enrolment facts change, and which
events say so. Identical facts change nothing and say nothing."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, fields, replace
from functools import lru_cache
from datetime import date
from uuid import UUID

from contracts.roster import EnrollmentRemoved, StaffUpserted, StudentEnrolled, StudentUpdated, StudentWithdrawn
from contracts.sis import SisStaffUpserted, SisStudentEnrolled, SisStudentWithdrawn

# Student ids are derived from (district, SIS id): the same student gets the same id from
# every feed (SIS events, OneRoster files), on every instance, with no lookup.
_STUDENT_IDS = uuid.UUID("3d5b8a52-6d0c-4c3e-8f3e-2b7f0c6a9d11")


@lru_cache(maxsize=65_536)  # the handler and the rules both ask, per fact
def student_id_for(district_id: str, source_id: str) -> UUID:
    return uuid.uuid5(_STUDENT_IDS, f"{district_id}\n{source_id}")


@lru_cache(maxsize=65_536)
def class_id_for(district_id: str, source_id: str) -> UUID:
    return uuid.uuid5(_STUDENT_IDS, f"{district_id}\nclass\n{source_id}")


@dataclass(frozen=True)
class Student:
    student_id: UUID
    district_id: str
    source_id: str
    school_id: str
    grade: str
    given_name: str
    family_name: str
    birth_date: date | None
    email: str | None
    state_id: str | None


_FACTS = [f.name for f in fields(Student) if f.name not in ("student_id", "district_id", "source_id")]
_EVENT_FIELDS = [f.name for f in fields(Student) if f.name != "district_id"]


def enrol(
    current: dict[UUID, Student], facts: list[SisStudentEnrolled]
) -> tuple[dict[UUID, Student], list[StudentEnrolled | StudentUpdated]]:
    """Apply SIS enrolment facts, in order, to the students held now.

    Returns the students that changed (final state) and the events describing each change.
    """
    students = dict(current)
    changed: dict[UUID, Student] = {}
    events: list[StudentEnrolled | StudentUpdated] = []
    for fact in facts:
        sid = student_id_for(fact.district_id, fact.source_id)
        incoming = Student(
            student_id=sid,
            district_id=fact.district_id,
            source_id=fact.source_id,
            school_id=fact.school_id,
            grade=fact.grade,
            given_name=fact.given_name,
            family_name=fact.family_name,
            birth_date=fact.birth_date,
            email=fact.email,
            state_id=fact.state_id,
        )
        held = students.get(sid)
        common = dict(
            district_id=fact.district_id,
            occurred_at=fact.occurred_at,
            correlation_id=fact.correlation_id or str(fact.event_id),
            producer="caseflow.roster",
            **{name: getattr(incoming, name) for name in _EVENT_FIELDS},
        )
        if held is None:
            events.append(StudentEnrolled(event_id=_caused_by(fact.event_id), **common))
        else:
            differences = [name for name in _FACTS if getattr(held, name) != getattr(incoming, name)]
            if not differences:
                continue
            incoming = replace(held, **{name: getattr(incoming, name) for name in differences})
            events.append(StudentUpdated(event_id=_caused_by(fact.event_id), changed=differences, **common))
        students[sid] = incoming
        changed[sid] = incoming
    return changed, events


def _caused_by(event_id: UUID) -> UUID:
    # One incoming fact causes at most one roster event; deriving its id from the cause
    # keeps it stable if the same fact is ever applied again.
    return uuid.uuid5(_STUDENT_IDS, f"caused-by\n{event_id}")


@dataclass(frozen=True)
class Enrollment:
    class_id: UUID
    class_source_id: str
    school_id: str
    role: str


def withdraw(
    student: Student | None, enrollments: list[Enrollment], fact: SisStudentWithdrawn
) -> list[StudentWithdrawn | EnrollmentRemoved]:
    """The SIS withdrew a student: the same change a bulk file without them makes. The
    student leaves their classes first, then the roster. Unknown or already withdrawn
    students change nothing."""
    if student is None:
        return []
    common = dict(district_id=fact.district_id, occurred_at=fact.occurred_at,
                  correlation_id=fact.correlation_id or str(fact.event_id), producer="caseflow.roster")
    events: list[StudentWithdrawn | EnrollmentRemoved] = [
        EnrollmentRemoved(event_id=uuid.uuid5(_STUDENT_IDS, f"caused-by\n{fact.event_id}\n{e.class_source_id}"),
                          person_id=student.student_id, role="student", class_id=e.class_id,
                          class_source_id=e.class_source_id, user_source_id=student.source_id,
                          school_id=e.school_id, **common)
        for e in enrollments
    ]
    events.append(StudentWithdrawn(event_id=_caused_by(fact.event_id), student_id=student.student_id,
                                   source_id=student.source_id, school_id=student.school_id,
                                   reason="sis_withdrawal", **common))
    return events


@dataclass(frozen=True)
class StaffMember:
    staff_id: UUID
    district_id: str
    source_id: str
    role: str
    given_name: str
    family_name: str
    email: str | None
    identifier: str | None
    school_ids: tuple[str, ...]


@lru_cache(maxsize=65_536)
def staff_id_for(district_id: str, source_id: str) -> UUID:
    """Stable for (district, SIS id), whichever feed names the staff member."""
    return uuid.uuid5(_STUDENT_IDS, f"{district_id}\nstaff\n{source_id}")


def upsert_staff(
    current: dict[UUID, StaffMember], facts: list[SisStaffUpserted]
) -> tuple[dict[UUID, StaffMember], list[StaffUpserted]]:
    """Apply SIS staff facts in order; only a new or changed account says anything."""
    held = dict(current)
    changed: dict[UUID, StaffMember] = {}
    events: list[StaffUpserted] = []
    for fact in facts:
        sid = staff_id_for(fact.district_id, fact.source_id)
        incoming = StaffMember(sid, fact.district_id, fact.source_id, fact.role, fact.given_name, fact.family_name,
                               fact.email, fact.identifier, tuple(fact.school_ids))
        if held.get(sid) == incoming:
            continue
        held[sid] = changed[sid] = incoming
        events.append(StaffUpserted(
            event_id=_caused_by(fact.event_id), district_id=fact.district_id, occurred_at=fact.occurred_at,
            correlation_id=fact.correlation_id or str(fact.event_id), producer="caseflow.roster", staff_id=sid,
            source_id=fact.source_id, role=fact.role, given_name=fact.given_name, family_name=fact.family_name,
            email=fact.email, identifier=fact.identifier, school_ids=list(fact.school_ids),
            matched=fact.email is not None,
        ))
    return changed, events
