"""Importing a OneRoster package: validate, diff against the district's roster, then
persist and publish only the changes, in one transaction.

The rows are streamed from the package into temporary staging tables with COPY; the diff
and the change events are computed by PostgreSQL in set operations, so a city-sized
package never passes through Python one event at a time. A crash anywhere rolls the
transaction back: the roster is either the old one or the new one, and running the import
again finishes the job.

Every record is identified by its sourcedId. A record whose row is in a bulk file but was
rejected keeps what the roster holds for it (it is not "absent"); only what is truly
absent is withdrawn, deactivated or removed. An import that would lose more than a set
share of what the district holds, or whose files were rejected beyond a set share, or
whose district org is not the district's, is held until someone confirms it
(domain.holds). A dry run takes the very same path and rolls back at the end. Any other
failure marks the import failed with a message a data team can act on.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import asyncpg
from pydantic import ValidationError

from contracts.envelope import not_a_district_id
from contracts.roster import DistrictUpserted, RosterImportCompleted
from contracts.topics import ROSTER_CLASSES, ROSTER_ENROLLMENTS, ROSTER_STAFF, ROSTER_STUDENTS
from services.kit import logs, outbox
from services.kit.crash import crashpoint
from services.kit.settings import HOME, KafkaSettings
from services.roster import class_members, domain, store
from services.roster.events_sql import IMPORT_EVENTS, SOURCE
from services.roster.oneroster import Known, Package, PackageRejected, Problem, Reader

log = logs.get("caseflow.roster.import")

_LONG = 3600.0  # seconds: one statement of a city-sized import may take minutes


@dataclass(frozen=True)
class ImportOptions:
    """The roster's settings (CASEFLOW_ROSTER_*): the guards, where packages go, the clock."""

    guards: domain.Guards = domain.Guards()
    packages: Path = HOME / "roster-packages"  # uploads, kept while an import is held
    max_upload_bytes: int = 2 * 1024**3
    drop_folder: Path | None = None  # <drop>/<district>/inbox/ ... processed/ failed/ held/
    drop_poll_seconds: float = 2.0
    timezone: str = "UTC"  # the districts' local time: a school day starts at its midnight
    fixed_today: date | None = None  # CASEFLOW_TODAY: a fixed date for tests and demonstrations
    calendar_poll_seconds: float = 300.0

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> ImportOptions:
        env = dict(os.environ if env is None else env)

        def get(name: str, default: str | None = None) -> str | None:
            return env.get(f"CASEFLOW_ROSTER_{name}") or env.get(f"CASEFLOW_{name}") or default

        drop = get("DROP_FOLDER")
        today = get("TODAY")
        shares = domain.Guards()
        return cls(
            guards=domain.Guards(
                students=float(get("WIPE_SHARE", str(shares.students))),
                staff=float(get("WIPE_SHARE_STAFF", str(shares.staff))),
                classes=float(get("WIPE_SHARE_CLASSES", str(shares.classes))),
                enrollments=float(get("WIPE_SHARE_ENROLLMENTS", str(shares.enrollments))),
                rejected_rows=float(get("REJECT_SHARE", str(shares.rejected_rows))),
            ),
            packages=Path(get("PACKAGES", str(HOME / "roster-packages"))),
            max_upload_bytes=int(get("MAX_UPLOAD_BYTES", str(2 * 1024**3))),
            drop_folder=Path(drop) if drop else None,
            drop_poll_seconds=float(get("DROP_POLL_SECONDS", "2.0")),
            timezone=get("TIMEZONE", "UTC"),
            fixed_today=date.fromisoformat(today) if today else None,
            calendar_poll_seconds=float(get("CALENDAR_POLL_SECONDS", "300")),
        )

    def today(self) -> date:
        """Today in the districts' time zone (or the fixed date, where one is set)."""
        return self.fixed_today or datetime.now(ZoneInfo(self.timezone)).date()


@dataclass
class ImportResult:
    import_id: uuid.UUID
    district_id: str
    status: str  # applied, held, dry_run, rejected, failed
    message: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    error_count: int = 0  # rows skipped
    warning_count: int = 0
    holds: list[str] = field(default_factory=list)  # why it is held (or, in a dry run, would be)
    examples: dict[str, list[str]] = field(default_factory=dict)  # a few source ids per change kind
    seconds: dict[str, float] = field(default_factory=dict)  # time per phase
    phase: str = "opening the package"


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
    confirm_district: bool = False,
    options: ImportOptions | None = None,
    today: date | None = None,
    import_id: uuid.UUID | None = None,
    on_record: asyncio.Event | None = None,
) -> ImportResult:
    """Import one package for one district; return how it went (never raises for a bad
    package or an unexpected failure: the import's record says so).

    confirm: apply even if a guard would hold it (a person checked); confirm_district: only
    the district org guard is confirmed (an upload whose sender confirmed it). `on_record` is set once
    the import is on record as running, so whoever started it in the background can answer
    with a location that already resolves. `today` (default: the options' clock) decides
    which enrolments count."""
    options = options or ImportOptions.from_env()
    import_id = import_id or uuid.uuid4()
    on_record = on_record or asyncio.Event()
    async with pool.acquire() as running:  # holds the import's lock until it ends; see recover_interrupted
        await running.execute("SELECT pg_advisory_lock($1)", _lock_key(import_id))
        await running.execute(
            """INSERT INTO imports (import_id, district_id, origin, package_name, package_path, status, created_by)
               VALUES ($1, $2, $3, $4, $5, 'running', $6)
               ON CONFLICT (import_id) DO UPDATE SET status = 'running', finished_at = NULL""",
            import_id, district_id, origin, path.name, str(path), created_by,
        )
        on_record.set()
        result = ImportResult(import_id, district_id, "running")
        try:
            if problem := not_a_district_id(district_id):  # the CLI's --district, a drop folder's name
                raise PackageRejected(f"the district id {problem}: name the district as Caseflow knows it")
            with Package(path) as package:
                async with pool.acquire() as conn:
                    await _import(conn, package, result, kafka, dry_run=dry_run, confirm=confirm,
                                  confirm_district=confirm_district, options=options, today=today or options.today())
        except PackageRejected as e:
            result.status, result.message = "rejected", str(e)
        except Exception as e:  # noqa: BLE001 - recorded on the import for the people who sent it
            log.error("roster import failed", import_id=str(import_id), district_id=district_id, phase=result.phase,
                      error=type(e).__name__, detail=logs.redact(str(e))[:300], exc_info=True)
            result.status = "failed"
            result.message = (f"failed while {result.phase}: an unexpected error ({type(e).__name__}); nothing was "
                              f"changed. Send the package again; if it fails again, give Caseflow support the import "
                              f"id {import_id}.")
        if result.status != "applied":  # applied imports finish inside their own transaction
            await _finish(pool, result)
    log.info("roster import finished", import_id=str(import_id), district_id=district_id, status=result.status,
             counts=result.counts, rows_skipped=result.error_count, warnings=result.warning_count)
    return result


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


