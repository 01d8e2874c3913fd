"""The district dashboard's counts (kept by triggers as cases change, migration 002) equal
the counts recomputed from the cases themselves, after any sequence of openings, closings,
reopenings, moves to another school, team changes and deletions: for the whole district
and for any set of schools."""

from __future__ import annotations

import itertools
import uuid
from collections import Counter
from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from services.cases import store

pytestmark = pytest.mark.integration

SCHOOLS = ["02M001", "02M475", "13K430"]
TEAMS = [None, "Attendance", "Wellness"]
PEOPLE = [None, "a.reyes@schools.nyc.gov", "j.okafor@schools.nyc.gov"]

operations = st.lists(st.one_of(
    st.tuples(st.just("open"), st.sampled_from(SCHOOLS), st.sampled_from(TEAMS), st.sampled_from(PEOPLE),
              st.sampled_from(PEOPLE)),
    st.tuples(st.just("close"), st.integers(0, 50)),
    st.tuples(st.just("reopen"), st.integers(0, 50)),
    st.tuples(st.just("move"), st.integers(0, 50), st.sampled_from(SCHOOLS)),
    st.tuples(st.just("reassign"), st.integers(0, 50), st.sampled_from(TEAMS), st.sampled_from(PEOPLE),
              st.sampled_from(PEOPLE)),
    st.tuples(st.just("delete"), st.integers(0, 50)),
), min_size=1, max_size=40)


def expected(cases: list[dict], schools: list[str] | None) -> dict:
    open_ = [c for c in cases if c["status"] == "open" and (schools is None or (c["school_id"] or "") in schools)]

    def by(field: str) -> Counter:
        return Counter(c[field] for c in open_)

    return {"open_cases": len(open_), "by_school": by("school_id"), "by_team": by("team_name"),
            "by_team_leader": by("team_leader"), "by_case_manager": by("case_manager")}


def shown(board: dict) -> dict:
    return {"open_cases": board["open_cases"],
            **{d: Counter({row["key"]: row["open_cases"] for row in board[d]})
               for d in ("by_school", "by_team", "by_team_leader", "by_case_manager")}}


@pytest.fixture
async def cases_pool(service_db):
    return await service_db("cases")


@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(ops=operations)
async def test_every_dashboard_dimension_counts_what_the_cases_say(cases_pool, ops):
    district = f"d-{uuid.uuid4().hex[:8]}"
    async with cases_pool.acquire() as conn:
        for op in ops:
            ids = [r["case_id"] for r in await conn.fetch(
                "SELECT case_id FROM cases WHERE district_id = $1 ORDER BY case_number", district)]
            pick = ids[op[1] % len(ids)] if ids and op[0] != "open" else None
            if op[0] == "open":
                n = await conn.fetchval("SELECT count(*) FROM cases WHERE district_id = $1", district)
                await conn.execute(
                    """INSERT INTO cases (case_id, district_id, case_number, student_id, school_id, status,
                                          trigger_kind, source_event_id, opened_at, team_name, team_leader, case_manager)
                       VALUES ($1, $2, $3, $4, $5, 'open', 'attendance', $6, $7, $8, $9, $10)""",
                    uuid.uuid4(), district, f"2026-{n + 1:05d}", uuid.uuid4(), op[1], uuid.uuid4(),
                    datetime(2026, 11, 2, tzinfo=UTC), op[2], op[3], op[4])
            elif pick is None:
                continue
            elif op[0] == "close":
                await conn.execute("UPDATE cases SET status = 'closed' WHERE case_id = $1", pick)
            elif op[0] == "reopen":
                await conn.execute("UPDATE cases SET status = 'open' WHERE case_id = $1", pick)
            elif op[0] == "move":
                await conn.execute("UPDATE cases SET school_id = $2 WHERE case_id = $1", pick, op[2])
            elif op[0] == "reassign":
                await conn.execute("UPDATE cases SET team_name = $2, team_leader = $3, case_manager = $4 "
                                   "WHERE case_id = $1", pick, op[2], op[3], op[4])
            elif op[0] == "delete":
                await conn.execute("DELETE FROM cases WHERE case_id = $1", pick)
        cases = [dict(r) for r in await conn.fetch("SELECT * FROM cases WHERE district_id = $1", district)]
        for schools in (None, SCHOOLS[:1], SCHOOLS[1:]):
            board = await store.dashboard(conn, district_id=district, schools=schools, today=date(2026, 11, 2))
            assert shown(board) == expected(cases, schools), (ops, schools)


