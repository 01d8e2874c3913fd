"""Scale-out: caseload and cases with 1 and 3 instances in one consumer group, beside a raw
baseline in the same run, then 3 instances with one SIGKILLed mid-load.

    python bench/scale_out.py [--service caseload|cases|both] [--events 20000] [--batch 2000]
                              [--kill-at 0.3] [--session-timeout-ms 10000] [--http-port-base PORT]
                              [--keep]

Each service runs as real processes (python -m services.<name>, every guarantee on: inbox,
outbox relay with one leader, offsets committed after the database commit), several
instances side by side: own HTTP ports, one database, the same consumer groups. The loads
and their checks are tests/scale_out.py's (the integration test's):

- caseload: --events grade-07 students are seeded (StudentEnrolled) with each round's
  sections (one per 30 students) and their teachers, then ANALYZE (as autovacuum would); each round enrols every student in a section of the round
  (--events EnrollmentAdded on roster.enrollments.v1, 12 partitions): one membership each.
- cases: every trigger entry enabled; each round's --events students are seeded, then one
  trigger each (cases.triggers.v1, 12 partitions: forms, plans, tasks): one case each.

Rounds: (1) one instance; (2) three instances (two more started, the group settled with
three before the load); (3) the same three, the outbox relay's leader SIGKILLed once
--kill-at of the round is committed. Each round's load is produced while the instances run.

Throughput is the consumer group's: records committed / time, from the first commit of the
round seen (sampled every 0.05 s from the group's committed offsets, so the first batch is
not counted) to the last. The raw baseline reads exactly the same records (same partitions,
same offsets) in a group of 1 and of 3 bare aiokafka consumers, each its own process,
reading once the group has settled with all of them (as the services' rounds start): getmany +
COPY into a table + commit, no logic. Also printed: the time from the round's first
send until every effect is in the database and published (the outbox empty), which includes
the single relay.

The kill: from the SIGKILL to (a) the group rebalanced (Stable, two members, all partitions
assigned), (b) the first commit, by a survivor, on each partition the killed instance held
(its takeover; the killed member is the one missing after the rebalance), (c) a survivor's
relay leading. A killed member is only noticed when its session times out
(KAFKA_SESSION_TIMEOUT_MS, default 10 s; the broker accepts 6-1800 s by default, its
group.min/max.session.timeout.ms), then the survivors rejoin at their next heartbeat
(KAFKA_HEARTBEAT_INTERVAL_MS, 3 s). Then every effect of the three rounds is checked: none
missing, none twice (database rows, change feed or timeline, published events by event id);
records published again with the same event id (the killed relay's unconfirmed batch) are
counted apart: consumers' inboxes absorb them.

This machine is noisy (2 cores shared by the instances, the broker, PostgreSQL, the load
generator and other work): compare ratios, repeat. Nothing here asserts a time.

Backends: KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL if set, else the real Apache Kafka from
deploy/local/kafka.sh (KAFKA_PORT, KAFKA_CONTROLLER_PORT) and an embedded PostgreSQL in
.caseflow/bench-scale-postgres. Topics and databases are dropped at the end unless --keep.
Service logs: .caseflow/bench-logs/<prefix><service>-<port>.log.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import ROOT, Backends, Ports, Service, System, add_port_flag, backends, eventually  # noqa: E402

import asyncpg  # noqa: E402
from aiokafka import AIOKafkaConsumer, TopicPartition  # noqa: E402
from aiokafka.structs import OffsetAndMetadata  # noqa: E402

from contracts.topics import CASE_TRIGGERS, ROSTER_ENROLLMENTS  # noqa: E402
from tests.scale_out import (  # noqa: E402
    CASELOAD_GROUP,
    CASES_GROUP,
    CaseloadLoad,
    CasesLoad,
    GroupWatch,
    produce,
    relay_leader,
)
from tests.support import token  # noqa: E402

ROUNDS = 3


# ---------------------------------------------------------------------------- measuring a group


class Sampler:
    """The group's committed offsets, sampled every 0.05 s from a start."""

    def __init__(self, group: GroupWatch) -> None:
        self.group = group
        self.samples: list[tuple[float, dict[int, int]]] = []
        self._task: asyncio.Task | None = None

    async def __aenter__(self) -> Sampler:
        self.start = await self.group.committed()

        async def sample():
            while True:
                self.samples.append((time.monotonic(), await self.group.committed()))
                await asyncio.sleep(0.05)

        self._task = asyncio.create_task(sample())
        return self

    async def __aexit__(self, *exc) -> None:
        self._task.cancel()

    async def until(self, ends: dict[int, int], timeout: float, check=None) -> None:
        deadline = time.monotonic() + timeout
        while not self.samples or any(self.samples[-1][1][p] < ends[p] for p in ends):
            if check:
                check()
            if time.monotonic() > deadline:
                raise RuntimeError(f"the group has not consumed everything after {timeout:.0f} s")
            await asyncio.sleep(0.1)

    def rate(self) -> float:
        """Records/s from the first sample past the start to the last one's commit."""
        total = lambda c: sum(c.values())  # noqa: E731
        start = total(self.start)
        first = next((t, total(c)) for t, c in self.samples if total(c) > start)
        last = next((t, total(c)) for t, c in self.samples if total(c) == total(self.samples[-1][1]))
        if last[0] <= first[0]:
            return float("nan")  # done within one sample: too few events to time (--events)
        return (last[1] - first[1]) / (last[0] - first[0])

    def first_commit_after(self, t0: float, partition: int, at_kill: int) -> float | None:
        for t, c in self.samples:
            if t >= t0 and c[partition] > at_kill:
                return t - t0
        return None


