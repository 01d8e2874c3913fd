"""The transactional outbox and its relay.

A service never publishes from a handler or a route: it writes the event into the
outbox table in the same transaction as the state change. The relay publishes outbox
rows in id order and deletes them once Kafka acknowledged them. A crash before the
delete re-sends (consumers' inboxes absorb the copy); nothing is lost.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import asyncpg
from aiokafka import AIOKafkaProducer
from murmurhash2 import murmurhash2
from aiokafka.errors import KafkaError

from contracts import cloudevents
from contracts.envelope import Event
from contracts.topics import partition_key, topic_for
from services.kit import logs
from services.kit.crash import crashpoint
from services.kit.metrics import Metrics
from services.kit.settings import KafkaSettings

log = logs.get("caseflow.outbox")

_RELAY_LOCK = 7_461_002


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    topic: str
    key: bytes | None
    payload: bytes
    headers: list[tuple[str, str]]


def message_for(event: Event, *, source: str, kafka: KafkaSettings) -> OutgoingMessage:
    return OutgoingMessage(
        topic=kafka.topic(topic_for(event).name),
        key=partition_key(event).encode(),
        payload=cloudevents.encode(event),
        headers=[(n, v.decode()) for n, v in cloudevents.headers_for(event, source)],
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
        request_timeout_ms=30_000,
    )


class OutboxRelay:
    """Publishes the outbox. One leader per service database (an advisory lock held on a
    dedicated connection), so one service's events leave in the order they were written."""

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
    ) -> None:
        self._dsn = dsn
        self._pool = pool
        self._producer_factory = producer_factory
        self._metrics = metrics
        self._retention_days = inbox_retention_days
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._wake = asyncio.Event()
        self.leading = False

    def wake(self) -> None:
        """Called after a commit that wrote to the outbox: publish now, not at the next poll."""
        self._wake.set()

    async def run(self) -> None:
        backoff = 0.5
        while True:
            producer = None
            lock_conn = None
            try:
                lock_conn = await asyncpg.connect(self._dsn)
                while not await lock_conn.fetchval("SELECT pg_try_advisory_lock($1)", _RELAY_LOCK):
                    await asyncio.sleep(2.0)  # another instance leads; stand by
                self.leading = True
                log.info("outbox relay leading")
                producer = self._producer_factory()
                await producer.start()
                await self._publish_until_lost(producer, lock_conn)
            except asyncio.CancelledError:
                raise
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, KafkaError, asyncio.TimeoutError) as e:
                self._metrics.failed.labels(stage="relay").inc()
                log.warning("outbox relay interrupted; retrying", error=repr(e), retry_in=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 15.0)
            finally:
                self.leading = False
                if producer is not None:
                    await _quietly(producer.stop())
                if lock_conn is not None:
                    await _quietly(lock_conn.close())

    async def _publish_until_lost(self, producer: AIOKafkaProducer, lock_conn: asyncpg.Connection) -> None:
        last_cleanup = 0.0
        while not lock_conn.is_closed():
            sent = await self.publish_once(producer)
            if time.monotonic() - last_cleanup > 3600:
                await self._forget_old_inbox()
                last_cleanup = time.monotonic()
            if sent < self._batch_size:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), self._poll_interval)
                except TimeoutError:
                    await lock_conn.fetchval("SELECT 1")  # notice a lost leadership connection

    async def publish_once(self, producer: AIOKafkaProducer) -> int:
        rows = await self._pool.fetch(
            "SELECT id, topic, key, payload, headers FROM outbox ORDER BY id LIMIT $1", self._batch_size
        )
        self._metrics.outbox_backlog.set(len(rows))
        if not rows:
            return 0
        crashpoint("relay.before_publish")
        await asyncio.gather(*await _send_in_batches(producer, rows))
        crashpoint("relay.after_publish")
        await self._pool.execute("DELETE FROM outbox WHERE id = ANY($1::bigint[])", [r[0] for r in rows])
        per_topic = Counter(r[1] for r in rows)
        for topic, n in per_topic.items():
            self._metrics.published.labels(topic=topic).inc(n)
        return len(rows)

    async def _forget_old_inbox(self) -> None:
        # Kept longer than any topic's retention and replay window, then dropped.
        await self._pool.execute(
            "DELETE FROM inbox WHERE processed_at < now() - make_interval(days => $1)", self._retention_days
        )


async def _send_in_batches(producer: AIOKafkaProducer, rows) -> list[asyncio.Future]:
    """Send rows grouped into one record batch per partition, in id order within each.

    The key picks the partition exactly as Kafka's default partitioner does (murmur2), so
    consumers in any language see one entity's events on one partition, in order. Building
    the batches here, rather than a send() per message, is what lets one relay keep up with
    a city-sized import."""
    partitions: dict[str, list[int]] = {}
    by_partition: dict[tuple[str, int], list] = {}
    chosen: dict[tuple[str, bytes], int] = {}
    for _id, topic, key, payload, flat in rows:
        if topic not in partitions:
            partitions[topic] = sorted(await producer.partitions_for(topic))
        target = chosen.get((topic, key))
        if target is None:
            target = chosen[(topic, key)] = partition_for(key, partitions[topic])
        by_partition.setdefault((topic, target), []).append((key, payload, flat))
    deliveries = []
    for (topic, partition), messages in by_partition.items():
        batch = producer.create_batch()
        for key, payload, flat in messages:
            headers = [(flat[i], flat[i + 1].encode()) for i in range(0, len(flat), 2)]
            if batch.append(key=key, value=payload, timestamp=None, headers=headers) is None:
                deliveries.append(await producer.send_batch(batch, topic, partition=partition))
                batch = producer.create_batch()
                batch.append(key=key, value=payload, timestamp=None, headers=headers)
        deliveries.append(await producer.send_batch(batch, topic, partition=partition))
    return deliveries


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
