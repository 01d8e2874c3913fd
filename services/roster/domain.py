"""The roster's rules, without I/O: what a district's enrolment facts change, and which
events say so. Identical facts change nothing and say nothing."""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass, field, fields
from datetime import date, datetime
from functools import lru_cache
from uuid import UUID

from contracts.roster import EnrollmentRemoved, StudentWithdrawn
from contracts.sis import SisStaffUpserted, SisStudentEnrolled, SisStudentWithdrawn
from services.kit.db import text_array

# Student ids are derived from (district, SIS id): the same student gets the same id from
# every feed (SIS events, OneRoster files), on every instance, with no lookup.
_STUDENT_IDS = uuid.UUID("3d5b8a52-6d0c-4c3e-8f3e-2b7f0c6a9d11")
_IDS_HASH = hashlib.sha1(_STUDENT_IDS.bytes)  # uuid5's hash with the namespace already in
_VERSION_5 = (0x5000 << 64) | (0x8000 << 48)  # version 5, RFC 4122 variant
_NOT_VERSION = ~((0xF000 << 64) | (0xC000 << 48))


def _derived_int(name: str) -> int:
    """uuid.uuid5(_STUDENT_IDS, name) as an int, at under half the cost: an import derives a
    million ids, a busy SIS feed one or two per fact (the namespace is hashed once)."""
    digest = _IDS_HASH.copy()
    digest.update(name.encode())
    return (int.from_bytes(digest.digest()[:16]) & _NOT_VERSION) | _VERSION_5


def _derived_id(name: str) -> UUID:
    return UUID(int=_derived_int(name))


def _uuid5_text(name: str) -> str:
    """The derived id as its 32 hex digits, which PostgreSQL takes for a uuid (no UUID made):
    _derived_int's bits, set on the digest's bytes (no int made either)."""
    digest = _IDS_HASH.copy()
    digest.update(name.encode())
    raw = bytearray(digest.digest()[:16])
    raw[6] = (raw[6] & 0x0F) | 0x50  # version 5
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    return raw.hex()


# What each kind of id is derived from: (district, SIS id), and for staff and classes their kind.
def _student_name(district_id: str, source_id: str) -> str:
    return f"{district_id}\n{source_id}"


def _staff_name(district_id: str, source_id: str) -> str:
    return f"{district_id}\nstaff\n{source_id}"


def _class_name(district_id: str, source_id: str) -> str:
    return f"{district_id}\nclass\n{source_id}"


@lru_cache(maxsize=65_536)  # the handler and the rules both ask, per fact
def student_id_for(district_id: str, source_id: str) -> UUID:
    return _derived_id(_student_name(district_id, source_id))


@lru_cache(maxsize=65_536)
def class_id_for(district_id: str, source_id: str) -> UUID:
    return _derived_id(_class_name(district_id, source_id))


# The same ids as text (32 hex digits, which PostgreSQL and asyncpg take for a uuid), for
# the million ids of an import, each asked once: no UUID made, no cache to churn.
def student_id_text(district_id: str, source_id: str) -> str:
    """student_id_for(district_id, source_id).hex."""
    return _uuid5_text(_student_name(district_id, source_id))


def staff_id_text(district_id: str, source_id: str) -> str:
    """staff_id_for(district_id, source_id).hex."""
    return _uuid5_text(_staff_name(district_id, source_id))


def class_id_text(district_id: str, source_id: str) -> str:
    """class_id_for(district_id, source_id).hex."""
    return _uuid5_text(_class_name(district_id, source_id))


@dataclass(frozen=True)
class Student:
    student_id: UUID
    district_id: str
    source_id: str
    school_id: str
    grade: str
    given_name: str
    family_name: str
    birth_date: date | None
    email: str | None
    state_id: str | None
    school_ids: tuple[str, ...] = field(default=())  # every school, home first (dual enrolment)

    def __post_init__(self) -> None:
        if not self.school_ids:
            object.__setattr__(self, "school_ids", (self.school_id,))


