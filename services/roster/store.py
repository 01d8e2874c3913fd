"""The roster's SQL. Runs inside the caller's transaction; never commits."""

from __future__ import annotations

from collections.abc import Iterable
from uuid import UUID

import asyncpg

from services.roster import domain
from services.roster.class_members import current
from services.roster.domain import Student
from services.roster.events_sql import sis_staff_events, sis_student_events

_COLUMNS = ("student_id, district_id, source_id, school_id, grade, given_name, family_name, birth_date, email, "
            "state_id, school_ids")
_READ = _COLUMNS + ", status, withdrawn_at, updated_at"


async def lock_students(conn: asyncpg.Connection, student_ids: Iterable[UUID]) -> dict[UUID, Student]:
    rows = await conn.fetch(
        f"""SELECT {_COLUMNS} FROM students WHERE student_id = ANY($1::uuid[]) AND status = 'active'
            ORDER BY student_id FOR UPDATE""",
        list(set(student_ids)),
    )
    return {r["student_id"]: Student(**{**dict(r), "school_ids": tuple(r["school_ids"])}) for r in rows}


# One turn of SIS enrolment facts (domain.in_turns: each student once), brought into the
# roster and its events written into the outbox by PostgreSQL, in one statement: the facts
# (domain.enrolment_columns: the students' ids, and the rest as sis_enrolment_fact rows,
# migration 004), the students they name locked, each compared with the roster's rule
# (domain.student_change_sql), and what changed saved and said.
_ENROL_STUDENTS = f"""
WITH fact AS MATERIALIZED (
    SELECT f.student_id, f.district_id, f.source_id, f.school_id, f.grade, f.given_name, f.family_name,
           f.birth_date, f.email, f.state_id, f.school_ids::text[] AS school_ids,
           f.roster_event_id, f.occurred_at, f.correlation_id
    FROM unnest($1::uuid[], $2::sis_enrolment_fact[]) AS f(student_id)  -- then the row's fields, by name
), held AS MATERIALIZED (
    SELECT * FROM students WHERE student_id = ANY($1::uuid[]) ORDER BY student_id FOR UPDATE
), kept AS MATERIALIZED (
    SELECT * FROM (SELECT f.*, {domain.student_change_sql("f", "c")}
                   FROM fact f LEFT JOIN held c ON c.student_id = f.student_id) d
    WHERE {domain.STUDENT_CHANGES}
), saved AS (
    INSERT INTO students ({_COLUMNS})
    SELECT {_COLUMNS} FROM kept
    ON CONFLICT (student_id) DO UPDATE SET
        school_id = EXCLUDED.school_id, school_ids = EXCLUDED.school_ids, grade = EXCLUDED.grade,
        given_name = EXCLUDED.given_name, family_name = EXCLUDED.family_name, birth_date = EXCLUDED.birth_date,
        email = EXCLUDED.email, state_id = EXCLUDED.state_id, status = 'active', withdrawn_at = NULL,
        updated_at = now()
), enrolled AS ({sis_student_events("enrolled", "SELECT * FROM kept", "$3")})
{sis_student_events("updated", "SELECT * FROM kept", "$3")}"""


async def enrol_students(conn: asyncpg.Connection, topic: str, columns: list[list]) -> None:
    """Bring one turn of SIS enrolment facts into the roster (columns: domain.enrolment_columns,
    each student at most once) and write the StudentEnrolled / StudentUpdated they cause
    into the outbox for `topic` (the deployment's roster.students topic)."""
    if columns[0]:
        await conn.execute(_ENROL_STUDENTS, columns[0], list(zip(*columns[1:], strict=True)), topic)