UNCLAIMED_UPLOAD_SECONDS = 3600.0  # an upload with no import on record, untouched this long, is abandoned


async def remove_settled_uploads(pool: asyncpg.Pool, packages: Path) -> list[Path]:
    """Remove the uploaded packages (<packages>/<district>/<import id>.zip) no import needs:
    their import is final (applied, rejected, failed: a held one is kept for its confirm),
    or none is on record and the file has not changed for an hour (a process stopped
    between receiving it and starting its import). Returns the files removed."""
    uploads = {}
    for path in packages.glob("*/*.zip"):
        with contextlib.suppress(ValueError):
            uploads[uuid.UUID(path.stem)] = path
    if not uploads:
        return []
    async with pool.acquire() as conn:
        status = {r["import_id"]: r["status"] for r in await conn.fetch(
            "SELECT import_id, status FROM imports WHERE import_id = ANY($1::uuid[])", list(uploads))}
    removed = []
    for import_id, path in uploads.items():
        state = status.get(import_id)
        if state in ("running", "held"):
            continue
        with contextlib.suppress(FileNotFoundError):
            if state is None and time.time() - path.stat().st_mtime < UNCLAIMED_UPLOAD_SECONDS:
                continue
            path.unlink()
            removed.append(path)
    return removed


async def recover_on_start(runtime) -> None:
    """Background job of the roster service: settle the imports a stop interrupted, and
    remove the uploads no import needs any more."""
    interrupted = await recover_interrupted(runtime.pool)
    if interrupted:
        log.warning("imports interrupted by a stop, marked failed", imports=[str(i) for i in interrupted])
    removed = await remove_settled_uploads(runtime.pool, runtime.definition.options.packages)
    if removed:
        log.info("removed uploads whose imports are final", files=len(removed))


class _RollBack(Exception):
    pass


async def _import(conn, package: Package, result: ImportResult, kafka: KafkaSettings, *, dry_run: bool,
                  confirm: bool, confirm_district: bool, options: ImportOptions, today: date) -> None:
    district_id, import_id = result.district_id, result.import_id
    tx = conn.transaction()
    await tx.start()
    try:
        await conn.execute("SET LOCAL TimeZone = 'UTC'")
        result.phase = "bringing the class lists to today"
        calendar = await class_members.bring_to(conn, district_id, today, kafka)
        result.phase = "reading the files"
        clock = time.perf_counter()
        await conn.execute(_STAGING)
        reader = Reader(package, district_id, await _held_ids(conn, district_id, package))
        await _stage(conn, package, reader)
        await conn.execute(_STAGING_INDEXES, timeout=_LONG)
        # Temporary tables get no statistics by themselves: without them the planner may
        # pick nested loops over a million rows. The held tables' are refreshed where stale.
        await conn.execute("ANALYZE stage_schools, stage_sessions, stage_classes, stage_class_spans, stage_students, "
                           "stage_staff, stage_birth_dates, stage_enrollments, stage_rejected", timeout=_LONG)
        stale = await stale_statistics(conn, _HELD_TABLES)
        if stale:
            await conn.execute(f"ANALYZE {', '.join(stale)}", timeout=_LONG)
        result.seconds["read_and_stage"] = time.perf_counter() - clock

        result.phase = "comparing the files with the roster"
        clock = time.perf_counter()
        held = await _held_counts(conn, district_id)
        for statement in _diff_statements(package):
            await _execute(conn, statement, district_id)
        result.seconds["diff"] = time.perf_counter() - clock

        result.phase = "applying the changes"
        clock = time.perf_counter()
        for statement in _APPLY_STATE:
            await _execute(conn, statement, district_id)
        changed = await _counts(conn)
        whole = _changed_much(changed, held)
        if whole:
            # The statistics are those of before the import: a first import's joins would be
            # planned for empty tables (nested loops over a million rows).
            await conn.execute("ANALYZE students, staff, classes, enrollments", timeout=_LONG)
        else:
            await _execute(conn, _TOUCHED, district_id)
        members = await class_members.diff(conn, district_id, today, whole=whole)
        result.counts = {**changed, **members}
        result.problems = reader.problems
        result.error_count = reader.rows_skipped_count
        result.warning_count = sum(1 for p in reader.problems if p.severity == "warning")
        result.holds = domain.holds(
            result.counts, held, {f: (len(reader.rows_skipped.get(f, ())), n) for f, n in reader.rows_read.items()},
            options.guards)
        if not confirm_district:
            refusal = await _district_org_refusal(conn, district_id, package.district_orgs())
            result.holds += [refusal] if refusal else []
        if result.holds and not confirm and not dry_run:
            result.status, result.message = "held", ("held: " + "; ".join(result.holds)
                                              + f". If that is right, confirm it: POST /v1/imports/{result.import_id}/confirm"
                                                " (or the command line's --confirm)")
            raise _RollBack

        crashpoint("import.before_apply")
        occurred = datetime.now(UTC).isoformat()
        topics = {t.name: kafka.topic(t.name) for t in (ROSTER_STUDENTS, ROSTER_STAFF, ROSTER_CLASSES,
                                                        ROSTER_ENROLLMENTS)}
        for event in IMPORT_EVENTS:
            await conn.execute(event.sql, district_id, occurred, str(import_id), topics[event.topic], timeout=_LONG)
        await class_members.apply(conn, district_id)
        await _execute(conn, _REMOVE_CLASSES, district_id)
        crashpoint("import.after_apply")
        rows_clock = time.perf_counter()
        await _record_file_rows(conn, district_id, import_id, users_bulk=package.mode("users") == "bulk",
                                classes_bulk=package.mode("classes") == "bulk")
        result.seconds["file_rows"] = time.perf_counter() - rows_clock
        first_org = await _remember_district_org(conn, district_id, package, import_id, kafka)
        if first_org:
            result.problems.append(first_org)
            result.warning_count += 1
        completed = RosterImportCompleted(
            district_id=district_id, import_id=import_id, counts=result.counts,
            rejected_rows=result.error_count, correlation_id=str(import_id), producer=SOURCE,
        )
        await outbox.write(conn, [outbox.message_for(completed, source=SOURCE, kafka=kafka)])
        if any(calendar.values()):
            log.info("class lists brought to today before the import", district_id=district_id, **calendar)
        if dry_run:
            result.status = "dry_run"
            result.examples = await _examples(conn)
            result.message = f"dry run: {_changes(result):,} changes, {result.error_count:,} rows skipped" + (
                ("; it would be held: " + "; ".join(result.holds)) if result.holds else "")
            raise _RollBack
        result.status = "applied"
        result.message = (f"applied: {_changes(result):,} changes, {result.error_count:,} rows skipped, "
                          f"{result.warning_count:,} warnings")
        await _record_problems(conn, result)
        await conn.execute(
            """UPDATE imports SET status = 'applied', summary = $2, error_count = $3, warning_count = $4,
                   package_path = NULL, finished_at = now(), message = $5 WHERE import_id = $1""",
            import_id, result.counts, result.error_count, result.warning_count, result.message,
        )
        await tx.commit()
        result.seconds["apply_and_commit"] = time.perf_counter() - clock
    except _RollBack:
        await tx.rollback()
    except BaseException:
        await tx.rollback()
        raise


