"""What every bench stands on, written once: the backends, one isolated system per run (a
topic prefix and the databases named after it, dropped at the end unless kept), the
services as real processes (env, a safely chosen HTTP port, /readyz, CPU, /metrics), the
consumer groups' lag as the kit names them, Kafka load at a rate, and HTTP load with
percentiles.

Backends: KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL when set, else Apache Kafka from Maven's
jars (deploy/local/kafka.sh, left running) and an embedded PostgreSQL of the bench's own
(data in .caseflow/<folder>, stopped with the bench: EmbeddedPostgres.start() stops any
server running on the same folder, so two benches running at once must not share one).

The service processes and the isolated system are tests/support.py's (ServiceProcess,
Stack), so a bench runs the services exactly as the integration tests do; this module adds
what a bench needs on top.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402
import httpx  # noqa: E402
from aiokafka import AIOKafkaConsumer, TopicPartition  # noqa: E402
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # noqa: E402

from contracts.envelope import Event  # noqa: E402
from contracts.topics import TOPICS, Topic  # noqa: E402
from services.kit.outbox import message_for, producer_for  # noqa: E402
from services.kit.settings import KafkaSettings  # noqa: E402
from tests.support import SECRET, Backends, ServiceProcess, Stack, eventually, free_port  # noqa: E402, F401

# PostgreSQL settings for the benches that write millions of rows (roster import, caseload
# materialisation, the dashboard's bulk load).
BIG_POSTGRES = {"shared_buffers": "1GB", "max_wal_size": "8GB", "work_mem": "256MB", "maintenance_work_mem": "1GB"}


# ---------------------------------------------------------------------------- backends


def backends(stack: ExitStack, folder: str, postgres_settings: dict[str, str] | None = None) -> Backends:
    """The broker and the PostgreSQL server (see the module's docstring)."""
    kafka = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if not kafka:
        out = subprocess.run([ROOT / "deploy/local/kafka.sh", "start"], capture_output=True, text=True, check=True)
        kafka = out.stdout.strip().splitlines()[-1]
    pg = os.environ.get("DATABASE_URL")
    if not pg:
        from deploy.local.embedded import EmbeddedPostgres

        server = EmbeddedPostgres(ROOT / ".caseflow" / folder, settings=postgres_settings or {})
        pg = server.start()
        stack.callback(server.stop)
    return Backends(kafka=kafka, postgres=pg)


def dsn_for(server: str, name: str) -> str:
    """The URL of database `name` on the server of `server`."""
    return urlunsplit(urlsplit(server)._replace(path=f"/{name}"))


# ---------------------------------------------------------------------------- HTTP ports


class Ports:
    """The services' HTTP ports: base, base + 1, ... in the order the services start, or
    (base 0, the default) each a port nothing listens on, below Linux's ephemeral range
    (tests/support.py's free_port: a port the kernel hands out to a client could be taken
    before the service binds it). /readyz names the process that answers, so a port taken
    by another process is noticed, not measured."""

    def __init__(self, base: int = 0) -> None:
        self.base = base
        self.given = 0

    def next(self) -> int:
        if not self.base:
            return free_port()
        port = self.base + self.given
        self.given += 1
        return port


def add_port_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--http-port-base", type=int, default=0, metavar="PORT",
                        help="the services' HTTP ports: PORT, PORT+1, ... in start order (default: free ports "
                             "chosen below the ephemeral range)")


# ---------------------------------------------------------------------------- one isolated system


