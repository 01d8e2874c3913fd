"""Where each row of a file is (file_lines, migration 006): split into buckets by a hash of
the sourcedId, so the reconcile view reads one bucket of a file, not the file. The newest
file holding a sourcedId gives its line; a bulk file replaces the older ones; rows kept
before migration 006 are re-split. Real PostgreSQL; the importer's own writer
(importer._record_file_rows) on staged rows, without reading a package."""

from __future__ import annotations

import uuid
from importlib import import_module
from urllib.parse import urlsplit, urlunsplit

import pytest

from services.kit import db
from services.roster import importer, store

pytestmark = pytest.mark.integration
D = "nycdoe"


async def record(conn, students: dict[str, int], *, bulk: bool) -> uuid.UUID:
    """A users.csv holding `students` (sourcedId: line), recorded as the importer does."""
    import_id = uuid.uuid4()
    async with conn.transaction():
        await conn.execute(importer._STAGING)
        await conn.executemany("INSERT INTO stage_students (source_id, line, status) VALUES ($1, $2, 'active')",
                               list(students.items()))
        await importer._record_file_rows(conn, D, import_id, users_bulk=bulk, classes_bulk=False)
    return import_id


async def seen(conn, source_id: str) -> tuple[uuid.UUID, int] | None:
    said, _ = await store.reconciliation(conn, district_id=D, entity="student", source_id=source_id)
    return (said["import_id"], said["line"]) if said else None


async def bucket_of(conn, source_id: str, buckets: int) -> int:
    return await conn.fetchval(f"SELECT {store.file_lines_bucket_sql('$1::text', str(buckets))}", source_id)


def students(n: int, first_line: int = 2, prefix: str = "stu-") -> dict[str, int]:
    return {f"{prefix}{i:06d}": first_line + i for i in range(n)}


async def test_every_sourced_id_of_a_bulk_file_is_found_on_its_line_in_one_row_per_bucket(service_db):
    pool = await service_db("roster")
    rows = students(3000)
    async with pool.acquire() as conn:
        first = await record(conn, rows, bulk=True)
        written = await conn.fetch("SELECT bucket, cardinality(source_ids) AS n FROM file_lines WHERE import_id = $1",
                                   first)
        assert len(written) == 32  # 3,000 rows: 32 buckets of 128 at most on average (16 would hold 188)
        assert {r["bucket"] for r in written} == set(range(32, 64)) and sum(r["n"] for r in written) == 3000
        assert max(r["n"] for r in written) < 3 * 128
        for sid, line in rows.items():
            assert await seen(conn, sid) == (first, line), sid
        assert await seen(conn, "stu-999999") is None


async def test_a_delta_file_moving_a_row_gives_its_new_line_and_leaves_its_bucket_mates_where_they_were(service_db):
    """A delta file of a few rows has one bucket, the bulk file before it 32: the lookup
    asks for both, keeps the newest file that holds the sourcedId, and passes over a newer
    file holding only another sourcedId of the same bucket."""
    pool = await service_db("roster")
    rows = students(3000)
    async with pool.acquire() as conn:
        bulk = await record(conn, rows, bulk=True)
        sid = "stu-001234"  # not among the first thousand rows
        mates = [s for s in list(rows)[1000:]
                 if s != sid and await bucket_of(conn, s, 32) == await bucket_of(conn, sid, 32)]
        assert len(mates) >= 3  # ~94 rows share its bucket of the bulk file, ~60 past the first thousand
        moved = await record(conn, {sid: 9001}, bulk=False)
        assert await seen(conn, sid) == (moved, 9001)
        assert await seen(conn, mates[0]) == (bulk, rows[mates[0]])  # in the same bucket, not in the delta file
        other = await record(conn, {mates[0]: 9002, mates[1]: 9003}, bulk=False)
        assert await seen(conn, sid) == (moved, 9001)  # a newer file of the same bucket, without it
        assert (await seen(conn, mates[0]), await seen(conn, mates[1])) == ((other, 9002), (other, 9003))
        assert await seen(conn, mates[2]) == (bulk, rows[mates[2]])
        # a larger delta file (4 buckets), moving a thousand rows, the sourcedId among them
        many = {s: 20000 + n for n, s in enumerate(list(rows)[:1000] + [sid])}
        big = await record(conn, many, bulk=False)
        assert await conn.fetchval("SELECT count(*) FROM file_lines WHERE import_id = $1", big) == 8
        for s in (sid, *list(rows)[:1000:37]):
            assert await seen(conn, s) == (big, many[s]), s
        assert await seen(conn, mates[1]) == (other, 9003)