_HELD_TABLES = ("students", "staff", "classes", "enrollments", "class_members")


async def stale_statistics(conn, tables: tuple[str, ...]) -> list[str]:
    """Those of `tables` whose planner statistics are stale by autovacuum's own measure
    (more rows changed since they were last analysed than 50 + 10% of their rows, or never
    analysed while holding rows), in the order given. Analysing a city's enrolments at
    every import, as if stale, cost seconds of each re-import; changes of the running
    transaction are not counted (the counters are the committed ones)."""
    rows = await conn.fetch(
        """SELECT relname::text FROM pg_stat_user_tables
           WHERE relid = ANY($1::regclass[])
             AND (n_mod_since_analyze > 50 + 0.1 * n_live_tup
                  OR (last_analyze IS NULL AND last_autoanalyze IS NULL AND n_live_tup > 0))""",
        list(tables))
    stale = {r[0] for r in rows}
    return [t for t in tables if t in stale]


def _changed_much(counts: dict[str, int], held: dict[str, int]) -> bool:
    """Whether so much of the district changed (a first import, a new school year) that its
    class members are best compared whole, by scanning, than pair by pair."""
    records = counts["enrollment_records_changed"] + counts["enrollment_records_removed"]
    return records > max(10_000, held["records"] // 4)


def _changes(result: ImportResult) -> int:
    return sum(v for k, v in result.counts.items() if not k.startswith("enrollment_records"))


async def _execute(conn, statement: str, district_id: str) -> None:
    await conn.execute(statement, *class_members.params(statement, district_id), timeout=_LONG)
    if statement.lstrip().startswith("CREATE TEMP TABLE"):
        await conn.execute(f"ANALYZE {statement.split()[3]}", timeout=_LONG)


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
            records=[(result.import_id, i, p.severity, p.file, p.line, p.column, p.value, p.reason, p.source_id)
                     for i, p in enumerate(result.problems)],
            columns=["import_id", "seq", "severity", "file", "line", "column", "value", "reason", "source_id"],
        )


async def _held_ids(conn, district_id: str, package: Package) -> Known:
    """What rows may refer to beyond the package: the roster's own ids, for files not sent in bulk."""
    known = Known()
    known.other_orgs = {r[0] for r in await conn.fetch(
        "SELECT org_source_id FROM district_orgs WHERE district_id = $1", district_id)}
    if package.mode("orgs") != "bulk":
        known.schools = {r[0] for r in await conn.fetch("SELECT school_id FROM schools WHERE district_id = $1",
                                                        district_id)}
        known.schools |= {r[0] for r in await conn.fetch(
            "SELECT DISTINCT unnest(school_ids) FROM students WHERE district_id = $1", district_id)}
    if package.mode("academicSessions") != "bulk":
        known.sessions = {r[0]: (r[1], r[2]) for r in await conn.fetch(
            "SELECT source_id, start_date, end_date FROM academic_sessions WHERE district_id = $1", district_id)}
    if package.mode("classes") != "bulk":
        known.classes = {r[0]: (r[1], r[2]) for r in await conn.fetch(
            "SELECT source_id, school_id, class_type FROM classes WHERE district_id = $1", district_id)}
    if package.mode("users") != "bulk":
        known.users = {r[0]: "student" for r in await conn.fetch(
            "SELECT source_id FROM students WHERE district_id = $1 AND status = 'active'", district_id)}
        known.users.update({r[0]: r[1] for r in await conn.fetch(
            "SELECT source_id, role FROM staff WHERE district_id = $1 AND status = 'active'", district_id)})
    return known


async def _hold_rejected(conn, district_id: str, reader: Reader, entity: str) -> None:
    """Rows of this entity that were rejected keep what the roster holds: so do the rows of
    later files that refer to them."""
    ids = sorted(sid for (kind, sid) in reader.rejected if kind == entity)
    if not ids:
        return
    known = reader.known
    if entity == "org":
        known.schools |= {r[0] for r in await conn.fetch(
            "SELECT school_id FROM schools WHERE district_id = $1 AND school_id = ANY($2::text[])", district_id, ids)}
    elif entity == "session":
        known.sessions.update({r[0]: (r[1], r[2]) for r in await conn.fetch(
            """SELECT source_id, start_date, end_date FROM academic_sessions
               WHERE district_id = $1 AND source_id = ANY($2::text[])""", district_id, ids)})
    elif entity == "class":
        known.classes.update({r[0]: (r[1], r[2]) for r in await conn.fetch(
            """SELECT source_id, school_id, class_type FROM classes
               WHERE district_id = $1 AND source_id = ANY($2::text[])""", district_id, ids)})
    elif entity == "user":
        known.users.update({r[0]: r[1] for r in await conn.fetch(
            """SELECT source_id, 'student' FROM students WHERE district_id = $1 AND source_id = ANY($2::text[])
                 AND status = 'active'
               UNION ALL
               SELECT source_id, role FROM staff WHERE district_id = $1 AND source_id = ANY($2::text[])
                 AND status = 'active'""", district_id, ids)})


