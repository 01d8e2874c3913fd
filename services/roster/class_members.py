"""Who is in which class today, as the roster publishes it.

A district's files state enrolment records, each by its sourcedId, with the dates it
counts (domain.enrolment_span); several records may name one person in one class. The
roster publishes class members: one per class and person, while at least one of their
records is current (domain.is_current) and the person and class are on the roster
(EnrollmentAdded when one starts or changes, EnrollmentRemoved when it ends). So a
consumer never needs to know about terms: when a spring section starts or an enrolment's
last day passes, the roster says so that day, without a new file (`follow_the_calendar`).

Both an import and the calendar step work the same way: they name the (class, person)
pairs that may have changed in a temporary table `touched` (or, when most of the district
may have changed, take the whole district), then `diff` computes what those pairs should
be now, `write_events` writes the events into the outbox and `apply` stores the new
state, in the caller's transaction.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime

import asyncpg

from services.kit import db, logs
from services.kit.settings import KafkaSettings
from services.roster import domain
from services.roster.events_sql import MEMBER_ADDED, MEMBER_REMOVED

log = logs.get("caseflow.roster.calendar")

_DISTRICT_LOCKS = 1  # advisory lock namespace: one writer of a district's roster at a time
_LONG = 3600.0


async def lock_district(conn: asyncpg.Connection, district_id: str) -> None:
    """Until commit, this transaction alone changes the district's roster (imports and the
    calendar step of one district never interleave)."""
    await db.lock_until_commit(conn, _DISTRICT_LOCKS, [district_id], buckets=1 << 16)


# $1 district, $2 today. The record's span falls back to its class's terms' dates
# (domain.enrolment_span) and counts from its first day to its last (domain.is_current); a
# member's role is the first of domain.ROLE_PRECEDENCE among its records.
_PRECEDENCE = "(ARRAY[" + ", ".join(f"'{role}'" for role in domain.ROLE_PRECEDENCE) + "]::text[])"


def current(klass: str = "c", today: str = "$2") -> str:
    """SQL: the record `e` counts today (its class's dates in `klass`)."""
    return (f"coalesce(e.begin_date, {klass}.starts, '-infinity'::date) <= {today}::date "
            f"AND {today}::date <= coalesce(e.end_date, {klass}.ends, 'infinity'::date)")


_PEOPLE = """(SELECT source_id, student_id AS person_id, true AS is_student FROM students
             WHERE district_id = $1 AND status = 'active'
             UNION ALL
             SELECT source_id, staff_id, false FROM staff WHERE district_id = $1 AND status = 'active')"""


def _members_of(records: str, klass: str = "c", where: str = "") -> str:
    """The class members `records` (aliased e, their class `klass`) make today: one per
    class and person, while the person is on the roster."""
    return f"""
        SELECT e.class_source_id, e.user_source_id,
               {_PRECEDENCE}[min(array_position({_PRECEDENCE}, e.role))] AS role, bool_or(e.is_primary) AS is_primary,
               {klass}.class_id, {klass}.school_id, p.person_id
        FROM {records}
        JOIN {_PEOPLE} p ON p.source_id = e.user_source_id AND p.is_student = (e.role = 'student')
        WHERE {where}{current(klass)}
        GROUP BY e.class_source_id, e.user_source_id, {klass}.class_id, {klass}.school_id, p.person_id"""


# Of the touched pairs: their records first (so the planner sees how many), then the
# members they make.
_TOUCHED_DESIRED = [
    """CREATE TEMP TABLE current_records ON COMMIT DROP AS
       SELECT e.*, c.class_id, c.school_id, c.starts, c.ends FROM touched t
       JOIN enrollments e ON e.district_id = $1 AND e.class_source_id = t.class_source_id
                         AND e.user_source_id = t.user_source_id
       JOIN classes c ON c.district_id = $1 AND c.source_id = e.class_source_id""",
    f"""CREATE TEMP TABLE desired_members ON COMMIT DROP AS {_members_of("current_records e", klass="e")}""",
]
# Of the whole district, by scanning (a first import, a new school year).
_WHOLE_DESIRED = [
    f"""CREATE TEMP TABLE desired_members ON COMMIT DROP AS
        {_members_of("enrollments e JOIN classes c ON c.district_id = $1 AND c.source_id = e.class_source_id",
                     where="e.district_id = $1 AND ")}""",
]
_REMOVALS = """
CREATE TEMP TABLE member_removals ON COMMIT DROP AS
SELECT m.person_id, m.role, m.class_id, m.class_source_id, m.user_source_id, m.school_id
FROM {members}
WHERE {where}NOT EXISTS (SELECT 1 FROM desired_members d WHERE d.class_source_id = m.class_source_id
                  AND d.user_source_id = m.user_source_id AND d.person_id = m.person_id)"""
_ADDITIONS = """
CREATE TEMP TABLE member_additions ON COMMIT DROP AS
SELECT d.person_id, d.role, d.class_id, d.class_source_id, d.user_source_id, d.school_id, d.is_primary,
       m.class_source_id IS NOT NULL AS existed
FROM desired_members d
LEFT JOIN class_members m ON m.district_id = $1 AND m.user_source_id = d.user_source_id
                         AND m.class_source_id = d.class_source_id
WHERE m.class_source_id IS NULL
   OR (m.role, m.is_primary, m.person_id, m.class_id, m.school_id)
      IS DISTINCT FROM (d.role, d.is_primary, d.person_id, d.class_id, d.school_id)"""
_TOUCHED_MEMBERS = """touched t JOIN class_members m ON m.district_id = $1 AND m.user_source_id = t.user_source_id
                                         AND m.class_source_id = t.class_source_id"""


_APPLY = [
    """DELETE FROM class_members m USING member_removals r
       WHERE m.district_id = $1 AND m.user_source_id = r.user_source_id AND m.class_source_id = r.class_source_id""",
    """UPDATE class_members m SET role = a.role, is_primary = a.is_primary, class_id = a.class_id,
           person_id = a.person_id, school_id = a.school_id
       FROM member_additions a
       WHERE a.existed AND m.district_id = $1 AND m.user_source_id = a.user_source_id
         AND m.class_source_id = a.class_source_id""",
    """INSERT INTO class_members (district_id, class_source_id, user_source_id, role, is_primary, class_id, person_id,
                                 school_id)
       SELECT $1, class_source_id, user_source_id, role, is_primary, class_id, person_id, school_id
       FROM member_additions WHERE NOT existed""",
]


async def diff(conn: asyncpg.Connection, district_id: str, today: date, *, whole: bool = False) -> dict[str, int]:
    """The class members to remove and to add (or change) as of today: of the pairs in the
    temporary table `touched`, or with whole=True of the whole district (read by scanning:
    no nested loops over millions of rows)."""
    if whole:
        await conn.execute("SET LOCAL enable_nestloop = off")
        statements = [*_WHOLE_DESIRED, _REMOVALS.format(members="class_members m", where="m.district_id = $1 AND ")]
    else:
        await conn.execute("ANALYZE touched", timeout=_LONG)
        statements = [*_TOUCHED_DESIRED, _REMOVALS.format(members=_TOUCHED_MEMBERS, where="")]
    for statement in [*statements, _ADDITIONS]:
        await conn.execute(statement, *params(statement, district_id, today), timeout=_LONG)
        await conn.execute(f"ANALYZE {statement.split()[3]}", timeout=_LONG)
    if whole:
        await conn.execute("SET LOCAL enable_nestloop = on")
    row = await conn.fetchrow("SELECT (SELECT count(*) FROM member_additions) AS added, "
                              "(SELECT count(*) FROM member_removals) AS removed")
    return {"enrollments_added": row["added"], "enrollments_removed": row["removed"]}


def params(statement: str, *values):
    """The first n values, n being the highest $n the statement uses."""
    used = max((i for i in range(1, len(values) + 1) if f"${i}" in statement), default=0)
    return values[:used]


async def apply(conn: asyncpg.Connection, district_id: str) -> None:
    for statement in _APPLY:
        await conn.execute(statement, district_id, timeout=_LONG)


async def write_events(conn: asyncpg.Connection, district_id: str, correlation_id: str, kafka: KafkaSettings,
                       which=(MEMBER_REMOVED, MEMBER_ADDED)) -> None:
    occurred = datetime.now(UTC).isoformat()
    for event in which:
        await conn.execute(event.sql, district_id, occurred, correlation_id, kafka.topic(event.topic), timeout=_LONG)


# ------------------------------------------------------------------------- the calendar

# The records whose currency may differ between two days lo < hi: a first day in (lo, hi],
# or a last day in [lo, hi), their own or (where they have none) their class's.
_CROSSINGS = """
CREATE TEMP TABLE touched ON COMMIT DROP AS
SELECT DISTINCT class_source_id, user_source_id FROM (
    SELECT e.class_source_id, e.user_source_id FROM enrollments e
    WHERE e.district_id = $1 AND e.begin_date > $2 AND e.begin_date <= $3
    UNION ALL
    SELECT e.class_source_id, e.user_source_id FROM enrollments e
    WHERE e.district_id = $1 AND e.end_date >= $2 AND e.end_date < $3
    UNION ALL
    SELECT e.class_source_id, e.user_source_id FROM classes c
    JOIN enrollments e ON e.district_id = c.district_id AND e.class_source_id = c.source_id
    WHERE c.district_id = $1 AND ((e.begin_date IS NULL AND c.starts > $2 AND c.starts <= $3)
                               OR (e.end_date IS NULL AND c.ends >= $2 AND c.ends < $3))
) x"""
async def evaluated_on(conn: asyncpg.Connection, district_id: str) -> date | None:
    return await conn.fetchval("SELECT evaluated_on FROM district_calendar WHERE district_id = $1", district_id)


async def bring_to(conn: asyncpg.Connection, district_id: str, today: date, kafka: KafkaSettings) -> dict[str, int]:
    """In the caller's transaction: bring the district's class members from the day they
    were last evaluated to `today`, publishing each change. The first time, every record
    is looked at."""
    await lock_district(conn, district_id)
    since = await evaluated_on(conn, district_id)
    if since == today:
        return {"enrollments_added": 0, "enrollments_removed": 0}
    if since is not None:
        await conn.execute(_CROSSINGS, district_id, min(since, today), max(since, today), timeout=_LONG)
    counts = await diff(conn, district_id, today, whole=since is None)
    await write_events(conn, district_id, f"calendar:{district_id}:{today.isoformat()}", kafka)
    await apply(conn, district_id)
    await mark_evaluated(conn, district_id, today)
    for table in ("touched", "current_records", "desired_members", "member_removals", "member_additions"):
        await conn.execute(f"DROP TABLE IF EXISTS {table}")
    return counts


async def mark_evaluated(conn: asyncpg.Connection, district_id: str, today: date) -> None:
    await conn.execute(
        """INSERT INTO district_calendar (district_id, evaluated_on) VALUES ($1, $2)
           ON CONFLICT (district_id) DO UPDATE SET evaluated_on = EXCLUDED.evaluated_on""",
        district_id, today)


async def follow_the_calendar(pool: asyncpg.Pool, kafka: KafkaSettings, today: date,
                              failed_districts: list[str] | None = None) -> dict[str, dict[str, int]]:
    """One step for every district: class members as of `today`. A district that fails is
    logged, added to `failed_districts` and left for the next step; the others go on.
    Raises when every district failed."""
    async with pool.acquire() as conn:
        districts = [r[0] for r in await conn.fetch(
            """SELECT district_id FROM enrollments GROUP BY district_id
               UNION SELECT district_id FROM class_members GROUP BY district_id""")]
    changed: dict[str, dict[str, int]] = {}
    failed: Exception | None = None
    done = 0
    for district_id in sorted(districts):
        try:
            async with pool.acquire() as conn, conn.transaction():
                counts = await bring_to(conn, district_id, today, kafka)
        except Exception as e:  # noqa: BLE001 - one district's failure must not hold the others back
            log.error("calendar step failed for a district; trying again at the next step", district_id=district_id,
                      error=repr(e))
            failed = e
            if failed_districts is not None:
                failed_districts.append(district_id)
            continue
        done += 1
        if any(counts.values()):
            changed[district_id] = counts
            log.info("class members follow the calendar", district_id=district_id, today=today.isoformat(),
                     **counts)
    if failed is not None and done == 0:
        raise failed  # no district could be stepped: the step itself is broken (the task is down)
    return changed


async def keep_class_members_current(runtime) -> None:
    """Background job of the roster service: each step, every district's class members as of
    today (the service's clock: ImportOptions.today)."""
    options = runtime.definition.options
    while True:
        failed: list[str] = []
        changed = await follow_the_calendar(runtime.pool, runtime.settings.kafka, options.today(), failed)
        if failed:
            runtime.tasks.failing(f"calendar step failed for {', '.join(failed)}")
        else:
            runtime.tasks.succeeded()
        if changed:
            runtime.relay.wake()
        await asyncio.sleep(options.calendar_poll_seconds)
