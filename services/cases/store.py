"""The cases service's SQL. Runs inside the caller's transaction; never commits."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from uuid import UUID

import asyncpg

from contracts.transfers import CaseDelivered, TransferredStudent
from services.cases.domain import Entry, OpenCase, trigger_case
from services.cases.events_sql import case_opened_events
from services.kit import db

_STUDENT_LOCKS = 1  # advisory lock namespaces of this service
_REQUEST_LOCKS = 2


async def lock_students(conn: asyncpg.Connection, students: Iterable[tuple[str, str]]) -> None:
    """One student's triggers, roster events and case actions take turns until commit
    (across partitions and instances), keyed by (district, SIS id), which every path knows:
    "is a case open?" is answered once per student at a time, and a trigger cannot start
    waiting for a student just as the student arrives unseen. Students share 1,024 locks,
    taken in one order (a deadlock is retried)."""
    await db.lock_until_commit(conn, _STUDENT_LOCKS, students, buckets=1024)


def student_key(district_id: str, student_id: UUID) -> tuple[str, str]:
    """A student's lock key by id, for the paths that know the id but not (yet) the SIS id: a
    transferred case's delivery, a transfer person's link. The roster's events take both keys
    of a student in one call, so a delivery cannot start waiting for a student just as the
    student arrives unseen."""
    return (district_id, f"student:{student_id}")


# ---------------------------------------------------------------------------- students


async def project_students(conn: asyncpg.Connection, rows: list[tuple]) -> None:
    """rows: (student_id, district_id, source_id, school_id, grade, given_name, family_name, status, as_of,
    school_ids, birth_date): school_ids every school the student is enrolled in (domain.student_schools)."""
    if rows:
        await conn.execute(
            """INSERT INTO students (student_id, district_id, source_id, school_id, grade, given_name, family_name,
                                     status, as_of, school_ids, birth_date)
               SELECT i, d, src, sc, g, gn, fn, st, at, scs::text[], bd
               FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                           $7::text[], $8::text[], $9::timestamptz[], $10::text[], $11::date[])
                    AS r(i, d, src, sc, g, gn, fn, st, at, scs, bd)
               ON CONFLICT (student_id) DO UPDATE SET school_id = EXCLUDED.school_id, grade = EXCLUDED.grade,
                   given_name = EXCLUDED.given_name, family_name = EXCLUDED.family_name, status = EXCLUDED.status,
                   as_of = EXCLUDED.as_of, school_ids = EXCLUDED.school_ids, birth_date = EXCLUDED.birth_date
               WHERE students.as_of <= EXCLUDED.as_of""",
            *(list(c) for c in zip(*((*r[:9], db.text_array(r[9]), r[10]) for r in rows), strict=True)),
        )


async def withdraw_students(conn: asyncpg.Connection, rows: list[tuple]) -> None:
    """rows: (student_id, as_of)."""
    if rows:
        await conn.execute(
            """UPDATE students s SET status = 'withdrawn', as_of = r.at
               FROM unnest($1::uuid[], $2::timestamptz[]) AS r(id, at)
               WHERE s.student_id = r.id AND s.as_of <= r.at""",
            *(list(c) for c in zip(*rows, strict=True)),
        )


async def student(conn: asyncpg.Connection, district_id: str, student_id: UUID) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM students WHERE district_id = $1 AND student_id = $2",
                               district_id, student_id)


# ---------------------------------------------------------------------------- triggers waiting for the roster


async def wait_for_students(conn: asyncpg.Connection, triggers: list) -> None:
    if triggers:
        await conn.executemany(
            """INSERT INTO waiting_triggers (event_id, district_id, student_source_id, occurred_at, event_type, payload)
               VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (event_id) DO NOTHING""",
            [(t.event_id, t.district_id, t.student_source_id, t.occurred_at, t.event_type,
              json.loads(t.model_dump_json())) for t in triggers],
        )


async def take_waiting(conn: asyncpg.Connection, pairs: set[tuple[str, str]]) -> list[asyncpg.Record]:
    """Remove and return the triggers that waited for these (district, SIS id), oldest first."""
    if not pairs:
        return []
    districts, sources = zip(*pairs, strict=True)
    return await conn.fetch(
        """WITH taken AS (
               DELETE FROM waiting_triggers w USING unnest($1::text[], $2::text[]) AS k(d, src)
               WHERE w.district_id = k.d AND w.student_source_id = k.src
               RETURNING w.event_type, w.payload, w.occurred_at, w.event_id
           )
           SELECT * FROM taken ORDER BY occurred_at, event_id""",
        list(districts), list(sources),
    )


# ---------------------------------------------------------------------------- the dictionary


async def dictionaries(conn: asyncpg.Connection, districts: Iterable[str]) -> dict[tuple[str, str], Entry]:
    rows = await conn.fetch(
        "SELECT district_id, trigger_kind, enabled, enabled_at FROM dictionary WHERE district_id = ANY($1::text[])",
        sorted(set(districts)),
    )
    return {(r["district_id"], r["trigger_kind"]): Entry(r["enabled"], r["enabled_at"]) for r in rows}


async def set_entry(conn: asyncpg.Connection, district_id: str, kind: str, enabled: bool, by: str,
                    at: datetime) -> bool:
    """Returns False when the entry already was so (nothing recorded)."""
    before = await conn.fetchrow(
        "SELECT enabled FROM dictionary WHERE district_id = $1 AND trigger_kind = $2 FOR UPDATE", district_id, kind)
    if (before["enabled"] if before else False) == enabled:
        return False
    await conn.execute(
        """INSERT INTO dictionary (district_id, trigger_kind, enabled, enabled_at, changed_by, changed_at)
           VALUES ($1, $2, $3, CASE WHEN $3 THEN $5::timestamptz END, $4, $5)
           ON CONFLICT (district_id, trigger_kind) DO UPDATE SET enabled = $3,
               enabled_at = CASE WHEN $3 THEN $5::timestamptz END, changed_by = $4, changed_at = $5""",
        district_id, kind, enabled, by, at,
    )
    await conn.execute(
        "INSERT INTO dictionary_history (district_id, trigger_kind, enabled, changed_by, changed_at) "
        "VALUES ($1, $2, $3, $4, $5)", district_id, kind, enabled, by, at)
    return True


# ---------------------------------------------------------------------------- cases


async def open_cases(conn: asyncpg.Connection, student_ids: Iterable[UUID]) -> dict[UUID, UUID]:
    """The case each student's triggers join (domain.trigger_case), for the students with an
    open case."""
    async with db.probing_by_index(conn):
        rows = await conn.fetch(f"SELECT k.id AS student_id, {_OPEN_CASE_COLUMNS} FROM unnest($1::uuid[]) AS k(id) "
                                f"JOIN LATERAL ({_OPEN_CASES_OF.format(student='k.id')}) c ON true",
                                list(set(student_ids)))
    return _trigger_cases(rows)


# A student's open cases, one index probe per student (cases_one_open_per_student, which
# holds every open case since migration 011; see 009 for why the probe needs such an index). Written as a lateral probe, not
# `student_id = ANY($1) AND status = 'open'`: with statistics taken before a burst of
# openings (autovacuum lags behind a busy consumer), the planner read that as "few open
# cases" and scanned every open case for each batch (a bitmap of cases_open_by_school,
# filtered by the array): 68 ms a batch at 90,000 open cases, and more with every case
# opened (bench/cases.py --only throughput). OFFSET 0 keeps the probe a probe: a subquery
# the planner may not flatten into a join it could answer by scanning the table. And with
# sequential scans off (db.probing_by_index): a generic plan cached while cases was empty
# probed by reading every case, for each student, as a burst opened them.
_OPEN_CASE_COLUMNS = "c.case_id, c.transferred_in, c.opened_at"
_OPEN_CASES_OF = ("SELECT oc.case_id, oc.transferred_in_from IS NOT NULL AS transferred_in, oc.opened_at "
                  "FROM cases oc WHERE oc.student_id = {student} AND oc.status = 'open' OFFSET 0")


def _trigger_cases(rows) -> dict[UUID, UUID]:
    found: dict[UUID, list[OpenCase]] = {}
    for r in rows:
        if r["case_id"] is not None:
            found.setdefault(r["student_id"], []).append(OpenCase(r["case_id"], r["transferred_in"], r["opened_at"]))
    return {student: trigger_case(cases) for student, cases in found.items()}


async def students_for_triggers(conn: asyncpg.Connection, pairs: set[tuple[str, str]]
                                ) -> tuple[dict[tuple[str, str], asyncpg.Record], dict[UUID, UUID]]:
    """The students these (district, SIS id) name, and the case each one's triggers join
    (domain.trigger_case) where one is open, in one statement. Each student is found by
    its own probe of students_by_source_id: joined to the keys, the planner (expecting a
    handful of matches) hashed the whole students table for every batch of triggers
    (27 ms a batch at 92,000 students, 85 ms at 200,000)."""
    if not pairs:
        return {}, {}
    districts, sources = zip(*pairs, strict=True)
    # Probes by index whatever the statistics say (db.probing_by_index): a generic plan made
    # while cases was empty read every case for each probe as a burst of triggers opened them.
    async with db.probing_by_index(conn):
        rows = await conn.fetch(
            f"""SELECT s.student_id, s.district_id, s.source_id, s.school_id, {_OPEN_CASE_COLUMNS}
                FROM unnest($1::text[], $2::text[]) AS k(d, src)
                JOIN LATERAL (SELECT st.student_id, st.district_id, st.source_id, st.school_id FROM students st
                              WHERE st.district_id = k.d AND st.source_id = k.src OFFSET 0) s ON true
                LEFT JOIN LATERAL ({_OPEN_CASES_OF.format(student='s.student_id')}) c ON true""",
            list(districts), list(sources),
        )
    return {(r["district_id"], r["source_id"]): r for r in rows}, _trigger_cases(rows)


async def next_case_numbers(conn: asyncpg.Connection, district_id: str, year: int, count: int) -> int:
    """Reserve `count` numbers for the district's year; returns the first."""
    last = await conn.fetchval(
        """INSERT INTO case_numbers (district_id, year, last) VALUES ($1, $2, $3)
           ON CONFLICT (district_id, year) DO UPDATE SET last = case_numbers.last + $3
           RETURNING last""",
        district_id, year, count,
    )
    return last - count + 1


