"""The caseload service: materialization, change latency and caseload queries, each beside a
raw baseline measured in the same run.

    python bench/caseload.py [--only materialize|latency|query] [--scale 1.0] [--seconds 60]
                             [--rate 1000] [--query-seconds 20] [--students 10000] [--no-analyze]
                             [--http-port-base PORT] [--keep]

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
2. latency: a seeded district (100 teachers with emails, --students students; staff, classes
   and students first, then enrollments, then ANALYZE as autovacuum would have done in steady
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
   (produced to a bare topic, read back by the same kind of reader). Target (issue 14):
   p99 < 250 ms.
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
bench/roster_import.py's settings, in its own data folder). Service logs:
.caseflow/bench-logs/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import uuid
from collections import defaultdict, deque
from contextlib import ExitStack
from pathlib import Path

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (  # noqa: E402
    BIG_POSTGRES,
    SECRET,
    Backends,
    Http1,
    Load,
    Ports,
    Service,
    System,
    add_port_flag,
    load_average,
    server_cpu_seconds,
    backends,
    create_topic,
    describe_batches,
    drive,
    end_offsets,
    hammer,
    latency_line,
    partitions_of,
    pct,
    produce,
    subscriptions,
    tail_reader,
)
from roster_import import import_once, packages, roster_pool  # noqa: E402

from contracts.envelope import Event  # noqa: E402
from contracts.roster import (  # noqa: E402
    ClassUpserted,
    EnrollmentAdded,
    EnrollmentRemoved,
    StaffUpserted,
    StudentEnrolled,
    StudentUpdated,
)
from contracts.topics import CASELOAD_MEMBERSHIPS  # noqa: E402
from services.caseload import store as caseload_store  # noqa: E402
from services.kit import db  # noqa: E402
from services.kit.auth import mint  # noqa: E402
from services.kit.outbox import message_for  # noqa: E402

SOURCE = "bench.caseload"
CONCURRENCY = 50
QUERY_TEACHER = "q150.teacher@bench.example.org"


async def missing_memberships(conn: asyncpg.Connection) -> tuple[int, int]:
    """(missing, extra): the memberships the rules want, recomputed from scratch by the
    service's own SQL (store.disagreements_with_rules), that it does not hold, and the ones
    it holds that the rules do not want."""
    return await caseload_store.disagreements_with_rules(conn)


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


class Progress:
    """Where the caseload service stands: its consumer groups' lag on the topics it reads,
    its outbox and its memberships."""

    def __init__(self, system: System) -> None:
        self.system = system
        self.lag = system.lag("caseload")

    async def __aenter__(self) -> Progress:
        await self.lag.__aenter__()
        self.conn = await asyncpg.connect(self.system.dsn("caseload"))
        return self

    async def __aexit__(self, *exc) -> None:
        await self.lag.__aexit__(*exc)
        await self.conn.close()

    async def outbox(self) -> int:
        return await self.conn.fetchval("SELECT count(*) FROM outbox")

    async def memberships(self) -> int:
        return await self.conn.fetchval("SELECT count(*) FROM memberships")

    async def settled(self) -> bool:
        """Every record consumed and committed, then every event it caused published."""
        return await self.lag() == 0 and await self.outbox() == 0


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


async def materialize(system: System, scale: float) -> dict:
    """The caseload service materialising every caseload from the roster's published import
    (already on this system's topics): start to lag 0 and an empty outbox."""
    kafka_servers = system.backends.kafka
    topics = sorted({system.topic(s.topic.name) for s in subscriptions("caseload")})
    records = await end_offsets(kafka_servers, topics)
    n = sum(records.values())
    print("  input: " + ", ".join(f"{t.removeprefix(system.prefix)} {c:,}" for t, c in records.items() if c))
    raw = await raw_read(kafka_servers, [t for t in topics if records[t]], n)
    print(f"  raw baseline: aiokafka getmany of the same {n:,} records      {raw:8.1f} s"
          f"  {n / raw:>10,.0f} records/s   1.00x", flush=True)

    pg_cpu = await server_cpu_seconds(system.dsn("caseload"))
    service = system.service("caseload").start()
    await service.ready(timeout=300)
    async with Progress(system) as progress:
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
        pg_cpu = await server_cpu_seconds(system.dsn("caseload")) - pg_cpu
        memberships = await progress.memberships()
        changes = dict(await progress.conn.fetch("SELECT change, count(*) FROM membership_changes GROUP BY 1"))
    service.stop()
    conn = await db.connect(system.dsn("caseload"))
    try:
        missing, extra = await missing_memberships(conn)
        analyzed = await conn.fetchval("SELECT last_autoanalyze IS NOT NULL FROM pg_stat_user_tables "
                                       "WHERE relname = 'memberships'")
        query_ms, caseload_size = await caseload_query_at_scale(conn)
        await conn.execute("ANALYZE")
        query_analyzed_ms, _ = await caseload_query_at_scale(conn)
    finally:
        await conn.close()
    published_events = sum((await end_offsets(kafka_servers, [system.topic(CASELOAD_MEMBERSHIPS.name)])).values())
    dead = sum((await end_offsets(kafka_servers, [t + ".DLT" for t in topics])).values())
    print(f"  caseload service: start to every caseload materialized   {done:8.1f} s"
          f"  {n / done:>10,.0f} records/s   {done / raw:.2f}x raw")
    print(f"      ready after {service.ready_after:.1f} s; consumer lag 0 at {caught_up:.1f} s; outbox empty at "
          f"{done:.1f} s")
    print(f"      service: {cpu / done:.0%} of one core ({cpu / n * 1e6:,.0f} us a record), PostgreSQL "
          f"{pg_cpu / done:.0%} ({pg_cpu / n * 1e6:,.0f} us a record); load average "
          f"{'/'.join(f'{x:.1f}' for x in load_average())}; {describe_batches({}, batches)}")
    print(f"      {memberships:,} memberships; {published_events:,} membership events published "
          f"(change log: {changes.get('added', 0):,} added, {changes.get('removed', 0):,} removed)"
          + (f"; {dead:,} DEAD-LETTERED" if dead else ""))
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
    return {"seconds": done, "raw_seconds": raw, "records": n, "memberships": memberships, "missing": missing,
            "extra": extra, "dead_lettered": dead, "published": published_events, "cpu_share": cpu / done,
            "postgres_cpu_share": pg_cpu / done,
            "scale": scale}


async def materialize_bench(backends_: Backends, scale: float, ports: Ports, keep: bool) -> dict:
    """A roster import at this scale, stored and published, then the caseload service
    materialising it."""
    base, _ = packages(scale)
    async with System.new(backends_, "bc", keep=keep, ports=ports) as system:
        await system.prepare("roster", "caseload")
        print(f"caseload materialization bench, scale {scale} of New York City, {os.cpu_count()} cores, "
              f"prefix {system.prefix}", flush=True)
        pool = await roster_pool(system)
        try:
            await import_once(system, pool, base, "roster import (setup)")
        finally:
            await pool.close()
        return await materialize(system, scale)


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


async def settle(service: Service, system: System, expected: int | None = None, timeout: float = 600) -> int:
    """Wait until the service has consumed everything and published what it caused (and,
    when given, holds `expected` memberships); return the memberships it holds."""
    async with Progress(system) as progress:
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


async def seed(service: Service, system: System, district: District, analyze: bool = True) -> float:
    """Seed the district: staff, classes and students first, then (once the service has
    them) the enrollments. All at once would race: see missing_memberships. Seconds taken."""
    await service.ready()
    started = time.perf_counter()
    people, enrollments = district.seed()
    await produce(system.kafka, people, SOURCE)
    await settle(service, system)
    await produce(system.kafka, enrollments, SOURCE)
    held = await settle(service, system, district.expected_memberships)
    took = time.perf_counter() - started
    print(f"  seeded district: {len(people) + len(enrollments):,} roster events -> {held:,} memberships in "
          f"{took:.1f} s (service ready after {service.ready_after:.1f} s)", flush=True)
    if held != district.expected_memberships:
        raise RuntimeError(f"the seeded district has {held:,} memberships, not {district.expected_memberships:,}")
    if analyze:
        # A service in steady state has had its tables analyzed by autovacuum; freshly loaded
        # ones have no statistics for a minute or so, and the planner picks nested loops
        # over whole tables (see --no-analyze).
        conn = await asyncpg.connect(system.dsn("caseload"))
        try:
            await conn.execute("ANALYZE")
        finally:
            await conn.close()
    return took


# ---------------------------------------------------------------------------- 2. latency


async def baseline_round_trip(system: System, rate: float, seconds: float) -> tuple[list[float], int, float]:
    """The same events at the same rate through Kafka alone: produced to a bare topic,
    read back by a consumer in this process."""
    topic = system.topic("bench.roundtrip.v1")
    await create_topic(system.backends.kafka, topic, 12)
    consumer = await tail_reader(system.backends.kafka, topic, 12)
    district = District("bench-baseline")
    sent_at: dict[bytes, float] = {}
    seen: list[float] = []
    stop = asyncio.Event()

    def make():
        event, _ = district.next_change()
        m = message_for(event, source=SOURCE, kafka=system.kafka)
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
        sent, took = await drive(system.kafka, make, rate, seconds)
        stop.set()
        await asyncio.wait_for(reader, 30)
    finally:
        reader.cancel()
        await consumer.stop()
    return seen, sent, took


async def latency(system: System, service: Service, district: District, rate: float, seconds: float) -> dict:
    base, base_sent, base_took = await baseline_round_trip(system, rate, seconds)
    consumer = await tail_reader(system.backends.kafka, system.topic(CASELOAD_MEMBERSHIPS.name),
                                 CASELOAD_MEMBERSHIPS.partitions)
    pending: dict[tuple[str, str, str], deque] = defaultdict(deque)
    waiting = 0
    published: list[float] = []
    seen: list[float] = []
    other = 0
    own_correlation = 0
    stop = asyncio.Event()

    def make():
        nonlocal waiting
        event, expect = district.next_change()
        m = message_for(event, source=SOURCE, kafka=system.kafka)
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
                    published.append(r.timestamp / 1000 - t)
                    seen.append(now - t)

    reader = asyncio.create_task(read())
    try:
        cpu_before, metrics_before = service.cpu_seconds(), await service.batches()
        sent, took = await drive(system.kafka, make, rate, seconds)
        cpu, batches = service.cpu_seconds() - cpu_before, await service.batches()
        stop.set()
        try:
            await asyncio.wait_for(reader, 60)
        except TimeoutError:
            pass
    finally:
        reader.cancel()
        await consumer.stop()
    matched = len(published)
    print(f"  input: {sent:,} roster changes in {took:.1f} s = {sent / took:,.0f}/s (target rate {rate:,.0f}/s); "
          f"baseline {base_sent / base_took:,.0f}/s")
    print(latency_line("raw baseline: produce -> consume, Kafka alone", base))
    print(latency_line("roster event -> membership event published", published))
    print(latency_line("roster event -> membership event read back", seen, pct(base, 99)))
    print(f"      {matched:,} of {sent:,} changes matched to their membership event"
          + (f", {sent - matched:,} NOT SEEN within 60 s" if matched < sent else "")
          + f"; {other:,} other membership events (the removals of grade flips); "
          f"{own_correlation / max(matched, 1):.1%} carry their own cause's correlation_id")
    print(f"      service during the load: {cpu / took:.0%} of one core; {describe_batches(metrics_before, batches)}")
    print(f"      target p99 < 250 ms: {'met' if pct(seen, 99) < 0.25 and matched == sent else 'NOT met'}",
          flush=True)
    return {"rate": sent / took, "sent": sent, "matched": matched, "p99_published": pct(published, 99),
            "p99_seen": pct(seen, 99), "p50_seen": pct(seen, 50), "baseline_p99": pct(base, 99),
            "baseline_rate": base_sent / base_took, "cpu_share": cpu / took}


# ---------------------------------------------------------------------------- 3. query


async def query(system: System, service: Service, district: District, seconds: float, full: bool = True) -> dict:
    """/healthz and the caseload page under 50 clients; with `full`, also paged reads and
    the page's SQL alone over a pool."""
    token = mint(SECRET, email=QUERY_TEACHER, district_id=district.district_id, schools=[],
                 roles=["caseload_viewer"])
    conns = [await Http1(service.port, {"Authorization": f"Bearer {token}"}).open() for _ in range(CONCURRENCY)]
    rows: list[tuple[str, Load]] = []
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

        rows.append(("raw baseline: GET /healthz", await hammer(healthz, seconds, service.cpu_seconds, CONCURRENCY)))
        rows.append(("GET /v1/caseloads/me?limit=500 (1 page)",
                     await hammer(one_page, seconds, service.cpu_seconds, CONCURRENCY)))
        if full:
            rows.append(("same, paged limit=100/after (2 requests)",
                         await hammer(paged, seconds, service.cpu_seconds, CONCURRENCY)))
    finally:
        for conn in conns:
            conn.close()

    if full:
        pool = await db.create_pool(system.dsn("caseload"), min_size=10, max_size=10)
        try:
            async def sql(_: int) -> bool:
                async with pool.acquire() as conn:
                    found = await caseload_store.caseload_page(conn, district_id=district.district_id,
                                                               owner_email=QUERY_TEACHER, school_id=None, grade=None,
                                                               reason=None, after=None, limit=500, schools=None)
                return len(json.loads(found)["items"]) == items

            rows.append(("raw baseline: its SQL over asyncpg (pool 10)",
                         await hammer(sql, seconds, service.cpu_seconds, CONCURRENCY)))
        finally:
            await pool.close()

    print(f"  a teacher with {items} students, {CONCURRENCY} concurrent clients, {seconds:.0f} s each:")
    floor = statistics.median(rows[0][1].latencies) if rows[0][1].latencies else None
    for label, load in rows:
        lats = load.latencies
        ratio = f"  p50 {statistics.median(lats) / floor:5.1f}x healthz" if floor and lats else ""
        service_cpu = f"  service CPU {load.cpu / max(len(lats), 1) * 1000:5.2f} ms/call" if "SQL" not in label else ""
        print(f"  {label:46s} p50 {load.p(50) * 1000:7.1f}  p99 {load.p(99) * 1000:7.1f} ms  "
              f"{load.rate:>7,.0f} calls/s" + ratio + service_cpu
              + (f"  {load.failures} FAILED" if load.failures else ""))
    page, healthz_load = rows[1][1], rows[0][1]
    print(f"      target p99 < 50 ms (1 page): {'met' if page.p(99) < 0.05 else 'NOT met'}", flush=True)
    return {"p99": page.p(99), "p50": page.p(50), "rate": page.rate, "failures": page.failures,
            "healthz_p99": healthz_load.p(99), "healthz_p50": healthz_load.p(50), "items": items,
            "cpu_ms_per_call": page.cpu / max(len(page.latencies), 1) * 1000}


async def latency_and_query(backends_: Backends, parts: list[str], *, students: int, rate: float, seconds: float,
                            query_seconds: float, analyze: bool = True, full_query: bool = True,
                            ports: Ports | None = None, keep: bool = False) -> dict:
    """A seeded district, then the latency load and/or the query load on it."""
    out = {}
    async with System.new(backends_, "bc", keep=keep, ports=ports) as system:
        district = District("benchdist", students=students)
        print(f"caseload latency and query bench, {os.cpu_count()} cores, prefix {system.prefix}", flush=True)
        await system.prepare("caseload")
        service = system.service("caseload").start()
        out["seed_seconds"] = await seed(service, system, district, analyze=analyze)
        if "latency" in parts:
            out["latency"] = await latency(system, service, district, rate, seconds)
        if "query" in parts:
            async with Progress(system) as progress:
                while not await progress.settled():
                    await asyncio.sleep(0.5)
            out["query"] = await query(system, service, district, query_seconds, full=full_query)
    return out


# ---------------------------------------------------------------------------- main


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("materialize", "latency", "query"))
    parser.add_argument("--scale", type=float, default=1.0, help="share of New York City for materialize")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the latency load")
    parser.add_argument("--rate", type=float, default=1000.0, help="roster changes per second (latency)")
    parser.add_argument("--query-seconds", type=float, default=20.0, help="length of each query phase")
    parser.add_argument("--students", type=int, default=10_000, help="students of the seeded district (latency, query)")
    parser.add_argument("--no-analyze", action="store_true",
                        help="latency/query: skip the ANALYZE after seeding (fresh tables, no planner statistics)")
    parser.add_argument("--keep", action="store_true", help="keep this run's topics and databases")
    add_port_flag(parser)
    args = parser.parse_args()
    parts = [args.only] if args.only else ["materialize", "latency", "query"]
    ports = Ports(args.http_port_base)
    with ExitStack() as stack:
        b = backends(stack, "bench-caseload-postgres", BIG_POSTGRES)
        if "materialize" in parts:
            await materialize_bench(b, args.scale, ports, args.keep)
        if "latency" in parts or "query" in parts:
            await latency_and_query(b, parts, students=args.students, rate=args.rate, seconds=args.seconds,
                                    query_seconds=args.query_seconds, analyze=not args.no_analyze, ports=ports,
                                    keep=args.keep)


if __name__ == "__main__":
    asyncio.run(main())
