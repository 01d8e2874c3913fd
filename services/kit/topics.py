"""Provisioning the registry's topics (and their dead-letter topics). Services never
auto-create topics: a typo must fail loudly, not create a one-partition topic."""

from __future__ import annotations

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from contracts.topics import TOPICS
from services.kit import backoff
from services.kit.settings import KafkaSettings


def registry_topics(kafka: KafkaSettings, replication_factor: int = 1) -> list[NewTopic]:
    topics = []
    for t in TOPICS.values():
        topics.append(NewTopic(kafka.topic(t.name), t.partitions, replication_factor))
        topics.append(NewTopic(kafka.topic(t.dead_letter), t.partitions, replication_factor))
    return topics


async def provision(kafka: KafkaSettings, replication_factor: int = 1) -> list[str]:
    """Create the missing topics; return the names created."""
    backoff.install(kafka)
    admin = AIOKafkaAdminClient(**kafka.client_options())
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in registry_topics(kafka, replication_factor) if t.name not in existing]
        created = []
        for topic in missing:  # one by one: some brokers reject a batch on the first existing name
            try:
                await admin.create_topics([topic])
                created.append(topic.name)
            except TopicAlreadyExistsError:
                pass
        return created
    finally:
        await admin.close()