# One batch's cases opened by triggers, and their CaseOpened written into the outbox by the
# same statement (events_sql.case_opened_events), in the batch's order.
_OPEN_CASES = f"""
WITH opened AS MATERIALIZED (
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::uuid[], $5::text[], $6::text[], $7::uuid[],
                         $8::timestamptz[], $9::text[], $10::text[], $11::text[]) WITH ORDINALITY
         AS r(case_id, district_id, case_number, student_id, school_id, trigger_kind, source_event_id, opened_at,
              case_manager, student_source_id, correlation_id, n)
), saved AS (
    INSERT INTO cases (case_id, district_id, case_number, student_id, school_id, status, trigger_kind,
                       source_event_id, opened_at, case_manager)
    SELECT case_id, district_id, case_number, student_id, school_id, 'open', trigger_kind, source_event_id,
           opened_at, case_manager
    FROM opened ORDER BY n
)
{case_opened_events("SELECT * FROM opened", topic="$12::text", occurred_at="$13::text", order_by="e.n")}"""


async def insert_cases(conn: asyncpg.Connection, topic: str, occurred_at: str, rows: list[tuple]) -> None:
    """Open cases and write their CaseOpened into the outbox for `topic` (the deployment's
    cases.v1), occurred_at (ISO 8601 text) the moment they opened. rows: (case_id, district_id,
    case_number, student_id, school_id, trigger_kind, source_event_id, opened_at, case_manager,
    student_source_id, correlation_id)."""
    if rows:
        await conn.execute(_OPEN_CASES, *(list(c) for c in zip(*rows, strict=True)), topic, occurred_at)