# What the roster holds about a student, in the order a StudentUpdated names what changed.
STUDENT_FACTS = tuple(f.name for f in fields(Student) if f.name not in ("student_id", "district_id", "source_id"))


def student_change_sql(fact: str, held: str) -> str:
    """The roster's rule for a student's facts, as the SQL both feeds run (the roster
    publishes exact changes; seed 002's automated rostering keeps the roster as the LEA's
    data says): the columns `change` and `changed` of a fact row
    `fact` beside the record `held` (LEFT JOINed: NULL when the roster does not hold the
    student).

    change: 'enrolled' when the roster does not hold the student or holds them withdrawn,
    else 'updated'; changed: the names of STUDENT_FACTS that differ, in that order. A row
    keeps a change only when STUDENT_CHANGES holds: identical facts change nothing and say
    nothing. The SIS handler (store.enrol_students) and the OneRoster importer use it."""
    differences = ", ".join(f"CASE WHEN {held}.{name} IS DISTINCT FROM {fact}.{name} THEN '{name}' END"
                            for name in STUDENT_FACTS)
    return (f"CASE WHEN {held}.student_id IS NULL OR {held}.status = 'withdrawn' THEN 'enrolled' "
            f"ELSE 'updated' END AS change, array_remove(ARRAY[{differences}], NULL) AS changed")


STUDENT_CHANGES = "(change = 'enrolled' OR cardinality(changed) > 0)"


def in_turns(facts: list) -> list[list]:
    """A batch's facts (of students, or of staff) in turns, each person at most once a turn and
    each person's facts in their order: turn n holds every person's n-th fact. Applying the turns one after another
    is applying the facts in order (a grade then a school change of one student in one batch
    are two updates, the second seeing the first)."""
    turns: list[list] = []
    seen: dict[tuple[str, str], int] = {}
    for fact in facts:
        key = (fact.district_id, fact.source_id)
        n = seen.get(key, 0)
        seen[key] = n + 1
        if n == len(turns):
            turns.append([])
        turns[n].append(fact)
    return turns


def enrolment_columns(facts: list[SisStudentEnrolled]) -> list[list]:
    """SIS enrolment facts as the columns store.enrol_students takes, one value per fact:
    student id, district, source id, school, grade, given and family name, birth date,
    email, state id, every school (home first; an array literal, kit.db.text_array), the roster event's id
    (derived from the fact's), its time (ISO 8601) and correlation id (the fact's, else its
    id). Ids are given as text (student_id_for and _caused_by, at a third of the cost: this
    runs for every fact of a busy SIS feed; each fact's id made text once)."""
    ids = [str(f.event_id) for f in facts]
    return [
        [student_id_text(f.district_id, f.source_id) for f in facts],
        [f.district_id for f in facts], [f.source_id for f in facts], [f.school_id for f in facts],
        [f.grade for f in facts], [f.given_name for f in facts], [f.family_name for f in facts],
        [f.birth_date for f in facts], [f.email for f in facts], [f.state_id for f in facts],
        [text_array(school_list(f.school_id, f.school_ids) if f.school_ids else (f.school_id,)) for f in facts],
        [_uuid5_text(f"caused-by\n{event_id}") for event_id in ids],
        [f.occurred_at.isoformat() for f in facts],
        [f.correlation_id or event_id for f, event_id in zip(facts, ids, strict=True)],
    ]


def _caused_by(event_id: UUID) -> UUID:
    # One incoming fact causes at most one roster event; deriving its id from the cause
    # keeps it stable if the same fact is ever applied again.
    return _derived_id(f"caused-by\n{event_id}")


@dataclass(frozen=True)
class Enrollment:
    class_id: UUID
    class_source_id: str
    school_id: str
    role: str


