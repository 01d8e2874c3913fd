"""The fault suite (issue 9): mixed events under kills, outages, duplicates and poison,
then an oracle that says what was lost, duplicated or dead-lettered.

    python bench/faults.py [--events 50000] [--seed 9] [--kills-per-service 2]
                           [--broker-restarts 2] [--postgres-restarts 2]

A driver publishes a generated world into the five services, each a real process, on a
broker and a PostgreSQL server of its own that it can restart (an Apache Kafka from
deploy/local/kafka.sh on --kafka-port, state under --home; an embedded PostgreSQL on a
fixed port), while an injector, one fault at a time, at random moments:
- SIGKILLs a service and starts it again (--kills-per-service for each of the five);
- stops the Kafka broker and starts it again (the driver, an outside producer, waits);
- stops PostgreSQL (fast shutdown: every connection is cut) and starts it again;
and the driver also republishes some records as they were (same ce_id: --duplicates),
interleaves the events of different keys in a random order (one key's stay in order, all
Kafka promises), and sends poison (a header value or a header name that is not UTF-8,
a body that is not JSON, an unknown event type, a record near the broker's size limit,
no body) to the topics of roster, caseload and cases.

The generated world is deliberately simple, so the oracle can say what must hold from
the input alone, without the services' code:
- district `faults`: SIS students (some enrolled again with a new family name: the last
  one stands), SIS staff; a mandate and a provider's first attendance for some students
  (each provider authorised district-wide): the provider has that student on their
  caseload; triggers: a Submit a Form trigger (enabled before any trigger happened) opens
  one case per student the roster knows; Submit a File (disabled) opens none; triggers
  for students the roster never hears of open none;
- district `faults-file`: one OneRoster package (K-5 students, one homeroom each, one
  teacher per homeroom): each teacher has their homeroom's students on their caseload.

It reads the outcome from the services' databases and topics once everything has
settled (every consumer group caught up, every outbox empty), and prints a table: events,
faults per kind, lost, duplicated, and each fault's recovery time (p50, max). A fault's
recovery time runs from the moment it is injected (SIGKILL sent, broker or PostgreSQL
stop begun) to the first moment every service it touched answers /readyz 200 and each of
their consumer groups has either committed past the offsets it had committed when the
fault began, or has nothing left to read.

tests/integration/test_faults.py runs the CI subset (5,000 events, one kill per service,
one broker restart, one PostgreSQL restart) through the same code.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import logging
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
import zipfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from contracts import cloudevents  # noqa: E402
from contracts.cases import FileSubmitted, FormSubmitted  # noqa: E402
from contracts.sis import SisStaffUpserted, SisStudentEnrolled  # noqa: E402
from contracts.special_education import FirstAttendanceRecorded, MandateRecorded  # noqa: E402
from contracts.topics import TOPICS  # noqa: E402
from tests.support import Backends, Stack, eventually, free_port, token  # noqa: E402

SERVICES = ("roster", "caseload", "cases", "transfers", "notify")
CONSUMING = ("roster", "caseload", "cases")
DISTRICT = "faults"
FILE_DISTRICT = "faults-file"
TODAY = "2026-11-02"  # a school day of the package's year
SIS_STUDENTS, SIS_STAFF, MANDATES, TRIGGERS = "sis.students.v1", "sis.staff.v1", "sped.mandates.v1", "cases.triggers.v1"
CONSUMER_OF = {SIS_STUDENTS: "roster", SIS_STAFF: "roster", MANDATES: "caseload", TRIGGERS: "cases"}
POISON_KINDS = ("header value not UTF-8", "header name not UTF-8", "body not JSON", "unknown event type",
                "oversized", "no body")


@dataclass
class Options:
    events: int = 50_000
    seed: int = 9
    kills_per_service: int = 2
    broker_restarts: int = 2
    postgres_restarts: int = 2
    duplicates: int | None = None  # default: 1% of the events
    poison_per_kind: int = 2
    oversized_bytes: int = 990_000  # the broker takes up to 1,048,588 (message.max.bytes)
    rate: float = 2_000.0  # events/s the driver publishes at
    home: Path = ROOT / ".caseflow" / "faults"
    kafka_port: int = 29592
    kafka_controller_port: int = 29593
    recovery_timeout: float = 240.0
    settle_timeout: float = 900.0
    log_level: str = "WARNING"
    quiet: bool = False

    @property
    def duplicate_count(self) -> int:
        return self.events // 100 if self.duplicates is None else self.duplicates


# ------------------------------------------------------------------------- the world


@dataclass
class Record:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: list
    kind: str  # "event", "duplicate", or a poison kind
    event_id: str | None = None


@dataclass
class World:
    records: list[Record]
    package: bytes  # the OneRoster package for FILE_DISTRICT
    students: dict[str, str]  # SIS source id -> the family name last said
    staff: set[str]
    providers: set[str]
    provider_pairs: set[tuple[str, str]]  # (student source id, provider email)
    homeroom_pairs: set[tuple[str, str]]  # (student source id, teacher email)
    cases_for: set[str]  # SIS source ids that must have exactly one case
    triggered: set[str]  # every source id a trigger named
    poison: dict[str, str]  # key -> poison kind
    good: int = 0
    file_rows: dict[str, int] = field(default_factory=dict)


class _NotUtf8Name(str):
    """A header name whose bytes on the wire are not UTF-8, as a foreign producer may send."""

    def encode(self, *args, **kwargs) -> bytes:  # noqa: ARG002
        return b"ce_\xff\xfe"


def _record(event, kind: str = "event", key: str | None = None) -> Record:
    from contracts.topics import partition_key, topic_for

    return Record(topic_for(event).name, (key or partition_key(event)).encode(), cloudevents.encode(event),
                  cloudevents.headers_for(event, "faults.driver"), kind, str(event.event_id))


def generate(options: Options) -> World:
    rng = random.Random(options.seed)
    n = options.events
    n_students = max(10, int(n * 0.30))
    n_updates = int(n * 0.10)
    n_staff = max(2, int(n * 0.04))
    n_triggers = int(n * 0.30)
    n_mandates = max(2, int(n * 0.13))
    n_providers = max(2, n // 1000)
    by_key: dict[tuple[str, bytes], list[Record]] = defaultdict(list)

    def add(rec: Record) -> None:
        by_key[(rec.topic, rec.key)].append(rec)

    students = {}
    for i in range(n_students):
        sid = f"s{i:06d}"
        students[sid] = f"Family{i}"
        add(_record(SisStudentEnrolled(district_id=DISTRICT, source_id=sid, school_id=f"K{i % 7:03d}", grade="10",
                                       given_name="Given", family_name=students[sid])))
    for u in range(n_updates):
        sid = f"s{rng.randrange(n_students):06d}"
        students[sid] = f"Moved{u}"
        add(_record(SisStudentEnrolled(district_id=DISTRICT, source_id=sid, school_id="K000", grade="10",
                                       given_name="Given", family_name=students[sid])))
    staff = set()
    for i in range(n_staff):
        staff.add(f"t{i:05d}")
        add(_record(SisStaffUpserted(district_id=DISTRICT, source_id=f"t{i:05d}", role="teacher", given_name="T",
                                     family_name=f"Staff{i}", email=f"t{i:05d}@faults.example.org",
                                     school_ids=[f"K{i % 7:03d}"])))
    providers = {f"provider{p}@faults.example.org" for p in range(n_providers)}
    provider_pairs = set()
    for i, index in enumerate(rng.sample(range(n_students), min(n_mandates, n_students))):
        sid, provider = f"s{index:06d}", f"provider{i % n_providers}@faults.example.org"
        mandate = _record(MandateRecorded(district_id=DISTRICT, mandate_id=f"m-{sid}", student_source_id=sid,
                                          service="speech"))
        attended = _record(FirstAttendanceRecorded(district_id=DISTRICT, student_source_id=sid,
                                                   provider_email=provider, service="speech",
                                                   session_date="2026-10-20"))
        # One in five first attendances arrives before its mandate: it waits for it.
        for rec in ((attended, mandate) if rng.random() < 0.2 else (mandate, attended)):
            add(rec)
        provider_pairs.add((sid, provider))
    cases_for, triggered = set(), set()
    for i in range(n_triggers):
        known = rng.random() < 0.95
        sid = f"s{rng.randrange(n_students):06d}" if known else f"never{rng.randrange(max(1, n // 200)):05d}"
        triggered.add(sid)
        if rng.random() < 0.5:
            event = FormSubmitted(district_id=DISTRICT, student_source_id=sid, form_id=f"f{i}",
                                  form_name="Counseling referral")
            if known:
                cases_for.add(sid)
        else:
            event = FileSubmitted(district_id=DISTRICT, student_source_id=sid, file_id=f"file{i}",
                                  file_name="notes.pdf")
        add(_record(event))

    # Any interleaving of the keys, each key's records in their order: all Kafka promises.
    queues = list(by_key.values())
    draws = [q for q, records in enumerate(queues) for _ in records]
    rng.shuffle(draws)
    heads = [0] * len(queues)
    ordered = []
    for q in draws:
        ordered.append(queues[q][heads[q]])
        heads[q] += 1
    good = len(ordered)

    # Duplicates: a record sent again as it was, later (same key, so after the original).
    for _ in range(options.duplicate_count):
        at = rng.randrange(len(ordered))
        original = ordered[at]
        copy = Record(original.topic, original.key, original.value, original.headers, "duplicate", original.event_id)
        ordered.insert(rng.randrange(at + 1, len(ordered) + 1), copy)

    poison = {}
    for kind in POISON_KINDS:
        for i in range(options.poison_per_kind):
            rec = _poison(kind, i, rng, options)
            poison[rec.key.decode()] = kind
            ordered.insert(rng.randrange(len(ordered) + 1), rec)

    package, homeroom_pairs, file_rows = _package(max(20, n // 25), max(2, n // 500))
    return World(ordered, package, students, staff, providers, provider_pairs, homeroom_pairs, cases_for, triggered,
                 poison, good, file_rows)


def _poison(kind: str, i: int, rng: random.Random, options: Options) -> Record:
    slug = kind.replace(" ", "-").replace("-UTF-8", "-utf8")
    key = f"poison-{slug}-{i}"
    topic = (SIS_STUDENTS, MANDATES, TRIGGERS)[rng.randrange(3)]
    if topic == SIS_STUDENTS:
        event = SisStudentEnrolled(district_id=DISTRICT, source_id=key, school_id="K000", grade="10",
                                   given_name="Poison", family_name="Poison")
    elif topic == MANDATES:
        event = MandateRecorded(district_id=DISTRICT, mandate_id=key, student_source_id=key, service="speech")
    else:
        event = FormSubmitted(district_id=DISTRICT, student_source_id=key, form_id=key, form_name="Poison")
    rec = _record(event, kind, key=key)
    rec.topic = topic
    headers = rec.headers
    match kind:
        case "header value not UTF-8":
            rec.headers = [(n, b"\xff\xfe" if n == "ce_type" else v) for n, v in headers]
        case "header name not UTF-8":
            rec.headers = [*headers, (_NotUtf8Name("x"), b"1")]
        case "body not JSON":
            rec.value = b"\xff{not json"
        case "unknown event type":
            body = json.loads(rec.value)
            body["event_type"] = "sis.student_teleported.v1"
            rec.value = json.dumps(body).encode()
            rec.headers = [(n, b"sis.student_teleported.v1" if n == "ce_type" else v) for n, v in headers]
        case "oversized":
            body = json.loads(rec.value)
            body["padding"] = ""
            filler = options.oversized_bytes - len(json.dumps(body).encode())
            body["padding"] = "x" * max(0, filler)
            # A name far over its limit too: the record is refused for what it says, not its size.
            body["given_name" if topic == SIS_STUDENTS else ("service" if topic == MANDATES else "form_name")] = "y" * 500
            rec.value = json.dumps(body).encode()
        case "no body":
            rec.value = None
    return rec


def _package(n_students: int, n_teachers: int) -> tuple[bytes, set[tuple[str, str]], dict[str, int]]:
    """A OneRoster 1.1 package: one school, n_teachers homerooms (grade 03), each student in one."""
    stamp = "2026-09-01T12:00:00.000Z"
    school = "fsch-1"
    files = {
        "manifest.csv": "propertyName,value\nmanifest.version,1.0\noneroster.version,1.1\n"
                        "file.academicSessions,bulk\nfile.categories,absent\nfile.classes,bulk\n"
                        "file.classResources,absent\nfile.courses,bulk\nfile.courseResources,absent\n"
                        "file.demographics,absent\nfile.enrollments,bulk\nfile.lineItems,absent\nfile.orgs,bulk\n"
                        "file.results,absent\nfile.users,bulk\nsource.systemName,faults\nsource.systemCode,faults\n",
        "orgs.csv": "sourcedId,status,dateLastModified,name,type,identifier,parentSourcedId\n"
                    f"{FILE_DISTRICT},active,{stamp},Faults District,district,FD,\n"
                    f"{school},active,{stamp},Faults Elementary,school,FS1,{FILE_DISTRICT}\n",
        "academicSessions.csv": "sourcedId,status,dateLastModified,title,type,startDate,endDate,parentSourcedId,"
                                "schoolYear\n"
                                f"fy-2027,active,{stamp},2026-2027,schoolYear,2026-09-10,2027-06-25,,2027\n",
        "courses.csv": "sourcedId,status,dateLastModified,schoolYearSourcedId,courseCode,title,orgSourcedId,grades,"
                       "subjects,subjectCodes\n"
                       f"fcrs-hr03,active,{stamp},fy-2027,HR03,Grade 3 Homeroom,{school},03,Homeroom,\n",
    }
    classes = ["sourcedId,status,dateLastModified,title,grades,courseSourcedId,classCode,classType,location,"
               "schoolSourcedId,termSourcedIds,subjects,subjectCodes,periods"]
    users = ["sourcedId,status,dateLastModified,enabledUser,orgSourcedIds,role,username,userIds,givenName,familyName,"
             "middleName,identifier,email,sms,phone,agentSourcedIds,grades,password"]
    enrollments = ["userSourcedId,role,classSourcedId,sourcedId,status,dateLastModified,schoolSourcedId,primary,"
                   "beginDate,endDate"]
    pairs = set()
    for t in range(n_teachers):
        email = f"homeroom{t}@faults.example.org"
        classes.append(f"fcls-{t},active,{stamp},Class 3-{t},03,fcrs-hr03,3-{t},homeroom,Room {t},{school},fy-2027,"
                       "Homeroom,,")
        users.append(f"fstf-{t},active,{stamp},true,{school},teacher,hr{t},,Home,Room{t},,,{email},,,,,")
        enrollments.append(f"fstf-{t},teacher,fcls-{t},fenr-t{t},active,{stamp},{school},true,2026-09-10,2027-06-25")
    for s in range(n_students):
        t = s % n_teachers
        users.append(f"fstu-{s},active,{stamp},true,{school},student,fstu{s},,Kid,File{s},,,,,,,03,")
        enrollments.append(f"fstu-{s},student,fcls-{t},fenr-s{s},active,{stamp},{school},false,2026-09-10,2027-06-25")
        pairs.add((f"fstu-{s}", f"homeroom{t}@faults.example.org"))
    files["classes.csv"] = "\n".join(classes) + "\n"
    files["users.csv"] = "\n".join(users) + "\n"
    files["enrollments.csv"] = "\n".join(enrollments) + "\n"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    return buffer.getvalue(), pairs, {"students": n_students, "teachers": n_teachers,
                                      "enrolments": n_students + n_teachers}


# ------------------------------------------------------------------------- backends


class Broker:
    """An Apache Kafka broker of the suite's own (deploy/local/kafka.sh), stopped and
    started again on the same ports and data."""

    def __init__(self, home: Path, port: int, controller_port: int) -> None:
        self.env = {**os.environ, "KAFKA_HOME_DIR": str(home / "kafka"), "KAFKA_PORT": str(port),
                    "KAFKA_CONTROLLER_PORT": str(controller_port), "KAFKA_HEAP": "-Xmx512m -Xms128m",
                    "KAFKA_LIBS_DIR": os.environ.get("KAFKA_LIBS_DIR", str(ROOT / ".caseflow" / "kafka" / "libs"))}
        self.bootstrap = f"127.0.0.1:{port}"

    def _run(self, command: str) -> str:
        out = subprocess.run([ROOT / "deploy" / "local" / "kafka.sh", command], env=self.env, capture_output=True,
                             text=True, check=False)
        if out.returncode != 0 and command != "status":
            raise RuntimeError(f"kafka.sh {command} failed:\n{out.stdout}\n{out.stderr[-3000:]}")
        return out.stdout

    def start(self) -> str:
        self._run("start")
        return self.bootstrap

    def stop(self) -> None:
        self._run("stop")

    def reset(self) -> None:
        self._run("reset")


class Postgres:
    """An embedded PostgreSQL of the suite's own, stopped and started on the same port and data."""

    def __init__(self, home: Path) -> None:
        from deploy.local.embedded import EmbeddedPostgres

        self.server = EmbeddedPostgres(home / "postgres", port=free_port(), settings={"fsync": "off"})

    def start(self) -> str:
        return self.server.start()

    def stop(self) -> None:
        self.server.stop()