async def school_case_managers(conn: asyncpg.Connection, schools: Iterable[tuple[str, str]]) -> dict[tuple, str]:
    """(district_id, school_id) -> the school's default case manager, where one is set."""
    schools = sorted(set(schools))
    if not schools:
        return {}
    rows = await conn.fetch(
        """SELECT m.district_id, m.school_id, m.case_manager
           FROM unnest($1::text[], $2::text[]) AS k(district_id, school_id)
           JOIN school_case_managers m USING (district_id, school_id)""",
        [d for d, _ in schools], [sc for _, sc in schools])
    return {(r["district_id"], r["school_id"]): r["case_manager"] for r in rows}


async def set_school_case_manager(conn: asyncpg.Connection, district_id: str, school_id: str,
                                  case_manager: str | None, changed_by: str) -> None:
    """None: the school has no default case manager."""
    if case_manager is None:
        await conn.execute("DELETE FROM school_case_managers WHERE district_id = $1 AND school_id = $2",
                           district_id, school_id)
        return
    await conn.execute(
        """INSERT INTO school_case_managers (district_id, school_id, case_manager, changed_by, changed_at)
           VALUES ($1, $2, $3, $4, now())
           ON CONFLICT (district_id, school_id) DO UPDATE SET case_manager = EXCLUDED.case_manager,
               changed_by = EXCLUDED.changed_by, changed_at = EXCLUDED.changed_at""",
        district_id, school_id, case_manager, changed_by)


async def add_timeline(conn: asyncpg.Connection, rows: list[tuple]) -> None:
    """rows: (district_id, student_id, case_id, at, kind, summary, actor, event_id), in order.
    Binary COPY (entry ids follow the rows' order): a batch of triggers writes two entries a
    case opened, and COPY takes them in a quarter less time than INSERT ... unnest, with
    half the service's CPU (2,800 entries: 49 ms and 5 ms of client CPU, against 64 and 10)."""
    if rows:
        await conn.copy_records_to_table("timeline", records=rows, columns=_TIMELINE_COLUMNS)


_TIMELINE_COLUMNS = ["district_id", "student_id", "case_id", "at", "kind", "summary", "actor", "event_id"]


async def upsert_tasks(conn: asyncpg.Connection, rows: list[tuple]) -> None:
    """rows: (task_id, district_id, student_id, case_id, title, assignee_email, due_date, assigned_by, assigned_at).
    A task the API already stored keeps its row; it only gains the case its trigger opened."""
    if rows:
        await conn.execute(
            """INSERT INTO tasks (task_id, district_id, student_id, case_id, title, assignee_email, due_date, status,
                                  assigned_by, assigned_at, school_id)
               SELECT t, d, s, c, ti, a, due, 'open', by, at,
                      (SELECT st.school_id FROM students st WHERE st.student_id = s)
               FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::uuid[], $5::text[], $6::text[], $7::date[],
                           $8::text[], $9::timestamptz[]) AS r(t, d, s, c, ti, a, due, by, at)
               ON CONFLICT (task_id) DO UPDATE SET case_id = coalesce(tasks.case_id, EXCLUDED.case_id)""",
            *(list(c) for c in zip(*rows, strict=True)),
        )


async def case_row(conn: asyncpg.Connection, district_id: str, case_id: UUID, lock: bool = False):
    return await conn.fetchrow(
        f"""SELECT c.*, s.given_name, s.family_name, s.source_id AS student_source_id,
                   s.transferred_from AS student_transferred_from,
                   (SELECT count(*) FROM tasks t WHERE t.case_id = c.case_id) AS tasks_total,
                   (SELECT count(*) FROM tasks t WHERE t.case_id = c.case_id AND t.status = 'done') AS tasks_done
            FROM cases c JOIN students s ON s.student_id = c.student_id
            WHERE c.district_id = $1 AND c.case_id = $2 {'FOR UPDATE OF c' if lock else ''}""",
        district_id, case_id,
    )