async def _stage(conn, package: Package, reader: Reader) -> None:
    """Stream each file, in dependency order, through the reader into its staging table."""
    district_id = reader.district_id
    if package.mode("orgs") != "absent":
        await conn.copy_records_to_table("stage_schools", records=reader.schools(), timeout=_LONG)
        await _hold_rejected(conn, district_id, reader, "org")
    if package.mode("academicSessions") != "absent":
        await conn.copy_records_to_table("stage_sessions", records=reader.sessions(), timeout=_LONG)
        await _hold_rejected(conn, district_id, reader, "session")
    if package.mode("courses") != "absent":
        for _ in reader.courses():  # courses are only checked against, not kept
            pass
    staged_classes: set[str] = set()
    if package.mode("classes") != "absent":
        def classes():
            for row in reader.classes():
                staged_classes.add(row[1])
                yield row

        await conn.copy_records_to_table("stage_classes", records=classes(), timeout=_LONG)
        await _hold_rejected(conn, district_id, reader, "class")
    if package.mode("academicSessions") != "absent":
        # Terms' dates changed: so may the dates of classes this package does not restate.
        spans = []
        for r in await conn.fetch("SELECT source_id, term_source_ids, starts, ends FROM classes "
                                  "WHERE district_id = $1", district_id):
            if r["source_id"] not in staged_classes:
                span = domain.class_span(r["term_source_ids"], reader.known.sessions)
                if r["term_source_ids"] and span != (r["starts"], r["ends"]):
                    spans.append((r["source_id"], *span))
        await conn.copy_records_to_table("stage_class_spans", records=spans, timeout=_LONG)
    if package.mode("roles") != "absent":
        reader.roles()
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
        await _hold_rejected(conn, district_id, reader, "user")
    if package.mode("demographics") != "absent":
        await conn.copy_records_to_table("stage_birth_dates", records=reader.birth_dates(), timeout=_LONG)
    if package.mode("enrollments") != "absent":
        await conn.copy_records_to_table("stage_enrollments", records=reader.enrollments(), timeout=_LONG)
    reader.finish()
    await conn.copy_records_to_table(
        "stage_rejected", timeout=_LONG,
        records=((r.entity, r.source_id, r.line, r.data, r.reasons) for r in reader.rejected.values()))


