"""A Kafka outage, on a real Apache Kafka broker and a real PostgreSQL server: the roster
service's clients reconnect with exponential backoff, their connection errors are logged at
a bounded rate, and the service recovers by itself: its consumer consumes and commits again,
and its relay publishes what was emitted during the outage.

The service reaches its own broker (started for this module) only through a TCP proxy:
the broker advertises the proxy's address, so every connection of every client goes
through it, and the proxy counts them. The outage is cut at the proxy (the broker stays
up) or made by stopping the broker itself (deploy/local/kafka.sh stop, then start).

Each outage lasts longer than the points where the clients give up on what they were
doing: the relay producer's request timeout (30 s: a send in flight fails, and the relay
replaces its producer, which must bootstrap again), faststream's producer and admin request
timeout (40 s), the consumer's session timeout (10 s: the broker forgets the member, which
must find the coordinator and join again) and faststream's 5 s pause after a Kafka error."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
import uuid
from contextlib import ExitStack

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from contracts.roster import StudentEnrolled
from contracts.sis import SisStudentEnrolled
from services.kit import outbox
from services.kit.backoff import ConnectBackoff
from tests.backends import HOME, ROOT
from tests.proxy import KafkaProxy
from tests.support import Backends, ServiceProcess, Stack, eventually, free_port

pytestmark = pytest.mark.integration

STUDENTS = "roster.students.v1"
SIS = "sis.students.v1"
RECONNECT_MS, RECONNECT_MAX_MS = 100, 2000
LOG_REPEAT_SECONDS = 10.0
OUTAGE_SECONDS = 45.0  # longer than every give-up point (the module's docstring)
SERVICE_ENV = dict(
    KAFKA_RECONNECT_BACKOFF_MS=str(RECONNECT_MS),
    KAFKA_RECONNECT_BACKOFF_MAX_MS=str(RECONNECT_MAX_MS),
    KAFKA_LOG_REPEAT_SECONDS=str(LOG_REPEAT_SECONDS),
)


class Broker:
    """This module's own broker, advertised at the proxy's address."""

    def __init__(self, proxy_port: int) -> None:
        self.port, controller = free_port(), free_port()
        home = HOME / f"outage-kafka-{os.getpid()}"
        self.env = {
            **os.environ,
            "KAFKA_HOME_DIR": str(home),
            "KAFKA_LIBS_DIR": str(HOME / "kafka" / "libs"),
            "KAFKA_PORT": str(self.port),
            "KAFKA_CONTROLLER_PORT": str(controller),
            "KAFKA_HEAP": "-Xmx512m -Xms128m",
            "KAFKA_EXTRA_PROPERTIES": f"advertised.listeners=PLAINTEXT://127.0.0.1:{proxy_port},"
                                      f"CONTROLLER://127.0.0.1:{controller}",
        }

    def run(self, command: str) -> None:
        out = subprocess.run([ROOT / "deploy" / "local" / "kafka.sh", command], env=self.env,
                             capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"kafka.sh {command} failed:\n{out.stdout}\n{out.stderr}")


@pytest.fixture(scope="module")
def outage_kafka():
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        pytest.skip("needs a broker of its own (deploy/local/kafka.sh), not KAFKA_BOOTSTRAP_SERVERS")
    with ExitStack() as stack:
        proxy_port = free_port()
        broker = Broker(proxy_port)
        proxy = KafkaProxy("127.0.0.1", broker.port, port=proxy_port).start()
        stack.callback(proxy.close)
        stack.callback(broker.run, "reset")
        broker.run("start")
        yield proxy, broker


@pytest.fixture
async def outage_system(outage_kafka, postgres_url):
    proxy, broker = outage_kafka
    stack = Stack(Backends(kafka=proxy.address, postgres=postgres_url))
    yield stack, proxy, broker
    await stack.stop()


def sis_enrolled(source_id: str) -> SisStudentEnrolled:
    return SisStudentEnrolled(district_id="d-outage", source_id=source_id, school_id="02M001", grade="05",
                              given_name="Ana", family_name="Reyes")


async def published_sources(system: Stack) -> set[str]:
    return {json.loads(r.value)["source_id"] for r in await system.records(STUDENTS)}


async def committed_to_the_end(system: Stack, group: str, topic: str) -> bool:
    """Has `group` committed every partition of `topic` up to its end?"""
    consumer = AIOKafkaConsumer(bootstrap_servers=system.backends.kafka, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()  # noqa: SLF001 - a consumer without a subscription has none
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        ends = await consumer.end_offsets(partitions)
        committed = {tp: await consumer.committed(tp) or 0 for tp in partitions}
        return bool(partitions) and all(committed[tp] >= ends[tp] for tp in partitions)
    finally:
        await consumer.stop()


def kafka_log_lines(roster: ServiceProcess, start: int, end: int) -> list[dict]:
    """The Kafka clients' warnings and errors the service logged between two offsets of its log."""
    with open(roster.log_path, "rb") as f:
        f.seek(start)
        text = f.read(end - start).decode(errors="replace")
    lines = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        logger = record.get("logger", "")
        if logger.startswith(("aiokafka", "faststream")) or logger.endswith(".broker"):
            lines.append(record)
    return lines


