"""Importing a OneRoster package: validate, diff against the district's roster, then
persist and publish only the changes, in one transaction.

The rows are streamed from the package into temporary staging tables with COPY; the diff
and the change events are computed by PostgreSQL in set operations, so a city-sized
package never passes through Python one event at a time. A crash anywhere rolls the
transaction back: the roster is either the old one or the new one, and running the import
again finishes the job. An import that would withdraw more than a set share of the
district's active students is held until someone confirms it.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from contracts.roster import RosterImportCompleted
from contracts.topics import ROSTER_CLASSES, ROSTER_ENROLLMENTS, ROSTER_STAFF, ROSTER_STUDENTS
from services.kit import logs, outbox
from services.kit.crash import crashpoint
from services.kit.settings import HOME, KafkaSettings
from services.roster.oneroster import Known, Package, PackageRejected, Problem, Reader

log = logs.get("caseflow.roster.import")

SOURCE = "caseflow.roster"
_LONG = 3600.0  # seconds: one statement of a city-sized import may take minutes
DEFAULT_WIPE_SHARE = 0.20


@dataclass(frozen=True)
class ImportOptions:
    """The roster's import settings (CASEFLOW_ROSTER_*)."""

    wipe_share: float = DEFAULT_WIPE_SHARE
    packages: Path = HOME / "roster-packages"  # uploads, kept while an import is held
    max_upload_bytes: int = 2 * 1024**3
    drop_folder: Path | None = None  # <drop>/<district>/inbox/ ... processed/ failed/ held/
    drop_poll_seconds: float = 2.0

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> ImportOptions:
        env = dict(os.environ if env is None else env)
        drop = env.get("CASEFLOW_ROSTER_DROP_FOLDER")
        return cls(
            wipe_share=float(env.get("CASEFLOW_ROSTER_WIPE_SHARE", DEFAULT_WIPE_SHARE)),
            packages=Path(env.get("CASEFLOW_ROSTER_PACKAGES", HOME / "roster-packages")),
            max_upload_bytes=int(env.get("CASEFLOW_ROSTER_MAX_UPLOAD_BYTES", 2 * 1024**3)),
            drop_folder=Path(drop) if drop else None,
            drop_poll_seconds=float(env.get("CASEFLOW_ROSTER_DROP_POLL_SECONDS", 2.0)),
        )


@dataclass
class ImportResult:
    import_id: uuid.UUID
    district_id: str
    status: str  # applied, held, dry_run, rejected
    message: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    error_count: int = 0
    warning_count: int = 0
    examples: dict[str, list[str]] = field(default_factory=dict)  # a few source ids per change kind
    seconds: dict[str, float] = field(default_factory=dict)  # time per phase: read, diff, apply


async def run_import(
    pool: asyncpg.Pool,
    *,
    district_id: str,
    path: Path,
    kafka: KafkaSettings,
    origin: str = "cli",
    created_by: str | None = None,
    dry_run: bool = False,
    confirm: bool = False,
    wipe_share: float = DEFAULT_WIPE_SHARE,
    import_id: uuid.UUID | None = None,
    on_record: asyncio.Event | None = None,
) -> ImportResult:
    """`on_record` is set once the import is on record as running, so whoever started it in
    the background can answer with a location that already resolves."""
    import_id = import_id or uuid.uuid4()
    async with pool.acquire() as running:  # holds the import's lock until it ends; see recover_interrupted
        await running.execute("SELECT pg_advisory_lock($1)", _lock_key(import_id))
        return await _run(pool, running, district_id=district_id, path=path, kafka=kafka, origin=origin,
                          created_by=created_by, dry_run=dry_run, confirm=confirm, wipe_share=wipe_share,
                          import_id=import_id, on_record=on_record or asyncio.Event())


def _lock_key(import_id: uuid.UUID) -> int:
    return int.from_bytes(import_id.bytes[:8], "big", signed=True)


