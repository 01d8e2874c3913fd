"""The caseload rules (seed 000), without I/O.

Automatic caseloads:
- a student in the elementary grades (K-5) is on the caseload of each teacher of their
  official class (homeroom);
- a student in the secondary grades (6-12) is on the caseload of each teacher of each
  course section (scheduled class) they take;
- only teachers matched to a login email have a caseload; the rule follows the student's
  grade, so a school spanning both bands works.

The service keeps caseloads up to date incrementally, in SQL, as roster events arrive
(store.refresh_automatic); `automatic_memberships` states the same rule over a whole
projection, so a test can check that the two always agree.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from contracts.roster import StudentEnrolled, StudentUpdated, StudentWithdrawn

ELEMENTARY_GRADES = ("IT", "PR", "PK", "TK", "KG", "01", "02", "03", "04", "05")
SECONDARY_GRADES = ("06", "07", "08", "09", "10", "11", "12", "13")

# The class type each grade band's caseloads come from.
CLASS_TYPE_FOR_BAND = {"elementary": "homeroom", "secondary": "scheduled"}


def grade_band(grade: str) -> str | None:
    if grade in ELEMENTARY_GRADES:
        return "elementary"
    if grade in SECONDARY_GRADES:
        return "secondary"
    return None  # ungraded, adult education: no automatic caseload


@dataclass(frozen=True)
class ProjectedStudent:
    student_id: UUID
    district_id: str
    school_id: str
    grade: str
    given_name: str
    family_name: str
    state_id: str | None
    status: str
    as_of: datetime


def latest_students(events: Iterable[StudentEnrolled | StudentUpdated | StudentWithdrawn],
                    held: dict[UUID, ProjectedStudent] | None = None) -> list[ProjectedStudent]:
    """The newest fact per student among these events (later in the list wins a tie).
    A withdrawal keeps what was known of the student and marks them withdrawn."""
    latest: dict[UUID, ProjectedStudent] = dict(held or {})
    changed: dict[UUID, ProjectedStudent] = {}
    for e in events:
        before = latest.get(e.student_id)
        if before is not None and before.as_of > e.occurred_at:
            continue
        if isinstance(e, StudentWithdrawn):
            if before is None:
                continue  # withdrawn before we knew them: nothing to keep
            now = ProjectedStudent(**{**before.__dict__, "status": "withdrawn", "as_of": e.occurred_at})
        else:
            now = ProjectedStudent(
                student_id=e.student_id, district_id=e.district_id, school_id=e.school_id, grade=e.grade,
                given_name=e.given_name, family_name=e.family_name, state_id=e.state_id, status="active",
                as_of=e.occurred_at,
            )
        latest[e.student_id] = changed[e.student_id] = now
    return list(changed.values())


@dataclass(frozen=True)
class Membership:
    owner_email: str
    student_id: UUID
    reason: str  # homeroom, section, point_person, support, provider
    source_ref: str

    @property
    def key(self) -> tuple:
        return (self.owner_email, self.student_id, self.reason, self.source_ref)


@dataclass(frozen=True)
class Projection:
    """The roster as the caseload service holds it."""

    students: dict[UUID, tuple[str, str]]  # student_id -> (grade, status)
    classes: dict[UUID, str]  # class_id -> class_type
    members: set[tuple[UUID, UUID, str]]  # (class_id, person_id, role)
    staff: dict[UUID, tuple[str | None, bool]]  # staff_id -> (email, active)


def automatic_memberships(p: Projection) -> set[Membership]:
    """Every automatic caseload membership the roster implies, computed from scratch."""
    teachers: dict[UUID, set[str]] = {}
    for class_id, person_id, role in p.members:
        if role == "teacher" and person_id in p.staff:
            email, active = p.staff[person_id]
            if email and active:
                teachers.setdefault(class_id, set()).add(email)
    out: set[Membership] = set()
    for class_id, person_id, role in p.members:
        if role != "student" or person_id not in p.students or class_id not in p.classes:
            continue
        grade, status = p.students[person_id]
        band = grade_band(grade)
        if status != "active" or band is None or p.classes[class_id] != CLASS_TYPE_FOR_BAND[band]:
            continue
        reason = "homeroom" if band == "elementary" else "section"
        for email in teachers.get(class_id, ()):
            out.add(Membership(email, person_id, reason, str(class_id)))
    return out
