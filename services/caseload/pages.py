"""Caseload pages kept in memory and served again while they are still true.

A caseload page (`GET /v1/caseloads/me`, `/v1/caseloads/{owner}`) is the answer most read
and least often changed: a teacher opens it many times a day, the roster changes it a few
times a term. PostgreSQL builds it as JSON (store.caseload_page_read); each instance of the
service keeps the bytes, with the snapshot they were read in, for at most KEEP_SECONDS.

Why a kept page is never stale, whichever instance made the change: every transaction that
changes what a page shows (a membership added, removed or changed; a student's name, grade
or schools) writes, in that transaction, one row per owner it touches into
caseload_page_changes with its transaction id (triggers, migration 008, so no writer can
forget). Before answering from a kept page the service asks PostgreSQL one indexed
question (store.caseload_page_changed): is there a row for this owner that the page's
snapshot does not see? A transaction that committed after the page was read is invisible
in its snapshot, so the page is read again; one still running has changed nothing anyone
can see yet. The check runs on every request, so a change is seen as soon as it commits,
exactly as if the page were read afresh (there is no time window, and no message between
instances to be lost or late).

Who may read a page is not cached: every request's token is checked, and the grants this
service holds for the caller are read on every request, in the same query as the check
(own_caseload, PageChecks; or by services/kit/auth.py), before a page is served. The caseload service
writes a grant or a revoke itself, in one transaction, so the request after the revoke's
commit is refused by every instance. A page is kept under everything it was read with (district, owner, the
filters, the cursor, the size, and the schools an admin's view is limited to) and its
content depends on nothing else, so two callers with the same key are owed the same bytes;
one of another district or limited to other schools has another key.

The rows are forgotten (upkeep.keep_page_changes_bounded) only when older than every
snapshot a kept page can hold: it notes the oldest running transaction, and removes the
rows below it FORGET_AFTER_SECONDS later, when every page kept then has expired.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from uuid import UUID

import asyncpg

from services.caseload import store
from services.kit import access
from services.kit.identity import Identity

KEEP_SECONDS = 60.0  # a page is read afresh at least this often, changed or not
FORGET_AFTER_SECONDS = 10 * KEEP_SECONDS  # see the module's docstring: must exceed KEEP_SECONDS
MAX_BYTES = 64 * 1024 * 1024  # pages kept per instance (a 150-student page is ~35 kB)


@dataclass(frozen=True)
class PageKey:
    """Everything a page is read with: its content depends on nothing else."""

    district_id: str
    owner_email: str
    school_id: str | None
    grade: str | None
    reason: str | None
    after: UUID | None
    limit: int
    schools: tuple[str, ...] | None  # an admin's view: only these schools' students


@dataclass(frozen=True)
class Kept:
    body: bytes  # the JSON, as sent
    snapshot: str  # pg_current_snapshot() of the statement that read it, as text
    expires: float


class PageCache:
    """Least recently used pages, at most `max_bytes` of them, none older than
    `keep_seconds`. One per running service (app.py); no I/O."""

    def __init__(self, *, max_bytes: int = MAX_BYTES, keep_seconds: float = KEEP_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._pages: OrderedDict[PageKey, Kept] = OrderedDict()
        self._bytes = 0
        self._max_bytes = max_bytes
        self._keep_seconds = keep_seconds
        self._clock = clock

    def __len__(self) -> int:
        return len(self._pages)

    def get(self, key: PageKey) -> Kept | None:
        kept = self._pages.get(key)
        if kept is None:
            return None
        if kept.expires <= self._clock():
            self.drop(key)
            return None
        self._pages.move_to_end(key)
        return kept

    def put(self, key: PageKey, body: bytes, snapshot: str) -> None:
        self.drop(key)
        size = len(body)
        if size > self._max_bytes:
            return
        self._pages[key] = Kept(body, snapshot, self._clock() + self._keep_seconds)
        self._bytes += size
        while self._bytes > self._max_bytes:
            _, oldest = self._pages.popitem(last=False)
            self._bytes -= len(oldest.body)

    def drop(self, key: PageKey) -> None:
        kept = self._pages.pop(key, None)
        if kept is not None:
            self._bytes -= len(kept.body)


async def caseload_page(cache: PageCache, conn: asyncpg.Connection, key: PageKey) -> bytes:
    """The page as JSON: the kept one while nothing it shows has changed, else read afresh
    (and kept)."""
    kept = cache.get(key)
    if kept is not None and not await store.caseload_page_changed(
            conn, district_id=key.district_id, owner_email=key.owner_email, snapshot=kept.snapshot):
        return kept.body
    return await read_afresh(cache, conn, key)


class PageChecks:
    """The checks of many requests (own_caseload) in one query
    (store.grants_and_caseload_pages_changed), one query in flight at a time.

    A check joins the next query to be sent, never one already sent, so that query starts,
    and takes its snapshot, after the request arrived: it sees every commit made before,
    exactly as the request's own query would (a revoke committed before the request is
    read). When the service is idle a check goes at once, alone; under load each query
    carries every check that arrived while the one before was out, and they share one
    connection, one round trip and one statement (a round trip was half the CPU a kept
    page cost the service). One per running service (app.py)."""

    def __init__(self) -> None:
        self._next: list[tuple[tuple, asyncio.Future]] = []
        self._sender: asyncio.Task | None = None

    async def check(self, pool: asyncpg.Pool, district_id: str, email: str, owner_email: str,
                    snapshot: str | None) -> tuple[list, bool]:
        """(the caller's grants as access.holdings reads them, whether the owner's pages
        changed since `snapshot`)."""
        answer = asyncio.get_running_loop().create_future()
        self._next.append(((district_id, access.held_email(email), owner_email, snapshot), answer))
        if self._sender is None:
            self._sender = asyncio.create_task(self._send(pool))
        return await answer

    async def _send(self, pool: asyncpg.Pool) -> None:
        batch: list = []
        try:
            while self._next:
                batch, self._next = self._next, []
                try:
                    async with pool.acquire() as conn:
                        answers = await store.grants_and_caseload_pages_changed(conn, [c for c, _ in batch])
                except Exception as e:  # each request waiting on this query fails with it
                    for _, waiting in batch:
                        if not waiting.done():
                            waiting.set_exception(e)
                    continue
                for (_, waiting), a in zip(batch, answers, strict=True):
                    if not waiting.done():  # not given up (a client gone)
                        waiting.set_result(a)
        finally:
            self._sender = None
            for _, waiting in batch + self._next:  # stopped mid-way (the service stopping)
                if not waiting.done():
                    waiting.cancel()


async def own_caseload(cache: PageCache, checks: PageChecks, pool: asyncpg.Pool, token: Identity,
                       key: PageKey) -> tuple[Identity, bytes | None]:
    """The caller (as their token names them) with the grants this service holds for them,
    and their own kept page if it is still true (else None: read it afresh once they are
    found to be allowed), in one query."""
    kept = cache.get(key)
    held, changed = await checks.check(pool, key.district_id, token.email, key.owner_email,
                                       kept.snapshot if kept is not None else None)
    caller = access.with_grants(token, access.holdings(held))
    return caller, kept.body if kept is not None and not changed else None


async def read_afresh(cache: PageCache, conn: asyncpg.Connection, key: PageKey) -> bytes:
    text, snapshot = await store.caseload_page_read(
        conn, district_id=key.district_id, owner_email=key.owner_email, school_id=key.school_id, grade=key.grade,
        reason=key.reason, after=key.after, limit=key.limit,
        schools=None if key.schools is None else list(key.schools))
    body = text.encode()
    cache.put(key, body, snapshot)
    return body
