"""The benches' reading of the PostgreSQL server's CPU (bench/harness.py: server_cpu_seconds)
on a real server: the embedded one runs in a PID namespace of its own, where
pg_backend_pid() names no process of this machine's /proc (or another process), so the
server is found by its data directory."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import asyncpg
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import harness  # noqa: E402

from tests import backends  # noqa: E402

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(bool(os.environ.get("DATABASE_URL")) or backends.docker_answers(),
                                 reason="the server may run on another machine or in a container")]


async def test_the_server_found_is_the_one_whose_backend_serves_this_connection(postgres_url):
    conn = await asyncpg.connect(postgres_url)
    try:
        port = conn._transport.get_extra_info("sockname")[1]
        data_dir = await conn.fetchval("SHOW data_directory")
        postmaster, children = harness.server_processes(data_dir)
        titles = [Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace") for pid in children]
        assert any(f"({port})" in title for title in titles), titles
    finally:
        await conn.close()


async def test_the_servers_cpu_counts_the_work_its_backends_did(postgres_url):
    before = await harness.server_cpu_seconds(postgres_url)
    conn = await asyncpg.connect(postgres_url)
    try:
        await conn.fetchval("SELECT count(*) FROM generate_series(1, 5000000)")
    finally:
        await conn.close()
    after = await harness.server_cpu_seconds(postgres_url)
    assert not math.isnan(before) and after > before  # the backend's work, reaped or not