async def recover_interrupted(pool: asyncpg.Pool) -> list[uuid.UUID]:
    """Imports left 'running' by a process that died: nothing of theirs was applied (one
    transaction), so say so, and let the district send the package again. An import that
    another live instance is running holds its lock and is left alone."""
    interrupted = []
    async with pool.acquire() as conn:
        for row in await conn.fetch("SELECT import_id FROM imports WHERE status = 'running'"):
            key = _lock_key(row["import_id"])
            if await conn.fetchval("SELECT pg_try_advisory_lock($1)", key):
                try:
                    done = await conn.execute(
                        """UPDATE imports SET status = 'failed', finished_at = now(),
                               message = 'interrupted: the roster service stopped during this import; nothing '
                                         'was changed; send the package again'
                           WHERE import_id = $1 AND status = 'running'""",
                        row["import_id"],
                    )
                    if done.endswith("1"):
                        interrupted.append(row["import_id"])
                finally:
                    await conn.execute("SELECT pg_advisory_unlock($1)", key)
    return interrupted


async def recover_on_start(runtime) -> None:
    """Background job of the roster service: settle the imports a stop interrupted."""
    interrupted = await recover_interrupted(runtime.pool)
    if interrupted:
        log.warning("imports interrupted by a stop, marked failed", imports=[str(i) for i in interrupted])


async def _run(pool: asyncpg.Pool, running, *, district_id: str, path: Path, kafka: KafkaSettings, origin: str,
               created_by: str | None, dry_run: bool, confirm: bool, wipe_share: float,
               import_id: uuid.UUID, on_record: asyncio.Event) -> ImportResult:
    await running.execute(
        """INSERT INTO imports (import_id, district_id, origin, package_name, package_path, status, created_by)
           VALUES ($1, $2, $3, $4, $5, 'running', $6)
           ON CONFLICT (import_id) DO UPDATE SET status = 'running', finished_at = NULL""",
        import_id, district_id, origin, path.name, str(path), created_by,
    )
    on_record.set()
    try:
        package = Package(path)
    except PackageRejected as e:
        result = ImportResult(import_id, district_id, "rejected", message=str(e))
        await _finish(pool, result)
        return result
    with package:
        try:
            async with pool.acquire() as conn:
                result = await _import(conn, package, import_id, district_id, kafka, dry_run, confirm, wipe_share)
        except PackageRejected as e:  # found while streaming a file: the transaction was rolled back
            result = ImportResult(import_id, district_id, "rejected", message=str(e))
    if result.status != "applied":  # applied imports finish inside their own transaction
        await _finish(pool, result)
    log.info("roster import finished", import_id=str(import_id), district_id=district_id, status=result.status,
             counts=result.counts, errors=result.error_count, warnings=result.warning_count)
    return result


class _Held(Exception):
    pass


async def _import(conn, package: Package, import_id, district_id: str, kafka: KafkaSettings, dry_run: bool,
                  confirm: bool, wipe_share: float) -> ImportResult:
    result = ImportResult(import_id, district_id, "applied")
    tx = conn.transaction()
    await tx.start()
    try:
        await conn.execute("SET LOCAL TimeZone = 'UTC'")
        await conn.execute(_STAGING)
        clock = time.perf_counter()
        reader = Reader(package, district_id, await _held_ids(conn, district_id, package))
        await _stage(conn, package, reader)
        # Temporary tables get no statistics by themselves: without them the planner may
        # pick nested loops over a million rows.
        await conn.execute(_STAGING_INDEXES, timeout=_LONG)
        await conn.execute("ANALYZE stage_schools, stage_classes, stage_students, stage_staff, stage_birth_dates, "
                           "stage_enrollments, students, staff, classes, enrollments", timeout=_LONG)
        result.seconds["read_and_stage"] = time.perf_counter() - clock
        clock = time.perf_counter()
        for statement in _diff_statements(package):
            await conn.execute(statement, *([district_id] if "$1" in statement else []), timeout=_LONG)
            if statement.startswith("CREATE TEMP TABLE"):
                await conn.execute(f"ANALYZE {statement.split()[3]}", timeout=_LONG)
        result.counts = await _counts(conn)
        result.seconds["diff"] = time.perf_counter() - clock
        result.problems = reader.problems
        result.error_count = sum(1 for p in reader.problems if p.severity == "error") + max(
            0, reader.problem_count - len(reader.problems))
        result.warning_count = sum(1 for p in reader.problems if p.severity == "warning")

        active = await conn.fetchval("SELECT count(*) FROM students WHERE district_id = $1 AND status = 'active'",
                                     district_id)
        withdrawing = result.counts["students_withdrawn"]
        if active and withdrawing / active > wipe_share and not confirm and not dry_run:
            result.status = "held"
            result.message = (f"held: this import would withdraw {withdrawing:,} of {active:,} active students "
                              f"({withdrawing / active:.0%}, more than {wipe_share:.0%}). If that is right, confirm it.")
            raise _Held
        if dry_run:
            result.status = "dry_run"
            result.examples = await _examples(conn)
            raise _Held

        crashpoint("import.before_apply")
        clock = time.perf_counter()
        await _apply(conn, import_id, district_id, kafka)
        crashpoint("import.after_apply")
        completed = RosterImportCompleted(
            district_id=district_id, import_id=import_id, counts=result.counts,
            rejected_rows=result.error_count, correlation_id=str(import_id), producer=SOURCE,
        )
        await outbox.write(conn, [outbox.message_for(completed, source=SOURCE, kafka=kafka)])
        await _record_problems(conn, result)
        await conn.execute(
            """UPDATE imports SET status = 'applied', summary = $2, error_count = $3, warning_count = $4,
                   package_path = NULL, finished_at = now(), message = $5 WHERE import_id = $1""",
            import_id, result.counts, result.error_count, result.warning_count, _applied_message(result),
        )
        result.message = _applied_message(result)
        await tx.commit()
        result.seconds["apply_and_commit"] = time.perf_counter() - clock
    except _Held:
        await tx.rollback()
    except BaseException:
        await tx.rollback()
        raise
    return result


