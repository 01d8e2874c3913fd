"""Seed 000's automatic caseload rule as data (domain.AUTOMATIC_CASELOADS): K-5 from the
official class, 6-12 from course sections; and the login email a caseload is keyed by. The
rule's SQL, run on real PostgreSQL, is tested example by example in
tests/integration/test_automatic_caseloads.py."""

import pytest

from services.caseload.domain import automatic_caseloads_sql, automatic_reason, grade_band, login_email


def test_grade_bands():
    assert [grade_band(g) for g in ("PK", "KG", "05", "06", "12", "UG")] == [
        "elementary", "elementary", "elementary", "secondary", "secondary", None]


@pytest.mark.parametrize(("grade", "class_type", "reason"), [
    ("KG", "homeroom", "homeroom"), ("05", "homeroom", "homeroom"), ("06", "scheduled", "section"),
    ("12", "scheduled", "section"), ("03", "scheduled", None), ("09", "homeroom", None), ("UG", "homeroom", None),
    ("UG", "scheduled", None)])
def test_which_class_puts_a_student_on_its_teachers_caseloads(grade, class_type, reason):
    assert automatic_reason(grade, class_type) == reason


def test_the_sql_joins_every_grade_of_each_band_to_its_class_type():
    join, reason, words = automatic_caseloads_sql("e.grade", "c")
    assert "('KG', 'homeroom', 'homeroom')" in join and "('09', 'scheduled', 'section')" in join
    assert "('09', 'homeroom'" not in join
    assert words == ("CASE automatic.reason WHEN 'homeroom' THEN 'homeroom ' || coalesce(c.title) "
                     "WHEN 'section' THEN 'section ' || coalesce(c.class_code, c.title) END")


@pytest.mark.parametrize("spelling", [None, "", "  ", "\t\n", "\u00a0"])
def test_a_blank_email_is_no_email_whatever_its_spelling(spelling):
    assert login_email(spelling) is None


def test_a_login_email_is_read_without_surrounding_spaces_and_in_lower_case():
    assert login_email("  Maria.Santos@School.ORG \n") == "maria.santos@school.org"
