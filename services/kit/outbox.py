"""The transactional outbox and its relay.

A service never publishes from a handler or a route: it writes the event into the
outbox table in the same transaction as the state change. The relay publishes outbox
rows in id order and deletes them once Kafka acknowledged them. A crash before the
delete re-sends (consumers' inboxes absorb the copy); nothing is lost.

One message never stops the others. An event that could not be published is refused when
it is emitted (`Unpublishable`), and the outbox refuses a row without a key. A row the
relay still cannot send, or that the broker refuses for good, is set aside: kept whole in
outbox_refused, a copy queued for `<topic>.DLT` with its reason (`dlt_reason`), logged and
counted; the rows after it are published in order. Transient failures (broker or database
away, timeouts, leader changes) are retried with backoff: nothing is skipped or reordered.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import islice

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    CorruptRecordException,
    InvalidTimestampError,
    InvalidTopicError,
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
    TopicAuthorizationFailedError,
    UnsupportedForMessageFormatError,
)
from murmurhash2 import murmurhash2

from contracts import cloudevents
from contracts.envelope import Event
from contracts.topics import topic_for
from services.kit import db, logs
from services.kit.crash import crashpoint, failpoint
from services.kit.metrics import Metrics
from services.kit.settings import KafkaSettings

log = logs.get("caseflow.outbox")

_RELAY_LOCK = 7_461_002

# The leader's lock lasts as long as its connection. A leader that dies with its machine (a
# lost node or network, not a killed process, whose socket the kernel closes) sends nothing
# more: PostgreSQL would keep the lock on the silent connection until the OS's keepalive
# gives up (over two hours by default), and no standby could lead meanwhile. So the server
# probes this connection after 10 s of silence and drops it after 3 unanswered probes 5 s
# apart (~25 s). The leader queries it every poll interval, so a live one is never silent.
LEADERSHIP_KEEPALIVES = {"tcp_keepalives_idle": 10, "tcp_keepalives_interval": 5, "tcp_keepalives_count": 3}


async def leadership_connection(dsn: str) -> asyncpg.Connection:
    """A dedicated connection for the relay's advisory lock, dropped by the server soon
    after its client goes silent (set with SET: a proxy may refuse startup parameters)."""
    conn = await asyncpg.connect(dsn)
    try:
        for name, value in LEADERSHIP_KEEPALIVES.items():
            await conn.execute(f"SET {name} = {int(value)}")
    except BaseException:
        await _quietly(conn.close())
        raise
    return conn

# What the broker answers about the records themselves, for good: resending cannot help.
# A batch refused with one of these is resent a record at a time, to find the refused ones.
# Every other failure (aiokafka's retriable errors, timeouts, a lost connection, a fenced
# or out-of-sequence producer) is about the broker or the client, and is retried.
REFUSED_FOR_GOOD: tuple[type[KafkaError], ...] = (
    MessageSizeTooLargeError,
    RecordTooLargeError,
    RecordListTooLargeError,
    InvalidTopicError,
    TopicAuthorizationFailedError,
    CorruptRecordException,  # also InvalidMessageError
    InvalidTimestampError,
    UnsupportedForMessageFormatError,
)
_TOO_LARGE = (MessageSizeTooLargeError, RecordTooLargeError, RecordListTooLargeError)
DEAD_LETTER_SUFFIX = ".DLT"


class Unpublishable(ValueError):
    """An event that could never be published: refused when it is emitted, so that it never
    reaches the outbox. The message names the event type and what is wrong with it, never
    the payload's values (payloads hold students' names)."""


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    topic: str
    key: bytes | None
    payload: bytes
    headers: list[tuple[str, str]]


def message_for(event: Event, *, source: str, kafka: KafkaSettings) -> OutgoingMessage:
    """The outbox message of an event, or Unpublishable: no topic carries its type, it has
    no key (its entity's id), it cannot be serialised, or it is larger than a message may be."""
    event_type = event.event_type
    try:
        topic = topic_for(event)
    except LookupError:
        raise Unpublishable(f"{event_type}: no topic carries this event type") from None
    key = getattr(event, topic.key_field, None)
    if key is None or key == "":
        raise Unpublishable(f"{event_type}: no key ({topic.key_field} is empty)")
    try:
        payload = cloudevents.encode(event)
        headers = cloudevents.header_pairs(event, source)  # text, as the outbox keeps them
        key_bytes = str(key).encode()
    except (ValueError, TypeError, AttributeError) as e:  # pydantic's PydanticSerializationError is a ValueError
        raise Unpublishable(f"{event_type}: cannot be serialised ({type(e).__name__})") from None
    size = len(key_bytes) + len(payload) + sum(len(n) + len(v.encode()) for n, v in headers)
    if size > kafka.max_message_bytes:
        raise Unpublishable(f"{event_type}: {size} bytes, more than the {kafka.max_message_bytes} a message may have "
                            "(KAFKA_MAX_MESSAGE_BYTES)")
    return OutgoingMessage(
        topic=kafka.topic(topic.name),
        key=key_bytes,
        payload=payload,
        headers=headers,
    )


async def write(conn: asyncpg.Connection, messages: Iterable[OutgoingMessage]) -> int:
    """Add messages to the outbox inside the caller's transaction (binary COPY, in order)."""
    records = [(m.topic, m.key, m.payload, [part for header in m.headers for part in header]) for m in messages]
    if records:
        await conn.copy_records_to_table("outbox", records=records, columns=["topic", "key", "payload", "headers"])
    return len(records)


def producer_for(kafka: KafkaSettings) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        **kafka.client_options(),
        acks="all",
        enable_idempotence=kafka.enable_idempotence,
        linger_ms=5,
        max_batch_size=256 * 1024,
        # The producer's own cap on one record: above the largest message we publish,
        # so that the broker, which knows each topic's limit, is the one to answer.
        max_request_size=max(1_048_576, kafka.max_message_bytes + 64 * 1024),
        request_timeout_ms=30_000,
    )


