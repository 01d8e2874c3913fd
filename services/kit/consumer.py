"""Consuming events with exactly-once effects.

One consumed batch is handled in one database transaction:
  decode every record (bad ones become dead letters)
  -> claim the event ids in the inbox (ids already there are skipped: duplicates)
  -> run the service's handlers on runs of same-type events, in order, their statements
     probing by index (db.PROBES)
  -> write emitted events and dead letters to the outbox
  -> commit -> only then commit the Kafka offsets of that batch.
A crash anywhere before the offset commit redelivers the batch, and the inbox turns the
second delivery into no effect. While a batch is handled, the next one is read and decoded
(Python's work, overlapping the database's); offsets are committed batch by batch, never
the consumer's position, so a batch read ahead is committed only once handled.

Nothing between the broker and the inbox may drop a record: FastStream's parser is
replaced by one that leaves every record raw (a header value that is not UTF-8, or has no
value, is that record's problem, found by its decode and dead-lettered with its original
bytes); a record aiokafka's reader refuses (a header name that is not UTF-8) is read by
services/kit/records.py instead; and a read that fails any other way is logged, retried
with backoff and reported on /readyz, never stepped over: the consume loop never ends. A handler that fails on one event for good sends that
event to the dead-letter topic (the batch is replayed event by event, each in a savepoint,
to find it) and the rest proceed; so does an event whose statements, alone, run past their
timeout TIMEOUT_ATTEMPTS times in a row. Other transient failures are retried with backoff.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import groupby
from typing import Any

import asyncpg
from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import ConsumerStoppedError, KafkaError
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage

from contracts import cloudevents
from contracts.envelope import Event
from contracts.topics import Topic
from services.kit import db, logs, outbox
from services.kit import records as kafka_records
from services.kit.crash import crashpoint
from services.kit.metrics import Metrics
from services.kit.settings import Settings

log = logs.get("caseflow.consumer")
kafka_records.install()

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.QueryCanceledError,  # statement_timeout: see _TOO_LONG
)
RETRY_FOR_SECONDS = 60.0
DECODE_TURN = 250  # records decoded ahead between two turns of the event loop (~3 ms)
# A statement that ran past the pool's command timeout (asyncpg) or the server's statement_timeout.
_TOO_LONG = (asyncio.TimeoutError, asyncpg.exceptions.QueryCanceledError)
# An event handled alone whose statements run past their timeout this many times in a row is
# dead-lettered (the reason says so), the attempts TIMEOUT_PAUSE_SECONDS x attempt apart.
TIMEOUT_ATTEMPTS = 3
TIMEOUT_PAUSE_SECONDS = 1.0


class UnitOfWork:
    """The handler's view of one transaction: its connection, and what it emits."""

    def __init__(self, conn: asyncpg.Connection, *, source: str, settings: Settings) -> None:
        self.conn = conn
        self._source = source
        self._settings = settings
        self.outgoing: list[outbox.OutgoingMessage] = []

    def emit(self, event: Event) -> None:
        """Publish this event if, and only if, the transaction commits."""
        self.outgoing.append(outbox.message_for(event, source=self._source, kafka=self._settings.kafka))

    def topic(self, name: str) -> str:
        """The deployment's name of a topic (CASEFLOW_TOPIC_PREFIX), for SQL that writes
        events into the outbox itself (services/kit/events_sql.py)."""
        return self._settings.kafka.topic(name)


Handler = Callable[[UnitOfWork, list[Any]], Awaitable[None]]


@dataclass(frozen=True)
class Subscription:
    """A consumer group reading one topic, with a handler per event type it acts on.
    Event types on the topic with no handler are acknowledged and skipped."""

    topic: Topic
    consumer: str
    handlers: dict[type[Event], Handler]
    description: str = ""


@dataclass
class _DeadLetter:
    record: ConsumerRecord
    reason: str


@dataclass
class _Batch:
    events: list[tuple[ConsumerRecord, Event]] = field(default_factory=list)
    dead: list[_DeadLetter] = field(default_factory=list)


class _HandlerFailed(Exception):
    pass


