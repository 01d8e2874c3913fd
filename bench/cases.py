"""The cases service: trigger throughput and latency to CaseOpened, and the dashboard and
search under load, each beside a raw baseline measured in the same run.

    python bench/cases.py [--only throughput|dashboard] [--seconds 60] [--rate 2000]
                          [--students 200000] [--join-share 0.1] [--kinds mixed|form]
                          [--drain 300] [--cases 500000] [--query-seconds 15]
                          [--concurrency 20] [--http-port-base PORT] [--keep]

Each part runs the real service (python -m services.cases, every guarantee on: inbox,
per-student locks, outbox relay; default consumer batch size) on the real broker and
database, under its own topic prefix and database (dropped at the end unless --keep).

1. throughput: one district with every dictionary entry enabled (PUT /v1/dictionary/<kind>
   as a district admin) and --students students (default 200,000) seeded through
   roster.students.v1 (StudentEnrolled); the bench waits until the service's projection
   holds them all and its consumer group has committed them. Then --rate triggers per second
   (default 2,000) for --seconds (default 60) on cases.triggers.v1 (encoded before the
   load), each for a distinct student with no case (opens one) except a --join-share
   (default 10%) for students already sent a trigger (joins the open case, publishes
   nothing). --kinds mixed (default): the seven trigger types interleaved, as they arrive
   from several systems; --kinds form: FormSubmitted only. Each CaseOpened on cases.v1 is
   matched to its trigger by source_event_id (its correlation_id checked) and timed from
   just before the trigger's send to (a) the CaseOpened record's Kafka timestamp (the relay
   producer's create time, ~ its publish) and (b) the moment a reader in this process sees
   it. Prints the achieved input rate, the processed rate (triggers handled / time from the
   first send until the service's consumer group has committed them all, or until --drain
   seconds after the load), the consumer lag, the service's own batch figures (/metrics),
   p50/p95/p99/max and the p99 per 10 s of sending.
   Baseline: the same kind of trigger records, same rate, produced to a bare 12-partition
   topic and read back by a consumer in this process (Kafka alone, (b) only).
   Targets (issue 14): >= 5,000 triggers/s, p99 < 500 ms (trigger to CaseOpened).
2. dashboard: --cases cases (default 500,000; one student each; 80% open) bulk-loaded with
   INSERT ... SELECT generate_series straight into the service's students, cases and tasks
   tables (the counters the dashboard reads are kept by the tables' triggers; 1,800
   schools, 3 teams per school with a leader each, 8 case managers per school, opened over
   the last 52 weeks; one task per case, 40% open, 10% of all overdue), then VACUUM
   ANALYZE. --concurrency (default 20) clients call, for --query-seconds each:
   GET /v1/dashboard as a district admin (the whole district) and as a school-scoped caller
   (schools claim of one school, manage_cases, no district_admin); GET /v1/cases by
   case_number, by person (family name prefix) and by team_leader (district admin), with
   values rotating over samples from the data. Prints p50/p99 and requests/s per query.
   Then each SQL statement those requests run (recorded from services.cases.store) is run
   10 times on one connection, with the settings the store gives its transaction, and
   EXPLAIN (ANALYZE, BUFFERS) is printed for the slow ones.
   Baselines: GET /healthz with the same concurrency in the same run, and the school-scoped
   dashboard. Targets (issue 14): dashboard p99 < 100 ms at 500,000 cases, < 200 ms at
   2,000,000.

This machine is noisy (and the load generator shares its cores): compare ratios, repeat, and
read the medians; nothing here asserts a time.

Backends: KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL if set, else the real Apache Kafka from
deploy/local/kafka.sh and an embedded PostgreSQL in .caseflow/bench-cases-postgres (its own
data folder). Service logs: .caseflow/bench-logs/.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import statistics
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (  # noqa: E402
    SECRET,
    Backends,
    Http1,
    Load,
    Ports,
    Service,
    System,
    add_port_flag,
    backends,
    create_topic,
    drive,
    end_offsets,
    hammer,
    latency_line,
    load_average,
    pct,
    produce,
    server_cpu_seconds,
    subscriptions,
    tail_reader,
)

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
from services.kit import db  # noqa: E402
from services.kit.auth import mint  # noqa: E402
from services.kit.outbox import message_for  # noqa: E402
from services.roster.domain import student_id_for  # noqa: E402

SOURCE = "bench.cases"
DISTRICT = "benchdist"
SCHOOLS = 1_800
KINDS = ("submit_form", "create_plan", "assign_task", "schedule_meeting", "conduct_plan_review", "submit_file")
ADMIN_EMAIL = "admin@bench.example.org"
TRIGGERS_CONSUMER = next(s.consumer for s in subscriptions("cases") if s.topic is CASE_TRIGGERS)


def bearer(email: str, roles: list[str], schools: list[str]) -> dict[str, str]:
    return {"Authorization": "Bearer " + mint(SECRET, email=email, district_id=DISTRICT, schools=schools, roles=roles)}


ADMIN = bearer(ADMIN_EMAIL, ["district_admin", "manage_cases"], [])


async def batch_stats(service: Service, topic: str) -> str:
    """The service's own account of its trigger batches, from /metrics."""
    values: dict[str, float] = {}
    for line in (await service.metrics()).splitlines():
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