async def raw_group(stack: System, topic: str, start: dict[int, int], ends: dict[int, int], members: int,
                    batch: int) -> float:
    """A group of bare aiokafka consumers (each its own process) reading exactly the records
    between start and ends: getmany + COPY + commit. Records/s as the services' rounds."""
    group = f"raw-{uuid.uuid4().hex[:6]}"
    kafka = stack.kafka_settings
    name = kafka.topic(topic)
    seed = AIOKafkaConsumer(group_id=kafka.topic(group), enable_auto_commit=False, **kafka.client_options())
    await seed.start()
    try:
        parts = [TopicPartition(name, p) for p in start]
        seed.assign(parts)
        await seed.commit({tp: OffsetAndMetadata(start[tp.partition], "") for tp in parts})
    finally:
        await seed.stop()
    dsn = await stack.database("raw")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    go = ROOT / ".caseflow" / f"bench-scale-go-{group}"
    procs = [subprocess.Popen([sys.executable, __file__, "--raw-member", name, kafka.topic(group), dsn,
                               kafka.bootstrap_servers, str(batch), str(go)], env=env, cwd=ROOT)
             for _ in range(members)]
    try:
        from contracts.topics import TOPICS

        async with GroupWatch(kafka, group, TOPICS[topic]) as watch:
            # As for the services: the members read once the group has settled with all of them.
            await eventually(lambda: watch.settled_with(members), 120, what=f"{members} raw members")
            async with Sampler(watch) as sampler:
                go.touch()
                sampler.start = dict(start)
                await sampler.until(ends, 600)
                return sampler.rate()
    finally:
        go.unlink(missing_ok=True)
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(30)


async def raw_member(topic: str, group: str, dsn: str, servers: str, batch: int, go: Path) -> None:
    conn = await asyncpg.connect(dsn)
    await conn.execute("CREATE TABLE IF NOT EXISTS raw_baseline (k bytea, v bytea)")
    consumer = AIOKafkaConsumer(topic, group_id=group, bootstrap_servers=servers, enable_auto_commit=False,
                                auto_offset_reset="earliest", max_partition_fetch_bytes=4 * 1024 * 1024)
    await consumer.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    try:
        while not go.exists() and not stop.is_set():  # joined (in the background); read when told
            await asyncio.sleep(0.02)
        while not stop.is_set():
            records = [r for rs in (await consumer.getmany(timeout_ms=100, max_records=batch)).values() for r in rs]
            if records:
                async with conn.transaction():
                    await conn.copy_records_to_table("raw_baseline", records=[(r.key, r.value) for r in records])
                await consumer.commit()
    finally:
        await consumer.stop()
        await conn.close()


# ---------------------------------------------------------------------------- the service under test