def _applied_message(result: ImportResult) -> str:
    changes = sum(result.counts.values())
    return f"applied: {changes:,} changes, {result.error_count:,} rows skipped, {result.warning_count:,} warnings"


async def _finish(pool: asyncpg.Pool, result: ImportResult) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await _record_problems(conn, result)
        await conn.execute(
            """UPDATE imports SET status = $2, message = $3, summary = $4, error_count = $5, warning_count = $6,
                   finished_at = now(),
                   package_path = CASE WHEN $2 = 'held' THEN package_path END
               WHERE import_id = $1""",
            result.import_id, result.status, result.message, result.counts, result.error_count, result.warning_count,
        )


async def _record_problems(conn, result: ImportResult) -> None:
    await conn.execute("DELETE FROM import_problems WHERE import_id = $1", result.import_id)
    if result.problems:
        await conn.copy_records_to_table(
            "import_problems",
            records=[(result.import_id, i, p.severity, p.file, p.line, p.column, p.value, p.reason)
                     for i, p in enumerate(result.problems)],
            columns=["import_id", "seq", "severity", "file", "line", "column", "value", "reason"],
        )


async def _held_ids(conn, district_id: str, package: Package) -> Known:
    """What rows may refer to beyond the package: the roster's own ids, for files not sent in bulk."""
    known = Known()
    if package.mode("orgs") != "bulk":
        known.schools = {r[0] for r in await conn.fetch("SELECT school_id FROM schools WHERE district_id = $1",
                                                        district_id)}
        known.schools |= {r[0] for r in await conn.fetch(
            "SELECT DISTINCT school_id FROM students WHERE district_id = $1", district_id)}
    if package.mode("classes") != "bulk":
        known.classes = {r[0]: (r[1], r[2]) for r in await conn.fetch(
            "SELECT source_id, school_id, class_type FROM classes WHERE district_id = $1", district_id)}
    if package.mode("users") != "bulk":
        known.users = {r[0]: "student" for r in await conn.fetch(
            "SELECT source_id FROM students WHERE district_id = $1 AND status = 'active'", district_id)}
        known.users.update({r[0]: r[1] for r in await conn.fetch(
            "SELECT source_id, role FROM staff WHERE district_id = $1 AND status = 'active'", district_id)})
    return known


async def _stage(conn, package: Package, reader: Reader) -> None:
    """Stream each file, in dependency order, through the reader into its staging table."""
    if package.mode("orgs") != "absent":
        await conn.copy_records_to_table("stage_schools", records=reader.schools(), timeout=_LONG)
    if package.mode("courses") != "absent":
        for _ in reader.courses():  # courses are only checked against, not kept
            pass
    if package.mode("classes") != "absent":
        await conn.copy_records_to_table("stage_classes", records=reader.classes(), timeout=_LONG)
    if package.mode("users") != "absent":
        staff: list[tuple] = []

        def students():
            for kind, row in reader.users():
                if kind == "student":
                    yield row
                else:
                    staff.append(row)  # a district has ~1 staff member for 15 students: fine in memory

        await conn.copy_records_to_table("stage_students", records=students(), timeout=_LONG)
        await conn.copy_records_to_table("stage_staff", records=staff, timeout=_LONG)
    if package.mode("demographics") != "absent":
        await conn.copy_records_to_table("stage_birth_dates", records=reader.birth_dates(), timeout=_LONG)
    if package.mode("enrollments") != "absent":
        await conn.copy_records_to_table("stage_enrollments", records=reader.enrollments(), timeout=_LONG)


