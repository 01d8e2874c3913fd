"""The cases service: trigger throughput and latency to CaseOpened, and the dashboard and
search under load, each beside a raw baseline measured in the same run.

    python bench/cases.py [--only throughput|dashboard] [--seconds 60] [--rate 2000]
                          [--students 200000] [--join-share 0.1] [--kinds mixed|form]
                          [--drain 300] [--cases 500000] [--query-seconds 15]
                          [--concurrency 20] [--keep]

Each part runs the real service (python -m services.cases, every guarantee on: inbox,
per-student locks, outbox relay; default consumer batch size) on the real broker and
database, under its own topic prefix and database (dropped at the end unless --keep).

1. throughput: one district with every dictionary entry enabled (PUT /v1/dictionary/<kind>
   as a district admin) and --students students (default 200,000) seeded through
   roster.students.v1 (StudentEnrolled); the bench waits until the service's projection
   holds them all. Then --rate triggers per second (default 2,000) for --seconds (default
   60) on cases.triggers.v1 (encoded before the load), each for a distinct student with no
   case (opens one) except a --join-share (default 10%) for students already sent a trigger
   (joins the open case, publishes nothing). --kinds mixed (default): the seven trigger
   types interleaved, as they arrive from several systems; --kinds form: FormSubmitted
   only. Each CaseOpened on cases.v1 is matched to its trigger by source_event_id (its
   correlation_id checked) and timed from just before the trigger's send to (a) the
   CaseOpened record's Kafka timestamp (the relay producer's create time, ~ its publish)
   and (b) the moment a reader in this process sees it. Prints the achieved input rate,
   the processed rate (triggers handled / time from the first send until the service's
   consumer group has committed them all, or until --drain seconds after the load), the
   consumer lag, the service's own batch figures (/metrics), p50/p95/p99/max and the p99
   per 10 s of sending.
   Baseline: the same kind of trigger records, same rate, produced to a bare 12-partition
   topic and read back by a consumer in this process (Kafka alone, (b) only).
   Targets: 2,000 triggers/s sustained, p99 < 500 ms (trigger to CaseOpened published).
2. dashboard: --cases cases (default 500,000; one student each; 80% open) bulk-loaded with
   INSERT ... SELECT generate_series straight into the service's students, cases and tasks
   tables (1,800 schools, 3 teams per school with a leader each, 8 case managers per school,
   opened over the last 52 weeks; one task per case, 40% open, 10% of all overdue), then
   VACUUM ANALYZE. --concurrency (default 20) clients call, for --query-seconds each:
   GET /v1/dashboard as a district admin (the whole district) and as a school-scoped caller
   (schools claim of one school, manage_cases, no district_admin); GET /v1/cases by
   case_number, by person (family name prefix) and by team_leader (district admin), with
   values rotating over samples from the data. Prints p50/p99 and requests/s per query.
   Then each SQL statement those requests run (recorded from services.cases.store) is run
   10 times on one connection, as the service's asyncpg statement cache does (runs 1-5 may
   get custom plans, later ones a generic plan), and EXPLAIN (ANALYZE, BUFFERS) is printed
   for the slow ones.
   Baseline: GET /healthz with the same concurrency in the same run.
   Target: dashboard p99 < 100 ms.

This machine is noisy (and the load generator shares its cores): compare ratios, repeat, and
read the medians; nothing here asserts a time.

Backends: KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL if set, else the real Apache Kafka from
deploy/local/kafka.sh and an embedded PostgreSQL in .caseflow/bench-cases-postgres (its own
data folder: EmbeddedPostgres.start() stops any server running on the same folder, so two
benches must not share one).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from urllib.parse import urlencode

import asyncpg
import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from backends import backends as shared_backends, dsn_for  # noqa: E402

from contracts.cases import (  # noqa: E402
    FileSubmitted,
    FormSubmitted,
    InterventionGroupMemberAdded,
    PlanCreated,
    PlanReviewConducted,
    StudentMeetingScheduled,
    TaskAssigned,
)
from contracts.roster import StudentEnrolled  # noqa: E402
from contracts.topics import CASE_TRIGGERS, CASES, ROSTER_STUDENTS  # noqa: E402
from services.cases import store as cases_store  # noqa: E402
from services.cases.app import definition as cases_definition  # noqa: E402
from services.kit import db  # noqa: E402
from services.kit.auth import mint  # noqa: E402
from services.kit.outbox import message_for, producer_for  # noqa: E402
from services.kit.settings import KafkaSettings  # noqa: E402
from services.kit.topics import provision  # noqa: E402
from services.roster.domain import student_id_for  # noqa: E402

SECRET = "bench-secret-" + "x" * 32
SOURCE = "bench.cases"
DISTRICT = "benchdist"
SCHOOLS = 1_800
KINDS = ("submit_form", "create_plan", "assign_task", "schedule_meeting", "conduct_plan_review", "submit_file")
ADMIN_EMAIL = "admin@bench.example.org"
TRIGGERS_CONSUMER = next(s.consumer for s in cases_definition().subscriptions if s.topic is CASE_TRIGGERS)
ROSTER_GROUP = next(s.consumer for s in cases_definition().subscriptions if s.topic is ROSTER_STUDENTS)


# ---------------------------------------------------------------------------- backends and the service


def backends(stack: ExitStack) -> tuple[str, str]:
    return shared_backends(stack, "bench-cases-postgres",
                           {"shared_buffers": "1GB", "max_wal_size": "8GB", "maintenance_work_mem": "1GB"})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


@dataclass
class Run:
    """One isolated system: a topic prefix and the database named after it (as in
    bench/caseload.py)."""

    kafka_servers: str
    pg: str
    prefix: str

    @classmethod
    def new(cls, kafka_servers: str, pg: str) -> Run:
        return cls(kafka_servers, pg, f"bk{uuid.uuid4().hex[:6]}.")

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

    async def drop(self, *services: str) -> None:
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


def new_run(kafka_servers: str, pg: str) -> Run:
    return Run.new(kafka_servers, pg)


async def end_offsets(kafka_servers: str, topic: str, partitions: int) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_servers, enable_auto_commit=False)
    await consumer.start()
    try:
        return sum((await consumer.end_offsets([TopicPartition(topic, p) for p in range(partitions)])).values())
    finally:
        await consumer.stop()


async def tail_reader(kafka_servers: str, topic: str, partitions: int) -> AIOKafkaConsumer:
    """A consumer positioned at the topic's end now, before anything is produced."""
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_servers, enable_auto_commit=False, fetch_max_wait_ms=100)
    await consumer.start()
    parts = [TopicPartition(topic, p) for p in range(partitions)]
    consumer.assign(parts)
    await consumer.seek_to_end(*parts)
    for tp in parts:
        await consumer.position(tp)
    return consumer


