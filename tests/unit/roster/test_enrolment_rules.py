"""The roster's rules that run in Python: ids, the home school, and how a batch of SIS facts
is taken in turns. What a student's or a staff member's facts change, and the events that
say so, is decided in PostgreSQL (tests/integration/test_sis_roster_facts.py)."""

from datetime import UTC, datetime
from uuid import UUID, uuid4

from hypothesis import given
from hypothesis import strategies as st

from contracts.sis import SisStudentEnrolled
from services.roster.domain import enrolment_columns, in_turns, student_id_for

T0 = datetime(2026, 9, 1, 12, tzinfo=UTC)


def fact(source_id="S-1", district_id="d1", **changes) -> SisStudentEnrolled:
    base = dict(district_id=district_id, source_id=source_id, school_id="02M001", grade="05", given_name="Ana",
                family_name="Reyes", occurred_at=T0)
    return SisStudentEnrolled(**{**base, **changes})


def test_a_batch_is_taken_in_turns_each_student_once_a_turn_in_order():
    a1, b1, a2, c1, a3, b2 = (fact("A", grade="01"), fact("B"), fact("A", grade="02"), fact("C"),
                              fact("A", grade="03"), fact("B", grade="09"))
    assert in_turns([a1, b1, a2, c1, a3, b2]) == [[a1, b1, c1], [a2, b2], [a3]]
    assert in_turns([]) == []


def test_one_source_id_in_two_districts_is_two_students_in_one_turn():
    one, other = fact("S-1", "d1"), fact("S-1", "d2")
    assert in_turns([one, other]) == [[one, other]]


def test_the_columns_of_a_fact_hold_its_student_its_schools_home_first_and_its_cause():
    f = fact(school_ids=["02M475", "02M001", "01M015"], correlation_id=None)
    columns = enrolment_columns([f])
    assert [UUID(columns[0][0]), columns[1][0], columns[2][0]] == [student_id_for("d1", "S-1"), "d1", "S-1"]
    assert columns[10] == ['{"02M001","01M015","02M475"}']
    assert UUID(columns[11][0]) != f.event_id and columns[11] == enrolment_columns([f])[11]
    assert columns[12:] == [[T0.isoformat()], [str(f.event_id)]]
    assert enrolment_columns([fact()])[10] == ['{"02M001"}']


@given(st.text(), st.text())
def test_the_ids_given_to_the_database_as_text_are_the_roster_s_ids(district_id, source_id):
    (text,) = enrolment_columns([SisStudentEnrolled.model_construct(
        district_id=district_id, source_id=source_id, school_id="A", school_ids=None, grade="05", given_name="A",
        family_name="B", birth_date=None, email=None, state_id=None, event_id=uuid4(), occurred_at=T0,
        correlation_id=None)])[0]
    assert UUID(text) == student_id_for(district_id, source_id)


def test_a_staff_member_from_the_sis_gets_the_same_id_as_from_the_files():
    from services.roster.oneroster import staff_id_text as file_staff_id

    from services.roster.domain import staff_id_for

    assert staff_id_for("d1", "T-1") == UUID(file_staff_id("d1", "T-1"))


def test_the_home_school_is_the_files_primary_else_the_one_held_else_the_first_listed():
    from services.roster.domain import home_school

    assert home_school(["B", "A"], primary="A") == "A"
    assert home_school(["B", "A"], held="A") == "A"
    assert home_school(["B", "A"], held="C") == "B"