async def test_three_open_cases_at_two_schools_show_as_two_rows(cases_pool):
    """Issue 10's example: by_school was one row with a null key."""
    district = f"d-{uuid.uuid4().hex[:8]}"
    async with cases_pool.acquire() as conn:
        for n, school in enumerate(["02M001", "02M001", "02M475"]):
            await conn.execute(
                """INSERT INTO cases (case_id, district_id, case_number, student_id, school_id, status, trigger_kind,
                                      source_event_id, opened_at)
                   VALUES ($1, $2, $3, $4, $5, 'open', 'attendance', $6, now())""",
                uuid.uuid4(), district, f"2026-{n:05d}", uuid.uuid4(), school, uuid.uuid4())
        board = await store.dashboard(conn, district_id=district, schools=None, today=date(2026, 11, 2))
    assert board["by_school"] == [{"key": "02M001", "open_cases": 2}, {"key": "02M475", "open_cases": 1}]


async def test_cases_opened_with_no_team_take_one_counter_row_a_school(cases_pool):
    """A case opens with no team, leader or manager: a batch of them at many schools updates
    one counter row a school (its open cases), not one more for each "none" and one among
    the district's (migration 010); the boards show the cases with none all the same."""
    district = f"d-{uuid.uuid4().hex[:8]}"
    async with cases_pool.acquire() as conn:
        await conn.execute(
            """INSERT INTO cases (case_id, district_id, case_number, student_id, school_id, status, trigger_kind,
                                  source_event_id, opened_at, case_manager)
               SELECT gen_random_uuid(), $1, '2026-' || lpad(n::text, 5, '0'), gen_random_uuid(), ($2::text[])[1 + n % 3],
                      'open', 'attendance', gen_random_uuid(), now(), CASE WHEN n = 0 THEN 'a.reyes@x.org' END
               FROM generate_series(0, 8) AS n""", district, SCHOOLS)
        school_rows = sorted(tuple(r) for r in await conn.fetch(
            "SELECT school_id, dimension, key, open_cases FROM open_case_counts WHERE district_id = $1", district))
        district_rows = sorted(tuple(r) for r in await conn.fetch(
            "SELECT dimension, key, open_cases FROM district_open_case_counts WHERE district_id = $1", district))
        boards = [await store.dashboard(conn, district_id=district, schools=schools, today=date(2026, 11, 2))
                  for schools in (None, SCHOOLS[:1])]
    assert school_rows == [(SCHOOLS[0], "case_manager", "a.reyes@x.org", 1), *((s, "school", "", 3) for s in SCHOOLS)]
    assert district_rows == [("case_manager", "", 8), ("case_manager", "a.reyes@x.org", 1), ("district", "", 9),
                             ("team", "", 9), ("team_leader", "", 9)]
    assert [(b["by_school"], b["by_team"], b["by_case_manager"]) for b in boards] == [
        ([{"key": s, "open_cases": 3} for s in SCHOOLS], [{"key": None, "open_cases": 9}],
         [{"key": None, "open_cases": 8}, {"key": "a.reyes@x.org", "open_cases": 1}]),
        ([{"key": SCHOOLS[0], "open_cases": 3}], [{"key": None, "open_cases": 3}],
         [{"key": None, "open_cases": 2}, {"key": "a.reyes@x.org", "open_cases": 1}])]


# ---------------------------------------------------------------------------- tasks, transfers and the district's totals

TODAY = date(2026, 11, 2)
DUE = [None, *(TODAY + timedelta(days=d) for d in (-9, -3, -1, 0, 1, 4))]
SCOPES = (None, SCHOOLS[:1], SCHOOLS[1:], [""], [])