async def drive(run: Run, make, rate: float, seconds: float) -> tuple[int, float]:
    """Produce make() records at `rate` per second for `seconds`; return (sent, seconds taken)."""
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


class CasesService:
    """python -m services.cases with the env the tests and benches use (default batch size)."""

    def __init__(self, run: Run) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("CASEFLOW_")}
        env.update(KAFKA_BOOTSTRAP_SERVERS=run.kafka_servers, CASEFLOW_TOPIC_PREFIX=run.prefix,
                   CASEFLOW_JWT_SECRET=SECRET, CASEFLOW_CASES_DATABASE_URL=run.dsn("cases"),
                   CASEFLOW_CASES_HTTP_PORT=str(self.port), CASEFLOW_LOG_LEVEL="WARNING", PYTHONPATH=str(ROOT))
        self.log_path = ROOT / ".caseflow" / "bench-logs" / f"cases-{run.prefix}log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")  # noqa: SIM115 - handed to the child
        self.started = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, "-m", "services.cases"], cwd=ROOT, env=env,
                                     stdout=log, stderr=subprocess.STDOUT)

    async def ready(self, timeout: float = 120.0) -> float:
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
        raise RuntimeError(f"cases not ready after {timeout:.0f}s; see {self.log_path}")

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"cases exited with {self.proc.returncode}:\n{tail}")

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def bearer(email: str, roles: list[str], schools: list[str]) -> dict[str, str]:
    return {"Authorization": "Bearer " + mint(SECRET, email=email, district_id=DISTRICT, schools=schools, roles=roles)}


ADMIN = bearer(ADMIN_EMAIL, ["district_admin", "manage_cases"], [])


async def batch_stats(service: CasesService, topic: str) -> str:
    """The service's own account of its trigger batches, from /metrics."""
    async with httpx.AsyncClient() as client:
        text = (await client.get(service.url + "/metrics", timeout=10)).text
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or f'topic="{topic}"' not in line and not line.startswith("caseflow_failures_total"):
            continue
        name, _, value = line.rpartition(" ")
        values[name.split("{")[0] + ("{" + name.split("{")[1] if "stage" in name else "")] = float(value)
    batches = values.get("caseflow_batch_handle_seconds_count", 0)
    seconds = values.get("caseflow_batch_handle_seconds_sum", 0)
    consumed = values.get("caseflow_events_consumed_total", 0)
    failures = {k.split('"')[1]: int(v) for k, v in values.items() if k.startswith("caseflow_failures_total") and v}
    if not batches:
        return "no trigger batches in /metrics"
    return (f"{int(batches):,} trigger batches, {consumed / batches:,.0f} records and "
            f"{seconds / batches * 1000:,.0f} ms each on average (decode to commit), busy {seconds:,.1f} s"
            + (f"; transient failures retried: {failures}" if failures else ""))


class Lag:
    """A consumer group's lag on one topic (committed offsets against end offsets)."""

    def __init__(self, run: Run, group: str, topic) -> None:
        self.group = group
        self.parts = [TopicPartition(run.topic(topic.name), p) for p in range(topic.partitions)]
        self.admin = AIOKafkaAdminClient(bootstrap_servers=run.kafka_servers)
        self.offsets = AIOKafkaConsumer(bootstrap_servers=run.kafka_servers, enable_auto_commit=False)

    async def __aenter__(self) -> Lag:
        await self.admin.start()
        await self.offsets.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.offsets.stop()
        await self.admin.close()

    async def __call__(self) -> int:
        ends = await self.offsets.end_offsets(self.parts)
        committed = await self.admin.list_consumer_group_offsets(self.group, partitions=self.parts)
        behind = 0
        for tp in self.parts:
            at = committed.get(tp)
            behind += max(ends[tp] - (at.offset if at is not None and at.offset >= 0 else 0), 0)
        return behind


# ---------------------------------------------------------------------------- 1. throughput


def source_id(j: int) -> str:
    return f"S{j:07d}"


