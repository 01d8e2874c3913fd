"""The real Kafka broker and PostgreSQL server a bench runs against:
KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL when set, else Apache Kafka from Maven's jars
(deploy/local/kafka.sh, left running) and an embedded PostgreSQL of the bench's own
(data in .caseflow/<folder>, stopped with the bench)."""

from __future__ import annotations

import os
import subprocess
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[1]


def backends(stack: ExitStack, folder: str, postgres_settings: dict[str, str] | None = None) -> tuple[str, str]:
    """(Kafka bootstrap servers, PostgreSQL URL)."""
    kafka = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if not kafka:
        out = subprocess.run([ROOT / "deploy/local/kafka.sh", "start"], capture_output=True, text=True, check=True)
        kafka = out.stdout.strip().splitlines()[-1]
    pg = os.environ.get("DATABASE_URL")
    if not pg:
        from deploy.local.embedded import EmbeddedPostgres

        server = EmbeddedPostgres(ROOT / ".caseflow" / folder, settings=postgres_settings or {})
        pg = server.start()
        stack.callback(server.stop)
    return kafka, pg


def dsn_for(server: str, name: str) -> str:
    """The URL of database `name` on the server of `server`."""
    return urlunsplit(urlsplit(server)._replace(path=f"/{name}"))
