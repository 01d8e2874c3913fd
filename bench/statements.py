"""Where PostgreSQL's time goes under a bench: its statements, heaviest first.

    python bench/statements.py [--top 20] [--width 160] [--big] -- python bench/caseload.py --only materialize --scale 0.05

Starts an embedded PostgreSQL of its own (.caseflow/bench-statements-postgres) with
pg_stat_statements loaded (and, with --big, the settings the import and materialisation
benches give their own: harness.BIG_POSTGRES), runs the bench command against it (DATABASE_URL), then prints
each statement's calls, total and mean execution time (ms), rows and WAL bytes, heaviest
first, summed over everything the command ran (its setup too: the roster import before a
materialisation, for instance). Times are the server's wall time in the statement, so they
move with the machine's load: compare a statement's share, and pairs of runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import BIG_POSTGRES, ROOT  # noqa: E402

from deploy.local.embedded import EmbeddedPostgres  # noqa: E402


async def heaviest(dsn: str, top: int, width: int) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        total = await conn.fetchval("SELECT sum(total_exec_time) FROM pg_stat_statements")
        rows = await conn.fetch(
            """SELECT calls, total_exec_time, mean_exec_time, rows, wal_bytes,
                      left(regexp_replace(query, '\\s+', ' ', 'g'), $2) AS query
               FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT $1""", top, width)
    finally:
        await conn.close()
    lines = [f"all statements: {total or 0:,.0f} ms",
             f"{'calls':>8} {'total ms':>10} {'share':>6} {'mean ms':>9} {'rows':>10} {'WAL MB':>8}  statement"]
    lines += [f"{r['calls']:>8,} {r['total_exec_time']:>10,.0f} {r['total_exec_time'] / total:>6.1%} "
              f"{r['mean_exec_time']:>9.2f} {r['rows']:>10,} {int(r['wal_bytes']) / 1e6:>8.1f}  {r['query']}"
              for r in rows]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--width", type=int, default=160, help="characters of each statement's text")
    parser.add_argument("--big", action="store_true", help="the large benches' PostgreSQL settings (BIG_POSTGRES)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the bench command, after --")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the bench command after --")
    server = EmbeddedPostgres(ROOT / ".caseflow" / "bench-statements-postgres",
                              settings={**(BIG_POSTGRES if args.big else {}),
                                        "shared_preload_libraries": "pg_stat_statements",
                                        "pg_stat_statements.track": "top", "pg_stat_statements.max": "5000"})
    dsn = server.start()
    try:
        async def prepare() -> None:
            conn = await asyncpg.connect(dsn)
            try:
                await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
                await conn.execute("SELECT pg_stat_statements_reset()")
            finally:
                await conn.close()

        asyncio.run(prepare())
        code = subprocess.run(command, env={**os.environ, "DATABASE_URL": dsn}, cwd=ROOT).returncode
        print("\n".join(asyncio.run(heaviest(dsn, args.top, args.width))))
        return code
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