class EventConsumer:
    def __init__(self, subscription: Subscription, *, pool: asyncpg.Pool, settings: Settings, metrics: Metrics,
                 after_commit: Callable[[], None]) -> None:
        self.subscription = subscription
        self._pool = pool
        self._settings = settings
        self._metrics = metrics
        self._after_commit = after_commit
        self._source = f"caseflow.{settings.service}"
        self._topic_name = settings.kafka.topic(subscription.topic.name)
        self.reading_fails_since: float | None = None  # epoch seconds; None while reads succeed
        self._read: Callable[[Any], Awaitable[tuple[ConsumerRecord, ...]]] | None = None
        self._ahead: asyncio.Task | None = None  # the next batch, being read and decoded
        self._read_ahead: tuple[tuple[ConsumerRecord, ...], _Batch] | None = None

    def attach(self, broker: KafkaBroker) -> None:
        sub = self.subscription

        async def consume(body: Any, message: KafkaMessage) -> None:  # noqa: ARG001 - records are read raw
            await self.on_batch(message)

        subscriber = broker.subscriber(
            self._topic_name,
            # The group is named in the same namespace as the topics (CASEFLOW_TOPIC_PREFIX):
            # systems sharing one cluster never join each other's groups.
            group_id=self._settings.kafka.topic(sub.consumer),
            batch=True,
            max_records=self._settings.consumer_batch_size,
            batch_timeout_ms=100,
            # Offsets are committed by on_batch, after the database commit; never before.
            ack_policy=AckPolicy.MANUAL,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=4 * 1024 * 1024,
            session_timeout_ms=self._settings.kafka.session_timeout_ms,
            heartbeat_interval_ms=self._settings.kafka.heartbeat_interval_ms,
            parser=_raw_records,
            decoder=_undecoded,
            title=f"{sub.consumer}:{sub.topic.name}",
            description=sub.description or sub.topic.description,
        )
        subscriber(consume)
        # FastStream's consume loop survives Kafka errors only; any other exception from a
        # read (aiokafka raising on a record it cannot parse) would end it for good.
        subscriber.get_msg = self._reading(subscriber.get_msg)

    def _reading(self, get_msg: Callable[[Any], Awaitable[tuple[ConsumerRecord, ...]]]):
        """FastStream's read, wrapped: a failed read is retried, never stepped over; and the
        batch read ahead while the last one was handled (_prefetch) is handed over first."""
        pause = 0.5

        async def read_once(consumer: Any) -> tuple[ConsumerRecord, ...]:
            nonlocal pause
            try:
                records = await get_msg(consumer)
            except (KafkaError, ConsumerStoppedError):
                raise  # FastStream's loop logs these, waits and reads again
            except Exception as e:  # noqa: BLE001 - nothing is skipped: reported, retried, not ready
                self.reading_fails_since = self.reading_fails_since or time.time()
                log.error("could not read from Kafka; trying again", topic=self._topic_name,
                          error=repr(e), retry_in=pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 30.0)
                return ()
            self.reading_fails_since, pause = None, 0.5
            return records

        async def read(consumer: Any) -> tuple[ConsumerRecord, ...]:
            if self._ahead is None:
                return await read_once(consumer)
            task, self._ahead = self._ahead, None
            records, batch = await task
            self._read_ahead = (records, batch) if records else None
            return records

        self._read = read_once
        return read

    def _prefetch(self, consumer: Any) -> None:
        """Read and decode the next batch while this one is handled: decoding is Python's
        work, and runs while this batch waits on the database. Offsets are committed batch
        by batch (_commit), never the consumer's position, so a batch read ahead is not
        committed before it is handled; a batch that fails rewinds it too (_rewind_ahead)."""
        if self._ahead is not None or self._read is None:
            return
        read_once = self._read

        async def ahead() -> tuple[tuple[ConsumerRecord, ...], _Batch | None]:
            records = await read_once(consumer)
            if not records:
                return records, None
            batch = _Batch()
            try:
                for i in range(0, len(records), DECODE_TURN):
                    if i:
                        # Let the batch being handled go on: its statements' answers wait for
                        # the loop, and a whole batch decoded in one go held it some 25 ms.
                        await asyncio.sleep(0)
                    self._decode(records[i:i + DECODE_TURN], batch)
            except asyncio.CancelledError:
                return records, None  # read, so _rewind_ahead must seek back to them
            return records, batch

        self._ahead = asyncio.create_task(ahead())
        self._ahead.add_done_callback(_retrieve)

    async def _rewind_ahead(self, consumer: Any) -> None:
        """Forget the batch read ahead, and seek its partitions back to its first records,
        so it is read again after the batch that failed."""
        task, self._ahead = self._ahead, None
        if task is None:
            return
        if not task.done():
            task.cancel()
        try:
            records, _ = await task
        except (asyncio.CancelledError, KafkaError, ConsumerStoppedError):
            return  # cancelled before it drained anything, or it read nothing
        for tp, (first, _) in _offsets(records).items():
            consumer.seek(tp, first)

    async def _commit(self, consumer: Any, records: Sequence[ConsumerRecord]) -> None:
        """Commit this batch's offsets, partition by partition: the next record of each.
        A partition taken away by a rebalance is left to its new owner (whose inbox makes
        a second handling of these records change nothing)."""
        assigned = consumer.assignment()
        offsets = {tp: last + 1 for tp, (_, last) in _offsets(records).items() if tp in assigned}
        if offsets:
            await consumer.commit(offsets)

    async def on_batch(self, message: Any) -> None:
        records: Sequence[ConsumerRecord] = message.raw_message
        if not records:
            return
        ahead, self._read_ahead = self._read_ahead, None
        decoded = ahead[1] if ahead is not None and ahead[0] is records else None
        self._prefetch(message.consumer)
        started = time.perf_counter()
        try:
            await self.handle(records, decoded)
        except asyncio.CancelledError:
            raise  # shutting down: nothing committed, so redelivered to whoever runs next
        except Exception as e:  # noqa: BLE001 - every failure must rewind, or the next commit skips this batch
            log.error("batch not handled; it will be redelivered", topic=self._topic_name, error=repr(e))
            self._metrics.failed.labels(stage="consume").inc()
            await self._rewind_ahead(message.consumer)
            await message.nack()  # seeks each partition back to this batch's first record
            await asyncio.sleep(1.0)
            return
        crashpoint("consumer.after_db_commit")
        await self._commit(message.consumer, records)
        crashpoint("consumer.after_offset_commit")
        self._metrics.batch_seconds.labels(topic=self._topic_name).observe(time.perf_counter() - started)
        self._observe_lag(message.consumer, records)

    async def handle(self, records: Sequence[ConsumerRecord], decoded: _Batch | None = None) -> None:
        """Handle one batch of records in one transaction; retry transient failures.
        decoded: the batch already decoded (read ahead), else decoded here."""
        self._metrics.consumed.labels(topic=self._topic_name).inc(len(records))
        batch = decoded if decoded is not None else self._decode(records)
        deadline = time.monotonic() + RETRY_FOR_SECONDS
        delay = 0.2
        isolate = False
        while True:
            try:
                await self._apply(batch, isolate=isolate)
                self._after_commit()
                return
            except _HandlerFailed:
                isolate = True  # find the failing event(s), one savepoint each
            except TRANSIENT_ERRORS as e:
                if isinstance(e, _TOO_LONG) and not isolate:
                    # A statement over the whole batch ran past its timeout: run again, it
                    # would time out again, for ever. Event by event, each statement is small,
                    # and an event that alone runs past it is dead-lettered (_dispatch_one_by_one).
                    log.warning("a statement ran past its timeout; handling the batch event by event",
                                topic=self._topic_name, events=len(batch.events))
                    isolate = True
                    continue
                if time.monotonic() > deadline:
                    raise
                self._metrics.failed.labels(stage="consume").inc()
                log.warning("transient failure; retrying", topic=self._topic_name, error=repr(e), retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    def _decode(self, records: Sequence[ConsumerRecord], batch: _Batch | None = None) -> _Batch:
        batch = _Batch() if batch is None else batch
        for r in records:
            try:
                received = datetime.fromtimestamp(r.timestamp / 1000, UTC)
                batch.events.append((r, cloudevents.decode(self.subscription.topic, r.value, r.headers, received)))
            except cloudevents.BadMessage as e:
                batch.dead.append(_DeadLetter(r, str(e)))
            except Exception as e:  # noqa: BLE001 - whatever else is wrong with it, it is this record's
                batch.dead.append(_DeadLetter(r, f"could not be decoded: {type(e).__name__}: {_safe_message(e)}"))
        return batch

    async def _apply(self, batch: _Batch, *, isolate: bool) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(db.PROBES)  # a handler touches what its events name: probes, key by key
            fresh = await self._claim(conn, batch.events)
            uow = UnitOfWork(conn, source=self._source, settings=self._settings)
            dead = list(batch.dead)
            if isolate:
                dead += await self._dispatch_one_by_one(uow, fresh)
            else:
                try:
                    await self._dispatch(uow, [e for _, e in fresh])
                except TRANSIENT_ERRORS:
                    raise
                except Exception as e:
                    log.warning("handler failed in batch; isolating", topic=self._topic_name, error=repr(e))
                    raise _HandlerFailed from e
            await outbox.write(conn, [*uow.outgoing, *(self._dead_letter(d) for d in dead)])
        self._metrics.handled.labels(topic=self._topic_name).inc(len(fresh))
        self._metrics.duplicates.labels(topic=self._topic_name).inc(len(batch.events) - len(fresh))
        for d in dead:
            self._metrics.dead_lettered.labels(topic=self._topic_name).inc()
            log.warning(
                "dead-lettered",
                topic=d.record.topic, partition=d.record.partition, offset=d.record.offset, reason=d.reason,
            )

    async def _claim(self, conn: asyncpg.Connection, events: list[tuple[ConsumerRecord, Event]]):
        """Insert the batch's event ids into the inbox; keep the ones not seen before, once each.

        Almost every batch is new: its ids go in with a plain INSERT, in a savepoint, which
        costs PostgreSQL a third less than ON CONFLICT's speculative insertion and returns
        nothing. An id already there, or twice in the batch, fails it (unique violation,
        the savepoint undone); the batch is then claimed id by id with ON CONFLICT."""
        if not events:
            return []
        args = (
            self.subscription.consumer,
            self.subscription.topic.name,
            [e.event_id for _, e in events],
            [r.partition for r, _ in events],
            [r.offset for r, _ in events],
        )
        try:
            async with conn.transaction():  # a savepoint: a duplicate undoes this insert only
                await conn.execute(_CLAIM_ALL, *args)
            return events  # every id claimed, so every event is new and none repeats in the batch
        except asyncpg.UniqueViolationError:
            pass
        claimed = await conn.fetch(_CLAIM_NEW, *args)
        if len(claimed) == len(events):
            return events  # every id claimed, so every event is new and none repeats in the batch
        new_ids = {row["event_id"] for row in claimed}
        fresh = []
        for record, event in events:
            if event.event_id in new_ids:
                new_ids.discard(event.event_id)
                fresh.append((record, event))
        return fresh

    async def _dispatch(self, uow: UnitOfWork, events: list[Event]) -> None:
        # Consecutive events for one handler go to it together: batching without reordering
        # (an enrolment and a withdrawal of one student keep their order). A handler that
        # takes several event types gets them mixed, in order, as one list.
        handlers = self.subscription.handlers
        for handler, run in groupby(events, key=lambda e: handlers.get(type(e))):
            if handler is not None:
                await handler(uow, list(run))

    async def _dispatch_one_by_one(self, uow: UnitOfWork, fresh) -> list[_DeadLetter]:
        """Each event in a savepoint of its own: an event its handler fails on for good is
        dead-lettered, and so is one whose statements run past their timeout TIMEOUT_ATTEMPTS
        times in a row (alone, it would time out at every redelivery and block its partitions
        for ever). Other transient failures (the database gone) undo the whole batch, retried."""
        dead = []
        for record, event in fresh:
            emitted = len(uow.outgoing)
            for attempt in range(1, TIMEOUT_ATTEMPTS + 1):
                try:
                    async with uow.conn.transaction():  # a savepoint: undo only this event's effects
                        await self._dispatch(uow, [event])
                    break
                except _TOO_LONG as e:
                    del uow.outgoing[emitted:]
                    if attempt == TIMEOUT_ATTEMPTS:
                        dead.append(_DeadLetter(record, f"handler ran past its statement timeout {attempt} times in "
                                                        f"a row: {type(e).__name__}: {_safe_message(e)}"))
                        break
                    self._metrics.failed.labels(stage="consume").inc()
                    log.warning("an event's statement ran past its timeout; trying it again", topic=record.topic,
                                partition=record.partition, offset=record.offset, attempt=attempt)
                    await asyncio.sleep(TIMEOUT_PAUSE_SECONDS * attempt)
                except TRANSIENT_ERRORS:
                    raise
                except Exception as e:  # noqa: BLE001 - a handler failing for good on one event
                    del uow.outgoing[emitted:]
                    dead.append(_DeadLetter(record, f"handler failed: {type(e).__name__}: {_safe_message(e)}"))
                    break
        return dead

    def _dead_letter(self, d: _DeadLetter) -> outbox.OutgoingMessage:
        r = d.record
        # Headers are kept as text: undecodable bytes and NULs become U+FFFD, a header with
        # no value an empty one.
        headers = [(_text(n.encode(errors="surrogateescape")), _text(v or b"")) for n, v in r.headers]
        headers += [
            ("dlt_reason", d.reason),
            ("dlt_topic", r.topic),
            ("dlt_partition", str(r.partition)),
            ("dlt_offset", str(r.offset)),
            ("dlt_consumer", self.subscription.consumer),
            ("dlt_failed_at", datetime.now(UTC).isoformat()),
        ]
        return outbox.OutgoingMessage(
            topic=self._settings.kafka.topic(self.subscription.topic.dead_letter),
            key=r.key,
            payload=r.value or b"",
            headers=headers,
        )

    def _observe_lag(self, consumer: Any, records: Sequence[ConsumerRecord]) -> None:
        last: dict[tuple[str, int], int] = {}
        for r in records:
            last[(r.topic, r.partition)] = r.offset
        for (topic, partition), offset in last.items():
            try:
                end = consumer.highwater(TopicPartition(topic, partition))
            except Exception:  # noqa: BLE001 - lag is best effort (test brokers, revoked partitions)
                continue
            if end is not None:
                self._metrics.lag.labels(topic=topic, partition=str(partition)).set(max(end - offset - 1, 0))


_CLAIM_ALL = """INSERT INTO inbox (consumer, event_id, topic, partition, "offset")
                 SELECT $1, u.event_id, $2, u.partition, u.off
                 FROM unnest($3::uuid[], $4::int[], $5::bigint[]) AS u(event_id, partition, off)"""
_CLAIM_NEW = _CLAIM_ALL + " ON CONFLICT DO NOTHING RETURNING event_id"


def _offsets(records: Sequence[ConsumerRecord]) -> dict[TopicPartition, tuple[int, int]]:
    """Each partition's first and last offset among these records."""
    seen: dict[tuple[str, int], tuple[int, int]] = {}
    for r in records:
        key, offset = (r.topic, r.partition), r.offset
        span = seen.get(key)
        if span is None:
            seen[key] = (offset, offset)
        elif offset < span[0] or offset > span[1]:
            seen[key] = (min(span[0], offset), max(span[1], offset))
    return {TopicPartition(*key): span for key, span in seen.items()}  # one TopicPartition a partition


def _retrieve(task: asyncio.Task) -> None:
    """A read ahead that nobody awaits (the service stopping) must not warn at exit."""
    if not task.cancelled():
        task.exception()


def _text(value: bytes) -> str:
    return value.decode(errors="replace").replace("\x00", "\ufffd")


def _safe_message(e: Exception) -> str:
    # Database errors say which constraint failed, not which values; other messages are
    # trimmed and pass through the log redaction when logged.
    text = str(e).splitlines()[0] if str(e) else ""
    return logs.redact(text)[:300]


async def _raw_records(records: tuple[ConsumerRecord, ...], default_parser: Callable) -> Any:
    """FastStream's batch message, made from the first record alone (its headers decoded
    where FastStream can: one that is not UTF-8 would fail the whole batch), then given
    every record as they came: Caseflow decodes them one by one, and FastStream's reading
    of each record's headers and body would be thrown away."""
    message = await default_parser((_text_headers(records[0]),))
    message.raw_message = records
    return message


def _text_headers(record: ConsumerRecord) -> ConsumerRecord:
    headers = [(name, value if _is_utf8(value) else b"") for name, value in record.headers]
    return record if headers == list(record.headers) else dataclasses.replace(record, headers=headers)


def _is_utf8(value: bytes | None) -> bool:
    try:
        value.decode()  # type: ignore[union-attr]
    except (UnicodeDecodeError, AttributeError):
        return False
    return True


async def _undecoded(message: Any) -> Any:
    """Leave records as bytes: each one is decoded (or dead-lettered) on its own."""
    return None
