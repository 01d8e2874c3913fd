"""The caseload rules (seed 000), without I/O.

Automatic caseloads:
- a student in the elementary grades (K-5) is on the caseload of each teacher of their
  official class (homeroom);
- a student in the secondary grades (6-12) is on the caseload of each teacher of each
  course section (scheduled class) they take;
- only teachers matched to a login email have a caseload; the rule follows the student's
  grade, so a school spanning both bands works.

Manual caseloads: a point person of a type (available by school level, one per type per
student) or the lead of a support has the student on their caseload. Provider caseloads:
a provider has a student only under a mandate and an authorisation for the student's
school (seed 001).

Who may do what (seed 000): a caseload viewer sees their own caseload; a caseload editor
also acts on it; school and district admins see and act on their schools or district.

Dual enrolment: a student belongs to every school they are enrolled in (student_schools),
whatever the order the roster lists them in; staff of each of those schools see and act on
them as on their own school's students. A homeroom or section membership belongs to the
school of its class; the other reasons to the student's home school (school_id).

The service keeps caseloads up to date incrementally, in SQL, as events and actions arrive
(store.refresh_caseloads): the automatic rule it runs is AUTOMATIC_CASELOADS below, turned
into SQL by automatic_caseloads_sql; a first attendance's verdict is FIRST_ATTENDANCE_WAITS,
turned into SQL by first_attendance_verdict_sql.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple
from uuid import UUID

from contracts.roster import StudentEnrolled, StudentUpdated, StudentWithdrawn
from services.kit.identity import Identity

ELEMENTARY_GRADES = ("IT", "PR", "PK", "TK", "KG", "01", "02", "03", "04", "05")
SECONDARY_GRADES = ("06", "07", "08", "09", "10", "11", "12", "13")


@dataclass(frozen=True)
class AutomaticCaseload:
    """Seed 000's automatic rule for one grade band: a student in one of `grades` is on the
    caseload of each teacher (matched to a login email, active) of each class of
    `class_type` they are enrolled in, for `reason`; the membership's words are `reason`
    and the class's first present name among `named_by` (its code, its title)."""

    band: str
    grades: tuple[str, ...]
    class_type: str  # roster class type (OneRoster classType): homeroom, scheduled
    reason: str
    named_by: tuple[str, ...]


# The rule that runs: store.refresh_caseloads joins these rows (automatic_caseloads_sql),
# so a band, a grade or a class type changes here and nowhere else.
AUTOMATIC_CASELOADS = (
    AutomaticCaseload("elementary", ELEMENTARY_GRADES, class_type="homeroom", reason="homeroom", named_by=("title",)),
    AutomaticCaseload("secondary", SECONDARY_GRADES, class_type="scheduled", reason="section",
                      named_by=("class_code", "title")),
)
AUTOMATIC_GRADES = tuple(g for rule in AUTOMATIC_CASELOADS for g in rule.grades)


def automatic_reason(grade: str, class_type: str) -> str | None:
    """Why a student in `grade` enrolled in a class of `class_type` is on its teachers'
    caseloads (homeroom, section), or None: that class gives them no caseload."""
    return next((r.reason for r in AUTOMATIC_CASELOADS if grade in r.grades and r.class_type == class_type), None)


def automatic_caseloads_sql(grade: str, class_alias: str) -> tuple[str, str, str]:
    """AUTOMATIC_CASELOADS as SQL, for a query joining a student's enrolments (their
    `grade` expression) to the class `class_alias`: (the join, the reason, the words).
    The join is a VALUES list of (grade, class_type, reason), one row per grade of each
    rule; the words name the class as the rule says. Made from the constants above only."""
    rows = ", ".join(f"('{g}', '{r.class_type}', '{r.reason}')" for r in AUTOMATIC_CASELOADS for g in r.grades)
    join = (f"JOIN (VALUES {rows}) AS automatic(grade, class_type, reason) "
            f"ON automatic.grade = {grade} AND automatic.class_type = {class_alias}.class_type")
    words = "CASE automatic.reason " + " ".join(
        f"WHEN '{r.reason}' THEN '{r.reason} ' || coalesce({', '.join(f'{class_alias}.{n}' for n in r.named_by)})"
        for r in AUTOMATIC_CASELOADS) + " END"
    return join, "automatic.reason", words


