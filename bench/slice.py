"""Throughput of the walking slice, beside a raw baseline in the same run.

    python bench/slice.py [--events 100000] [--rounds 1] [--gc-threshold 50000 --gc-threshold 0]

Pushes N SisStudentEnrolled events through roster (consume, inbox, store, outbox, relay
publish) and then caseload (consume, inbox, projection), each a real service process
with every guarantee on, on the real broker and database. The raw baseline reads the
same N records with a bare aiokafka consumer, COPYs them into a table and commits the
offsets: no logic, same broker, same database. Figures are events/s and the ratio to
the baseline (this machine is noisy: compare ratios, and repeat with --rounds).
--gc-threshold (repeatable) runs the services with each CASEFLOW_GC_THRESHOLD in turn, round
by round (0: Python's own garbage collector settings), each beside its own raw baseline.

Backends: KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL if set, else the real Apache Kafka
from deploy/local/kafka.sh and the embedded PostgreSQL.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from backends import backends as shared_backends, dsn_for  # noqa: E402

from contracts import cloudevents  # noqa: E402
from contracts.sis import SisStudentEnrolled  # noqa: E402
from contracts.topics import ROSTER_STUDENTS  # noqa: E402
from services.kit import db  # noqa: E402
from services.kit.settings import KafkaSettings  # noqa: E402
from services.kit.topics import provision  # noqa: E402

BATCH = 2000


def backends(stack: ExitStack) -> tuple[str, str]:
    return shared_backends(stack, "bench-postgres")


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


async def raw_baseline(kafka: str, dsn: str, topic: str, n: int) -> float:
    """aiokafka getmany + asyncpg COPY + offset commit: the floor any design pays."""
    conn = await asyncpg.connect(dsn)
    await conn.execute("CREATE TABLE IF NOT EXISTS raw_baseline (k bytea, v bytea)")
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=kafka, group_id=f"bench-raw-{uuid.uuid4().hex[:6]}",
                                enable_auto_commit=False, auto_offset_reset="earliest",
                                max_partition_fetch_bytes=4 * 1024 * 1024)
    await consumer.start()
    seen = 0
    started = None
    try:
        while seen < n:
            batch = await consumer.getmany(timeout_ms=200, max_records=BATCH)
            records = [r for recs in batch.values() for r in recs]
            if not records:
                continue
            started = started or time.perf_counter()
            async with conn.transaction():
                await conn.copy_records_to_table("raw_baseline", records=[(r.key, r.value) for r in records])
            await consumer.commit()
            seen += len(records)
        return seen / (time.perf_counter() - started)
    finally:
        await consumer.stop()
        await conn.close()


class Service:
    def __init__(self, name: str, env: dict, port: int) -> None:
        self.name, self.port = name, port
        log = open(ROOT / ".caseflow" / f"bench-{name}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen([sys.executable, "-m", f"services.{name}"], cwd=ROOT, env=env,
                                     stdout=log, stderr=subprocess.STDOUT)

    async def ready(self) -> None:
        async with httpx.AsyncClient() as client:
            for _ in range(300):
                try:
                    if (await client.get(f"http://127.0.0.1:{self.port}/readyz", timeout=2)).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited")
                await asyncio.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)


async def wait_published(kafka: str, topic: str, n: int) -> None:
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka)
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in range(ROSTER_STUDENTS.partitions)]
        while sum((await consumer.end_offsets(parts)).values()) < n:
            await asyncio.sleep(0.1)
    finally:
        await consumer.stop()


async def wait_inbox(dsn: str, n: int) -> float:
    """events/s over the service's own handling window: first to last inbox commit."""
    conn = await asyncpg.connect(dsn)
    try:
        while await conn.fetchval("SELECT count(*) FROM inbox") < n:
            await asyncio.sleep(0.25)
        first, last = await conn.fetchrow("SELECT min(processed_at), max(processed_at) FROM inbox")
        return first, last
    finally:
        await conn.close()


