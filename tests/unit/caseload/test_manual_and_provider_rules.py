"""Seed 000's point persons by school level and who may act; seed 001's provider rules.
Every refusal names the rule that failed."""

import pytest

from services.caseload.domain import (
    DEFAULT_POINT_PERSON_TYPES,
    Refused,
    check_may_act,
    check_point_person,
    check_provider_link,
    check_support_school,
    may_see,
    parse_levels,
    school_levels,
    student_levels,
)

from services.kit.identity import Identity, from_token

TYPES = {t.type: t for t in DEFAULT_POINT_PERSON_TYPES}


def staff(email: str, roles: set[str], schools) -> Identity:
    """A caller holding these roles at these schools (as a token's claims give them)."""
    return Identity(email, "d1", from_token(roles, schools))

# School levels come from the grades a school serves.
SCHOOLS = {
    "ES (K-5)": ["KG", "01", "02", "03", "04", "05"],
    "MS (6-8)": ["06", "07", "08"],
    "HS (9-12)": ["09", "10", "11", "12"],
    "EMS (K-8)": ["KG", "03", "06", "08"],
    "secondary (6-12)": ["06", "09", "12"],
    "K-12": ["KG", "05", "07", "11"],
}

# The seed: Attendance (ES, MS & HS), Academic (EMS & HS), Regents, Credits, Postsecondary (HS only).
AVAILABLE = {
    "attendance": set(SCHOOLS),
    "academic": set(SCHOOLS),
    "regents": {"HS (9-12)", "secondary (6-12)", "K-12"},
    "credits": {"HS (9-12)", "secondary (6-12)", "K-12"},
    "postsecondary": {"HS (9-12)", "secondary (6-12)", "K-12"},
}


def test_a_schools_level_comes_from_the_grades_it_serves():
    assert school_levels(SCHOOLS["ES (K-5)"]) == {"ES"}
    assert school_levels(SCHOOLS["EMS (K-8)"]) == {"ES", "MS"}
    assert school_levels(SCHOOLS["secondary (6-12)"]) == {"MS", "HS"}
    assert school_levels([]) == frozenset()


@pytest.mark.parametrize("type_name", sorted(TYPES))
@pytest.mark.parametrize("school", sorted(SCHOOLS))
def test_every_point_person_type_against_every_school_level(type_name, school):
    levels = school_levels(SCHOOLS[school])
    if school in AVAILABLE[type_name]:
        check_point_person(TYPES[type_name], type_name, levels, owner_known=True)
    else:
        with pytest.raises(Refused) as refused:
            check_point_person(TYPES[type_name], type_name, levels, owner_known=True)
        assert refused.value.rule == "type_not_available_at_school_level"
        assert TYPES[type_name].label in refused.value.message


def test_a_point_person_must_be_a_known_staff_member_of_a_known_type():
    with pytest.raises(Refused, match="active staff member") as r:
        check_point_person(TYPES["attendance"], "attendance", frozenset({"ES"}), owner_known=False)
    assert r.value.rule == "unknown_staff_member"
    with pytest.raises(Refused) as r:
        check_point_person(None, "cafeteria", frozenset({"ES"}), owner_known=True)
    assert r.value.rule == "unknown_point_person_type"


def test_districts_write_levels_as_the_seed_does():
    assert parse_levels(["EMS", "hs"]) == {"ES", "MS", "HS"}
    with pytest.raises(ValueError, match="unknown school level"):
        parse_levels(["college"])


VIEWER = staff("v@s.org", {"caseload_viewer"}, {"A"})
EDITOR = staff("e@s.org", {"caseload_editor"}, {"A"})
SCHOOL_ADMIN = staff("sa@s.org", {"school_admin"}, {"A"})


def test_a_viewer_sees_their_caseload_and_may_not_act_on_it():
    assert may_see(VIEWER, schools=("A",), on_own_caseload=True)
    assert not may_see(VIEWER, schools=("A",), on_own_caseload=False)
    with pytest.raises(Refused) as r:
        check_may_act(VIEWER, schools=("A",), on_own_caseload=True)
    assert r.value.rule == "viewer_cannot_act"


def test_an_editor_acts_on_their_own_caseload_only():
    check_may_act(EDITOR, schools=("A",), on_own_caseload=True)
    with pytest.raises(Refused) as r:
        check_may_act(EDITOR, schools=("A",), on_own_caseload=False)
    assert r.value.rule == "not_on_your_caseload"


def test_a_school_admin_sees_and_acts_in_their_schools():
    assert may_see(SCHOOL_ADMIN, schools=("A",), on_own_caseload=False)
    check_may_act(SCHOOL_ADMIN, schools=("A",), on_own_caseload=False)
    assert not may_see(SCHOOL_ADMIN, schools=("B",), on_own_caseload=False)