def login_email(text: str | None) -> str | None:
    """The login email a caseload is keyed by: read without surrounding whitespace, in
    lower case; None when there is none. Whatever spelling of "none" arrives (None, "",
    spaces, from an SIS event, a file or a form), a staff member without a login email is
    unmatched and owns no membership. Every email the service takes as an owner (staff,
    point persons, support leads, providers, callers) goes through here, once, on the way
    in; the store keeps what this returns, so its SQL compares emails as they are."""
    if text is None:
        return None
    return text.strip().lower() or None


def grade_band(grade: str) -> str | None:
    """elementary, secondary, or None: ungraded, adult education (no automatic caseload)."""
    return next((r.band for r in AUTOMATIC_CASELOADS if grade in r.grades), None)


# -------------------------------------------------------------------- school levels

LEVELS = ("ES", "MS", "HS")
_LEVEL_GRADES = {
    "ES": {"PK", "TK", "KG", "01", "02", "03", "04", "05"},
    "MS": {"06", "07", "08"},
    "HS": {"09", "10", "11", "12", "13"},
}
# Shorthands districts (and the seed) write: EMS is the elementary and middle schools.
LEVEL_SHORTHANDS = {"EMS": ("ES", "MS"), "ALL": LEVELS}


def student_schools(school_id: str, school_ids: Iterable[str] | None) -> tuple[str, ...]:
    """Every school a student is enrolled in, as a set written one way (sorted): the home
    school always among them; None (an older producer) means the home school alone; the
    order the roster lists them in never changes anything."""
    if school_ids is None or (len(school_ids) == 1 and school_ids[0] == school_id):
        if school_id and school_id == school_id.strip():  # the home school alone: most students
            return (school_id,)
    listed = {s.strip() for s in (school_ids or ())}
    return tuple(sorted((listed | {school_id}) - {""}))


def school_levels(grades: Iterable[str]) -> frozenset[str]:
    """The levels a school serves, from the grades its students are in: a K-8 school is
    ES and MS; a 6-12 school MS and HS."""
    grades = set(grades)
    return frozenset(level for level, in_level in _LEVEL_GRADES.items() if grades & in_level)


def student_levels(schools: Iterable[str], levels_by_school: dict[str, frozenset[str]]) -> frozenset[str]:
    """The levels of all of a student's schools: a 7th grader also enrolled at a high
    school may have the high school's point persons."""
    return frozenset().union(*(levels_by_school.get(s, frozenset()) for s in schools))


def parse_levels(written: Iterable[str]) -> frozenset[str]:
    """Levels as a district writes them (ES, MS, HS, EMS); raises ValueError on others."""
    out: set[str] = set()
    for level in written:
        level = level.strip().upper()
        if level in LEVELS:
            out.add(level)
        elif level in LEVEL_SHORTHANDS:
            out.update(LEVEL_SHORTHANDS[level])
        else:
            raise ValueError(f"unknown school level {level!r}: use ES, MS, HS or EMS")
    if not out:
        raise ValueError("a point person type needs at least one school level")
    return frozenset(out)


# -------------------------------------------------------------------- point persons


@dataclass(frozen=True)
class PointPersonType:
    type: str
    label: str
    levels: frozenset[str]

    def available_at(self, levels: frozenset[str]) -> bool:
        return bool(self.levels & levels)


# Seed 000: Attendance (ES, MS & HS), Academic (EMS & HS), Regents, Credits and
# Postsecondary (HS only). Districts may change these.
DEFAULT_POINT_PERSON_TYPES = (
    PointPersonType("attendance", "Attendance", frozenset({"ES", "MS", "HS"})),
    PointPersonType("academic", "Academic", frozenset({"ES", "MS", "HS"})),
    PointPersonType("regents", "Regents", frozenset({"HS"})),
    PointPersonType("credits", "Credits", frozenset({"HS"})),
    PointPersonType("postsecondary", "Postsecondary", frozenset({"HS"})),
)