async def test_a_bulk_file_replaces_the_older_files_and_what_it_leaves_out_has_no_row(service_db):
    pool = await service_db("roster")
    async with pool.acquire() as conn:
        await record(conn, students(3000), bulk=True)
        await record(conn, {"stu-000001": 7}, bulk=False)
        kept = {s: 100 + n for n, s in enumerate(list(students(3000))[1000:])}  # a thousand left out, moved
        again = await record(conn, kept, bulk=True)
        assert await conn.fetchval("SELECT count(DISTINCT import_id) FROM file_lines WHERE district_id = $1", D) == 1
        assert await conn.fetchval("SELECT count(*) FROM file_lines WHERE district_id = $1", D) == 16
        assert await seen(conn, "stu-000001") is None and await seen(conn, "stu-000999") is None
        for s in list(kept)[::41]:
            assert await seen(conn, s) == (again, kept[s]), s


async def test_a_file_of_any_size_has_at_most_a_bucket_per_128_rows_on_average(service_db):
    """Rows written per file: bounded by its bucket count (a power of two), not by its rows."""
    pool = await service_db("roster")
    async with pool.acquire() as conn:
        for n, buckets in ((1, 1), (128, 1), (129, 2), (256, 2), (257, 4), (5000, 64)):
            import_id = await record(conn, students(n, prefix=f"s{n}-"), bulk=False)
            assert await conn.fetchval("SELECT count(*) FROM file_lines WHERE import_id = $1", import_id) <= buckets
            assert await conn.fetchval(f"SELECT {store.file_lines_buckets_sql('$1::bigint')}", n) == buckets
            assert await conn.fetchval("SELECT bool_and(bucket >= $2 AND bucket < 2 * $2) FROM file_lines "
                                       "WHERE import_id = $1", import_id, buckets)


async def test_file_lines_kept_before_migration_006_are_re_split_into_buckets(postgres_url):
    """An old-shaped row (a whole file in one row, no bucket), two files of it: after the
    migration the newest still gives each row's line, and each file is split in buckets."""
    dsn = urlunsplit(urlsplit(postgres_url)._replace(path=f"/t{uuid.uuid4().hex[:10]}_roster"))
    await db.ensure_database(dsn)
    conn = await db.connect(dsn)
    try:
        migrations = db.migrations_for("roster", import_module("services.roster.app").definition().directory)
        before = [m for m in migrations if m.name < "roster/006"]
        assert len(before) < len(migrations)
        await db.migrate(conn, before)
        rows = students(2000)
        older, newer = uuid.uuid4(), uuid.uuid4()
        await conn.executemany(
            """INSERT INTO last_file_rows (district_id, entity, source_id, import_id, file, line, row_data)
               VALUES ($1, 'user', $2, $3, 'users.csv', $4, '{}')""",
            [(D, s, older, line) for s, line in rows.items()] + [(D, "stu-lfr-only", older, 77)])
        await conn.execute("INSERT INTO file_lines (district_id, entity, import_id, source_ids, lines) "
                           "VALUES ($1, 'user', $2, $3, $4)", D, older, list(rows), list(rows.values()))
        moved = {s: 5000 + n for n, s in enumerate(list(rows)[:300])}
        await conn.execute("INSERT INTO file_lines (district_id, entity, import_id, source_ids, lines) "
                           "VALUES ($1, 'user', $2, $3, $4)", D, newer, list(moved), list(moved.values()))

        await db.migrate(conn, migrations)
        assert await conn.fetchval("SELECT count(*) FROM file_lines WHERE import_id = $1", older) == 16
        assert await conn.fetchval("SELECT count(*) FROM file_lines WHERE import_id = $1", newer) == 4
        assert await conn.fetchval("SELECT max(seq) FROM file_lines WHERE import_id = $1", older) < \
            await conn.fetchval("SELECT min(seq) FROM file_lines WHERE import_id = $1", newer)
        for s, line in rows.items():
            assert await seen(conn, s) == ((newer, moved[s]) if s in moved else (older, line)), s
        assert await seen(conn, "stu-lfr-only") == (older, 77)  # last_file_rows' own line
        # and the importer's writer goes on from there: a delta file on top of the re-split rows
        later = await record(conn, {"stu-000005": 3}, bulk=False)
        assert await seen(conn, "stu-000005") == (later, 3) and await seen(conn, "stu-000006") == (newer, 5006)
    finally:
        await conn.close()