task_operations = st.lists(st.one_of(
    st.tuples(st.just("open"), st.sampled_from(SCHOOLS), st.sampled_from(TEAMS), st.sampled_from(PEOPLE),
              st.sampled_from(PEOPLE)),
    st.tuples(st.just("arrive"), st.sampled_from(["open", "closed"]), st.sampled_from(TEAMS)),
    st.tuples(st.just("close"), st.integers(0, 50)),
    st.tuples(st.just("reopen"), st.integers(0, 50)),
    st.tuples(st.just("move"), st.integers(0, 50), st.sampled_from(SCHOOLS)),
    st.tuples(st.just("reassign"), st.integers(0, 50), st.sampled_from(TEAMS), st.sampled_from(PEOPLE),
              st.sampled_from(PEOPLE)),
    st.tuples(st.just("delete"), st.integers(0, 50)),
    st.tuples(st.just("transfer_out"), st.integers(0, 50)),
    st.tuples(st.just("assign"), st.integers(0, 50), st.booleans(), st.sampled_from(DUE)),
    st.tuples(st.just("join"), st.integers(0, 50), st.integers(0, 50)),
    st.tuples(st.just("complete"), st.integers(0, 50)),
    st.tuples(st.just("deliver"), st.integers(0, 50), st.sampled_from(["open", "done"]), st.sampled_from(DUE)),
    st.tuples(st.just("late_part"), st.integers(0, 50)),
    st.tuples(st.just("link"), st.integers(0, 50), st.sampled_from(SCHOOLS)),
    st.tuples(st.just("delete_task"), st.integers(0, 50)),
), min_size=1, max_size=40)


# Each example starts from cases at every school and one with no school here, each with tasks
# (overdue, due later, none), so that the operations drawn meet cases that have tasks.
START = [("open", school, "Attendance", None, PEOPLE[1]) for school in SCHOOLS] + [("arrive", "open", None)] + [
    (kind, n, *args) for n in range(len(SCHOOLS) + 1)
    for kind, *args in (("assign", True, DUE[1]), ("assign", True, DUE[5]), ("deliver", "open", DUE[2]))]


_case_numbers = itertools.count()  # a deleted case's number is not used again


async def _case(conn, district: str, student_id, school_id, status: str = "open", team=None, leader=None,
                manager=None, transferred_in: bool = False):
    n = next(_case_numbers)
    case_id = uuid.uuid4()
    await conn.execute(
        """INSERT INTO cases (case_id, district_id, case_number, student_id, school_id, status, trigger_kind,
                              source_event_id, opened_at, team_name, team_leader, case_manager, transferred_in_from,
                              transferred_in_request, transferred_in_case_id)
           VALUES ($1, $2, $3, $4, $5, $6, 'submit_form', $7, $8, $9, $10, $11, $12, $13, $14)""",
        case_id, district, f"26-{n + 1:06d}", student_id, school_id, status, uuid.uuid4(),
        datetime(2026, 10, 20 + n % 10, tzinfo=UTC), team, leader, manager, "d-east" if transferred_in else None,
        uuid.uuid4() if transferred_in else None, uuid.uuid4() if transferred_in else None)
    return case_id


