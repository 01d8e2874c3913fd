from __future__ import annotations

import os
import uuid
from contextlib import ExitStack
from urllib.parse import urlsplit, urlunsplit

import pytest

from services.kit import db
from tests import backends
from tests.support import Backends, Stack


# "Today", for every import and service the tests run: a school day of the fixtures' year
# (tests/fixtures/oneroster: terms 2026-09-10 .. 2027-06-25), so no test depends on the
# day it runs. Tests about dates pass their own.
TEST_TODAY = "2026-11-02"
os.environ.setdefault("CASEFLOW_TODAY", TEST_TODAY)


@pytest.fixture(scope="session")
def postgres_url():
    """A real PostgreSQL server for the whole session."""
    with ExitStack() as stack:
        yield backends.postgres(stack)


@pytest.fixture(scope="session")
def kafka_bootstrap():
    """A real Kafka broker for the whole session."""
    with ExitStack() as stack:
        yield backends.kafka(stack)


@pytest.fixture(scope="session")
def real_backends(kafka_bootstrap, postgres_url):
    return Backends(kafka=kafka_bootstrap, postgres=postgres_url)


@pytest.fixture
async def system(real_backends):
    """A fresh, isolated system: own topic prefix, own databases; services stopped after."""
    stack = Stack(real_backends)
    yield stack
    await stack.stop()


@pytest.fixture
async def service_db(postgres_url):
    """A fresh database migrated for one service: `await service_db("roster")` gives a pool."""
    pools = []

    async def make(service: str):
        from importlib import import_module

        dsn = urlunsplit(urlsplit(postgres_url)._replace(path=f"/t{uuid.uuid4().hex[:10]}_{service}"))
        await db.ensure_database(dsn)
        conn = await db.connect(dsn)
        try:
            directory = import_module(f"services.{service}.app").definition().directory
            await db.migrate(conn, db.migrations_for(service, directory))
        finally:
            await conn.close()
        pool = await db.create_pool(dsn, min_size=1, max_size=4)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        await pool.close()
