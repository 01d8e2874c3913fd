"""The roster's SQL. Runs inside the caller's transaction; never commits."""

from __future__ import annotations

from collections.abc import Iterable
from uuid import UUID

import asyncpg

from services.roster.domain import Student

_COLUMNS = "student_id, district_id, source_id, school_id, grade, given_name, family_name, birth_date, email, state_id"


async def lock_students(conn: asyncpg.Connection, student_ids: Iterable[UUID]) -> dict[UUID, Student]:
    rows = await conn.fetch(
        f"""SELECT {_COLUMNS} FROM students WHERE student_id = ANY($1::uuid[]) AND status = 'active'
            ORDER BY student_id FOR UPDATE""",
        list(set(student_ids)),
    )
    return {r["student_id"]: Student(**dict(r)) for r in rows}


async def save_students(conn: asyncpg.Connection, students: Iterable[Student]) -> None:
    rows = list(students)
    if not rows:
        return
    await conn.execute(
        f"""INSERT INTO students ({_COLUMNS})
            SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[],
                                 $6::text[], $7::text[], $8::date[], $9::text[], $10::text[])
            ON CONFLICT (student_id) DO UPDATE SET
                school_id = EXCLUDED.school_id, grade = EXCLUDED.grade,
                given_name = EXCLUDED.given_name, family_name = EXCLUDED.family_name,
                birth_date = EXCLUDED.birth_date, email = EXCLUDED.email, state_id = EXCLUDED.state_id,
                status = 'active', withdrawn_at = NULL, updated_at = now()""",
        *(list(col) for col in zip(*(
            (s.student_id, s.district_id, s.source_id, s.school_id, s.grade, s.given_name, s.family_name,
             s.birth_date, s.email, s.state_id)
            for s in rows
        ), strict=True)),
    )


async def students_page(
    conn: asyncpg.Connection, *, district_id: str, schools: list[str] | None, school_id: str | None,
    after: UUID | None, limit: int,
) -> list[asyncpg.Record]:
    return await conn.fetch(
        f"""SELECT {_COLUMNS} FROM students
            WHERE district_id = $1
              AND ($2::text[] IS NULL OR school_id = ANY($2))
              AND ($3::text IS NULL OR school_id = $3)
              AND ($4::uuid IS NULL OR student_id > $4)
            ORDER BY student_id LIMIT $5""",
        district_id, schools, school_id, after, limit,
    )


async def student(conn: asyncpg.Connection, *, district_id: str, student_id: UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM students WHERE district_id = $1 AND student_id = $2", district_id, student_id
    )
