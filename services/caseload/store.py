"""The caseload service's SQL. Runs inside the caller's transaction; never commits."""

from __future__ import annotations

from collections.abc import Iterable
from uuid import UUID

import asyncpg

from services.caseload.domain import ELEMENTARY_GRADES, SECONDARY_GRADES, ProjectedStudent


async def held_students(conn: asyncpg.Connection, ids: Iterable[UUID]) -> dict[UUID, ProjectedStudent]:
    rows = await conn.fetch(
        """SELECT student_id, district_id, school_id, grade, given_name, family_name, state_id, status, as_of
           FROM students WHERE student_id = ANY($1::uuid[]) ORDER BY student_id FOR UPDATE""",
        list(set(ids)),
    )
    return {r["student_id"]: ProjectedStudent(**dict(r)) for r in rows}


async def project_students(conn: asyncpg.Connection, students: list[ProjectedStudent]) -> None:
    if not students:
        return
    await conn.execute(
        """INSERT INTO students (student_id, district_id, school_id, grade, given_name, family_name, state_id,
                                 status, as_of)
           SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                                $7::text[], $8::text[], $9::timestamptz[])
           ON CONFLICT (student_id) DO UPDATE SET
               district_id = EXCLUDED.district_id, school_id = EXCLUDED.school_id, grade = EXCLUDED.grade,
               given_name = EXCLUDED.given_name, family_name = EXCLUDED.family_name,
               state_id = EXCLUDED.state_id, status = EXCLUDED.status, as_of = EXCLUDED.as_of
           WHERE students.as_of <= EXCLUDED.as_of""",
        *(list(col) for col in zip(*(
            (s.student_id, s.district_id, s.school_id, s.grade, s.given_name, s.family_name, s.state_id, s.status,
             s.as_of)
            for s in students
        ), strict=True)),
    )


async def lock_staff_roles(conn: asyncpg.Connection, ids: list[UUID]) -> dict[UUID, str]:
    rows = await conn.fetch(
        "SELECT staff_id, role FROM staff WHERE staff_id = ANY($1::uuid[]) ORDER BY staff_id FOR UPDATE", ids)
    return {r["staff_id"]: r["role"] for r in rows}