async def seed_students(system: System, service: Service, n: int) -> float:
    """StudentEnrolled for n students on roster.students.v1; wait until the projection has
    them and the service's group has committed them. Seconds taken."""
    started = time.perf_counter()
    await produce(system.kafka, (
        StudentEnrolled(district_id=DISTRICT, producer=SOURCE, student_id=student_id_for(DISTRICT, source_id(j)),
                        source_id=source_id(j), school_id=school_of(j), grade=f"{j % 12 + 1:02d}",
                        given_name=GIVEN[j % len(GIVEN)], family_name=family_of(j)) for j in range(n)), SOURCE)
    produced = time.perf_counter() - started
    conn = await asyncpg.connect(system.dsn("cases"))
    try:
        async with system.lag("cases", ROSTER_STUDENTS) as lag:
            deadline = time.monotonic() + 1800
            while (have := await conn.fetchval("SELECT count(*) FROM students")) < n or await lag():
                service.check_alive()
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the projection has {have:,} of {n:,} students after 1800 s, "
                                       f"lag {await lag():,}")
                await asyncio.sleep(0.5)
    finally:
        await conn.close()
    took = time.perf_counter() - started
    print(f"  seeded {n:,} students (StudentEnrolled): produced in {produced:.1f} s, in the service's projection "
          f"after {took:.1f} s ({n / took:,.0f}/s)", flush=True)
    return took


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


def sender(topic: str, messages: list[Outgoing], sent_at: dict[str, float]):
    """make() for drive(): the next pre-encoded trigger, its send time noted."""
    feed = iter(messages)

    def make():
        m = next(feed)
        sent_at[m.event_id] = time.time()
        return topic, m.key, m.payload, m.headers
    return make


async def baseline_round_trip(system: System, messages: list[Outgoing], rate: float,
                              seconds: float) -> tuple[list[float], int, float]:
    """The same trigger records at the same rate through Kafka alone: produced to a bare
    12-partition topic, read back by a consumer in this process."""
    topic = system.topic("bench.roundtrip.v1")
    await create_topic(system.backends.kafka, topic, CASE_TRIGGERS.partitions)
    consumer = await tail_reader(system.backends.kafka, topic, CASE_TRIGGERS.partitions)
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
        sent, took = await drive(system.kafka, sender(topic, messages, sent_at), rate, seconds)
        stop.set()
        await asyncio.wait_for(reader, 30)
    finally:
        reader.cancel()
        await consumer.stop()
    return seen, sent, took