SEARCH_COLUMNS = """c.case_id, c.case_number, c.status, c.student_id, s.given_name, s.family_name, c.school_id,
                    c.team_name, c.team_leader, c.case_manager, c.trigger_kind, c.opened_at, c.closed_at,
                    (SELECT count(*) FROM tasks t WHERE t.case_id = c.case_id) AS tasks_total,
                    (SELECT count(*) FROM tasks t WHERE t.case_id = c.case_id AND t.status = 'done') AS tasks_done"""


async def search(conn: asyncpg.Connection, *, district_id: str, schools: list[str] | None, status: str | None,
                 case_number: str | None, person: str | None, school_id: str | None, team_name: str | None,
                 team_leader: str | None, case_manager: str | None, after: str | None, limit: int):
    """Cases by number, person of concern (name or SIS id), building, team, leader or manager.
    Planned for the filters given each time (a generic plan would ignore the right index)."""
    async with conn.transaction():
        await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
        return await _search(conn, district_id, schools, status, case_number, person, school_id, team_name,
                             team_leader, case_manager, after, limit)


async def _search(conn, *args):
    return await conn.fetch(
        f"""SELECT {SEARCH_COLUMNS}
            FROM cases c JOIN students s ON s.student_id = c.student_id
            WHERE c.district_id = $1 AND ($2::text[] IS NULL OR coalesce(c.school_id, '') = ANY($2::text[]))
              AND ($3::text IS NULL OR c.status = $3) AND ($4::text IS NULL OR c.case_number = $4)
              AND ($5::text IS NULL OR lower(s.family_name) LIKE lower($5) || '%'
                   OR lower(s.given_name || ' ' || s.family_name) LIKE lower($5) || '%' OR s.source_id = $5)
              AND ($6::text IS NULL OR c.school_id = $6)
              AND ($7::text IS NULL OR lower(c.team_name) = lower($7))
              AND ($8::text IS NULL OR lower(c.team_leader) = lower($8))
              AND ($9::text IS NULL OR lower(c.case_manager) = lower($9))
              AND ($10::text IS NULL OR c.case_number > $10)
            ORDER BY c.case_number LIMIT $11""",
        *args,
    )


async def timeline(conn: asyncpg.Connection, student_id: UUID, limit: int, after: int):
    return await conn.fetch(
        """SELECT t.entry_id, t.at, t.kind, t.summary, t.actor, t.case_id, c.case_number, n.body AS note
           FROM timeline t LEFT JOIN cases c ON c.case_id = t.case_id
           LEFT JOIN notes n ON t.kind = 'note' AND n.note_id = t.event_id
           WHERE t.student_id = $1 AND t.entry_id > $3 ORDER BY t.at, t.entry_id LIMIT $2""",
        student_id, limit, after,
    )


async def cases_of_student(conn: asyncpg.Connection, student_id: UUID):
    """Every case of the student, wherever it was opened, with its tasks' progress."""
    return await conn.fetch(
        """SELECT case_id, case_number, status,
                  (SELECT count(*) FROM tasks t WHERE t.case_id = c.case_id) AS tasks_total,
                  (SELECT count(*) FROM tasks t WHERE t.case_id = c.case_id AND t.status = 'done') AS tasks_done
           FROM cases c WHERE student_id = $1 ORDER BY opened_at""", student_id)


async def task(conn: asyncpg.Connection, district_id: str, task_id: UUID, lock: bool = False):
    """A task with its student's school, and its case's status (a case transferred out takes
    no more work)."""
    return await conn.fetchrow(
        f"""SELECT t.*, s.school_id, c.status AS case_status, c.case_number, c.transferred_to
            FROM tasks t JOIN students s ON s.student_id = t.student_id LEFT JOIN cases c ON c.case_id = t.case_id
            WHERE t.district_id = $1 AND t.task_id = $2 {'FOR UPDATE OF t' if lock else ''}""",
        district_id, task_id,
    )


async def complete_task(conn: asyncpg.Connection, task_id: UUID, at: datetime, by: str) -> None:
    await conn.execute("UPDATE tasks SET status = 'done', completed_at = $2, completed_by = $3 WHERE task_id = $1",
                       task_id, at, by)


async def assigned_tasks(conn: asyncpg.Connection, *, district_id: str, assignee_email: str, status: str | None,
                         due_before, overdue_on, after: tuple | None, limit: int) -> list:
    """An assignee's tasks in the district, soonest due first (no due date last), then by id.
    status: 'open', 'done' or None (both); due_before: only tasks due before that date;
    overdue_on: only open tasks due before that date (today); after: the (due_date,
    task_id) the previous page ended at. The tasks of a case transferred out are no one's work
    here any more (seed 003): not listed."""
    return await conn.fetch(
        """SELECT t.task_id, t.title, t.status, t.due_date, t.student_id, t.case_id, c.case_number, t.school_id,
                  t.assigned_by, t.assigned_at, t.completed_at
           FROM tasks t LEFT JOIN cases c ON c.case_id = t.case_id
           WHERE t.district_id = $1 AND t.assignee_email = $2 AND c.status IS DISTINCT FROM 'transferred_out'
             AND ($3::text IS NULL OR t.status = $3)
             AND ($4::date IS NULL OR t.due_date < $4)
             AND ($5::date IS NULL OR (t.status = 'open' AND t.due_date < $5))
             AND ($6::date IS NULL AND $7::uuid IS NULL
                  OR (coalesce(t.due_date, 'infinity'::date), t.task_id) > (coalesce($6::date, 'infinity'::date), $7))
           ORDER BY coalesce(t.due_date, 'infinity'::date), t.task_id
           LIMIT $8""",
        district_id, assignee_email, status, due_before, overdue_on, *(after or (None, None)), limit)


