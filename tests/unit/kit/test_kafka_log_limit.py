"""The Kafka clients' own warnings and errors are let through once per kind per interval."""

from __future__ import annotations

import logging

from services.kit.logs import RepeatLimit


def record(name: str, msg: str, *args, level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


def test_one_line_per_kind_of_kafka_client_error_then_how_many_were_held_back():
    limit = RepeatLimit(3600)
    connects = [record("aiokafka", "Unable connect to node with id %s: %s", 1, f"error {n}") for n in range(100)]
    assert [limit.filter(r) for r in connects].count(True) == 1
    assert limit.filter(record("aiokafka", "Unable to update metadata from %s", [1]))  # another kind shows at once
    assert limit.filter(record("caseflow.roster.broker", {"event": "Kafka error occurred"}))
    assert not limit.filter(record("caseflow.roster.broker", {"event": "Kafka error occurred"}))

    limit.seconds = 0  # the interval has passed
    again = record("aiokafka", "Unable connect to node with id %s: %s", 1, "refused")
    assert limit.filter(again) and again.suppressed == 99


def test_other_loggers_and_info_lines_are_never_held_back():
    limit = RepeatLimit(3600)
    assert all(limit.filter(record("caseflow.outbox", "outbox relay interrupted; retrying")) for _ in range(5))
    assert all(limit.filter(record("aiokafka", "Discovered coordinator %s", 1, level=logging.INFO)) for _ in range(5))