async def outage(system: Stack, proxy: KafkaProxy, roster: ServiceProcess, *, begin, end) -> tuple[int, float, list]:
    """Run an outage while the service has an event to publish; return the connections
    the service opened while the broker was away, how long that was, and what the Kafka
    clients logged meanwhile. Counted from when the broker is away to just before it is back."""
    await asyncio.to_thread(begin)
    log_start = roster.log_path.stat().st_size
    began = time.monotonic()
    accepted_before = proxy.accepted
    # An event emitted while the broker is away: the relay must publish it afterwards.
    conn = await system.db("roster")
    try:
        emitted = StudentEnrolled(district_id="d-outage", student_id=uuid.uuid4(), source_id="S-during",
                                  school_id="02M001", grade="05", given_name="Ana", family_name="Reyes")
        async with conn.transaction():
            await outbox.write(conn, [outbox.message_for(emitted, source="caseflow.roster",
                                                         kafka=system.kafka_settings)])
    finally:
        await conn.close()
    await asyncio.sleep(OUTAGE_SECONDS)  # the outage itself, not a wait for a result
    attempts = proxy.accepted - accepted_before
    lasted = time.monotonic() - began
    logged = kafka_log_lines(roster, log_start, roster.log_path.stat().st_size)
    await asyncio.to_thread(end)
    return attempts, lasted, logged


def assert_bounded(attempts: int, lasted: float, logged: list[dict]) -> None:
    # Connections: per broker address (one here: the proxy), at most the backoff's doubling
    # steps plus one per maximum delay over the outage, whatever the number of clients.
    most = ConnectBackoff(RECONNECT_MS / 1000, RECONNECT_MAX_MS / 1000).most_attempts(lasted)
    print(f"outage of {lasted:.0f}s: {attempts} connections (at most {most}), {len(logged)} Kafka log lines")
    assert 0 < attempts <= most, f"{attempts} connections in a {lasted:.0f}s outage; at most {most} expected"
    # Logs: one line per logger and kind of message per LOG_REPEAT_SECONDS.
    kinds: dict[tuple[str, str], int] = {}
    for record in logged:
        kind = (record["logger"], record["event"].split(":")[0])
        kinds[kind] = kinds.get(kind, 0) + 1
    for kind, count in kinds.items():
        assert count <= lasted / LOG_REPEAT_SECONDS + 1, f"{count} lines of {kind} in {lasted:.0f}s"


async def recovered(system: Stack, roster: ServiceProcess) -> None:
    """The event emitted during the outage is published, and an event arriving afterwards
    is consumed, handled, published and its offset committed: with no restart."""
    await eventually(lambda: _has(system, "S-during"), timeout=120,
                     what="the relay to publish what was emitted during the outage")
    await system.publish(sis_enrolled("S-after"))
    await eventually(lambda: _has(system, "S-after"), timeout=120,
                     what="the consumer to handle an event sent after the outage")
    await eventually(lambda: committed_to_the_end(system, system.topic("caseflow.roster.sis-students"), system.topic(SIS)),
                     timeout=120, what="the consumer to commit its offsets after the outage")
    assert roster.proc.poll() is None


async def _has(system: Stack, source_id: str) -> bool:
    return source_id in await published_sources(system)


async def started_roster(system: Stack) -> ServiceProcess:
    await system.prepare("roster")
    roster = await system.service("roster", **SERVICE_ENV).start().ready()
    await system.publish(sis_enrolled("S-before"))
    await eventually(lambda: _has(system, "S-before"), timeout=60, what="the roster to work before the outage")
    return roster


async def test_a_service_cut_off_from_kafka_reconnects_with_backoff_logs_little_and_recovers(outage_system):
    system, proxy, _broker = outage_system
    roster = await started_roster(system)

    attempts, lasted, logged = await outage(system, proxy, roster, begin=proxy.cut_off, end=proxy.restore)

    assert_bounded(attempts, lasted, logged)
    await recovered(system, roster)


async def test_a_service_recovers_by_itself_when_the_broker_is_stopped_and_started(outage_system):
    system, proxy, broker = outage_system
    roster = await started_roster(system)

    attempts, lasted, logged = await outage(system, proxy, roster, begin=lambda: broker.run("stop"),
                                            end=lambda: broker.run("start"))

    assert_bounded(attempts, lasted, logged)
    await recovered(system, roster)