class Service(ServiceProcess):
    """python -m services.<name>, as the tests run it, on a given port; logs in
    .caseflow/bench-logs/."""

    def __init__(self, name: str, system: System, extra_env: dict[str, str], port: int) -> None:
        super().__init__(name, system, extra_env)
        self.port = port
        self.log_path = ROOT / ".caseflow" / "bench-logs" / f"{system.prefix}{name}-{port}.log"
        self.started = 0.0
        self.ready_after = float("nan")

    def start(self, **extra_env: str) -> Service:
        self.started = time.perf_counter()
        super().start(**extra_env)
        return self

    async def ready(self, timeout: float = 120.0) -> Service:
        """Wait for /readyz 200 from this very process; ready_after: seconds since start."""
        await super().ready(timeout)
        self.ready_after = time.perf_counter() - self.started
        return self

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()[-3000:]}")

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.proc.pid)

    async def metrics(self) -> str:
        async with httpx.AsyncClient() as client:
            return (await client.get(self.url + "/metrics", timeout=10)).text

    async def batches(self) -> dict[str, tuple[float, float, float]]:
        """Per consumed topic: (batches handled, seconds spent, records consumed), from /metrics."""
        out: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
        for line in (await self.metrics()).splitlines():
            for i, name in enumerate(("caseflow_batch_handle_seconds_count{", "caseflow_batch_handle_seconds_sum{",
                                      "caseflow_events_consumed_total{")):
                if line.startswith(name):
                    topic = line.split('topic="', 1)[1].split('"', 1)[0]
                    out[topic][i] = float(line.rsplit(" ", 1)[1])
        return {t: tuple(v) for t, v in out.items()}


def describe_batches(before: dict, after: dict) -> str:
    """The consumed batches between two Service.batches() readings, per topic."""
    out = []
    for topic, (count, total, records) in sorted(after.items()):
        c0, t0, r0 = before.get(topic, (0, 0, 0))
        if count > c0:
            out.append(f"{topic.split('.', 1)[1]} {count - c0:,.0f} batches of {(records - r0) / (count - c0):,.0f} "
                       f"in {(total - t0) / (count - c0) * 1000:,.0f} ms")
    return "; ".join(out)


@dataclass
class System(Stack):
    """One isolated system: its own topic prefix, the databases named after it and the
    service processes it starts. close() stops the processes and, unless `keep`, deletes
    the topics and drops the databases (the broker and the disk are shared)."""

    keep: bool = False
    ports: Ports = field(default_factory=Ports)
    databases: set[str] = field(default_factory=set)

    @classmethod
    def new(cls, backends_: Backends, tag: str = "b", *, keep: bool = False, ports: Ports | None = None) -> System:
        return cls(backends_, prefix=f"{tag}{uuid.uuid4().hex[:6]}.", keep=keep, ports=ports or Ports())

    @property
    def kafka(self) -> KafkaSettings:
        return self.kafka_settings

    def dsn(self, database: str) -> str:
        return self.database_url(database)

    def env(self, service: str, **extra: str) -> dict[str, str]:
        # The services' own batch size (the tests use a smaller one) and quiet logs.
        return super().env(service, **{"CASEFLOW_CONSUMER_BATCH_SIZE": "2000", "CASEFLOW_LOG_LEVEL": "WARNING",
                                       **extra})

    async def prepare(self, *databases: str) -> None:
        """The registry's topics under this prefix, and these databases (services' or not)."""
        self.databases.update(databases)
        await super().prepare(*databases)

    async def database(self, name: str) -> str:
        """Create one more database of this system (a raw baseline's); its URL."""
        from services.kit import db

        self.databases.add(name)
        await db.ensure_database(self.dsn(name))
        return self.dsn(name)

    def service(self, name: str, port: int | None = None, **extra_env: str) -> Service:
        proc = Service(name, self, extra_env, port or self.ports.next())
        self.processes.append(proc)
        return proc

    async def start(self, name: str, timeout: float = 120.0, **extra_env: str) -> Service:
        return await self.service(name, **extra_env).start().ready(timeout)

    def lag(self, service: str, *topics: Topic) -> Lag:
        return Lag.of_service(self.kafka, service, *topics)

    async def settled(self, service: str, timeout: float = 600.0, check: Callable[[], None] | None = None) -> None:
        """Wait until the service has committed every record on the topics it reads and its
        outbox is empty."""
        async with self.lag(service) as lag:
            conn = await asyncpg.connect(self.dsn(service))
            try:
                deadline = time.monotonic() + timeout
                while await lag() or await conn.fetchval("SELECT count(*) FROM outbox"):
                    if check:
                        check()
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{service} not settled after {timeout:.0f} s: lag {await lag():,}")
                    await asyncio.sleep(0.25)
            finally:
                await conn.close()

    async def close(self) -> None:
        for proc in self.processes:
            proc.stop()
        if self.keep:
            print(f"  (kept: topics {self.prefix}*, databases "
                  + ", ".join(sorted(f"{self.prefix.rstrip('.')}_{d}" for d in self.databases)) + ")")
            return
        await self.delete_topics()
        conn = await asyncpg.connect(dsn_for(self.backends.postgres, "postgres"))
        try:
            for name in sorted(self.databases):
                await conn.execute(f'DROP DATABASE IF EXISTS "{self.prefix.rstrip(".")}_{name}" WITH (FORCE)')
        finally:
            await conn.close()

    async def __aenter__(self) -> System:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


