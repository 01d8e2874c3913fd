"""Dual enrolment in the cases service: staff of any of a student's schools find them and
read their timeline; manage_cases in any of those schools works on the student."""

from services.cases.domain import manages_student, sees_student, student_schools
from services.kit.identity import Identity, from_token


def staff(roles: set[str], schools: set[str]) -> Identity:
    return Identity(email="s@d.org", district_id="d1", holdings=from_token(roles, schools))


def test_a_students_schools_are_a_set_with_the_home_school_in_it():
    assert student_schools("H1", ["H2", "H1"]) == student_schools("H1", ["H1", "H2"]) == ("H1", "H2")
    assert student_schools("H1", None) == ("H1",)
    assert student_schools("H1", ["H2"]) == ("H1", "H2")


def test_staff_of_any_of_the_students_schools_find_them():
    dual = student_schools("H1", ["H1", "H2"])
    assert sees_student(staff({"caseload_viewer"}, {"H2"}), dual)
    assert not sees_student(staff({"caseload_viewer"}, {"H3"}), dual)
    assert sees_student(staff({"district_admin"}, set()), dual)
    assert manages_student(staff({"manage_cases"}, {"H2"}), dual)
    assert not manages_student(staff({"caseload_viewer"}, {"H2"}), dual)
    assert not manages_student(staff({"manage_cases"}, {"H3"}), dual)
