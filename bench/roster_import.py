"""A New York City-sized roster import, beside a raw baseline in the same process.

    python bench/roster_import.py [--scale 1.0] [--skip-publish]

Generates (once, cached under .caseflow/bench-oneroster/) a package of 1,100,000 students,
75,000 staff, 60,000 classes, 8,000,000 enrollments and 1,800 schools (times --scale),
and the same package with 1% of its students changed. Then, on the real database and
broker:
  1. raw baseline: read users.csv and enrollments.csv with csv and COPY them into a table;
  2. first import: validate, diff, store, write events (the outbox), then publish them;
  3. re-import of the identical package (must publish zero change events);
  4. re-import with 1% changed rows.
Prints each time, the events published, and the process's peak RSS.
Targets (issue 3): first import < 10 min with peak RSS < 4 GB; 1% re-import < 3 min;
identical re-import < 2 min with zero events.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import resource
import sys
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from backends import backends as shared_backends  # noqa: E402

from oneroster_generator import generate  # noqa: E402

from services.kit import db  # noqa: E402
from services.kit.metrics import Metrics  # noqa: E402
from services.kit.outbox import OutboxRelay, producer_for  # noqa: E402
from services.kit.settings import KafkaSettings  # noqa: E402
from services.kit.topics import provision  # noqa: E402
from services.roster.app import definition  # noqa: E402
from services.roster.importer import run_import  # noqa: E402

NYC = {"students": 1_100_000, "staff": 75_000, "classes": 60_000, "enrollments": 8_000_000, "schools": 1_800}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def backends(stack: ExitStack) -> tuple[str, str]:
    return shared_backends(stack, "bench-postgres",
                           {"shared_buffers": "1GB", "max_wal_size": "8GB", "work_mem": "256MB", "maintenance_work_mem": "1GB"})


def packages(scale: float) -> tuple[Path, Path]:
    sizes = {k: max(1, int(v * scale)) for k, v in NYC.items()}
    home = ROOT / ".caseflow" / "bench-oneroster" / f"scale-{scale}"
    base, changed = home / "base", home / "changed-1pct"
    for path, mutate in ((base, 0.0), (changed, 0.01)):
        if not (path / "manifest.csv").exists():
            started = time.perf_counter()
            counts = generate(path, **sizes, seed=1, mutate=mutate)
            print(f"  generated {path.name} in {time.perf_counter() - started:.0f}s: "
                  f"{counts['users.csv']:,} users, {counts['enrollments.csv']:,} enrollments")
    return base, changed


async def raw_baseline(pool, package: Path) -> float:
    """csv reading + COPY of the two big files, no validation, no diff: the floor."""
    started = time.perf_counter()
    async with pool.acquire() as conn:
        await conn.execute("DROP TABLE IF EXISTS raw_rows; CREATE UNLOGGED TABLE raw_rows (a text, b text, c text)")
        for name, cols in (("users.csv", ("sourcedId", "role", "familyName")),
                           ("enrollments.csv", ("classSourcedId", "userSourcedId", "role"))):
            with open(package / name, newline="", encoding="utf-8-sig") as f:
                reader = csv.DictReader(f)
                await conn.copy_records_to_table("raw_rows", records=((r[cols[0]], r[cols[1]], r[cols[2]])
                                                                      for r in reader))
        await conn.execute("DROP TABLE raw_rows")
    return time.perf_counter() - started


async def publish_all(pool, dsn: str, kafka: KafkaSettings) -> tuple[int, float]:
    relay = OutboxRelay(dsn=dsn, pool=pool, producer_factory=lambda: producer_for(kafka), metrics=Metrics("bench"),
                        batch_size=20_000)
    producer = producer_for(kafka)
    await producer.start()
    started = time.perf_counter()
    sent = 0
    try:
        while n := await relay.publish_once(producer):
            sent += n
    finally:
        await producer.stop()
    return sent, time.perf_counter() - started


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--skip-publish", action="store_true", help="measure up to the outbox, not the relay")
    args = parser.parse_args()
    base, changed = packages(args.scale)
    with ExitStack() as stack:
        kafka_servers, pg = backends(stack)
        prefix = f"b{uuid.uuid4().hex[:6]}."
        kafka = KafkaSettings(bootstrap_servers=kafka_servers, topic_prefix=prefix,
                              enable_idempotence=os.environ.get("KAFKA_ENABLE_IDEMPOTENCE", "true") == "true")
        await provision(kafka)
        dsn = urlunsplit(urlsplit(pg)._replace(path=f"/{prefix.rstrip('.')}_roster"))
        await db.ensure_database(dsn)
        conn = await db.connect(dsn)
        await db.migrate(conn, db.migrations_for("roster", definition().directory))
        await conn.close()
        pool = await db.create_pool(dsn, min_size=1, max_size=4)
        print(f"roster import bench, scale {args.scale} of New York City, {os.cpu_count()} cores")
        raw = await raw_baseline(pool, base)
        print(f"  raw baseline: csv + COPY of users and enrollments     {raw:8.1f} s")

        rows = []
        for label, package in (("first import", base), ("identical re-import", base), ("1% changed re-import", changed)):
            started = time.perf_counter()
            result = await run_import(pool, district_id="nycdoe", path=package, kafka=kafka, confirm=True)
            stored = time.perf_counter() - started
            sent, publish = (0, 0.0) if args.skip_publish else await publish_all(pool, dsn, kafka)
            changes = sum(v for k, v in result.counts.items() if not k.startswith("enrollment_records"))
            rows.append((label, stored, publish, changes, sent))
            print(f"  {label:22s} stored {stored:7.1f} s   published {publish:7.1f} s   total {stored + publish:7.1f} s"
                  f"   {changes:>10,} change events ({sent:,} messages sent)   status {result.status}"
                  f"   {stored / raw:5.1f}x raw")
            print("      phases: " + ", ".join(f"{k} {v:.1f}s" for k, v in result.seconds.items()))
        print(f"  peak RSS of this process: {peak_rss_mb():,.0f} MB")
        await pool.close()


if __name__ == "__main__":
    asyncio.run(main())