# ------------------------------------------------------------------------- the run


@dataclass
class Fault:
    kind: str  # "kill <service>", "broker restart", "postgres restart"
    injected_at: float = 0.0
    back_after: float = 0.0  # seconds until the process, broker or server was started again
    recovery: float | None = None  # seconds; None: did not recover in time


@dataclass
class Report:
    options: Options
    world: World
    faults: list[Fault]
    checks: list[tuple[str, int, int, int, int, int]]  # what, expected, found, lost, duplicated, unexpected
    dead_letters: dict[str, dict]  # poison kind -> {"injected", "dead-lettered", "extra copies", "missing"}
    unexpected_dead_letters: list[str]
    redelivered: Counter
    settled: bool
    seconds: float
    notes: list[str] = field(default_factory=list)

    @property
    def lost(self) -> int:
        return sum(c[3] for c in self.checks) + sum(d["missing"] for d in self.dead_letters.values())

    @property
    def duplicated(self) -> int:
        return sum(c[4] for c in self.checks)

    @property
    def unexpected(self) -> int:
        return sum(c[5] for c in self.checks) + len(self.unexpected_dead_letters)

    @property
    def dead_letters_match(self) -> bool:
        return not self.unexpected_dead_letters and all(
            d["dead-lettered"] == d["injected"] for d in self.dead_letters.values())

    @property
    def unrecovered(self) -> list[Fault]:
        return [f for f in self.faults if f.recovery is None]


