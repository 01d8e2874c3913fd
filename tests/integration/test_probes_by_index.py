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
from services.kit.db import PROBES


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
    """The whole path of a trigger as the consumer runs it (services/kit/db.py PROBES),
    the handlers' statements and the functions PostgreSQL runs on their rows: students
    arrive, then batches of triggers of every kind (one in seven assigns a task, whose row
    looks up its case: migration 012). Before, cases was read whole 862 times here (once
    for every task stored), and waiting_triggers, waiting_deliveries, dictionary and
    school_case_managers once a batch each."""
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
                await conn.execute(PROBES)  # as the consumer begins every batch
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
                await conn.execute(PROBES)
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


async def test_a_task_stored_outside_a_batch_finds_its_case_by_index_on_a_fresh_service(service_db):
    """A task assigned through the API (no consumer's PROBES around it): the function its row
    runs looks up its case by primary key (migration 012). Its plan is made while cases is
    small (a fresh service's first tasks), and kept as cases grows."""
    from services.cases import store

    pool = await service_db("cases")
    async with pool.acquire() as conn:
        await conn.execute("ANALYZE")  # every table empty, as on a fresh service

        async def open_cases(n: int) -> list:
            return await conn.fetch(
                """INSERT INTO cases (case_id, district_id, case_number, student_id, school_id, status, trigger_kind,
                                      source_event_id, opened_at)
                   SELECT gen_random_uuid(), 'd1', gen_random_uuid()::text, gen_random_uuid(), 'K1', 'open',
                          'submit_form', gen_random_uuid(), now()
                   FROM generate_series(1, $1) RETURNING case_id, student_id""", n)

        async def assign_tasks(cases: list) -> None:
            for case in cases:
                async with conn.transaction():
                    await store.upsert_tasks(conn, [(uuid.uuid4(), "d1", case["student_id"], case["case_id"],
                                                     "Call home", "c@x.org", None, "admin@x.org", datetime.now(UTC))])

        await assign_tasks(await open_cases(8))  # past five calls: a plan kept while cases was small
        cases = await open_cases(5000)
        before = await _sequential_scans(conn, ("cases",))
        await assign_tasks(cases[:10])
        assert await _sequential_scans(conn, ("cases",)) == before


