"""The roster publishes exact changes: a new student is enrolled, a changed one updated
(saying what changed), and identical facts say nothing."""

from datetime import UTC, date, datetime, timedelta
from uuid import uuid4

from hypothesis import given
from hypothesis import strategies as st

from contracts.roster import StudentEnrolled, StudentUpdated
from contracts.sis import SisStudentEnrolled
from services.roster.domain import enrol, student_id_for

T0 = datetime(2026, 9, 1, 12, tzinfo=UTC)


def fact(source_id="S-1", **changes) -> SisStudentEnrolled:
    base = dict(district_id="d1", source_id=source_id, school_id="02M001", grade="05", given_name="Ana",
                family_name="Reyes", birth_date=date(2015, 3, 1), occurred_at=T0)
    return SisStudentEnrolled(**{**base, **changes})


def test_a_student_the_roster_does_not_hold_is_enrolled():
    changed, events = enrol({}, [fact()])
    sid = student_id_for("d1", "S-1")
    assert list(changed) == [sid]
    assert len(events) == 1 and isinstance(events[0], StudentEnrolled)
    assert events[0].student_id == sid and events[0].grade == "05" and events[0].district_id == "d1"
    assert events[0].producer == "caseflow.roster"


def test_identical_facts_change_nothing_and_say_nothing():
    held, _ = enrol({}, [fact()])
    changed, events = enrol(held, [fact(occurred_at=T0 + timedelta(days=1))])
    assert changed == {} and events == []


def test_a_changed_student_is_updated_with_the_fields_that_changed():
    held, _ = enrol({}, [fact()])
    changed, events = enrol(held, [fact(grade="06", school_id="02M002")])
    (event,) = events
    assert isinstance(event, StudentUpdated)
    assert event.changed == ["school_id", "grade", "school_ids"]
    assert changed[event.student_id].grade == "06"


def test_the_same_student_in_two_districts_is_two_students():
    assert student_id_for("d1", "S-1") != student_id_for("d2", "S-1")
    assert student_id_for("d1", "S-1") == student_id_for("d1", "S-1")


def test_facts_in_one_batch_apply_in_order():
    changed, events = enrol({}, [fact(grade="05"), fact(grade="06"), fact(grade="06")])
    assert [type(e) for e in events] == [StudentEnrolled, StudentUpdated]
    assert next(iter(changed.values())).grade == "06"


def test_each_roster_event_id_is_derived_from_the_fact_that_caused_it():
    f = fact()
    assert enrol({}, [f])[1][0].event_id == enrol({}, [f])[1][0].event_id
    assert enrol({}, [f])[1][0].event_id != f.event_id


grades = st.sampled_from(["KG", "01", "05", "09", "12"])
facts = st.lists(
    st.builds(lambda s, g, school: fact(source_id=s, grade=g, school_id=school),
              st.sampled_from(["S-1", "S-2", "S-3"]), grades, st.sampled_from(["A", "B"])),
    max_size=12,
)


@given(facts, st.integers(min_value=0, max_value=12))
def test_applying_facts_in_any_split_gives_the_same_roster_as_applying_them_at_once(sequence, cut):
    """Batches are an optimisation: one batch or two, the roster and its events agree."""
    whole, whole_events = enrol({}, sequence)
    first, first_events = enrol({}, sequence[:cut])
    second, second_events = enrol(first, sequence[cut:])
    assert {**first, **second} == whole
    assert [(type(e), e.student_id) for e in first_events + second_events] == [
        (type(e), e.student_id) for e in whole_events
    ]


@given(facts)
def test_the_roster_holds_the_last_fact_about_each_student(sequence):
    held, _ = enrol({}, sequence)
    for f in sequence:
        last = [x for x in sequence if x.source_id == f.source_id][-1]
        student = held[student_id_for("d1", f.source_id)]
        assert (student.grade, student.school_id) == (last.grade, last.school_id)


def test_a_staff_member_from_the_sis_gets_the_same_id_as_from_the_files():
    from services.roster.oneroster import staff_id_for as file_staff_id

    from services.roster.domain import staff_id_for

    assert staff_id_for("d1", "T-1") == file_staff_id("d1", "T-1")


def test_sis_staff_facts_say_only_what_changed_and_match_a_teacher_once_they_have_an_email():
    from contracts.sis import SisStaffUpserted
    from services.roster.domain import upsert_staff

    fact = SisStaffUpserted(district_id="d1", source_id="T-1", role="teacher", given_name="Maria",
                            family_name="Lopez", school_ids=["02M001"], occurred_at=T0)
    held, events = upsert_staff({}, [fact])
    assert [e.matched for e in events] == [False]
    assert upsert_staff(held, [fact]) == ({}, [])
    _, events = upsert_staff(held, [fact.model_copy(update={"email": "mlopez@example.org"})])
    assert [(e.matched, e.email) for e in events] == [(True, "mlopez@example.org")]


def test_a_student_of_several_schools_belongs_to_each_whatever_order_the_sis_lists_them():
    held, (enrolled,) = enrol({}, [fact(school_ids=["02M475", "02M001"])])
    assert enrolled.school_id == "02M001" and enrolled.school_ids == ["02M001", "02M475"]
    changed, events = enrol(held, [fact(school_ids=["02M001", "02M475"])])
    assert changed == {} and events == []


def test_the_home_school_is_the_files_primary_else_the_one_held_else_the_first_listed():
    from services.roster.domain import home_school

    assert home_school(["B", "A"], primary="A") == "A"
    assert home_school(["B", "A"], held="A") == "A"
    assert home_school(["B", "A"], held="C") == "B"


def test_a_staff_email_of_spaces_is_no_email():
    from contracts.sis import SisStaffUpserted
    from services.roster.domain import upsert_staff

    staff = SisStaffUpserted.model_construct(district_id="d1", source_id="T-1", role="teacher", given_name="Ana",
                                             family_name="Reyes", email="  ", identifier=None, school_ids=["02M001"],
                                             event_id=uuid4(), occurred_at=T0, correlation_id=None)
    _, (event,) = upsert_staff({}, [staff])
    assert event.email is None and event.matched is False
