"""asyncpg pool and forward-only SQL migrations.

Every service applies the kit's migrations (inbox, outbox) and then its own, in file
name order, each once, under an advisory lock so that instances starting together do
not race. An applied migration whose file changed is an error: migrations only go forward.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit
from uuid import UUID

import asyncpg

KIT_MIGRATIONS = Path(__file__).parent / "migrations"
_MIGRATION_LOCK = 7_461_001


@dataclass(frozen=True)
class Migration:
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def migrations_for(service: str, service_dir: Path) -> list[Migration]:
    found = [Migration(f"kit/{p.name}", p.read_text()) for p in sorted(KIT_MIGRATIONS.glob("*.sql"))]
    found += [Migration(f"{service}/{p.name}", p.read_text()) for p in sorted((service_dir / "migrations").glob("*.sql"))]
    return found


def _jsonb_encode(value) -> bytes:
    return b"\x01" + json.dumps(value).encode()  # jsonb's binary form: version 1, then the text


def _jsonb_decode(data: bytes):
    return json.loads(data[1:])


async def _init_connection(conn: asyncpg.Connection) -> None:
    # Binary, so that COPY (the outbox's bulk write) can carry jsonb too.
    await conn.set_type_codec("jsonb", encoder=_jsonb_encode, decoder=_jsonb_decode, schema="pg_catalog", format="binary")


class _FairPool(asyncpg.Pool):
    """asyncpg's pool, handing out connections first come, first served. A connection going
    back is reset as asyncpg resets it (a round trip: `pg_advisory_unlock_all(); CLOSE ALL;
    UNLISTEN *; RESET ALL`): the roster importer holds a session-level advisory lock on a
    pooled connection for the length of an import and lets the reset release it.

    asyncpg keeps its free connections in an asyncio.Queue, which lets a newcomer whose get()
    finds a connection just returned take it before the waiter that return woke; the waiter
    then queues again at the back. Under load some callers lose many turns in a row: with 50
    readers of the caseload page on a pool of 10, its p99 was 7x its p50 (2.5x on a pool
    too large to run out). Here every acquire first takes a turn (asyncio.Semaphore wakes
    its waiters in order and lets no newcomer pass one), and there are as many turns as
    connections, so the one who waited longest gets the next connection."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._turns = asyncio.Semaphore(kwargs["max_size"])
        # The connections handed out, each holding a turn until it is released: by the
        # proxy's identity (asyncpg detaches a proxy whose connection broke while out, but
        # the caller still releases it, and the turn must come back then too).
        self._out: dict[int, object] = {}

    async def _acquire(self, timeout):
        if timeout is None:
            await self._turns.acquire()
        else:
            started = time.monotonic()
            await asyncio.wait_for(self._turns.acquire(), timeout)
            timeout = max(timeout - (time.monotonic() - started), 0.001)
        try:
            proxy = await super()._acquire(timeout)
        except BaseException:
            self._turns.release()
            raise
        self._out[id(proxy)] = proxy
        return proxy

    async def release(self, connection, *, timeout=None):
        try:
            return await super().release(connection, timeout=timeout)
        finally:
            if self._out.pop(id(connection), None) is not None:  # once per connection handed out
                self._turns.release()


def text_array(items) -> str | None:
    """A list of texts as one PostgreSQL array literal (`'{"a","b"}'`, cast `::text[]` in the
    statement): how a statement that takes one value per row (unnest of columns) is given a
    list per row. Every element quoted and escaped, so no text can split or merge elements
    (a separator such as U+001F could: ids from outside systems may hold any character but
    NUL, which the contracts refuse). None stays None (SQL NULL)."""
    if items is None:
        return None
    return "{" + ",".join(['"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"' for s in items]) + "}"


async def create_pool(dsn: str, *, min_size: int = 2, max_size: int = 10) -> asyncpg.Pool:
    return await _FairPool(
        dsn, min_size=min_size, max_size=max_size, max_queries=50_000, max_inactive_connection_lifetime=300.0,
        init=_init_connection, command_timeout=60, loop=None,
        connection_class=asyncpg.Connection, record_class=asyncpg.Record,
    )