async def _counts(conn) -> dict[str, int]:
    row = await conn.fetchrow(
        """SELECT
             (SELECT count(*) FROM student_changes WHERE change = 'enrolled') AS students_enrolled,
             (SELECT count(*) FROM student_changes WHERE change = 'updated') AS students_updated,
             (SELECT count(*) FROM student_withdrawals) AS students_withdrawn,
             (SELECT count(*) FROM staff_changes) AS staff_upserted,
             (SELECT count(*) FROM staff_deactivations) AS staff_deactivated,
             (SELECT count(*) FROM class_changes) AS classes_upserted,
             (SELECT count(*) FROM class_removals) AS classes_removed,
             (SELECT count(*) FROM enrollment_additions) AS enrollments_added,
             (SELECT count(*) FROM enrollment_removals) AS enrollments_removed"""
    )
    return dict(row)


async def _examples(conn, per_kind: int = 5) -> dict[str, list[str]]:
    queries = {
        "students_enrolled": "SELECT source_id FROM student_changes WHERE change = 'enrolled'",
        "students_updated": "SELECT source_id || ' (' || array_to_string(changed, ', ') || ')' FROM student_changes "
                            "WHERE change = 'updated'",
        "students_withdrawn": "SELECT source_id FROM student_withdrawals",
        "staff_upserted": "SELECT source_id FROM staff_changes",
        "staff_deactivated": "SELECT source_id FROM staff_deactivations",
        "classes_upserted": "SELECT source_id FROM class_changes",
        "classes_removed": "SELECT source_id FROM class_removals",
        "enrollments_added": "SELECT user_source_id || ' in ' || class_source_id FROM enrollment_additions",
        "enrollments_removed": "SELECT user_source_id || ' from ' || class_source_id FROM enrollment_removals",
    }
    return {kind: [r[0] for r in await conn.fetch(f"{sql} ORDER BY 1 LIMIT {per_kind}")]
            for kind, sql in queries.items()}


async def _apply(conn, import_id: uuid.UUID, district_id: str, kafka: KafkaSettings) -> None:
    """Write the changes and their events. Events for one person are inserted in the order
    they happened (removals before additions), so the relay publishes them in that order."""
    occurred = datetime.now(UTC).isoformat()
    params = [district_id, occurred, str(import_id)]
    topics = {t.name: kafka.topic(t.name) for t in (ROSTER_STUDENTS, ROSTER_STAFF, ROSTER_CLASSES, ROSTER_ENROLLMENTS)}
    for sql in _APPLY_STATE_BEFORE_EVENTS:
        await conn.execute(sql, district_id, timeout=_LONG)
    for event in _EVENTS:
        await conn.execute(event.sql, *params, topics[event.topic], timeout=_LONG)
    for sql in _APPLY_STATE_AFTER_EVENTS:
        await conn.execute(sql, district_id, timeout=_LONG)
    await conn.execute(
        """INSERT INTO last_file_rows (district_id, entity, source_id, import_id, file, line, row_data)
           SELECT $1, 'student', source_id, $2::uuid, 'users.csv', line,
                  json_build_object('school_id', school_id, 'grade', grade, 'status', status)
           FROM stage_students
           UNION ALL
           SELECT $1, 'class', source_id, $2::uuid, 'classes.csv', line,
                  json_build_object('school_id', school_id, 'class_type', class_type, 'title', title,
                                    'grades', grades, 'periods', periods, 'status', status)
           FROM stage_classes
           ON CONFLICT (district_id, entity, source_id) DO UPDATE SET
               import_id = EXCLUDED.import_id, file = EXCLUDED.file, line = EXCLUDED.line,
               row_data = EXCLUDED.row_data
           -- Unchanged rows keep the import that last changed what the file says about them:
           -- a daily re-import of the same roster rewrites nothing.
           WHERE (last_file_rows.line, last_file_rows.row_data) IS DISTINCT FROM (EXCLUDED.line, EXCLUDED.row_data)""",
        district_id, import_id, timeout=_LONG,
    )