def school_of(j: int) -> str:
    return f"K{j % SCHOOLS:04d}"


GIVEN = ("Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Gus", "Hana", "Ivan", "Jade", "Kofi", "Lena", "Mateo", "Nia",
         "Omar", "Priya", "Quinn", "Rosa", "Sam", "Tariq")


def family_of(j: int) -> str:
    """Each family name is shared by ~25 students of 500,000 (the same formula as the bulk load)."""
    return f"Family{(j * 7919) % 20_000:05d}"


async def seed_students(run: Run, service: CasesService, n: int) -> None:
    """StudentEnrolled for n students on roster.students.v1; wait until the projection has them."""
    started = time.perf_counter()
    producer = producer_for(run.kafka)
    await producer.start()
    try:
        pending = []
        for j in range(n):
            sid = source_id(j)
            e = StudentEnrolled(district_id=DISTRICT, producer=SOURCE, student_id=student_id_for(DISTRICT, sid),
                                source_id=sid, school_id=school_of(j), grade=f"{j % 12 + 1:02d}",
                                given_name=GIVEN[j % len(GIVEN)], family_name=family_of(j))
            m = message_for(e, source=SOURCE, kafka=run.kafka)
            pending.append(await producer.send(m.topic, m.payload, key=m.key,
                                               headers=[(k, v.encode()) for k, v in m.headers]))
            if len(pending) >= 10_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    produced = time.perf_counter() - started
    conn = await asyncpg.connect(run.dsn("cases"))
    try:
        async with Lag(run, ROSTER_GROUP, ROSTER_STUDENTS) as lag:
            deadline = time.monotonic() + 1800
            while (have := await conn.fetchval("SELECT count(*) FROM students")) < n or await lag():
                service.check_alive()
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the projection has {have:,} of {n:,} students after 1800 s")
                await asyncio.sleep(0.5)
    finally:
        await conn.close()
    took = time.perf_counter() - started
    print(f"  seeded {n:,} students (StudentEnrolled): produced in {produced:.1f} s, in the service's projection "
          f"after {took:.1f} s ({n / took:,.0f}/s)", flush=True)


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One trigger, encoded before the load (so the load generator only sends)."""

    key: bytes
    payload: bytes
    headers: list[tuple[str, bytes]]
    event_id: str
    correlation_id: str
    opens: bool


class TriggerMix:
    """Triggers for one district: each for a fresh student (opens a case), except join_share
    for a student already sent one (joins the open case). kinds "mixed": the seven trigger
    types interleaved, as they arrive from several systems; "form": FormSubmitted only."""

    def __init__(self, students: int, join_share: float, kinds: str, seed: int = 4) -> None:
        self.rng = random.Random(seed)
        self.fresh = list(range(students))
        self.rng.shuffle(self.fresh)
        self.used: list[int] = []
        self.join_share = join_share
        self.kinds = kinds
        self.k = 0
        self.ran_out = False

    def next(self):
        """(trigger event, opens a case?)."""
        self.k += 1
        opens = bool(self.fresh) and not (self.used and self.rng.random() < self.join_share)
        if opens:
            j = self.fresh.pop()
            self.used.append(j)
        else:
            self.ran_out |= not self.fresh
            j = self.rng.choice(self.used)
        return self.trigger(j, self.k, self.kinds), opens

    def encoded(self, n: int, kafka) -> list[Outgoing]:
        out = []
        for _ in range(n):
            event, opens = self.next()
            m = message_for(event, source=SOURCE, kafka=kafka)
            out.append(Outgoing(m.key, m.payload, [(k, v.encode()) for k, v in m.headers], str(event.event_id),
                                event.correlation_id, opens))
        return out

    @staticmethod
    def trigger(j: int, k: int, kinds: str = "mixed"):
        now = datetime.now(UTC)
        common = dict(district_id=DISTRICT, occurred_at=now, student_source_id=source_id(j),
                      actor_email="counsellor@bench.example.org", correlation_id=f"bench-{k}", producer=SOURCE)
        match k % 7 if kinds == "mixed" else 0:
            case 0:
                return FormSubmitted(**common, form_id=f"f{k}", form_name="Counseling referral")
            case 1:
                return PlanCreated(**common, plan_id=f"p{k}", plan_name="Tier 2 reading")
            case 2:
                return InterventionGroupMemberAdded(**common, group_id=f"g{k % 500}", group_name="Tier 2, period 3")
            case 3:
                return TaskAssigned(**common, task_id=uuid.uuid4(), title="Call home",
                                    assignee_email="counsellor@bench.example.org", due_date=now.date())
            case 4:
                return StudentMeetingScheduled(**common, meeting_id=f"m{k}", title="Attendance meeting",
                                               scheduled_for=now)
            case 5:
                return PlanReviewConducted(**common, plan_id=f"p{k}", review_id=f"r{k}", outcome="continue")
            case _:
                return FileSubmitted(**common, file_id=f"file{k}", file_name="504 plan.pdf")


def latency_line(label: str, values: list[float], base: float | None = None) -> str:
    p50, p95, p99 = pct(values, 50), pct(values, 95), pct(values, 99)
    text = (f"  {label:46s} p50 {p50 * 1000:7.1f}  p95 {p95 * 1000:7.1f}  p99 {p99 * 1000:7.1f}  "
            f"max {max(values, default=float('nan')) * 1000:8.1f} ms")
    return text + (f"   p99 {p99 / base:.1f}x" if base else "")


def sender(topic: str, messages: list[Outgoing], sent_at: dict[str, float]):
    """make() for caseload's drive(): the next pre-encoded trigger, its send time noted."""
    feed = iter(messages)

    def make():
        m = next(feed)
        sent_at[m.event_id] = time.time()
        return topic, m.key, m.payload, m.headers
    return make


