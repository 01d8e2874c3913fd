"""Prometheus metrics every service exposes at /metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self, service: str) -> None:
        self.registry = CollectorRegistry()
        labels = {"registry": self.registry, "namespace": "caseflow"}
        self.consumed = Counter("events_consumed", "Records consumed", ["topic"], **labels)
        self.handled = Counter("events_handled", "Events applied (first delivery)", ["topic"], **labels)
        self.duplicates = Counter("events_duplicate", "Events skipped as already handled", ["topic"], **labels)
        self.published = Counter("events_published", "Outbox messages published", ["topic"], **labels)
        self.failed = Counter("failures", "Transient failures retried", ["stage"], **labels)
        self.dead_lettered = Counter("events_dead_lettered", "Records sent to a dead-letter topic", ["topic"], **labels)
        self.lag = Gauge("consumer_lag", "Records behind the partition end", ["topic", "partition"], **labels)
        self.outbox_backlog = Gauge("outbox_backlog", "Outbox rows seen waiting at the last relay pass", **labels)
        self.batch_seconds = Histogram(
            "batch_handle_seconds",
            "Time to handle one consumed batch, decode to database commit",
            ["topic"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            **labels,
        )
