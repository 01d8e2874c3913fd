"""Seed 000's automatic caseload rules: K-5 from the official class, 6-12 from course
sections, only for teachers matched to a login email."""

from uuid import uuid4

import pytest

from services.caseload.domain import Membership, Projection, automatic_memberships, grade_band, login_email

HOMEROOM, SECTION = uuid4(), uuid4()
ANA, LEE = uuid4(), uuid4()  # grade 03 and grade 09
MARIA, JOHN = uuid4(), uuid4()  # teachers


def projection(**changes) -> Projection:
    base = dict(
        students={ANA: ("03", "active"), LEE: ("09", "active")},
        classes={HOMEROOM: "homeroom", SECTION: "scheduled"},
        members={(HOMEROOM, ANA, "student"), (HOMEROOM, MARIA, "teacher"), (SECTION, LEE, "student"),
                 (SECTION, JOHN, "teacher")},
        staff={MARIA: ("maria@school.org", True), JOHN: ("john@school.org", True)},
    )
    return Projection(**{**base, **changes})


def test_an_elementary_student_is_on_the_caseload_of_their_official_class_teacher():
    assert Membership("maria@school.org", ANA, "homeroom", str(HOMEROOM)) in automatic_memberships(projection())


def test_a_secondary_student_is_on_the_caseload_of_each_section_teacher():
    assert Membership("john@school.org", LEE, "section", str(SECTION)) in automatic_memberships(projection())


def test_the_rule_follows_the_students_grade_not_the_school():
    # Lee in a homeroom and Ana in a section: neither rule applies to them there.
    members = {(HOMEROOM, LEE, "student"), (HOMEROOM, MARIA, "teacher"), (SECTION, ANA, "student"),
               (SECTION, JOHN, "teacher")}
    assert automatic_memberships(projection(members=members)) == set()


def test_an_unmatched_teacher_has_no_caseload_until_their_email_arrives():
    unmatched = projection(staff={MARIA: (None, True), JOHN: ("john@school.org", True)})
    assert {m.owner_email for m in automatic_memberships(unmatched)} == {"john@school.org"}


def test_withdrawn_students_and_inactive_teachers_are_on_no_caseload():
    assert automatic_memberships(projection(students={ANA: ("03", "withdrawn"), LEE: ("09", "active")},
                                            staff={MARIA: ("maria@school.org", True),
                                                   JOHN: ("john@school.org", False)})) == set()


def test_grade_bands():
    assert [grade_band(g) for g in ("PK", "KG", "05", "06", "12", "UG")] == [
        "elementary", "elementary", "elementary", "secondary", "secondary", None]


@pytest.mark.parametrize("spelling", [None, "", "  ", "\t\n", "\u00a0"])
def test_a_blank_email_is_no_email_whatever_its_spelling(spelling):
    assert login_email(spelling) is None


def test_a_login_email_is_read_without_surrounding_spaces_and_in_lower_case():
    assert login_email("  Maria.Santos@School.ORG \n") == "maria.santos@school.org"


@pytest.mark.parametrize("spelling", ["", "  "])
def test_a_teacher_whose_email_is_blank_is_unmatched_and_owns_no_membership(spelling):
    unmatched = projection(staff={MARIA: (spelling, True), JOHN: ("john@school.org", True)})
    assert {m.owner_email for m in automatic_memberships(unmatched)} == {"john@school.org"}


def test_the_owner_of_a_membership_is_the_teachers_login_email():
    spaced = projection(staff={MARIA: (" Maria@School.org ", True), JOHN: ("john@school.org", True)})
    assert Membership("maria@school.org", ANA, "homeroom", str(HOMEROOM)) in automatic_memberships(spaced)
