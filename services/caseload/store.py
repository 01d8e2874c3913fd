"""The caseload service's SQL. Runs inside the caller's transaction; never commits."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from datetime import datetime
from operator import attrgetter
from typing import NamedTuple
from uuid import UUID

import asyncpg

from services.caseload.domain import (
    AUTOMATIC_CASELOADS,
    AUTOMATIC_GRADES,
    DEFAULT_POINT_PERSON_TYPES,
    PointPersonType,
    ProjectedStudent,
    automatic_caseloads_sql,
    first_attendance_verdict_sql,
    login_email,
)
from services.kit import access, db
from services.kit.events_sql import outbox_insert

SOURCE = "caseflow.caseload"


async def held_students(conn: asyncpg.Connection, ids: Iterable[UUID]) -> dict[UUID, ProjectedStudent]:
    rows = await conn.fetch(
        """SELECT student_id, district_id, school_id, grade, given_name, family_name, state_id, status, as_of,
                  source_id, school_ids
           FROM students WHERE student_id = ANY($1::uuid[]) ORDER BY student_id FOR UPDATE""",
        list(set(ids)),
    )
    return {r["student_id"]: ProjectedStudent(**{**dict(r), "school_ids": tuple(r["school_ids"])}) for r in rows}


async def project_students(conn: asyncpg.Connection, students: list[ProjectedStudent]) -> None:
    """Write these students into the projection, each unless it holds a newer fact of them
    (as_of), as one array of projected_student rows (migration 009: ProjectedStudent's fields
    in order; a student with no schools listed is in their school alone)."""
    if not students:
        return
    await conn.execute(
        """INSERT INTO students (student_id, district_id, school_id, grade, given_name, family_name, state_id,
                                 status, as_of, source_id, school_ids)
           SELECT student_id, district_id, school_id, grade, given_name, family_name, state_id, status, as_of,
                  source_id, school_ids
           FROM unnest($1::projected_student[])
           ON CONFLICT (student_id) DO UPDATE SET
               district_id = EXCLUDED.district_id, school_id = EXCLUDED.school_id, grade = EXCLUDED.grade,
               given_name = EXCLUDED.given_name, family_name = EXCLUDED.family_name,
               state_id = EXCLUDED.state_id, status = EXCLUDED.status, as_of = EXCLUDED.as_of,
               source_id = EXCLUDED.source_id, school_ids = EXCLUDED.school_ids
           WHERE students.as_of <= EXCLUDED.as_of""",
        [s if s.school_ids else s._replace(school_ids=(s.school_id,)) for s in students],
    )


async def lock_staff_roles(conn: asyncpg.Connection, ids: list[UUID]) -> dict[UUID, str]:
    rows = await conn.fetch(
        "SELECT staff_id, role FROM staff WHERE staff_id = ANY($1::uuid[]) ORDER BY staff_id FOR UPDATE", ids)
    return {r["staff_id"]: r["role"] for r in rows}


async def project_staff(conn: asyncpg.Connection, rows: list[tuple]) -> None:
    """rows: (staff_id, district_id, source_id, role, email, active, as_of, school_ids); newest wins.
    email: domain.login_email's reading (None when blank: unmatched). school_ids None keeps
    the schools known (a deactivation does not say them)."""
    if rows:
        await conn.execute(
            """INSERT INTO staff (staff_id, district_id, source_id, role, email, active, as_of, school_ids)
               SELECT staff_id, district_id, source_id, role, email, active, as_of,
                      coalesce(school_ids::text[], '{}')
               FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bool[],
                           $7::timestamptz[], $8::text[])
                    AS r(staff_id, district_id, source_id, role, email, active, as_of, school_ids)
               ON CONFLICT (staff_id) DO UPDATE SET role = EXCLUDED.role, email = EXCLUDED.email,
                   active = EXCLUDED.active, as_of = EXCLUDED.as_of,
                   school_ids = CASE WHEN EXCLUDED.active THEN EXCLUDED.school_ids ELSE staff.school_ids END
               WHERE staff.as_of <= EXCLUDED.as_of""",
            *(list(c) for c in zip(*((*r[:7], db.text_array(r[7])) for r in rows),
                                   strict=True)),
        )


async def project_classes(conn: asyncpg.Connection, upserts: list[tuple], removed: list[UUID]) -> None:
    """upserts: (class_id, district_id, source_id, school_id, class_type, title, class_code, as_of)."""
    if upserts:
        await conn.execute(
            """INSERT INTO classes (class_id, district_id, source_id, school_id, class_type, title, class_code, as_of)
               SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                                    $7::text[], $8::timestamptz[])
               ON CONFLICT (class_id) DO UPDATE SET school_id = EXCLUDED.school_id,
                   class_type = EXCLUDED.class_type, title = EXCLUDED.title, class_code = EXCLUDED.class_code,
                   as_of = EXCLUDED.as_of
               WHERE classes.as_of <= EXCLUDED.as_of""",
            *(list(c) for c in zip(*upserts, strict=True)),
        )
    if removed:
        await conn.execute("DELETE FROM classes WHERE class_id = ANY($1::uuid[])", removed)


async def project_members(conn: asyncpg.Connection, added: list[tuple], removed: list[tuple]) -> None:
    """added: (class_id, person_id, role, district_id); removed: (class_id, person_id)."""
    if removed:
        await conn.execute(
            """DELETE FROM class_members m USING unnest($1::uuid[], $2::uuid[]) AS r(class_id, person_id)
               WHERE m.class_id = r.class_id AND m.person_id = r.person_id""",
            *(list(c) for c in zip(*removed, strict=True)),
        )
    if added:
        await conn.execute(
            """INSERT INTO class_members (class_id, person_id, role, district_id)
               SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[])
               ON CONFLICT (class_id, person_id) DO UPDATE SET role = EXCLUDED.role""",
            *(list(c) for c in zip(*added, strict=True)),
        )


async def students_in_classes(conn: asyncpg.Connection, class_ids: Iterable[UUID]) -> set[tuple[UUID, UUID]]:
    """The students of these classes: (student_id, class_id) pairs."""
    rows = await conn.fetch(
        "SELECT person_id, class_id FROM class_members WHERE class_id = ANY($1::uuid[]) AND role = 'student'",
        list(set(class_ids)),
    )
    return {(r[0], r[1]) for r in rows}


async def students_taught_by(conn: asyncpg.Connection, staff_ids: Iterable[UUID]) -> set[tuple[UUID, UUID]]:
    """The students of the classes these staff members teach: (student_id, class_id) pairs."""
    rows = await conn.fetch(
        """SELECT DISTINCT s.person_id, s.class_id FROM class_members t
           JOIN class_members s ON s.class_id = t.class_id AND s.role = 'student'
           WHERE t.person_id = ANY($1::uuid[]) AND t.role <> 'student'""",
        list(set(staff_ids)),
    )
    return {(r[0], r[1]) for r in rows}


_STUDENT_LOCKS, _CLASS_LIST_LOCKS, _SOURCE_LOCKS = 1, 2, 3  # advisory lock namespaces of this service


async def lock_sources(conn: asyncpg.Connection, students: Iterable[tuple[str, str]]) -> None:
    """A first attendance waits for its student, its mandate and its provider's
    authorisation, which arrive on two topics handled concurrently: a first attendance (or
    a mandate) and the student's enrolment committing at once, unseen by each other, would
    each leave the first attendance pending for good. So every path that records a
    student, a mandate or a first attendance takes turns per (district, SIS id), which all
    of them know (the student's id is unknown until the roster's event): whoever commits
    second sees the first. 1,024 locks, taken in one order (a deadlock is retried)."""
    await db.lock_until_commit(conn, _SOURCE_LOCKS, students, buckets=1024)


async def lock_students(conn: asyncpg.Connection, student_ids: list[UUID]) -> None:
    """Serialize the refreshes of one student across transactions until commit. The facts a
    student's caseload depends on arrive on different topics, handled concurrently: without
    this, the student's enrolment and their homeroom could each commit unseen by the other's
    refresh, and the membership both imply would never be written. Whoever refreshes second
    now runs its query after the first committed, and sees both. Students share 256 locks
    (by id), so a large batch takes at most 256, in one order (a deadlock is retried)."""
    await db.lock_until_commit(conn, _STUDENT_LOCKS, student_ids, buckets=256)


async def lock_class_lists(conn: asyncpg.Connection, districts: Iterable[str], *, exclusive: bool) -> None:
    """Who is in which class is read by the handlers of class, staff and teacher changes to
    find the students they affect, and written by enrolments. A student's enrolment and a
    change to their class or teacher, committing at once unseen by each other, would each
    miss the membership both imply. So those readers (and teacher enrolments) hold the
    district's class lists exclusively, and student enrolments share them: student
    enrolments run side by side; a class, staff or teacher change waits for them, and they
    for it."""
    await db.lock_until_commit(conn, _CLASS_LIST_LOCKS, districts, buckets=4096, shared=not exclusive)


_AUTOMATIC_JOIN, _AUTOMATIC_REASON, _AUTOMATIC_WORDS = automatic_caseloads_sql("e.grade", "c")

# The memberships the rules want for a batch of students ($1), computed from the projection
# and the manual records. Driven from the batch's students (the plan must not depend on the
# planner's guess at the array's length: after five runs asyncpg's prepared statement gets a
# generic plan): their classes through class_members_by_person, then each class's teachers
# through class_members_teachers (migration 004), not through the class list. No join
# between two CTEs: without statistics the planner would nest-loop them.
def _wanted(students: str, grades: str, pairs: tuple[str, str] | None = None) -> str:
    """The WITH clauses computing `wanted` for the active students matching `students`;
    `grades`: the parameter holding AUTOMATIC_GRADES. With `pairs` (the parameters of two
    arrays: students, classes), only the automatic memberships of those students in those
    classes: what an enrolment added or removed can change."""
    enrolled = (_ENROLLED_IN_PAIRS.format(students=pairs[0], classes=pairs[1], grades=grades) if pairs
                else _ENROLLED.format(grades=grades))
    return f"""
           batch AS MATERIALIZED (
               SELECT s.student_id, s.district_id, s.school_id, s.source_id, s.grade
               FROM students s
               WHERE {students} AND s.status = 'active'
           ),
           enrolled AS MATERIALIZED ({enrolled}
           ),
           wanted AS (
               -- Seed 000's automatic caseloads (domain.AUTOMATIC_CASELOADS). staff.email holds
               -- domain.login_email's reading: NULL is unmatched. A homeroom or section membership
               -- belongs to the class's school (a dual-enrolled student's section may be at their
               -- other school); the other reasons to the home school.
               SELECT sf.email AS owner_email, e.student_id, {_AUTOMATIC_REASON} AS reason,
                      c.class_id::text AS source_ref, e.district_id, c.school_id, {_AUTOMATIC_WORDS} AS detail
               FROM enrolled e
               JOIN classes c ON c.class_id = e.class_id
               {_AUTOMATIC_JOIN}
               JOIN class_members t ON t.class_id = c.class_id AND t.role = 'teacher'
               JOIN staff sf ON sf.staff_id = t.person_id AND sf.active AND sf.email IS NOT NULL{"" if pairs else _MANUAL}
           )"""


_ENROLLED = """
               -- Each student's classes by class_members_by_person, student by student (OFFSET 0
               -- keeps the subquery from being flattened into a join): a hash join would read
               -- every class list of the district for each batch, 8 million rows at city size.
               SELECT b.student_id, b.district_id, b.grade, m.class_id
               FROM batch b CROSS JOIN LATERAL (
                   SELECT m.class_id FROM class_members m WHERE m.person_id = b.student_id AND m.role = 'student'
                   OFFSET 0) m
               WHERE b.grade = ANY({grades}::text[])"""
_ENROLLED_IN_PAIRS = """
               -- Each pair's student and enrolment by their primary keys, pair by pair (the
               -- enrolment inside the LATERAL: as a semi-join, the planner hashed every class
               -- list of the service for each batch, 35 ms of 160 at scale 0.02).
               SELECT b.student_id, b.district_id, b.grade, p.class_id
               FROM unnest({students}::uuid[], {classes}::uuid[]) AS p(student_id, class_id)
               CROSS JOIN LATERAL (
                   SELECT s.student_id, s.district_id, s.grade FROM students s
                   JOIN class_members m ON m.class_id = p.class_id AND m.person_id = s.student_id
                                       AND m.role = 'student'
                   WHERE s.student_id = p.student_id AND s.status = 'active' OFFSET 0) b
               WHERE b.grade = ANY({grades}::text[])"""
_MANUAL = """
               UNION ALL
               SELECT p.owner_email, s.student_id, 'point_person', p.type, s.district_id, s.school_id,
                      coalesce(t.label, initcap(p.type)) || ' point person'
               FROM batch s JOIN point_persons p ON p.student_id = s.student_id
               LEFT JOIN point_person_types t ON t.district_id = s.district_id AND t.type = p.type
               UNION ALL
               SELECT g.lead_email, s.student_id, 'support', g.support_id::text, s.district_id, s.school_id,
                      'support "' || g.name || '" lead'
               FROM batch s JOIN support_members sm ON sm.student_id = s.student_id
               JOIN supports g ON g.support_id = sm.support_id
               UNION ALL
               SELECT l.provider_email, s.student_id, 'provider', l.mandate_id, s.district_id, s.school_id,
                      'provider mandate for ' || md.service
               FROM batch s
               JOIN provider_links l ON l.district_id = s.district_id AND l.student_source_id = s.source_id
                                    AND l.ended_at IS NULL
               JOIN mandates md ON md.district_id = l.district_id AND md.mandate_id = l.mandate_id AND md.active"""


_WANTED = _wanted("s.student_id = ANY($1::uuid[])", grades="$2")

# Each membership added or removed, published (caseload.memberships.v1) by the same statement:
# its event is written into the outbox by PostgreSQL (services/kit/events_sql.py), with the
# time and correlation id of the student's own event where the batch had one ($3-$5), else
# of the batch's ($6, $7). A student's removals come before their additions.
_MEMBERSHIP_EVENTS = outbox_insert(
    event_type="CASE e.change WHEN 'added' THEN 'caseload.membership_added.v1' "
               "ELSE 'caseload.membership_removed.v1' END",
    source=SOURCE,
    rows="""SELECT ch.*, coalesce(why.occurred_at, $6) AS occurred_at,
                   CASE WHEN why.student_id IS NULL THEN $7 ELSE why.correlation_id END AS correlation_id
            FROM (SELECT * FROM gone UNION ALL SELECT * FROM came) ch
            LEFT JOIN unnest($3::uuid[], $4::text[], $5::text[]) AS why(student_id, occurred_at, correlation_id)
                   ON why.student_id = ch.student_id""",
    key="e.student_id", topic="$8::text", district_id="e.district_id", occurred_at="e.occurred_at",
    correlation_id="e.correlation_id", order_by="e.student_id, e.change = 'added'",
    fields={"student_id": "e.student_id", "owner_email": "e.owner_email", "reason": "e.reason",
            "detail": "e.detail", "source_ref": "e.source_ref", "school_id": "e.school_id"},
)

_AUTOMATIC_REASONS = ", ".join(f"'{r.reason}'" for r in AUTOMATIC_CASELOADS)


def _refresh(*, in_classes: bool) -> str:
    """The refresh: memberships gone, memberships come, their events. in_classes: only the
    automatic memberships of the students ($9) in the classes ($10) beside them."""
    if in_classes:
        wanted = _wanted("s.student_id = ANY($1::uuid[])", grades="$2", pairs=("$9", "$10"))
        # Only the student in the probe (the primary key's first column): with the reason and
        # class in it too, PostgreSQL 18's skip scan made another index look cheaper, and a
        # prepared plan walked every owner's memberships for each student (67 ms a probe).
        probe = f"""unnest($9::uuid[], $10::uuid[]) AS p(student_id, class_id)
                    CROSS JOIN LATERAL (
                        SELECT m.ctid, m.owner_email, m.student_id, m.reason, m.source_ref FROM memberships m
                        WHERE m.student_id = p.student_id
                        OFFSET 0) m
                    WHERE m.source_ref = p.class_id::text AND m.reason IN ({_AUTOMATIC_REASONS})"""
    else:
        wanted = _WANTED
        probe = """unnest($1::uuid[]) AS p(student_id)
                    CROSS JOIN LATERAL (
                        SELECT m.ctid, m.owner_email, m.student_id, m.reason, m.source_ref FROM memberships m
                        WHERE m.student_id = p.student_id
                        OFFSET 0) m"""
    # The memberships held now, found student by student by the primary key (OFFSET 0 keeps
    # the planner from hashing the whole table), deleted by their row ids unless wanted:
    # held and wanted grouped together, a group with no wanted row is gone. No join and no
    # NOT IN: with a guess of 1 row for `wanted` the planner compared every held row with
    # every wanted one (609 ms of a 630 ms batch), and NOT IN stops hashing when the guess
    # is large (a batch of teachers' classes ran past the 60 s command timeout).
    return f"""WITH {wanted},
           held AS MATERIALIZED (
               SELECT m.ctid AS row_id, m.owner_email, m.student_id, m.reason, m.source_ref
               FROM {probe}
           ),
           gone AS (
               DELETE FROM memberships h
               WHERE h.ctid = ANY(ARRAY(
                   SELECT (array_agg(row_id))[1]
                   FROM (SELECT row_id, owner_email, student_id, reason, source_ref FROM held
                         UNION ALL
                         SELECT NULL::tid, owner_email, student_id, reason, source_ref FROM wanted) both_
                   GROUP BY owner_email, student_id, reason, source_ref
                   HAVING bool_and(row_id IS NOT NULL)))
               RETURNING 'removed' AS change, h.owner_email, h.student_id, h.reason, h.source_ref, h.district_id,
                         h.school_id, h.detail
           ),
           came AS (
               INSERT INTO memberships (owner_email, student_id, reason, source_ref, district_id, school_id, detail)
               SELECT DISTINCT ON (student_id, owner_email, reason, source_ref) * FROM wanted
               ON CONFLICT (student_id, owner_email, reason, source_ref) DO NOTHING
               RETURNING 'added' AS change, owner_email, student_id, reason, source_ref, district_id, school_id,
                         detail
           ),
           published AS ({_MEMBERSHIP_EVENTS}
               RETURNING 1
           )"""


_REPORTING = "\n           SELECT * FROM gone UNION ALL SELECT * FROM came"
_COUNTING = "\n           SELECT count(*) FROM published"
_REFRESH = {(in_classes, report): _refresh(in_classes=in_classes) + (_REPORTING if report else _COUNTING)
            for in_classes in (False, True) for report in (False, True)}


REFRESH_STUDENTS = 5_000  # students brought in line by one statement
REFRESH_PAIRS = 10_000  # (student, class) pairs brought in line by one statement
CUSTOM_PLAN_ABOVE = 200  # students: a refresh of more is planned for its own arrays


_as_int = attrgetter("int")


class Cause(NamedTuple):
    """The event a membership change answers: its time (ISO 8601 text) and correlation id
    (a tuple: one is made per roster event)."""

    occurred_at: str
    correlation_id: str | None


async def refresh_caseloads(conn: asyncpg.Connection, student_ids: Iterable[UUID], *, topic: str, cause: Cause,
                            cause_of: dict[UUID, Cause] | None = None, report: bool = False,
                            in_classes: list[tuple[UUID, UUID]] | None = None) -> list[asyncpg.Record]:
    """Bring these students' memberships in line with the projection and the manual
    records (point persons, supports, provider links), and publish each membership added or
    removed into the outbox (topic: caseload.memberships.v1 with the deployment's prefix),
    one statement per part of REFRESH_STUDENTS students or REFRESH_PAIRS pairs. cause: the time and correlation id the events carry; cause_of:
    a student's own, where they have one. Only active students are on caseloads: a
    withdrawn student leaves every caseload, and their point persons, supports and provider
    links bring them back if they return. in_classes: (student, class) pairs, the only
    memberships to bring in line (the automatic ones of those students in those classes):
    what enrolments added or removed can change (student_ids: their students). Returns the
    rows added and removed, each with `change`, when `report`; else nothing (a batch of
    roster events needs no rows back)."""
    ids = list({s for s, _ in in_classes} if in_classes is not None else set(student_ids))
    if not ids:
        return []
    await lock_students(conn, ids)
    cause_of = cause_of or {}
    why = [list(cause_of), [c.occurred_at for c in cause_of.values()], [c.correlation_id for c in cause_of.values()],
           cause.occurred_at, cause.correlation_id, topic]
    sql = _REFRESH[(in_classes is not None, report)]
    changes: list[asyncpg.Record] = []
    # In parts: a batch of teachers' enrolments reaches 240,000 students' classes at city
    # size, and one statement over all of them ran past the pool's 60 s command timeout, so
    # the batch was retried for ever; a part takes well under a second.
    if in_classes is None:
        parts = [[ids[i:i + REFRESH_STUDENTS]] for i in range(0, len(ids), REFRESH_STUDENTS)]
    else:
        # In the order of the ids (UUIDs order as their ints; sorting by the ints spares a
        # Python comparison per step: 2,000 pairs cost 10 ms sorted as tuples of UUIDs).
        pairs = sorted(set(in_classes), key=lambda p: (p[0].int, p[1].int))
        parts = [[sorted({s for s, _ in chunk}, key=_as_int), [s for s, _ in chunk], [c for _, c in chunk]]
                 for chunk in (pairs[i:i + REFRESH_PAIRS] for i in range(0, len(pairs), REFRESH_PAIRS))]
    # Probes by index whatever the statistics say (db.probing_by_index): a generic plan made
    # while the service's tables were empty by their statistics (a fresh service's first
    # changes) read every membership, class list and student for each student refreshed, for
    # as long as it was kept. More than CUSTOM_PLAN_ABOVE students are also planned for their
    # own arrays (db.planned_for_arguments): a generic plan guesses 10 elements, and for
    # 10,000 pairs its nested loops ran for minutes. A few students (a live change) keep the
    # plan prepared once: planning it costs 1 ms (pairs) to 4 ms (whole students), more than
    # running it for them.
    async with contextlib.AsyncExitStack() as settings:
        await settings.enter_async_context(db.probing_by_index(conn))
        if len(ids) > CUSTOM_PLAN_ABOVE:
            await settings.enter_async_context(db.planned_for_arguments(conn))
        for part in parts:
            args = [part[0], list(AUTOMATIC_GRADES), *why, *part[1:]]
            if report:
                changes += await conn.fetch(sql, *args)
            else:
                await conn.execute(sql, *args)
    return changes


_FROM_SCRATCH = f"""WITH {_wanted("true", grades="$1")},
           everything AS (SELECT DISTINCT owner_email, student_id, reason, source_ref FROM wanted)"""


async def wanted_memberships(conn: asyncpg.Connection) -> set[tuple[str, UUID, str, str]]:
    """Every membership the rules want now, recomputed from scratch over every student with
    the SQL refresh_caseloads runs: (owner_email, student_id, reason, source_ref). For
    checking that the incremental upkeep left what the rules say."""
    rows = await conn.fetch(f"{_FROM_SCRATCH} SELECT * FROM everything", list(AUTOMATIC_GRADES))
    return {tuple(r) for r in rows}


async def disagreements_with_rules(conn: asyncpg.Connection) -> tuple[int, int]:
    """(missing, extra): the memberships the rules want (recomputed from scratch) that are
    not held, and the ones held that the rules do not want; counted in the database, for a
    city-sized check."""
    row = await conn.fetchrow(
        f"""{_FROM_SCRATCH},
            held AS (SELECT owner_email, student_id, reason, source_ref FROM memberships)
            SELECT (SELECT count(*) FROM (SELECT * FROM everything EXCEPT SELECT * FROM held) x),
                   (SELECT count(*) FROM (SELECT * FROM held EXCEPT SELECT * FROM everything) y)""",
        list(AUTOMATIC_GRADES))
    return row[0], row[1]


async def students_with_blank_owners(conn: asyncpg.Connection) -> list[UUID]:
    """Students on a caseload whose owner is a blank email, kept from before a blank email
    was no email (migration 005)."""
    rows = await conn.fetch("SELECT DISTINCT student_id FROM memberships WHERE owner_email ~ '^\\s*$'")
    return [r[0] for r in rows]


async def student(conn: asyncpg.Connection, *, district_id: str, student_id: UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(
        """SELECT student_id, district_id, school_id, school_ids, grade, given_name, family_name, state_id, status,
                  as_of, source_id
           FROM students WHERE district_id = $1 AND student_id = $2""",
        district_id, student_id,
    )


_CASELOAD_PAGE = """
    WITH page AS (
        SELECT s.student_id, s.given_name, s.family_name, s.school_id, s.school_ids, s.grade,
               jsonb_agg(jsonb_build_object('reason', m.reason, 'detail', m.detail, 'since', m.since)
                         ORDER BY m.since, m.detail) AS why
        FROM memberships m JOIN students s ON s.student_id = m.student_id
        WHERE m.district_id = $1 AND m.owner_email = $2
          AND ($3::text IS NULL OR $3 = ANY(s.school_ids)) AND ($4::text IS NULL OR s.grade = $4)
          AND ($5::text IS NULL OR m.reason = $5) AND ($6::uuid IS NULL OR m.student_id > $6)
          AND ($8::text[] IS NULL OR s.school_ids && $8::text[])
        GROUP BY s.student_id ORDER BY s.student_id LIMIT $7
    )
    SELECT json_build_object(
        'owner_email', $2::text,
        'items', coalesce(json_agg(page ORDER BY page.student_id), '[]'::json),
        'next_after', CASE WHEN count(*) = $7 THEN max(page.student_id::text) END)::text
    FROM page"""


async def caseload_page(conn: asyncpg.Connection, *, district_id: str, owner_email: str, school_id: str | None,
                        grade: str | None, reason: str | None, after: UUID | None, limit: int,
                        schools: list[str] | None) -> str:
    """One page of a caseload as the JSON the API answers with, built by PostgreSQL: a
    teacher's 150 students cost one query and no Python-side conversion. `school_id`: the
    students enrolled in that school; `schools`: only students enrolled in one of these
    (None: all). A dual-enrolled student is a student of each of their schools."""
    return await conn.fetchval(_CASELOAD_PAGE, district_id, owner_email, school_id, grade, reason, after, limit,
                               schools)


async def caseload_page_read(conn: asyncpg.Connection, *, district_id: str, owner_email: str, school_id: str | None,
                             grade: str | None, reason: str | None, after: UUID | None, limit: int,
                             schools: list[str] | None) -> tuple[str, str]:
    """caseload_page, and the snapshot it was read in (pg_current_snapshot, as text): what a
    kept copy is checked against (caseload_page_changed; services/caseload/pages.py)."""
    row = await conn.fetchrow(f"SELECT ({_CASELOAD_PAGE}) AS page, pg_current_snapshot()::text AS snapshot",
                              district_id, owner_email, school_id, grade, reason, after, limit, schools)
    return row["page"], row["snapshot"]


async def caseload_page_changed(conn: asyncpg.Connection, *, district_id: str, owner_email: str,
                                snapshot: str) -> bool:
    """Whether a transaction the snapshot does not see (one committed after it was taken)
    changed something the owner's caseload pages show (migration 008's rows)."""
    return await conn.fetchval(
        """SELECT EXISTS (SELECT 1 FROM caseload_page_changes
                          WHERE district_id = $1 AND owner_email = $2
                            AND xid >= pg_snapshot_xmin($3::text::pg_snapshot)
                            AND NOT pg_visible_in_snapshot(xid, $3::text::pg_snapshot))""",
        district_id, owner_email, snapshot)


async def grants_and_caseload_pages_changed(
        conn: asyncpg.Connection, checks: list[tuple[str, str, str, str | None]]) -> list[tuple[list, bool]]:
    """For each (district_id, email, owner_email, snapshot), in one round trip: the grants of
    the caller (`email`) as access.held_array reads them, and whether `owner_email`'s
    caseload pages changed since `snapshot` (True without one; see caseload_page_changed)."""
    rows = await conn.fetch(
        f"""SELECT {access.held_array("c.district_id", "c.email")} AS held,
                   c.snapshot IS NULL OR EXISTS (
                       SELECT 1 FROM caseload_page_changes p
                       WHERE p.district_id = c.district_id AND p.owner_email = c.owner_email
                         AND p.xid >= pg_snapshot_xmin(c.snapshot::pg_snapshot)
                         AND NOT pg_visible_in_snapshot(p.xid, c.snapshot::pg_snapshot)) AS changed
            FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) WITH ORDINALITY
                 AS c(district_id, email, owner_email, snapshot, n)
            ORDER BY c.n""",
        *([c[i] for c in checks] for i in range(3)), [c[3] for c in checks])
    return [(r["held"], r["changed"]) for r in rows]


async def caseload_page_horizon(conn: asyncpg.Connection) -> int:
    """The oldest transaction still running (every older one is seen by any snapshot taken
    from now on), as a number."""
    return int(await conn.fetchval("SELECT pg_snapshot_xmin(pg_current_snapshot())::text"))


async def forget_caseload_page_changes(conn: asyncpg.Connection, *, before: int) -> int:
    """Forget the rows of transactions older than `before` (a caseload_page_horizon)."""
    done = await conn.execute("DELETE FROM caseload_page_changes WHERE xid < $1::text::xid8", str(before))
    return int(done.split()[-1])


async def caseloads_with(conn: asyncpg.Connection, *, district_id: str, student_id: UUID) -> list[asyncpg.Record]:
    return await conn.fetch(
        """SELECT owner_email, reason, detail, since FROM memberships
           WHERE district_id = $1 AND student_id = $2 ORDER BY owner_email, since""",
        district_id, student_id,
    )


async def students_for_action(conn: asyncpg.Connection, *, district_id: str, student_ids: list[UUID],
                              caller_email: str) -> dict[UUID, asyncpg.Record]:
    """The students an action names, locked (in id order, as the handlers lock them) so an
    action and a roster event on one student do not interleave."""
    rows = await conn.fetch(
        """SELECT s.student_id, s.school_id, s.school_ids, s.source_id, s.grade, s.status,
                  EXISTS (SELECT 1 FROM memberships m WHERE m.student_id = s.student_id
                          AND m.owner_email = $3) AS on_own_caseload
           FROM students s WHERE s.district_id = $1 AND s.student_id = ANY($2::uuid[])
           ORDER BY s.student_id FOR UPDATE OF s""",
        district_id, sorted(set(student_ids)), caller_email,
    )
    return {r["student_id"]: r for r in rows}


async def on_caseload(conn: asyncpg.Connection, *, owner_email: str, student_id: UUID) -> bool:
    return bool(await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM memberships WHERE owner_email = $1 AND student_id = $2)", owner_email, student_id))


# ---------------------------------------------------------------------------- special education


async def student_ids_for(conn: asyncpg.Connection, district_id: str, source_ids: list[str]) -> set[UUID]:
    rows = await conn.fetch("SELECT student_id FROM students WHERE district_id = $1 AND source_id = ANY($2::text[])",
                            district_id, source_ids)
    return {r[0] for r in rows}


async def record_mandates(conn: asyncpg.Connection, events) -> None:
    """MandateRecorded, newest per mandate wins; a mandate recorded again after it ended is active again."""
    await conn.execute(
        """INSERT INTO mandates (district_id, mandate_id, student_source_id, service, start_date, end_date, active,
                                 recorded_at)
           SELECT d, m, s, sv, sd, ed, true, at
           FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::date[], $6::date[], $7::timestamptz[])
                AS r(d, m, s, sv, sd, ed, at)
           ON CONFLICT (district_id, mandate_id) DO UPDATE SET student_source_id = EXCLUDED.student_source_id,
               service = EXCLUDED.service, start_date = EXCLUDED.start_date, end_date = EXCLUDED.end_date,
               active = true, recorded_at = EXCLUDED.recorded_at, ended_at = NULL, ended_why = NULL
           WHERE mandates.recorded_at <= EXCLUDED.recorded_at AND (mandates.ended_at IS NULL
                                                                 OR mandates.ended_at <= EXCLUDED.recorded_at)""",
        *(list(c) for c in zip(*((e.district_id, e.mandate_id, e.student_source_id, e.service, e.start_date,
                                  e.end_date, e.occurred_at) for e in {(e.district_id, e.mandate_id): e
                                                                       for e in events}.values()), strict=True)),
    )


async def end_mandates(conn: asyncpg.Connection, events) -> None:
    """MandateEnded: the mandate stays, inactive; the providers linked to it lose the
    student, the link kept as history. A mandate not yet known is recorded as ended, so a
    late MandateRecorded older than the end does not revive it."""
    last = {(e.district_id, e.mandate_id): e for e in events}.values()
    cols = [list(c) for c in zip(*((e.district_id, e.mandate_id, e.student_source_id, e.reason or "mandate ended",
                                    e.occurred_at) for e in last), strict=True)]
    await conn.execute(
        """INSERT INTO mandates (district_id, mandate_id, student_source_id, service, active, recorded_at, ended_at,
                                 ended_why)
           SELECT d, m, s, 'unknown', false, at, at, why
           FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[]) AS r(d, m, s, why, at)
           ON CONFLICT (district_id, mandate_id) DO UPDATE SET active = false, ended_at = EXCLUDED.ended_at,
               ended_why = EXCLUDED.ended_why
           WHERE mandates.recorded_at <= EXCLUDED.ended_at""",
        *cols,
    )
    await conn.execute(
        """UPDATE provider_links l SET ended_at = now(), ended_by = 'special education system',
               ended_why = 'mandate ended: ' || r.why
           FROM unnest($1::text[], $2::text[], $3::text[]) AS r(d, m, why)
           WHERE l.district_id = r.d AND l.mandate_id = r.m AND l.ended_at IS NULL""",
        cols[0], cols[1], cols[3],
    )


async def record_first_attendances(conn: asyncpg.Connection, events) -> None:
    """events: FirstAttendanceRecorded, each provider_email already a login email."""
    await conn.execute(
        """INSERT INTO first_attendances (event_id, district_id, student_source_id, provider_email, service,
                                          mandate_id, session_date, status)
           SELECT e, d, s, p, sv, m, sd, 'pending'
           FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::date[])
                AS r(e, d, s, p, sv, m, sd)
           ON CONFLICT (event_id) DO NOTHING""",
        *(list(c) for c in zip(*((e.event_id, e.district_id, e.student_source_id, e.provider_email, e.service,
                                  e.mandate_id, e.session_date) for e in events), strict=True)),
    )


# Seed 001's verdict on a pending first attendance (domain.FIRST_ATTENDANCE_WAITS), over the
# candidates below: what it waits for, NULL when it applies.
_FIRST_ATTENDANCE_VERDICT = first_attendance_verdict_sql(
    student_known="school_id IS NOT NULL", mandate_found="mandate_id IS NOT NULL", provider_authorised="authorised")


async def districts_with_pending_first_attendances(conn: asyncpg.Connection, districts: Iterable[str]) -> set[str]:
    """Those of these districts where any first attendance is pending: one probe (on the
    pending index), so a batch of students from many districts asks apply_first_attendances
    only where there may be something to apply."""
    districts = list(set(districts))
    if not districts:
        return set()
    rows = await conn.fetch(
        """SELECT d.district_id FROM unnest($1::text[]) AS d(district_id)
           WHERE EXISTS (SELECT 1 FROM first_attendances a
                         WHERE a.district_id = d.district_id AND a.status = 'pending')""",
        districts)
    return {r["district_id"] for r in rows}


async def apply_first_attendances(conn: asyncpg.Connection, district_id: str, *,
                                  source_ids: list[str] | None = None,
                                  provider_email: str | None = None) -> list[asyncpg.Record]:
    """Link the providers of pending first attendances whose rules now hold: the roster
    knows the student, an active mandate for the service exists, and the provider is
    authorised for the student's school. The rest stay pending, saying what they wait for."""
    return await conn.fetch(
        f"""WITH candidates AS (
               SELECT a.event_id, a.district_id, a.student_source_id, a.provider_email, s.school_id,
                      (SELECT md.mandate_id FROM mandates md
                       WHERE md.district_id = a.district_id AND md.student_source_id = a.student_source_id
                         AND md.active AND (md.mandate_id = a.mandate_id
                                            OR (a.mandate_id IS NULL AND lower(md.service) = lower(a.service)))
                       ORDER BY md.recorded_at LIMIT 1) AS mandate_id,
                      EXISTS (SELECT 1 FROM provider_authorisations pa
                              WHERE pa.district_id = a.district_id AND pa.provider_email = a.provider_email
                                AND (pa.school_id = '*' OR pa.school_id = ANY(s.school_ids))) AS authorised
               FROM first_attendances a
               LEFT JOIN students s ON s.district_id = a.district_id AND s.source_id = a.student_source_id
                                   AND s.status = 'active'
               WHERE a.status = 'pending' AND a.district_id = $1
                 AND ($2::text[] IS NULL OR a.student_source_id = ANY($2::text[]))
                 AND ($3::text IS NULL OR a.provider_email = $3)
               FOR UPDATE OF a
           ),
           verdict AS (
               SELECT *, {_FIRST_ATTENDANCE_VERDICT} AS waiting_for
               FROM candidates
           ),
           linked AS (
               INSERT INTO provider_links (district_id, student_source_id, mandate_id, provider_email, added_via,
                                           added_by)
               SELECT DISTINCT district_id, student_source_id, mandate_id, provider_email, 'first_attendance',
                      provider_email
               FROM verdict WHERE waiting_for IS NULL
               ON CONFLICT (district_id, mandate_id, provider_email) WHERE ended_at IS NULL DO NOTHING
               RETURNING 1
           )
           UPDATE first_attendances a
           SET status = CASE WHEN v.waiting_for IS NULL THEN 'applied' ELSE 'pending' END,
               waiting_for = v.waiting_for
           FROM verdict v WHERE a.event_id = v.event_id
           RETURNING a.student_source_id, a.provider_email, a.status, a.waiting_for""",
        district_id, source_ids, provider_email,
    )


