"""Running one service: settings, pool, migrations, broker and its consumers, the outbox
relay and the HTTP server, started in that order and stopped in reverse. The relay and
the service's background jobs run supervised (services/kit/supervise.py): a task that
fails is logged, restarted, and reported not ready while it is down."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import signal
import ssl
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import asyncpg
import uvicorn
from fastapi import APIRouter
from faststream.kafka import KafkaBroker
from faststream.security import BaseSecurity, SASLPlaintext, SASLScram256, SASLScram512
from faststream.specification import AsyncAPI

from contracts.topics import Topic
from services.kit import backoff, db, logs, outbox, settings as settings_module
from services.kit.auth import TokenVerifier
from services.kit.consumer import EventConsumer, Subscription, UnitOfWork
from services.kit.http import CachedCheck, build_app
from services.kit.metrics import Metrics
from services.kit.outbox import OutboxRelay, producer_for
from services.kit.settings import KafkaSettings, Settings
from services.kit.supervise import Tasks
from services.kit.topics import registry_topics

log = logs.get("caseflow.runtime")


@dataclass(frozen=True)
class ServiceDefinition:
    """What a service is made of; each service's app.py builds one, explicitly."""

    name: str
    directory: Path
    description: str
    subscriptions: list[Subscription] = field(default_factory=list)
    routers: list[APIRouter] = field(default_factory=list)
    publishes: list[Topic] = field(default_factory=list)
    # Jobs of the service besides its consumers (a drop-folder watcher, ...): each is
    # called with the runtime once started, supervised (restarted when it fails; one that
    # returns is a one-shot job, done), and cancelled at stop. A job records each good
    # pass with runtime.tasks.succeeded().
    background: list[Callable[[ServiceRuntime], Awaitable[None]]] = field(default_factory=list)
    options: Any = None  # the service's own settings, read by its app.py
    # What the service's routes share while it runs (a cache of pages...): made once per
    # HTTP app, each value reachable as request.app.state.<name>.
    http_state: Callable[[], dict[str, Any]] | None = None


