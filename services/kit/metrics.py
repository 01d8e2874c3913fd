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
        # Read from the database when /metrics is scraped, whatever the relay is doing:
        # a stuck or dead relay shows as an age that keeps growing.
        self.outbox_oldest_age = Gauge(
            "outbox_oldest_unsent_age_seconds",
            "Age of the oldest outbox row not yet published (since its transaction began); 0 when none waits",
            **labels,
        )
        self.outbox_refused_rows = Gauge(
            "outbox_refused_rows", "Rows the relay could not publish, kept in outbox_refused", **labels
        )
        self.refused = Counter(
            "outbox_refused", "Outbox messages the relay could not publish and set aside", ["topic"], **labels
        )
        self.task_up = Gauge(
            "task_up", "1 while a long-running task runs (or a one-shot job has finished), 0 while it is down",
            ["task"], **labels,
        )
        self.task_restarts = Counter("task_restarts", "Times a long-running task failed and was restarted",
                                     ["task"], **labels)
        self.task_last_success = Gauge(
            "task_last_success_timestamp_seconds", "When a long-running task last completed a pass (Unix time)",
            ["task"], **labels,
        )
        self.batch_seconds = Histogram(
            "batch_handle_seconds",
            "Time to handle one consumed batch, decode to database commit",
            ["topic"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            **labels,
        )