# ---------------------------------------------------------------------------- the SQL

_STAGING = """
CREATE TEMP TABLE stage_schools (source_id text, name text, identifier text, status text) ON COMMIT DROP;
CREATE TEMP TABLE stage_classes (class_id uuid, source_id text, school_id text, class_type text, title text,
    class_code text, course_source_id text, grades text[], periods text[], status text, line int) ON COMMIT DROP;
CREATE TEMP TABLE stage_students (student_id uuid, source_id text, school_id text, grade text, given_name text,
    family_name text, email text, state_id text, status text, line int) ON COMMIT DROP;
CREATE TEMP TABLE stage_staff (staff_id uuid, source_id text, role text, given_name text, family_name text,
    email text, identifier text, school_ids text[], status text) ON COMMIT DROP;
CREATE TEMP TABLE stage_birth_dates (source_id text, birth_date date) ON COMMIT DROP;
CREATE TEMP TABLE stage_enrollments (class_source_id text, user_source_id text, role text, is_primary boolean,
    status text) ON COMMIT DROP;
"""

def _diff_statements(package: Package) -> list[str]:
    """The diff, one statement each; the package's modes are written in as TRUE/FALSE."""
    flags = {
        "users_bulk": package.mode("users") == "bulk",
        "birth_dates_sent": package.mode("demographics") != "absent",
        "classes_bulk": package.mode("classes") == "bulk",
        "enrollments_bulk": package.mode("enrollments") == "bulk",
    }
    sql = _DIFF.format(**{k: "TRUE" if v else "FALSE" for k, v in flags.items()})
    return [statement.strip() for statement in sql.split(";") if statement.strip()]


_STAGING_INDEXES = """
CREATE INDEX ON stage_students (student_id);
CREATE INDEX ON stage_staff (staff_id);
CREATE INDEX ON stage_classes (class_id);
CREATE INDEX ON stage_birth_dates (source_id);
CREATE INDEX ON stage_enrollments (class_source_id, user_source_id);
"""

