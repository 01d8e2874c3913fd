"""Roster ids are uuid5 of (district, SIS id) in the roster's namespace: the same on every
feed and every instance. The importer derives them a million at a time by a shorter path;
these examples say it is the same function."""

import uuid

from hypothesis import given
from hypothesis import strategies as st

from services.roster.domain import (
    _STUDENT_IDS,
    class_id_for,
    class_id_text,
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