async def throughput(backends_: Backends, students: int, rate: float, seconds: float, join_share: float,
                     kinds: str, drain: float, *, ports: Ports | None = None, keep: bool = False) -> dict:
    async with System.new(backends_, "bk", keep=keep, ports=ports) as system:
        print(f"cases throughput bench, {os.cpu_count()} cores, prefix {system.prefix}, trigger kinds {kinds}",
              flush=True)
        await system.prepare("cases")
        service = await system.start("cases")
        async with httpx.AsyncClient(base_url=service.url, headers=ADMIN, timeout=30) as client:
            for kind in KINDS:
                (await client.put(f"/v1/dictionary/{kind}", json={"enabled": True})).raise_for_status()
        print(f"  service ready after {service.ready_after:.1f} s; dictionary: all {len(KINDS)} entries enabled",
              flush=True)
        await seed_students(system, service, students)

        total = int(rate * seconds) + 1000
        if total * (1 - join_share) > students:
            print(f"  WARNING: ~{int(total * (1 - join_share)):,} fresh students needed, {students:,} seeded: the "
                  f"rest of the triggers join open cases (use --students)")
        base_messages = TriggerMix(students, join_share, kinds, seed=7).encoded(total, system.kafka)
        base, base_sent, base_took = await baseline_round_trip(system, base_messages, rate, seconds)
        del base_messages
        mix = TriggerMix(students, join_share, kinds)
        messages = mix.encoded(total, system.kafka)

        consumer = await tail_reader(backends_.kafka, system.topic(CASES.name), CASES.partitions)
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

        async def watch_lag(lag):
            while not stop.is_set():
                lag_samples.append(await lag())
                await asyncio.sleep(1.0)

        async with system.lag("cases", CASE_TRIGGERS) as lag:
            reader = asyncio.create_task(read())
            watcher = asyncio.create_task(watch_lag(lag))
            try:
                cpu_before = service.cpu_seconds(), await server_cpu_seconds(system.dsn("cases"))
                started_wall = time.time()
                sent, took = await drive(system.kafka, sender(system.topic(CASE_TRIGGERS.name), messages, sent_at),
                                         rate, seconds)
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
                cpu_after = service.cpu_seconds(), await server_cpu_seconds(system.dsn("cases"))
                opening = sum(1 for m in messages[:sent] if m.opens)
                deadline = time.time() + (15 if caught_up else 2)
                while len(matched) < opening and time.time() < deadline:  # the last CaseOpened published
                    await asyncio.sleep(0.1)
                stopped_at = time.time() - started_wall
            finally:
                reader.cancel()
                watcher.cancel()
                await consumer.stop()

        conn = await asyncpg.connect(system.dsn("cases"))
        try:
            counts = await conn.fetchrow(
                """SELECT (SELECT count(*) FROM cases) AS cases, (SELECT count(*) FROM timeline) AS timeline,
                          (SELECT count(*) FROM waiting_triggers) AS waiting, (SELECT count(*) FROM outbox) AS outbox,
                          (SELECT count(*) FROM inbox WHERE consumer = $1) AS handled""", TRIGGERS_CONSUMER)
        finally:
            await conn.close()
        dead = sum((await end_offsets(backends_.kafka, [system.topic(CASE_TRIGGERS.dead_letter)])).values())
        batches = await batch_stats(service, system.topic(CASE_TRIGGERS.name))
        cpu = service.cpu_seconds()

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
    service_us, postgres_us = ((b - a) / max(handled, 1) * 1e6 for a, b in zip(cpu_before, cpu_after, strict=True))
    print(f"      CPU per trigger over the load and its drain: the service {service_us:,.0f} us, PostgreSQL (the "
          f"whole server) {postgres_us:,.0f} us; load average {' '.join(f'{v:.2f}' for v in load_average())}")
    if mix.ran_out:
        print("      (fresh students ran out: later triggers all joined open cases)")
    rate_met = processed_rate >= 0.95 * rate and sent / took >= 0.95 * rate and caught_up
    print(f"      targets: {rate:,.0f}/s sustained: {'met' if rate_met else 'NOT met'}; p99 < 500 ms (to publish): "
          f"{'met' if pct(lat_pub, 99) < 0.5 and not missing else 'NOT met'}", flush=True)
    return {"offered": rate, "input_rate": sent / took, "processed_rate": processed_rate, "sent": sent,
            "handled": handled, "caught_up": caught_up is not None, "missing": missing, "dead_lettered": dead,
            "p99_published": pct(lat_pub, 99), "p99_seen": pct(seen, 99), "p50_seen": pct(seen, 50),
            "baseline_p99": pct(base, 99), "baseline_rate": base_sent / base_took, "service_cpu_seconds": cpu,
            "service_us_per_trigger": service_us, "postgres_us_per_trigger": postgres_us}