async def apply(conn, district: str, students: dict[str, uuid.UUID], op: tuple) -> None:
    """One write as the service's paths make it (store functions where the service has one)."""
    cases = [r["case_id"] for r in await conn.fetch(
        "SELECT case_id FROM cases WHERE district_id = $1 ORDER BY case_number", district)]
    tasks = [r["task_id"] for r in await conn.fetch(
        "SELECT task_id FROM tasks WHERE district_id = $1 ORDER BY assigned_at, task_id", district)]
    case = cases[op[1] % len(cases)] if cases and isinstance(op[1], int) else None
    task = tasks[op[1] % len(tasks)] if tasks and isinstance(op[1], int) else None
    at = datetime.now(UTC)
    kind = op[0]
    if kind == "open":
        await _case(conn, district, uuid.uuid4(), op[1], "open", *op[2:])
    elif kind == "arrive":  # a transferred-in case of a person made from the transfer: no school here
        await _case(conn, district, uuid.uuid4(), None, op[1], op[2], transferred_in=True)
    elif kind in ("close", "reopen") and case:
        await conn.execute("UPDATE cases SET status = $2 WHERE case_id = $1 AND status <> 'transferred_out'", case,
                           "closed" if kind == "close" else "open")
    elif kind == "move" and case:
        await conn.execute("UPDATE cases SET school_id = $2 WHERE case_id = $1", case, op[2])
    elif kind == "reassign" and case:
        await conn.execute("UPDATE cases SET team_name = $2, team_leader = $3, case_manager = $4 WHERE case_id = $1",
                           case, *op[2:])
    elif kind == "delete" and case:
        await conn.execute("DELETE FROM cases WHERE case_id = $1", case)
    elif kind == "transfer_out" and case:
        if await conn.fetchval("SELECT status <> 'transferred_out' FROM cases WHERE case_id = $1", case):
            await store.transfer_out(conn, [(case, "d-east", uuid.uuid4(), "intake@east.example.org", at)])
    elif kind == "assign":  # the API's task (with the open case, if any) or a trigger's
        school = SCHOOLS[op[1] % len(SCHOOLS)]
        await store.upsert_tasks(conn, [(uuid.uuid4(), district, students[school], case if op[2] else None,
                                         "Call home", "a.reyes@schools.nyc.gov", op[3], "admin", at)])
    elif kind == "join" and task and cases:  # the trigger of a task stored without a case joins one
        row = await conn.fetchrow("SELECT * FROM tasks WHERE task_id = $1", task)
        await store.upsert_tasks(conn, [(task, district, row["student_id"], cases[op[2] % len(cases)], row["title"],
                                         row["assignee_email"], row["due_date"], "admin", at)])
    elif kind == "complete" and task:
        await store.complete_task(conn, task, at, "a.reyes@schools.nyc.gov")
    elif kind == "deliver" and case:  # a transferred case's task, with the case's school (None: a person's)
        row = await conn.fetchrow("SELECT student_id, school_id FROM cases WHERE case_id = $1", case)
        await store.add_transferred_tasks(conn, [(uuid.uuid4(), district, row["student_id"], case, row["school_id"],
                                                  "Review plan", "j.okafor@schools.nyc.gov", op[3], op[2], "west",
                                                  at, None, None)])
    elif kind == "late_part":  # a part of a transferred-in case, applied after the case was transferred out again
        out = [r["case_id"] for r in await conn.fetch(
            "SELECT case_id FROM cases WHERE district_id = $1 AND status = 'transferred_out' ORDER BY case_number",
            district)]
        if out:
            row = await conn.fetchrow("SELECT student_id, school_id FROM cases WHERE case_id = $1", out[op[1] % len(out)])
            await store.add_transferred_tasks(conn, [(uuid.uuid4(), district, row["student_id"], out[op[1] % len(out)],
                                                      row["school_id"], "Review plan", "j.okafor@schools.nyc.gov",
                                                      DUE[1], "open", "west", at, None, None)])
    elif kind == "link" and case:  # a transfer person linked to a roster student: cases and tasks take a school
        person = await conn.fetchval("SELECT student_id FROM cases WHERE case_id = $1 AND transferred_in_from IS NOT NULL "
                                     "AND school_id IS NULL", case)
        if person:
            await store.link_person(conn, district, person, students[op[2]], op[2], "admin", at)
    elif kind == "delete_task" and task:
        await conn.execute("DELETE FROM tasks WHERE task_id = $1", task)


