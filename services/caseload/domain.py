"""The caseload service's rules, without I/O. For now: which roster facts its student
projection keeps (the latest per student); caseload rules build on this projection."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from contracts.roster import StudentEnrolled, StudentUpdated


@dataclass(frozen=True)
class ProjectedStudent:
    student_id: UUID
    district_id: str
    school_id: str
    grade: str
    given_name: str
    family_name: str
    state_id: str | None
    as_of: datetime


def latest_students(events: list[StudentEnrolled | StudentUpdated]) -> list[ProjectedStudent]:
    """The newest fact per student among these events (later in the list wins a tie)."""
    latest: dict[UUID, ProjectedStudent] = {}
    for e in events:
        held = latest.get(e.student_id)
        if held is None or held.as_of <= e.occurred_at:
            latest[e.student_id] = ProjectedStudent(
                student_id=e.student_id, district_id=e.district_id, school_id=e.school_id, grade=e.grade,
                given_name=e.given_name, family_name=e.family_name, state_id=e.state_id, as_of=e.occurred_at,
            )
    return list(latest.values())