def withdraw(
    student: Student | None, enrollments: list[Enrollment], fact: SisStudentWithdrawn
) -> list[StudentWithdrawn | EnrollmentRemoved]:
    """The SIS withdrew a student: the same change a bulk file without them makes. The
    student leaves their classes first, then the roster. Unknown or already withdrawn
    students change nothing."""
    if student is None:
        return []
    common = dict(district_id=fact.district_id, occurred_at=fact.occurred_at,
                  correlation_id=fact.correlation_id or str(fact.event_id), producer="caseflow.roster")
    events: list[StudentWithdrawn | EnrollmentRemoved] = [
        EnrollmentRemoved(event_id=_derived_id(f"caused-by\n{fact.event_id}\n{e.class_source_id}"),
                          person_id=student.student_id, role="student", class_id=e.class_id,
                          class_source_id=e.class_source_id, user_source_id=student.source_id,
                          school_id=e.school_id, **common)
        for e in enrollments
    ]
    events.append(StudentWithdrawn(event_id=_caused_by(fact.event_id), student_id=student.student_id,
                                   source_id=student.source_id, school_id=student.school_id,
                                   reason="sis_withdrawal", **common))
    return events


@lru_cache(maxsize=65_536)
def staff_id_for(district_id: str, source_id: str) -> UUID:
    """Stable for (district, SIS id), whichever feed names the staff member."""
    return _derived_id(_staff_name(district_id, source_id))


# What the roster holds about a staff member that a StaffUpserted restates when it changes.
STAFF_FACTS = ("role", "given_name", "family_name", "email", "identifier", "school_ids")


def staff_change_sql(fact: str, held: str) -> str:
    """The roster's rule for a staff member's facts, as the SQL both feeds run: true when
    the fact row `fact` says something new beside the record `held` (LEFT JOINed: NULL when
    the roster does not hold them) — a staff member it does not hold, holds inactive, or
    holds with other STAFF_FACTS. Only a new or changed account says anything. The SIS
    handler (store.upsert_staff) and the OneRoster importer use it."""
    was = ", ".join(f"{held}.{name}" for name in STAFF_FACTS)
    now = ", ".join(f"{fact}.{name}" for name in STAFF_FACTS)
    return f"({held}.staff_id IS NULL OR {held}.status = 'inactive' OR ({was}) IS DISTINCT FROM ({now}))"


def staff_columns(facts: list[SisStaffUpserted]) -> list[list]:
    """SIS staff facts as the columns store.upsert_staff takes, one value per fact: staff id
    (text), district, source id, role, given and family name, login email (login_email:
    none when blank), identifier, schools (as listed; an array literal, kit.db.text_array), the roster event's
    id (derived from the fact's), its time (ISO 8601) and correlation id."""
    return [
        [staff_id_text(f.district_id, f.source_id) for f in facts],
        [f.district_id for f in facts], [f.source_id for f in facts], [f.role for f in facts],
        [f.given_name for f in facts], [f.family_name for f in facts], [login_email(f.email) for f in facts],
        [f.identifier for f in facts], [text_array(f.school_ids) for f in facts],
        [_uuid5_text(f"caused-by\n{f.event_id}") for f in facts],
        [f.occurred_at.isoformat() for f in facts],
        [f.correlation_id or str(f.event_id) for f in facts],
    ]


def login_email(raw: str | None) -> str | None:
    """The email a staff member logs in with, as the roster keeps it: none when blank (an
    unmatched teacher: no caseload), else stripped. Every feed (SIS events, files) goes
    through this one rule."""
    if raw is None:
        return None
    raw = raw.strip()
    return raw or None


# ----------------------------------------------------------------------- dual enrolment


def school_list(home: str, listed) -> tuple[str, ...]:
    """Every school a student belongs to: the home school first, then the others in sorted
    order, so the order a file or SIS lists them in never changes what the roster holds."""
    return (home, *sorted(set(listed) - {home}))