# One turn of SIS staff facts (domain.in_turns: each staff member once), brought into the
# roster and their StaffUpserted written into the outbox, in one statement, by the rule of
# domain.staff_change_sql.
_UPSERT_STAFF = f"""
WITH fact AS MATERIALIZED (
    SELECT f.staff_id, f.district_id, f.source_id, f.role, f.given_name, f.family_name, f.email, f.identifier,
           f.school_ids::text[] AS school_ids, f.roster_event_id, f.occurred_at, f.correlation_id
    FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[],
                $9::text[], $10::uuid[], $11::text[], $12::text[])
         AS f(staff_id, district_id, source_id, role, given_name, family_name, email, identifier, school_ids,
              roster_event_id, occurred_at, correlation_id)
), held AS MATERIALIZED (
    SELECT * FROM staff WHERE staff_id = ANY($1::uuid[]) ORDER BY staff_id FOR UPDATE
), kept AS MATERIALIZED (
    SELECT f.* FROM fact f LEFT JOIN held c ON c.staff_id = f.staff_id WHERE {domain.staff_change_sql("f", "c")}
), saved AS (
    INSERT INTO staff (staff_id, district_id, source_id, role, given_name, family_name, email, identifier,
                       school_ids, status)
    SELECT staff_id, district_id, source_id, role, given_name, family_name, email, identifier, school_ids, 'active'
    FROM kept
    ON CONFLICT (staff_id) DO UPDATE SET role = EXCLUDED.role, given_name = EXCLUDED.given_name,
        family_name = EXCLUDED.family_name, email = EXCLUDED.email, identifier = EXCLUDED.identifier,
        school_ids = EXCLUDED.school_ids, status = 'active', updated_at = now()
)
{sis_staff_events("SELECT * FROM kept", "$13")}"""


async def upsert_staff(conn: asyncpg.Connection, topic: str, columns: list[list]) -> None:
    """Bring one turn of SIS staff facts into the roster (columns: domain.staff_columns, each
    staff member at most once) and write the StaffUpserted they cause into the outbox for
    `topic` (the deployment's roster.staff topic)."""
    if columns[0]:
        await conn.execute(_UPSERT_STAFF, *columns, topic)


async def class_enrollments_of(conn: asyncpg.Connection, district_id: str, source_id: str) -> list[asyncpg.Record]:
    """The classes a student is a member of, as published."""
    return await conn.fetch(
        """SELECT class_id, class_source_id, school_id, role FROM class_members
           WHERE district_id = $1 AND user_source_id = $2 AND role = 'student'
           ORDER BY class_source_id""",
        district_id, source_id,
    )


async def withdraw_student(conn: asyncpg.Connection, district_id: str, source_id: str) -> None:
    """The student leaves the roster, and takes their enrolment records and class
    memberships along (a file that enrols them again brings them back)."""
    await conn.execute(
        "DELETE FROM class_members WHERE district_id = $1 AND user_source_id = $2 AND role = 'student'",
        district_id, source_id,
    )
    await conn.execute(
        "DELETE FROM enrollments WHERE district_id = $1 AND user_source_id = $2 AND role = 'student'",
        district_id, source_id,
    )
    await conn.execute(
        """UPDATE students SET status = 'withdrawn', withdrawn_at = now(), updated_at = now()
           WHERE district_id = $1 AND source_id = $2""",
        district_id, source_id,
    )


async def students_page(
    conn: asyncpg.Connection, *, district_id: str, schools: list[str] | None, school_id: str | None,
    include_withdrawn: bool, after: UUID | None, limit: int,
) -> list[asyncpg.Record]:
    return await conn.fetch(
        f"""SELECT {_READ} FROM students
            WHERE district_id = $1
              AND ($2::text[] IS NULL OR school_ids && $2)
              AND ($3::text IS NULL OR $3 = ANY(school_ids))
              AND ($4::uuid IS NULL OR student_id > $4)
              AND ($6 OR status = 'active')
            ORDER BY student_id LIMIT $5""",
        district_id, schools, school_id, after, limit, include_withdrawn,
    )


async def student(conn: asyncpg.Connection, *, district_id: str, student_id: UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"SELECT {_READ} FROM students WHERE district_id = $1 AND student_id = $2", district_id, student_id
    )