# ---------------------------------------------------------------------------- dashboard

_TOP = 50  # rows per ranking and overdue tasks listed


async def dashboard(conn: asyncpg.Connection, *, district_id: str, schools: list[str] | None, today,
                    weeks: int = 12) -> dict:
    """Open cases by school, team, team leader and case manager; overdue tasks (open, due
    before today, not of a case transferred out: no one's work here, seed 003), the oldest
    first; cases opened by week and trigger kind. schools: None for the whole district.

    From counters kept as cases and tasks change (migrations 002, 007, 010) and the open
    tasks' indexes: a few hundred rows, and one a school for the district's schools ranked,
    whatever the number of cases. The whole district reads the district's own counters; a
    set of schools sums theirs."""
    if schools is None:
        return await _district_board(conn, district_id, today, weeks)
    return await _schools_board(conn, district_id, schools, today, weeks)


def _ranked(rows) -> list[dict]:
    return [{"key": r["key"] or None, "open_cases": r["open_cases"]} for r in rows]


def _board(open_cases: int, ranked: dict[str, list[dict]], overdue_count: int, overdue, weekly) -> dict:
    return {
        "open_cases": open_cases,
        "by_school": ranked["school"],
        "by_team": ranked["team"],
        "by_team_leader": ranked["team_leader"],
        "by_case_manager": ranked["case_manager"],
        "overdue_tasks": {"count": overdue_count, "oldest": [dict(r) for r in overdue]},
        "opened_by_week": [dict(r) for r in weekly],
    }


_DIMENSIONS = ("school", "team", "team_leader", "case_manager")
_OVERDUE_COLUMNS = """t.task_id, t.title, t.assignee_email, t.due_date, t.case_id, c.case_number, t.student_id,
                      t.school_id"""


async def _district_board(conn, district_id: str, today, weeks: int) -> dict:
    # Teams, leaders and managers ranked by the district's counters' index; schools from
    # their own counters (one row a school, migration 010), ranked here.
    rows = await conn.fetch(
        f"""SELECT d.dimension, r.key, r.open_cases
            FROM unnest($2::text[]) AS d(dimension) CROSS JOIN LATERAL (
                SELECT key, open_cases FROM district_open_case_counts
                WHERE district_id = $1 AND dimension = d.dimension AND open_cases > 0
                ORDER BY open_cases DESC, key LIMIT {_TOP}) AS r
            UNION ALL
            (SELECT 'school', school_id, open_cases FROM open_case_counts
             WHERE district_id = $1 AND dimension = 'school' AND key = '' AND open_cases > 0
             ORDER BY open_cases DESC, school_id LIMIT {_TOP})""", district_id, [d for d in _DIMENSIONS if d != "school"])
    ranked = {d: _ranked(r for r in rows if r["dimension"] == d) for d in _DIMENSIONS}
    open_cases = await conn.fetchval(
        """SELECT coalesce(sum(open_cases), 0)::bigint FROM district_open_case_counts
           WHERE district_id = $1 AND dimension = 'district'""", district_id)
    overdue = await conn.fetch(
        f"""SELECT {_OVERDUE_COLUMNS}
            FROM tasks t LEFT JOIN cases c ON c.case_id = t.case_id
            WHERE t.district_id = $1 AND t.status = 'open' AND NOT t.case_transferred_out AND t.due_date < $2
            ORDER BY t.due_date, t.task_id LIMIT {_TOP}""", district_id, today)
    overdue_count = await conn.fetchval(
        """SELECT coalesce(sum(open_tasks), 0)::bigint FROM district_open_task_counts
           WHERE district_id = $1 AND due_date < $2""", district_id, today)
    weekly = await conn.fetch(
        """SELECT week, trigger_kind, opened FROM district_weekly_openings
           WHERE district_id = $1 AND week >= date_trunc('week', $2::date)::date - 7 * ($3 - 1)
           ORDER BY 1, 2""", district_id, today, weeks)
    return _board(open_cases, ranked, overdue_count, overdue, weekly)


