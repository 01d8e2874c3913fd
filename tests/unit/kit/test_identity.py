"""What a caller may do: the union of their token's roles (at the token's schools) and the
access levels granted to them, each at a school or district-wide (seeds 000 and 003)."""

from services.kit.identity import Holding, Identity, from_token


def caller(*holdings: Holding, roles=(), schools=()) -> Identity:
    return Identity("c@d.org", "d1", from_token(roles, schools) + holdings)


def test_a_token_role_is_held_at_each_of_the_tokens_schools():
    c = caller(roles={"manage_cases"}, schools={"A", "B"})
    assert c.holds("manage_cases", "A") and c.holds("manage_cases", "B") and not c.holds("manage_cases", "C")
    assert c.schools_for("manage_cases") == {"A", "B"}


def test_a_token_role_without_schools_is_held_but_at_no_school():
    c = caller(roles={"caseload_viewer"})
    assert c.roles == {"caseload_viewer"} and not c.may_see_school("A") and c.schools_for() == frozenset()


def test_a_level_granted_at_one_school_holds_there_only():
    c = caller(Holding("caseload_editor", "A", "granted"), Holding("caseload_viewer", "B", "roster_default"))
    assert c.holds("caseload_editor", "A") and not c.holds("caseload_editor", "B")
    assert c.holds("caseload_viewer", "B") and not c.holds("caseload_viewer", "A")
    assert c.schools_for("caseload_editor") == {"A"} and c.schools_for() == {"A", "B"}


def test_a_level_granted_district_wide_holds_at_every_school():
    c = caller(Holding("manage_cases", None, "granted"))
    assert c.holds("manage_cases", "any-school") and c.schools_for("manage_cases") is None
    assert not c.district_wide  # manage_cases everywhere is not a district admin


def test_a_district_admin_scope_is_the_district_for_the_levels_they_hold():
    c = caller(Holding("district_admin", None, "configuration"), Holding("manage_cases", "A", "granted"))
    assert c.district_wide and c.schools_for("school_admin") is None
    assert c.holds("manage_cases", "Z")  # held, and the district admin's scope is the district
    assert not c.holds("caseload_editor", "A")  # not held at all


def test_token_and_grants_add_up():
    c = caller(Holding("school_admin", "B", "granted"), roles={"manage_cases"}, schools={"A"})
    assert c.holds("manage_cases", "A") and c.holds("school_admin", "B")
    assert not c.holds("school_admin", "A") and not c.holds("manage_cases", "B")
    assert c.schools_for("school_admin") == {"B"}