# ---------------------------------------------------------------------------- Kafka


def partitions_of(topic: str) -> int:
    """A prefixed registry topic's (or its dead-letter topic's) partitions."""
    return TOPICS[topic.split(".", 1)[1].removesuffix(".DLT")].partitions


async def end_offsets(kafka_servers: str, topics: Iterable[str]) -> dict[str, int]:
    """Records on each prefixed registry topic (the sum of its partitions' end offsets)."""
    topics = list(topics)
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_servers, enable_auto_commit=False)
    await consumer.start()
    try:
        ends = await consumer.end_offsets([TopicPartition(t, p) for t in topics for p in range(partitions_of(t))])
    finally:
        await consumer.stop()
    out: dict[str, int] = Counter({t: 0 for t in topics})
    for tp, end in ends.items():
        out[tp.topic] += end
    return out


async def create_topic(kafka_servers: str, name: str, partitions: int) -> None:
    """A topic outside the registry (a baseline's), ready to be read."""
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        await admin.close()
    await asyncio.sleep(1.0)  # leaders elected


async def tail_reader(kafka_servers: str, topic: str, partitions: int) -> AIOKafkaConsumer:
    """A consumer assigned every partition, positioned at the end now, before anything more
    is produced."""
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_servers, enable_auto_commit=False, fetch_max_wait_ms=100)
    await consumer.start()
    parts = [TopicPartition(topic, p) for p in range(partitions)]
    consumer.assign(parts)
    await consumer.seek_to_end(*parts)
    for tp in parts:
        await consumer.position(tp)  # resolve "end" now
    return consumer


async def produce(kafka: KafkaSettings, events: Iterable[Event], source: str = "bench") -> None:
    """Each event to its registry topic and key, with CloudEvents headers, as the relays send them."""
    producer = producer_for(kafka)
    await producer.start()
    try:
        pending = []
        for e in events:
            m = message_for(e, source=source, kafka=kafka)
            pending.append(await producer.send(m.topic, m.payload, key=m.key,
                                               headers=[(k, v.encode()) for k, v in m.headers]))
            if len(pending) >= 10_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


async def drive(kafka: KafkaSettings, make: Callable[[], tuple], rate: float, seconds: float) -> tuple[int, float]:
    """Produce make() -> (topic, key, value, headers) records at `rate` per second for
    `seconds`; (records sent, seconds taken)."""
    producer = producer_for(kafka)
    await producer.start()
    try:
        futures = []
        started = time.perf_counter()
        sent = 0
        while (elapsed := time.perf_counter() - started) < seconds:
            due = int(elapsed * rate)
            while sent < due:
                topic, key, value, headers = make()
                futures.append(await producer.send(topic, value, key=key, headers=headers))
                sent += 1
            if len(futures) > 5000:
                await asyncio.gather(*futures)
                futures.clear()
            await asyncio.sleep(0.002)
        await asyncio.gather(*futures)
        return sent, time.perf_counter() - started
    finally:
        await producer.stop()