async def _schools_board(conn, district_id: str, schools: list[str], today, weeks: int) -> dict:
    # The school counters keep their school in school_id (their key is empty); the others
    # are per school and key named, summed over the schools; the cases with no team (leader,
    # manager) are the schools' open cases less those with one (migration 010).
    rows = await conn.fetch(
        f"""WITH kept AS (SELECT dimension, school_id, key, open_cases FROM open_case_counts
                          WHERE district_id = $1 AND school_id = ANY($2::text[]))
            SELECT dimension, key, open_cases FROM (
                SELECT dimension, key, open_cases,
                       row_number() OVER (PARTITION BY dimension ORDER BY open_cases DESC, key) AS rank
                FROM (SELECT dimension, CASE WHEN dimension = 'school' THEN school_id ELSE key END AS key,
                             sum(open_cases)::bigint AS open_cases
                      FROM kept GROUP BY 1, 2
                      UNION ALL
                      SELECT d.dimension, '',
                             sum(CASE WHEN k.dimension = 'school' THEN k.open_cases ELSE -k.open_cases END)::bigint
                      FROM unnest($3::text[]) AS d(dimension) JOIN kept k ON k.dimension IN ('school', d.dimension)
                      GROUP BY 1) AS summed
                WHERE open_cases > 0) AS ranked
            WHERE rank <= {_TOP} ORDER BY dimension, rank""", district_id, schools,
        [d for d in _DIMENSIONS if d != "school"])
    ranked = {d: _ranked(r for r in rows if r["dimension"] == d) for d in _DIMENSIONS}
    open_cases = await conn.fetchval(
        """SELECT coalesce(sum(open_cases), 0)::bigint FROM open_case_counts
           WHERE district_id = $1 AND school_id = ANY($2::text[]) AND dimension = 'school'""", district_id, schools)
    # Each school's oldest from its own part of the index, then the oldest of those: walking
    # the district's overdue tasks for a school's few (or none) read them all.
    overdue = await conn.fetch(
        f"""SELECT {_OVERDUE_COLUMNS}
            FROM (SELECT DISTINCT unnest($2::text[]) AS school_id) AS s CROSS JOIN LATERAL (
                SELECT * FROM tasks t
                WHERE t.district_id = $1 AND coalesce(t.school_id, '') = s.school_id
                  AND t.status = 'open' AND NOT t.case_transferred_out AND t.due_date < $3
                ORDER BY t.due_date, t.task_id LIMIT {_TOP}) AS t
            LEFT JOIN cases c ON c.case_id = t.case_id
            ORDER BY t.due_date, t.task_id LIMIT {_TOP}""", district_id, schools, today)
    overdue_count = await conn.fetchval(
        """SELECT coalesce(sum(open_tasks), 0)::bigint FROM open_task_counts
           WHERE district_id = $1 AND school_id = ANY($2::text[]) AND due_date < $3""", district_id, schools, today)
    weekly = await conn.fetch(
        """SELECT week, trigger_kind, sum(opened)::bigint AS opened FROM weekly_openings
           WHERE district_id = $1 AND school_id = ANY($2::text[])
             AND week >= date_trunc('week', $3::date)::date - 7 * ($4 - 1)
           GROUP BY 1, 2 ORDER BY 1, 2""", district_id, schools, today, weeks)
    return _board(open_cases, ranked, overdue_count, overdue, weekly)


# ---------------------------------------------------------------------------- the District Transfer Portal (seed 003)


async def lock_request(conn: asyncpg.Connection, request_id: UUID) -> None:
    """A transfer request's answers are written by one transaction at a time."""
    await db.lock_until_commit(conn, _REQUEST_LOCKS, [request_id], buckets=1024)


async def answered(conn: asyncpg.Connection, request_id: UUID, case_ids: Iterable[UUID]) -> set[UUID]:
    """The request's cases already exported or found unavailable."""
    rows = await conn.fetch("SELECT case_id FROM case_exports WHERE request_id = $1 AND case_id = ANY($2::uuid[])",
                            request_id, list(case_ids))
    return {r["case_id"] for r in rows}


async def record_answers(conn: asyncpg.Connection, request_id: UUID, district_id: str, rows: list[tuple]) -> None:
    """rows: (case_id, outcome 'exported' | 'unavailable', parts, reason)."""
    if rows:
        await conn.executemany(
            """INSERT INTO case_exports (request_id, case_id, district_id, outcome, parts, reason)
               VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING""",
            [(request_id, case_id, district_id, outcome, parts, reason) for case_id, outcome, parts, reason in rows],
        )


async def cases_to_export(conn: asyncpg.Connection, district_id: str, case_ids: Iterable[UUID]) -> dict[UUID, asyncpg.Record]:
    """The district's cases among these, with their person of concern (personal data: never
    logged)."""
    rows = await conn.fetch(
        """SELECT c.*, s.source_id AS student_source_id, s.given_name, s.family_name, s.birth_date, s.grade
           FROM cases c JOIN students s ON s.student_id = c.student_id
           WHERE c.district_id = $1 AND c.case_id = ANY($2::uuid[])""", district_id, list(case_ids))
    return {r["case_id"]: r for r in rows}