class ServiceRuntime:
    def __init__(self, definition: ServiceDefinition, settings: Settings) -> None:
        self.definition = definition
        self.name = definition.name
        self.settings = settings
        self.metrics = Metrics(definition.name)
        self.verifier = TokenVerifier(settings.auth)
        self.migrations = db.migrations_for(definition.name, definition.directory)
        self.pool = None
        self.broker: KafkaBroker | None = None
        self.relay: OutboxRelay | None = None
        self.consumers: list[EventConsumer] = []
        self.tasks = Tasks(self.metrics)
        self.readiness = CachedCheck(self._check_readiness)

    async def start(self) -> None:
        s = self.settings
        backoff.install(s.kafka)  # every Kafka client of the process reconnects with backoff
        conn = await db.connect(s.database_url)
        try:
            applied = await db.migrate(conn, self.migrations)
        finally:
            await conn.close()
        if applied:
            log.info("migrations applied", applied=applied)
        self.pool = await db.create_pool(s.database_url)
        self.relay = OutboxRelay(
            dsn=s.database_url,
            pool=self.pool,
            producer_factory=lambda: producer_for(s.kafka),
            metrics=self.metrics,
            inbox_retention_days=s.inbox_retention_days,
            topics=[t.name for t in registry_topics(s.kafka)],
            max_message_bytes=s.kafka.max_message_bytes,
            on_pass=self.tasks.succeeded,
        )
        self.broker = KafkaBroker(
            s.kafka.bootstrap_servers,
            security=_security(s.kafka),
            client_id=f"caseflow-{self.name}",
            allow_auto_create_topics=False,  # topics are provisioned from the registry
            logger=logging.getLogger(f"caseflow.{self.name}.broker"),
            log_level=logging.DEBUG,
            graceful_timeout=15.0,
        )
        self.consumers = [
            EventConsumer(subscription, pool=self.pool, settings=s, metrics=self.metrics, after_commit=self.relay.wake)
            for subscription in self.definition.subscriptions
        ]
        for consumer in self.consumers:
            consumer.attach(self.broker)
        for topic in self.definition.publishes:
            self.broker.publisher(
                s.kafka.topic(topic.name),
                schema=Union[topic.events] if len(topic.events) > 1 else topic.events[0],  # noqa: UP007
                title=f"{self.name}:{topic.name}",
                description=f"{topic.description} Key: {topic.key_field}. Published through the outbox.",
            )
        await self.broker.start()
        self.tasks.supervise("outbox_relay", self.relay.run, may_return=False)
        for job in self.definition.background:
            self.tasks.supervise(job.__name__, functools.partial(job, self))
        log.info("service started", topics=[sub.topic.name for sub in self.definition.subscriptions])

    async def stop(self) -> None:
        if self.broker is not None:
            await self.broker.stop()  # waits for in-flight batches (graceful_timeout)
        await self.tasks.stop()
        if self.pool is not None:
            await self.pool.close()
        log.info("service stopped")

    async def _check_readiness(self) -> dict:
        checks: dict[str, dict[str, Any]] = {}
        try:
            async with self.pool.acquire() as conn:
                missing = await db.pending(conn, self.migrations)
            checks["database"] = {"ok": True}
            checks["migrations"] = {"ok": not missing, "pending": missing}
        except Exception as e:  # noqa: BLE001 - reported, not raised: this is a probe
            checks["database"] = {"ok": False, "error": type(e).__name__}
        broker_ok = bool(self.broker) and await self.broker.ping(timeout=2.0)
        checks["broker"] = {"ok": broker_ok}
        not_reading = {c.subscription.consumer: c.reading_fails_since for c in self.consumers
                       if c.reading_fails_since is not None}
        # A consumer whose reads fail with anything but a Kafka error (the broker check
        # covers those) is not ready: its topic is not being handled.
        checks["consumers"] = {"ok": not not_reading, "not_reading_since": not_reading}
        checks.update(self.tasks.checks())  # the relay ("outbox_relay") and each background job, by name
        if "outbox_relay" in checks:
            checks["outbox_relay"]["role"] = "leader" if self.relay.leading else "standby"
        return checks

    async def observe_outbox(self) -> None:
        """Read, as /metrics is scraped, how long the oldest outbox row has waited and how
        many rows were set aside: from the database, whatever the relay is doing, so a
        stuck or dead relay shows. Unknown (NaN) when the database does not answer at once."""
        try:
            async with asyncio.timeout(2.0):
                row = await self.pool.fetchrow(
                    """SELECT coalesce(extract(epoch FROM now() - (SELECT created_at FROM outbox ORDER BY id LIMIT 1)),
                                       0)::float8 AS age,
                              (SELECT count(*) FROM outbox_refused) AS refused""")
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
            log.warning("could not read the outbox for /metrics", error=repr(e))
            self.metrics.outbox_oldest_age.set(float("nan"))
            self.metrics.outbox_refused_rows.set(float("nan"))
            return
        self.metrics.outbox_oldest_age.set(max(row["age"], 0.0))
        self.metrics.outbox_refused_rows.set(row["refused"])

    def asyncapi(self) -> dict:
        spec = AsyncAPI(
            self.broker,
            title=f"Caseflow {self.name}",
            version="1.0.0",
            description=self.definition.description,
            schema_version="3.0.0",
        ).to_specification().to_jsonable()
        return _with_subscribed_payloads(spec, self.definition, self.settings.kafka)

    def spawn(self, coro, name: str) -> asyncio.Task:
        """Run a job in the background (an import...), once: its failure is logged; it is
        cancelled, like the others, at stop."""
        return self.tasks.spawn(coro, name)

    @asynccontextmanager
    async def unit_of_work(self) -> AsyncIterator[UnitOfWork]:
        """One transaction for an HTTP action: its state change and the events it emits
        commit together (the outbox), as in a consumer's batch; and as there, its statements
        probe by index (db.PROBES: an action touches what its request names, and shares
        statements, and so their kept plans, with the handlers)."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(db.PROBES)
            uow = UnitOfWork(conn, source=f"caseflow.{self.settings.service}", settings=self.settings)
            yield uow
            await outbox.write(conn, uow.outgoing)
        if uow.outgoing:
            self.relay.wake()

    def http_app(self):
        state = self.definition.http_state
        return build_app(self, self.definition.routers, state() if state else None)


def _with_subscribed_payloads(spec: dict, definition: ServiceDefinition, kafka: KafkaSettings) -> dict:
    """Consumers read records raw (so one bad record cannot fail a batch); document the
    events each subscribed topic carries from the contracts instead of the signature."""
    from pydantic import TypeAdapter

    components = spec.setdefault("components", {})
    for sub in definition.subscriptions:
        adapter = TypeAdapter(Union[sub.topic.events] if len(sub.topic.events) > 1 else sub.topic.events[0])  # noqa: UP007
        schema = adapter.json_schema(ref_template="#/components/schemas/{model}")
        for name, sub_schema in schema.pop("$defs", {}).items():
            components.setdefault("schemas", {})[name] = sub_schema
        for message in components.get("messages", {}).values():
            if message.get("title", "").startswith(f"{sub.consumer}:{sub.topic.name}"):
                message["payload"] = schema
    return spec


def _security(kafka: KafkaSettings) -> BaseSecurity | None:
    context = ssl.create_default_context(cafile=kafka.ssl_cafile) if kafka.ssl_cafile else None
    use_ssl = kafka.security_protocol.upper() in ("SSL", "SASL_SSL")
    mechanism = (kafka.sasl_mechanism or "").upper()
    if mechanism == "PLAIN":
        return SASLPlaintext(kafka.sasl_username or "", kafka.sasl_password or "", ssl_context=context, use_ssl=use_ssl)
    if mechanism == "SCRAM-SHA-256":
        return SASLScram256(kafka.sasl_username or "", kafka.sasl_password or "", ssl_context=context, use_ssl=use_ssl)
    if mechanism == "SCRAM-SHA-512":
        return SASLScram512(kafka.sasl_username or "", kafka.sasl_password or "", ssl_context=context, use_ssl=use_ssl)
    if use_ssl:
        return BaseSecurity(ssl_context=context, use_ssl=True)
    return None


def tune_garbage_collector(threshold: int) -> None:
    """A service allocates hundreds of thousands of short-lived objects per batch (records,
    events, rows), almost none in reference cycles; with Python's default threshold (700)
    the collector runs thousands of times a second and rescans everything the process
    keeps for good (modules, settings, pools). So, once started: what is alive now is
    frozen out of the scans (gc.freeze), and the youngest generation is collected after
    `threshold` allocations. Memory held by cycles is freed a little later; nothing else
    changes. 0: Python's defaults."""
    if threshold <= 0:
        return
    gc.collect()
    gc.freeze()
    gc.set_threshold(threshold, 20, 20)