async def recomputed(conn, district: str, schools: list[str] | None) -> tuple[int, list]:
    """Overdue tasks from scratch: open, due before today, not of a case transferred out."""
    rows = await conn.fetch(
        """SELECT t.task_id, c.case_number FROM tasks t LEFT JOIN cases c ON c.case_id = t.case_id
           WHERE t.district_id = $1 AND ($2::text[] IS NULL OR coalesce(t.school_id, '') = ANY($2::text[]))
             AND t.status = 'open' AND t.due_date < $3 AND c.status IS DISTINCT FROM 'transferred_out'
           ORDER BY t.due_date, t.task_id""", district, schools, TODAY)
    return len(rows), [(r["task_id"], r["case_number"]) for r in rows[:50]]


async def counters(conn, district: str) -> dict:
    """Every counter row of the district that is not zero, and the same recomputed from the
    cases and tasks (openings: from the cases opened here, never uncounted)."""
    def rows(records):
        return sorted(tuple(r) for r in records)

    return {
        "kept": {
            "district_open_case_counts": rows(await conn.fetch(
                "SELECT dimension, key, open_cases FROM district_open_case_counts WHERE district_id = $1 "
                "AND open_cases <> 0", district)),
            "open_task_counts": rows(await conn.fetch(
                "SELECT school_id, due_date, open_tasks FROM open_task_counts WHERE district_id = $1 "
                "AND open_tasks <> 0", district)),
            "district_open_task_counts": rows(await conn.fetch(
                "SELECT due_date, open_tasks FROM district_open_task_counts WHERE district_id = $1 "
                "AND open_tasks <> 0", district)),
            "district_weekly_openings": rows(await conn.fetch(
                "SELECT week, trigger_kind, opened FROM district_weekly_openings WHERE district_id = $1", district)),
            "case_transferred_out": rows(await conn.fetch(
                "SELECT task_id, case_transferred_out FROM tasks WHERE district_id = $1", district)),
        },
        "recomputed": {
            "district_open_case_counts": rows(await conn.fetch(
                """SELECT d.dimension, d.key, count(*) FROM cases c,
                          LATERAL (VALUES ('district', ''),
                                          ('team', coalesce(c.team_name, '')), ('team_leader', coalesce(c.team_leader, '')),
                                          ('case_manager', coalesce(c.case_manager, ''))) AS d(dimension, key)
                   WHERE c.district_id = $1 AND c.status = 'open' GROUP BY 1, 2""", district)),
            "open_task_counts": rows(await conn.fetch(
                """SELECT coalesce(t.school_id, ''), t.due_date, count(*) FROM tasks t
                   LEFT JOIN cases c ON c.case_id = t.case_id
                   WHERE t.district_id = $1 AND t.status = 'open' AND t.due_date IS NOT NULL
                     AND c.status IS DISTINCT FROM 'transferred_out' GROUP BY 1, 2""", district)),
            "district_open_task_counts": rows(await conn.fetch(
                """SELECT t.due_date, count(*) FROM tasks t LEFT JOIN cases c ON c.case_id = t.case_id
                   WHERE t.district_id = $1 AND t.status = 'open' AND t.due_date IS NOT NULL
                     AND c.status IS DISTINCT FROM 'transferred_out' GROUP BY 1""", district)),
            "district_weekly_openings": rows(await conn.fetch(
                """SELECT week, trigger_kind, sum(opened) FROM weekly_openings WHERE district_id = $1
                   GROUP BY 1, 2""", district)),
            "case_transferred_out": rows(await conn.fetch(
                """SELECT t.task_id, coalesce(c.status = 'transferred_out', false) FROM tasks t
                   LEFT JOIN cases c ON c.case_id = t.case_id WHERE t.district_id = $1""", district)),
        },
    }


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(ops=task_operations)
async def test_the_counters_equal_a_recount_after_any_mix_of_case_and_task_writes(cases_pool, ops):
    """Migration 007's counters (the district's totals, open tasks by school and due date)
    and each task's case_transferred_out equal a recount from the cases and tasks, after any
    mix of the writes the service makes (from a start of cases with tasks): cases opened, transferred in with no school here,
    closed, reopened, moved, reassigned, transferred out, deleted; tasks assigned (with or
    without a case, with or without a due date), joining a case, completed, delivered with a
    transferred case (also after the case was transferred out again), linked to a roster
    student's school, deleted. The board shows the
    recount for the district and for any set of schools, the oldest overdue tasks too."""
    district = f"d-{uuid.uuid4().hex[:8]}"
    async with cases_pool.acquire() as conn:
        students = {}
        for n, school in enumerate(SCHOOLS):
            students[school] = uuid.uuid4()
            await conn.execute(
                """INSERT INTO students (student_id, district_id, source_id, school_id, school_ids, grade, given_name,
                                         family_name, status, as_of)
                   VALUES ($1, $2, $3, $4, ARRAY[$4], '05', 'Ana', 'Reyes', 'active', now())""",
                students[school], district, f"S{n}", school)
        for op in START + ops:
            await apply(conn, district, students, op)
        found = await counters(conn, district)
        assert found["kept"] == found["recomputed"], ops
        cases = [dict(r) for r in await conn.fetch("SELECT * FROM cases WHERE district_id = $1", district)]
        for schools in SCOPES:
            board = await store.dashboard(conn, district_id=district, schools=schools, today=TODAY)
            assert shown(board) == expected(cases, schools), (ops, schools)
            count, oldest = await recomputed(conn, district, schools)
            assert board["overdue_tasks"]["count"] == count, (ops, schools)
            assert [(r["task_id"], r["case_number"]) for r in board["overdue_tasks"]["oldest"]] == oldest, (ops, schools)
            weekly = await conn.fetch(
                """SELECT week, trigger_kind, sum(opened)::bigint AS opened FROM weekly_openings
                   WHERE district_id = $1 AND ($2::text[] IS NULL OR school_id = ANY($2::text[]))
                     AND week >= date_trunc('week', $3::date)::date - 7 * 11 GROUP BY 1, 2 ORDER BY 1, 2""",
                district, schools, TODAY)
            assert board["opened_by_week"] == [dict(r) for r in weekly], (ops, schools)


