from datetime import UTC, datetime, timedelta
from uuid import uuid4

from contracts.roster import StudentEnrolled, StudentUpdated
from services.caseload.domain import latest_students, student_schools

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


def test_a_student_belongs_to_every_school_they_are_enrolled_in_in_no_particular_order():
    assert student_schools("02M104", ["02M104", "02M475"]) == ("02M104", "02M475")
    assert student_schools("02M104", ["02M475", "02M104"]) == ("02M104", "02M475")
    assert student_schools("02M104", None) == ("02M104",)  # an older producer: the school alone
    assert student_schools("02M104", ["02M475"]) == ("02M104", "02M475")  # the home school is always one
    assert student_schools("02M104", ["", " 02M475 ", "02M475"]) == ("02M104", "02M475")


def test_the_projection_keeps_every_school_and_the_lists_order_changes_nothing():
    both = StudentEnrolled(district_id="d1", student_id=SID, source_id="S-1", school_id="02M104", grade="07",
                           given_name="Ana", family_name="Reyes", occurred_at=T0, school_ids=["02M104", "02M475"])
    (student,) = latest_students([both])
    assert student.school_id == "02M104" and student.school_ids == ("02M104", "02M475")
    reversed_ = StudentUpdated(**{**both.model_dump(exclude={"event_type", "event_id"}),
                                  "occurred_at": T0 + timedelta(hours=1), "school_ids": ["02M475", "02M104"],
                                  "changed": ["school_ids"]})
    (again,) = latest_students([reversed_], {SID: student})
    assert again.school_ids == student.school_ids
    (older,) = latest_students([enrolled()])
    assert older.school_ids == ("A",)


def test_a_student_of_one_school_reads_as_the_general_rule_reads_them():
    """student_schools answers the common case (the home school alone) without building sets;
    its answer is the rule's for every spelling of that case."""
    def rule(school_id, school_ids):
        return tuple(sorted(({s.strip() for s in (school_ids or ())} | {school_id}) - {""}))

    for school_id in ("02M104", " 02M104", "02M104 ", "", " "):
        for school_ids in (None, [], [school_id], [school_id.strip()], [school_id, school_id], ["02M475"]):
            assert student_schools(school_id, school_ids) == rule(school_id, school_ids), (school_id, school_ids)


def test_a_withdrawal_keeps_what_was_known_of_the_student():
    from contracts.roster import StudentWithdrawn

    (known,) = latest_students([enrolled()])
    gone = StudentWithdrawn(district_id="d1", student_id=SID, source_id="S-1", school_id="A", reason="tobedeleted",
                            occurred_at=T0 + timedelta(hours=1))
    (withdrawn,) = latest_students([gone], {SID: known})
    assert withdrawn == known._replace(status="withdrawn", as_of=T0 + timedelta(hours=1))
    assert latest_students([gone]) == []  # withdrawn before we knew them: nothing to keep
