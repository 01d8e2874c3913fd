"""Helpers for tests that run the real services as processes on a real broker and database."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from contracts import cloudevents
from contracts.envelope import Event
from contracts.topics import Topic, partition_key, topic_for
from services.kit import db
from services.kit.auth import mint
from services.kit.settings import KafkaSettings

ROOT = Path(__file__).resolve().parents[1]
SECRET = "test-secret-" + "x" * 32


def free_port() -> int:
    """A port nothing listens on, below Linux's ephemeral range (32768-60999): a port the
    kernel handed out could be taken by any client's connection before a service binds it."""
    import random

    for _ in range(200):
        port = random.randrange(20_000, 32_000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port between 20000 and 32000")


def token(district: str, roles: list[str], schools: list[str] | None = None, ttl: int = 600, secret: str = SECRET) -> str:
    return mint(secret, email="staff@example.org", district_id=district, schools=schools or [], roles=roles,
                ttl_seconds=ttl)


async def eventually(check: Callable, timeout: float = 30.0, interval: float = 0.2, what: str = "condition"):
    """Poll an async check until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {value!r}")
        await asyncio.sleep(interval)


@dataclass
class Backends:
    kafka: str
    postgres: str


@dataclass
class Stack:
    """One isolated system under test: its own topic prefix and its own databases."""

    backends: Backends
    prefix: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:8]}.")
    processes: list[ServiceProcess] = field(default_factory=list)

    @property
    def kafka_settings(self) -> KafkaSettings:
        return KafkaSettings(bootstrap_servers=self.backends.kafka, topic_prefix=self.prefix,
                             enable_idempotence=os.environ.get("KAFKA_ENABLE_IDEMPOTENCE", "true") == "true")

    def topic(self, name: str) -> str:
        return self.prefix + name

    def database_url(self, service: str) -> str:
        parts = urlsplit(self.backends.postgres)
        return urlunsplit(parts._replace(path=f"/{self.prefix.rstrip('.')}_{service}"))

    def env(self, service: str, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CASEFLOW_")}
        env["CASEFLOW_TODAY"] = os.environ.get("CASEFLOW_TODAY", "")  # the tests' fixed day (tests/conftest.py)
        env.update(
            KAFKA_BOOTSTRAP_SERVERS=self.backends.kafka,
            CASEFLOW_TOPIC_PREFIX=self.prefix,
            CASEFLOW_JWT_SECRET=SECRET,
            **{f"CASEFLOW_{service.upper()}_DATABASE_URL": self.database_url(service)},
            CASEFLOW_CONSUMER_BATCH_SIZE="500",
            PYTHONPATH=str(ROOT),
        )
        env.update(extra)  # may override the defaults above (a bench's batch size)
        return env

    async def prepare(self, *services: str) -> None:
        from services.kit.topics import provision

        await provision(self.kafka_settings)
        for service in services:
            await db.ensure_database(self.database_url(service))

    def service(self, name: str, **extra_env: str) -> ServiceProcess:
        proc = ServiceProcess(name, self, extra_env)
        self.processes.append(proc)
        return proc

    async def db(self, service: str) -> asyncpg.Connection:
        return await asyncpg.connect(self.database_url(service))

    async def publish(self, event: Event, *, source: str = "tests.sis", key: str | None = None,
                      partition: int | None = None) -> None:
        await self.produce_raw(
            topic_for(event).name, cloudevents.encode(event),
            key=(key or partition_key(event)).encode(), headers=cloudevents.headers_for(event, source),
            partition=partition,
        )

    async def publish_all(self, events: list[Event], *, source: str = "tests") -> None:
        """Publish events in order with one producer, each to its registry topic and key."""
        producer = AIOKafkaProducer(bootstrap_servers=self.backends.kafka)
        await producer.start()
        try:
            for event in events:
                await producer.send_and_wait(self.topic(topic_for(event).name), cloudevents.encode(event),
                                             key=partition_key(event).encode(),
                                             headers=cloudevents.headers_for(event, source))
        finally:
            await producer.stop()

    async def publish_to(self, topic: Topic, event: Event, *, source: str = "tests") -> None:
        """Publish an event of a test-only topic (not in the registry)."""
        await self.produce_raw(topic.name, cloudevents.encode(event), key=str(getattr(event, topic.key_field)).encode(),
                               headers=cloudevents.headers_for(event, source))

    async def produce_raw(self, topic: str, value: bytes, *, key: bytes | None, headers: list[tuple[str, bytes]],
                          partition: int | None = None) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.backends.kafka)
        await producer.start()
        try:
            await producer.send_and_wait(self.topic(topic), value, key=key, headers=headers, partition=partition)
        finally:
            await producer.stop()

    async def records(self, topic: str, *, key: bytes | None = None) -> list:
        """Every record now on a topic (read from the start, no group), optionally one key's."""
        consumer = AIOKafkaConsumer(bootstrap_servers=self.backends.kafka, enable_auto_commit=False)
        await consumer.start()
        try:
            name = self.topic(topic)
            partitions = [TopicPartition(name, p) for p in (consumer.partitions_for_topic(name) or set())]
            if not partitions:
                await consumer._client.force_metadata_update()  # noqa: SLF001 - fresh topic metadata
                partitions = [TopicPartition(name, p) for p in (consumer.partitions_for_topic(name) or set())]
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            ends = await consumer.end_offsets(partitions)
            out = []
            while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
                batch = await consumer.getmany(timeout_ms=500)
                for recs in batch.values():
                    out.extend(recs)
            return [r for r in out if key is None or r.key == key]
        finally:
            await consumer.stop()

    async def caught_up(self, *services: str, timeout: float = 60.0) -> None:
        """Wait until these services have nothing in flight: each has handled every record now
        on the topics it reads (each of its consumer groups has committed the end offset of
        every partition), has published everything it wrote (its outbox is empty), and no
        record arrived while this was being checked.

        The barrier before asserting that something did not happen, or before reading facts
        that several events (several keys, topics or services) make: waiting for one of them
        says nothing of the others. Name every service of a chain (the roster and the
        caseload service for a roster import seen by caseloads)."""
        from importlib import import_module

        from aiokafka.admin import AIOKafkaAdminClient

        groups = {self.topic(sub.consumer): self.topic(sub.topic.name)
                  for service in services for sub in import_module(f"services.{service}.app").definition().subscriptions}
        consumer = AIOKafkaConsumer(bootstrap_servers=self.backends.kafka, enable_auto_commit=False)
        admin = AIOKafkaAdminClient(bootstrap_servers=self.backends.kafka)
        conns = {}
        await consumer.start()
        await admin.start()
        try:
            await consumer._client.force_metadata_update()  # noqa: SLF001 - fresh topic metadata
            partitions = [TopicPartition(topic, p) for topic in set(groups.values())
                          for p in consumer.partitions_for_topic(topic) or ()]
            for service in services:
                conns[service] = await self.db(service)
            behind: list[str] = []

            async def settled() -> bool:
                behind.clear()
                ends = await consumer.end_offsets(partitions) if partitions else {}
                for group, topic in groups.items():
                    committed = await admin.list_consumer_group_offsets(group)
                    for tp in partitions:
                        done = max(committed[tp].offset, 0) if tp in committed else 0
                        if tp.topic == topic and done < ends[tp]:
                            behind.append(f"{group} at {done} of {ends[tp]} on {tp.topic}[{tp.partition}]")
                for service, conn in conns.items():
                    try:
                        unsent = await conn.fetchval("SELECT count(*) FROM outbox")
                    except asyncpg.UndefinedTableError:
                        unsent = "no outbox yet: not started"
                    if unsent:
                        behind.append(f"{service}'s outbox: {unsent}")
                if not behind and partitions and await consumer.end_offsets(partitions) != ends:
                    behind.append("records arrived while checking")
                return not behind

            try:
                await eventually(settled, timeout, what=f"{', '.join(services)} caught up")
            except AssertionError as e:
                raise AssertionError(f"{e}: {'; '.join(behind)}") from None
        finally:
            for conn in conns.values():
                await conn.close()
            await admin.close()
            await consumer.stop()

    async def stop(self) -> None:
        for proc in self.processes:
            proc.stop()
        await self.delete_topics()

    async def delete_topics(self) -> None:
        """Each stack's ~170 partitions hold open files on the one broker of a test run:
        give them back, or a long run exhausts the broker's file handles."""
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=self.backends.kafka)
        await admin.start()
        try:
            mine = [t for t in await admin.list_topics() if t.startswith(self.prefix)]
            if mine:
                await admin.delete_topics(mine)
        except Exception as e:  # noqa: BLE001 - cleanup: a failure here must not fail the test
            print(f"could not delete the topics of {self.prefix}: {e!r}")
        finally:
            await admin.close()


