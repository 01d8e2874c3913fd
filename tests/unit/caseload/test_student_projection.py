from datetime import UTC, datetime, timedelta
from uuid import uuid4

from contracts.roster import StudentEnrolled, StudentUpdated
from services.caseload.domain import latest_students

T0 = datetime(2026, 9, 1, tzinfo=UTC)
SID = uuid4()


def enrolled(grade="05", at=T0):
    return StudentEnrolled(district_id="d1", student_id=SID, source_id="S-1", school_id="A", grade=grade,
                           given_name="Ana", family_name="Reyes", occurred_at=at)


def updated(grade, at):
    return StudentUpdated(district_id="d1", student_id=SID, source_id="S-1", school_id="A", grade=grade,
                          given_name="Ana", family_name="Reyes", occurred_at=at, changed=["grade"])


def test_the_projection_keeps_the_newest_fact_per_student():
    (student,) = latest_students([enrolled(), updated("06", T0 + timedelta(hours=1))])
    assert student.grade == "06" and student.as_of == T0 + timedelta(hours=1)


def test_an_older_fact_arriving_late_does_not_win():
    (student,) = latest_students([updated("06", T0 + timedelta(hours=1)), enrolled(at=T0)])
    assert student.grade == "06"