@dataclass
class Workload:
    """What differs between caseload and cases: the load, its topic and group, what to wait for."""

    service: str
    group: str
    topic: object
    load: CaseloadLoad | CasesLoad

    async def setup(self, stack: System, first: Service, conn: asyncpg.Connection, n: int) -> None:
        kafka = stack.kafka_settings
        started = time.perf_counter()
        if isinstance(self.load, CaseloadLoad):
            await produce(kafka, self.load.people())

            async def seeded():
                return await conn.fetchval("SELECT count(*) FROM students WHERE district_id = $1",
                                           self.load.district) == n
        else:
            await self.load.enable_dictionary(first.url, token(self.load.district, ["district_admin"]))
            await produce(kafka, [e for r in range(ROUNDS) for e in self.load.seed(r)])

            async def seeded():
                return await self.load.seeded(conn) == n * ROUNDS
        await eventually(seeded, 1800, interval=0.5, what="the seeded students")
        # A service in steady state has had its tables analyzed by autovacuum (bench/caseload.py).
        await conn.execute("ANALYZE")
        print(f"  seeded in {time.perf_counter() - started:.1f} s", flush=True)

    def events(self, r: int):
        return self.load.enrolments(r) if isinstance(self.load, CaseloadLoad) else self.load.round(r)

    async def effects(self, conn: asyncpg.Connection, r: int, n: int) -> bool:
        """Every effect of rounds 0..r in the database, and the outbox empty (published)."""
        return (await self.load.holds(conn) >= n * (r + 1)
                and await conn.fetchval("SELECT count(*) FROM outbox") == 0)


def alive(instances: list[Service]):
    def check():
        for i in instances:
            if i.proc.poll() is not None and i.proc.returncode != -signal.SIGKILL:
                raise RuntimeError(f"{i.name} exited with {i.proc.returncode}; see {i.log_path}")
    return check