# $1 is the district; {flags} are the package's file modes.
_DIFF = """
CREATE TEMP TABLE student_changes ON COMMIT DROP AS
SELECT * FROM (
    SELECT s.student_id, s.source_id, s.school_id, s.grade, s.given_name, s.family_name,
           CASE WHEN {birth_dates_sent} THEN b.birth_date ELSE c.birth_date END AS birth_date, s.email, s.state_id,
           CASE WHEN c.student_id IS NULL OR c.status = 'withdrawn' THEN 'enrolled' ELSE 'updated' END AS change,
           array_remove(ARRAY[
               CASE WHEN c.school_id IS DISTINCT FROM s.school_id THEN 'school_id' END,
               CASE WHEN c.grade IS DISTINCT FROM s.grade THEN 'grade' END,
               CASE WHEN c.given_name IS DISTINCT FROM s.given_name THEN 'given_name' END,
               CASE WHEN c.family_name IS DISTINCT FROM s.family_name THEN 'family_name' END,
               CASE WHEN {birth_dates_sent} AND c.birth_date IS DISTINCT FROM b.birth_date THEN 'birth_date' END,
               CASE WHEN c.email IS DISTINCT FROM s.email THEN 'email' END,
               CASE WHEN c.state_id IS DISTINCT FROM s.state_id THEN 'state_id' END
           ], NULL) AS changed
    FROM stage_students s
    LEFT JOIN stage_birth_dates b ON b.source_id = s.source_id
    LEFT JOIN students c ON c.student_id = s.student_id
    WHERE s.status = 'active'
) d
WHERE change = 'enrolled' OR cardinality(changed) > 0;

CREATE TEMP TABLE student_withdrawals ON COMMIT DROP AS
SELECT c.student_id, c.source_id, c.school_id, 'absent_from_bulk_file' AS reason
FROM students c
WHERE {users_bulk} AND c.district_id = $1 AND c.status = 'active'
  AND NOT EXISTS (SELECT 1 FROM stage_students s WHERE s.student_id = c.student_id AND s.status = 'active')
UNION ALL
SELECT c.student_id, c.source_id, c.school_id, 'tobedeleted'
FROM stage_students s JOIN students c ON c.student_id = s.student_id
WHERE NOT {users_bulk} AND s.status = 'tobedeleted' AND c.status = 'active';

CREATE TEMP TABLE staff_changes ON COMMIT DROP AS
SELECT s.* FROM stage_staff s LEFT JOIN staff c ON c.staff_id = s.staff_id
WHERE s.status = 'active'
  AND (c.staff_id IS NULL OR c.status = 'inactive'
       OR (c.role, c.given_name, c.family_name, c.email, c.identifier, c.school_ids)
          IS DISTINCT FROM (s.role, s.given_name, s.family_name, s.email, s.identifier, s.school_ids));

CREATE TEMP TABLE staff_deactivations ON COMMIT DROP AS
SELECT c.staff_id, c.source_id FROM staff c
WHERE {users_bulk} AND c.district_id = $1 AND c.status = 'active'
  AND NOT EXISTS (SELECT 1 FROM stage_staff s WHERE s.staff_id = c.staff_id AND s.status = 'active')
UNION ALL
SELECT c.staff_id, c.source_id FROM stage_staff s JOIN staff c ON c.staff_id = s.staff_id
WHERE NOT {users_bulk} AND s.status = 'tobedeleted' AND c.status = 'active';

CREATE TEMP TABLE class_changes ON COMMIT DROP AS
SELECT s.* FROM stage_classes s LEFT JOIN classes c ON c.class_id = s.class_id
WHERE s.status = 'active'
  AND (c.class_id IS NULL
       OR (c.school_id, c.class_type, c.title, c.class_code, c.course_source_id, c.grades, c.periods)
          IS DISTINCT FROM (s.school_id, s.class_type, s.title, s.class_code, s.course_source_id, s.grades, s.periods));

CREATE TEMP TABLE class_removals ON COMMIT DROP AS
SELECT c.class_id, c.source_id, c.school_id FROM classes c
WHERE {classes_bulk} AND c.district_id = $1
  AND NOT EXISTS (SELECT 1 FROM stage_classes s WHERE s.class_id = c.class_id AND s.status = 'active')
UNION ALL
SELECT c.class_id, c.source_id, c.school_id FROM stage_classes s JOIN classes c ON c.class_id = s.class_id
WHERE NOT {classes_bulk} AND s.status = 'tobedeleted';

CREATE TEMP TABLE enrollment_removals ON COMMIT DROP AS
SELECT e.class_source_id, e.user_source_id, e.role FROM enrollments e
WHERE e.district_id = $1 AND (
      ({enrollments_bulk} AND NOT EXISTS (SELECT 1 FROM stage_enrollments s WHERE s.class_source_id = e.class_source_id
                          AND s.user_source_id = e.user_source_id AND s.status = 'active'))
   OR (NOT {enrollments_bulk} AND EXISTS (SELECT 1 FROM stage_enrollments s WHERE s.class_source_id = e.class_source_id
                          AND s.user_source_id = e.user_source_id AND s.status = 'tobedeleted'))
   OR EXISTS (SELECT 1 FROM class_removals r WHERE r.source_id = e.class_source_id)
   -- A withdrawn student, or a deactivated teacher, leaves their classes too.
   OR (e.role = 'student' AND EXISTS (SELECT 1 FROM student_withdrawals w WHERE w.source_id = e.user_source_id))
   OR (e.role <> 'student' AND EXISTS (SELECT 1 FROM staff_deactivations d WHERE d.source_id = e.user_source_id)));

CREATE TEMP TABLE enrollment_additions ON COMMIT DROP AS
SELECT s.class_source_id, s.user_source_id, s.role, s.is_primary FROM stage_enrollments s
LEFT JOIN enrollments e ON e.district_id = $1 AND e.class_source_id = s.class_source_id
                       AND e.user_source_id = s.user_source_id
WHERE s.status = 'active'
  AND NOT EXISTS (SELECT 1 FROM class_removals r WHERE r.source_id = s.class_source_id)
  AND (e.class_source_id IS NULL OR (e.role, e.is_primary) IS DISTINCT FROM (s.role, s.is_primary));
"""

