"""Who may assign which access level where (seeds 000 and 003), the roster default and its
withdrawal, and what a revoke may end. Every refusal names its rule."""

import pytest

from services.caseload.domain import (
    AccessChange,
    Refused,
    check_defaults,
    check_may_assign,
    check_revoke,
    district_defaults,
    grant_id,
    roster_default_access,
)
from services.kit.identity import Holding, Identity, from_token

DISTRICT_ADMIN = Identity("da@d.org", "d1", (Holding("district_admin", None, "configuration"),))
PRINCIPAL_E1 = Identity("sa@d.org", "d1", (Holding("school_admin", "E1", "granted"),))
TEACHER = Identity("t@d.org", "d1", from_token({"caseload_editor"}, {"E1"}))


def rule(caller: Identity, level: str, school: str | None) -> str | None:
    try:
        check_may_assign(caller, AccessChange(True, "x@d.org", level, school))
    except Refused as r:
        return r.rule
    return None


def test_a_district_admin_assigns_any_level_anywhere_in_the_district():
    assert {rule(DISTRICT_ADMIN, level, "E1") for level in ("caseload_viewer", "manage_cases", "school_admin")} \
        == {None}
    assert rule(DISTRICT_ADMIN, "district_admin", None) is None
    assert rule(DISTRICT_ADMIN, "manage_cases", None) is None


def test_a_school_admin_assigns_caseload_case_and_provider_levels_at_their_own_schools():
    for level in ("caseload_viewer", "caseload_editor", "manage_cases", "provider", "supervisor"):
        assert rule(PRINCIPAL_E1, level, "E1") is None
        assert rule(PRINCIPAL_E1, level, "M1") == "outside_your_schools"
        assert rule(PRINCIPAL_E1, level, None) == "needs_district_admin"
    assert rule(PRINCIPAL_E1, "school_admin", "E1") == "needs_district_admin"


def test_others_assign_nothing_and_some_levels_have_one_shape():
    assert rule(TEACHER, "caseload_viewer", "E1") == "not_an_admin"
    assert rule(DISTRICT_ADMIN, "district_admin", "E1") == "district_admin_is_district_wide"
    assert rule(DISTRICT_ADMIN, "school_admin", None) == "school_admin_is_per_school"
    assert rule(DISTRICT_ADMIN, "superuser", "E1") == "unknown_level"


def revoke_rule(bases: set[str], level="caseload_editor", admins_left=2) -> str | None:
    try:
        check_revoke(AccessChange(False, "x@d.org", level, None if level == "district_admin" else "E1"), bases,
                     admins_left)
    except Refused as r:
        return r.rule
    return None


def test_a_revoke_ends_an_admins_grant_and_says_where_other_access_comes_from():
    assert revoke_rule({"granted"}) is None
    assert revoke_rule({"granted", "roster_default"}) is None  # the default stays, the grant goes
    assert revoke_rule({"roster_default"}) == "roster_default"
    assert revoke_rule({"configuration"}, level="district_admin") == "configuration"
    assert revoke_rule(set()) is None  # nothing held: unchanged
    assert revoke_rule({"granted"}, level="district_admin", admins_left=1) == "last_district_admin"


def test_a_teacher_with_a_login_email_holds_the_default_at_each_of_their_schools():
    defaults = district_defaults({})
    assert roster_default_access(role="teacher", email=" Rivera@D.org ", active=True, school_ids=["E1", "M1"],
                                 defaults=defaults) == {("caseload_viewer", "E1"), ("caseload_viewer", "M1")}
    assert roster_default_access(role="aide", email="a@d.org", active=True, school_ids=["E1"], defaults=defaults) \
        == set()


def test_no_email_or_leaving_the_roster_holds_no_default():
    defaults = district_defaults({})
    for email, active in ((None, True), ("  ", True), ("t@d.org", False)):
        assert roster_default_access(role="teacher", email=email, active=active, school_ids=["E1"],
                                     defaults=defaults) == set()


def test_a_district_sets_its_own_defaults_per_roster_role():
    defaults = district_defaults({"teacher": ["caseload_editor"], "counselor": ["manage_cases"]})
    assert roster_default_access(role="teacher", email="t@d.org", active=True, school_ids=["E1"],
                                 defaults=defaults) == {("caseload_editor", "E1")}
    assert roster_default_access(role="counselor", email="c@d.org", active=True, school_ids=["H1"],
                                 defaults=defaults) == {("manage_cases", "H1")}
    with pytest.raises(Refused) as r:
        check_defaults({"teacher": ["district_admin"]})
    assert r.value.rule == "not_a_default_level"
    with pytest.raises(Refused) as r:
        check_defaults({"principal": ["school_admin"]})
    assert r.value.rule == "unknown_roster_role"


def test_a_grant_is_the_same_grant_when_made_again_and_a_default_follows_its_staff_record_and_email():
    assert grant_id("d1", "t@d.org", "manage_cases", "E1", "granted") == \
        grant_id("d1", "t@d.org", "manage_cases", "E1", "granted")
    assert grant_id("d1", "t@d.org", "manage_cases", "E1", "granted") != \
        grant_id("d2", "t@d.org", "manage_cases", "E1", "granted")
    import uuid
    one, two = uuid.uuid4(), uuid.uuid4()
    assert grant_id("d1", "t@d.org", "caseload_viewer", "E1", "roster_default", one) != \
        grant_id("d1", "t@d.org", "caseload_viewer", "E1", "roster_default", two)
    assert grant_id("d1", "t@d.org", "caseload_viewer", "E1", "roster_default", one) != \
        grant_id("d1", "new@d.org", "caseload_viewer", "E1", "roster_default", one)


def test_a_grant_goes_to_staff_of_the_roster_at_its_schools_or_to_a_district_admin():
    from services.caseload.domain import check_grantee

    def grantee_rule(level="caseload_editor", school="E1", **kw) -> str | None:
        try:
            check_grantee(AccessChange(True, "x@d.org", level, school), **kw)
        except Refused as r:
            return r.rule
        return None

    assert grantee_rule(active_staff=True) is None
    assert grantee_rule(active_staff=False) == "unknown_staff_member"
    assert grantee_rule(active_staff=False, district_admin=True) is None
    assert grantee_rule("district_admin", None, active_staff=False) is None
    assert grantee_rule(active_staff=True, known_school=False) == "unknown_school"
