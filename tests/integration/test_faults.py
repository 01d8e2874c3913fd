"""The fault suite's CI subset (issue 9): bench/faults.py with 5,000 events, one SIGKILL of
each service, one broker restart and one PostgreSQL restart, duplicates and poison.

It runs on a broker and a PostgreSQL of its own (restarting the session's would disturb
every other test), on ports below the ephemeral range, state under .caseflow/faults-test.
"""

from __future__ import annotations

import socket

import pytest

from bench.faults import Options, run, table
from tests.backends import HOME

pytestmark = pytest.mark.integration


def _two_free_ports(start: int = 29692) -> tuple[int, int]:
    """Two free ports below the ephemeral range: a client's outgoing connection can never
    hold the broker's port while it restarts."""
    found = []
    for port in range(start, start + 200):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        found.append(port)
        if len(found) == 2:
            return found[0], found[1]
    raise RuntimeError("no free ports for the fault suite's broker")


async def test_nothing_is_lost_or_duplicated_through_kills_outages_duplicates_and_poison():
    port, controller = _two_free_ports()
    report = await run(Options(events=5_000, seed=9, kills_per_service=1, broker_restarts=1, postgres_restarts=1,
                               home=HOME / "faults-test", kafka_port=port, kafka_controller_port=controller))
    print(table(report))
    assert report.settled, "the system did not settle: some consumer lags or some outbox still holds events"
    assert [f.kind for f in report.unrecovered] == []
    assert report.lost == 0
    assert report.duplicated == 0
    assert report.unexpected == 0
    assert report.dead_letters_match, report.dead_letters