def home_school(listed, *, primary: str | None = None, held: str | None = None) -> str:
    """The school a student's roster record names (`school_id`) when a file lists several
    (OneRoster orgSourcedIds: dual enrolment): the file's primary org where it says one
    (OneRoster 1.2 primaryOrgSourcedId), else the school held now if still listed (a
    reordered list moves nobody), else the first listed. The importer's SQL states the
    same rule (importer._HOME_SCHOOL); a test checks they agree."""
    listed = list(listed)
    if primary and primary in listed:
        return primary
    if held and held in listed:
        return held
    return listed[0]


# ------------------------------------------------- reading district files: normalising

GRADES = frozenset(["IT", "PR", "PK", "TK", "KG", "01", "02", "03", "04", "05", "06", "07", "08", "09", "10", "11",
                    "12", "13", "PS", "UG", "Other"])
_GRADE_WORDS = {"K": "KG", "KINDERGARTEN": "KG", "PREK": "PK", "PRE-K": "PK", "PRE K": "PK",
                "PREKINDERGARTEN": "PK", "PRE-KINDERGARTEN": "PK", "TRANSITIONAL KINDERGARTEN": "TK",
                "UNGRADED": "UG", "OTHER": "Other"}
_BY_UPPER = {g.upper(): g for g in GRADES}


def normalise_grade(raw: str) -> str | None:
    """A grade as a district's file writes it, in OneRoster's (CEDS) form, or None when it
    is not one for sure. Unambiguous spellings are read: `3` and `003` are `03`, `K` and
    `kindergarten` are `KG`, `Pre-K` is `PK`, any letter case. `0` and `13th` are refused:
    some systems write kindergarten as 0, others pre-K."""
    value = raw.strip()
    upper = value.upper()
    if upper in _BY_UPPER:
        return _BY_UPPER[upper]
    if upper in _GRADE_WORDS:
        return _GRADE_WORDS[upper]
    if value.isdigit() and 1 <= int(value) <= 13:
        return f"{int(value):02d}"
    return None


def normalise_choice(raw: str, allowed) -> str | None:
    """An enumerated value (role, status, classType, type, primary...) in any letter case
    and without surrounding spaces, as the vocabulary writes it; None when not one of them."""
    value = raw.strip()
    if value in allowed:
        return value
    folded = {a.casefold(): a for a in allowed}
    return folded.get(value.casefold())


_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def parse_file_date(raw: str) -> date | None:
    """A OneRoster date (YYYY-MM-DD); a date-time (YYYY-MM-DDThh:mm:ss[.sss]Z, as some
    exporters write beginDate) is read as its date. Anything else (2026-9-1, 09/01/2026,
    2014-02-30) is None: the order of day and month is not ours to guess."""
    value = raw.strip()
    if not _DATE.match(value):
        return None
    try:
        if len(value) == 10:
            return date.fromisoformat(value)
        return datetime.fromisoformat(value.replace("Z", "+00:00")).date()
    except ValueError:
        return None


# OneRoster 1.2 names more roles than 1.1; the roster keeps students and staff (teacher,
# aide, administrator, counselor) and knows the rest (guardians, proctors...) only to tell
# them from unknown users.
STAFF_ROLES = ("teacher", "aide", "administrator", "counselor")
OTHER_ROLES = ("guardian", "parent", "proctor", "relative")
ROLE_OF = {
    "student": "student", "teacher": "teacher", "aide": "aide", "administrator": "administrator",
    "counselor": "counselor", "principal": "administrator", "siteAdministrator": "administrator",
    "districtAdministrator": "administrator", "systemAdministrator": "administrator",
    **{r: r for r in OTHER_ROLES},
}
ENROLLMENT_ROLES = ("student", "teacher", "aide", "administrator", "proctor")


def enrolment_role_fits(enrolment_role: str, user_role: str) -> bool:
    """An enrolment's role must agree with its user's: a student is enrolled as a student,
    staff in a staff role (a teacher may be enrolled as an aide, a principal as a teacher).
    Guardians and other relatives are never enrolled in classes."""
    if enrolment_role == "student" or user_role == "student":
        return enrolment_role == user_role
    if user_role in OTHER_ROLES:
        return enrolment_role == "proctor" and user_role == "proctor"
    return enrolment_role in ("teacher", "aide", "administrator", "proctor")