async def histories(conn: asyncpg.Connection, case_ids: list[UUID]) -> tuple[dict, dict, dict]:
    """Each case's timeline entries (oldest first), tasks (by assignment) and notes (by
    writing), by case id; a note on one of the case's tasks is among the case's notes with
    its task_id."""
    timeline: dict[UUID, list] = {c: [] for c in case_ids}
    tasks: dict[UUID, list] = {c: [] for c in case_ids}
    notes: dict[UUID, list] = {c: [] for c in case_ids}
    for r in await conn.fetch(
            """SELECT case_id, at, kind, summary, actor, event_id FROM timeline WHERE case_id = ANY($1::uuid[])
               ORDER BY case_id, at, entry_id""", case_ids):
        timeline[r["case_id"]].append(r)
    for r in await conn.fetch("SELECT * FROM tasks WHERE case_id = ANY($1::uuid[]) ORDER BY assigned_at, task_id",
                              case_ids):
        tasks[r["case_id"]].append(r)
    for r in await conn.fetch(
            """SELECT n.*, coalesce(t.case_id, n.case_id) AS of_case FROM notes n
               LEFT JOIN tasks t ON t.task_id = n.task_id
               WHERE n.case_id = ANY($1::uuid[]) OR t.case_id = ANY($1::uuid[])
               ORDER BY n.written_at, n.note_id""", case_ids):
        if r["of_case"] in notes:
            notes[r["of_case"]].append(r)
    return timeline, tasks, notes


async def cases_to_transfer_out(conn: asyncpg.Connection, district_id: str, case_ids: Iterable[UUID],
                                lock: bool = False) -> list[asyncpg.Record]:
    return await conn.fetch(
        f"""SELECT c.case_id, c.case_number, c.status, c.student_id, c.transferred_to, c.transferred_out_request,
                   s.source_id AS student_source_id
            FROM cases c JOIN students s ON s.student_id = c.student_id
            WHERE c.district_id = $1 AND c.case_id = ANY($2::uuid[]) ORDER BY c.case_id
            {'FOR UPDATE OF c' if lock else ''}""", district_id, list(case_ids))


async def transfer_out(conn: asyncpg.Connection, rows: list[tuple]) -> None:
    """rows: (case_id, destination_district_id, request_id, accepted_by, at). The case keeps
    everything it had, read-only."""
    if rows:
        await conn.execute(
            """UPDATE cases c SET status = 'transferred_out', transferred_to = r.dest, transferred_out_request = r.req,
                                  transferred_out_by = r.by, transferred_out_at = r.at
               FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::text[], $5::timestamptz[]) AS r(id, dest, req, by, at)
               WHERE c.case_id = r.id""",
            *(list(c) for c in zip(*rows, strict=True)),
        )


async def transferred_case(conn: asyncpg.Connection, case_id: UUID) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT case_id, district_id, case_number, student_id, school_id FROM cases "
                               "WHERE case_id = $1", case_id)


async def district_of_student(conn: asyncpg.Connection, student_id: UUID) -> str | None:
    return await conn.fetchval("SELECT district_id FROM students WHERE student_id = $1", student_id)


async def wait_for_student(conn: asyncpg.Connection, delivery: CaseDelivered) -> None:
    """Keep a delivery for a roster student this service does not know yet."""
    await conn.execute(
        """INSERT INTO waiting_deliveries (event_id, district_id, student_id, occurred_at, payload)
           VALUES ($1, $2, $3, $4, $5) ON CONFLICT (event_id) DO NOTHING""",
        delivery.event_id, delivery.district_id, delivery.student_id, delivery.occurred_at,
        json.loads(delivery.model_dump_json()))


async def take_waiting_deliveries(conn: asyncpg.Connection, students: set[tuple[str, UUID]]) -> list[asyncpg.Record]:
    """Remove and return the deliveries that waited for these (district, student id), oldest first."""
    if not students:
        return []
    districts, ids = zip(*students, strict=True)
    return await conn.fetch(
        """WITH taken AS (
               DELETE FROM waiting_deliveries w USING unnest($1::text[], $2::uuid[]) AS k(d, id)
               WHERE w.district_id = k.d AND w.student_id = k.id
               RETURNING w.payload, w.occurred_at, w.event_id
           )
           SELECT * FROM taken ORDER BY occurred_at, event_id""",
        list(districts), list(ids),
    )


async def transfer_person(conn: asyncpg.Connection, person_id: UUID, district_id: str, source_district_id: str,
                          request_id: UUID, student: TransferredStudent, at: datetime) -> asyncpg.Record:
    """The person made from a transfer's information, made the first time they arrive: a
    students row with no SIS id and no school here (migration 005)."""
    await conn.execute(
        """INSERT INTO students (student_id, district_id, source_id, school_id, grade, given_name, family_name,
                                 status, as_of, school_ids, birth_date, transferred_from, transfer_request_id)
           VALUES ($1, $2, NULL, NULL, $3, $4, $5, 'active', $6, '{}', $7, $8, $9)
           ON CONFLICT (student_id) DO NOTHING""",
        person_id, district_id, student.grade, student.given_name, student.family_name, at, student.birth_date,
        source_district_id, request_id)
    return await conn.fetchrow("SELECT * FROM students WHERE student_id = $1", person_id)


async def insert_transferred_case(conn: asyncpg.Connection, *, case_id: UUID, district_id: str, case_number: str,
                                  student_id: UUID, school_id: str | None, delivery: CaseDelivered) -> None:
    """The destination's case, as it stood in the sending district, marked transferred in."""
    c = delivery.history.case
    await conn.execute(
        """INSERT INTO cases (case_id, district_id, case_number, student_id, school_id, status, trigger_kind,
                              source_event_id, opened_at, team_name, team_leader, case_manager, closed_at, closed_by,
                              close_reason, transferred_in_from, transferred_in_request, transferred_in_case_id,
                              transferred_in_case_number, transferred_in_by, transferred_in_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $8, $17, $18, $19, $20)
           ON CONFLICT (case_id) DO NOTHING""",
        case_id, district_id, case_number, student_id, school_id, c.status, c.trigger_kind, delivery.request_id,
        c.opened_at, c.team_name, c.team_leader, c.case_manager, c.closed_at, c.closed_by, c.close_reason,
        delivery.source_district_id, c.case_id, c.case_number, delivery.accepted_by, delivery.accepted_at)