async def staff_page(conn, *, district_id: str, schools: list[str] | None, school_id: str | None,
                     after: UUID | None, limit: int) -> list[asyncpg.Record]:
    return await conn.fetch(
        """SELECT staff_id, source_id, role, given_name, family_name, email, identifier, school_ids, status,
                  email IS NOT NULL AS matched
           FROM staff
           WHERE district_id = $1 AND ($2::text[] IS NULL OR school_ids && $2)
             AND ($3::text IS NULL OR $3 = ANY(school_ids)) AND ($4::uuid IS NULL OR staff_id > $4)
           ORDER BY staff_id LIMIT $5""",
        district_id, schools, school_id, after, limit,
    )


async def classes_page(conn, *, district_id: str, schools: list[str] | None, school_id: str | None,
                       after: UUID | None, limit: int) -> list[asyncpg.Record]:
    return await conn.fetch(
        """SELECT class_id, source_id, school_id, class_type, title, class_code, course_source_id, grades, periods
           FROM classes
           WHERE district_id = $1 AND ($2::text[] IS NULL OR school_id = ANY($2))
             AND ($3::text IS NULL OR school_id = $3) AND ($4::uuid IS NULL OR class_id > $4)
           ORDER BY class_id LIMIT $5""",
        district_id, schools, school_id, after, limit,
    )


async def enrollments_page(conn, *, district_id: str, schools: list[str] | None, school_id: str | None,
                           class_source_id: str | None, user_source_id: str | None, after: str | None,
                           limit: int, today) -> list[asyncpg.Record]:
    """Enrolment records by sourcedId, each with the dates it counts (its own, else its
    class's terms') and whether it counts today."""
    return await conn.fetch(
        f"""SELECT e.source_id, e.class_source_id, e.user_source_id, e.role, e.is_primary AS primary, c.school_id,
                   e.begin_date, e.end_date, coalesce(e.begin_date, c.starts) AS counts_from,
                   coalesce(e.end_date, c.ends) AS counts_until, ({current(today="$8")}) AS current,
                   e.source_id AS cursor
            FROM enrollments e JOIN classes c ON c.district_id = e.district_id AND c.source_id = e.class_source_id
            WHERE e.district_id = $1 AND ($2::text[] IS NULL OR c.school_id = ANY($2))
              AND ($3::text IS NULL OR c.school_id = $3) AND ($4::text IS NULL OR e.class_source_id = $4)
              AND ($5::text IS NULL OR e.user_source_id = $5) AND ($6::text IS NULL OR e.source_id > $6)
            ORDER BY e.source_id LIMIT $7""",
        district_id, schools, school_id, class_source_id, user_source_id, after, limit, today,
    )


# Where each row of a file is (file_lines, migrations 005 and 006) is split into buckets by
# a hash of the sourcedId, so the reconcile view reads one bucket of a file, not the file.
# A file of n rows has 2^k buckets, the fewest holding at most FILE_LINES_PER_BUCKET rows
# on average (k at most FILE_LINES_LEVELS); bucket b of 2^k is numbered 2^k + b, so one
# number names both, and a lookup, not knowing a file's k, asks for the sourcedId's bucket
# at every k (FILE_LINES_LEVELS + 1 numbers, an index scan each). Changing how many buckets
# a file gets needs nothing else; changing the hash or the numbering needs a migration
# that re-splits file_lines (006 holds a copy of both, as they were when it was written).
FILE_LINES_PER_BUCKET = 128
FILE_LINES_LEVELS = 20


def sourced_id_hash_sql(source_id: str) -> str:
    """SQL for a sourcedId's hash, an integer in [0, 2^28): the first 28 bits of its MD5
    (stable across PostgreSQL versions, which hashtext is not promised to be). `source_id`
    is an SQL expression of type text."""
    return f"('x' || substr(md5({source_id}), 1, 7))::bit(28)::int"


def file_lines_buckets_sql(rows: str) -> str:
    """SQL for how many buckets (2^k, an integer) a file of `rows` rows (an SQL count) has."""
    return (f"(1 << least({FILE_LINES_LEVELS}, greatest(0, "
            f"ceil(log(2, greatest({rows}, 1)::numeric / {FILE_LINES_PER_BUCKET}))))::int)")


