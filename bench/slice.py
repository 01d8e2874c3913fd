"""Throughput of the walking slice, beside a raw baseline in the same run.

    python bench/slice.py [--events 100000] [--rounds 1] [--gc-threshold 50000 --gc-threshold 0]
                          [--raw-seconds 5] [--http-port-base PORT] [--keep]

Pushes N SisStudentEnrolled events through roster (consume, inbox, store, outbox, relay
publish) and then caseload (consume, inbox, projection), each a real service process
with every guarantee on, on the real broker and database. The raw baseline reads the
same N records with a bare aiokafka consumer, COPYs them into a table and commits the
offsets: no logic, same broker, same database; it reads them again and again until it has
been timed over at least --raw-seconds (a single pass of 30,000 records takes a fraction of
a second, too short to time on a shared machine). Figures are events/s and the ratio to
the baseline (this machine is noisy: compare ratios, and repeat with --rounds), and the CPU
each service and its PostgreSQL connections spent per event (microseconds, from /proc: the
figure other load on the machine moves least; the service's includes its relay).
--gc-threshold (repeatable) runs the services with each CASEFLOW_GC_THRESHOLD in turn, round
by round (0: Python's own garbage collector settings), each beside its own raw baseline.
Each round's topics and databases are dropped at its end unless --keep.

Backends: KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL if set, else the real Apache Kafka
from deploy/local/kafka.sh and the embedded PostgreSQL (bench/harness.py).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Backends, Ports, System, add_port_flag, backends, server_cpu_seconds  # noqa: E402

from contracts import cloudevents  # noqa: E402
from contracts.sis import SisStudentEnrolled  # noqa: E402
from contracts.topics import ROSTER_STUDENTS, SIS_STUDENTS  # noqa: E402

BATCH = 2000


async def produce(kafka: str, topic: str, n: int) -> float:
    producer = AIOKafkaProducer(bootstrap_servers=kafka, linger_ms=20, max_batch_size=512 * 1024, acks="all")
    await producer.start()
    started = time.perf_counter()
    try:
        pending = []
        for i in range(n):
            e = SisStudentEnrolled(district_id=f"d{i % 20}", source_id=f"S{i:08d}", school_id=f"K{i % 1800:04d}",
                                   grade=f"{i % 12 + 1:02d}", given_name="Given", family_name=f"Family{i}")
            pending.append(await producer.send(topic, cloudevents.encode(e), key=e.source_id.encode(),
                                               headers=cloudevents.headers_for(e, "bench")))
            if len(pending) >= 10_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return time.perf_counter() - started


async def raw_baseline(kafka: str, dsn: str, topic: str, partitions: int, n: int,
                       min_seconds: float = 5.0) -> tuple[float, int, float]:
    """aiokafka getmany + asyncpg COPY + offset commit: the floor any design pays. Reads the
    topic's n records from the start, pass after pass, until timed over min_seconds (the
    table emptied between passes, outside the clock). (records/s, passes, seconds timed)."""
    conn = await asyncpg.connect(dsn)
    await conn.execute("CREATE TABLE IF NOT EXISTS raw_baseline (k bytea, v bytea)")
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka, group_id=f"{topic}.raw-baseline", enable_auto_commit=False,
                                max_partition_fetch_bytes=4 * 1024 * 1024)
    await consumer.start()
    parts = [TopicPartition(topic, p) for p in range(partitions)]
    consumer.assign(parts)  # no group join: commits go to the group all the same
    timed, passes, seen = 0.0, 0, 0
    try:
        while timed < min_seconds:
            # The clock runs from the first record of the first pass (not the consumer's
            # start-up), and from the seek back to the start for the next ones.
            started = time.perf_counter() if passes else None
            await consumer.seek_to_beginning(*parts)
            this_pass = 0
            while this_pass < n:
                batch = await consumer.getmany(timeout_ms=200, max_records=BATCH)
                records = [r for recs in batch.values() for r in recs]
                if not records:
                    continue
                started = started or time.perf_counter()
                async with conn.transaction():
                    await conn.copy_records_to_table("raw_baseline", records=[(r.key, r.value) for r in records])
                await consumer.commit()
                this_pass += len(records)
            timed += time.perf_counter() - started
            passes += 1
            seen += this_pass
            await conn.execute("TRUNCATE raw_baseline")
        return seen / timed, passes, timed
    finally:
        await consumer.stop()
        await conn.close()


async def wait_published(kafka: str, topic: str, n: int) -> None:
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka)
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in range(ROSTER_STUDENTS.partitions)]
        while sum((await consumer.end_offsets(parts)).values()) < n:
            await asyncio.sleep(0.1)
    finally:
        await consumer.stop()


async def wait_inbox(dsn: str, n: int, check) -> tuple[datetime, datetime]:
    """The service's own handling window: its first and last inbox commit, once it holds n."""
    conn = await asyncpg.connect(dsn)
    try:
        while await conn.fetchval("SELECT count(*) FROM inbox") < n:
            check()
            await asyncio.sleep(0.25)
        first, last = await conn.fetchrow("SELECT min(processed_at), max(processed_at) FROM inbox")
        return first, last
    finally:
        await conn.close()