async def run_service(backends_: Backends, service: str, n: int, batch: int, kill_at: float, session_ms: int,
                      keep: bool, ports: Ports) -> None:
    stack = System.new(backends_, "so", keep=keep, ports=ports)
    env = {"CASEFLOW_CONSUMER_BATCH_SIZE": str(batch), "CASEFLOW_LOG_LEVEL": "INFO",
           "KAFKA_SESSION_TIMEOUT_MS": str(session_ms)}
    if service == "caseload":
        w = Workload("caseload", CASELOAD_GROUP, ROSTER_ENROLLMENTS, CaseloadLoad(students=n, rounds=ROUNDS))
    else:
        w = Workload("cases", CASES_GROUP, CASE_TRIGGERS, CasesLoad(students_per_round=n, rounds=ROUNDS))
    print(f"\n{service}: {n:,} events a round on {w.topic.name} ({w.topic.partitions} partitions), batch {batch}, "
          f"session timeout {session_ms} ms, {os.cpu_count()} cores, prefix {stack.prefix}", flush=True)
    await stack.prepare(service)
    kafka = stack.kafka_settings
    instances = [stack.service(service, **env).start()]
    await instances[0].ready(timeout=120)
    conn = await stack.db(service)
    rows = []
    try:
        await w.setup(stack, instances[0], conn, n)
        async with GroupWatch(kafka, w.group, w.topic) as group:
            for r, count in ((0, 1), (1, 3)):
                while len(instances) < count:
                    instances.append(stack.service(service, **env).start())
                for i in instances:
                    await i.ready(timeout=120)
                await eventually(lambda c=count: group.settled_with(c), 120, what=f"{count} members")
                async with Sampler(group) as sampler:
                    started = time.monotonic()
                    await produce(kafka, w.events(r))
                    ends = await group.ends()
                    await sampler.until(ends, 1800, alive(instances))
                    rate = sampler.rate()
                await eventually(lambda r=r: w.effects(conn, r, n), 600, interval=0.25, what="the effects")
                to_published = n / (time.monotonic() - started)
                raw = await raw_group(stack, w.topic.name, sampler.start, ends, count, batch)
                rows.append((count, rate, to_published, raw))
                print(f"  {count} instance(s): {rate:,.0f} events/s consumed, {to_published:,.0f}/s to all published;"
                      f" raw group of {count}: {raw:,.0f}/s", flush=True)

            # Round 3: the relay leader killed mid-load.
            before = await eventually(lambda: group.settled_with(3), 120, what="3 members")
            async with Sampler(group) as sampler:
                await produce(kafka, w.events(2))
                ends = await group.ends()
                target = sum(sampler.start.values()) + kill_at * (sum(ends.values()) - sum(sampler.start.values()))
                while not sampler.samples or sum(sampler.samples[-1][1].values()) < target:
                    await asyncio.sleep(0.05)
                before = await group.settled_with(3) or before
                at_kill = await group.committed()
                leader_url = await relay_leader([i.url for i in instances])
                victim = next((i for i in instances if i.url == leader_url), instances[0])
                victim.proc.send_signal(signal.SIGKILL)
                t0 = time.monotonic()
                victim.proc.wait()
                survivors = [i for i in instances if i is not victim]
                rebalanced = relay_at = None
                while rebalanced is None or relay_at is None:
                    alive(instances)()
                    if rebalanced is None and (after := await group.settled_with(2)):
                        rebalanced = time.monotonic() - t0
                    if relay_at is None and await relay_leader([i.url for i in survivors]):
                        relay_at = time.monotonic() - t0
                    if time.monotonic() - t0 > 300:
                        raise RuntimeError("no rebalance after 300 s")
                    await asyncio.sleep(0.1)
                await sampler.until(ends, 1800, alive(instances))
            gone = set(before.members) - set(after.members)
            killed = before.members[next(iter(gone))] if len(gone) == 1 else set()
            takeovers = {p: sampler.first_commit_after(t0, p, at_kill[p]) for p in sorted(killed)}
            await eventually(lambda: w.effects(conn, 2, n), 600, interval=0.25, what="the effects")
            verdict = await w.load.verdict(conn, kafka, range(ROUNDS))
        base1 = rows[0][3]
        print(f"  {service}, {n:,} events a round (medians of one run each; ratios to the raw group of 1):")
        print(f"    {'':<26}{'consumed/s':>12}{'ratio':>8}{'to published/s':>17}{'raw group/s':>13}{'ratio':>8}")
        for count, rate, to_published, raw in rows:
            print(f"    {f'{count} instance(s)':<26}{rate:>12,.0f}{rate / base1:>8.2f}{to_published:>17,.0f}"
                  f"{raw:>13,.0f}{raw / base1:>8.2f}")
        print(f"    3 vs 1 instance: {rows[1][1] / rows[0][1]:.2f}x consumed; raw 3 vs 1: {rows[1][3] / rows[0][3]:.2f}x")
        waits = [t for t in takeovers.values() if t is not None]
        print(f"  kill: SIGKILL of the relay leader at {kill_at:.0%} of round 3; it held partitions "
              f"{sorted(killed) or '(not identified)'}")
        print(f"    kill -> group rebalanced (2 members, all partitions): {rebalanced:.1f} s "
              f"(session timeout {session_ms / 1000:.0f} s, heartbeat 3 s)")
        if waits:
            print(f"    kill -> first commit by a survivor on each of its partitions: min {min(waits):.1f} s, "
                  f"max {max(waits):.1f} s"
                  + ("" if len(waits) == len(takeovers) else f" ({len(takeovers) - len(waits)} had nothing left)"))
        print(f"    kill -> a survivor's outbox relay leading: {relay_at:.1f} s")
        print(f"  effects of the three rounds: {verdict}", flush=True)
        if not verdict.exact:
            raise SystemExit(f"{service}: effects lost or duplicated")
    finally:
        await conn.close()
        await stack.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--service", choices=("caseload", "cases", "both"), default="both")
    parser.add_argument("--events", type=int, default=20_000, help="events a round (default 20,000)")
    parser.add_argument("--batch", type=int, default=2000, help="CASEFLOW_CONSUMER_BATCH_SIZE (the default, 2000)")
    parser.add_argument("--kill-at", type=float, default=0.3, help="share of round 3 committed at the kill")
    parser.add_argument("--session-timeout-ms", type=int, default=10_000)
    parser.add_argument("--keep", action="store_true", help="keep the topics and databases")
    add_port_flag(parser)
    args = parser.parse_args()
    ports = Ports(args.http_port_base)
    with ExitStack() as stack:
        b = backends(stack, "bench-scale-postgres", {"shared_buffers": "512MB", "max_wal_size": "4GB"})
        for service in (("caseload", "cases") if args.service == "both" else (args.service,)):
            await run_service(b, service, args.events, args.batch, args.kill_at, args.session_timeout_ms, args.keep,
                              ports)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--raw-member":
        asyncio.run(raw_member(*sys.argv[2:6], int(sys.argv[6]), Path(sys.argv[7])))
    else:
        asyncio.run(main())