def file_lines_bucket_sql(source_id: str, buckets: str) -> str:
    """SQL for the file_lines bucket number (buckets + hash mod buckets) of `source_id` (SQL
    text) in a file of `buckets` buckets (SQL integer, file_lines_buckets_sql)."""
    return f"({buckets} + ({sourced_id_hash_sql(source_id)} & ({buckets} - 1)))"


def _file_lines_buckets_of(source_id: str) -> str:
    """SQL for the array of `source_id`'s bucket at every k, 0 to FILE_LINES_LEVELS."""
    return (f"ARRAY(SELECT (1 << k) + ({sourced_id_hash_sql(source_id)} & ((1 << k) - 1)) "
            f"FROM generate_series(0, {FILE_LINES_LEVELS}) k)")


# The line (and the import whose file it is) from the newest file_lines holding the row,
# read in the sourcedId's buckets alone; last_file_rows' own where none does (rows written
# before file_lines was kept).
_RECONCILED_FILE_ROW = f"""
SELECT coalesce(l.import_id, f.import_id) AS import_id, f.file,
       coalesce(l.lines[l.at], f.line) AS line, f.row_data, f.accepted, f.reasons
FROM last_file_rows f
LEFT JOIN LATERAL (
    SELECT import_id, lines, array_position(source_ids, f.source_id) AS at FROM file_lines
    WHERE district_id = f.district_id AND entity = f.entity AND bucket = ANY({_file_lines_buckets_of("$3::text")})
      AND f.source_id = ANY(source_ids)
    ORDER BY seq DESC LIMIT 1) l ON true
WHERE f.district_id = $1 AND f.entity = $2 AND f.source_id = $3"""


async def reconciliation(conn, *, district_id: str, entity: str, source_id: str):
    """(what the latest file said, accepted or not; what the roster holds) for a student,
    staff member or class (`entity`: student, staff or class), each a dict or None.

    What the file said: import_id, file (users.csv, classes.csv), line (header = 1),
    row_data, accepted, reasons; None where the latest bulk file left the row out."""
    file_row = await conn.fetchrow(
        _RECONCILED_FILE_ROW, district_id, "class" if entity == "class" else "user", source_id)
    if entity == "student":
        held = await conn.fetchrow(
            "SELECT student_id, source_id, school_id, school_ids, grade, status, withdrawn_at, updated_at "
            "FROM students WHERE district_id = $1 AND source_id = $2", district_id, source_id)
    elif entity == "staff":
        held = await conn.fetchrow(
            "SELECT staff_id, source_id, role, school_ids, status, updated_at FROM staff "
            "WHERE district_id = $1 AND source_id = $2", district_id, source_id)
    else:
        held = await conn.fetchrow(
            "SELECT class_id, source_id, school_id, class_type, title, grades, periods, term_source_ids, starts, "
            "ends, updated_at FROM classes "
            "WHERE district_id = $1 AND source_id = $2", district_id, source_id)
    return (dict(file_row) if file_row else None), (dict(held) if held else None)


_IMPORT = """import_id, district_id, origin, package_name, package_path, status, message, summary, error_count,
             warning_count, created_by, created_at, finished_at"""


async def imports(conn, *, district_id: str, limit: int) -> list[asyncpg.Record]:
    return await conn.fetch(
        f"SELECT {_IMPORT} FROM imports WHERE district_id = $1 ORDER BY created_at DESC LIMIT $2", district_id, limit
    )


async def import_(conn, *, district_id: str, import_id: UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"SELECT {_IMPORT} FROM imports WHERE district_id = $1 AND import_id = $2", district_id, import_id
    )


async def import_problems(conn, *, import_id: UUID, after: int, limit: int) -> list[asyncpg.Record]:
    return await conn.fetch(
        """SELECT seq, severity, file, line, source_id, "column", value, reason FROM import_problems
           WHERE import_id = $1 AND seq > $2 ORDER BY seq LIMIT $3""",
        import_id, after, limit,
    )
