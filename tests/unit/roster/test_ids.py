"""Roster ids are uuid5 of (district, SIS id) in the roster's namespace: the same on every
feed and every instance. The importer derives them a million at a time by a shorter path;
these examples say it is the same function."""

import uuid
from uuid import UUID

from hypothesis import given
from hypothesis import strategies as st

from contracts.sis import SisStudentEnrolled
from services.roster.domain import (
    _STUDENT_IDS,
    _uuid5_text,
    class_id_for,
    class_id_text,
    enrolment_columns,
    staff_id_for,
    staff_id_text,
    student_id_for,
    student_id_text,
)


@given(st.text(max_size=40), st.text(max_size=80))
def test_derived_ids_are_uuid5_of_district_and_sourced_id(district_id, source_id):
    assert student_id_for(district_id, source_id) == uuid.uuid5(_STUDENT_IDS, f"{district_id}\n{source_id}")
    assert staff_id_for(district_id, source_id) == uuid.uuid5(_STUDENT_IDS, f"{district_id}\nstaff\n{source_id}")
    assert class_id_for(district_id, source_id) == uuid.uuid5(_STUDENT_IDS, f"{district_id}\nclass\n{source_id}")


@given(st.text(max_size=40), st.text(max_size=80))
def test_the_ids_an_import_stages_as_text_are_the_same_ids(district_id, source_id):
    assert student_id_text(district_id, source_id) == student_id_for(district_id, source_id).hex
    assert staff_id_text(district_id, source_id) == staff_id_for(district_id, source_id).hex
    assert class_id_text(district_id, source_id) == class_id_for(district_id, source_id).hex


def test_a_known_student_keeps_its_id():
    assert str(student_id_for("nycdoe", "stu-0001")) == "4b68fabc-4cc8-5224-a029-90aee52c64d4"


@given(st.text(max_size=80))
def test_ids_given_to_postgresql_as_text_are_the_same_uuid5(name):
    """enrolment_columns and staff_columns give ids as 32 hex digits, made from the digest's
    bytes: the same uuid5 as every other path derives."""
    assert _uuid5_text(name) == uuid.uuid5(_STUDENT_IDS, name).hex


def test_an_enrolment_fact_causes_the_roster_event_its_id_derives():
    fact = SisStudentEnrolled(district_id="d1", source_id="S-1", school_id="K1", grade="05", given_name="Ana",
                              family_name="Reyes")
    columns = enrolment_columns([fact])
    assert UUID(columns[0][0]) == student_id_for("d1", "S-1")
    assert UUID(columns[11][0]) == uuid.uuid5(_STUDENT_IDS, f"caused-by\n{fact.event_id}")
    assert columns[13] == [str(fact.event_id)]  # no correlation id: the fact's id
    assert enrolment_columns([fact.model_copy(update={"correlation_id": "c-1"})])[13] == ["c-1"]