@dataclass(slots=True)
class Refusal:
    """An outbox row the relay could not publish, and why (never with its values)."""

    row: asyncpg.Record  # id, topic, key, payload, headers
    reason: str
    too_large: bool = False  # then its dead-letter copy, larger still, is not attempted


class OutboxRelay:
    """Publishes the outbox. One leader per service database (an advisory lock held on a
    dedicated connection), so one service's events leave in the order they were written.

    `topics` is every topic name the service may publish to (the registry's, dead-letter
    topics included): a row for any other is set aside at once. Without it, the broker
    decides. `on_pass` is called after each pass (publishing or standing by)."""

    def __init__(
        self,
        *,
        dsn: str,
        pool: asyncpg.Pool,
        producer_factory: Callable[[], AIOKafkaProducer],
        metrics: Metrics,
        inbox_retention_days: int = 14,
        batch_size: int = 5000,
        poll_interval: float = 0.25,
        topics: Collection[str] | None = None,
        max_message_bytes: int = 1_000_000,
        on_pass: Callable[[], None] = lambda: None,
    ) -> None:
        self._dsn = dsn
        self._pool = pool
        self._producer_factory = producer_factory
        self._metrics = metrics
        self._retention_days = inbox_retention_days
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._topics = frozenset(topics) if topics is not None else None
        self._max_bytes = max_message_bytes
        self._on_pass = on_pass
        self._wake = asyncio.Event()
        self._producer_spoiled = False
        self.leading = False

    def wake(self) -> None:
        """Called after a commit that wrote to the outbox: publish now, not at the next poll."""
        self._wake.set()

    async def run(self) -> None:
        """Lead (or stand by) and publish, forever. Database and broker failures are retried
        here with backoff, nothing skipped; anything else ends the task, for its supervisor
        to log and restart."""
        backoff = 0.5
        while True:
            lock_conn = None
            try:
                lock_conn = await leadership_connection(self._dsn)
                while not await lock_conn.fetchval("SELECT pg_try_advisory_lock($1)", _RELAY_LOCK):
                    self._on_pass()
                    await asyncio.sleep(2.0)  # another instance leads; stand by
                self.leading = True
                log.info("outbox relay leading")
                await self._publish_until_lost(lock_conn)
                backoff = 0.5
            except asyncio.CancelledError:
                raise
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, KafkaError, asyncio.TimeoutError) as e:
                self._metrics.failed.labels(stage="relay").inc()
                log.warning("outbox relay interrupted; retrying", error=repr(e), retry_in=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 15.0)
            finally:
                self.leading = False
                if lock_conn is not None:
                    await _quietly(lock_conn.close())

    async def _publish_until_lost(self, lock_conn: asyncpg.Connection) -> None:
        self._producer_spoiled = False
        producer = await self._started_producer()
        try:
            last_cleanup = 0.0
            while not lock_conn.is_closed():
                sent = await self.publish_once(producer)
                self._on_pass()
                if self._producer_spoiled:
                    # A refused batch left the producer's sequence numbers ahead of the
                    # broker's (idempotence): go on with a new producer.
                    self._producer_spoiled = False
                    await _quietly(producer.stop())
                    producer = None
                    producer = await self._started_producer()
                if time.monotonic() - last_cleanup > 3600:
                    await self._forget_old_inbox()
                    last_cleanup = time.monotonic()
                if sent < self._batch_size:
                    self._wake.clear()
                    try:
                        await asyncio.wait_for(self._wake.wait(), self._poll_interval)
                    except TimeoutError:
                        await lock_conn.fetchval("SELECT 1")  # notice a lost leadership connection
        finally:
            if producer is not None:
                await _quietly(producer.stop())

    async def _started_producer(self) -> AIOKafkaProducer:
        producer = self._producer_factory()
        try:
            await producer.start()
        except BaseException:
            await _quietly(producer.stop())
            raise
        return producer

    async def publish_once(self, producer: AIOKafkaProducer) -> int:
        """Publish the oldest rows (up to a batch); return how many left the outbox."""
        failpoint("relay.publish")
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(db.PROBES)  # by the primary key, however the outbox has grown
            rows = await conn.fetch(
                "SELECT id, topic, key, payload, headers FROM outbox ORDER BY id LIMIT $1", self._batch_size
            )
        self._metrics.outbox_backlog.set(len(rows))
        if not rows:
            return 0
        crashpoint("relay.before_publish")
        refused = await self._publish(producer, rows)
        crashpoint("relay.after_publish")
        ids = [r[0] for r in rows]
        if refused:
            await self._set_aside(ids, refused)
            gone = {r.row[0] for r in refused}
            per_topic = Counter(r[1] for r in rows if r[0] not in gone)
        else:
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute(db.PROBES)
                await conn.execute("DELETE FROM outbox WHERE id = ANY($1::bigint[])", ids)
            per_topic = Counter(r[1] for r in rows)
        for topic, n in per_topic.items():
            self._metrics.published.labels(topic=topic).inc(n)
        return len(rows)

    async def _publish(self, producer: AIOKafkaProducer, rows) -> list[Refusal]:
        """Send the rows; return those that could not be sent or were refused for good."""
        by_partition, refused = await _plan(producer, rows, topics=self._topics, max_bytes=self._max_bytes)
        outcomes = await asyncio.gather(
            *(_deliver(producer, topic, partition, items) for (topic, partition), items in by_partition.items()),
            return_exceptions=True,
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome  # a transient failure: the whole pass is retried, nothing skipped
        unsent = [(tp, items[o[0]:], o[1]) for (tp, items), o in zip(by_partition.items(), outcomes, strict=True) if o]
        if unsent:
            # The refused batch, and what was to follow it on its partition, a record at a
            # time: nothing after it on the partition was written, so the order holds.
            self._producer_spoiled = True
            for (topic, partition), items, error in unsent:
                log.warning("a record batch was refused; resending its records one at a time", topic=topic,
                            partition=partition, records=len(items), error=repr(error))
            fresh = await self._started_producer()
            try:
                for found in await asyncio.gather(*(_one_at_a_time(fresh, topic, partition, items)
                                                    for (topic, partition), items, _ in unsent)):
                    refused += found
            finally:
                await _quietly(fresh.stop())
        return refused

    async def _set_aside(self, ids: list[int], refused: list[Refusal]) -> None:
        """In one transaction: keep the refused rows whole, queue their dead-letter copies,
        and take every row of the pass out of the outbox."""
        refused.sort(key=lambda r: r.row[0])
        copies = [self._dead_letter_copy(r) for r in refused]
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(db.PROBES)
            await conn.execute(
                """INSERT INTO outbox_refused (id, topic, key, payload, headers, created_at, reason, dead_letter_topic)
                   SELECT o.id, o.topic, o.key, o.payload, o.headers, o.created_at, r.reason, r.dead_letter_topic
                   FROM outbox o JOIN unnest($1::bigint[], $2::text[], $3::text[]) AS r(id, reason, dead_letter_topic)
                        ON r.id = o.id
                   ON CONFLICT (id) DO NOTHING""",
                [r.row[0] for r in refused], [r.reason for r in refused], [c and c.topic for c in copies],
            )
            await write(conn, [c for c in copies if c is not None])
            await conn.execute("DELETE FROM outbox WHERE id = ANY($1::bigint[])", ids)
        for r, copy in zip(refused, copies, strict=True):
            self._metrics.refused.labels(topic=r.row[1]).inc()
            log.error("outbox message could not be published; set aside in outbox_refused",
                      outbox_id=r.row[0], topic=r.row[1], reason=r.reason,
                      dead_letter_topic=copy.topic if copy else None)
        if any(copies):
            self.wake()

    def _dead_letter_copy(self, refusal: Refusal) -> OutgoingMessage | None:
        """The refused message for `<topic>.DLT`, as the consumer dead-letters: its key,
        payload and headers, and why. None when there can be none: it was too large, it
        was a dead letter already, or its topic has no dead-letter topic."""
        row_id, topic, key, payload, flat = refusal.row
        dead_letter = topic + DEAD_LETTER_SUFFIX
        if refusal.too_large or topic.endswith(DEAD_LETTER_SUFFIX):
            return None
        if self._topics is not None and dead_letter not in self._topics:
            return None
        headers = [(n, v) for n, v in zip(flat[::2], flat[1::2], strict=False) if n is not None and v is not None]
        headers += [
            ("dlt_reason", refusal.reason),
            ("dlt_topic", topic),
            ("dlt_outbox_id", str(row_id)),
            ("dlt_failed_at", datetime.now(UTC).isoformat()),
        ]
        return OutgoingMessage(topic=dead_letter, key=key, payload=payload, headers=headers)

    async def _forget_old_inbox(self) -> None:
        # Kept longer than any topic's retention and replay window, then dropped.
        await self._pool.execute(
            "DELETE FROM inbox WHERE processed_at < now() - make_interval(days => $1)", self._retention_days
        )


async def _plan(producer: AIOKafkaProducer, rows, *, topics: frozenset[str] | None, max_bytes: int):
    """Group rows by the partition each goes to, in id order within each; set aside at once
    the rows that cannot be sent at all (no key, an unknown topic, too large, anything that
    fails while being prepared). Cheap per row: the relay publishes tens of thousands a second.

    The key picks the partition exactly as Kafka's default partitioner does (murmur2), so
    consumers in any language see one entity's events on one partition, in order. A dead
    letter of a record that had no key goes to the topic's first partition."""
    partitions: dict[str, list[int] | str] = {}
    by_partition: dict[tuple[str, int], list] = {}
    chosen: dict[tuple[str, bytes], int] = {}
    refused: list[Refusal] = []
    for row in rows:
        _id, topic, key, payload, flat = row
        targets = partitions.get(topic)
        if targets is None:
            targets = partitions[topic] = await _partitions_of(producer, topic, topics)
        if type(targets) is str:
            refused.append(Refusal(row, targets))
            continue
        if not key and not topic.endswith(DEAD_LETTER_SUFFIX):
            refused.append(Refusal(row, "no key" if key is None else "an empty key"))
            continue
        try:
            size = len(payload) + (len(key) if key else 0) + sum(map(len, flat))
        except TypeError:
            refused.append(Refusal(row, "malformed headers (a NULL name or value)"))
            continue
        if len(flat) % 2:
            refused.append(Refusal(row, "malformed headers (not name, value pairs)"))
            continue
        try:
            if size > max_bytes:
                refused.append(Refusal(row, f"{size} bytes, more than the {max_bytes} a message may have "
                                            "(KAFKA_MAX_MESSAGE_BYTES)", too_large=True))
                continue
            if key:
                target = chosen.get((topic, key))
                if target is None:
                    target = chosen[(topic, key)] = partition_for(key, targets)
            else:
                target = targets[0]
        except Exception as e:  # noqa: BLE001 - a row that cannot be prepared is set aside, the rest go on
            refused.append(Refusal(row, f"cannot be sent: {type(e).__name__}"))
            continue
        by_partition.setdefault((topic, target), []).append((row, key, payload, flat))
    return by_partition, refused


async def _partitions_of(producer: AIOKafkaProducer, topic: str, topics: frozenset[str] | None) -> list[int] | str:
    """The topic's partitions, or why no row of it can be sent. A registry topic the broker
    does not know (not provisioned yet) raises, and is retried: provisioning fixes it."""
    if topics is not None and topic not in topics:
        return f"topic {topic} is not in the topic registry"
    try:
        found = await producer.partitions_for(topic)
    except REFUSED_FOR_GOOD as e:
        return f"refused by the broker: {e}"
    if not found:
        return f"topic {topic} has no partitions"
    return sorted(found)


async def _deliver(producer: AIOKafkaProducer, topic: str, partition: int, items: list):
    """Send one partition's messages in order, a record batch at a time, each once the one
    before it is acknowledged (the producer sends one batch per partition at a time anyway;
    the next batch is built while the one before is in flight). When the broker refuses a
    batch for good, nothing after it on the partition has been written.
    None when all were written; else (index of the first unwritten message, the refusal)."""
    start, (batch, end) = 0, _fill(producer, items, 0)
    while True:
        if end == start:  # an empty batch takes any first record; this one would not go in
            return start, RecordTooLargeError("the record does not fit in a record batch")
        delivery = await producer.send_batch(batch, topic, partition=partition)
        following = _fill(producer, items, end) if end < len(items) else None
        try:
            await delivery
        except REFUSED_FOR_GOOD as e:
            return start, e
        if following is None:
            return None
        start, (batch, end) = end, following


def _fill(producer: AIOKafkaProducer, items: list, start: int):
    """A record batch of items[start:end], as many as fit; (batch, end)."""
    batch = producer.create_batch()
    end = start
    for _row, key, payload, flat in islice(items, start, None):
        headers = _kafka_headers(flat)
        if batch.append(key=key, value=payload, timestamp=None, headers=headers) is None:
            break  # full: the rest go in the next batch
        end += 1
    return batch, end


async def _one_at_a_time(producer: AIOKafkaProducer, topic: str, partition: int, items: list) -> list[Refusal]:
    refused = []
    for row, key, payload, flat in items:
        headers = _kafka_headers(flat)
        try:
            await (await producer.send(topic, payload, key=key, partition=partition, headers=headers))
        except REFUSED_FOR_GOOD as e:
            refused.append(Refusal(row, f"refused by the broker: {e}", too_large=isinstance(e, _TOO_LARGE)))
    return refused


def _kafka_headers(flat: list[str]) -> list[tuple[str, bytes]]:
    """An outbox row's headers (name, value, name, value, ... as text) as aiokafka takes
    them: (name, value as UTF-8) pairs, built in C (zip, map), not a loop of ours."""
    return list(zip(flat[::2], map(_encode, flat[1::2])))


_encode = str.encode


def partition_for(key: bytes, partitions: list[int]) -> int:
    """Kafka's default partitioner (murmur2 of the key), in C: the pure-Python one costs
    more than everything else the relay does per message."""
    return partitions[(murmurhash2(key, _KAFKA_MURMUR2_SEED) & 0x7FFFFFFF) % len(partitions)]


_KAFKA_MURMUR2_SEED = 0x9747B28C


async def _quietly(awaitable) -> None:
    try:
        await awaitable
    except Exception:  # noqa: BLE001 - closing after a failure; the failure is already logged
        pass
