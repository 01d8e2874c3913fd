"""A probe whose plan must fit today's tables is planned for its arguments every time, never
by a generic plan PostgreSQL cached with the prepared statement while a table was empty (a
fresh service, a district's first burst of triggers): that plan read the whole table for
every probe, and went on doing so as the table grew (services/kit/db.py
fetch_planned_for_arguments)."""

from __future__ import annotations

import uuid

from services.cases import store
from services.kit import db


async def _plans(conn, fragment: str) -> tuple[int, int]:
    row = await conn.fetchrow(
        "SELECT sum(generic_plans)::int AS generic, sum(custom_plans)::int AS custom FROM pg_prepared_statements "
        "WHERE statement LIKE '%' || $1 || '%' AND statement NOT LIKE '%pg_prepared_statements%'", fragment)
    return row["generic"] or 0, row["custom"] or 0


async def test_the_trigger_lookup_is_planned_for_each_batch_while_cases_go_from_none_to_many(service_db):
    pool = await service_db("cases")
    async with pool.acquire() as conn:
        await conn.execute(
            """INSERT INTO students (student_id, district_id, source_id, school_id, grade, given_name, family_name,
                                     status, as_of, school_ids)
               SELECT gen_random_uuid(), 'd1', 'S' || i, 'K1', '05', 'G', 'F', 'active', now(), ARRAY['K1']
               FROM generate_series(1, 2000) i""")
        await conn.execute("ANALYZE students, cases")  # cases empty, as on a fresh service
        keys = {("d1", f"S{i}") for i in range(1, 201)}
        for _ in range(12):  # well past PostgreSQL's five custom plans before it may keep a generic one
            async with conn.transaction():
                found, open_case = await store.students_for_triggers(conn, keys)
            assert len(found) == 200 and open_case == {}
        generic, custom = await _plans(conn, "JOIN LATERAL (SELECT st.student_id")
        assert (generic, custom) == (0, 12)
        for _ in range(8):
            async with conn.transaction():
                await store.open_cases(conn, [uuid.uuid4()])
        generic, custom = await _plans(conn, "FROM unnest($1::uuid[]) AS k(id)")
        assert (generic, custom) == (0, 8)


async def test_the_connections_plan_cache_mode_is_as_it_was_after_the_lookup(service_db):
    pool = await service_db("cases")
    async with pool.acquire() as conn:
        async with conn.transaction():
            rows = await db.fetch_planned_for_arguments(conn, "SELECT current_setting('plan_cache_mode') AS mode")
            assert rows[0]["mode"] == "force_custom_plan"
            assert await conn.fetchval("SELECT current_setting('plan_cache_mode')") == "auto"
            await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
            await db.fetch_planned_for_arguments(conn, "SELECT 1")
            assert await conn.fetchval("SELECT current_setting('plan_cache_mode')") == "force_generic_plan"
        assert await conn.fetchval("SELECT current_setting('plan_cache_mode')") == "auto"


async def test_a_caseload_refresh_of_a_few_students_is_planned_for_them_on_a_fresh_service(service_db):
    from datetime import UTC, datetime

    from services.caseload import store as caseloads

    pool = await service_db("caseload")
    async with pool.acquire() as conn:
        await conn.execute("ANALYZE")  # every table empty, as on a fresh service
        cause = caseloads.Cause(datetime.now(UTC).isoformat(), None)
        for _ in range(12):  # live changes: a few students at a time
            async with conn.transaction():
                students = [uuid.uuid4() for _ in range(3)]
                await caseloads.refresh_caseloads(conn, students, topic="caseload.memberships.v1", cause=cause)
                await caseloads.refresh_caseloads(conn, (), topic="caseload.memberships.v1", cause=cause,
                                                  in_classes=[(s, uuid.uuid4()) for s in students])
        for fragment in ("unnest($1::uuid[]) AS p(student_id)", "unnest($9::uuid[], $10::uuid[])"):
            generic, custom = await _plans(conn, fragment)
            assert (generic, custom) == (0, 12)