async def first_attendances(conn: asyncpg.Connection, *, district_id: str, status: str, schools: list[str] | None,
                            limit: int) -> list[asyncpg.Record]:
    """First attendances by status, oldest first. `schools`: only those of students enrolled
    in one of these schools (None: all, students the roster does not know yet too)."""
    return await conn.fetch(
        """SELECT a.event_id, a.student_source_id, a.provider_email, a.service, a.mandate_id, a.session_date,
                  a.status, a.waiting_for, a.recorded_at, s.school_id, s.school_ids
           FROM first_attendances a
           LEFT JOIN students s ON s.district_id = a.district_id AND s.source_id = a.student_source_id
           WHERE a.district_id = $1 AND a.status = $2 AND ($3::text[] IS NULL OR s.school_ids && $3::text[])
           ORDER BY a.recorded_at LIMIT $4""",
        district_id, status, schools, limit)


async def active_mandates(conn: asyncpg.Connection, district_id: str,
                         source_ids: list[str]) -> dict[str, list[tuple[str, str]]]:
    """Students' active mandates, by SIS id: [(mandate_id, service)], oldest first."""
    rows = await conn.fetch(
        """SELECT student_source_id, mandate_id, service FROM mandates
           WHERE district_id = $1 AND student_source_id = ANY($2::text[]) AND active ORDER BY recorded_at""",
        district_id, source_ids)
    out: dict[str, list[tuple[str, str]]] = {}
    for r in rows:
        out.setdefault(r["student_source_id"], []).append((r["mandate_id"], r["service"]))
    return out


