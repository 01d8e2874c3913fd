"""A consumer's read that fails with anything but a Kafka error neither ends FastStream's
consume loop nor skips a record: it is logged, retried after a pause, and the consumer is
not ready until a read succeeds again."""

from __future__ import annotations

from aiokafka.errors import KafkaConnectionError
import pytest

from contracts.topics import TOPICS
from services.kit.consumer import EventConsumer, Subscription
from services.kit.metrics import Metrics
from services.kit.settings import load


def consumer() -> EventConsumer:
    settings = load("roster", {"CASEFLOW_JWT_SECRET": "x" * 40})
    topic = next(iter(TOPICS.values()))
    return EventConsumer(Subscription(topic, "t", {}), pool=None, settings=settings, metrics=Metrics("t"),
                         after_commit=lambda: None)


async def test_a_failing_read_is_retried_and_reported_until_a_read_succeeds(monkeypatch):
    pauses = []

    async def pause(seconds: float) -> None:
        pauses.append(seconds)

    monkeypatch.setattr("services.kit.consumer.asyncio.sleep", pause)
    outcomes = [UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad"), RuntimeError("cannot switch to state 12"),
                ("record",)]

    async def get_msg(_consumer):
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    c = consumer()
    read = c._reading(get_msg)  # noqa: SLF001 - the wrapper FastStream's loop calls
    assert await read(None) == () and c.reading_fails_since is not None
    assert await read(None) == () and c.reading_fails_since is not None
    assert pauses == [0.5, 1.0]  # backing off
    assert await read(None) == ("record",) and c.reading_fails_since is None


async def test_a_kafka_error_is_left_to_faststreams_loop():
    async def get_msg(_consumer):
        raise KafkaConnectionError("broker down")

    c = consumer()
    with pytest.raises(KafkaConnectionError):
        await c._reading(get_msg)(None)  # noqa: SLF001


def test_a_batch_is_committed_from_each_partitions_first_and_last_record_in_any_order():
    from types import SimpleNamespace

    from aiokafka import TopicPartition

    from services.kit.consumer import _offsets

    records = [SimpleNamespace(topic="t", partition=p, offset=o) for p, o in [(0, 5), (1, 3), (0, 4), (0, 9), (1, 2), (2, 7)]]
    assert _offsets(records) == {TopicPartition("t", 0): (4, 9), TopicPartition("t", 1): (2, 3),
                                 TopicPartition("t", 2): (7, 7)}