async def claim_part(conn: asyncpg.Connection, case_id: UUID, part: int, parts: int, event_id: UUID) -> bool:
    """True the first time this part of the case is applied."""
    return await conn.fetchval(
        """INSERT INTO delivered_parts (case_id, part, parts, event_id) VALUES ($1, $2, $3, $4)
           ON CONFLICT DO NOTHING RETURNING true""", case_id, part, parts, event_id) or False


async def parts_applied(conn: asyncpg.Connection, case_id: UUID) -> int:
    return await conn.fetchval("SELECT count(*) FROM delivered_parts WHERE case_id = $1", case_id)


async def add_transferred_timeline(conn: asyncpg.Connection, rows: list[tuple]) -> None:
    """rows: (district_id, student_id, case_id, at, kind, summary, actor, event_id, transfer_key), in
    order; an entry whose key is already there is not added again."""
    if rows:
        await conn.execute(
            """INSERT INTO timeline (district_id, student_id, case_id, at, kind, summary, actor, event_id, transfer_key)
               SELECT d, s, c, at, k, su, a, e, tk
               FROM unnest($1::text[], $2::uuid[], $3::uuid[], $4::timestamptz[], $5::text[], $6::text[],
                           $7::text[], $8::uuid[], $9::uuid[]) WITH ORDINALITY AS r(d, s, c, at, k, su, a, e, tk, n)
               ORDER BY n
               ON CONFLICT (transfer_key) WHERE transfer_key IS NOT NULL DO NOTHING""",
            *(list(c) for c in zip(*rows, strict=True)),
        )


async def add_transferred_tasks(conn: asyncpg.Connection, rows: list[tuple]) -> None:
    """rows: (task_id, district_id, student_id, case_id, school_id, title, assignee_email, due_date, status,
    assigned_by, assigned_at, completed_at, completed_by)."""
    if rows:
        await conn.execute(
            """INSERT INTO tasks (task_id, district_id, student_id, case_id, school_id, title, assignee_email, due_date,
                                  status, assigned_by, assigned_at, completed_at, completed_by)
               SELECT * FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::uuid[], $5::text[], $6::text[], $7::text[],
                                    $8::date[], $9::text[], $10::text[], $11::timestamptz[], $12::timestamptz[],
                                    $13::text[])
               ON CONFLICT (task_id) DO NOTHING""",
            *(list(c) for c in zip(*rows, strict=True)),
        )


async def add_transferred_notes(conn: asyncpg.Connection, rows: list[tuple]) -> None:
    """rows: (note_id, district_id, student_id, case_id, task_id, author, body, written_at)."""
    if rows:
        await conn.execute(
            """INSERT INTO notes (note_id, district_id, student_id, case_id, task_id, author, body, written_at)
               SELECT * FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::uuid[], $5::uuid[], $6::text[], $7::text[],
                                    $8::timestamptz[])
               ON CONFLICT (note_id) DO NOTHING""",
            *(list(c) for c in zip(*rows, strict=True)),
        )


async def link_person(conn: asyncpg.Connection, district_id: str, person_id: UUID, student_id: UUID,
                      school_id: str, by: str, at: datetime) -> list[asyncpg.Record]:
    """Move a transfer person's cases, tasks, notes and timeline to a roster student; their
    cases take the student's school. The person stays, linked. Returns the cases moved."""
    moved = await conn.fetch(
        """UPDATE cases SET student_id = $3, school_id = coalesce(school_id, $4)
           WHERE district_id = $1 AND student_id = $2 RETURNING case_id, case_number""",
        district_id, person_id, student_id, school_id)
    await conn.execute("UPDATE tasks SET student_id = $3, school_id = coalesce(school_id, $4) "
                       "WHERE district_id = $1 AND student_id = $2", district_id, person_id, student_id, school_id)
    for table in ("notes", "timeline"):
        await conn.execute(f"UPDATE {table} SET student_id = $3 WHERE district_id = $1 AND student_id = $2",
                           district_id, person_id, student_id)
    await conn.execute("UPDATE students SET linked_to = $2, linked_by = $3, linked_at = $4 WHERE student_id = $1",
                       person_id, student_id, by, at)
    return moved


async def suggestion_candidates(conn: asyncpg.Connection, district_id: str, family_name: str, birth_date,
                                schools: list[str] | None) -> list[asyncpg.Record]:
    """Roster students of the district (of these schools; None: all) with the family name or
    the birth date given: domain.suggestion ranks them."""
    return await conn.fetch(
        """SELECT student_id, source_id, given_name, family_name, birth_date, school_id, grade FROM students
           WHERE district_id = $1 AND source_id IS NOT NULL AND ($4::text[] IS NULL OR school_ids && $4::text[])
             AND (lower(family_name) = lower($2) OR birth_date = $3)
           ORDER BY student_id LIMIT 500""", district_id, family_name, birth_date, schools)
