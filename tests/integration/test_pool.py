"""The kit's connection pool (services/kit/db.py) on a real PostgreSQL: connections go to
those waiting in the order they asked, a connection returned is reset (its transaction
rolled back, a session-level advisory lock released), and one that breaks while out still
gives its turn back."""

from __future__ import annotations

import asyncio

import pytest

from services.kit import db

pytestmark = pytest.mark.integration


async def test_waiters_are_served_in_the_order_they_asked(postgres_url):
    """50 callers on a pool of 2, each asking again as soon as served: nobody is passed by
    callers who asked after them (asyncpg's own pool let some be passed by 140-190 of them;
    at most a few slips of a connection still on its way back are allowed here)."""
    pool = await db.create_pool(postgres_url, min_size=2, max_size=2)
    asked = granted = passed_by = 0

    async def caller():
        nonlocal asked, granted, passed_by
        for _ in range(40):
            ticket, asked = asked, asked + 1
            async with pool.acquire() as conn:
                passed_by = max(passed_by, granted - ticket)
                granted += 1
                await conn.fetchval("SELECT 1")

    try:
        await asyncio.gather(*(caller() for _ in range(50)))
    finally:
        await pool.close()
    assert granted == 2000 and passed_by <= 4, passed_by


async def test_a_returned_connection_is_reset(postgres_url):
    pool = await db.create_pool(postgres_url, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            await conn.execute("BEGIN")
            await conn.execute("CREATE TEMP TABLE left_open (x int)")
        async with pool.acquire() as conn:
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SELECT to_regclass('pg_temp.left_open')") is None
            await conn.execute("SELECT pg_advisory_lock(7461999)")  # as the roster importer holds one
        other = await db.connect(postgres_url)
        try:
            assert await other.fetchval("SELECT pg_try_advisory_lock(7461999)")
        finally:
            await other.close()
    finally:
        await pool.close()


async def test_a_connection_broken_while_out_gives_its_turn_back(postgres_url):
    pool = await db.create_pool(postgres_url, min_size=1, max_size=2)
    try:
        for _ in range(5):
            async with pool.acquire() as conn:
                await pool.fetchval("SELECT pg_terminate_backend($1)", conn.get_server_pid())
                with pytest.raises(Exception):  # noqa: B017 - whichever way asyncpg says it broke
                    await conn.fetchval("SELECT 1")
        answers = await asyncio.wait_for(asyncio.gather(*(pool.fetchval("SELECT $1::int", n) for n in range(10))), 10)
        assert answers == list(range(10))
    finally:
        await pool.close()
