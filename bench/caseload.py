"""The caseload service: materialization, change latency and caseload queries, each beside a
raw baseline measured in the same run.

    python bench/caseload.py [--only materialize|latency|query] [--scale 1.0] [--seconds 60]
                             [--rate 1000] [--query-seconds 20] [--no-analyze] [--keep]

Each part runs the real service (python -m services.caseload, every guarantee on: inbox,
projection, outbox relay) as a process on the real broker and database, under its own topic
prefix and databases (dropped at the end unless --keep). Without --only, all three run, the
first at --scale (default 1.0: New York City).

1. materialize: a New York City-sized roster import (1,100,000 students, 75,000 staff,
   60,000 classes, 8,000,000 enrollments, times --scale; bench/roster_import.py's generator
   and its cached package under .caseflow/bench-oneroster/) is stored and published by the
   roster importer and outbox relay, as bench/roster_import.py does. Then the caseload service
   starts; the time runs from its start until its consumer groups have caught up with every
   topic it reads (lag 0) and its outbox is empty (all published). Prints the time, the
   memberships, the membership events published, the service's CPU and batch times, whether
   the memberships agree with the rule recomputed from scratch in SQL, and the caseload query
   on the tables it leaves. Baseline: a bare aiokafka consumer reading the same records from
   the roster topics with getmany (no processing). Target: < 5 min at --scale 1.0.
2. latency: a seeded district (100 teachers with emails, 10,000 students; staff, classes and
   students first, then enrollments, then ANALYZE as autovacuum would have done in steady
   state, unless --no-analyze) gets a steady --rate roster changes per second for --seconds,
   produced straight to the roster topics with CloudEvents headers (services.kit.outbox.
   message_for): EnrollmentAdded / EnrollmentRemoved into a second section (80%) and
   StudentUpdated flipping grade 05 <-> 06 (20%: homeroom caseload -> section caseload). Each
   change causes a CaseloadMembershipAdded/Removed and is matched to it by (student_id,
   added|removed, source_ref) - not by correlation_id: the service stamps every membership
   event of a batch with the correlation_id of the batch's last event. Timed from just before
   the send to (a) the membership record's timestamp (set by the relay's producer: published)
   and (b) the moment a reader in this process sees it. Prints p50/p95/p99/max and the
   achieved input rate. Baseline: the same events at the same rate through Kafka alone
   (produced to a bare topic, read back by the same kind of reader). Target: p99 < 1 s to
   publish.
3. query: a teacher with 150 students (5 sections of 30) in the same district; 50 concurrent
   clients (bare HTTP/1.1 keep-alive connections: httpx would cost more CPU than the route)
   call GET /v1/caseloads/me?limit=500 with a signed token, then read it in pages of
   limit=100/after, each for --query-seconds. Baselines: the same 50 clients on GET /healthz
   (the HTTP floor), and the service's own SQL (store.caseload_page) run by 50 tasks over an
   asyncpg pool of 10 (the service's pool size). Prints p50/p99, calls/s and the service's
   CPU per call. Target: p99 < 50 ms.

This machine is noisy (and the load generator shares its 2 cores with the service, the
broker and the database): compare ratios, repeat, and read the medians; nothing here asserts
a time.

Backends: KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL if set, else the real Apache Kafka from
deploy/local/kafka.sh and an embedded PostgreSQL in .caseflow/bench-caseload-postgres (with
bench/roster_import.py's settings, in its own data folder: EmbeddedPostgres.start() stops any
server running on the same folder, so two benches must not share one). Service logs:
.caseflow/bench-logs/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict, deque
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from backends import backends as shared_backends, dsn_for  # noqa: E402

from roster_import import packages, publish_all  # noqa: E402

from contracts.envelope import Event  # noqa: E402
from contracts.roster import (  # noqa: E402
    ClassUpserted,
    EnrollmentAdded,
    EnrollmentRemoved,
    StaffUpserted,
    StudentEnrolled,
    StudentUpdated,
)
from contracts.topics import CASELOAD_MEMBERSHIPS, TOPICS  # noqa: E402
from services.caseload import store as caseload_store  # noqa: E402
from services.caseload.app import definition as caseload_definition  # noqa: E402
from services.caseload.domain import ELEMENTARY_GRADES, SECONDARY_GRADES  # noqa: E402
from services.kit import db  # noqa: E402
from services.kit.auth import mint  # noqa: E402
from services.kit.outbox import message_for, producer_for  # noqa: E402
from services.kit.settings import KafkaSettings  # noqa: E402
from services.kit.topics import provision  # noqa: E402
from services.roster.app import definition as roster_definition  # noqa: E402
from services.roster.importer import run_import  # noqa: E402

SECRET = "bench-secret-" + "x" * 32
SOURCE = "bench.caseload"
CONCURRENCY = 50
QUERY_TEACHER = "q150.teacher@bench.example.org"


# ---------------------------------------------------------------------------- backends and the service


def backends(stack: ExitStack) -> tuple[str, str]:
    return shared_backends(stack, "bench-caseload-postgres",
                           {"shared_buffers": "1GB", "max_wal_size": "8GB", "work_mem": "256MB", "maintenance_work_mem": "1GB"})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Run:
    """One isolated system: a topic prefix and the databases named after it."""

    kafka_servers: str
    pg: str
    prefix: str

    @classmethod
    def new(cls, kafka_servers: str, pg: str) -> Run:
        return cls(kafka_servers, pg, f"bc{uuid.uuid4().hex[:6]}.")

    @property
    def kafka(self) -> KafkaSettings:
        return KafkaSettings(bootstrap_servers=self.kafka_servers, topic_prefix=self.prefix,
                             enable_idempotence=os.environ.get("KAFKA_ENABLE_IDEMPOTENCE", "true") == "true")

    def dsn(self, service: str) -> str:
        return dsn_for(self.pg, f"{self.prefix.rstrip('.')}_{service}")

    def topic(self, name: str) -> str:
        return self.prefix + name

    async def prepare(self, *services: str) -> None:
        await provision(self.kafka)
        for service in services:
            await db.ensure_database(self.dsn(service))

    async def drop(self, *services: str, extra_topics: tuple[str, ...] = ()) -> None:
        """Delete this run's topics and databases (a shared broker and disk)."""
        admin = AIOKafkaAdminClient(bootstrap_servers=self.kafka_servers)
        await admin.start()
        try:
            names = [n for n in await admin.list_topics() if n.startswith(self.prefix)]
            if names:
                await admin.delete_topics(names)
        except Exception as e:  # noqa: BLE001 - cleanup is best effort
            print(f"  (could not delete topics {self.prefix}*: {e!r})")
        finally:
            await admin.close()
        conn = await asyncpg.connect(dsn_for(self.pg, "postgres"))
        try:
            for service in services:
                await conn.execute(f'DROP DATABASE IF EXISTS "{self.prefix.rstrip(".")}_{service}" WITH (FORCE)')
        finally:
            await conn.close()


