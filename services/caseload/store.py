"""The caseload service's SQL. Runs inside the caller's transaction; never commits."""

from __future__ import annotations

from uuid import UUID

import asyncpg

from services.caseload.domain import ProjectedStudent


async def project_students(conn: asyncpg.Connection, students: list[ProjectedStudent]) -> None:
    if not students:
        return
    await conn.execute(
        """INSERT INTO students (student_id, district_id, school_id, grade, given_name, family_name, state_id, as_of)
           SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                                $7::text[], $8::timestamptz[])
           ON CONFLICT (student_id) DO UPDATE SET
               district_id = EXCLUDED.district_id, school_id = EXCLUDED.school_id, grade = EXCLUDED.grade,
               given_name = EXCLUDED.given_name, family_name = EXCLUDED.family_name,
               state_id = EXCLUDED.state_id, as_of = EXCLUDED.as_of
           WHERE students.as_of <= EXCLUDED.as_of""",
        *(list(col) for col in zip(*(
            (s.student_id, s.district_id, s.school_id, s.grade, s.given_name, s.family_name, s.state_id, s.as_of)
            for s in students
        ), strict=True)),
    )


async def student(conn: asyncpg.Connection, *, district_id: str, student_id: UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(
        """SELECT student_id, district_id, school_id, grade, given_name, family_name, state_id, as_of
           FROM students WHERE district_id = $1 AND student_id = $2""",
        district_id, student_id,
    )