async def provider_schools(conn: asyncpg.Connection, district_id: str, provider_email: str) -> frozenset[str]:
    rows = await conn.fetch("SELECT school_id FROM provider_authorisations WHERE district_id = $1 AND provider_email = $2",
                            district_id, provider_email)
    return frozenset(r[0] for r in rows)


async def authorise_provider(conn: asyncpg.Connection, district_id: str, provider_email: str, schools: list[str],
                             granted_by: str, within: frozenset[str] | None) -> None:
    """Set the schools a provider may serve. `within`: the schools the granter speaks for
    (None: the whole district); authorisations elsewhere are left as they are."""
    await conn.execute(
        """DELETE FROM provider_authorisations WHERE district_id = $1 AND provider_email = $2
               AND ($3::text[] IS NULL OR school_id = ANY($3::text[])) AND NOT school_id = ANY($4::text[])""",
        district_id, provider_email, None if within is None else sorted(within), schools,
    )
    await conn.execute(
        """INSERT INTO provider_authorisations (district_id, provider_email, school_id, granted_by)
           SELECT $1, $2, unnest($3::text[]), $4 ON CONFLICT DO NOTHING""",
        district_id, provider_email, schools, granted_by,
    )


async def link_provider(conn: asyncpg.Connection, *, district_id: str, provider_email: str,
                        links: list[tuple[str, str]], added_via: str, added_by: str) -> None:
    """links: (student SIS id, mandate id); a link already active stays as it is."""
    await conn.execute(
        """INSERT INTO provider_links (district_id, student_source_id, mandate_id, provider_email, added_via, added_by)
           SELECT $1, s, m, $2, $3, $4 FROM unnest($5::text[], $6::text[]) AS l(s, m)
           ON CONFLICT (district_id, mandate_id, provider_email) WHERE ended_at IS NULL DO NOTHING""",
        district_id, provider_email, added_via, added_by, [s for s, _ in links], [m for _, m in links],
    )