class CaseloadService:
    """python -m services.caseload with the env the tests and benches use."""

    def __init__(self, run: Run) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("CASEFLOW_")}
        env.update(KAFKA_BOOTSTRAP_SERVERS=run.kafka_servers, CASEFLOW_TOPIC_PREFIX=run.prefix,
                   CASEFLOW_JWT_SECRET=SECRET, CASEFLOW_CASELOAD_DATABASE_URL=run.dsn("caseload"),
                   CASEFLOW_CASELOAD_HTTP_PORT=str(self.port), CASEFLOW_CONSUMER_BATCH_SIZE="2000",
                   CASEFLOW_LOG_LEVEL="WARNING", PYTHONPATH=str(ROOT))
        self.log_path = ROOT / ".caseflow" / "bench-logs" / f"caseload-{run.prefix}log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")  # noqa: SIM115 - handed to the child
        self.started = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, "-m", "services.caseload"], cwd=ROOT, env=env,
                                     stdout=log, stderr=subprocess.STDOUT)

    async def ready(self, timeout: float = 120.0) -> float:
        """Seconds from the process start to /readyz answering 200."""
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient() as client:
            while time.monotonic() < deadline:
                self.check_alive()
                try:
                    if (await client.get(self.url + "/readyz", timeout=2)).status_code == 200:
                        return time.perf_counter() - self.started
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.2)
        raise RuntimeError(f"caseload not ready after {timeout:.0f}s; see {self.log_path}")

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"caseload exited with {self.proc.returncode}:\n{tail}")

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    async def batches(self) -> dict[str, tuple[float, float, float]]:
        """Per consumed topic: (batches handled, seconds spent, records consumed), from /metrics."""
        async with httpx.AsyncClient() as client:
            text = (await client.get(self.url + "/metrics", timeout=5)).text
        out: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
        for line in text.splitlines():
            for i, name in enumerate(("caseflow_batch_handle_seconds_count{", "caseflow_batch_handle_seconds_sum{",
                                      "caseflow_events_consumed_total{")):
                if line.startswith(name):
                    topic = line.split('topic="', 1)[1].split('"', 1)[0]
                    out[topic][i] = float(line.rsplit(" ", 1)[1])
        return {t: tuple(v) for t, v in out.items()}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Progress:
    """Where the caseload service stands: its consumer groups' lag on the topics it reads,
    and its outbox."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.groups = [(run.topic(s.consumer), [TopicPartition(run.topic(s.topic.name), p) for p in range(s.topic.partitions)])
                       for s in caseload_definition().subscriptions]
        self.admin = AIOKafkaAdminClient(bootstrap_servers=run.kafka_servers)
        self.offsets = AIOKafkaConsumer(bootstrap_servers=run.kafka_servers, enable_auto_commit=False)
        self.conn: asyncpg.Connection | None = None

    async def __aenter__(self) -> Progress:
        await self.admin.start()
        await self.offsets.start()
        self.conn = await asyncpg.connect(self.run.dsn("caseload"))
        return self

    async def __aexit__(self, *exc) -> None:
        await self.offsets.stop()
        await self.admin.close()
        await self.conn.close()

    async def lag(self) -> int:
        ends = await self.offsets.end_offsets([tp for _, tps in self.groups for tp in tps])
        behind = 0
        for group, tps in self.groups:
            committed = await self.admin.list_consumer_group_offsets(group, partitions=tps)
            for tp in tps:
                at = committed.get(tp)
                behind += max(ends[tp] - (at.offset if at is not None and at.offset >= 0 else 0), 0)
        return behind

    async def outbox(self) -> int:
        return await self.conn.fetchval("SELECT count(*) FROM outbox")

    async def memberships(self) -> int:
        return await self.conn.fetchval("SELECT count(*) FROM memberships")

    async def settled(self) -> bool:
        """Every record consumed and committed, then every event it caused published."""
        return await self.lag() == 0 and await self.outbox() == 0


def partitions_of(topic: str) -> int:
    """A prefixed registry topic's (or its dead-letter topic's) partitions."""
    return TOPICS[topic.split(".", 1)[1].removesuffix(".DLT")].partitions


async def end_offsets(kafka_servers: str, topics: list[str]) -> dict[str, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_servers, enable_auto_commit=False)
    await consumer.start()
    try:
        parts = [TopicPartition(t, p) for t in topics for p in range(partitions_of(t))]
        ends = await consumer.end_offsets(parts)
    finally:
        await consumer.stop()
    out: dict[str, int] = Counter()
    for tp, end in ends.items():
        out[tp.topic] += end
    return out


async def missing_memberships(conn: asyncpg.Connection) -> tuple[int, int]:
    """(missing, extra): the automatic memberships the projection implies by the rule
    (domain.automatic_memberships, computed from scratch) and the service does not hold, and
    the ones it holds that the rule does not imply."""
    row = await conn.fetchrow(
        """WITH wanted AS (
               SELECT DISTINCT lower(sf.email) AS owner_email, s.student_id, c.class_id::text AS source_ref
               FROM students s
               JOIN class_members m ON m.person_id = s.student_id AND m.role = 'student'
               JOIN classes c ON c.class_id = m.class_id
               JOIN class_members t ON t.class_id = c.class_id AND t.role = 'teacher'
               JOIN staff sf ON sf.staff_id = t.person_id AND sf.active AND sf.email IS NOT NULL
               WHERE s.status = 'active'
                 AND ((c.class_type = 'homeroom' AND s.grade = ANY($1::text[]))
                   OR (c.class_type = 'scheduled' AND s.grade = ANY($2::text[])))
           ),
           held AS (SELECT owner_email, student_id, source_ref FROM memberships
                    WHERE reason IN ('homeroom', 'section'))
           SELECT (SELECT count(*) FROM (SELECT * FROM wanted EXCEPT SELECT * FROM held) x),
                  (SELECT count(*) FROM (SELECT * FROM held EXCEPT SELECT * FROM wanted) y)""",
        list(ELEMENTARY_GRADES), list(SECONDARY_GRADES))
    return row[0], row[1]


async def caseload_query_at_scale(conn: asyncpg.Connection) -> tuple[float, int]:
    """Median ms of the caseload query for an owner whose caseload is nearest 150 students,
    on the tables as they are (20 runs, after 5 to get past plan caching)."""
    row = await conn.fetchrow(
        """SELECT district_id, owner_email, count(DISTINCT student_id) AS n FROM memberships
           GROUP BY 1, 2 ORDER BY abs(count(DISTINCT student_id) - 150) LIMIT 1""")
    times = []
    for i in range(25):
        t = time.perf_counter()
        await caseload_store.caseload_page(conn, district_id=row["district_id"], owner_email=row["owner_email"],
                                           school_id=None, grade=None, reason=None, after=None, limit=500,
                                           schools=None)
        if i >= 5:
            times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000, row["n"]


def describe_batches(before: dict, after: dict) -> str:
    """The consumed batches between two /metrics readings, per topic: how many, how big, how long."""
    out = []
    for topic, (count, total, records) in sorted(after.items()):
        c0, t0, r0 = before.get(topic, (0, 0, 0))
        if count > c0:
            out.append(f"{topic.split('.')[2]} {count - c0:,.0f} batches of {(records - r0) / (count - c0):,.0f} "
                       f"in {(total - t0) / (count - c0) * 1000:,.0f} ms")
    return "; ".join(out)


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


# ---------------------------------------------------------------------------- 1. materialization


async def raw_read(kafka_servers: str, topics: list[str], n: int) -> float:
    """A bare consumer reading the n records of these topics with getmany, no processing."""
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_servers, enable_auto_commit=False,
                                max_partition_fetch_bytes=4 * 1024 * 1024)
    await consumer.start()
    try:
        parts = [TopicPartition(t, p) for t in topics for p in range(partitions_of(t))]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        started = time.perf_counter()
        seen = 0
        while seen < n:
            batch = await consumer.getmany(timeout_ms=200, max_records=2000)
            seen += sum(len(recs) for recs in batch.values())
        return time.perf_counter() - started
    finally:
        await consumer.stop()


async def materialize(kafka_servers: str, pg: str, scale: float, keep: bool) -> None:
    base, _ = packages(scale)
    run = Run.new(kafka_servers, pg)
    await run.prepare("roster", "caseload")
    print(f"caseload materialization bench, scale {scale} of New York City, {os.cpu_count()} cores, "
          f"prefix {run.prefix}")
    service = None
    try:
        roster_dsn = run.dsn("roster")
        conn = await db.connect(roster_dsn)
        await db.migrate(conn, db.migrations_for("roster", roster_definition().directory))
        await conn.close()
        pool = await db.create_pool(roster_dsn, min_size=1, max_size=4)
        started = time.perf_counter()
        result = await run_import(pool, district_id="nycdoe", path=base, kafka=run.kafka, confirm=True)
        stored = time.perf_counter() - started
        sent, published = await publish_all(pool, roster_dsn, run.kafka)
        await pool.close()
        print(f"  roster import (setup): stored {stored:.1f} s, published {published:.1f} s, {sent:,} messages, "
              f"status {result.status}")

        topics = sorted({run.topic(s.topic.name) for s in caseload_definition().subscriptions})
        records = await end_offsets(kafka_servers, topics)
        n = sum(records.values())
        print("  input: " + ", ".join(f"{t.removeprefix(run.prefix)} {c:,}" for t, c in records.items() if c))
        raw = await raw_read(kafka_servers, [t for t in topics if records[t]], n)
        print(f"  raw baseline: aiokafka getmany of the same {n:,} records      {raw:8.1f} s"
              f"  {n / raw:>10,.0f} records/s   1.00x")

        service = CaseloadService(run)
        ready = await service.ready(timeout=300)
        async with Progress(run) as progress:
            last_report = time.perf_counter()
            caught_up = None
            while True:
                service.check_alive()
                lag = await progress.lag()
                if lag == 0:
                    caught_up = caught_up or time.perf_counter() - service.started
                    if await progress.outbox() == 0:
                        break
                if time.perf_counter() - last_report > 30:
                    last_report = time.perf_counter()
                    print(f"    ... {last_report - service.started:5.0f} s: lag {lag:,}, "
                          f"outbox {await progress.outbox():,}, memberships {await progress.memberships():,}",
                          flush=True)
                await asyncio.sleep(0.5)
            done = time.perf_counter() - service.started
            cpu, batches = service.cpu_seconds(), await service.batches()
            memberships = await progress.memberships()
            changes = dict(await progress.conn.fetch("SELECT change, count(*) FROM membership_changes GROUP BY 1"))
        service.stop()
        conn = await db.connect(run.dsn("caseload"))
        try:
            missing, extra = await missing_memberships(conn)
            analyzed = await conn.fetchval("SELECT last_autoanalyze IS NOT NULL FROM pg_stat_user_tables "
                                           "WHERE relname = 'memberships'")
            query_ms, caseload_size = await caseload_query_at_scale(conn)
            await conn.execute("ANALYZE")
            query_analyzed_ms, _ = await caseload_query_at_scale(conn)
        finally:
            await conn.close()
        out = await end_offsets(kafka_servers, [run.topic(CASELOAD_MEMBERSHIPS.name)])
        published_events = sum(out.values())
        dead = await end_offsets(kafka_servers, [run.topic(t.removeprefix(run.prefix) + ".DLT") for t in topics])
        print(f"  caseload service: start to every caseload materialized   {done:8.1f} s"
              f"  {n / done:>10,.0f} records/s   {done / raw:.2f}x raw")
        print(f"      ready after {ready:.1f} s; consumer lag 0 at {caught_up:.1f} s; outbox empty at {done:.1f} s")
        print(f"      service: {cpu / done:.0%} of one core; {describe_batches({}, batches)}")
        print(f"      {memberships:,} memberships; {published_events:,} membership events published "
              f"(change log: {changes.get('added', 0):,} added, {changes.get('removed', 0):,} removed)"
              + (f"; {sum(dead.values()):,} DEAD-LETTERED" if sum(dead.values()) else ""))
        print(f"      against the rule recomputed from scratch over the projection: {missing:,} memberships MISSING, "
              f"{extra:,} extra" if missing or extra else
              "      every membership the rule implies, recomputed from scratch over the projection, is there")
        print(f"      the caseload query (store.caseload_page) on these tables, a {caseload_size}-student caseload, SQL "
              f"alone: {query_ms:.1f} ms median as left ({'after' if analyzed else 'before'} autovacuum's first "
              f"ANALYZE), {query_analyzed_ms:.1f} ms after an ANALYZE")
        if scale != 1.0:
            print(f"      target < 300 s at scale 1.0; linear extrapolation from this scale: {done / scale:,.0f} s")
        else:
            print("      target < 300 s")
    finally:
        if service is not None:
            service.stop()
        if not keep:
            await run.drop("roster", "caseload")


# ---------------------------------------------------------------------------- the seeded district


def _id() -> uuid.UUID:
    return uuid.uuid4()


class District:
    """A small district where every teacher has an email, and the roster changes to replay.

    Teacher i teaches homeroom H_i and sections X_i, Y_i. Student j belongs to teacher j % T:
    four in five are grade 07 in section X (section caseload) and toggle an enrollment in
    section Y; one in five is grade 05 in homeroom H and section X and flips 05 <-> 06 (the
    caseload moves from the homeroom to the section and back). Plus the query teacher: 5
    sections of 30 grade-09 students."""

    def __init__(self, district_id: str, teachers: int = 100, students: int = 10_000) -> None:
        self.district_id = district_id
        self.school = "09X001"
        self.teachers = [(_id(), f"T{i:04d}", f"t{i:04d}.teacher@bench.example.org") for i in range(teachers)]
        self.classes = [{kind: (_id(), f"{kind}{i:04d}") for kind in ("H", "X", "Y")} for i in range(teachers)]
        self.students = [(_id(), f"S{j:08d}") for j in range(students)]
        self.grade = ["05" if j % 5 == 0 else "07" for j in range(students)]
        self.in_y = [False] * students
        self.query_teacher = (_id(), "Q0001", QUERY_TEACHER)
        self.query_classes = [(_id(), f"Q{k}") for k in range(5)]
        self.query_students = [(_id(), f"QS{j:06d}") for j in range(150)]
        self.k = 0

    @property
    def expected_memberships(self) -> int:
        return len(self.students) + len(self.query_students)

    def _e(self, cls, **fields) -> Event:
        return cls(district_id=self.district_id, producer=SOURCE, **fields)

    def _staff(self, staff_id, source_id, email) -> Event:
        return self._e(StaffUpserted, staff_id=staff_id, source_id=source_id, role="teacher", given_name="Bench",
                       family_name=source_id, email=email, identifier=source_id, school_ids=[self.school],
                       matched=True)

    def _class(self, class_id, source_id, homeroom: bool) -> Event:
        return self._e(ClassUpserted, class_id=class_id, source_id=source_id, school_id=self.school,
                       class_type="homeroom" if homeroom else "scheduled", title=f"Class {source_id}",
                       class_code=None if homeroom else f"{source_id}-01", grades=["05", "06", "07", "09"],
                       periods=[] if homeroom else ["1"])

    def _enrol(self, cls, person, klass, role: str, **extra) -> Event:
        return self._e(cls, person_id=person[0], role=role, class_id=klass[0], class_source_id=klass[1],
                       user_source_id=person[1], school_id=self.school,
                       **({"primary": role == "teacher"} if cls is EnrollmentAdded else {}), **extra)

    def _student(self, cls, student, grade: str, **extra) -> Event:
        return self._e(cls, student_id=student[0], source_id=student[1], school_id=self.school, grade=grade,
                       given_name="Given", family_name=f"Family{student[1]}", **extra)

    def seed(self) -> tuple[list[Event], list[Event]]:
        events: list[Event] = []
        for (staff_id, source, email), classes in zip(self.teachers, self.classes, strict=True):
            events.append(self._staff(staff_id, source, email))
            for kind, klass in classes.items():
                events.append(self._class(*klass, homeroom=kind == "H"))
                events.append(self._enrol(EnrollmentAdded, (staff_id, source), klass, "teacher"))
        for j, student in enumerate(self.students):
            events.append(self._student(StudentEnrolled, student, self.grade[j]))
            classes = self.classes[j % len(self.teachers)]
            events.append(self._enrol(EnrollmentAdded, student, classes["X"], "student"))
            if self.grade[j] == "05":
                events.append(self._enrol(EnrollmentAdded, student, classes["H"], "student"))
        events.append(self._staff(*self.query_teacher))
        for klass in self.query_classes:
            events.append(self._class(*klass, homeroom=False))
            events.append(self._enrol(EnrollmentAdded, self.query_teacher[:2], klass, "teacher"))
        for j, student in enumerate(self.query_students):
            events.append(self._student(StudentEnrolled, student, "09"))
            events.append(self._enrol(EnrollmentAdded, student, self.query_classes[j % 5], "student"))
        return ([e for e in events if not isinstance(e, EnrollmentAdded)],
                [e for e in events if isinstance(e, EnrollmentAdded)])

    def next_change(self) -> tuple[Event, tuple[str, str, str]]:
        """The next roster change, and the membership event it must cause: (student_id,
        added|removed, source_ref)."""
        j = self.k % len(self.students)
        self.k += 1
        student = self.students[j]
        classes = self.classes[j % len(self.teachers)]
        correlation = f"bench-{self.k}"
        if j % 5 == 0:
            self.grade[j] = "06" if self.grade[j] == "05" else "05"
            event = self._student(StudentUpdated, student, self.grade[j], changed=["grade"], correlation_id=correlation)
            target = classes["X"] if self.grade[j] == "06" else classes["H"]
            return event, (str(student[0]), "added", str(target[0]))
        self.in_y[j] = not self.in_y[j]
        cls = EnrollmentAdded if self.in_y[j] else EnrollmentRemoved
        event = self._enrol(cls, student, classes["Y"], "student", correlation_id=correlation)
        return event, (str(student[0]), "added" if self.in_y[j] else "removed", str(classes["Y"][0]))


async def produce_all(run: Run, events: list[Event]) -> None:
    producer = producer_for(run.kafka)
    await producer.start()
    try:
        futures = []
        for e in events:
            m = message_for(e, source=SOURCE, kafka=run.kafka)
            futures.append(await producer.send(m.topic, m.payload, key=m.key,
                                               headers=[(k, v.encode()) for k, v in m.headers]))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def settle(service: CaseloadService, run: Run, expected: int | None = None, timeout: float = 600) -> int:
    """Wait until the service has consumed everything and published what it caused (and,
    when given, holds `expected` memberships); return the memberships it holds."""
    async with Progress(run) as progress:
        deadline = time.monotonic() + timeout
        settled_since = None
        while True:
            service.check_alive()
            memberships = await progress.memberships()
            if await progress.settled():
                if expected is None or memberships == expected:
                    return memberships
                settled_since = settled_since or time.monotonic()
                if time.monotonic() - settled_since > 10:
                    return memberships  # nothing left to do, and not what the rule says
            else:
                settled_since = None
            if time.monotonic() > deadline:
                raise RuntimeError(f"not settled after {timeout:.0f} s: {memberships:,} memberships, "
                                   f"lag {await progress.lag():,}, outbox {await progress.outbox():,}")
            await asyncio.sleep(0.25)


async def seed(service: CaseloadService, run: Run, district: District, analyze: bool = True) -> None:
    """Seed the district: staff, classes and students first, then (once the service has
    them) the enrollments. All at once would race: see missing_memberships."""
    ready = await service.ready()
    started = time.perf_counter()
    people, enrollments = district.seed()
    await produce_all(run, people)
    await settle(service, run)
    await produce_all(run, enrollments)
    held = await settle(service, run, district.expected_memberships)
    print(f"  seeded district: {len(people) + len(enrollments):,} roster events -> {held:,} memberships in "
          f"{time.perf_counter() - started:.1f} s (service ready after {ready:.1f} s)")
    if held != district.expected_memberships:
        raise RuntimeError(f"the seeded district has {held:,} memberships, not {district.expected_memberships:,}")
    if analyze:
        # A service in steady state has had its tables analyzed by autovacuum; freshly loaded
        # ones have no statistics for a minute or so, and the planner picks nested loops
        # over whole tables (see --no-analyze).
        conn = await asyncpg.connect(run.dsn("caseload"))
        try:
            await conn.execute("ANALYZE")
        finally:
            await conn.close()


# ---------------------------------------------------------------------------- 2. latency


async def _reader(kafka_servers: str, topic: str, partitions: int) -> AIOKafkaConsumer:
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_servers, enable_auto_commit=False, fetch_max_wait_ms=100)
    await consumer.start()
    parts = [TopicPartition(topic, p) for p in range(partitions)]
    consumer.assign(parts)
    await consumer.seek_to_end(*parts)
    for tp in parts:
        await consumer.position(tp)  # resolve the end now, before anything is produced
    return consumer


async def drive(run: Run, make, rate: float, seconds: float) -> tuple[int, float]:
    """Produce make() events at `rate` per second for `seconds`; return (sent, seconds taken)."""
    producer = producer_for(run.kafka)
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


@dataclass
class Latencies:
    published: list[float]
    seen: list[float]

    def line(self, label: str, values: list[float], base: float | None = None) -> str:
        p50, p95, p99 = pct(values, 50), pct(values, 95), pct(values, 99)
        text = (f"  {label:44s} p50 {p50 * 1000:7.1f}  p95 {p95 * 1000:7.1f}  p99 {p99 * 1000:7.1f}  "
                f"max {max(values, default=float('nan')) * 1000:7.1f} ms")
        return text + (f"   p99 {p99 / base:.1f}x" if base else "")


async def baseline_round_trip(run: Run, rate: float, seconds: float) -> tuple[list[float], int, float]:
    """The same events at the same rate through Kafka alone: produced to a bare topic,
    read back by a consumer in this process."""
    topic = run.topic("bench.roundtrip.v1")
    admin = AIOKafkaAdminClient(bootstrap_servers=run.kafka_servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 12, 1)])
    finally:
        await admin.close()
    await asyncio.sleep(1.0)
    consumer = await _reader(run.kafka_servers, topic, 12)
    district = District("bench-baseline")
    sent_at: dict[bytes, float] = {}
    seen: list[float] = []
    stop = asyncio.Event()

    def make():
        event, _ = district.next_change()
        m = message_for(event, source=SOURCE, kafka=run.kafka)
        ce_id = str(event.event_id).encode()
        sent_at[ce_id] = time.time()
        return topic, m.key, m.payload, [(k, v.encode()) for k, v in m.headers]

    async def read():
        while not (stop.is_set() and not sent_at):
            batch = await consumer.getmany(timeout_ms=100)
            now = time.time()
            for recs in batch.values():
                for r in recs:
                    ce_id = dict(r.headers)["ce_id"]
                    t = sent_at.pop(ce_id, None)
                    if t is not None:
                        seen.append(now - t)

    reader = asyncio.create_task(read())
    try:
        sent, took = await drive(run, make, rate, seconds)
        stop.set()
        await asyncio.wait_for(reader, 30)
    finally:
        reader.cancel()
        await consumer.stop()
    return seen, sent, took


async def latency(run: Run, service: CaseloadService, district: District, rate: float, seconds: float) -> None:
    base, base_sent, base_took = await baseline_round_trip(run, rate, seconds)
    consumer = await _reader(run.kafka_servers, run.topic(CASELOAD_MEMBERSHIPS.name), CASELOAD_MEMBERSHIPS.partitions)
    pending: dict[tuple[str, str, str], deque] = defaultdict(deque)
    waiting = 0
    lat = Latencies([], [])
    other = 0
    own_correlation = 0
    stop = asyncio.Event()

    def make():
        nonlocal waiting
        event, expect = district.next_change()
        m = message_for(event, source=SOURCE, kafka=run.kafka)
        pending[expect].append((time.time(), event.correlation_id))
        waiting += 1
        return m.topic, m.key, m.payload, [(k, v.encode()) for k, v in m.headers]

    async def read():
        nonlocal waiting, other, own_correlation
        while not (stop.is_set() and waiting == 0):
            batch = await consumer.getmany(timeout_ms=100)
            now = time.time()
            for recs in batch.values():
                for r in recs:
                    body = json.loads(r.value)
                    change = "added" if body["event_type"].endswith("added.v1") else "removed"
                    queue = pending.get((body["student_id"], change, body["source_ref"]))
                    if not queue:
                        other += 1
                        continue
                    t, correlation = queue.popleft()
                    waiting -= 1
                    own_correlation += body.get("correlation_id") == correlation
                    lat.published.append(r.timestamp / 1000 - t)
                    lat.seen.append(now - t)

    reader = asyncio.create_task(read())
    try:
        cpu_before, metrics_before = service.cpu_seconds(), await service.batches()
        sent, took = await drive(run, make, rate, seconds)
        cpu, batches = service.cpu_seconds() - cpu_before, await service.batches()
        stop.set()
        try:
            await asyncio.wait_for(reader, 60)
        except TimeoutError:
            pass
    finally:
        reader.cancel()
        await consumer.stop()
    matched = len(lat.published)
    print(f"  input: {sent:,} roster changes in {took:.1f} s = {sent / took:,.0f}/s (target rate {rate:,.0f}/s); "
          f"baseline {base_sent / base_took:,.0f}/s")
    print(lat.line("raw baseline: produce -> consume, Kafka alone", base))
    print(lat.line("roster event -> membership event published", lat.published))
    print(lat.line("roster event -> membership event read back", lat.seen, pct(base, 99)))
    print(f"      {matched:,} of {sent:,} changes matched to their membership event"
          + (f", {sent - matched:,} NOT SEEN within 60 s" if matched < sent else "")
          + f"; {other:,} other membership events (the removals of grade flips); "
          f"{own_correlation / max(matched, 1):.1%} carry their own cause's correlation_id")
    print(f"      service during the load: {cpu / took:.0%} of one core; {describe_batches(metrics_before, batches)}")
    print(f"      target p99 < 1000 ms (to publish): {'met' if pct(lat.published, 99) < 1 else 'NOT met'}")


# ---------------------------------------------------------------------------- 3. query


async def hammer(call, seconds: float, cpu, concurrency: int = CONCURRENCY) -> tuple[list[float], int, float, float]:
    """`concurrency` workers calling `call(worker)` back to back for `seconds` (after a 1 s
    warm-up); return the latencies, the failures, the measured seconds and the CPU seconds
    `cpu()` (the service's) counted over them."""
    deadline = time.perf_counter() + 1.0
    latencies: list[float] = []
    failures = 0
    measuring = False

    async def worker(i: int):
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
    return latencies, failures, time.perf_counter() - started, cpu() - cpu_before


class Http1:
    """One bare HTTP/1.1 keep-alive connection. The load generator shares the 2 cores with
    the service: httpx spends more CPU per request than the route being measured, this
    spends next to none."""

    def __init__(self, port: int, headers: dict[str, str]) -> None:
        self.port = port
        self.head = f"Host: 127.0.0.1:{port}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())

    async def open(self) -> Http1:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        return self

    async def get(self, path: str) -> tuple[int, bytes]:
        self.writer.write(f"GET {path} HTTP/1.1\r\n{self.head}\r\n".encode())
        head = await self.reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return int(head[9:12]), await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


async def query(run: Run, service: CaseloadService, district: District, seconds: float) -> None:
    token = mint(SECRET, email=QUERY_TEACHER, district_id=district.district_id, schools=[],
                 roles=["caseload_viewer"])
    conns = [await Http1(service.port, {"Authorization": f"Bearer {token}"}).open() for _ in range(CONCURRENCY)]
    rows = []
    try:
        status, body = await conns[0].get("/v1/caseloads/me?limit=500")
        if status != 200:
            raise RuntimeError(f"GET /v1/caseloads/me answered {status}: {body[:300]!r}")
        items = len(json.loads(body)["items"])
        if items != len(district.query_students):
            print(f"  WARNING: the query teacher's caseload has {items} students, not {len(district.query_students)}")

        async def healthz(i: int) -> bool:
            return (await conns[i].get("/healthz"))[0] == 200

        async def one_page(i: int) -> bool:
            status, body = await conns[i].get("/v1/caseloads/me?limit=500")
            return status == 200 and len(json.loads(body)["items"]) == items

        async def paged(i: int) -> bool:
            after, got = None, 0
            while True:
                status, body = await conns[i].get("/v1/caseloads/me?limit=100" + (f"&after={after}" if after else ""))
                if status != 200:
                    return False
                page = json.loads(body)
                got += len(page["items"])
                if not (after := page["next_after"]):
                    return got == items

        rows.append(("raw baseline: GET /healthz", *await hammer(healthz, seconds, service.cpu_seconds)))
        rows.append(("GET /v1/caseloads/me?limit=500 (1 page)", *await hammer(one_page, seconds, service.cpu_seconds)))
        rows.append(("same, paged limit=100/after (2 requests)", *await hammer(paged, seconds, service.cpu_seconds)))
    finally:
        for conn in conns:
            conn.close()

    pool = await db.create_pool(run.dsn("caseload"), min_size=10, max_size=10)
    try:
        async def sql(_: int) -> bool:
            async with pool.acquire() as conn:
                found = await caseload_store.caseload_page(conn, district_id=district.district_id,
                                                           owner_email=QUERY_TEACHER, school_id=None, grade=None,
                                                           reason=None, after=None, limit=500, schools=None)
            return len(json.loads(found)["items"]) == items

        rows.append(("raw baseline: its SQL over asyncpg (pool 10)", *await hammer(sql, seconds, service.cpu_seconds)))
    finally:
        await pool.close()

    print(f"  a teacher with {items} students, {CONCURRENCY} concurrent clients, {seconds:.0f} s each:")
    floor = statistics.median(rows[0][1]) if rows[0][1] else None
    for label, lats, failures, took, cpu in rows:
        ratio = f"  p50 {statistics.median(lats) / floor:5.1f}x healthz" if floor and lats else ""
        service_cpu = f"  service CPU {cpu / max(len(lats), 1) * 1000:5.2f} ms/call" if "SQL" not in label else ""
        print(f"  {label:46s} p50 {pct(lats, 50) * 1000:7.1f}  p99 {pct(lats, 99) * 1000:7.1f} ms  "
              f"{len(lats) / took:>7,.0f} calls/s" + ratio + service_cpu + (f"  {failures} FAILED" if failures else ""))
    p99 = pct(rows[1][1], 99)
    print(f"      target p99 < 50 ms (1 page): {'met' if p99 < 0.05 else 'NOT met'}")


# ---------------------------------------------------------------------------- main


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("materialize", "latency", "query"))
    parser.add_argument("--scale", type=float, default=1.0, help="share of New York City for materialize")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the latency load")
    parser.add_argument("--rate", type=float, default=1000.0, help="roster changes per second (latency)")
    parser.add_argument("--query-seconds", type=float, default=20.0, help="length of each query phase")
    parser.add_argument("--no-analyze", action="store_true",
                        help="latency/query: skip the ANALYZE after seeding (fresh tables, no planner statistics)")
    parser.add_argument("--keep", action="store_true", help="keep this run's topics and databases")
    args = parser.parse_args()
    parts = [args.only] if args.only else ["materialize", "latency", "query"]
    with ExitStack() as stack:
        kafka_servers, pg = backends(stack)
        if "materialize" in parts:
            await materialize(kafka_servers, pg, args.scale, args.keep)
        if "latency" in parts or "query" in parts:
            run = Run.new(kafka_servers, pg)
            district = District("benchdist")
            print(f"caseload latency and query bench, {os.cpu_count()} cores, prefix {run.prefix}")
            service = None
            try:
                await run.prepare("caseload")
                service = CaseloadService(run)
                await seed(service, run, district, analyze=not args.no_analyze)
                if "latency" in parts:
                    await latency(run, service, district, args.rate, args.seconds)
                if "query" in parts:
                    async with Progress(run) as progress:
                        while not await progress.settled():
                            await asyncio.sleep(0.5)
                    await query(run, service, district, args.query_seconds)
            finally:
                if service is not None:
                    service.stop()
                if not args.keep:
                    await run.drop("caseload")


if __name__ == "__main__":
    asyncio.run(main())