async def _held_counts(conn, district_id: str) -> dict[str, int]:
    row = await conn.fetchrow(
        """SELECT (SELECT count(*) FROM students WHERE district_id = $1 AND status = 'active') AS students,
                  (SELECT count(*) FROM staff WHERE district_id = $1 AND status = 'active') AS staff,
                  (SELECT count(*) FROM classes WHERE district_id = $1) AS classes,
                  (SELECT count(*) FROM class_members WHERE district_id = $1) AS enrollments,
                  (SELECT count(*) FROM enrollments WHERE district_id = $1) AS records""", district_id)
    return dict(row)


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
             (SELECT count(*) FROM record_changes) AS enrollment_records_changed,
             (SELECT count(*) FROM record_removals) AS enrollment_records_removed"""
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
        "enrollments_added": "SELECT user_source_id || ' in ' || class_source_id FROM member_additions",
        "enrollments_removed": "SELECT user_source_id || ' from ' || class_source_id FROM member_removals",
    }
    return {kind: [r[0] for r in await conn.fetch(f"{sql} ORDER BY 1 LIMIT {per_kind}")]
            for kind, sql in queries.items()}


def check_package(path: Path, name: str | None = None) -> None:
    """Raise PackageRejected, with why, if the package cannot be read as a whole; `name` is
    how the message names it (default: its file name)."""
    Package(path, name=name).close()


async def district_org_refusal(conn, district_id: str, path: Path) -> str | None:
    """Why this package seems meant for another district, or None."""
    with Package(path) as package:
        named = await asyncio.to_thread(package.district_orgs)
    return await _district_org_refusal(conn, district_id, named)


async def _district_org_refusal(conn, district_id: str, named: list[tuple[str, str, str, int]]) -> str | None:
    """A package naming another district org (orgs.csv, type district) than the district's
    files did is held: a file sent to the wrong district would withdraw everyone."""
    held = await conn.fetchrow("SELECT org_source_id, name FROM district_orgs WHERE district_id = $1", district_id)
    if held is None or not named or held["org_source_id"] in {sid for sid, *_ in named}:
        return None
    sid, _, name, _ = named[0]
    return (f"orgs.csv names district {sid} ({name}), but {district_id}'s files come from {held['org_source_id']} "
            f"({held['name']})")


async def _remember_district_org(conn, district_id: str, package: Package, import_id: uuid.UUID,
                                 kafka) -> Problem | None:
    """Remember the district org this district's files name; on the first, if it does not
    look like the district, say so (a warning): later files must name the same org. A new
    or changed name is published (DistrictUpserted on roster.districts.v1: the transfer
    portal lists districts by it, seed 003)."""
    named = package.district_orgs()
    if len(named) == 1:
        sid, identifier, name, line = named[0]
        first = await conn.fetchval("SELECT org_source_id IS NULL FROM (SELECT NULL) x LEFT JOIN district_orgs "
                                    "ON district_id = $1", district_id)
        changed = await conn.fetchval(
            """INSERT INTO district_orgs (district_id, org_source_id, identifier, name, import_id)
               VALUES ($1, $2, $3, $4, $5)
               ON CONFLICT (district_id) DO UPDATE SET org_source_id = EXCLUDED.org_source_id,
                   identifier = EXCLUDED.identifier, name = EXCLUDED.name, import_id = EXCLUDED.import_id
               WHERE (district_orgs.org_source_id, district_orgs.identifier, district_orgs.name)
                     IS DISTINCT FROM (EXCLUDED.org_source_id, EXCLUDED.identifier, EXCLUDED.name)
               RETURNING name""",
            district_id, sid, identifier or None, name or None, import_id)
        if changed:
            try:
                renamed = DistrictUpserted(district_id=district_id, name=changed, source_id=sid,
                                           correlation_id=str(import_id), producer=SOURCE)
            except ValidationError:
                return Problem("warning", "orgs.csv", line, "name", None,
                               "the district org's name is not published (more than 300 characters, or a character "
                               "that cannot be stored): districts see this district by its id", sid)
            await outbox.write(conn, [outbox.message_for(renamed, source=SOURCE, kafka=kafka)])
        if first and district_id.casefold() not in (sid.casefold(), identifier.casefold()):
            return Problem("warning", "orgs.csv", line, "sourcedId", sid,
                           f"the district org is {sid} ({name}), not {district_id}: from now on, a package naming "
                           f"another district org is held until confirmed", sid)
    return None


async def _record_file_rows(conn, district_id: str, import_id: uuid.UUID, *, users_bulk: bool,
                            classes_bulk: bool) -> None:
    """What the latest file said of each user (student or staff) and class, accepted or
    not, and on which line (the reconcile view). A bulk file says all there is: a user or
    class it leaves out has no row of the latest file (the view says the file did not
    include them).

    What a row said (last_file_rows) is written only where it changed; where each row is
    goes in file_lines, a row per bucket of the file (store.file_lines_bucket_sql: about
    FILE_LINES_PER_BUCKET sourcedIds each), so rows that only moved (a line added above
    them) cost a bucket's share each, not a row."""
    for entity, bulk, staged in (("user", users_bulk, "SELECT source_id, line FROM stage_students UNION ALL "
                                                     "SELECT source_id, line FROM stage_staff"),
                                 ("class", classes_bulk, "SELECT source_id, line FROM stage_classes")):
        staged += " UNION ALL SELECT source_id, line FROM stage_rejected WHERE entity = $2"
        if bulk:
            await conn.execute(
                f"""DELETE FROM last_file_rows f WHERE f.district_id = $1 AND f.entity = $2
                      AND f.source_id NOT IN (SELECT source_id FROM ({staged}) x)""",
                district_id, entity, timeout=_LONG)
            await conn.execute("DELETE FROM file_lines WHERE district_id = $1 AND entity = $2", district_id, entity)
        await conn.execute(
            f"""INSERT INTO file_lines (district_id, entity, import_id, bucket, source_ids, lines)
                SELECT $1, $2, $3::uuid, {store.file_lines_bucket_sql("x.source_id", "n.buckets")},
                       array_agg(x.source_id), array_agg(x.line)
                FROM ({staged}) x, (SELECT {store.file_lines_buckets_sql("count(*)")} AS buckets FROM ({staged}) y) n
                GROUP BY 4""",
            district_id, entity, import_id, timeout=_LONG)
    # Only rows whose content is new or changed reach ON CONFLICT: it would lock (and so
    # write) every row it meets, even one its WHERE then leaves as it is.
    await conn.execute(
        """INSERT INTO last_file_rows (district_id, entity, source_id, import_id, file, line, row_data, accepted,
                                       reasons)
           SELECT $1, n.entity, n.source_id, $2::uuid, n.file, n.line, n.row_data, n.accepted, n.reasons
           FROM (SELECT 'user' AS entity, source_id, 'users.csv' AS file, line,
                        jsonb_build_object('role', 'student', 'school_ids', school_ids, 'grade', grade,
                                           'status', status) AS row_data,
                        true AS accepted, '{}'::text[] AS reasons
                 FROM stage_students
                 UNION ALL
                 SELECT 'user', source_id, 'users.csv', line,
                        jsonb_build_object('role', role, 'school_ids', school_ids, 'status', status), true,
                        '{}'::text[]
                 FROM stage_staff
                 UNION ALL
                 SELECT 'class', source_id, 'classes.csv', line,
                        jsonb_build_object('school_id', school_id, 'class_type', class_type, 'title', title,
                                          'grades', grades, 'periods', periods, 'status', status),
                        true, '{}'::text[]
                 FROM stage_classes
                 UNION ALL
                 SELECT entity, source_id, CASE entity WHEN 'user' THEN 'users.csv' ELSE 'classes.csv' END,
                        line, data, false, reasons
                 FROM stage_rejected WHERE entity IN ('user', 'class')) n
           LEFT JOIN last_file_rows f ON f.district_id = $1 AND f.entity = n.entity AND f.source_id = n.source_id
           WHERE f.source_id IS NULL
              OR (f.row_data, f.accepted, f.reasons) IS DISTINCT FROM (n.row_data, n.accepted, n.reasons)
           ON CONFLICT (district_id, entity, source_id) DO UPDATE SET
               import_id = EXCLUDED.import_id, file = EXCLUDED.file, line = EXCLUDED.line,
               row_data = EXCLUDED.row_data, accepted = EXCLUDED.accepted, reasons = EXCLUDED.reasons""",
        district_id, import_id, timeout=_LONG,
    )


# ---------------------------------------------------------------------------- the SQL

_STAGING = """
CREATE TEMP TABLE stage_schools (source_id text, name text, identifier text, status text) ON COMMIT DROP;
CREATE TEMP TABLE stage_sessions (source_id text, type text, start_date date, end_date date, parent_source_id text,
    status text) ON COMMIT DROP;
CREATE TEMP TABLE stage_classes (class_id uuid, source_id text, school_id text, class_type text, title text,
    class_code text, course_source_id text, grades text[], periods text[], term_ids text[], starts date, ends date,
    status text, line int) ON COMMIT DROP;
CREATE TEMP TABLE stage_class_spans (source_id text, starts date, ends date) ON COMMIT DROP;
CREATE TEMP TABLE stage_students (student_id uuid, source_id text, school_ids text[], primary_school text,
    grade text, given_name text, family_name text, email text, state_id text, status text, line int) ON COMMIT DROP;
CREATE TEMP TABLE stage_staff (staff_id uuid, source_id text, role text, given_name text, family_name text,
    email text, identifier text, school_ids text[], status text, line int) ON COMMIT DROP;
CREATE TEMP TABLE stage_birth_dates (source_id text, birth_date date, read boolean) ON COMMIT DROP;
CREATE TEMP TABLE stage_enrollments (source_id text, class_source_id text, user_source_id text, role text,
    is_primary boolean, begin_date date, end_date date, status text) ON COMMIT DROP;
CREATE TEMP TABLE stage_rejected (entity text, source_id text, line int, data jsonb, reasons text[]) ON COMMIT DROP;
"""

