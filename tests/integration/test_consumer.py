"""The service kit's consumer on a real broker and database: a handler that fails for good
on one event dead-letters that event only; the others in its batch are applied."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Literal

import pytest
from faststream.kafka import KafkaBroker
from pydantic import Field

from contracts.envelope import Event
from contracts.roster import EnrollmentAdded
from contracts.topics import Topic
from services.kit import db
from services.kit.consumer import EventConsumer, Subscription, UnitOfWork
from services.kit.metrics import Metrics
from services.kit.settings import AuthSettings, Settings
from tests.support import Stack, eventually

pytestmark = pytest.mark.integration


class MarkRecorded(Event):
    event_type: Literal["test.mark_recorded.v1"] = Field(default="test.mark_recorded.v1")
    student: str
    mark: int


MARKS = Topic(name="test.marks.v1", key_field="student", partitions=1, events=(MarkRecorded,), description="test")


async def record_marks(uow: UnitOfWork, events: list[MarkRecorded]) -> None:
    for e in events:
        if e.mark < 0:
            raise ValueError("a mark cannot be negative")
        await uow.conn.execute("INSERT INTO marks (student, mark) VALUES ($1, $2)", e.student, e.mark)


async def marks_service(system: Stack, tmp_path: Path, handler) -> tuple:
    """A tiny service of marks on the kit: its topic, its database, a consumer on a broker."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=system.backends.kafka)
    await admin.start()
    await admin.create_topics([NewTopic(system.topic(MARKS.name), 1, 1), NewTopic(system.topic(MARKS.dead_letter), 1, 1)])
    await admin.close()
    (tmp_path / "migrations").mkdir()
    (tmp_path / "migrations" / "001_marks.sql").write_text("CREATE TABLE marks (student text, mark int);")
    dsn = system.database_url("marks")
    await db.ensure_database(dsn)
    conn = await db.connect(dsn)
    await db.migrate(conn, db.migrations_for("marks", tmp_path))
    settings = Settings(service="marks", database_url=dsn, kafka=system.kafka_settings,
                        auth=AuthSettings(secret="x" * 40), http_port=0)
    pool = await db.create_pool(dsn)
    broker = KafkaBroker(system.backends.kafka)
    metrics = Metrics("marks")
    EventConsumer(Subscription(MARKS, f"test-{uuid.uuid4().hex[:6]}", {MarkRecorded: handler}),
                  pool=pool, settings=settings, metrics=metrics, after_commit=lambda: None).attach(broker)
    return conn, pool, broker, metrics


async def test_a_handler_failing_on_one_event_dead_letters_it_and_applies_the_rest(system: Stack, tmp_path: Path):
    conn, pool, broker, _ = await marks_service(system, tmp_path, record_marks)
    for student, mark in (("a", 90), ("b", -1), ("c", 75)):
        await system.publish_to(MARKS, MarkRecorded(district_id="d", student=student, mark=mark))
    await broker.start()
    try:
        await eventually(lambda: conn.fetchval("SELECT count(*) = 2 FROM marks"), what="the two good marks")
        assert sorted(await conn.fetch("SELECT student FROM marks")) == [("a",), ("c",)]
        # The dead letter waits in the outbox (no relay runs here), with its reason.
        row = await conn.fetchrow("SELECT topic, key, headers FROM outbox")
        headers = dict(zip(row["headers"][::2], row["headers"][1::2], strict=True))
        assert row["topic"] == system.topic(MARKS.dead_letter) and row["key"] == b"b"
        assert headers["dlt_reason"] == "handler failed: ValueError: a mark cannot be negative"
        assert await conn.fetchval("SELECT count(*) FROM inbox") == 3
    finally:
        await broker.stop()
        await pool.close()
        await conn.close()
        await asyncio.sleep(0)


async def test_a_handler_emitting_an_event_that_cannot_be_published_dead_letters_its_event_only(
        system: Stack, tmp_path: Path):
    async def record_and_announce(uow: UnitOfWork, events: list[MarkRecorded]) -> None:
        await record_marks(uow, [e for e in events if e.mark >= 0])
        for e in events:
            announced = EnrollmentAdded(district_id=e.district_id, person_id=uuid.uuid4(), role="student",
                                        class_id=uuid.uuid4(), class_source_id="ALG1-02", user_source_id=e.student,
                                        school_id="02M001", primary=False)
            if e.mark < 0:  # a bug of the kind a roster import once had: no person
                announced = announced.model_copy(update={"person_id": None})
            uow.emit(announced)

    conn, pool, broker, _ = await marks_service(system, tmp_path, record_and_announce)
    for student, mark in (("a", 90), ("Reyes", -1), ("c", 75)):
        await system.publish_to(MARKS, MarkRecorded(district_id="d", student=student, mark=mark))
    await broker.start()
    try:
        await eventually(lambda: conn.fetchval("SELECT count(*) = 3 FROM outbox"), what="two events, one dead letter")
        assert sorted(await conn.fetch("SELECT student FROM marks")) == [("a",), ("c",)]
        announced = await conn.fetch("SELECT key FROM outbox WHERE topic = $1",
                                     system.topic("roster.enrollments.v1"))
        assert len(announced) == 2 and all(r["key"] for r in announced)
        row = await conn.fetchrow("SELECT key, headers FROM outbox WHERE topic = $1", system.topic(MARKS.dead_letter))
        headers = dict(zip(row["headers"][::2], row["headers"][1::2], strict=True))
        assert row["key"] == b"Reyes"
        assert headers["dlt_reason"] == ("handler failed: Unpublishable: roster.enrollment_added.v1: "
                                         "no key (person_id is empty)")
    finally:
        await broker.stop()
        await pool.close()
        await conn.close()
        await asyncio.sleep(0)


async def test_a_transient_failure_is_retried_and_applied_once(system: Stack, tmp_path: Path):
    attempts = []

    async def flaky(uow: UnitOfWork, events: list[MarkRecorded]) -> None:
        attempts.append(len(events))
        if len(attempts) <= 2:
            raise ConnectionResetError("database went away")  # what a dropped connection raises
        await record_marks(uow, events)

    conn, pool, broker, metrics = await marks_service(system, tmp_path, flaky)
    await system.publish_to(MARKS, MarkRecorded(district_id="d", student="a", mark=90))
    await broker.start()
    try:
        await eventually(lambda: conn.fetchval("SELECT count(*) = 1 FROM marks"), what="the mark, after retries")
        assert len(attempts) == 3
        assert metrics.failed.labels(stage="consume")._value.get() == 2
        assert await conn.fetchval("SELECT count(*) FROM outbox") == 0  # nothing dead-lettered
    finally:
        await broker.stop()
        await pool.close()
        await conn.close()