class Run:
    def __init__(self, options: Options) -> None:
        self.options = options
        self.rng = random.Random(options.seed + 1)
        self.publishing = asyncio.Lock()  # held while records are in flight; a broker restart takes it
        self.faults: list[Fault] = []
        self.notes: list[str] = []

    def say(self, text: str) -> None:
        if not self.options.quiet:
            print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)

    async def execute(self) -> Report:
        o = self.options
        started = time.monotonic()
        for folder in ("kafka/data", "postgres"):
            shutil.rmtree(o.home / folder, ignore_errors=True)
        self.broker = Broker(o.home, o.kafka_port, o.kafka_controller_port)
        self.postgres = Postgres(o.home)
        self.say(f"starting a broker on {self.broker.bootstrap} and PostgreSQL")
        kafka = await asyncio.to_thread(self.broker.start)
        try:
            pg = await asyncio.to_thread(self.postgres.start)
            try:
                self.stack = Stack(Backends(kafka=kafka, postgres=pg), prefix="f.")
                return await self._with_backends(started)
            finally:
                await self._close_clients()
                for proc in getattr(self, "stack", Stack(Backends("", ""))).processes:
                    proc.stop()
                await asyncio.to_thread(self.postgres.stop)
        finally:
            await asyncio.to_thread(self.broker.stop)

    async def _with_backends(self, started: float) -> Report:
        o = self.options
        await self.stack.prepare(*SERVICES)
        env = {"CASEFLOW_TODAY": TODAY, "CASEFLOW_LOG_LEVEL": o.log_level,
               "CASEFLOW_ROSTER_PACKAGES": str(o.home / "packages")}
        self.services = {name: self.stack.service(name, **env) for name in SERVICES}
        for service in self.services.values():
            service.start()
        for service in self.services.values():
            await service.ready(timeout=120)
        self.say("services ready; setting up the districts")
        await self._set_up()
        world = generate(o)  # after the dictionary: every trigger happens once Submit a Form is on
        self.say(f"{world.good:,} events, {o.duplicate_count:,} duplicates, {len(world.poison)} poison records; "
                 f"a package of {world.file_rows['students']:,} students")
        await self._upload(world.package)

        plan = [f"kill {s}" for s in SERVICES for _ in range(o.kills_per_service)]
        plan += ["broker restart"] * o.broker_restarts + ["postgres restart"] * o.postgres_restarts
        self.rng.shuffle(plan)
        self.faults = [Fault(kind) for kind in plan]
        producer = asyncio.create_task(self._publish(world.records))
        try:
            await self._inject(producer, len(world.records))
            await producer
        finally:
            producer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await producer
        self.say("all published and every fault injected; waiting for the system to settle")
        try:
            settled = await self._settle()
        finally:
            await self._close_clients()
        self.say("settled" if settled else f"did not settle within {o.settle_timeout:.0f} s; checking anyway")
        report = await Oracle(self.stack, world).judge(o, self.faults, settled, time.monotonic() - started)
        report.notes += self.notes
        return report

    async def _set_up(self) -> None:
        admin = {"Authorization": "Bearer " + token(DISTRICT, ["district_admin", "manage_cases"])}
        async with httpx.AsyncClient(timeout=30) as client:
            answer = await client.put(self.services["cases"].url + "/v1/dictionary/submit_form",
                                      json={"enabled": True}, headers=admin)
            answer.raise_for_status()
            for provider in sorted({f"provider{p}@faults.example.org" for p in range(max(2, self.options.events // 1000))}):
                answer = await client.put(self.services["caseload"].url + f"/v1/providers/{provider}",
                                          json={"district_wide": True}, headers=admin)
                answer.raise_for_status()
        await asyncio.sleep(0.05)  # every trigger generated from now on happens after the entry was enabled

    async def _upload(self, package: bytes) -> None:
        admin = {"Authorization": "Bearer " + token(FILE_DISTRICT, ["district_admin"]),
                 "Content-Type": "application/zip"}
        async with httpx.AsyncClient(base_url=self.services["roster"].url, timeout=60) as client:
            answer = await client.post("/v1/imports", content=package, headers=admin)
            answer.raise_for_status()
            location = answer.headers["Location"]

            async def applied():
                body = (await client.get(location, headers=admin)).json()
                if body["status"] not in ("running", "applied"):
                    raise RuntimeError(f"the package's import ended {body['status']}: {body}")
                return body["status"] == "applied"

            await eventually(applied, timeout=300, what="the package's import")

    # -- the driver

    async def _publish(self, records: list[Record]) -> None:
        """Publish every record in its order, at the chosen rate, with one idempotent
        producer (its own retries add no copies); a header name that is not UTF-8 needs
        aiokafka's pure-Python batch builder, used for the whole run."""
        import aiokafka.producer.message_accumulator as accumulator
        import aiokafka.producer.producer as producing
        from aiokafka.record.default_records import _DefaultRecordBatchBuilderPy

        builder = accumulator.DefaultRecordBatchBuilder
        accumulator.DefaultRecordBatchBuilder = producing.DefaultRecordBatchBuilder = _DefaultRecordBatchBuilderPy
        producer = AIOKafkaProducer(bootstrap_servers=self.stack.backends.kafka, enable_idempotence=True, acks="all",
                                    linger_ms=10, max_request_size=2 * 1024 * 1024, request_timeout_ms=120_000)
        try:
            await producer.start()
            chunk = max(50, int(self.options.rate / 4))
            self.published = 0
            for at in range(0, len(records), chunk):
                began = time.monotonic()
                async with self.publishing:
                    sent = [await producer.send(self.stack.topic(r.topic), r.value, key=r.key, headers=r.headers)
                            for r in records[at:at + chunk]]
                    await asyncio.gather(*sent)
                self.published = min(len(records), at + chunk)
                await asyncio.sleep(max(0.0, chunk / self.options.rate - (time.monotonic() - began)))
        finally:
            await producer.stop()
            accumulator.DefaultRecordBatchBuilder = producing.DefaultRecordBatchBuilder = builder

    # -- the injector

    async def _inject(self, producer: asyncio.Task, total: int) -> None:
        """One fault at a time, each at a random moment while the events flow: spread over
        the publishing, then (when faults outlast it) while the services catch up."""
        for n, fault in enumerate(self.faults):
            goal = total * (n + self.rng.random()) / len(self.faults)
            while getattr(self, "published", 0) < goal and not producer.done():
                await asyncio.sleep(0.05)
            if producer.done() and producer.exception():
                raise producer.exception()
            await asyncio.sleep(self.rng.uniform(0.0, 1.0))
            await self._one(fault)
            self.say(f"{fault.kind}: recovered in {fault.recovery:.1f} s" if fault.recovery is not None
                     else f"{fault.kind}: NOT recovered within {self.options.recovery_timeout:.0f} s")

    async def _one(self, fault: Fault) -> None:
        if fault.kind.startswith("kill "):
            name = fault.kind.removeprefix("kill ")
            touched = [name]
            before = await self._committed_before([name])
            service = self.services[name]
            fault.injected_at = time.monotonic()
            service.proc.kill()  # SIGKILL
            service.proc.wait()
            service.start()
            fault.back_after = time.monotonic() - fault.injected_at
        elif fault.kind == "broker restart":
            touched = list(SERVICES)
            async with self.publishing:  # an outside producer waits for the broker
                before = await self._committed_before(CONSUMING)
                fault.injected_at = time.monotonic()
                await asyncio.to_thread(self.broker.stop)
                await asyncio.to_thread(self.broker.start)
                fault.back_after = time.monotonic() - fault.injected_at
        else:
            touched = list(SERVICES)
            before = await self._committed_before(CONSUMING)
            fault.injected_at = time.monotonic()
            await asyncio.to_thread(self.postgres.stop)
            await asyncio.sleep(self.rng.uniform(0.5, 2.0))  # down a moment, as a failover would be
            await asyncio.to_thread(self.postgres.start)
            fault.back_after = time.monotonic() - fault.injected_at
        fault.recovery = await self._recovered(touched, before, fault.injected_at)

    async def _recovered(self, touched: list[str], before: dict, since: float) -> float | None:
        deadline = since + self.options.recovery_timeout
        while time.monotonic() < deadline:
            if await self._all_ready(touched) and await self._consuming([s for s in touched if s in CONSUMING], before):
                return time.monotonic() - since
            await asyncio.sleep(0.25)
        self.notes.append(f"a fault touching {', '.join(touched)} was not recovered from within "
                          f"{self.options.recovery_timeout:.0f} s (see .caseflow/test-logs/f.*)")
        return None

    async def _all_ready(self, names: list[str]) -> bool:
        async with httpx.AsyncClient(timeout=2) as client:
            for name in names:
                service = self.services[name]
                if service.proc.poll() is not None:
                    self.notes.append(f"{name} exited with {service.proc.returncode}; started again")
                    service.start()
                    return False
                try:
                    if (await client.get(service.url + "/readyz")).status_code != 200:
                        return False
                except httpx.HTTPError:
                    return False
        return True

    async def _committed_before(self, names) -> dict[str, dict]:
        """The groups' offsets as a fault begins; the broker may be slow to answer just then."""
        for _ in range(60):
            try:
                return await self._committed(names)
            except Exception:  # noqa: BLE001 - e.g. no group coordinator yet: ask again
                await asyncio.sleep(1.0)
        return await self._committed(names)

    async def _committed(self, names) -> dict[str, dict]:
        """Each consumer group of these services: {group: {partition: committed offset}}."""
        admin = await self._admin()
        groups = [g[0] for g in await admin.list_consumer_groups()
                  if any(g[0].startswith(self.stack.topic(f"caseflow.{n}.")) for n in names)]
        return {g: {tp: meta.offset for tp, meta in (await admin.list_consumer_group_offsets(g)).items()}
                for g in groups}

    async def _consuming(self, names: list[str], before: dict) -> bool:
        """Each group of these services committed past where it was, or has nothing to read."""
        if not names:
            return True
        try:
            now = await self._committed(names)
            ends = await self._ends({tp for offsets in now.values() for tp in offsets})
        except Exception:  # noqa: BLE001 - the broker may still be coming back
            return False
        for group, offsets in now.items():
            moved = any(offset > before.get(group, {}).get(tp, -1) for tp, offset in offsets.items())
            caught_up = all(offset >= ends.get(tp, 0) for tp, offset in offsets.items())
            if not (moved or caught_up):
                return False
        return bool(now)

    async def _admin(self) -> AIOKafkaAdminClient:
        """One admin client and one group-less consumer for the whole run (they reconnect
        after a broker restart by themselves)."""
        if getattr(self, "_admin_client", None) is None:
            admin = AIOKafkaAdminClient(bootstrap_servers=self.stack.backends.kafka, request_timeout_ms=5000)
            await admin.start()
            self._admin_client = admin
        return self._admin_client

    async def _ends(self, partitions: set) -> dict:
        if getattr(self, "_offsets", None) is None:
            consumer = AIOKafkaConsumer(bootstrap_servers=self.stack.backends.kafka, request_timeout_ms=5000)
            await consumer.start()
            self._offsets = consumer
        return await self._offsets.end_offsets(list(partitions)) if partitions else {}

    async def _close_clients(self) -> None:
        for client, stop in ((getattr(self, "_admin_client", None), "close"), (getattr(self, "_offsets", None), "stop")):
            if client is not None:
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await getattr(client, stop)()
        self._admin_client = self._offsets = None

    async def _settle(self) -> bool:
        """Every group caught up and every outbox empty, three checks in a row."""
        deadline = time.monotonic() + self.options.settle_timeout
        quiet = 0
        while time.monotonic() < deadline:
            try:
                calm = await self._all_ready(list(SERVICES)) and await self._caught_up() and await self._outboxes_empty()
            except Exception:  # noqa: BLE001 - keep waiting
                calm = False
            quiet = quiet + 1 if calm else 0
            if quiet >= 3:
                return True
            await asyncio.sleep(1.0)
        return False

    async def _caught_up(self) -> bool:
        now = await self._committed(CONSUMING)
        ends = await self._ends({tp for offsets in now.values() for tp in offsets})
        return bool(now) and all(offset >= ends.get(tp, 0) for offsets in now.values() for tp, offset in offsets.items())

    async def _outboxes_empty(self) -> bool:
        for name in SERVICES:
            conn = await self.stack.db(name)
            try:
                if await conn.fetchval("SELECT count(*) FROM outbox"):
                    return False
            finally:
                await conn.close()
        return True


# ------------------------------------------------------------------------- the oracle


class Oracle:
    """What must hold, from the generated input alone; read from the services' databases
    and topics after the run (never by the services themselves)."""

    def __init__(self, stack: Stack, world: World) -> None:
        self.stack = stack
        self.world = world

    async def judge(self, options: Options, faults: list[Fault], settled: bool, seconds: float) -> Report:
        w = self.world
        checks = []
        roster, caseload, cases = [await self.stack.db(s) for s in CONSUMING]
        try:
            # Every good event reached its consumer's inbox, once.
            inboxes = {}
            for name, conn in (("roster", roster), ("caseload", caseload), ("cases", cases)):
                inboxes[name] = Counter(str(r[0]) for r in await conn.fetch("SELECT event_id FROM inbox"))
            for topic in (SIS_STUDENTS, SIS_STAFF, MANDATES, TRIGGERS):
                ids = {r.event_id for r in w.records if r.topic == topic and r.kind == "event"}
                seen = inboxes[CONSUMER_OF[topic]]
                checks.append((f"{topic} events in {CONSUMER_OF[topic]}'s inbox", len(ids),
                               len(ids & seen.keys()), len(ids - seen.keys()), 0, 0))

            # The roster holds each SIS student once, as the last event said; each staff member once.
            rows = await roster.fetch("SELECT source_id, family_name FROM students WHERE district_id = $1", DISTRICT)
            held = Counter(r["source_id"] for r in rows)
            names = {r["source_id"]: r["family_name"] for r in rows}
            stale = sum(1 for s, name in w.students.items() if s in names and names[s] != name)
            if stale:
                checks.append(("roster students not as their last event said", 0, stale, 0, 0, stale))
            checks.append(self._compare("roster students (SIS)", set(w.students), held))
            staff = Counter(r[0] for r in await roster.fetch("SELECT source_id FROM staff WHERE district_id = $1",
                                                              DISTRICT))
            checks.append(self._compare("roster staff (SIS)", w.staff, staff))

            # Caseload memberships, read by the students' SIS ids: exactly the expected pairs, once each.
            rows = await caseload.fetch(
                """SELECT s.district_id, s.source_id, m.owner_email FROM memberships m
                   JOIN students s ON s.student_id = m.student_id""")
            found = {d: Counter() for d in (DISTRICT, FILE_DISTRICT)}
            for r in rows:
                found.setdefault(r["district_id"], Counter())[(r["source_id"], r["owner_email"])] += 1
            checks.append(self._compare("caseload memberships: homerooms (file)", w.homeroom_pairs,
                                        found[FILE_DISTRICT]))
            checks.append(self._compare("caseload memberships: providers (mandates)", w.provider_pairs,
                                        found[DISTRICT]))
            published = await self._published_once("caseload.memberships.v1", ("student_id", "owner_email"),
                                                   "caseload.membership_added.v1")
            ids = {r["student_id"]: (r["district_id"], r["source_id"])
                   for r in await caseload.fetch("SELECT student_id::text, district_id, source_id FROM students")}
            by_pair = Counter()
            for (student_id, owner), n in published.items():
                district, source = ids.get(student_id, ("?", student_id))
                by_pair[(source, owner)] += n
            checks.append(self._compare("membership added events published", w.homeroom_pairs | w.provider_pairs,
                                        by_pair))

            # Cases: one per student with an enabled trigger the roster knows; none for the rest.
            rows = await cases.fetch(
                """SELECT s.source_id FROM cases c JOIN students s ON s.student_id = c.student_id
                   WHERE c.district_id = $1""", DISTRICT)
            opened = Counter(r[0] for r in rows)
            checks.append(self._compare("cases opened", w.cases_for, opened))
            published = await self._published_once("cases.v1", ("student_source_id",), "cases.case_opened.v1")
            checks.append(self._compare("CaseOpened events published", w.cases_for,
                                        Counter({k[0]: n for k, n in published.items()})))

            dead, unexpected = await self._dead_letters((roster, caseload, cases))
        finally:
            for conn in (roster, caseload, cases):
                await conn.close()
        redelivered = await self._redelivered()
        return Report(options, w, faults, checks, dead, unexpected, redelivered, settled, seconds)

    @staticmethod
    def _compare(what: str, expected: set, found: Counter) -> tuple:
        lost = sum(1 for k in expected if not found.get(k))
        duplicated = sum(n - 1 for k, n in found.items() if k in expected and n > 1)
        unexpected = sum(n for k, n in found.items() if k not in expected)
        return what, len(expected), sum(1 for k in expected if found.get(k)), lost, duplicated, unexpected

    async def _read(self, topic: str) -> list:
        return await self.stack.records(topic)

    async def _published_once(self, topic: str, fields: tuple[str, ...], event_type: str) -> Counter:
        """Distinct events of a type on a topic, counted by the entity they are about (a
        record sent twice with one event id, as an at-least-once relay may, counts once)."""
        seen: dict[str, tuple] = {}
        for r in await self._read(topic):
            body = json.loads(r.value)
            if body.get("event_type") == event_type:
                seen[body["event_id"]] = tuple(str(body[f]) for f in fields)
        return Counter(seen.values())

    async def _redelivered(self) -> Counter:
        """Records published more than once with one event id (the relay is at least once:
        consumers deduplicate), per topic: reported, not a defect."""
        out = Counter()
        for topic in ("roster.students.v1", "roster.staff.v1", "roster.classes.v1", "roster.enrollments.v1",
                      "caseload.memberships.v1", "cases.v1"):
            ids = Counter(dict(r.headers).get("ce_id") for r in await self._read(topic))
            out[topic] = sum(n - 1 for n in ids.values() if n > 1)
        return out

    async def _dead_letters(self, conns) -> tuple[dict, list[str]]:
        copies: dict[str, set] = defaultdict(set)
        records: Counter = Counter()
        unexpected = []
        for name in TOPICS:
            for r in await self._read(name + ".DLT"):
                headers = {k: v for k, v in r.headers}
                key = r.key.decode(errors="replace") if r.key else None
                if key in self.world.poison and name in (SIS_STUDENTS, MANDATES, TRIGGERS):
                    copies[key].add((headers.get("dlt_partition"), headers.get("dlt_offset")))
                    records[key] += 1
                else:
                    unexpected.append(f"{name}.DLT key={key!r} reason={headers.get('dlt_reason', b'').decode()!r}")
        set_aside = Counter()
        for conn in conns:
            for r in await conn.fetch("SELECT key, reason FROM outbox_refused WHERE key IS NOT NULL"):
                key = bytes(r["key"]).decode(errors="replace")
                if key in self.world.poison:
                    set_aside[key] += 1
        out = {}
        for kind in POISON_KINDS:
            keys = [k for k, v in self.world.poison.items() if v == kind]
            out[kind] = {"injected": len(keys),
                         "dead-lettered": sum(1 for k in keys if len(copies[k]) == 1),
                         "missing": sum(1 for k in keys if not copies[k]),
                         "twice": sum(1 for k in keys if len(copies[k]) > 1),
                         "extra copies": sum(max(0, records[k] - 1) for k in keys),
                         "set aside": sum(set_aside[k] for k in keys)}
        return out, unexpected


# ------------------------------------------------------------------------- the table


def table(report: Report) -> str:
    o, w = report.options, report.world
    lines = [f"fault suite: seed {o.seed}, {report.seconds:,.0f} s, {os.cpu_count()} cores"
             + ("" if report.settled else "   (DID NOT SETTLE)"),
             f"  events published        {w.good:>8,}  (+ {o.duplicate_count:,} duplicates, {len(w.poison)} poison)",
             f"  roster file             {w.file_rows['students']:>8,}  students, {w.file_rows['teachers']} homeroom "
             "teachers, one package",
             "",
             f"  {'fault':<28}{'injected':>9}{'recovered':>10}{'p50 s':>8}{'max s':>8}"
             f"{'  (of which restarting it: p50':>32}{'max)':>6}"]
    kinds = defaultdict(list)
    for f in report.faults:
        kinds[f.kind].append(f)
    for kind in sorted(kinds):
        times = [f.recovery for f in kinds[kind] if f.recovery is not None]
        p50 = f"{statistics.median(times):.1f}" if times else "-"
        top = f"{max(times):.1f}" if times else "-"
        back = [f.back_after for f in kinds[kind]]
        lines.append(f"  {kind:<28}{len(kinds[kind]):>9}{len(times):>10}{p50:>8}{top:>8}"
                     f"{statistics.median(back):>32.1f}{max(back):>6.1f}")
    every = [f.recovery for f in report.faults if f.recovery is not None]
    if every:
        lines.append(f"  {'every fault':<28}{len(report.faults):>9}{len(every):>10}"
                     f"{statistics.median(every):>8.1f}{max(every):>8.1f}")
    lines.append(f"  {'duplicates (same ce_id)':<28}{o.duplicate_count:>9}")
    for kind, d in report.dead_letters.items():
        lines.append(f"  {'poison: ' + kind:<28}{d['injected']:>9}")
    lines += ["", f"  {'what must hold':<46}{'expected':>9}{'found':>9}{'lost':>6}{'dup':>6}{'extra':>6}"]
    for what, expected, found, lost, dup, extra in report.checks:
        lines.append(f"  {what:<46}{expected:>9,}{found:>9,}{lost:>6}{dup:>6}{extra:>6}")
    lines += ["", f"  {'dead letters':<28}{'injected':>9}{'in .DLT':>9}{'missing':>9}{'twice':>7}"
                  f"{'copies+':>8}{'set aside':>10}"]
    for kind, d in report.dead_letters.items():
        lines.append(f"  {kind:<28}{d['injected']:>9}{d['dead-lettered']:>9}{d['missing']:>9}{d['twice']:>7}"
                     f"{d['extra copies']:>8}{d['set aside']:>10}")
    for u in report.unexpected_dead_letters[:10]:
        lines.append(f"  unexpected dead letter: {u}")
    if len(report.unexpected_dead_letters) > 10:
        lines.append(f"  ... and {len(report.unexpected_dead_letters) - 10} more unexpected dead letters")
    lines += ["", f"  lost {report.lost}   duplicated {report.duplicated}   unexpected {report.unexpected}   "
                  f"dead-letter topics hold exactly the poison: {'yes' if report.dead_letters_match else 'NO'}   "
                  f"faults not recovered from: {len(report.unrecovered)}"]
    again = ", ".join(f"{t} {n}" for t, n in report.redelivered.items() if n)
    lines.append(f"  records the relays sent again with the same event id (at least once; deduplicated): "
                 f"{again or 'none'}")
    lines += [f"  note: {n}" for n in report.notes]
    return "\n".join(lines)


async def run(options: Options) -> Report:
    return await Run(options).execute()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = Options()
    parser.add_argument("--events", type=int, default=d.events)
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--kills-per-service", type=int, default=d.kills_per_service)
    parser.add_argument("--broker-restarts", type=int, default=d.broker_restarts)
    parser.add_argument("--postgres-restarts", type=int, default=d.postgres_restarts)
    parser.add_argument("--duplicates", type=int, default=None, help="default: 1%% of --events")
    parser.add_argument("--poison-per-kind", type=int, default=d.poison_per_kind)
    parser.add_argument("--oversized-bytes", type=int, default=d.oversized_bytes)
    parser.add_argument("--rate", type=float, default=d.rate, help="events/s the driver publishes at")
    parser.add_argument("--home", type=Path, default=d.home, help="the suite's broker and PostgreSQL state")
    parser.add_argument("--kafka-port", type=int, default=d.kafka_port)
    parser.add_argument("--kafka-controller-port", type=int, default=d.kafka_controller_port)
    parser.add_argument("--recovery-timeout", type=float, default=d.recovery_timeout)
    parser.add_argument("--settle-timeout", type=float, default=d.settle_timeout)
    parser.add_argument("--log-level", default=d.log_level, help="the services' log level")
    args = parser.parse_args()
    options = Options(**{k: v for k, v in vars(args).items()})
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # the driver's own reconnects during a restart
    report = asyncio.run(run(options))
    print(table(report))
    ok = report.lost == 0 and report.duplicated == 0 and report.unexpected == 0 and report.dead_letters_match \
        and not report.unrecovered
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