# State that events read from (ids of people and classes) is written first; removals of
# classes and enrolments are applied after their events are built from the current rows.
# Each person has at most one event per statement but for enrolments, whose order among
# themselves does not matter; across kinds, the order of the statements is the order.
_APPLY_STATE_BEFORE_EVENTS = [
    """INSERT INTO schools (district_id, school_id, name, identifier)
       SELECT $1, source_id, name, identifier FROM stage_schools WHERE status = 'active'
       ON CONFLICT (district_id, school_id) DO UPDATE SET name = EXCLUDED.name, identifier = EXCLUDED.identifier""",
    """INSERT INTO students (student_id, district_id, source_id, school_id, grade, given_name, family_name,
                            birth_date, email, state_id, status, withdrawn_at)
       SELECT student_id, $1, source_id, school_id, grade, given_name, family_name, birth_date, email, state_id,
              'active', NULL FROM student_changes
       ON CONFLICT (student_id) DO UPDATE SET school_id = EXCLUDED.school_id, grade = EXCLUDED.grade,
           given_name = EXCLUDED.given_name, family_name = EXCLUDED.family_name, birth_date = EXCLUDED.birth_date,
           email = EXCLUDED.email, state_id = EXCLUDED.state_id, status = 'active', withdrawn_at = NULL,
           updated_at = now()""",
    """UPDATE students c SET status = 'withdrawn', withdrawn_at = now(), updated_at = now()
       FROM student_withdrawals w WHERE c.student_id = w.student_id AND c.district_id = $1""",
    """INSERT INTO staff (staff_id, district_id, source_id, role, given_name, family_name, email, identifier,
                         school_ids, status)
       SELECT staff_id, $1, source_id, role, given_name, family_name, email, identifier, school_ids, 'active'
       FROM staff_changes
       ON CONFLICT (staff_id) DO UPDATE SET role = EXCLUDED.role, given_name = EXCLUDED.given_name,
           family_name = EXCLUDED.family_name, email = EXCLUDED.email, identifier = EXCLUDED.identifier,
           school_ids = EXCLUDED.school_ids, status = 'active', updated_at = now()""",
    """UPDATE staff c SET status = 'inactive', updated_at = now()
       FROM staff_deactivations d WHERE c.staff_id = d.staff_id AND c.district_id = $1""",
    """INSERT INTO classes (class_id, district_id, source_id, school_id, class_type, title, class_code,
                           course_source_id, grades, periods)
       SELECT class_id, $1, source_id, school_id, class_type, title, class_code, course_source_id, grades, periods
       FROM class_changes
       ON CONFLICT (class_id) DO UPDATE SET school_id = EXCLUDED.school_id, class_type = EXCLUDED.class_type,
           title = EXCLUDED.title, class_code = EXCLUDED.class_code, course_source_id = EXCLUDED.course_source_id,
           grades = EXCLUDED.grades, periods = EXCLUDED.periods, updated_at = now()""",
]

_APPLY_STATE_AFTER_EVENTS = [
    """DELETE FROM enrollments e USING enrollment_removals r
       WHERE e.district_id = $1 AND e.class_source_id = r.class_source_id AND e.user_source_id = r.user_source_id""",
    """INSERT INTO enrollments (district_id, class_source_id, user_source_id, role, is_primary)
       SELECT $1, class_source_id, user_source_id, role, is_primary FROM enrollment_additions
       ON CONFLICT (district_id, class_source_id, user_source_id) DO UPDATE SET
           role = EXCLUDED.role, is_primary = EXCLUDED.is_primary""",
    """DELETE FROM classes c USING class_removals r WHERE c.class_id = r.class_id AND c.district_id = $1""",
]


@dataclass(frozen=True)
class _EventSql:
    topic: str
    sql: str


def _event_sql(event_type: str, topic: str, rows: str, key: str, fields: dict[str, str]) -> _EventSql:
    """INSERT INTO outbox the event of each row, built by PostgreSQL in the contract's shape.
    $1 district, $2 occurred_at (ISO text), $3 correlation id (the import), $4 topic.
    A test decodes every payload with the contract's model, so the two cannot drift."""
    payload = ", ".join(f"'{name}', {expr}" for name, expr in fields.items())
    return _EventSql(topic, f"""
        INSERT INTO outbox (topic, key, payload, headers)
        SELECT $4, convert_to(({key})::text, 'UTF8'),
               convert_to(json_build_object(
                   'event_id', e.event_id, 'event_type', '{event_type}', 'occurred_at', $2::text,
                   'district_id', $1::text, 'correlation_id', $3::text, 'producer', '{SOURCE}', {payload})::text, 'UTF8'),
               ARRAY['ce_specversion', '1.0', 'ce_id', e.event_id::text, 'ce_type', '{event_type}',
                     'ce_source', '{SOURCE}', 'ce_time', $2::text, 'ce_districtid', $1::text,
                     'content-type', 'application/json', 'ce_correlationid', $3::text]
        FROM (SELECT gen_random_uuid() AS event_id, r.* FROM ({rows}) r) e""")


