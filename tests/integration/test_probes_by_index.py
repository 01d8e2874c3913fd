"""Statements written as probes, key by key, probe by index whatever the statistics say.

Statistics taken while a table was empty (a fresh service, a district's first burst) say a
scan of it costs nothing, and PostgreSQL may keep one generic plan for a prepared statement
after five calls: that plan read the whole table for every probe as the table grew
(services/kit/db.py probing_by_index). Here every table is analysed empty, each probe runs
well past five times, and PostgreSQL's own count of sequential scans must not move."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from services.kit import db


async def _sequential_scans(conn, tables: tuple[str, ...]) -> dict[str, int]:
    await conn.execute("SELECT pg_stat_force_next_flush()")
    rows = await conn.fetch("SELECT relname, seq_scan FROM pg_stat_user_tables WHERE relname = ANY($1::text[])",
                            list(tables))
    return {r["relname"]: r["seq_scan"] for r in rows}


async def test_the_trigger_lookup_probes_by_index_on_a_fresh_service(service_db):
    from services.cases import store

    pool = await service_db("cases")
    async with pool.acquire() as conn:
        await conn.execute("ANALYZE")  # every table empty, as on a fresh service
        await conn.execute(
            """INSERT INTO students (student_id, district_id, source_id, school_id, grade, given_name, family_name,
                                     status, as_of, school_ids)
               SELECT gen_random_uuid(), 'd1', 'S' || i, 'K1', '05', 'G', 'F', 'active', now(), ARRAY['K1']
               FROM generate_series(1, 2000) i""")
        before = await _sequential_scans(conn, ("students", "cases"))
        keys = {("d1", f"S{i}") for i in range(1, 201)}
        for _ in range(12):  # well past PostgreSQL's five custom plans before it may keep a generic one
            async with conn.transaction():
                found, open_case = await store.students_for_triggers(conn, keys)
                assert len(found) == 200 and open_case == {}
                assert await store.open_cases(conn, [uuid.uuid4()]) == {}
        assert await _sequential_scans(conn, ("students", "cases")) == before


async def test_a_caseload_refresh_probes_by_index_on_a_fresh_service(service_db):
    from services.caseload import store

    tables = ("students", "class_members", "classes", "staff", "memberships", "point_persons", "support_members",
              "provider_links", "mandates")
    pool = await service_db("caseload")
    async with pool.acquire() as conn:
        await conn.execute("ANALYZE")  # every table empty, as on a fresh service
        before = await _sequential_scans(conn, tables)
        cause = store.Cause(datetime.now(UTC).isoformat(), None)
        for _ in range(12):  # live changes: a few students at a time
            async with conn.transaction():
                students = [uuid.uuid4() for _ in range(3)]
                await store.refresh_caseloads(conn, students, topic="caseload.memberships.v1", cause=cause)
                await store.refresh_caseloads(conn, (), topic="caseload.memberships.v1", cause=cause,
                                              in_classes=[(s, uuid.uuid4()) for s in students])
        assert await _sequential_scans(conn, tables) == before


async def test_the_settings_are_as_they_were_after_the_probes(service_db):
    pool = await service_db("cases")
    async with pool.acquire() as conn:
        async with conn.transaction():
            async with db.probing_by_index(conn), db.planned_for_arguments(conn):
                assert await conn.fetchval("SELECT current_setting('enable_seqscan')") == "off"
                assert await conn.fetchval("SELECT current_setting('plan_cache_mode')") == "force_custom_plan"
            assert await conn.fetchval("SELECT current_setting('enable_seqscan')") == "on"
            assert await conn.fetchval("SELECT current_setting('plan_cache_mode')") == "auto"
            await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
            async with db.planned_for_arguments(conn):
                pass
            assert await conn.fetchval("SELECT current_setting('plan_cache_mode')") == "force_generic_plan"
        assert await conn.fetchval("SELECT current_setting('plan_cache_mode')") == "auto"