async def end_provider_links(conn: asyncpg.Connection, *, district_id: str, source_ids: list[str],
                             provider_email: str, ended_by: str, why: str) -> None:
    await conn.execute(
        """UPDATE provider_links SET ended_at = now(), ended_by = $4, ended_why = $5
           WHERE district_id = $1 AND student_source_id = ANY($2::text[]) AND provider_email = $3
             AND ended_at IS NULL""",
        district_id, source_ids, provider_email, ended_by, why,
    )


async def end_unauthorised_links(conn: asyncpg.Connection, district_id: str, provider_email: str,
                                 ended_by: str) -> set[UUID]:
    """End the provider's links to students of schools they are no longer authorised for;
    return those students."""
    rows = await conn.fetch(
        """UPDATE provider_links l SET ended_at = now(), ended_by = $3,
               ended_why = 'provider no longer authorised for the school'
           FROM students s
           WHERE l.district_id = $1 AND l.provider_email = $2 AND l.ended_at IS NULL
             AND s.district_id = l.district_id AND s.source_id = l.student_source_id
             AND NOT EXISTS (SELECT 1 FROM provider_authorisations pa WHERE pa.district_id = $1
                             AND pa.provider_email = $2 AND (pa.school_id = '*' OR pa.school_id = ANY(s.school_ids)))
           RETURNING s.student_id""",
        district_id, provider_email, ended_by)
    return {r["student_id"] for r in rows}