# ---------------------------------------------------------------------------- 2. dashboard

LOAD_SQL = [
    # Students: one per case, school j % 1800, family names shared by ~25 students (family_of).
    """INSERT INTO students (student_id, district_id, source_id, school_id, school_ids, grade, given_name, family_name,
                             status, as_of)
       SELECT md5('s' || j)::uuid, $1, 'S' || lpad(j::text, 7, '0'), 'K' || lpad((j % 1800)::text, 4, '0'),
              ARRAY['K' || lpad((j % 1800)::text, 4, '0')],
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
    """INSERT INTO tasks (task_id, district_id, student_id, school_id, case_id, title, assignee_email, due_date,
                          status, assigned_by, assigned_at, completed_at, completed_by)
       SELECT md5('t' || j)::uuid, $1, md5('s' || j)::uuid, 'K' || lpad((j % 1800)::text, 4, '0'), md5('c' || j)::uuid,
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


async def bulk_load(dsn: str, n: int) -> tuple[dict, dict]:
    """n cases straight into the tables (see LOAD_SQL); (search samples, counts)."""
    conn = await asyncpg.connect(dsn, command_timeout=3600)
    try:
        started = time.perf_counter()
        for sql in LOAD_SQL:
            await conn.execute(sql, DISTRICT, *([n] if "$2" in sql else []))
        loaded = time.perf_counter() - started
        await conn.execute("VACUUM ANALYZE")  # the counters the triggers filled, too
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
    return samples, dict(facts)


class Recorder:
    """Stands in for an asyncpg connection: records each statement services.cases.store runs
    (and the settings it gives its transaction), running them on the real connection."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.statements: list[tuple[str, tuple]] = []
        self.settings: list[str] = []

    def transaction(self):
        return self.conn.transaction()

    async def execute(self, sql, *args):
        if sql.lstrip().upper().startswith("SET "):
            self.settings.append(sql)
        else:
            self.statements.append((sql, args))
        return await self.conn.execute(sql, *args)

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
            print(f"    {label}:" + (f" ({'; '.join(recorder.settings)})" if recorder.settings else ""))
            for sql, args in recorder.statements:
                async with conn.transaction():  # as the store runs it: in a transaction, with its settings
                    for setting in recorder.settings:
                        await conn.execute(setting)
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
                if max(early, late) > slow_ms and late > 2 * early:  # the cache's generic plan is the slow one
                    print("          -- its generic plan (what runs 6-10 got):")
                    print_plan(await explain_generic(conn, stmt, sql, args))
    finally:
        await conn.close()


async def dashboard_bench(backends_: Backends, n: int, seconds: float, concurrency: int, *, search: bool = True,
                          explain: bool = True, ports: Ports | None = None, keep: bool = False) -> dict:
    """/healthz, the dashboard (district and school-scoped) and, with `search`, the case
    search, each under `concurrency` clients for `seconds`; with `explain`, their SQL."""
    async with System.new(backends_, "bk", keep=keep, ports=ports) as system:
        print(f"cases dashboard and search bench, {n:,} cases, {os.cpu_count()} cores, prefix {system.prefix}",
              flush=True)
        await system.prepare("cases")
        service = await system.start("cases")  # applies the migrations; its consumers have nothing to read
        samples, facts = await bulk_load(system.dsn("cases"), n)
        school = "K0042"
        school_caller = bearer("principal.k0042@bench.example.org", ["manage_cases"], [school])
        conns = [await Http1(service.port).open() for _ in range(concurrency)]
        rows: list[tuple[str, Load]] = []
        answers: dict[str, bytes] = {}
        errors: dict[str, list] = {}
        try:
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
            ]
            if search:
                plan += [
                    ("GET /v1/cases?case_number=", call("/v1/cases", ADMIN, "case_number")),
                    ("GET /v1/cases?person= (family name)", call("/v1/cases", ADMIN, "person")),
                    ("GET /v1/cases?team_leader=", call("/v1/cases", ADMIN, "team_leader")),
                ]
            for label, one in plan:
                rows.append((label, await hammer(one, seconds, service.cpu_seconds, concurrency)))
                print(f"    ... {label}: {len(rows[-1][1].latencies):,} requests", flush=True)
            empty = b'{"open_cases": 0, "overdue_tasks": {"count": 0}, "opened_by_week": []}'  # none answered 200
            board = json.loads(answers.get("/v1/dashboard", empty))
            school_board = json.loads(answers.get("/v1/dashboard school", empty))
            found = {}
            if search:
                for what in ("case_number", "person", "team_leader"):
                    status, body = await conns[0].get(f"/v1/cases?{urlencode({what: samples[what][0]})}", ADMIN)
                    found[what] = len(json.loads(body)["items"]) if status == 200 else f"HTTP {status}"
        finally:
            for conn in conns:
                conn.close()

        print(f"  {concurrency} concurrent clients (bare HTTP/1.1 keep-alive), {seconds:.0f} s each; the service's "
              f"pool has 10 connections:")
        floor = statistics.median(rows[0][1].latencies) if rows[0][1].latencies else None
        for label, load in rows:
            lats = load.latencies
            ratio = f"  p50 {statistics.median(lats) / floor:6.1f}x healthz" if floor and lats else ""
            print(f"  {label:46s} p50 {load.p(50) * 1000:8.1f}  p99 {load.p(99) * 1000:8.1f} ms  "
                  f"{load.rate:>7,.1f} req/s" + ratio
                  + f"  service CPU {load.cpu / max(len(lats), 1) * 1000:6.2f} ms/req"
                  + (f"  {load.failures} FAILED" if load.failures else ""))
        print(f"      district board: {board['open_cases']:,} open cases, {board['overdue_tasks']['count']:,} overdue "
              f"tasks, {len(board['opened_by_week'])} week x kind rows; school board: {school_board['open_cases']:,} "
              f"open, {school_board['overdue_tasks']['count']:,} overdue"
              + ("; search hits (first value): " + ", ".join(f"{k} {v}" for k, v in found.items()) if found else ""))
        for what, (count, body) in errors.items():
            print(f"      FAILED: {count:,} x {what}: {body!r}")
        goal = 0.1 if n <= 500_000 else 0.2
        district, school_load = rows[1][1], rows[2][1]
        worst = max(district.p(99), school_load.p(99))
        print(f"      target p99 < {goal * 1000:.0f} ms (dashboard): {'met' if worst < goal else 'NOT met'}",
              flush=True)
        if explain:
            await explain_statements(system.dsn("cases"), school, samples, slow_ms=20.0)
    return {"cases": facts["cases"], "open": facts["open"], "p99": district.p(99), "p50": district.p(50),
            "failures": district.failures + school_load.failures, "school_p99": school_load.p(99),
            "healthz_p99": rows[0][1].p(99), "open_on_board": board["open_cases"]}


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
    add_port_flag(parser)
    args = parser.parse_args()
    parts = [args.only] if args.only else ["throughput", "dashboard"]
    ports = Ports(args.http_port_base)
    with ExitStack() as stack:
        b = backends(stack, "bench-cases-postgres", {"shared_buffers": "1GB", "max_wal_size": "8GB",
                                                      "maintenance_work_mem": "1GB"})
        if "throughput" in parts:
            await throughput(b, args.students, args.rate, args.seconds, args.join_share, args.kinds, args.drain,
                             ports=ports, keep=args.keep)
        if "dashboard" in parts:
            await dashboard_bench(b, args.cases, args.query_seconds, args.concurrency, ports=ports, keep=args.keep)


if __name__ == "__main__":
    asyncio.run(main())