# (stage_enrollments has none: it is only ever read whole, beside the held records, in
# record_diff, and an index on its million rows cost more than the diff saved.)
_STAGING_INDEXES = """
CREATE INDEX ON stage_students (student_id);
CREATE INDEX ON stage_staff (staff_id);
CREATE INDEX ON stage_classes (class_id);
CREATE INDEX ON stage_birth_dates (source_id);
CREATE INDEX ON stage_rejected (entity, source_id);
"""


def _diff_statements(package: Package) -> list[str]:
    """The diff, one statement each; the package's file modes are written in as TRUE/FALSE."""
    flags = {
        "users_bulk": package.mode("users") == "bulk",
        "demographics_sent": package.mode("demographics") != "absent",
        "demographics_bulk": package.mode("demographics") == "bulk",
        "sessions_bulk": package.mode("academicSessions") == "bulk",
        "classes_bulk": package.mode("classes") == "bulk",
        "enrollments_bulk": package.mode("enrollments") == "bulk",
    }
    sql = _DIFF.format(HOME_SCHOOL=_HOME_SCHOOL, STUDENT_CHANGE=domain.student_change_sql("f", "c"),
                      STUDENT_CHANGES=domain.STUDENT_CHANGES, STAFF_CHANGE=domain.staff_change_sql("s", "c"),
                      records_join="FULL JOIN" if flags["enrollments_bulk"] else "LEFT JOIN",
                      **{k: "TRUE" if v else "FALSE" for k, v in flags.items()})
    statements = [statement.strip() for statement in sql.split(";")]
    # (a statement is never only a comment: a semicolon in a comment would split it)
    assert all(any(line and not line.startswith("--") for line in map(str.strip, s.splitlines()))
               for s in statements if s), "a ';' inside a comment of _DIFF"
    return [s for s in statements if s]


# domain.home_school, in SQL: the file's primary org, else the held school if still listed,
# else the first listed (a test checks the two agree).
_HOME_SCHOOL = ("coalesce(CASE WHEN s.primary_school = ANY(s.school_ids) THEN s.primary_school END, "
                "CASE WHEN c.school_id = ANY(s.school_ids) THEN c.school_id END, s.school_ids[1])")