async def provider_links_of(conn: asyncpg.Connection, district_id: str, source_id: str) -> list[asyncpg.Record]:
    return await conn.fetch(
        """SELECT l.provider_email, l.mandate_id, m.service, l.added_via, l.added_by, l.added_at, l.ended_at,
                  l.ended_by, l.ended_why
           FROM provider_links l LEFT JOIN mandates m USING (district_id, mandate_id)
           WHERE l.district_id = $1 AND l.student_source_id = $2 ORDER BY l.added_at""",
        district_id, source_id,
    )


# ---------------------------------------------------------------------------- point persons and supports


async def point_person_types(conn: asyncpg.Connection, district_id: str) -> list[PointPersonType]:
    rows = await conn.fetch(
        "SELECT type, label, levels FROM point_person_types WHERE district_id = $1 ORDER BY position", district_id)
    if not rows:
        return list(DEFAULT_POINT_PERSON_TYPES)
    return [PointPersonType(r["type"], r["label"], frozenset(r["levels"])) for r in rows]


async def set_point_person_types(conn: asyncpg.Connection, district_id: str, types, changed_by: str) -> None:
    await conn.execute("DELETE FROM point_person_types WHERE district_id = $1", district_id)
    await conn.executemany(
        """INSERT INTO point_person_types (district_id, type, label, levels, position, changed_by)
           VALUES ($1, $2, $3, $4, $5, $6)""",
        [(district_id, t.type, t.label, sorted(t.levels), i, changed_by) for i, t in enumerate(types)],
    )


