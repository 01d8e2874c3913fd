"""The reconcile view's lookup (GET /v1/reconcile/...: store.reconciliation) on a roster
imported from a New York City-sized package, beside a raw baseline in the same run.

    python bench/reconcile.py [--scale 0.25] [--lookups 200]

Imports bench/roster_import.py's cached package at --scale (stored, not published), then
times store.reconciliation for --lookups students chosen at random (seeded), after the first
import and again after the 1%-changed bulk import. Baseline: the same students' rows of
last_file_rows read by their primary key alone (what the lookup would cost without finding
the row's line in file_lines, where it reads the sourcedId's bucket of each file: migration
006). Prints p50/p99/max in ms.
Nothing here asserts a time. Backends as bench/roster_import.py (its PostgreSQL folder).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import BIG_POSTGRES, System, backends, load_average  # noqa: E402
from roster_import import DISTRICT, import_once, packages, roster_pool  # noqa: E402

from services.roster import store  # noqa: E402


def _summary(times: list[float]) -> str:
    times = sorted(times)
    return (f"p50 {statistics.median(times):6.1f}  p99 {times[int(len(times) * 0.99) - 1]:6.1f}  "
            f"max {times[-1]:6.1f} ms")


async def probe(pool, label: str, lookups: int) -> None:
    async with pool.acquire() as conn:
        ids = [r[0] for r in await conn.fetch(  # the latest file holds them (a withdrawn one: not)
            "SELECT source_id FROM students WHERE district_id = $1 AND status = 'active' ORDER BY source_id",
            DISTRICT)]
        held, buckets = await conn.fetchrow("SELECT coalesce(sum(cardinality(source_ids)), 0), count(*) "
                                            "FROM file_lines WHERE district_id = $1", DISTRICT)
        sample = random.Random(1).sample(ids, min(lookups, len(ids)))
        raw, view = [], []
        for sid in sample:
            started = time.perf_counter()
            await conn.fetchrow("SELECT * FROM last_file_rows WHERE district_id = $1 AND entity = 'user' "
                                "AND source_id = $2", DISTRICT, sid)
            raw.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            file_row, held_row = await store.reconciliation(conn, district_id=DISTRICT, entity="student",
                                                            source_id=sid)
            view.append((time.perf_counter() - started) * 1000)
            assert file_row is not None and held_row is not None, sid
    print(f"  {label}: file_lines holds {held:,} sourcedIds in {buckets:,} rows; {len(sample)} students; load "
          + " ".join(f"{x:.2f}" for x in load_average()))
    print(f"    raw baseline: last_file_rows by primary key   {_summary(raw)}")
    print(f"    store.reconciliation (the view's lookup)      {_summary(view)}"
          f"   {statistics.median(view) / statistics.median(raw):.1f}x", flush=True)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=0.25)
    parser.add_argument("--lookups", type=int, default=200)
    args = parser.parse_args()
    base, changed = packages(args.scale)
    with ExitStack() as stack:
        b = backends(stack, "bench-postgres", BIG_POSTGRES)
        async with System.new(b, "bq", keep=False) as system:
            await system.prepare("roster")
            pool = await roster_pool(system)
            try:
                print(f"reconcile view bench, scale {args.scale} of New York City")
                await import_once(system, pool, base, "first import", publish=False)
                await probe(pool, "after the first import", args.lookups)
                await import_once(system, pool, changed, "1% changed re-import", publish=False)
                await probe(pool, "after the 1% changed bulk import", args.lookups)
            finally:
                await pool.close()


if __name__ == "__main__":
    asyncio.run(main())