async def serve(definition: ServiceDefinition, settings: Settings | None = None) -> None:
    settings = settings or settings_module.load(definition.name)
    logs.configure(definition.name, settings.log_level, kafka_log_every=settings.kafka.log_repeat_seconds)
    runtime = ServiceRuntime(definition, settings)
    await runtime.start()
    tune_garbage_collector(settings.gc_threshold)
    server = _Server(
        uvicorn.Config(
            runtime.http_app(), host=settings.http_host, port=settings.http_port,
            log_config=None, access_log=False, lifespan="off",
        )
    )
    try:
        await server.serve()  # returns on SIGINT/SIGTERM
    finally:
        await runtime.stop()


class _Server(uvicorn.Server):
    """uvicorn's server, but a SIGTERM or SIGINT that stopped it is not raised again once it
    has stopped (uvicorn 0.29+ does, and the default action then ends the process before
    the runtime stops: consumers never left their groups, tasks were never let finish). The
    runtime's stop() runs, then the process exits."""

    @contextlib.contextmanager
    def capture_signals(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


def main(definition_factory) -> None:
    try:
        import uvloop  # a faster event loop where it is installed (not on Windows)
    except ImportError:
        asyncio.run(serve(definition_factory()))
    else:
        uvloop.run(serve(definition_factory()))