async def lock_point_person_types(conn: asyncpg.Connection, district_id: str) -> None:
    """One change of a district's point person types at a time, until commit."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext('point_person_types:' || $1))", district_id)


async def point_person_counts(conn: asyncpg.Connection, district_id: str) -> dict[str, int]:
    rows = await conn.fetch("SELECT type, count(*) FROM point_persons WHERE district_id = $1 GROUP BY type",
                            district_id)
    return {r[0]: r[1] for r in rows}


async def school_grades(conn: asyncpg.Connection, district_id: str, school_ids: Iterable[str]) -> dict[str, set[str]]:
    """The grades each school's active students are in (its level), dual-enrolled students
    counting in each of their schools."""
    rows = await conn.fetch(
        """SELECT DISTINCT e.school_id, s.grade FROM students s, unnest(s.school_ids) AS e(school_id)
           WHERE s.district_id = $1 AND s.school_ids && $2::text[] AND s.status = 'active'
             AND e.school_id = ANY($2::text[])""",
        district_id, sorted(set(school_ids)),
    )
    out: dict[str, set[str]] = {}
    for r in rows:
        out.setdefault(r["school_id"], set()).add(r["grade"])
    return out


async def active_staff_emails(conn: asyncpg.Connection, district_id: str, emails: Iterable[str]) -> set[str]:
    rows = await conn.fetch(
        """SELECT DISTINCT email FROM staff WHERE district_id = $1 AND active AND email = ANY($2::text[])""",
        district_id, sorted({e for e in map(login_email, emails) if e}),
    )
    return {r[0] for r in rows}


async def assign_point_persons(conn: asyncpg.Connection, *, district_id: str, student_ids: list[UUID], type_: str,
                               owner_email: str | None, by: str) -> None:
    """Assign (or, with owner_email None, remove) the point person of a type for these
    students; the one it replaces goes to the history."""
    await conn.execute(
        """WITH ended AS (
               DELETE FROM point_persons p
               WHERE p.student_id = ANY($1::uuid[]) AND p.type = $2 AND p.owner_email IS DISTINCT FROM $3
               RETURNING p.*
           )
           INSERT INTO point_person_history (student_id, type, district_id, owner_email, assigned_by, assigned_at,
                                             ended_by, ended_why)
           SELECT student_id, type, district_id, owner_email, assigned_by, assigned_at, $4,
                  CASE WHEN $3::text IS NULL THEN 'removed' ELSE 'replaced' END
           FROM ended""",
        student_ids, type_, owner_email, by,
    )
    if owner_email is not None:
        await conn.execute(
            """INSERT INTO point_persons (student_id, type, district_id, owner_email, assigned_by)
               SELECT unnest($1::uuid[]), $2, $3, $4, $5 ON CONFLICT (student_id, type) DO NOTHING""",
            student_ids, type_, district_id, owner_email, by,
        )


async def point_persons_of(conn: asyncpg.Connection, student_id: UUID) -> tuple[list, list]:
    current = await conn.fetch(
        "SELECT type, owner_email, assigned_by, assigned_at FROM point_persons WHERE student_id = $1 ORDER BY type",
        student_id)
    history = await conn.fetch(
        """SELECT type, owner_email, assigned_by, assigned_at, ended_by, ended_at, ended_why
           FROM point_person_history WHERE student_id = $1 ORDER BY ended_at""", student_id)
    return current, history


async def support(conn: asyncpg.Connection, district_id: str, support_id: UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(
        """SELECT g.*, (SELECT count(*) FROM support_members m WHERE m.support_id = g.support_id) AS students
           FROM supports g WHERE district_id = $1 AND support_id = $2""", district_id, support_id)


async def create_support(conn: asyncpg.Connection, *, support_id: UUID, district_id: str, school_id: str, name: str,
                         lead_email: str, by: str) -> bool:
    """False when the school already has a support of that name."""
    done = await conn.execute(
        """INSERT INTO supports (support_id, district_id, school_id, name, lead_email, created_by)
           VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (district_id, school_id, name) DO NOTHING""",
        support_id, district_id, school_id, name, lead_email, by)
    return done != "INSERT 0 0"


async def change_support(conn: asyncpg.Connection, support_id: UUID, *, name: str | None,
                         lead_email: str | None) -> None:
    """Rename (the memberships' words follow) or hand to a new lead (None: unchanged); the
    caller refreshes the support's students."""
    await conn.execute(
        "UPDATE supports SET name = coalesce($2, name), lead_email = coalesce($3, lead_email) WHERE support_id = $1",
        support_id, name, lead_email)
    if name:
        await conn.execute("UPDATE memberships SET detail = $2 WHERE reason = 'support' AND source_ref = $1",
                           str(support_id), f'support "{name}" lead')


async def delete_support(conn: asyncpg.Connection, support_id: UUID) -> None:
    await conn.execute("DELETE FROM supports WHERE support_id = $1", support_id)


async def supports(conn: asyncpg.Connection, district_id: str, school_ids: list[str] | None) -> list[asyncpg.Record]:
    return await conn.fetch(
        """SELECT g.*, (SELECT count(*) FROM support_members m WHERE m.support_id = g.support_id) AS students
           FROM supports g WHERE district_id = $1 AND ($2::text[] IS NULL OR school_id = ANY($2::text[]))
           ORDER BY school_id, name""", district_id, school_ids)


async def support_members(conn: asyncpg.Connection, support_id: UUID, student_ids: list[UUID], *, add: bool,
                          by: str) -> None:
    if add:
        await conn.execute("""INSERT INTO support_members (support_id, student_id, added_by)
                              SELECT $1, unnest($2::uuid[]), $3 ON CONFLICT DO NOTHING""", support_id, student_ids, by)
    else:
        await conn.execute("DELETE FROM support_members WHERE support_id = $1 AND student_id = ANY($2::uuid[])",
                           support_id, student_ids)


async def support_student_ids(conn: asyncpg.Connection, support_id: UUID) -> list[UUID]:
    return [r[0] for r in await conn.fetch("SELECT student_id FROM support_members WHERE support_id = $1", support_id)]


# ---------------------------------------------------------------------------- the change feed


async def changes(conn: asyncpg.Connection, *, district_id: str, after: tuple[int, int], since,
                  owner_email: str | None, schools: list[str] | None, limit: int) -> list[asyncpg.Record]:
    """Membership changes in (xid, seq) order, only of transactions older than every open
    one: a change that commits later always sorts after the cursor, so none is skipped."""
    return await conn.fetch(
        """SELECT xid::text::bigint AS xid, seq, at, change, owner_email, student_id, reason, source_ref, detail,
                  school_id
           FROM membership_changes
           WHERE district_id = $1 AND (xid, seq) > ($2::text::xid8, $3::bigint)
             AND xid < pg_snapshot_xmin(pg_current_snapshot())
             AND ($4::timestamptz IS NULL OR at >= $4)
             AND ($5::text IS NULL OR owner_email = $5) AND ($6::text[] IS NULL OR school_id = ANY($6::text[]))
           ORDER BY xid, seq LIMIT $7""",
        district_id, str(after[0]), after[1], since, owner_email, schools, limit,
    )


# ---------------------------------------------------------------------------- access levels (seeds 000, 003)

_ACCESS_LOCKS = 4


async def lock_access(conn: asyncpg.Connection, districts: Iterable[str]) -> None:
    """One writer of a district's access at a time (an admin's change, a roster default, a
    change of defaults): the checks (the last district admin, what is held) see what the
    writer before committed."""
    await db.lock_until_commit(conn, _ACCESS_LOCKS, districts, buckets=4096)


async def access_clock(conn: asyncpg.Connection) -> datetime:
    """The time an access change is stamped with: the database's clock, read after
    lock_access, so a district's changes are stamped in the order they commit whichever
    instance makes them (every projection keeps the newest change of a grant by this time;
    two instances' own clocks could disagree)."""
    return await conn.fetchval("SELECT clock_timestamp()")


async def held_access(conn: asyncpg.Connection, district_id: str,
                      places: Iterable[tuple[str, str, str | None]]) -> dict[tuple, dict[str, UUID]]:
    """(staff_email, level, school_id) -> {basis: grant_id} held there now."""
    places = list(set(places))
    if not places:
        return {}
    emails, levels, schools = (list(c) for c in zip(*places, strict=True))
    rows = await conn.fetch(
        """SELECT h.staff_email, h.level, h.school_id, h.basis, h.grant_id
           FROM unnest($2::text[], $3::text[], $4::text[]) AS p(email, level, school_id)
           JOIN access_held h ON h.district_id = $1 AND h.held AND h.staff_email = p.email AND h.level = p.level
                             AND h.school_id IS NOT DISTINCT FROM p.school_id""",
        district_id, emails, levels, schools)
    out: dict[tuple, dict[str, UUID]] = {}
    for r in rows:
        out.setdefault((r["staff_email"], r["level"], r["school_id"]), {})[r["basis"]] = r["grant_id"]
    return out


async def known_schools(conn: asyncpg.Connection, district_id: str, schools: Iterable[str]) -> set[str]:
    """The ones the district's roster knows: a school of a class, a student or a staff member."""
    schools = sorted(set(schools))
    if not schools:
        return set()
    rows = await conn.fetch(
        """SELECT s FROM unnest($2::text[]) AS s
           WHERE EXISTS (SELECT 1 FROM classes c WHERE c.district_id = $1 AND c.school_id = s)
              OR EXISTS (SELECT 1 FROM students st WHERE st.district_id = $1 AND st.school_ids @> ARRAY[s])
              OR EXISTS (SELECT 1 FROM staff sf WHERE sf.district_id = $1 AND sf.school_ids @> ARRAY[s])""",
        district_id, schools)
    return {r[0] for r in rows}


async def district_admins(conn: asyncpg.Connection, district_id: str) -> set[str]:
    rows = await conn.fetch("""SELECT DISTINCT staff_email FROM access_held
                               WHERE district_id = $1 AND level = 'district_admin' AND held""", district_id)
    return {r[0] for r in rows}


async def write_access(conn: asyncpg.Connection, rows: list[dict]) -> None:
    """rows: grant_id, district_id, staff_email, level, school_id, basis, held, changed_by,
    reason, at, staff_id. The grant as it now stands, and a line of history each."""
    if not rows:
        return
    cols = ("grant_id", "district_id", "staff_email", "level", "school_id", "basis", "held", "changed_by", "reason",
            "at", "staff_id")
    args = [[r[c] for r in rows] for c in cols]
    last = list({r["grant_id"]: r for r in rows}.values())  # granted and revoked in one go: as it ends
    await conn.execute(
        """INSERT INTO access_held (grant_id, district_id, staff_email, level, school_id, basis, granted_by, held, as_of,
                                    staff_id)
           SELECT grant_id, district_id, staff_email, level, school_id, basis, changed_by, held, at, staff_id
           FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::bool[],
                       $8::text[], $9::text[], $10::timestamptz[], $11::uuid[])
                AS r(grant_id, district_id, staff_email, level, school_id, basis, held, changed_by, reason, at, staff_id)
           ON CONFLICT (grant_id) DO UPDATE SET held = EXCLUDED.held, as_of = EXCLUDED.as_of,
               granted_by = CASE WHEN EXCLUDED.held THEN EXCLUDED.granted_by ELSE access_held.granted_by END,
               staff_id = EXCLUDED.staff_id""", *([r[c] for r in last] for c in cols))
    await conn.execute(
        """INSERT INTO access_history (district_id, staff_email, level, school_id, basis, change, changed_by, reason, at)
           SELECT district_id, staff_email, level, school_id, basis,
                  CASE WHEN held THEN 'granted' ELSE 'revoked' END, changed_by, reason, at
           FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bool[], $7::text[], $8::text[],
                       $9::timestamptz[])
                AS r(district_id, staff_email, level, school_id, basis, held, changed_by, reason, at)""",
        *args[1:10])


async def access_holders(conn: asyncpg.Connection, *, district_id: str, schools: list[str] | None,
                         school_id: str | None, level: str | None, staff_email: str | None,
                         after: tuple[str, UUID] | None, limit: int) -> list[asyncpg.Record]:
    """Who holds what, by staff email. schools: the caller's reach (None: the district);
    a school admin sees the grants at their schools and the district-wide ones."""
    return await conn.fetch(
        """SELECT grant_id, staff_email, level, school_id, basis, granted_by, as_of AS since FROM access_held
           WHERE district_id = $1 AND held
             AND ($2::text[] IS NULL OR school_id IS NULL OR school_id = ANY($2::text[]))
             AND ($3::text IS NULL OR school_id = $3) AND ($4::text IS NULL OR level = $4)
             AND ($5::text IS NULL OR staff_email = $5)
             AND ($6::text IS NULL OR (staff_email, grant_id) > ($6, $7::uuid))
           ORDER BY staff_email, grant_id LIMIT $8""",
        district_id, schools, school_id, level, staff_email, after[0] if after else None,
        after[1] if after else None, limit)


async def access_history(conn: asyncpg.Connection, *, district_id: str, schools: list[str] | None,
                         staff_email: str | None, before: int | None, limit: int) -> list[asyncpg.Record]:
    """Newest first."""
    return await conn.fetch(
        """SELECT id, staff_email, level, school_id, basis, change, changed_by, reason, at FROM access_history
           WHERE district_id = $1 AND ($2::text[] IS NULL OR school_id IS NULL OR school_id = ANY($2::text[]))
             AND ($3::text IS NULL OR staff_email = $3) AND ($4::bigint IS NULL OR id < $4)
           ORDER BY id DESC LIMIT $5""", district_id, schools, staff_email, before, limit)


async def access_defaults(conn: asyncpg.Connection, districts: Iterable[str]) -> dict[str, dict[str, list[str]]]:
    """What each district set, per roster role (the built-in default is the domain's)."""
    rows = await conn.fetch("SELECT district_id, roster_role, levels FROM access_defaults WHERE district_id = ANY($1)",
                            sorted(set(districts)))
    out: dict[str, dict[str, list[str]]] = {}
    for r in rows:
        out.setdefault(r["district_id"], {})[r["roster_role"]] = list(r["levels"])
    return out


async def set_access_defaults(conn: asyncpg.Connection, district_id: str, defaults: dict[str, list[str]],
                              changed_by: str, at) -> None:
    await conn.executemany(
        """INSERT INTO access_defaults (district_id, roster_role, levels, changed_by, changed_at)
           VALUES ($1, $2, $3, $4, $5)
           ON CONFLICT (district_id, roster_role) DO UPDATE SET levels = EXCLUDED.levels,
               changed_by = EXCLUDED.changed_by, changed_at = EXCLUDED.changed_at""",
        [(district_id, role, sorted(set(levels)), changed_by, at) for role, levels in defaults.items()])


async def staff_for_defaults(conn: asyncpg.Connection, staff_ids: Iterable[UUID]) -> list[asyncpg.Record]:
    return await conn.fetch(
        """SELECT staff_id, district_id, role, email, active, school_ids FROM staff WHERE staff_id = ANY($1::uuid[])""",
        list(set(staff_ids)))


async def staff_ids_of(conn: asyncpg.Connection, district_id: str) -> list[UUID]:
    """Every staff record the district's defaults may touch: in the roster now, or holding a default."""
    rows = await conn.fetch(
        """SELECT staff_id FROM staff WHERE district_id = $1 AND active
           UNION SELECT staff_id FROM access_held
           WHERE district_id = $1 AND held AND basis = 'roster_default' AND staff_id IS NOT NULL""", district_id)
    return [r[0] for r in rows]


async def held_defaults(conn: asyncpg.Connection, staff_ids: Iterable[UUID]) -> list[asyncpg.Record]:
    return await conn.fetch(
        """SELECT grant_id, district_id, staff_email, level, school_id, staff_id FROM access_held
           WHERE staff_id = ANY($1::uuid[]) AND held AND basis = 'roster_default'""", list(set(staff_ids)))


async def configured_grants(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return await conn.fetch("""SELECT grant_id, district_id, staff_email, level, school_id FROM access_held
                               WHERE held AND basis = 'configuration'""")