async def connect(dsn: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(dsn)
    await _init_connection(conn)
    return conn


async def migrate(conn: asyncpg.Connection, migrations: list[Migration]) -> list[str]:
    """Apply what is missing; return the names applied now."""
    applied_now = []
    await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   name text PRIMARY KEY, checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        done = {r["name"]: r["checksum"] for r in await conn.fetch("SELECT name, checksum FROM schema_migrations")}
        for m in migrations:
            if m.name in done:
                if done[m.name] != m.checksum:
                    raise RuntimeError(f"migration {m.name} changed after it was applied; add a new migration instead")
                continue
            async with conn.transaction():
                await conn.execute(m.sql)
                await conn.execute("INSERT INTO schema_migrations (name, checksum) VALUES ($1, $2)", m.name, m.checksum)
            applied_now.append(m.name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
    return applied_now


async def pending(conn: asyncpg.Connection, migrations: list[Migration]) -> list[str]:
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    done = set()
    if exists:
        done = {r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")}
    return [m.name for m in migrations if m.name not in done]


async def ensure_database(dsn: str) -> None:
    """Create the service's database if missing (local stack and tests; needs CREATEDB)."""
    parts = urlsplit(dsn)
    name = parts.path.lstrip("/")
    admin = urlunsplit(parts._replace(path="/postgres"))
    conn = await asyncpg.connect(admin)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            try:
                await conn.execute(f'CREATE DATABASE "{name}"')
            except asyncpg.DuplicateDatabaseError:
                pass
    finally:
        await conn.close()


async def lock_until_commit(conn: asyncpg.Connection, namespace: int, keys, *, buckets: int,
                            shared: bool = False) -> None:
    """Transaction-level advisory locks on `keys` (strings, UUIDs or tuples), hashed into
    `buckets` locks of one namespace so a large batch takes a bounded number of them, in
    one order (two batches cannot deadlock on them alone). Released at commit or rollback.
    A service numbers its kinds of lock 1, 2, ... (namespace): keys below the kit's own."""
    held = sorted({(namespace << 20) + zlib.crc32(_text(k).encode()) % buckets for k in keys})
    if held:
        fn = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
        await conn.execute(f"SELECT {fn}(k) FROM unnest($1::bigint[]) AS k", held)


@contextlib.asynccontextmanager
async def _set_locally(conn: asyncpg.Connection, name: str, value: str) -> AsyncIterator[None]:
    """The setting `name` at `value` for the statements inside, as it was after them (in a
    transaction: a failure fails it, and the setting with it)."""
    was = await conn.fetchval(
        "SELECT w.was FROM (SELECT current_setting($1) AS was OFFSET 0) w, LATERAL set_config($1, $2, true)",
        name, value)
    yield
    await conn.execute("SELECT set_config($1, $2, true)", name, was)


# Every statement of a transaction that begins with this reads no table whole where an index
# can answer: for the consumer's batches (a handler touches what its events name) and the
# outbox relay's passes (rows by id), whose statements are all probes, key by key. Their
# plans otherwise follow the statistics, and statistics taken while a table was empty (a
# fresh service, a district's first burst) say a scan of it costs nothing; PostgreSQL keeps
# one generic plan for a prepared statement after five calls, in a service's own statements
# and in the functions its tables' triggers run. Kept on a fresh service, such plans read all
# of cases for every task a trigger stored (the cases service fell from 4,800 to 2,100
# triggers a second at 5,000 offered), all memberships for every student written, all
# students every batch (tests/integration/test_probes_by_index.py). And even planned for its
# own arguments, a statement probing thousands of keys may be costed as a scan, PostgreSQL's
# model expecting pages read from disk: the relay took every pass's rows out of the outbox
# by reading all of it (tests/integration/test_relay.py).
PROBES = "SET LOCAL enable_seqscan = off"


def probing_by_index(conn: asyncpg.Connection) -> contextlib.AbstractAsyncContextManager[None]:
    """Inside it, no statement on conn reads a whole table where an index can answer
    (enable_seqscan off, in a transaction): for statements written as probes, key by key.

    Their plans otherwise follow the statistics, and statistics taken while a table was empty
    (a fresh service, a district's first burst) say a scan of it costs nothing. PostgreSQL
    plans a prepared statement for its arguments five times, then may keep one generic plan
    for good: that plan then read the whole table for every probe as it grew, until
    autovacuum's next ANALYZE (a minute or more). The cases service's trigger lookup took
    370 us a probe, 578 ms a batch, and triggers backed up to a p99 of 37 s. A generic plan
    made with the scans off probes by index whatever the statistics say, and costs no
    planning per call. Two round trips."""
    return _set_locally(conn, "enable_seqscan", "off")


def planned_for_arguments(conn: asyncpg.Connection) -> contextlib.AbstractAsyncContextManager[None]:
    """Inside it, every statement on conn is planned for its own arguments (a custom plan,
    plan_cache_mode), never by the generic plan PostgreSQL may keep for a prepared statement
    after five calls, which guesses an array parameter at 10 elements (for 10,000 a
    caseload refresh's nested loops ran for minutes). Two round trips, and the planning."""
    return _set_locally(conn, "plan_cache_mode", "force_custom_plan")


def _text(key) -> str:
    """repr(key), which names its lock: for a UUID made from its int here, as UUID.__repr__
    would make it through two Python calls (a batch of students locks thousands)."""
    if type(key) is UUID:
        h = "%032x" % key.int
        return f"UUID('{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}')"
    return repr(key)