# $1 is the district; {flags} are the package's file modes. A row present in a bulk file
# but rejected (stage_rejected) is not absent: its record is kept as held.
_DIFF = """
CREATE TEMP TABLE student_facts ON COMMIT DROP AS
SELECT s.student_id, s.source_id, h.home AS school_id,
       -- (most students are at one school: no sorted subquery for them)
       CASE WHEN cardinality(s.school_ids) = 1 THEN s.school_ids
            ELSE ARRAY[h.home] || ARRAY(SELECT x FROM unnest(s.school_ids) x WHERE x <> h.home ORDER BY x COLLATE "C")
       END AS school_ids,
       s.grade, s.given_name, s.family_name,
       CASE WHEN NOT {demographics_sent} THEN c.birth_date
            WHEN b.source_id IS NULL THEN CASE WHEN {demographics_bulk} THEN NULL ELSE c.birth_date END
            WHEN NOT b.read THEN c.birth_date
            ELSE b.birth_date END AS birth_date,
       s.email, s.state_id
FROM stage_students s
LEFT JOIN students c ON c.student_id = s.student_id
LEFT JOIN stage_birth_dates b ON b.source_id = s.source_id
CROSS JOIN LATERAL (SELECT {HOME_SCHOOL} AS home) h
WHERE s.status = 'active'
UNION ALL
-- A demographics row for a student the users file does not restate changes their birth date.
SELECT c.student_id, c.source_id, c.school_id, c.school_ids, c.grade, c.given_name, c.family_name,
       b.birth_date, c.email, c.state_id
FROM stage_birth_dates b
JOIN students c ON c.district_id = $1 AND c.source_id = b.source_id AND c.status = 'active'
WHERE b.read AND c.birth_date IS DISTINCT FROM b.birth_date
  AND NOT EXISTS (SELECT 1 FROM stage_students s WHERE s.source_id = b.source_id)
  AND NOT EXISTS (SELECT 1 FROM stage_rejected r WHERE r.entity = 'user' AND r.source_id = b.source_id);

CREATE TEMP TABLE student_changes ON COMMIT DROP AS
SELECT * FROM (
    SELECT f.*, {STUDENT_CHANGE}
    FROM student_facts f
    LEFT JOIN students c ON c.student_id = f.student_id
) d
WHERE {STUDENT_CHANGES};

CREATE TEMP TABLE student_withdrawals ON COMMIT DROP AS
SELECT c.student_id, c.source_id, c.school_id, 'absent_from_bulk_file' AS reason
FROM students c
WHERE {users_bulk} AND c.district_id = $1 AND c.status = 'active'
  AND NOT EXISTS (SELECT 1 FROM stage_students s WHERE s.student_id = c.student_id AND s.status = 'active')
  AND NOT EXISTS (SELECT 1 FROM stage_rejected r WHERE r.entity = 'user' AND r.source_id = c.source_id)
UNION ALL
SELECT c.student_id, c.source_id, c.school_id, 'tobedeleted'
FROM stage_students s JOIN students c ON c.student_id = s.student_id
WHERE NOT {users_bulk} AND s.status = 'tobedeleted' AND c.status = 'active';

CREATE TEMP TABLE staff_changes ON COMMIT DROP AS
SELECT s.* FROM stage_staff s LEFT JOIN staff c ON c.staff_id = s.staff_id
WHERE s.status = 'active' AND {STAFF_CHANGE};

CREATE TEMP TABLE staff_deactivations ON COMMIT DROP AS
SELECT c.staff_id, c.source_id FROM staff c
WHERE {users_bulk} AND c.district_id = $1 AND c.status = 'active'
  AND NOT EXISTS (SELECT 1 FROM stage_staff s WHERE s.staff_id = c.staff_id AND s.status = 'active')
  AND NOT EXISTS (SELECT 1 FROM stage_rejected r WHERE r.entity = 'user' AND r.source_id = c.source_id)
UNION ALL
SELECT c.staff_id, c.source_id FROM stage_staff s JOIN staff c ON c.staff_id = s.staff_id
WHERE NOT {users_bulk} AND s.status = 'tobedeleted' AND c.status = 'active';

CREATE TEMP TABLE session_removals ON COMMIT DROP AS
SELECT c.source_id FROM academic_sessions c
WHERE {sessions_bulk} AND c.district_id = $1
  AND NOT EXISTS (SELECT 1 FROM stage_sessions s WHERE s.source_id = c.source_id AND s.status = 'active')
  AND NOT EXISTS (SELECT 1 FROM stage_rejected r WHERE r.entity = 'session' AND r.source_id = c.source_id)
UNION ALL
SELECT s.source_id FROM stage_sessions s WHERE NOT {sessions_bulk} AND s.status = 'tobedeleted';

CREATE TEMP TABLE class_changes ON COMMIT DROP AS
SELECT s.*, c.school_id AS was_school FROM stage_classes s LEFT JOIN classes c ON c.class_id = s.class_id
WHERE s.status = 'active'
  AND (c.class_id IS NULL
       OR (c.school_id, c.class_type, c.title, c.class_code, c.course_source_id, c.grades, c.periods)
          IS DISTINCT FROM (s.school_id, s.class_type, s.title, s.class_code, s.course_source_id, s.grades, s.periods));

-- Classes whose terms or dates change: no event (the roster publishes class members, who
-- follow these dates), but their members are looked at again.
CREATE TEMP TABLE class_spans ON COMMIT DROP AS
SELECT c.class_id, c.source_id, s.term_ids, s.starts, s.ends
FROM stage_classes s JOIN classes c ON c.class_id = s.class_id
WHERE s.status = 'active' AND (c.term_source_ids, c.starts, c.ends) IS DISTINCT FROM (s.term_ids, s.starts, s.ends)
UNION ALL
SELECT c.class_id, c.source_id, c.term_source_ids, x.starts, x.ends
FROM stage_class_spans x JOIN classes c ON c.district_id = $1 AND c.source_id = x.source_id;

CREATE TEMP TABLE class_removals ON COMMIT DROP AS
SELECT c.class_id, c.source_id, c.school_id FROM classes c
WHERE {classes_bulk} AND c.district_id = $1
  AND NOT EXISTS (SELECT 1 FROM stage_classes s WHERE s.class_id = c.class_id AND s.status = 'active')
  AND NOT EXISTS (SELECT 1 FROM stage_rejected r WHERE r.entity = 'class' AND r.source_id = c.source_id)
UNION ALL
SELECT c.class_id, c.source_id, c.school_id FROM stage_classes s JOIN classes c ON c.class_id = s.class_id
WHERE NOT {classes_bulk} AND s.status = 'tobedeleted';

-- The file's records beside the held ones, in one pass: each record the file adds or
-- changes (source_id), and each held record a bulk file leaves out (held, with source_id
-- NULL: a delta file's join is a LEFT JOIN, which has none). An unchanged record has no row.
CREATE TEMP TABLE record_diff ON COMMIT DROP AS
SELECT s.source_id, s.class_source_id, s.user_source_id, s.role, s.is_primary, s.begin_date, s.end_date,
       c.source_id AS held, c.class_source_id AS was_class, c.user_source_id AS was_user
FROM (SELECT * FROM stage_enrollments WHERE status = 'active') s
{records_join} (SELECT * FROM enrollments WHERE district_id = $1) c ON c.source_id = s.source_id
WHERE s.source_id IS NULL OR c.source_id IS NULL
   OR (c.class_source_id, c.user_source_id, c.role, c.is_primary, c.begin_date, c.end_date)
      IS DISTINCT FROM (s.class_source_id, s.user_source_id, s.role, s.is_primary, s.begin_date, s.end_date);

CREATE TEMP TABLE record_changes ON COMMIT DROP AS
SELECT source_id, class_source_id, user_source_id, role, is_primary, begin_date, end_date, was_class, was_user
FROM record_diff WHERE source_id IS NOT NULL;

-- Records that go: absent from a bulk file, tobedeleted in a delta (by sourcedId, or by class
-- and user for a record held from before sourcedIds were kept), or taken along by their
-- class or person leaving the roster.
CREATE TEMP TABLE record_removals ON COMMIT DROP AS
SELECT DISTINCT source_id, class_source_id, user_source_id FROM (
    SELECT d.held AS source_id, d.was_class AS class_source_id, d.was_user AS user_source_id FROM record_diff d
    WHERE {enrollments_bulk} AND d.source_id IS NULL
      AND NOT EXISTS (SELECT 1 FROM stage_rejected r WHERE r.entity = 'enrollment' AND r.source_id = d.held)
    UNION ALL
    SELECT c.source_id, c.class_source_id, c.user_source_id
    FROM stage_enrollments s JOIN enrollments c ON c.district_id = $1 AND c.source_id = s.source_id
    WHERE NOT {enrollments_bulk} AND s.status = 'tobedeleted'
    UNION ALL
    SELECT c.source_id, c.class_source_id, c.user_source_id
    FROM stage_enrollments s JOIN enrollments c ON c.district_id = $1 AND c.source_id LIKE 'legacy:%'
                                                AND c.class_source_id = s.class_source_id
                                                AND c.user_source_id = s.user_source_id
    WHERE NOT {enrollments_bulk} AND s.status = 'tobedeleted'
      AND NOT EXISTS (SELECT 1 FROM enrollments h WHERE h.district_id = $1 AND h.source_id = s.source_id)
    UNION ALL
    SELECT c.source_id, c.class_source_id, c.user_source_id
    FROM class_removals r JOIN enrollments c ON c.district_id = $1 AND c.class_source_id = r.source_id
    UNION ALL
    SELECT c.source_id, c.class_source_id, c.user_source_id
    FROM student_withdrawals w JOIN enrollments c ON c.district_id = $1 AND c.user_source_id = w.source_id
                                                 AND c.role = 'student'
    UNION ALL
    SELECT c.source_id, c.class_source_id, c.user_source_id
    FROM staff_deactivations d JOIN enrollments c ON c.district_id = $1 AND c.user_source_id = d.source_id
                                                 AND c.role <> 'student'
) x
"""