async def baseline_round_trip(run: Run, messages: list[Outgoing], rate: float,
                              seconds: float) -> tuple[list[float], int, float]:
    """The same trigger records at the same rate through Kafka alone: produced to a bare
    12-partition topic, read back by a consumer in this process."""
    topic = run.topic("bench.roundtrip.v1")
    admin = AIOKafkaAdminClient(bootstrap_servers=run.kafka_servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, CASE_TRIGGERS.partitions, 1)])
    finally:
        await admin.close()
    await asyncio.sleep(1.0)
    consumer = await tail_reader(run.kafka_servers, topic, CASE_TRIGGERS.partitions)
    sent_at: dict[str, float] = {}
    seen: list[float] = []
    stop = asyncio.Event()

    async def read():
        while not (stop.is_set() and not sent_at):
            batch = await consumer.getmany(timeout_ms=100)
            now = time.time()
            for recs in batch.values():
                for r in recs:
                    t = sent_at.pop(dict(r.headers)["ce_id"].decode(), None)
                    if t is not None:
                        seen.append(now - t)

    reader = asyncio.create_task(read())
    try:
        sent, took = await drive(run, sender(topic, messages, sent_at), rate, seconds)
        stop.set()
        await asyncio.wait_for(reader, 30)
    finally:
        reader.cancel()
        await consumer.stop()
    return seen, sent, took


