"""The SIS's withdrawal is the same change as a bulk file without the student: the student
leaves their classes, then the roster."""

from datetime import UTC, datetime
from uuid import uuid4

from contracts.roster import EnrollmentRemoved, StudentWithdrawn
from contracts.sis import SisStudentWithdrawn
from services.roster.domain import Enrollment, Student, student_id_for, withdraw

SID = student_id_for("d1", "S-1")
ANA = Student(student_id=SID, district_id="d1", source_id="S-1", school_id="02M001", grade="03", given_name="Ana",
              family_name="Reyes", birth_date=None, email=None, state_id=None)
FACT = SisStudentWithdrawn(district_id="d1", source_id="S-1", occurred_at=datetime(2026, 10, 1, tzinfo=UTC))


def test_a_withdrawn_student_leaves_each_class_then_the_roster():
    classes = [Enrollment(uuid4(), "HR-401", "02M001", "student"), Enrollment(uuid4(), "ART-01", "02M001", "student")]
    events = withdraw(ANA, classes, FACT)
    assert [type(e) for e in events] == [EnrollmentRemoved, EnrollmentRemoved, StudentWithdrawn]
    assert {e.class_source_id for e in events[:2]} == {"HR-401", "ART-01"}
    assert all(e.person_id == SID for e in events[:2])
    assert events[-1].reason == "sis_withdrawal" and events[-1].school_id == "02M001"


def test_withdrawing_a_student_the_roster_does_not_hold_changes_nothing():
    assert withdraw(None, [], FACT) == []


def test_the_same_withdrawal_gives_the_same_event_ids():
    assert [e.event_id for e in withdraw(ANA, [], FACT)] == [e.event_id for e in withdraw(ANA, [], FACT)]