SUPERVISOR = staff("sup@s.org", {"supervisor"}, {"A"})
PROVIDER = staff("speech@s.org", {"provider"}, ())
SPEECH = [("m-1", "speech")]


def link(caller=SUPERVISOR, provider="speech@s.org", provider_schools=frozenset({"A"}), school="A",
         mandates=SPEECH, service=None, schools=None):
    return check_provider_link(caller=caller, provider_email=provider, provider_schools=provider_schools,
                               student_schools=schools or (school,), mandates=mandates, service=service)


def refused_rule(**kw) -> str:
    with pytest.raises(Refused) as r:
        link(**kw)
    return r.value.rule


def test_a_supervisor_adds_a_student_with_a_mandate_to_a_provider_they_have_access_to():
    assert link() == "m-1"


def test_a_provider_adds_a_student_to_their_own_caseload_under_the_same_rules():
    assert link(caller=PROVIDER) == "m-1"
    assert refused_rule(caller=PROVIDER, mandates=[]) == "no_mandate"


def test_each_refusal_says_which_rule_failed():
    assert refused_rule(mandates=[]) == "no_mandate"
    assert refused_rule(school="B", provider_schools=frozenset({"A"})) == "provider_not_authorised"
    assert refused_rule(provider_schools=frozenset({"C"})) == "no_access_to_provider"
    assert refused_rule(caller=EDITOR) == "not_a_supervisor"
    assert refused_rule(caller=staff("speech@s.org", {"caseload_editor"}, ())) == "not_a_provider"
    assert refused_rule(service="OT") == "no_mandate"
    assert refused_rule(mandates=[("m-1", "speech"), ("m-2", "OT")]) == "service_needed"


def test_a_provider_authorised_district_wide_serves_every_school():
    assert link(provider_schools=frozenset({"*"}), school="Z") == "m-1"
    assert link(mandates=[("m-1", "speech"), ("m-2", "OT")], service="ot") == "m-2"


# Dual enrolment: a student belongs to every school they are enrolled in (home school first
# or not: the order never matters).
DUAL = ("A", "B")
SUPERVISOR_B = staff("supb@s.org", {"supervisor"}, {"B"})
SCHOOL_ADMIN_B = staff("sab@s.org", {"school_admin"}, {"B"})
SCHOOL_ADMIN_C = staff("sac@s.org", {"school_admin"}, {"C"})


def test_staff_of_each_of_a_students_schools_see_and_act_on_them():
    for caller in (SCHOOL_ADMIN, SCHOOL_ADMIN_B):
        assert may_see(caller, schools=DUAL, on_own_caseload=False)
        assert may_see(caller, schools=tuple(reversed(DUAL)), on_own_caseload=False)
        check_may_act(caller, schools=DUAL, on_own_caseload=False)
    assert may_see(SUPERVISOR_B, schools=DUAL, on_own_caseload=False)
    assert not may_see(SCHOOL_ADMIN_C, schools=DUAL, on_own_caseload=False)
    with pytest.raises(Refused):
        check_may_act(SCHOOL_ADMIN_C, schools=DUAL, on_own_caseload=False)


def test_a_provider_authorised_at_any_of_the_students_schools_serves_them():
    assert link(provider_schools=frozenset({"B"}), schools=DUAL, caller=SUPERVISOR_B) == "m-1"
    assert refused_rule(provider_schools=frozenset({"C"}), schools=DUAL,
                        caller=staff("sup@s.org", {"supervisor"}, {"C"})) == \
        "provider_not_authorised"


def test_point_person_types_are_available_by_the_levels_of_all_the_students_schools():
    levels = {"M1": school_levels(SCHOOLS["MS (6-8)"]), "H1": school_levels(SCHOOLS["HS (9-12)"])}
    assert student_levels(("M1",), levels) == {"MS"}
    assert student_levels(("M1", "H1"), levels) == {"MS", "HS"}
    check_point_person(TYPES["regents"], "regents", student_levels(("H1", "M1"), levels), owner_known=True)
    assert student_levels(("M1", "new"), levels) == {"MS"}  # a school with no students yet has no level


def test_a_support_takes_students_of_its_school_whichever_of_their_schools_it_is():
    check_support_school({"school_id": "B", "name": "Tier 2 reading"}, DUAL)
    with pytest.raises(Refused) as r:
        check_support_school({"school_id": "C", "name": "Tier 2 reading"}, DUAL)
    assert r.value.rule == "other_school"