async def test_the_caseload_roster_path_reads_no_table_whole_on_a_fresh_service(service_db):
    """Waves of a district's roster as the consumer runs them: staff, classes, students,
    enrolments, then some students changed or withdrawn and classes changed. Before
    (without PROBES), every wave read students whole three times, staff and access_held
    twice, first_attendances three times, class_members and access_defaults."""
    from contracts.roster import ClassUpserted, EnrollmentAdded, StaffUpserted, StudentEnrolled, StudentUpdated, \
        StudentWithdrawn
    from services.caseload import handlers
    from services.kit import outbox
    from services.kit.consumer import UnitOfWork
    from tests.integration.test_automatic_caseloads import AT, SETTINGS

    pool = await service_db("caseload")
    rng = random.Random(3)
    async with pool.acquire() as conn:
        await conn.execute("ANALYZE")  # every table empty, as on a fresh service

        async def batch(handler, events) -> None:
            async with conn.transaction():
                await conn.execute(PROBES)  # as the consumer begins every batch
                uow = UnitOfWork(conn, source="caseflow.caseload", settings=SETTINGS)
                await handler(uow, events)
                await outbox.write(conn, uow.outgoing)

        before = await _every_table_scanned(conn)
        everyone: list[uuid.UUID] = []
        for _ in range(8):  # well past five calls of every statement
            teachers, classes = [uuid.uuid4() for _ in range(20)], [uuid.uuid4() for _ in range(20)]
            students = [uuid.uuid4() for _ in range(300)]
            everyone += students
            await batch(handlers.on_roster_staff, [StaffUpserted(
                staff_id=t, source_id=f"t-{t}", role="teacher", given_name="T", family_name="T", email=f"{t}@x.org",
                school_ids=["A"], matched=True, **AT) for t in teachers])
            await batch(handlers.on_roster_classes, [ClassUpserted(
                class_id=c, source_id=f"c-{c}", school_id="A", class_type="homeroom" if i % 2 else "scheduled",
                title="t", class_code="c", grades=[], periods=[], **AT) for i, c in enumerate(classes)])
            await batch(handlers.on_roster_students, [StudentEnrolled(
                student_id=s, source_id=f"s-{s}", school_id="A", grade=rng.choice(["03", "09"]), given_name="G",
                family_name="F", **AT) for s in students])
            await batch(handlers.on_roster_enrollments, [EnrollmentAdded(
                person_id=t, role="teacher", class_id=c, class_source_id=f"c-{c}", user_source_id=f"t-{t}",
                school_id="A", primary=True, **AT) for t, c in zip(teachers, classes, strict=True)] + [EnrollmentAdded(
                person_id=s, role="student", class_id=c, class_source_id=f"c-{c}", user_source_id=f"s-{s}",
                school_id="A", primary=False, **AT) for s in students for c in rng.sample(classes, 3)])
            some = rng.sample(everyone, 50)
            await batch(handlers.on_roster_students, [StudentUpdated(
                student_id=s, source_id=f"s-{s}", school_id="A", grade="05", given_name="G2", family_name="F",
                changed=["grade", "given_name"], **AT) for s in some[:40]])
            await batch(handlers.on_roster_students, [StudentWithdrawn(
                student_id=s, source_id=f"s-{s}", school_id="A", reason="sis_withdrawal", **AT) for s in some[40:]])
            await batch(handlers.on_roster_classes, [ClassUpserted(
                class_id=c, source_id=f"c-{c}", school_id="A", class_type="homeroom", title="t2", class_code="c",
                grades=[], periods=[], **AT) for c in classes[:3]])
        after = await _every_table_scanned(conn)
        assert {t: after[t] - before[t] for t in after if after[t] != before[t]} == {}
        assert await conn.fetchval("SELECT count(*) FROM memberships") > 3000  # the rules ran


async def test_the_roster_sis_path_reads_no_table_whole_on_a_fresh_service(service_db):
    """SIS facts as the consumer runs them: students enrolled, some changed, some withdrawn
    (a withdrawal takes the student's class memberships and enrolment records along). Before
    (without PROBES), each withdrawal read class_members whole twice and enrollments once."""
    from contracts.sis import SisStudentWithdrawn
    from services.kit.consumer import UnitOfWork
    from services.roster import handlers
    from tests.integration.test_sis_roster_facts import SETTINGS, T0, fact

    pool = await service_db("roster")
    async with pool.acquire() as conn:
        await conn.execute("ANALYZE")  # every table empty, as on a fresh service

        async def batch(handler, facts) -> None:
            async with conn.transaction():
                await conn.execute(PROBES)  # as the consumer begins every batch
                await handler(UnitOfWork(conn, source="caseflow.roster", settings=SETTINGS), facts)

        before = await _every_table_scanned(conn)
        for wave in range(10):  # well past five calls of every statement
            await batch(handlers.on_sis_students_enrolled, [fact(f"S-{wave}-{i}") for i in range(300)])
            await batch(handlers.on_sis_students_enrolled, [fact(f"S-{wave}-{i}", grade="06")
                                                            for i in range(0, 300, 7)])
            await batch(handlers.on_sis_students_withdrawn, [
                SisStudentWithdrawn(district_id="d1", source_id=f"S-{wave}-{i}", occurred_at=T0) for i in range(3)])
        after = await _every_table_scanned(conn)
        assert {t: after[t] - before[t] for t in after if after[t] != before[t]} == {}
        assert await conn.fetchval("SELECT count(*) FROM students WHERE status = 'withdrawn'") == 30


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