class Lag:
    """Consumer groups' lag: committed offsets against end offsets, summed over
    (group, topic) pairs. Groups are named as the kit names them, KafkaSettings.topic(
    consumer): the topic prefix included (a group named without it has never committed, so
    its lag never reaches 0)."""

    def __init__(self, kafka: KafkaSettings, pairs: Iterable[tuple[str, Topic]]) -> None:
        self.groups = consumer_groups(kafka, pairs)
        self.admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
        self.offsets = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap_servers, enable_auto_commit=False)

    @classmethod
    def of_service(cls, kafka: KafkaSettings, service: str, *topics: Topic) -> Lag:
        """The groups of a service's subscriptions (to these topics, or all)."""
        return cls(kafka, [(s.consumer, s.topic) for s in subscriptions(service)
                           if not topics or s.topic in topics])

    async def __aenter__(self) -> Lag:
        await self.admin.start()
        await self.offsets.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.offsets.stop()
        await self.admin.close()

    async def __call__(self) -> int:
        ends = await self.offsets.end_offsets([tp for _, tps in self.groups for tp in tps])
        behind = 0
        for group, tps in self.groups:
            committed = await self.admin.list_consumer_group_offsets(group, partitions=tps)
            for tp in tps:
                at = committed.get(tp)
                behind += max(ends[tp] - (at.offset if at is not None and at.offset >= 0 else 0), 0)
        return behind


def consumer_groups(kafka: KafkaSettings, pairs: Iterable[tuple[str, Topic]]) -> list[tuple[str, list]]:
    """(group, its topic's partitions) for (consumer, topic) pairs, named as the kit's
    consumers name them (services/kit/consumer.py: group_id=kafka.topic(consumer))."""
    return [(kafka.topic(consumer), [TopicPartition(kafka.topic(topic.name), p) for p in range(topic.partitions)])
            for consumer, topic in pairs]


def subscriptions(service: str) -> list:
    """A service's subscriptions (consumer name and topic), from its app's definition."""
    return import_module(f"services.{service}.app").definition().subscriptions


# ---------------------------------------------------------------------------- HTTP load


class Http1:
    """One bare HTTP/1.1 keep-alive connection. The load generator shares the cores with
    the service: httpx spends more CPU per request than a fast route; this spends next to
    none. A connection idle past the server's keep-alive timeout (uvicorn: 5 s) is
    reopened first, and one the server closes is reopened after."""

    IDLE = 4.0

    def __init__(self, port: int, headers: dict[str, str] | None = None) -> None:
        self.port = port
        self.headers = headers or {}
        self.used = 0.0

    async def open(self) -> Http1:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.used = time.monotonic()
        return self

    async def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        """(status, body); status 0 when the connection broke mid-request."""
        if time.monotonic() - self.used > self.IDLE:
            self.close()
            await self.open()
        head = f"Host: 127.0.0.1:{self.port}\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in {**self.headers, **(headers or {})}.items())
        try:
            self.writer.write(f"GET {path} HTTP/1.1\r\n{head}\r\n".encode())
            answer = await self.reader.readuntil(b"\r\n\r\n")
            length, closing = 0, False
            for line in answer.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"connection" and value.strip().lower() == b"close":
                    closing = True
            body = await self.reader.readexactly(length)
        except (ConnectionError, asyncio.IncompleteReadError) as e:
            self.close()
            await self.open()
            return 0, f"connection lost: {e!r}".encode()
        self.used = time.monotonic()
        if closing:
            self.close()
            await self.open()
        return int(answer[9:12]), body

    def close(self) -> None:
        self.writer.close()


@dataclass
class Load:
    """What hammer() measured."""

    latencies: list[float]
    failures: int
    seconds: float
    cpu: float  # the service's CPU seconds over the measured window

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else float("nan")

    def p(self, percentile: float) -> float:
        return pct(self.latencies, percentile)