_APPLY_STATE = [
    """INSERT INTO schools (district_id, school_id, name, identifier)
       SELECT $1, source_id, name, identifier FROM stage_schools WHERE status = 'active'
       ON CONFLICT (district_id, school_id) DO UPDATE SET name = EXCLUDED.name, identifier = EXCLUDED.identifier""",
    """DELETE FROM academic_sessions c USING session_removals r WHERE c.district_id = $1 AND c.source_id = r.source_id""",
    """INSERT INTO academic_sessions (district_id, source_id, type, start_date, end_date, parent_source_id)
       SELECT $1, source_id, type, start_date, end_date, parent_source_id FROM stage_sessions WHERE status = 'active'
       ON CONFLICT (district_id, source_id) DO UPDATE SET type = EXCLUDED.type, start_date = EXCLUDED.start_date,
           end_date = EXCLUDED.end_date, parent_source_id = EXCLUDED.parent_source_id
       WHERE (academic_sessions.type, academic_sessions.start_date, academic_sessions.end_date,
              academic_sessions.parent_source_id)
             IS DISTINCT FROM (EXCLUDED.type, EXCLUDED.start_date, EXCLUDED.end_date, EXCLUDED.parent_source_id)""",
    """INSERT INTO students (student_id, district_id, source_id, school_id, school_ids, grade, given_name, family_name,
                            birth_date, email, state_id, status, withdrawn_at)
       SELECT student_id, $1, source_id, school_id, school_ids, grade, given_name, family_name, birth_date, email,
              state_id, 'active', NULL FROM student_changes
       ON CONFLICT (student_id) DO UPDATE SET school_id = EXCLUDED.school_id, school_ids = EXCLUDED.school_ids,
           grade = EXCLUDED.grade, given_name = EXCLUDED.given_name, family_name = EXCLUDED.family_name,
           birth_date = EXCLUDED.birth_date, email = EXCLUDED.email, state_id = EXCLUDED.state_id,
           status = 'active', withdrawn_at = NULL, updated_at = now()""",
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
                           course_source_id, grades, periods, term_source_ids, starts, ends)
       SELECT class_id, $1, source_id, school_id, class_type, title, class_code, course_source_id, grades, periods,
              term_ids, starts, ends
       FROM class_changes
       ON CONFLICT (class_id) DO UPDATE SET school_id = EXCLUDED.school_id, class_type = EXCLUDED.class_type,
           title = EXCLUDED.title, class_code = EXCLUDED.class_code, course_source_id = EXCLUDED.course_source_id,
           grades = EXCLUDED.grades, periods = EXCLUDED.periods, term_source_ids = EXCLUDED.term_source_ids,
           starts = EXCLUDED.starts, ends = EXCLUDED.ends, updated_at = now()""",
    """UPDATE classes c SET term_source_ids = x.term_ids, starts = x.starts, ends = x.ends, updated_at = now()
       FROM class_spans x WHERE c.class_id = x.class_id AND c.district_id = $1""",
    """DELETE FROM enrollments e USING record_removals r WHERE e.district_id = $1 AND e.source_id = r.source_id""",
    """UPDATE enrollments e SET class_source_id = r.class_source_id, user_source_id = r.user_source_id,
           role = r.role, is_primary = r.is_primary, begin_date = r.begin_date, end_date = r.end_date
       FROM record_changes r
       WHERE r.was_class IS NOT NULL AND e.district_id = $1 AND e.source_id = r.source_id""",
    # (a record both taken along and restated, were there one, is stored again below)
    """INSERT INTO enrollments (district_id, source_id, class_source_id, user_source_id, role, is_primary, begin_date,
                               end_date)
       SELECT $1, source_id, class_source_id, user_source_id, role, is_primary, begin_date, end_date
       FROM record_changes
       WHERE was_class IS NULL OR source_id IN (SELECT source_id FROM record_removals)""",
]

# Class rows go after the events: their removal events are built from class_removals.
_REMOVE_CLASSES = """DELETE FROM classes c USING class_removals r WHERE c.class_id = r.class_id AND c.district_id = $1"""

# The (class, person) pairs this import may have changed, once its records are stored: every
# record changed or removed (where it pointed before and after), every record of a held
# class whose school or dates changed, every member of a class or person who left. (A
# class or person that is new, or comes back, has no records but this import's: a class or
# person leaving takes its records along.)
_TOUCHED = """
CREATE TEMP TABLE touched ON COMMIT DROP AS
SELECT DISTINCT class_source_id, user_source_id FROM (
    SELECT class_source_id, user_source_id FROM record_changes
    UNION ALL SELECT was_class, was_user FROM record_changes WHERE was_class IS NOT NULL
    UNION ALL SELECT class_source_id, user_source_id FROM record_removals
    UNION ALL
    SELECT e.class_source_id, e.user_source_id
    FROM (SELECT source_id FROM class_changes WHERE was_school IS DISTINCT FROM school_id AND was_school IS NOT NULL
          UNION ALL SELECT source_id FROM class_spans) k
    JOIN enrollments e ON e.district_id = $1 AND e.class_source_id = k.source_id
    UNION ALL
    SELECT m.class_source_id, m.user_source_id
    FROM class_removals r JOIN class_members m ON m.district_id = $1 AND m.class_source_id = r.source_id
    UNION ALL
    SELECT m.class_source_id, m.user_source_id
    FROM (SELECT source_id FROM student_withdrawals UNION ALL SELECT source_id FROM staff_deactivations) p
    JOIN class_members m ON m.district_id = $1 AND m.user_source_id = p.source_id
) x
"""