class CpuPerEvent:
    """The CPU a service and the PostgreSQL server spend per event over a stretch of work, in
    microseconds: a figure the machine's other load hardly moves, unlike a rate. The whole
    server is counted (harness.server_cpu_seconds: backends, WAL writer, checkpointer), as
    the slice runs one service at a time; its backends' PIDs as PostgreSQL names them are
    not this machine's (the embedded server has a PID namespace of its own)."""

    def __init__(self, service, dsn: str) -> None:
        self.service, self.dsn = service, dsn

    async def __aenter__(self) -> CpuPerEvent:
        self.own, self.db = self.service.cpu_seconds(), await server_cpu_seconds(self.dsn)
        return self

    async def per_event(self, n: int) -> tuple[float, float]:
        """(service µs, PostgreSQL µs) per event since entering; PostgreSQL NaN when not measurable."""
        own = self.service.cpu_seconds() - self.own
        db = await server_cpu_seconds(self.dsn) - self.db
        return own / n * 1e6, db / n * 1e6

    async def __aexit__(self, *exc) -> None:
        return None


async def run_round(backends_: Backends, n: int, gc_threshold: int | None = None, *, raw_seconds: float = 5.0,
                    ports: Ports | None = None, keep: bool = False) -> dict:
    """One round: the raw baseline, then roster, then caseload over the same n records."""
    env = {"CASEFLOW_CONSUMER_BATCH_SIZE": str(BATCH)}
    if gc_threshold is not None:
        env["CASEFLOW_GC_THRESHOLD"] = str(gc_threshold)
    async with System.new(backends_, "bs", keep=keep, ports=ports) as system:
        await system.prepare("roster", "caseload")
        raw_dsn = await system.database("raw")
        produced_in = await produce(backends_.kafka, system.topic(SIS_STUDENTS.name), n)
        raw, passes, raw_timed = await raw_baseline(backends_.kafka, raw_dsn, system.topic(SIS_STUDENTS.name),
                                                    SIS_STUDENTS.partitions, n, raw_seconds)

        roster = await system.start("roster", **env)
        async with CpuPerEvent(roster, system.dsn("roster")) as roster_cpu:
            first, last_commit = await wait_inbox(system.dsn("roster"), n, roster.check_alive)
            await wait_published(backends_.kafka, system.topic(ROSTER_STUDENTS.name), n)
            published_at = datetime.now(UTC)
            roster_us, roster_db_us = await roster_cpu.per_event(n)
        roster_rate = n / (published_at - first).total_seconds()
        roster_consume_rate = n / max((last_commit - first).total_seconds(), 1e-3)

        caseload = await system.start("caseload", **env)
        async with CpuPerEvent(caseload, system.dsn("caseload")) as caseload_cpu:
            c_first, c_last = await wait_inbox(system.dsn("caseload"), n, caseload.check_alive)
            caseload_us, caseload_db_us = await caseload_cpu.per_event(n)
        caseload_rate = n / max((c_last - c_first).total_seconds(), 1e-3)
    return {"produce": n / produced_in, "raw": raw, "raw_passes": passes, "raw_seconds": raw_timed,
            "roster": roster_rate, "roster_consume": roster_consume_rate, "caseload": caseload_rate,
            "roster_us": roster_us, "roster_db_us": roster_db_us, "caseload_us": caseload_us,
            "caseload_db_us": caseload_db_us}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--gc-threshold", type=int, action="append",
                        help="CASEFLOW_GC_THRESHOLD of the services; repeat to compare settings in one run")
    parser.add_argument("--raw-seconds", type=float, default=5.0, help="time the raw baseline over at least this")
    parser.add_argument("--keep", action="store_true", help="keep each round's topics and databases")
    add_port_flag(parser)
    args = parser.parse_args()
    settings = args.gc_threshold or [None]
    ports = Ports(args.http_port_base)
    with ExitStack() as stack:
        b = backends(stack, "bench-postgres")
        rounds = {g: [] for g in settings}
        for _ in range(args.rounds):
            for g in settings:  # interleaved: each setting sees the machine as the others do
                rounds[g].append(await run_round(b, args.events, g, raw_seconds=args.raw_seconds, ports=ports,
                                                 keep=args.keep))
    for g, runs in rounds.items():
        report(args.events, runs, "" if g is None else f", CASEFLOW_GC_THRESHOLD={g}")


def report(events: int, rounds: list[dict], setting: str = "") -> None:
    med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    print(f"walking slice, {events} events, {len(rounds)} round(s), medians, {os.cpu_count()} cores{setting}")
    print(f"  raw baseline (aiokafka getmany + COPY + commit) {med['raw']:>10,.0f} events/s   1.00x"
          f"   ({med['raw_passes']:.0f} passes over {med['raw_seconds']:.1f} s)")
    print(f"  roster  consume+inbox+store+outbox (to commit)  {med['roster_consume']:>10,.0f} events/s"
          f"   {med['roster_consume'] / med['raw']:.2f}x")
    print(f"  roster  end to end (through relay publish)      {med['roster']:>10,.0f} events/s"
          f"   {med['roster'] / med['raw']:.2f}x")
    print(f"  caseload consume+inbox+projection               {med['caseload']:>10,.0f} events/s"
          f"   {med['caseload'] / med['raw']:.2f}x")
    print(f"  (producer loading the input: {med['produce']:,.0f} events/s)")
    print(f"  CPU per event, roster:   service {med['roster_us']:,.0f} µs, PostgreSQL {med['roster_db_us']:,.0f} µs")
    print(f"  CPU per event, caseload: service {med['caseload_us']:,.0f} µs, PostgreSQL {med['caseload_db_us']:,.0f} µs")


if __name__ == "__main__":
    asyncio.run(main())