_STUDENT_FIELDS = {
    "student_id": "e.student_id", "source_id": "e.source_id", "school_id": "e.school_id", "grade": "e.grade",
    "given_name": "e.given_name", "family_name": "e.family_name", "birth_date": "e.birth_date",
    "email": "e.email", "state_id": "e.state_id",
}
_PERSON = """CASE WHEN x.role = 'student' THEN st.student_id ELSE sf.staff_id END"""
_ENROLLMENT_ROWS = """
    SELECT {person} AS person_id, x.role, c.class_id, x.class_source_id, x.user_source_id, c.school_id {extra}
    FROM {table} x
    JOIN classes c ON c.district_id = $1 AND c.source_id = x.class_source_id
    LEFT JOIN students st ON x.role = 'student' AND st.district_id = $1 AND st.source_id = x.user_source_id
    LEFT JOIN staff sf ON x.role <> 'student' AND sf.district_id = $1 AND sf.source_id = x.user_source_id"""
_ENROLLMENT_FIELDS = {
    "person_id": "e.person_id", "role": "e.role", "class_id": "e.class_id",
    "class_source_id": "e.class_source_id", "user_source_id": "e.user_source_id", "school_id": "e.school_id",
}

_EVENTS = [
    _event_sql("roster.student_enrolled.v1", ROSTER_STUDENTS.name,
               "SELECT * FROM student_changes WHERE change = 'enrolled'", "e.student_id",
               _STUDENT_FIELDS),
    _event_sql("roster.student_updated.v1", ROSTER_STUDENTS.name,
               "SELECT * FROM student_changes WHERE change = 'updated'", "e.student_id",
               {**_STUDENT_FIELDS, "changed": "to_json(e.changed)"}),
    _event_sql("roster.student_withdrawn.v1", ROSTER_STUDENTS.name,
               "SELECT * FROM student_withdrawals", "e.student_id",
               {"student_id": "e.student_id", "source_id": "e.source_id", "school_id": "e.school_id",
                "reason": "e.reason"}),
    _event_sql("roster.staff_upserted.v1", ROSTER_STAFF.name, "SELECT * FROM staff_changes",
               "e.staff_id",
               {"staff_id": "e.staff_id", "source_id": "e.source_id", "role": "e.role", "given_name": "e.given_name",
                "family_name": "e.family_name", "email": "e.email", "identifier": "e.identifier",
                "school_ids": "to_json(e.school_ids)", "matched": "(e.email IS NOT NULL)"}),
    _event_sql("roster.staff_deactivated.v1", ROSTER_STAFF.name,
               "SELECT * FROM staff_deactivations", "e.staff_id",
               {"staff_id": "e.staff_id", "source_id": "e.source_id"}),
    _event_sql("roster.class_upserted.v1", ROSTER_CLASSES.name, "SELECT * FROM class_changes",
               "e.class_id",
               {"class_id": "e.class_id", "source_id": "e.source_id", "school_id": "e.school_id",
                "class_type": "e.class_type", "title": "e.title", "class_code": "e.class_code",
                "course_source_id": "e.course_source_id", "grades": "to_json(e.grades)",
                "periods": "to_json(e.periods)"}),
    _event_sql("roster.enrollment_removed.v1", ROSTER_ENROLLMENTS.name,
               _ENROLLMENT_ROWS.format(person=_PERSON, extra="", table="enrollment_removals"), "e.person_id",
               _ENROLLMENT_FIELDS),
    # Classes go after their enrolments' removal events, and before the additions.
    _event_sql("roster.class_removed.v1", ROSTER_CLASSES.name, "SELECT * FROM class_removals",
               "e.class_id", {"class_id": "e.class_id", "source_id": "e.source_id", "school_id": "e.school_id"}),
    _event_sql("roster.enrollment_added.v1", ROSTER_ENROLLMENTS.name,
               _ENROLLMENT_ROWS.format(person=_PERSON, extra=", x.is_primary", table="enrollment_additions"),
               "e.person_id", {**_ENROLLMENT_FIELDS, "primary": "e.is_primary"}),
]