async def test_the_counters_kept_before_migration_010_show_the_same_boards_after_it(postgres_url):
    """Migration 010 removes the counter rows it no longer keeps (a school's cases with no
    team, leader or manager; the district's rows by school) from counters kept since 002:
    the boards read after it show what a recount of the cases says."""
    from importlib import import_module
    from urllib.parse import urlsplit, urlunsplit

    from services.kit import db

    dsn = urlunsplit(urlsplit(postgres_url)._replace(path=f"/t{uuid.uuid4().hex[:10]}_cases"))
    await db.ensure_database(dsn)
    conn = await db.connect(dsn)
    try:
        migrations = db.migrations_for("cases", import_module("services.cases.app").definition().directory)
        before = [m for m in migrations if not m.name.startswith("cases/01")]
        assert len(before) < len(migrations)
        await db.migrate(conn, before)
        district = "d-migrated"
        for n in range(30):
            await conn.execute(
                """INSERT INTO cases (case_id, district_id, case_number, student_id, school_id, status, trigger_kind,
                                      source_event_id, opened_at, team_name, team_leader, case_manager)
                   VALUES ($1, $2, $3, $4, $5, $6, 'attendance', $7, now(), $8, $9, $10)""",
                uuid.uuid4(), district, f"2026-{n:05d}", uuid.uuid4(), SCHOOLS[n % 3],
                "closed" if n % 7 == 0 else "open", uuid.uuid4(), TEAMS[n % 3], PEOPLE[n // 3 % 3], PEOPLE[n // 9 % 3])
        await db.migrate(conn, migrations)
        cases = [dict(r) for r in await conn.fetch("SELECT * FROM cases WHERE district_id = $1", district)]
        for schools in (None, SCHOOLS[:1], SCHOOLS[1:]):
            board = await store.dashboard(conn, district_id=district, schools=schools, today=date(2026, 11, 2))
            assert shown(board) == expected(cases, schools), schools
        assert not await conn.fetchval("SELECT count(*) FROM open_case_counts WHERE dimension <> 'school' AND key = ''")
    finally:
        await conn.close()