# -------------------------------------------------------------------- access


class Refused(Exception):
    """An action a rule forbids: `rule` names the rule, the message says it in words."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(message)
        self.rule = rule
        self.message = message


ADMIN_ROLES = frozenset({"district_admin", "school_admin"})
READ_ROLES = ADMIN_ROLES | {"caseload_viewer", "caseload_editor", "provider", "supervisor"}
ACT_ROLES = ADMIN_ROLES | {"caseload_editor"}


# The person calling: their email (read with login_email), district, and the access levels
# they hold per school, from their token and from the grants below (services/kit/identity.py).
Caller = Identity


def sees_school(caller: Caller, school_id: str) -> bool:
    """Sees every student of the school: a district admin; a school admin or supervisor
    holding that level at the school (or district-wide)."""
    return caller.district_wide or caller.holds_any(("school_admin", "supervisor"), school_id)


def may_see(caller: Caller, *, schools: Iterable[str], on_own_caseload: bool) -> bool:
    """schools: every school the student is enrolled in (student_schools); one is enough.
    A caseload level held anywhere reaches the caller's own caseload: the caseload is its
    scope (seed 000: a viewer "sees their own caseload")."""
    return any(sees_school(caller, s) for s in schools) or (bool(caller.roles & READ_ROLES) and on_own_caseload)


def check_may_act(caller: Caller, *, schools: Iterable[str], on_own_caseload: bool) -> None:
    """Point persons, supports and batch actions: an editor on their own caseload, an admin
    in their scope (school_admin at one of the student's schools). Raises Refused; the
    caller has already been shown the student."""
    if caller.district_wide or any(caller.holds("school_admin", s) for s in schools):
        return
    if "caseload_editor" in caller.roles and on_own_caseload:
        return
    if "caseload_editor" in caller.roles:
        raise Refused("not_on_your_caseload", "a caseload editor acts only on students on their own caseload")
    raise Refused("viewer_cannot_act", "a caseload viewer may see students, not act on them; "
                                      "this needs caseload_editor or an admin role")


def check_point_person(ptype: PointPersonType | None, type_name: str, levels: frozenset[str],
                       owner_known: bool) -> None:
    if ptype is None:
        raise Refused("unknown_point_person_type", f"no point person type {type_name!r} in this district")
    if not ptype.available_at(levels):
        served = "/".join(sorted(levels)) or "no grades yet"
        raise Refused("type_not_available_at_school_level",
                      f"{ptype.label} point persons are for {'/'.join(sorted(ptype.levels))} schools; "
                      f"the student's school is {served}")
    if not owner_known:
        raise Refused("unknown_staff_member", "the point person must be an active staff member of the district "
                                              "with a login email")


def check_support_school(support, student_schools: Iterable[str]) -> None:
    """A support belongs to one school; it takes students enrolled in that school (their
    home school or another)."""
    student_schools = tuple(student_schools)
    if support["school_id"] not in student_schools:
        raise Refused("other_school", f"the support \"{support['name']}\" belongs to school {support['school_id']}; "
                                      f"the student is at {', '.join(student_schools)}")


# -------------------------------------------------------------------- providers (seed 001)


def check_may_change_provider_caseload(caller: Caller, provider_email: str, provider_schools: frozenset[str]) -> None:
    """A provider changes their own caseload; a supervisor (or an admin) another provider's,
    if they have access to the provider. provider_schools: the schools the provider is
    authorised for ('*' for the whole district). Raises Refused."""
    if login_email(provider_email) == login_email(caller.email):
        if "provider" not in caller.roles:
            raise Refused("not_a_provider", "adding a student to one's own provider caseload needs the provider role")
        return
    if "supervisor" not in caller.roles and not caller.district_wide and "school_admin" not in caller.roles:
        raise Refused("not_a_supervisor", "only a supervisor (or an admin) adds students to another "
                                          "provider's caseload; a provider adds to their own")
    reach = caller.schools_for("supervisor", "school_admin")
    if reach is not None and not ("*" in provider_schools or provider_schools & reach):
        raise Refused("no_access_to_provider", "the supervisor needs access to the provider: the provider "
                                               "is not authorised in any of the supervisor's schools")


def provider_serves(provider_schools: frozenset[str], student_schools: Iterable[str]) -> bool:
    """A provider serves the students of the schools they are authorised for ('*': the
    district); a student of several schools, if any one of them."""
    return "*" in provider_schools or bool(provider_schools & set(student_schools))


def mandate_to_link(*, provider_schools: frozenset[str], student_schools: Iterable[str],
                    mandates: list[tuple[str, str]], service: str | None) -> str:
    """The student's mandate a provider link goes under; raises Refused naming the rule.
    mandates: the student's active (mandate_id, service)."""
    if not mandates:
        raise Refused("no_mandate", "the student has no active mandate (IEP or service mandate)")
    if not provider_serves(provider_schools, student_schools):
        raise Refused("provider_not_authorised", "the provider is not authorised to serve students of the "
                                                 "student's school")
    if service is not None:
        matching = [m for m, s in mandates if s.lower() == service.lower()]
        if not matching:
            raise Refused("no_mandate", f"the student has no active mandate for {service}")
        return matching[0]
    if len(mandates) > 1:
        raise Refused("service_needed", "the student has several mandates ("
                      + ", ".join(sorted(s for _, s in mandates)) + "): say which service")
    return mandates[0][0]


# Seed 001: a provider's "first attend" puts the student on their caseload once the roster
# knows the student, the student has an active mandate for the service, and the provider is
# authorised for the student's school. A first attendance waits for the first of these that
# does not hold yet, in this order: (what it waits for, the fact). The SQL that decides is
# first_attendance_verdict_sql's.
FIRST_ATTENDANCE_WAITS = (
    ("student_unknown", "student_known"),
    ("no_mandate", "mandate_found"),
    ("provider_not_authorised", "provider_authorised"),
)


def first_attendance_verdict_sql(**facts: str) -> str:
    """FIRST_ATTENDANCE_WAITS as an SQL expression: what a first attendance waits for, NULL
    when it applies. facts: each fact's name -> its SQL boolean expression (never NULL)."""
    missing = {fact for _, fact in FIRST_ATTENDANCE_WAITS} - facts.keys()
    if missing:
        raise ValueError(f"no SQL for {', '.join(sorted(missing))}")
    return "CASE " + " ".join(f"WHEN NOT ({facts[fact]}) THEN '{waits}'" for waits, fact in FIRST_ATTENDANCE_WAITS) \
        + " END"


def check_provider_link(*, caller: Caller, provider_email: str, provider_schools: frozenset[str],
                        student_schools: Iterable[str], mandates: list[tuple[str, str]], service: str | None) -> str:
    """May `caller` put the student on the provider's caseload (seed 001)? Returns the
    mandate id to link; raises Refused naming the rule that failed."""
    check_may_change_provider_caseload(caller, provider_email, provider_schools)
    return mandate_to_link(provider_schools=provider_schools, student_schools=student_schools, mandates=mandates,
                           service=service)


# -------------------------------------------------------------------- the roster projection


class ProjectedStudent(NamedTuple):
    """A student as the caseload service's projection holds them (a tuple: one is made per
    roster event, and a frozen dataclass's fields are set one call each)."""

    student_id: UUID
    district_id: str
    school_id: str
    grade: str
    given_name: str
    family_name: str
    state_id: str | None
    status: str
    as_of: datetime
    source_id: str | None = None
    school_ids: tuple[str, ...] = ()  # every school the student is enrolled in (student_schools)


def latest_students(events: Iterable[StudentEnrolled | StudentUpdated | StudentWithdrawn],
                    held: dict[UUID, ProjectedStudent] | None = None) -> list[ProjectedStudent]:
    """The newest fact per student among these events (later in the list wins a tie).
    A withdrawal keeps what was known of the student and marks them withdrawn."""
    latest: dict[UUID, ProjectedStudent] = dict(held or {})
    changed: dict[UUID, ProjectedStudent] = {}
    for e in events:
        before = latest.get(e.student_id)
        if before is not None and before.as_of > e.occurred_at:
            continue
        if isinstance(e, StudentWithdrawn):
            if before is None:
                continue  # withdrawn before we knew them: nothing to keep
            now = before._replace(status="withdrawn", as_of=e.occurred_at)
        else:
            now = ProjectedStudent(
                student_id=e.student_id, district_id=e.district_id, school_id=e.school_id, grade=e.grade,
                given_name=e.given_name, family_name=e.family_name, state_id=e.state_id, status="active",
                as_of=e.occurred_at, source_id=e.source_id, school_ids=student_schools(e.school_id, e.school_ids),
            )
        latest[e.student_id] = changed[e.student_id] = now
    return list(changed.values())


# -------------------------------------------------------------------- access levels (seeds 000, 003)

ACCESS_LEVELS = ("caseload_viewer", "caseload_editor", "manage_cases", "provider", "supervisor", "school_admin",
                 "district_admin")
# What a school admin may grant at their own schools; school_admin and district_admin, and
# anything district-wide, take a district admin.
SCHOOL_ADMIN_GRANTS = frozenset({"caseload_viewer", "caseload_editor", "manage_cases", "provider", "supervisor"})
ROSTER_ROLES = ("teacher", "aide", "administrator", "counselor")  # roster.staff_upserted.v1's roles
# Without a district setting, a teacher matched to an email gets caseload_viewer at their
# schools (seed 000: school-based staff "can be assigned an access level of Caseload
# Viewer or Caseload Editor"; viewing is the least of them), so the nightly roster file is
# enough for a new teacher to log in and see their caseload. Other roles get nothing.
DEFAULT_ACCESS_BY_ROSTER_ROLE: dict[str, tuple[str, ...]] = {"teacher": ("caseload_viewer",)}

_GRANTS = uuid.UUID("5b0e6a0c-3c51-4d8e-9d7e-6a0b1c2d3e4f")


@dataclass(frozen=True)
class AccessChange:
    """One level at one place for one staff member: grant or revoke. school_id None: the
    whole district."""

    grant: bool
    staff_email: str
    level: str
    school_id: str | None


def grant_id(district_id: str, staff_email: str, level: str, school_id: str | None, basis: str,
             staff_id: UUID | None = None) -> UUID:
    """The same for the same grant, so a level granted again is the same grant (and a
    replayed event changes nothing). A roster default belongs to the staff record that gives
    it (two records with one email give two grants, each withdrawn with its record)."""
    holder = f"{staff_id}/{staff_email}" if basis == "roster_default" else staff_email
    return uuid.uuid5(_GRANTS, "\x1f".join((district_id, basis, holder, level, school_id or "*")))


def check_may_assign(caller: Caller, change: AccessChange) -> None:
    """May `caller` grant or revoke this level here? A district admin anything in the
    district; a school admin the caseload, case and provider levels at their own schools.
    Raises Refused naming the rule."""
    if change.level not in ACCESS_LEVELS:
        raise Refused("unknown_level", f"no access level {change.level!r}: use " + ", ".join(ACCESS_LEVELS))
    if change.level == "district_admin" and change.school_id is not None:
        raise Refused("district_admin_is_district_wide", "district_admin is held district-wide: leave school_id out")
    if change.level == "school_admin" and change.school_id is None:
        raise Refused("school_admin_is_per_school", "school_admin is held at schools: name them "
                                                    "(district-wide, that is district_admin)")
    if caller.district_wide:
        return
    if not caller.has("school_admin"):
        raise Refused("not_an_admin", "assigning access levels needs district_admin, or school_admin for one's "
                                      "own schools")
    if change.school_id is None or change.level not in SCHOOL_ADMIN_GRANTS:
        raise Refused("needs_district_admin", f"only a district admin assigns {change.level}"
                      + (" district-wide" if change.school_id is None else ""))
    if not caller.holds("school_admin", change.school_id):
        raise Refused("outside_your_schools", f"a school admin assigns access at their own schools; "
                                              f"{change.school_id} is not one of them")


def check_grantee(change: AccessChange, *, active_staff: bool, district_admin: bool = False,
                  known_school: bool = True) -> None:
    """Levels go to active staff of the district with that login email, at a school of the
    district's roster. A district admin (the district's IT, often not in the roster) may be
    anyone the district names, and once one, may be granted the other levels too (Manage
    Cases, to run the transfer portal)."""
    if not change.grant:
        return
    if change.level != "district_admin" and not (active_staff or district_admin):
        raise Refused("unknown_staff_member", "access is granted to an active staff member of the district, "
                                              "named by their login email; the roster has none with this email")
    if change.school_id is not None and not known_school:
        raise Refused("unknown_school", f"no school {change.school_id} in the district's roster: check the "
                                        "school's SIS id (the OneRoster org sourcedId)")


def check_revoke(change: AccessChange, held_bases: set[str], district_admins_left: int) -> None:
    """A revoke ends an admin's grant. Access held only by the roster default is changed in
    the roster or the district's defaults; access from configuration, in configuration. The
    district's last district admin stays (someone must be able to assign access)."""
    if "granted" not in held_bases:
        if "roster_default" in held_bases:
            raise Refused("roster_default", f"{change.staff_email} holds {change.level} by the district's roster "
                                            "default for their role: change the default (PUT /v1/access/defaults) "
                                            "or the roster")
        if "configuration" in held_bases:
            raise Refused("configuration", f"{change.staff_email} holds {change.level} by the service's "
                                           "configuration (CASEFLOW_DISTRICT_ADMINS): change it there")
        return  # not held: nothing to revoke
    if change.level == "district_admin" and district_admins_left <= 1:
        raise Refused("last_district_admin", "this is the district's last district admin: grant another first")


def roster_default_access(*, role: str, email: str | None, active: bool, school_ids: Iterable[str],
                          defaults: dict[str, tuple[str, ...]]) -> set[tuple[str, str]]:
    """The (level, school) a staff member holds by the district's default for their roster
    role: none without a login email or once they left the roster (a deactivated staff
    member loses what the default gave them; an admin's grants stay until revoked)."""
    if not active or login_email(email) is None:
        return set()
    return {(level, school) for level in defaults.get(role, ()) for school in school_ids if school}


def district_defaults(set_by_district: dict[str, list[str]]) -> dict[str, tuple[str, ...]]:
    """The district's default levels per roster role: its own setting where it made one,
    else DEFAULT_ACCESS_BY_ROSTER_ROLE."""
    return {**DEFAULT_ACCESS_BY_ROSTER_ROLE, **{role: tuple(levels) for role, levels in set_by_district.items()}}


def check_defaults(defaults: dict[str, list[str]]) -> None:
    """A district's defaults: roster roles to levels held at the staff member's schools
    (no district_admin: that is never a default)."""
    for role, levels in defaults.items():
        if role not in ROSTER_ROLES:
            raise Refused("unknown_roster_role", f"no roster role {role!r}: use " + ", ".join(ROSTER_ROLES))
        for level in levels:
            if level not in ACCESS_LEVELS or level == "district_admin":
                raise Refused("not_a_default_level", f"{level!r} cannot be a roster default: use "
                              + ", ".join(lv for lv in ACCESS_LEVELS if lv != "district_admin"))


def default_withdrawn_because(*, active: bool, email: str | None) -> str:
    if not active:
        return "left the roster"
    if login_email(email) is None:
        return "has no login email in the roster"
    return "no longer at the school in the roster, or the district's default for their role changed"