# Several enrolment records for one person in one class (a re-enrolment under a new
# sourcedId, a co-teacher row and a teacher row) make one class membership: the first role
# of this order, primary when any record is.
ROLE_PRECEDENCE = ("student", "teacher", "administrator", "aide")


def membership_role(roles) -> str:
    return min(roles, key=ROLE_PRECEDENCE.index)


# ----------------------------------------------------------------- who is in a class today


def class_span(term_ids, sessions: dict[str, tuple[date | None, date | None]]) -> tuple[date | None, date | None]:
    """The dates a class meets, from its terms (OneRoster termSourcedIds -> academicSessions):
    from the first term's start to the last term's end (a winter break between two terms
    does not take students off caseloads for two days). (None, None) when no term is known."""
    spans = [sessions[t] for t in term_ids if t in sessions]
    starts = [s for s, _ in spans if s is not None]
    ends = [e for _, e in spans if e is not None]
    return (min(starts) if starts else None, max(ends) if ends else None)


def enrolment_span(begin: date | None, end: date | None, klass: tuple[date | None, date | None]
                   ) -> tuple[date | None, date | None]:
    """When an enrolment counts: its own beginDate and endDate, each bound falling back to
    its class's terms' dates, else open. The importer stores this span on each enrolment
    record (enrollments.starts/ends) and PostgreSQL compares it with today."""
    return (begin if begin is not None else klass[0], end if end is not None else klass[1])


def is_current(span: tuple[date | None, date | None], today: date) -> bool:
    """"Responsible today": an enrolment counts from its first day to its last, inclusive.
    The SQL twin is class_members.current; a test checks they agree."""
    starts, ends = span
    return (starts is None or starts <= today) and (ends is None or today <= ends)


# -------------------------------------------------------------------------- the guards


@dataclass(frozen=True)
class Guards:
    """How much an import may lose before a person must confirm it, as a share of what the
    district holds (Clever holds a sync on "significant changes" until the district
    approves; a truncated or mangled export must never empty caseloads unseen). Each kind
    of loss has its own share (CASEFLOW_ROSTER_WIPE_SHARE, ..._WIPE_SHARE_STAFF,
    ..._WIPE_SHARE_CLASSES, ..._WIPE_SHARE_ENROLLMENTS), and so do a file's rejected rows
    (CASEFLOW_ROSTER_REJECT_SHARE)."""

    students: float = 0.20
    staff: float = 0.20
    classes: float = 0.20
    enrollments: float = 0.20
    rejected_rows: float = 0.20


_LOSSES = (
    ("students", "students_withdrawn", "withdraw", "active students"),
    ("staff", "staff_deactivated", "deactivate", "active staff"),
    ("classes", "classes_removed", "remove", "classes"),
    ("enrollments", "enrollments_removed", "remove", "class enrolments"),
)


def holds(counts: dict[str, int], held: dict[str, int], files: dict[str, tuple[int, int]], guards: Guards
          ) -> list[str]:
    """Why an import must wait for a person, in words (empty: it may be applied).

    counts: the import's changes (students_withdrawn, ...); held: what the district holds
    now (students, staff, classes, enrollments); files: per file, (rows rejected, rows)."""
    reasons = []
    for kind, change, verb, what in _LOSSES:
        lost, have, share = counts.get(change, 0), held.get(kind, 0), getattr(guards, kind)
        if have and lost / have > share:
            reasons.append(f"this import would {verb} {lost:,} of {have:,} {what} ({lost / have:.0%}, more than "
                           f"{share:.0%})")
    for file, (rejected, rows) in sorted(files.items()):
        if rows and rejected / rows > guards.rejected_rows:
            reasons.append(f"{rejected:,} of {rows:,} rows of {file} were rejected ({rejected / rows:.0%}, more than "
                           f"{guards.rejected_rows:.0%})")
    return reasons
