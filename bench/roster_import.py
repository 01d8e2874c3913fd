"""A New York City-sized roster import, beside a raw baseline in the same process.

    python bench/roster_import.py [--scale 1.0] [--skip-publish] [--keep]

Generates (once, cached under .caseflow/bench-oneroster/) a package of 1,100,000 students,
75,000 staff, 60,000 classes, 8,000,000 enrollments and 1,800 schools (times --scale),
and the same package with 1% of its students changed. Then, on the real database and
broker, under a topic prefix and a database of its own (dropped at the end unless --keep):
  1. raw baseline: read users.csv and enrollments.csv with csv and COPY them into a table;
  2. first import: validate, diff, store, write events (the outbox), then publish them;
  3. re-import of the identical package (must publish zero change events);
  4. re-import with 1% changed rows.
Prints each time, the events published, and this process's peak RSS over the imports.
Targets (issue 14, scale 1.0): first import < 5 min, 1% changed < 60 s, identical < 30 s,
peak RSS < 2 GB.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import sys
import time
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import BIG_POSTGRES, ROOT, PeakRss, System, backends, cpu_seconds, load_average, server_cpu_seconds  # noqa: E402,E501

from oneroster_generator import generate  # noqa: E402

from services.kit import db  # noqa: E402
from services.kit.metrics import Metrics  # noqa: E402
from services.kit.outbox import OutboxRelay, producer_for  # noqa: E402
from services.kit.settings import KafkaSettings  # noqa: E402
from services.roster.app import definition  # noqa: E402
from services.roster.importer import run_import  # noqa: E402

NYC = {"students": 1_100_000, "staff": 75_000, "classes": 60_000, "enrollments": 8_000_000, "schools": 1_800}
DISTRICT = "nycdoe"


def packages(scale: float) -> tuple[Path, Path]:
    """The base package and its 1%-changed copy at this scale (generated once, cached)."""
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


async def roster_pool(system: System):
    """The roster's database of this system, migrated, and a pool on it (the importer's)."""
    dsn = system.dsn("roster")
    conn = await db.connect(dsn)
    try:
        await db.migrate(conn, db.migrations_for("roster", definition().directory))
    finally:
        await conn.close()
    return await db.create_pool(dsn, min_size=1, max_size=4)


async def import_once(system: System, pool, package: Path, label: str, publish: bool = True) -> dict:
    """One import of a package, stored (the outbox written) and then published by a relay."""
    dsn = system.dsn("roster")  # the server's CPU is found by its data directory (harness.server_cpu_seconds)
    cpu, pg_cpu = cpu_seconds(os.getpid()), await server_cpu_seconds(dsn)
    started = time.perf_counter()
    result = await run_import(pool, district_id=DISTRICT, path=package, kafka=system.kafka, confirm=True)
    stored = time.perf_counter() - started
    cpu, pg_cpu = cpu_seconds(os.getpid()) - cpu, await server_cpu_seconds(dsn) - pg_cpu
    sent, published = await publish_all(pool, system.dsn("roster"), system.kafka) if publish else (0, 0.0)
    changes = sum(v for k, v in result.counts.items() if not k.startswith("enrollment_records"))
    print(f"  {label:22s} stored {stored:7.1f} s   published {published:7.1f} s   total {stored + published:7.1f} s"
          f"   {changes:>10,} change events ({sent:,} messages sent)   status {result.status}", flush=True)
    print("      phases: " + ", ".join(f"{k} {v:.1f}s" for k, v in result.seconds.items())
          + f"; CPU until stored: this process {cpu:.1f}s, PostgreSQL {pg_cpu:.1f}s; load "
          + " ".join(f"{x:.2f}" for x in load_average()))
    return {"stored": stored, "published": published, "seconds": stored + published, "changes": changes,
            "sent": sent, "status": result.status}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--skip-publish", action="store_true", help="measure up to the outbox, not the relay")
    parser.add_argument("--keep", action="store_true", help="keep the topics and the database")
    args = parser.parse_args()
    base, changed = packages(args.scale)
    with ExitStack() as stack:
        b = backends(stack, "bench-postgres", BIG_POSTGRES)
        async with System.new(b, "br", keep=args.keep) as system:
            await system.prepare("roster")
            pool = await roster_pool(system)
            try:
                print(f"roster import bench, scale {args.scale} of New York City, {os.cpu_count()} cores")
                raw = await raw_baseline(pool, base)
                print(f"  raw baseline: csv + COPY of users and enrollments     {raw:8.1f} s")
                with PeakRss() as rss:
                    for label, package in (("first import", base), ("identical re-import", base),
                                           ("1% changed re-import", changed)):
                        row = await import_once(system, pool, package, label, publish=not args.skip_publish)
                        print(f"      {row['stored'] / raw:5.1f}x raw (stored)")
                print(f"  peak RSS of this process over the imports: {rss.mb:,.0f} MB (since {rss.since})")
            finally:
                await pool.close()


if __name__ == "__main__":
    asyncio.run(main())