class ServiceProcess:
    """A real service process (python -m services.<name>), logs kept in a file."""

    def __init__(self, name: str, stack: Stack, extra_env: dict[str, str]) -> None:
        self.name = name
        self.stack = stack
        self.port = free_port()
        self.extra_env = extra_env
        self.proc: subprocess.Popen | None = None
        self.log_path = ROOT / ".caseflow" / "test-logs" / f"{stack.prefix}{name}-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, **extra_env: str) -> ServiceProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = self.stack.env(self.name, **{f"CASEFLOW_{self.name.upper()}_HTTP_PORT": str(self.port)},
                             **self.extra_env, **extra_env)
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen([sys.executable, "-m", f"services.{self.name}"], env=env, cwd=ROOT,
                                     stdout=log, stderr=subprocess.STDOUT)
        return self

    async def ready(self, timeout: float = 60.0) -> ServiceProcess:
        last = {"readyz": None}

        async def check():
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                async with httpx.AsyncClient() as client:
                    answer = await client.get(self.url + "/readyz", timeout=2)
                    last["readyz"] = answer.text
                    # This very process: another one answering on a reused port is not it.
                    return answer.status_code == 200 and answer.json().get("pid") == self.proc.pid
            except (httpx.HTTPError, ValueError):
                return False

        try:
            await eventually(check, timeout, what=f"{self.name} ready")
        except AssertionError as e:
            raise AssertionError(f"{e}\n/readyz: {last['readyz']}\nlog:\n{self.log()[-3000:]}") from None
        return self

    async def exited(self, timeout: float = 60.0) -> int:
        async def check():
            return self.proc.poll() is not None

        await eventually(check, timeout, what=f"{self.name} to exit")
        return self.proc.returncode

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_lines(self) -> list[dict]:
        lines = []
        for line in self.log().splitlines():
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return lines


async def second_runs_before_first_commits(pool: asyncpg.Pool, first, second, *, settings) -> None:
    """Two handler calls, (handler, events) each, in two transactions at once: the first
    runs but does not commit; the second starts; only then the first commits. Whatever
    one must see of the other has to survive this interleaving."""
    from services.kit.consumer import UnitOfWork

    def uow(conn):
        return UnitOfWork(conn, source=f"caseflow.{settings.service}", settings=settings)

    async def in_transaction(conn, step) -> None:
        async with conn.transaction():
            await step[0](uow(conn), step[1])

    async with pool.acquire() as a, pool.acquire() as b:
        tx = a.transaction()
        await tx.start()
        await first[0](uow(a), first[1])
        later = asyncio.create_task(in_transaction(b, second))
        # The second goes as far as it can while the first is open: until it waits for a
        # lock the first holds, or is done. A pause instead proves neither under load.
        second_pid = b.get_server_pid()
        async with pool.acquire() as watcher:
            async def waits_or_done():
                return later.done() or await watcher.fetchval(
                    "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", second_pid)

            await eventually(waits_or_done, what="the second transaction to wait for the first, or to finish")
        await tx.commit()
        await later