async def run_round(kafka: str, pg: str, n: int, gc_threshold: int | None = None) -> dict:
    prefix = f"b{uuid.uuid4().hex[:6]}."
    kafka_settings = KafkaSettings(bootstrap_servers=kafka, topic_prefix=prefix)
    await provision(kafka_settings)
    dsns = {s: dsn_for(pg, f"{prefix.rstrip('.')}_{s}") for s in ("roster", "caseload", "raw")}
    for dsn in dsns.values():
        await db.ensure_database(dsn)
    produced_in = await produce(kafka, prefix + "sis.students.v1", n)

    raw = await raw_baseline(kafka, dsns["raw"], prefix + "sis.students.v1", n)

    env = {k: v for k, v in os.environ.items() if not k.startswith("CASEFLOW_")}
    env.update(KAFKA_BOOTSTRAP_SERVERS=kafka, CASEFLOW_TOPIC_PREFIX=prefix, CASEFLOW_JWT_SECRET="bench" * 8,
               CASEFLOW_ROSTER_DATABASE_URL=dsns["roster"], CASEFLOW_CASELOAD_DATABASE_URL=dsns["caseload"],
               CASEFLOW_ROSTER_HTTP_PORT="18101", CASEFLOW_CASELOAD_HTTP_PORT="18102",
               CASEFLOW_CONSUMER_BATCH_SIZE=str(BATCH), CASEFLOW_LOG_LEVEL="WARNING", PYTHONPATH=str(ROOT))
    if gc_threshold is not None:
        env["CASEFLOW_GC_THRESHOLD"] = str(gc_threshold)

    services = []
    try:
        services.append(roster := Service("roster", env, 18101))
        await roster.ready()
        first, last_commit = await wait_inbox(dsns["roster"], n)
        await wait_published(kafka, prefix + "roster.students.v1", n)
        published_at = datetime.now(UTC)
        roster_rate = n / (published_at - first).total_seconds()
        roster_consume_rate = n / max((last_commit - first).total_seconds(), 1e-3)

        services.append(caseload := Service("caseload", env, 18102))
        await caseload.ready()
        c_first, c_last = await wait_inbox(dsns["caseload"], n)
        caseload_rate = n / max((c_last - c_first).total_seconds(), 1e-3)
    finally:
        for service in services:
            service.stop()
    return {"produce": n / produced_in, "raw": raw, "roster": roster_rate, "roster_consume": roster_consume_rate,
            "caseload": caseload_rate}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--gc-threshold", type=int, action="append",
                        help="CASEFLOW_GC_THRESHOLD of the services; repeat to compare settings in one run")
    args = parser.parse_args()
    settings = args.gc_threshold or [None]
    with ExitStack() as stack:
        kafka, pg = backends(stack)
        rounds = {g: [] for g in settings}
        for _ in range(args.rounds):
            for g in settings:  # interleaved: each setting sees the machine as the others do
                rounds[g].append(await run_round(kafka, pg, args.events, g))
    for g, runs in rounds.items():
        report(args, runs, "" if g is None else f", CASEFLOW_GC_THRESHOLD={g}")


def report(args, rounds: list[dict], setting: str) -> None:
    med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    print(f"walking slice, {args.events} events, {args.rounds} round(s), medians, {os.cpu_count()} cores{setting}")
    print(f"  raw baseline (aiokafka getmany + COPY + commit) {med['raw']:>10,.0f} events/s   1.00x")
    print(f"  roster  consume+inbox+store+outbox (to commit)  {med['roster_consume']:>10,.0f} events/s"
          f"   {med['roster_consume'] / med['raw']:.2f}x")
    print(f"  roster  end to end (through relay publish)      {med['roster']:>10,.0f} events/s"
          f"   {med['roster'] / med['raw']:.2f}x")
    print(f"  caseload consume+inbox+projection               {med['caseload']:>10,.0f} events/s"
          f"   {med['caseload'] / med['raw']:.2f}x")
    print(f"  (producer loading the input: {med['produce']:,.0f} events/s)")


if __name__ == "__main__":
    asyncio.run(main())
