"""Statements written as probes, key by key, probe by index whatever the statistics say.

Statistics taken while a table was empty (a fresh service, a district's first burst) say a
scan of it costs nothing, and PostgreSQL may keep one generic plan for a prepared statement
after five calls: that plan read the whole table for every probe as the table grew
(services/kit/db.py probing_by_index). Here every table is analysed empty, each probe runs
well past five times, and PostgreSQL's own count of sequential scans must not move."""

from __future__ import annotations

import random
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


async def _every_table_scanned(conn) -> dict[str, int]:
    await conn.execute("SELECT pg_stat_force_next_flush()")
    return {r["relname"]: r["seq_scan"] for r in await conn.fetch("SELECT relname, seq_scan FROM pg_stat_user_tables")}


async def test_the_trigger_path_reads_no_table_whole_on_a_fresh_service(service_db):
    """The whole path of a trigger, the handlers' statements and the functions PostgreSQL runs
    on their rows: students arrive, then batches of triggers of every kind (one in seven
    assigns a task, whose row looks up its case: migration 012). Before that migration the
    look-up's generic plan read all of cases for every task (862 whole reads here)."""
    from contracts.roster import StudentEnrolled
    from services.cases import handlers
    from services.kit.consumer import UnitOfWork
    from services.roster.domain import student_id_for
    from tests.integration.test_case_triggers_in_batches import SETTINGS, T0, trigger

    pool = await service_db("cases")
    async with pool.acquire() as conn:
        await conn.execute("ANALYZE")  # every table empty, as on a fresh service
        for kind in ("submit_form", "create_plan", "assign_task", "schedule_meeting", "conduct_plan_review",
                     "add_to_intervention_group", "submit_file"):
            await store_entry(conn, kind)
        before = await _every_table_scanned(conn)
        rng, k = random.Random(14), 0
        for batch in range(12):  # well past five calls of every statement
            async with conn.transaction():
                await handlers.on_roster_students(UnitOfWork(conn, source="caseflow.cases", settings=SETTINGS), [
                    StudentEnrolled(district_id="d1", occurred_at=T0, student_id=student_id_for("d1", f"s{batch}-{i}"),
                                    source_id=f"s{batch}-{i}", school_id=f"H{i % 30}", grade="10", given_name="G",
                                    family_name="F") for i in range(400)])
            triggers = []
            for _ in range(400):
                k += 1
                triggers.append(trigger("d1", rng.randint(0, 6), f"s{rng.randint(0, batch)}-{rng.randint(0, 399)}",
                                        T0, k))
            async with conn.transaction():
                await handlers.on_triggers(UnitOfWork(conn, source="caseflow.cases", settings=SETTINGS), triggers)
        after = await _every_table_scanned(conn)
        assert {t: after[t] - before[t] for t in after if after[t] != before[t]} == {}
        assert await conn.fetchval("SELECT count(*) FROM tasks") > 500  # the task trigger ran


async def store_entry(conn, kind: str) -> None:
    from services.cases import store
    from tests.integration.test_case_triggers_in_batches import T0

    await store.set_entry(conn, "d1", kind, True, "admin", T0)


async def test_a_students_caseloads_are_found_by_index_on_a_fresh_service(service_db):
    """Students written beside memberships: the functions that find the caseloads a student's
    row touches (caseload_page_changes) probe memberships by its primary key (migration 011)."""
    pool = await service_db("caseload")
    async with pool.acquire() as conn:
        await conn.execute("ANALYZE")  # every table empty, as on a fresh service
        before = await _sequential_scans(conn, ("memberships",))
        for batch in range(12):
            async with conn.transaction():
                ids = [uuid.uuid4() for _ in range(300)]
                await conn.execute(
                    """INSERT INTO memberships (owner_email, student_id, reason, source_ref, district_id, school_id,
                                                detail)
                       SELECT 't' || (i % 20) || '@x.org', s, 'section', 'c1', 'd1', 'K1', 'section c1'
                       FROM unnest($1::uuid[]) WITH ORDINALITY AS u(s, i)""", ids)
                await conn.execute(
                    """INSERT INTO students (student_id, district_id, school_id, grade, given_name, family_name, as_of,
                                             school_ids)
                       SELECT s, 'd1', 'K1', '07', 'G', 'F', now(), ARRAY['K1'] FROM unnest($1::uuid[]) s""", ids)
                await conn.execute("UPDATE students SET grade = '08' WHERE student_id = ANY($1::uuid[])", ids)
        assert await conn.fetchval("SELECT count(*) FROM caseload_page_changes") > 0  # the functions ran
        assert await _sequential_scans(conn, ("memberships",)) == before


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
