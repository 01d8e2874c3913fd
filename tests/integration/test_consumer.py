"""The service kit's consumer on a real broker and database: a handler that fails for good
on one event dead-letters that event only; the others in its batch are applied."""

from __future__ import annotations

import asyncio
import time
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


async def marks_service(system: Stack, tmp_path: Path, handler, *, batch_size: int = 2000,
                        consumer: str | None = None) -> tuple:
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
                        auth=AuthSettings(secret="x" * 40), http_port=0, consumer_batch_size=batch_size)
    pool = await db.create_pool(dsn)
    broker = KafkaBroker(system.backends.kafka)
    metrics = Metrics("marks")
    EventConsumer(Subscription(MARKS, consumer or f"test-{uuid.uuid4().hex[:6]}", {MarkRecorded: handler}),
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


async def test_an_event_already_claimed_or_twice_in_a_batch_is_handled_once_and_the_rest_of_its_batch_applied(
        system: Stack, tmp_path: Path):
    """A batch of new ids is claimed with one plain INSERT; one that holds an id already in
    the inbox, or one id twice, fails it, and is claimed id by id: every event once."""
    conn, pool, broker, metrics = await marks_service(system, tmp_path, record_marks, consumer="test-claims")
    seen = MarkRecorded(district_id="d", student="a", mark=90)
    await conn.execute("""INSERT INTO inbox (consumer, event_id, topic, partition, "offset")
                          VALUES ('test-claims', $1, $2, 0, 0)""", seen.event_id, MARKS.name)
    twice = MarkRecorded(district_id="d", student="c", mark=75)
    for event in (seen, MarkRecorded(district_id="d", student="b", mark=80), twice, twice):
        await system.publish_to(MARKS, event)
    await broker.start()
    try:
        await eventually(lambda: conn.fetchval("SELECT count(*) = 3 FROM inbox"), what="b and c claimed")
        await eventually(lambda: asyncio.sleep(0, metrics.duplicates.labels(topic=system.topic(MARKS.name))
                                               ._value.get() == 2), what="a and the second c skipped")
        assert sorted(await conn.fetch("SELECT student, mark FROM marks")) == [("b", 80), ("c", 75)]
        assert await conn.fetchval("SELECT count(*) FROM outbox") == 0  # nothing dead-lettered
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


@pytest.mark.parametrize("decode_turn", [250, 1])
async def test_a_batch_that_fails_is_read_again_with_the_batch_read_ahead_and_nothing_is_lost(
        system: Stack, tmp_path: Path, monkeypatch, decode_turn):
    """While a batch is handled the next is read ahead. When the batch fails (its
    transaction never commits), both are read again: every mark is recorded once, in order,
    and the group's committed offset ends at the end of the topic. Also when the failure
    comes while the batch read ahead is being decoded (decode_turn 1: the loop turns
    between every two records decoded ahead)."""
    from aiokafka.admin import AIOKafkaAdminClient

    from services.kit import consumer as kit_consumer

    monkeypatch.setattr(kit_consumer, "DECODE_TURN", decode_turn)
    decode = EventConsumer._decode  # noqa: SLF001

    def slow_decode(self, records, batch=None):
        time.sleep(0.01)  # a record that takes its time: the failure below lands mid-decode
        return decode(self, records, batch)

    monkeypatch.setattr(EventConsumer, "_decode", slow_decode)

    failures = []
    apply = EventConsumer._apply  # noqa: SLF001

    async def failing_once(self, batch, *, isolate):
        if len(failures) < 2 and batch.events and batch.events[0][1].mark in (3, 12):
            failures.append(batch.events[0][1].mark)
            await asyncio.sleep(0.015)  # the next batch is read by now, and being decoded
            raise RuntimeError("the database answered something unexpected")
        await apply(self, batch, isolate=isolate)

    monkeypatch.setattr(EventConsumer, "_apply", failing_once)
    name = f"test-{uuid.uuid4().hex[:6]}"
    conn, pool, broker, _ = await marks_service(system, tmp_path, record_marks, batch_size=3, consumer=name)
    await conn.execute("ALTER TABLE marks ADD COLUMN seq bigserial")
    for mark in range(30):
        await system.publish_to(MARKS, MarkRecorded(district_id="d", student="a", mark=mark))
    await broker.start()
    try:
        await eventually(lambda: conn.fetchval("SELECT count(*) >= 30 FROM marks"), what="every mark")
        await asyncio.sleep(1.0)  # a duplicate would show by now
        assert [r["mark"] for r in await conn.fetch("SELECT mark FROM marks ORDER BY seq")] == list(range(30))
        assert failures  # a batch did fail, while the next was read ahead
        admin = AIOKafkaAdminClient(bootstrap_servers=system.backends.kafka)
        await admin.start()
        try:
            async def committed_to_the_end() -> bool:
                offsets = await admin.list_consumer_group_offsets(system.kafka_settings.topic(name))
                return [o.offset for o in offsets.values()] == [30]
            await eventually(committed_to_the_end, what="the offsets committed to the end")
        finally:
            await admin.close()
    finally:
        await broker.stop()
        await pool.close()
        await conn.close()


async def test_a_batch_whose_statement_runs_past_its_timeout_is_handled_event_by_event(system: Stack, tmp_path: Path):
    """A statement over a whole batch that runs past the command timeout would do so again
    at every redelivery, blocking its partitions for ever: the batch is handled event by
    event instead, and every mark is recorded once."""
    sizes = []

    async def too_long_for_a_batch(uow: UnitOfWork, events: list[MarkRecorded]) -> None:
        sizes.append(len(events))
        if len(events) > 1:
            raise TimeoutError  # what asyncpg raises when a query runs past command_timeout
        await record_marks(uow, events)

    conn, pool, broker, _ = await marks_service(system, tmp_path, too_long_for_a_batch)
    for mark in range(5):
        await system.publish_to(MARKS, MarkRecorded(district_id="d", student="a", mark=mark))
    await broker.start()
    try:
        await eventually(lambda: conn.fetchval("SELECT count(*) >= 5 FROM marks"), what="every mark")
        assert sorted(r["mark"] for r in await conn.fetch("SELECT mark FROM marks")) == list(range(5))
        assert max(sizes) > 1 and sizes.count(1) >= 5  # tried whole, then one by one
        assert await conn.fetchval("SELECT count(*) FROM outbox") == 0  # nothing dead-lettered
    finally:
        await broker.stop()
        await pool.close()
        await conn.close()


async def test_an_event_whose_statement_always_runs_past_its_timeout_is_dead_lettered_and_the_rest_applied(
        system: Stack, tmp_path: Path):
    """An event whose statement runs past its timeout every time would be retried for ever,
    blocking its partition: alone, it is tried TIMEOUT_ATTEMPTS times, then dead-lettered
    with the reason; the events around it are applied once. Both timeouts are real: asyncpg's
    command timeout (mark 1) and the server's statement_timeout (mark 3)."""
    from services.kit.consumer import TIMEOUT_ATTEMPTS

    tries: dict[int, int] = {}

    async def slow_for_some(uow: UnitOfWork, events: list[MarkRecorded]) -> None:
        for e in events:
            if e.mark == 1:
                tries[1] = tries.get(1, 0) + 1
                await uow.conn.execute("SELECT pg_sleep(30)", timeout=0.3)
            if e.mark == 3:
                tries[3] = tries.get(3, 0) + 1
                await uow.conn.execute("SET LOCAL statement_timeout = 300; SELECT pg_sleep(30)")
        await record_marks(uow, events)

    conn, pool, broker, metrics = await marks_service(system, tmp_path, slow_for_some)
    for mark in range(5):
        await system.publish_to(MARKS, MarkRecorded(district_id="d", student=f"s{mark}", mark=mark))
    await broker.start()
    try:
        await eventually(lambda: conn.fetchval("SELECT count(*) = 2 FROM outbox"), what="two dead letters",
                         timeout=60)
        assert sorted(r["mark"] for r in await conn.fetch("SELECT mark FROM marks")) == [0, 2, 4]
        rows = await conn.fetch("SELECT topic, key, headers FROM outbox ORDER BY key")
        assert [(r["topic"], r["key"]) for r in rows] == [(system.topic(MARKS.dead_letter), b"s1"),
                                                          (system.topic(MARKS.dead_letter), b"s3")]
        reasons = [dict(zip(r["headers"][::2], r["headers"][1::2], strict=True))["dlt_reason"] for r in rows]
        assert reasons[0].startswith(f"handler ran past its statement timeout {TIMEOUT_ATTEMPTS} times in a row: "
                                     "TimeoutError")
        assert reasons[1].startswith(f"handler ran past its statement timeout {TIMEOUT_ATTEMPTS} times in a row: "
                                     "QueryCanceledError: canceling statement due to statement timeout")
        # Once over its batch (if the batch reached it), then TIMEOUT_ATTEMPTS times alone; never again.
        seen = dict(tries)
        assert all(TIMEOUT_ATTEMPTS <= n <= TIMEOUT_ATTEMPTS + 1 for n in seen.values()) and set(seen) == {1, 3}
        await asyncio.sleep(1.5)
        assert tries == seen
        assert await conn.fetchval("SELECT count(*) FROM inbox") == 5
    finally:
        await broker.stop()
        await pool.close()
        await conn.close()
        await asyncio.sleep(0)


class _NotUtf8Name(str):
    """A header name whose bytes on the wire are not UTF-8 (what a foreign producer may send)."""

    def encode(self, *args, **kwargs) -> bytes:  # noqa: ARG002
        return b"ce_\xff\xfe"


async def _produce_as_a_foreign_system(system: Stack, records: list[dict], *, compression: str | None = None) -> None:
    """Produce records as they are, in one batch per call, with the pure-Python record
    builder (so a header name's bytes can be anything), as a foreign producer would."""
    import aiokafka.producer.message_accumulator as accumulator
    import aiokafka.producer.producer as producing
    from aiokafka import AIOKafkaProducer
    from aiokafka.record.default_records import _DefaultRecordBatchBuilderPy

    builder = accumulator.DefaultRecordBatchBuilder
    accumulator.DefaultRecordBatchBuilder = producing.DefaultRecordBatchBuilder = _DefaultRecordBatchBuilderPy
    producer = AIOKafkaProducer(bootstrap_servers=system.backends.kafka, compression_type=compression, linger_ms=50)
    try:
        await producer.start()
        sent = [await producer.send(system.topic(MARKS.name), partition=0, **r) for r in records]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()
        accumulator.DefaultRecordBatchBuilder = producing.DefaultRecordBatchBuilder = builder


def _mark(student: str, mark: int) -> dict:
    event = MarkRecorded(district_id="d", student=student, mark=mark)
    from contracts import cloudevents

    return {"value": cloudevents.encode(event), "key": student.encode(), "headers": cloudevents.headers_for(event, "t")}


def _with_header(record: dict, name: str, value) -> dict:
    return {**record, "headers": [(n, v) for n, v in record["headers"] if n != name] + [(name, value)]}


async def test_every_record_reaches_its_handler_or_the_dead_letter_topic_whatever_is_wrong_with_it(
        system: Stack, tmp_path: Path):
    """Issue 9: a header value that is not UTF-8 made FastStream's batch parser fail, and the
    whole batch (good events too) was neither handled nor dead-lettered, then committed past.
    Every kind of broken record, in one batch with good ones, in every compression."""
    conn, pool, broker, metrics = await marks_service(system, tmp_path, record_marks)
    broken = {
        "ce_type not UTF-8": _with_header(_mark("b1", 1), "ce_type", b"\xff\xfe"),
        "ce_id with no value": _with_header(_mark("b2", 2), "ce_id", None),
        "header name not UTF-8": {**_mark("b3", 3), "headers": [(_NotUtf8Name("x"), b"1")]},
        "body not JSON": {**_mark("b4", 4), "value": b"\xff{"},
        "no body": {**_mark("b5", 5), "value": None},
    }
    fine = {
        "another header not UTF-8": _with_header(_mark("g1", 10), "traceparent", b"\xc3\x28"),
        "no key": {**_mark("g2", 11), "key": None},
        "a header with no value": _with_header(_mark("g3", 12), "baggage", None),
    }
    await _produce_as_a_foreign_system(system, [_mark("g0", 9), *broken.values(), *fine.values()])
    for n, codec in enumerate(("gzip", "snappy", "lz4", "zstd")):
        # A compressed batch with an unreadable record between two good ones.
        await _produce_as_a_foreign_system(system, [
            _mark(f"{codec}-a", 20 + n), {**_mark(f"{codec}-bad", 30 + n), "headers": [(_NotUtf8Name("x"), b"1")]},
            _mark(f"{codec}-b", 40 + n),
        ], compression=codec)
    await system.publish_to(MARKS, MarkRecorded(district_id="d", student="last", mark=99))
    await broker.start()
    try:
        good = {"g0", *(r["key"].decode() if r["key"] else "g2" for r in fine.values()), "last"}
        good |= {f"{codec}-{x}" for codec in ("gzip", "snappy", "lz4", "zstd") for x in "ab"}
        await eventually(lambda: conn.fetchval("SELECT count(*) = $1 FROM marks", len(good)), what="every good mark")
        assert {r["student"] for r in await conn.fetch("SELECT student FROM marks")} == good
        dead = await conn.fetch("SELECT key, payload, headers FROM outbox WHERE topic = $1 ORDER BY id",
                                system.topic(MARKS.dead_letter))
        reasons = {}
        for row in dead:
            headers = dict(zip(row["headers"][::2], row["headers"][1::2], strict=True))
            reasons[int(headers["dlt_offset"])] = (row["key"], row["payload"], headers["dlt_reason"])
        # Offsets 1-5 are the broken records, in order; each dead letter keeps the original bytes.
        assert reasons[1] == (b"b1", broken["ce_type not UTF-8"]["value"], "header ce_type is not UTF-8")
        assert reasons[2] == (b"b2", broken["ce_id with no value"]["value"], "header ce_id has no value")
        bad_name = "a header name is not UTF-8 (b'ce_\\xff\\xfe')"
        assert reasons[3] == (b"b3", broken["header name not UTF-8"]["value"], bad_name)
        assert reasons[4][:2] == (b"b4", b"\xff{") and reasons[4][2].startswith("body is not JSON")
        assert reasons[5] == (b"b5", b"", "empty body")
        compressed = {k: v for k, v in reasons.items() if v[0].endswith(b"-bad")}
        assert sorted(key for key, _, _ in compressed.values()) == [
            f"{codec}-bad".encode() for codec in sorted(("gzip", "snappy", "lz4", "zstd"))]
        assert all(reason == bad_name for _, _, reason in compressed.values())
        assert len(reasons) == len(broken) + 4
        # The group's offset is past every record: nothing is left behind, nothing skipped.
        end = 1 + len(broken) + len(fine) + 4 * 3 + 1

        async def committed_to_the_end() -> bool:
            return await _committed(system, broker) == end

        await eventually(committed_to_the_end, what="offsets committed to the end")
    finally:
        await broker.stop()
        await pool.close()
        await conn.close()
        await asyncio.sleep(0)


async def _committed(system: Stack, broker: KafkaBroker) -> int | None:
    from aiokafka import TopicPartition

    subscriber = next(iter(broker.subscribers))
    consumer = subscriber.consumer
    return await consumer.committed(TopicPartition(system.topic(MARKS.name), 0))


async def test_a_batchs_statements_probe_by_index_and_the_connection_is_as_it_was_after(system: Stack, tmp_path: Path):
    """Every batch's transaction runs with sequential scans off (db.PROBES: plans kept
    from a fresh service's empty tables read them whole for every probe as they grew); the
    setting ends with the transaction, so the pool's connections are as they were."""
    async def record_the_setting(uow: UnitOfWork, events: list[MarkRecorded]) -> None:
        setting = await uow.conn.fetchval("SELECT current_setting('enable_seqscan')")
        for e in events:
            await uow.conn.execute("INSERT INTO marks (student, mark) VALUES ($1, $2)", e.student,
                                   0 if setting == "off" else 1)

    conn, pool, broker, _ = await marks_service(system, tmp_path, record_the_setting)
    for student in ("a", "b"):
        await system.publish_to(MARKS, MarkRecorded(district_id="d", student=student, mark=1))
    await broker.start()
    try:
        await eventually(lambda: conn.fetchval("SELECT count(*) = 2 FROM marks"), what="both marks")
        assert await conn.fetchval("SELECT sum(mark) FROM marks") == 0  # both handled with the scans off
        for _ in range(pool.get_size()):
            async with pool.acquire() as c:
                assert await c.fetchval("SELECT current_setting('enable_seqscan')") == "on"
    finally:
        await broker.stop()
        await pool.close()
        await conn.close()
        await asyncio.sleep(0)
