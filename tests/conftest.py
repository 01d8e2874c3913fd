from __future__ import annotations

from contextlib import ExitStack

import pytest

from tests import backends
from tests.support import Backends, Stack


@pytest.fixture(scope="session")
def real_backends():
    """A real Kafka broker and PostgreSQL server for the whole session."""
    with ExitStack() as stack:
        yield Backends(kafka=backends.kafka(stack), postgres=backends.postgres(stack))


@pytest.fixture
async def system(real_backends):
    """A fresh, isolated system: own topic prefix, own databases; services stopped after."""
    stack = Stack(real_backends)
    yield stack
    await stack.stop()