async def project_staff(conn: asyncpg.Connection, rows: list[tuple]) -> None:
    """rows: (staff_id, district_id, source_id, role, email, active, as_of); newest wins."""
    if rows:
        await conn.execute(
            """INSERT INTO staff (staff_id, district_id, source_id, role, email, active, as_of)
               SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bool[],
                                    $7::timestamptz[])
               ON CONFLICT (staff_id) DO UPDATE SET role = EXCLUDED.role, email = EXCLUDED.email,
                   active = EXCLUDED.active, as_of = EXCLUDED.as_of
               WHERE staff.as_of <= EXCLUDED.as_of""",
            *(list(c) for c in zip(*rows, strict=True)),
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


async def students_in_classes(conn: asyncpg.Connection, class_ids: Iterable[UUID]) -> set[UUID]:
    rows = await conn.fetch(
        "SELECT DISTINCT person_id FROM class_members WHERE class_id = ANY($1::uuid[]) AND role = 'student'",
        list(set(class_ids)),
    )
    return {r[0] for r in rows}


async def students_taught_by(conn: asyncpg.Connection, staff_ids: Iterable[UUID]) -> set[UUID]:
    rows = await conn.fetch(
        """SELECT DISTINCT s.person_id FROM class_members t
           JOIN class_members s ON s.class_id = t.class_id AND s.role = 'student'
           WHERE t.person_id = ANY($1::uuid[]) AND t.role <> 'student'""",
        list(set(staff_ids)),
    )
    return {r[0] for r in rows}


async def refresh_automatic(conn: asyncpg.Connection, student_ids: Iterable[UUID]) -> list[asyncpg.Record]:
    """Bring these students' automatic memberships (homeroom, section) in line with the
    projection; return the rows added and removed, each with `change`."""
    ids = list(set(student_ids))
    if not ids:
        return []
    return await conn.fetch(
        """WITH wanted AS (
               SELECT DISTINCT sf.email AS owner_email, s.student_id,
                      CASE WHEN c.class_type = 'homeroom' THEN 'homeroom' ELSE 'section' END AS reason,
                      c.class_id::text AS source_ref, s.district_id, s.school_id,
                      CASE WHEN c.class_type = 'homeroom' THEN 'homeroom ' || c.title
                           ELSE 'section ' || coalesce(c.class_code, c.title) END AS detail
               FROM students s
               JOIN class_members m ON m.person_id = s.student_id AND m.role = 'student'
               JOIN classes c ON c.class_id = m.class_id
               JOIN class_members t ON t.class_id = c.class_id AND t.role = 'teacher'
               JOIN staff sf ON sf.staff_id = t.person_id AND sf.active AND sf.email IS NOT NULL
               WHERE s.student_id = ANY($1::uuid[]) AND s.status = 'active'
                 AND ((c.class_type = 'homeroom' AND s.grade = ANY($2::text[]))
                   OR (c.class_type = 'scheduled' AND s.grade = ANY($3::text[])))
           ),
           gone AS (
               DELETE FROM memberships h
               WHERE h.student_id = ANY($1::uuid[]) AND h.reason IN ('homeroom', 'section')
                 AND NOT EXISTS (SELECT 1 FROM wanted w WHERE w.owner_email = h.owner_email
                                 AND w.student_id = h.student_id AND w.reason = h.reason
                                 AND w.source_ref = h.source_ref)
               RETURNING 'removed' AS change, h.owner_email, h.student_id, h.reason, h.source_ref, h.district_id,
                         h.school_id, h.detail
           ),
           came AS (
               INSERT INTO memberships (owner_email, student_id, reason, source_ref, district_id, school_id, detail)
               SELECT * FROM wanted
               ON CONFLICT (student_id, owner_email, reason, source_ref) DO NOTHING
               RETURNING 'added' AS change, owner_email, student_id, reason, source_ref, district_id, school_id,
                         detail
           )
           SELECT * FROM gone UNION ALL SELECT * FROM came""",
        ids, list(ELEMENTARY_GRADES), list(SECONDARY_GRADES),
    )


async def student(conn: asyncpg.Connection, *, district_id: str, student_id: UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(
        """SELECT student_id, district_id, school_id, grade, given_name, family_name, state_id, status, as_of
           FROM students WHERE district_id = $1 AND student_id = $2""",
        district_id, student_id,
    )


async def caseload_of(conn: asyncpg.Connection, *, district_id: str, owner_email: str, school_id: str | None,
                      grade: str | None, reason: str | None, after: UUID | None, limit: int) -> list[asyncpg.Record]:
    return await conn.fetch(
        """SELECT s.student_id, s.given_name, s.family_name, s.school_id, s.grade,
                  jsonb_agg(jsonb_build_object('reason', m.reason, 'detail', m.detail, 'since', m.since)
                           ORDER BY m.since, m.detail) AS why
           FROM memberships m JOIN students s ON s.student_id = m.student_id
           WHERE m.district_id = $1 AND m.owner_email = $2
             AND ($3::text IS NULL OR s.school_id = $3) AND ($4::text IS NULL OR s.grade = $4)
             AND ($5::text IS NULL OR m.reason = $5) AND ($6::uuid IS NULL OR s.student_id > $6)
           GROUP BY s.student_id ORDER BY s.student_id LIMIT $7""",
        district_id, owner_email, school_id, grade, reason, after, limit,
    )


async def caseloads_with(conn: asyncpg.Connection, *, district_id: str, student_id: UUID) -> list[asyncpg.Record]:
    return await conn.fetch(
        """SELECT owner_email, reason, detail, since FROM memberships
           WHERE district_id = $1 AND student_id = $2 ORDER BY owner_email, since""",
        district_id, student_id,
    )


async def on_caseload(conn: asyncpg.Connection, *, owner_email: str, student_id: UUID) -> bool:
    return bool(await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM memberships WHERE owner_email = $1 AND student_id = $2)", owner_email, student_id))