async def hammer(call: Callable[[int], Awaitable[bool]], seconds: float, cpu: Callable[[], float] = lambda: 0.0,
                 concurrency: int = 50, warmup: float = 1.0) -> Load:
    """`concurrency` workers calling `call(worker)` back to back for `seconds` after a
    `warmup`; call returns whether the answer was right (a wrong one counts as a failure)."""
    deadline = time.perf_counter() + warmup
    latencies: list[float] = []
    failures = 0
    measuring = False

    async def worker(i: int) -> None:
        nonlocal failures
        while time.perf_counter() < deadline:
            t = time.perf_counter()
            ok = await call(i)
            if measuring:
                latencies.append(time.perf_counter() - t)
                failures += not ok

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    measuring = True
    cpu_before = cpu()
    started = time.perf_counter()
    deadline = started + seconds
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return Load(latencies, failures, time.perf_counter() - started, cpu() - cpu_before)


def pct(values: list[float], p: float) -> float:
    """The p-th percentile by nearest rank (the smallest value with at least p% of the
    values at or below it); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


def latency_line(label: str, values: list[float], base: float | None = None, width: int = 46) -> str:
    """p50/p95/p99/max in ms, and the p99 over a baseline's p99 when given."""
    p50, p95, p99 = pct(values, 50), pct(values, 95), pct(values, 99)
    text = (f"  {label:{width}s} p50 {p50 * 1000:7.1f}  p95 {p95 * 1000:7.1f}  p99 {p99 * 1000:7.1f}  "
            f"max {max(values, default=float('nan')) * 1000:8.1f} ms")
    return text + (f"   p99 {p99 / base:.1f}x" if base else "")


# ---------------------------------------------------------------------------- the machine


def cpu_seconds(pid: int) -> float:
    """A process's user + system CPU seconds so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def server_cpu_seconds(dsn: str) -> float:
    """The CPU seconds so far of the whole PostgreSQL server behind dsn, when it runs on this
    machine: its postmaster (found by its data directory: the embedded server runs in a PID
    namespace of its own, so pg_backend_pid() is not a PID here), its live processes
    (backends, WAL writer, checkpointer, autovacuum) and those already reaped; NaN when it
    cannot be read (/proc)."""
    conn = await asyncpg.connect(dsn)
    try:
        data_dir = await conn.fetchval("SHOW data_directory")
    finally:
        await conn.close()
    found = server_processes(data_dir)
    if found is None:
        return float("nan")
    tick = os.sysconf("SC_CLK_TCK")
    postmaster, children = found
    total = sum(int(f) for f in postmaster[11:15]) / tick  # its own and its reaped children's
    return total + sum(int(stat[11]) + int(stat[12]) for stat in children.values()) / tick


def server_processes(data_dir: str) -> tuple[list[str], dict[int, list[str]]] | None:
    """The postmaster of the PostgreSQL server of data_dir on this machine and its live
    children by PID (here), each as the fields of /proc/PID/stat after the command's name;
    None when no single postmaster is found."""
    stats, postmasters = {}, []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stats[int(entry.name)] = stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            command = (entry / "cmdline").read_bytes().split(b"\0")
            if command[0].endswith(b"/postgres") and data_dir.encode() in command:
                postmasters.append((int(entry.name), int(stat[1])))
        except (OSError, ValueError, IndexError):  # gone while read
            continue
    postmaster = [pid for pid, parent in postmasters if parent not in {p for p, _ in postmasters}]
    if len(postmaster) != 1:
        return None
    return stats[postmaster[0]], {pid: stat for pid, stat in stats.items() if stat[1] == str(postmaster[0])}


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


class PeakRss:
    """This process's peak resident set size over a stretch of work: the kernel's high-water
    mark reset at the start (/proc/self/clear_refs, 5), read at the end (VmHWM); where the
    reset is refused, the peak since the process started."""

    def __enter__(self) -> PeakRss:
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.since = "reset"
        except OSError:
            self.since = "process start"
        self.mb = float("nan")
        return self

    def __exit__(self, *exc) -> None:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                self.mb = int(line.split()[1]) / 1024


def write_json(path: Path | str, data: dict) -> None:
    Path(path).write_text(json.dumps(data, indent=2, default=str) + "\n")