async def throughput(kafka_servers: str, pg: str, students: int, rate: float, seconds: float, join_share: float,
                     kinds: str, drain: float, keep: bool) -> None:
    run = new_run(kafka_servers, pg)
    print(f"cases throughput bench, {os.cpu_count()} cores, prefix {run.prefix}, trigger kinds {kinds}", flush=True)
    await run.prepare("cases")
    service = None
    try:
        service = CasesService(run)
        ready = await service.ready()
        async with httpx.AsyncClient(base_url=service.url, headers=ADMIN, timeout=30) as client:
            for kind in KINDS:
                (await client.put(f"/v1/dictionary/{kind}", json={"enabled": True})).raise_for_status()
        print(f"  service ready after {ready:.1f} s; dictionary: all {len(KINDS)} entries enabled", flush=True)
        await seed_students(run, service, students)

        total = int(rate * seconds) + 1000
        if total * (1 - join_share) > students:
            print(f"  WARNING: ~{int(total * (1 - join_share)):,} fresh students needed, {students:,} seeded: the "
                  f"rest of the triggers join open cases (use --students)")
        base_messages = TriggerMix(students, join_share, kinds, seed=7).encoded(total, run.kafka)
        base, base_sent, base_took = await baseline_round_trip(run, base_messages, rate, seconds)
        del base_messages
        mix = TriggerMix(students, join_share, kinds)
        messages = mix.encoded(total, run.kafka)

        consumer = await tail_reader(kafka_servers, run.topic(CASES.name), CASES.partitions)
        by_id = {m.event_id: m for m in messages}
        sent_at: dict[str, float] = {}
        matched: set[str] = set()
        published: list[tuple[float, float]] = []  # (sent at, latency to the record timestamp)
        seen: list[float] = []
        unexpected = wrong_correlation = 0
        stop = asyncio.Event()
        lag_samples: list[int] = []

        async def read():
            nonlocal unexpected, wrong_correlation
            while True:
                batch = await consumer.getmany(timeout_ms=100)
                now = time.time()
                for recs in batch.values():
                    for r in recs:
                        body = json.loads(r.value)
                        if body.get("event_type") != "cases.case_opened.v1":
                            continue
                        trigger_id = body["source_event_id"]
                        m = by_id.get(trigger_id)
                        if m is None or not m.opens or trigger_id in matched:
                            unexpected += 1  # a join that opened a case, or a second CaseOpened
                            continue
                        matched.add(trigger_id)
                        t = sent_at[trigger_id]
                        wrong_correlation += body.get("correlation_id") != m.correlation_id
                        published.append((t, r.timestamp / 1000 - t))
                        seen.append(now - t)

        async def watch_lag(lag: Lag):
            while not stop.is_set():
                lag_samples.append(await lag())
                await asyncio.sleep(1.0)

        async with Lag(run, run.topic(TRIGGERS_CONSUMER), CASE_TRIGGERS) as lag:
            reader = asyncio.create_task(read())
            watcher = asyncio.create_task(watch_lag(lag))
            try:
                started_wall = time.time()
                sent, took = await drive(run, sender(run.topic(CASE_TRIGGERS.name), messages, sent_at), rate,
                                         seconds)
                stop.set()
                await watcher
                lag_at_end = await lag()
                caught_up = None
                while time.time() - started_wall < took + drain:  # until every trigger is committed
                    service.check_alive()
                    if not await lag():
                        caught_up = time.time() - started_wall
                        break
                    await asyncio.sleep(0.25)
                opening = sum(1 for m in messages[:sent] if m.opens)
                deadline = time.time() + (15 if caught_up else 2)
                while len(matched) < opening and time.time() < deadline:  # the last CaseOpened published
                    await asyncio.sleep(0.1)
                stopped_at = time.time() - started_wall
            finally:
                reader.cancel()
                watcher.cancel()
                await consumer.stop()

        conn = await asyncpg.connect(run.dsn("cases"))
        try:
            counts = await conn.fetchrow(
                """SELECT (SELECT count(*) FROM cases) AS cases, (SELECT count(*) FROM timeline) AS timeline,
                          (SELECT count(*) FROM waiting_triggers) AS waiting, (SELECT count(*) FROM outbox) AS outbox,
                          (SELECT count(*) FROM inbox WHERE consumer = $1) AS handled""", TRIGGERS_CONSUMER)
        finally:
            await conn.close()
        dead = await end_offsets(kafka_servers, run.topic(CASE_TRIGGERS.dead_letter), CASE_TRIGGERS.partitions)
        batches = await batch_stats(service, run.topic(CASE_TRIGGERS.name))

        handled = counts["handled"]
        lat_pub = [v for _, v in published]
        window = caught_up or stopped_at
        processed_rate = handled / window
        print(f"  input: {sent:,} triggers in {took:.1f} s = {sent / took:,.0f}/s (target rate {rate:,.0f}/s; "
              f"{opening:,} for students with no case, {sent - opening:,} for students with one); "
              f"baseline {base_sent / base_took:,.0f}/s")
        print(f"  processed: {handled:,} of {sent:,} triggers handled and committed "
              + (f"{caught_up:.1f} s after the first send" if caught_up else
                 f"by {stopped_at:.0f} s after the first send (NOT caught up: gave up after --drain {drain:.0f} s)")
              + f" = {processed_rate:,.0f}/s; consumer lag: median {statistics.median(lag_samples or [0]):,.0f} "
              f"during the load, {lag_at_end:,} at its end")
        print(f"      the service (/metrics): {batches}")
        print(latency_line("raw baseline: produce -> consume, Kafka alone", base))
        print(latency_line("trigger -> CaseOpened published (record ts)", lat_pub))
        print(latency_line("trigger -> CaseOpened read back", seen, pct(base, 99)))
        windows = defaultdict(list)
        for t, v in published:
            windows[int((t - started_wall) // 10)].append(v)
        print("      p99 to publish per 10 s of sending (ms): "
              + ", ".join(f"{pct(v, 99) * 1000:.0f}" for _, v in sorted(windows.items())))
        missing = opening - len(matched)
        print(f"      {len(matched):,} of {opening:,} case-opening triggers matched to their CaseOpened"
              + (f", {missing:,} NOT SEEN by {stopped_at:.0f} s (the percentiles above leave them out)"
                 if missing else "")
              + f"; {unexpected:,} unexpected CaseOpened; {wrong_correlation:,} with another correlation_id; "
              f"database: {counts['cases']:,} cases, {counts['timeline']:,} timeline entries, "
              f"{counts['waiting']:,} waiting triggers, outbox {counts['outbox']:,}"
              + (f"; {dead:,} DEAD-LETTERED" if dead else ""))
        if mix.ran_out:
            print("      (fresh students ran out: later triggers all joined open cases)")
        rate_met = processed_rate >= 0.95 * rate and sent / took >= 0.95 * rate and caught_up
        print(f"      targets: {rate:,.0f}/s sustained: {'met' if rate_met else 'NOT met'}; p99 < 500 ms (to publish): "
              f"{'met' if pct(lat_pub, 99) < 0.5 and not missing else 'NOT met'}", flush=True)
    finally:
        if service is not None:
            service.stop()
        if not keep:
            await run.drop("cases")


# ---------------------------------------------------------------------------- 2. dashboard

LOAD_SQL = [
    # Students: one per case, school j % 1800, family names shared by ~25 students (family_of).
    """INSERT INTO students (student_id, district_id, source_id, school_id, grade, given_name, family_name, status,
                             as_of)
       SELECT md5('s' || j)::uuid, $1, 'S' || lpad(j::text, 7, '0'), 'K' || lpad((j % 1800)::text, 4, '0'),
              lpad((j % 12 + 1)::text, 2, '0'), (ARRAY['Ana','Ben','Chen','Dara','Eli','Fatima','Gus','Hana','Ivan',
              'Jade','Kofi','Lena','Mateo','Nia','Omar','Priya','Quinn','Rosa','Sam','Tariq'])[j % 20 + 1],
              'Family' || lpad(((j::bigint * 7919) % 20000)::text, 5, '0'), 'active', now() - interval '400 days'
       FROM generate_series(0, $2 - 1) AS j""",
    # Cases: 80% open; opened over the last 52 weeks; three teams per school, each with a leader
    # (70% of cases have a team), eight case managers per school (80% have one).
    """INSERT INTO cases (case_id, district_id, case_number, student_id, school_id, status, trigger_kind,
                          source_event_id, opened_at, team_name, team_leader, case_manager, closed_at, closed_by,
                          close_reason)
       SELECT md5('c' || j)::uuid, $1, to_char(opened, 'YY') || '-' || lpad(j::text, greatest(6, length(j::text)), '0'),
              md5('s' || j)::uuid, school, CASE WHEN closed THEN 'closed' ELSE 'open' END,
              (ARRAY['submit_form','create_plan','assign_task','schedule_meeting','conduct_plan_review',
                     'submit_file'])[j % 6 + 1],
              md5('e' || j)::uuid, opened,
              CASE WHEN j % 10 < 7 THEN school || ' team ' || (j / 1800 % 3) END,
              CASE WHEN j % 10 < 7 THEN 'leader' || (j / 1800 % 3) || '.' || lower(school) || '@bench.example.org' END,
              CASE WHEN j % 10 < 8 THEN 'manager' || (j / 1800 % 8) || '.' || lower(school) || '@bench.example.org' END,
              CASE WHEN closed THEN opened + interval '20 days' END,
              CASE WHEN closed THEN 'manager.' || lower(school) || '@bench.example.org' END,
              CASE WHEN closed THEN 'goals met' END
       FROM (SELECT j, 'K' || lpad((j % 1800)::text, 4, '0') AS school, j % 5 = 0 AS closed,
                    now() - ((j::bigint * 7919) % (364 * 24 * 60)) * interval '1 minute' AS opened
             FROM generate_series(0, $2 - 1) AS j) AS g""",
    # Tasks: one per case; 40% open; due from 30 days ago to 89 days ahead (10% of all overdue).
    """INSERT INTO tasks (task_id, district_id, student_id, case_id, title, assignee_email, due_date, status,
                          assigned_by, assigned_at, completed_at, completed_by)
       SELECT md5('t' || j)::uuid, $1, md5('s' || j)::uuid, md5('c' || j)::uuid,
              (ARRAY['Call home','Schedule SST','Review attendance','Check in with teacher'])[j % 4 + 1],
              'manager' || (j / 1800 % 8) || '.k' || lpad((j % 1800)::text, 4, '0') || '@bench.example.org',
              current_date + ((j::bigint * 31) % 120 - 30)::int,
              CASE WHEN j % 5 < 3 THEN 'done' ELSE 'open' END,
              'admin@bench.example.org', now() - ((j::bigint * 7919) % (364 * 24 * 60)) * interval '1 minute',
              CASE WHEN j % 5 < 3 THEN now() - interval '1 day' END,
              CASE WHEN j % 5 < 3 THEN 'manager@bench.example.org' END
       FROM generate_series(0, $2 - 1) AS j""",
    """INSERT INTO case_numbers (district_id, year, last)
       SELECT $1, 2000 + split_part(case_number, '-', 1)::int, max(split_part(case_number, '-', 2)::int)
       FROM cases WHERE district_id = $1 GROUP BY 2""",
]


async def bulk_load(dsn: str, n: int) -> dict:
    conn = await asyncpg.connect(dsn, command_timeout=3600)
    try:
        started = time.perf_counter()
        for sql in LOAD_SQL:
            await conn.execute(sql, DISTRICT, *([n] if "$2" in sql else []))
        loaded = time.perf_counter() - started
        await conn.execute("VACUUM ANALYZE students, cases, tasks")
        facts = await conn.fetchrow(
            """SELECT (SELECT count(*) FROM cases) AS cases, (SELECT count(*) FROM cases WHERE status = 'open') AS open,
                      (SELECT count(*) FROM students) AS students, (SELECT count(*) FROM tasks) AS tasks,
                      (SELECT count(*) FROM tasks WHERE status = 'open' AND due_date < current_date) AS overdue,
                      (SELECT count(DISTINCT school_id) FROM cases) AS schools,
                      (SELECT count(DISTINCT team_leader) FROM cases) AS leaders,
                      (SELECT count(DISTINCT case_manager) FROM cases) AS managers""")
        samples = {
            "case_number": [r[0] for r in await conn.fetch(
                "SELECT case_number FROM cases ORDER BY md5(case_number) LIMIT 500")],
            "person": [r[0] for r in await conn.fetch(
                "SELECT DISTINCT family_name FROM students ORDER BY 1 LIMIT 500")],
            "team_leader": [r[0] for r in await conn.fetch(
                "SELECT DISTINCT team_leader FROM cases WHERE team_leader IS NOT NULL ORDER BY 1 LIMIT 500")],
        }
    finally:
        await conn.close()
    print(f"  loaded {facts['cases']:,} cases ({facts['open']:,} open) for {facts['students']:,} students in "
          f"{facts['schools']:,} schools, {facts['leaders']:,} team leaders, {facts['managers']:,} case managers; "
          f"{facts['tasks']:,} tasks ({facts['overdue']:,} overdue) in {loaded:.1f} s, then VACUUM ANALYZE",
          flush=True)
    return samples


class Recorder:
    """Stands in for an asyncpg connection: records each statement services.cases.store runs."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.statements: list[tuple[str, tuple]] = []

    async def fetch(self, sql, *args):
        self.statements.append((sql, args))
        return await self.conn.fetch(sql, *args)

    async def fetchval(self, sql, *args):
        self.statements.append((sql, args))
        return await self.conn.fetchval(sql, *args)

    async def fetchrow(self, sql, *args):
        self.statements.append((sql, args))
        return await self.conn.fetchrow(sql, *args)


def _first_line(sql: str) -> str:
    return " ".join(sql.split())[:90]


PLAN_DETAIL = ("Filter:", "Index Cond:", "Hash Cond:", "Join Filter:", "Sort Key:", "Sort Method:", "Rows Removed",
               "Execution Time", "Group Key:")


def print_plan(lines: list[str], limit: int = 30) -> None:
    """The plan's nodes and the lines that say why (filters, conditions, sorts), not Buffers."""
    kept = [line for i, line in enumerate(lines)
            if i == 0 or "->" in line or any(d in line for d in PLAN_DETAIL)]
    for line in kept[:limit]:
        print(f"          {line[:200]}")
    if len(kept) > limit:
        print(f"          ... {len(kept) - limit} more plan lines")


async def explain_generic(conn: asyncpg.Connection, stmt, sql: str, args: tuple) -> list[str]:
    """EXPLAIN ANALYZE of the statement's generic plan: PREPARE it in SQL with the same
    parameter types, force the generic plan, EXECUTE it with the same values as literals."""
    types = [await conn.fetchval("SELECT format_type($1::oid, NULL)", p.oid) for p in stmt.get_parameters()]
    literals = [await conn.fetchval(f"SELECT quote_nullable($1::{t})", a) for t, a in zip(types, args, strict=True)]
    await conn.execute(f"PREPARE bench_generic ({', '.join(types)}) AS {sql}")
    try:
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        rows = await conn.fetch("EXPLAIN (ANALYZE, BUFFERS) EXECUTE bench_generic ("
                                + ", ".join(f"{lit}::{t}" for lit, t in zip(literals, types, strict=True)) + ")")
        return [r[0] for r in rows]
    finally:
        await conn.execute("RESET plan_cache_mode")
        await conn.execute("DEALLOCATE bench_generic")


async def explain_statements(dsn: str, school: str, samples: dict, slow_ms: float) -> None:
    """Each statement behind the measured requests, timed as the service runs it (a prepared
    statement run again and again: PostgreSQL may switch to a generic plan after 5 runs),
    with EXPLAIN (ANALYZE, BUFFERS) of the slow ones."""
    conn = await db.connect(dsn)
    try:
        calls = {
            "dashboard (district)": lambda c: cases_store.dashboard(c, district_id=DISTRICT, schools=None,
                                                                    today=date.today()),
            f"dashboard (school {school})": lambda c: cases_store.dashboard(c, district_id=DISTRICT, schools=[school],
                                                                            today=date.today()),
        }
        for what in ("case_number", "person", "team_leader"):
            calls[f"search by {what}"] = lambda c, what=what: cases_store.search(
                c, district_id=DISTRICT, schools=None, status=None, after=None, limit=50,
                **{k: None for k in ("case_number", "person", "school_id", "team_name", "team_leader",
                                     "case_manager") if k != what}, **{what: samples[what][0]})
        print(f"  its SQL, each statement run 10 times on one connection (median of runs 1-5 | 6-10), "
              f"EXPLAIN ANALYZE when > {slow_ms:.0f} ms:")
        for label, call in calls.items():
            recorder = Recorder(conn)
            await call(recorder)
            print(f"    {label}:")
            for sql, args in recorder.statements:
                runs = []
                stmt = await conn.prepare(sql)
                for _ in range(10):
                    t = time.perf_counter()
                    await stmt.fetch(*args)
                    runs.append((time.perf_counter() - t) * 1000)
                early, late = statistics.median(runs[:5]), statistics.median(runs[5:])
                print(f"      {early:7.1f} | {late:7.1f} ms  {_first_line(sql)}")
                if max(early, late) > slow_ms:
                    plan = await conn.fetch("EXPLAIN (ANALYZE, BUFFERS) " + sql, *args)
                    print_plan([r[0] for r in plan])
                    if late > 2 * early:  # the statement cache's generic plan is the slow one
                        print("          -- its generic plan (what runs 6-10 got):")
                        print_plan(await explain_generic(conn, stmt, sql, args))
    finally:
        await conn.close()


class Http1:
    """One bare HTTP/1.1 keep-alive connection (as in bench/caseload.py): the load generator
    shares the 2 cores with the service, and httpx spends more CPU per request than a fast
    route; this spends next to none. A connection idle past the server's keep-alive timeout
    (uvicorn: 5 s; workers wait for the slowest one between phases) is reopened first."""

    IDLE = 4.0

    def __init__(self, port: int) -> None:
        self.port = port
        self.used = 0.0

    async def open(self) -> Http1:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.used = time.monotonic()
        return self

    async def get(self, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
        """(status, body); status 0 when the connection broke mid-request."""
        if time.monotonic() - self.used > self.IDLE:
            self.close()
            await self.open()
        head = f"Host: 127.0.0.1:{self.port}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
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


async def hammer(call, seconds: float, cpu, concurrency: int) -> tuple[list[float], int, float, float]:
    """`concurrency` workers calling `call(worker)` back to back for `seconds` (after a 1 s
    warm-up); return the latencies, the failures, the measured seconds and the service's CPU
    seconds `cpu()` over them."""
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


async def dashboard_bench(kafka_servers: str, pg: str, n: int, seconds: float, concurrency: int,
                          keep: bool) -> None:
    run = new_run(kafka_servers, pg)
    print(f"cases dashboard and search bench, {os.cpu_count()} cores, prefix {run.prefix}", flush=True)
    await run.prepare("cases")
    service = None
    conns: list[Http1] = []
    try:
        service = CasesService(run)  # applies the migrations; its consumers have nothing to read
        await service.ready()
        samples = await bulk_load(run.dsn("cases"), n)
        school = "K0042"
        school_caller = bearer("principal.k0042@bench.example.org", ["manage_cases"], [school])
        conns = [await Http1(service.port).open() for _ in range(concurrency)]
        rows = []
        answers: dict[str, bytes] = {}
        errors: dict[str, list] = {}

        def call(path, headers, what=None):
            values = itertools.cycle(range(1_000_003))

            async def one(i: int) -> bool:
                query = f"?{urlencode({what: samples[what][next(values) % len(samples[what])]})}" if what else ""
                status, body = await conns[i].get(path + query, headers)
                if status == 200:
                    answers.setdefault(path + (" school" if headers is school_caller else ""), body)
                else:
                    errors.setdefault(f"{path}{' school' if headers is school_caller else ''} -> {status}",
                                      [0, body[:300]])[0] += 1
                return status == 200
            return one

        plan = [
            ("raw baseline: GET /healthz", call("/healthz", {})),
            ("GET /v1/dashboard (district admin, district)", call("/v1/dashboard", ADMIN)),
            (f"GET /v1/dashboard (school-scoped, {school})", call("/v1/dashboard", school_caller)),
            ("GET /v1/cases?case_number=", call("/v1/cases", ADMIN, "case_number")),
            ("GET /v1/cases?person= (family name)", call("/v1/cases", ADMIN, "person")),
            ("GET /v1/cases?team_leader=", call("/v1/cases", ADMIN, "team_leader")),
        ]
        for label, one in plan:
            rows.append((label, *await hammer(one, seconds, service.cpu_seconds, concurrency)))
            print(f"    ... {label}: {len(rows[-1][1]):,} requests", flush=True)
        empty = b'{"open_cases": 0, "overdue_tasks": {"count": 0}, "opened_by_week": []}'  # none answered 200
        board = json.loads(answers.get("/v1/dashboard", empty))
        school_board = json.loads(answers.get("/v1/dashboard school", empty))
        found = {}
        for what in ("case_number", "person", "team_leader"):
            status, body = await conns[0].get(f"/v1/cases?{urlencode({what: samples[what][0]})}", ADMIN)
            found[what] = len(json.loads(body)["items"]) if status == 200 else f"HTTP {status}"

        print(f"  {concurrency} concurrent clients (bare HTTP/1.1 keep-alive), {seconds:.0f} s each; the service's "
              f"pool has 10 connections:")
        floor = statistics.median(rows[0][1]) if rows[0][1] else None
        for label, lats, failures, took, cpu in rows:
            ratio = f"  p50 {statistics.median(lats) / floor:6.1f}x healthz" if floor and lats else ""
            print(f"  {label:46s} p50 {pct(lats, 50) * 1000:8.1f}  p99 {pct(lats, 99) * 1000:8.1f} ms  "
                  f"{len(lats) / took:>7,.1f} req/s" + ratio
                  + f"  service CPU {cpu / max(len(lats), 1) * 1000:6.2f} ms/req"
                  + (f"  {failures} FAILED" if failures else ""))
        print(f"      district board: {board['open_cases']:,} open cases, {board['overdue_tasks']['count']:,} overdue "
              f"tasks, {len(board['opened_by_week'])} week x kind rows; school board: {school_board['open_cases']:,} "
              f"open, {school_board['overdue_tasks']['count']:,} overdue; search hits (first value): "
              + ", ".join(f"{k} {v}" for k, v in found.items()))
        for what, (count, body) in errors.items():
            print(f"      FAILED: {count:,} x {what}: {body!r}")
        worst = max(pct(rows[1][1], 99), pct(rows[2][1], 99))
        print(f"      target p99 < 100 ms (dashboard): {'met' if worst < 0.1 else 'NOT met'}", flush=True)
        await explain_statements(run.dsn("cases"), school, samples, slow_ms=20.0)
    finally:
        for conn in conns:
            conn.close()
        if service is not None:
            service.stop()
        if not keep:
            await run.drop("cases")


# ---------------------------------------------------------------------------- main


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("throughput", "dashboard"))
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the trigger load")
    parser.add_argument("--rate", type=float, default=2000.0, help="triggers per second")
    parser.add_argument("--students", type=int, default=200_000, help="students seeded for the trigger load")
    parser.add_argument("--join-share", type=float, default=0.1, help="share of triggers for students with a case")
    parser.add_argument("--kinds", choices=("mixed", "form"), default="mixed",
                        help="trigger types: the seven interleaved, or FormSubmitted only")
    parser.add_argument("--drain", type=float, default=300.0,
                        help="seconds to wait after the load for the service to catch up")
    parser.add_argument("--cases", type=int, default=500_000, help="cases bulk-loaded for the dashboard")
    parser.add_argument("--query-seconds", type=float, default=15.0, help="length of each query phase")
    parser.add_argument("--concurrency", type=int, default=20, help="concurrent HTTP clients (dashboard)")
    parser.add_argument("--keep", action="store_true", help="keep this run's topics and database")
    args = parser.parse_args()
    parts = [args.only] if args.only else ["throughput", "dashboard"]
    with ExitStack() as stack:
        kafka_servers, pg = backends(stack)
        if "throughput" in parts:
            await throughput(kafka_servers, pg, args.students, args.rate, args.seconds, args.join_share, args.kinds,
                             args.drain, args.keep)
        if "dashboard" in parts:
            await dashboard_bench(kafka_servers, pg, args.cases, args.query_seconds, args.concurrency, args.keep)


if __name__ == "__main__":
    asyncio.run(main())
