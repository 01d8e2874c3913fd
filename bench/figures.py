"""Every figure of issue 14 in one run, each beside its raw baseline measured in the same run,
printed as one table and written as JSON. Run it as bench/run:

    bench/run [--scale 0.1] [--quick] [--json PATH] [--only PART,...] [--trigger-rate 5000]
              [--http-port-base PORT] [--keep]

Parts, in this order (--only picks some: import, slice, caseload, triggers, dashboard):
- import: a roster import of New York City times --scale (bench/roster_import.py: the
  package generated once and cached), first import stored and published, beside csv +
  COPY of its two big files; then the caseload service materialises every caseload from
  the published import (bench/caseload.py), beside a bare consumer reading the same
  records; then an identical and a 1%-changed re-import. This process's peak RSS over each
  import. Times at scale < 1 are extrapolated linearly to scale 1.0 for the goal.
- slice: SisStudentEnrolled through roster then caseload, end to end per instance, beside
  aiokafka + COPY + commit timed over at least 5 s (bench/slice.py).
- caseload: a seeded district; roster changes at 1,000/s, roster event -> membership event
  read back, beside the same records through Kafka alone; then 50 readers of
  GET /v1/caseloads/me, beside GET /healthz (bench/caseload.py).
- triggers: the seven trigger kinds interleaved for 20 s, beside the same records through
  Kafka alone (bench/cases.py): the rate the service sustains, handled over first send to
  every trigger committed, at 1.4x the goal offered (7,000/s: at exactly the goal this count
  is under it by construction, the last batch's tail counted against it); and trigger ->
  CaseOpened read back at the goal, 5,000/s offered (--trigger-rate).
- dashboard: 2,000,000 x --scale cases bulk-loaded, 20 readers of GET /v1/dashboard as a
  district admin, beside the same for one school (bench/cases.py).

--quick: small sizes and short loads (the import at scale 0.002, 10,000 slice events, a
district of 2,000 students, 5 s of triggers, 20,000 cases): under 3 minutes on 2 cores, for
trends and for checking the benches still run; its figures are not the issue's.

Each row: the figure, its goal, what was measured, the raw baseline of the same run,
measured / baseline, whether the goal is met (times measured below scale 0.1 are not judged:
fixed costs dominate them) and the 1-minute load average when the figure was taken. The
load average is also printed at the start and the end: this machine is shared, so compare
ratios, not absolute figures. Nothing here asserts a time; the exit status is 1 only when a
part failed to run.

Backends: KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL if set, else Apache Kafka from
deploy/local/kafka.sh and an embedded PostgreSQL in .caseflow/bench-run-postgres. Every
part runs under its own topic prefix and databases, dropped at its end unless --keep.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import subprocess
import sys
import time
import traceback
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import BIG_POSTGRES, ROOT, Backends, PeakRss, Ports, System, backends, load_average, write_json  # noqa: E402

PARTS = ("import", "slice", "caseload", "triggers", "dashboard")


@dataclass
class Row:
    """One figure of the table. measured and baseline share a unit; ratio is measured /
    baseline. met: None when this run cannot say (a part that failed, or a goal stated at a
    scale the run did not reach and that does not extrapolate)."""

    figure: str
    goal: str
    measured: float | None
    unit: str
    baseline: float | None = None
    baseline_label: str = ""
    met: bool | None = None
    note: str = ""
    load: float = field(default_factory=lambda: load_average()[0])

    @property
    def ratio(self) -> float | None:
        if self.measured is None or not self.baseline or math.isnan(self.baseline) or math.isnan(self.measured):
            return None
        return self.measured / self.baseline

    def as_dict(self) -> dict:
        return {**asdict(self), "ratio": self.ratio}


def amount(value: float | None, unit: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if unit == "ms":
        return f"{value:,.1f} ms" if value < 100 else f"{value:,.0f} ms"
    if unit == "s":
        return f"{value:,.1f} s"
    if unit == "MB":
        return f"{value:,.0f} MB"
    return f"{value:,.0f} {unit}"


def table(rows: list[Row]) -> str:
    """The rows as a fixed-width table, notes below it."""
    head = ("figure", "goal", "measured", "baseline (same run)", "ratio", "met", "load")
    cells = [head] + [(r.figure, r.goal, amount(r.measured, r.unit),
                       (f"{amount(r.baseline, r.unit)} {r.baseline_label}".strip() if r.baseline is not None
                        else r.baseline_label or "-"),
                       f"{r.ratio:.2f}x" if r.ratio is not None else "-",
                       {True: "yes", False: "NO", None: "-"}[r.met], f"{r.load:.1f}") for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    notes = [f"  [{i}] {r.note}" for i, r in enumerate(rows, 1) if r.note]
    for i, r in enumerate(rows, 1):
        if r.note:
            lines[i + 1] += f"  [{i}]"
    return "\n".join(lines + ([""] + notes if notes else []))


@dataclass
class Sizes:
    """What each part runs at."""

    import_scale: float
    slice_events: int
    district_students: int
    latency_seconds: float
    query_seconds: float
    trigger_rate: float
    trigger_seconds: float
    trigger_drain: float
    dashboard_cases: int
    dashboard_seconds: float

    @classmethod
    def of(cls, scale: float, quick: bool, trigger_rate: float = 5_000) -> Sizes:
        if quick:
            return cls(import_scale=0.002, slice_events=10_000, district_students=2_000, latency_seconds=6,
                       query_seconds=4, trigger_rate=trigger_rate, trigger_seconds=5, trigger_drain=25,
                       dashboard_cases=20_000, dashboard_seconds=4)
        return cls(import_scale=scale, slice_events=max(20_000, int(200_000 * scale)), district_students=10_000,
                   latency_seconds=30, query_seconds=10, trigger_rate=trigger_rate, trigger_seconds=20,
                   trigger_drain=120, dashboard_cases=max(20_000, int(2_000_000 * scale)), dashboard_seconds=10)


def extrapolated(seconds: float, scale: float) -> str:
    if scale == 1.0:
        return "at scale 1.0"
    if scale < 0.1:
        return f"at scale {scale:g}: too small to extrapolate to 1.0, not judged"
    return f"at scale {scale:g}; x{1 / scale:,.0f} -> {seconds / scale:,.0f} s at 1.0"


# ---------------------------------------------------------------------------- the parts


async def import_part(b: Backends, sizes: Sizes, ports: Ports, keep: bool) -> list[Row]:
    from caseload import materialize
    from roster_import import import_once, packages, raw_baseline, roster_pool

    scale = sizes.import_scale
    base, changed = packages(scale)
    rows = []
    async with System.new(b, "ri", keep=keep, ports=ports) as system:
        await system.prepare("roster", "caseload")
        print(f"\n== roster import and caseload materialisation, scale {scale:g} of New York City, prefix "
              f"{system.prefix}", flush=True)
        pool = await roster_pool(system)
        try:
            raw = await raw_baseline(pool, base)
            print(f"  raw baseline: csv + COPY of users and enrollments     {raw:8.1f} s", flush=True)
            with PeakRss() as rss_first:
                first = await import_once(system, pool, base, "first import")
            mat = await materialize(system, scale)
            with PeakRss() as rss_same:
                same = await import_once(system, pool, base, "identical re-import")
            with PeakRss() as rss_changed:
                one = await import_once(system, pool, changed, "1% changed re-import")
        finally:
            await pool.close()

    def by_goal(seconds: float, goal: float) -> bool | None:
        """Extrapolated linearly to scale 1.0; not judged below 0.1, where fixed costs (a
        process starting, a topic's first fetch) dominate and the extrapolation says nothing."""
        return seconds / scale < goal if scale >= 0.1 else None

    tag = f"scale {scale:g}"
    rows.append(Row(f"Caseload materialisation ({tag})", "< 300 s at 1.0", mat["seconds"], "s", mat["raw_seconds"],
                    "bare consumer", by_goal(mat["seconds"], 300),
                    f"{extrapolated(mat['seconds'], scale)}; {mat['records']:,} records -> {mat['memberships']:,} "
                    f"memberships; against the rule from scratch: {mat['missing']:,} missing, {mat['extra']:,} extra"
                    + (f"; {mat['dead_lettered']:,} dead-lettered" if mat["dead_lettered"] else "")))
    rows.append(Row(f"Roster import, first ({tag})", "< 300 s at 1.0", first["seconds"], "s", raw, "csv + COPY",
                    by_goal(first["seconds"], 300),
                    f"{extrapolated(first['seconds'], scale)}; stored {first['stored']:.1f} s + published "
                    f"{first['published']:.1f} s, {first['sent']:,} messages"))
    rows.append(Row(f"Roster import, 1% changed ({tag})", "< 60 s at 1.0", one["seconds"], "s", raw, "csv + COPY",
                    by_goal(one["seconds"], 60), f"{extrapolated(one['seconds'], scale)}; {one['sent']:,} messages"))
    rows.append(Row(f"Roster import, identical ({tag})", "< 30 s at 1.0, 0 events", same["seconds"], "s", raw,
                    "csv + COPY", False if same["changes"] else by_goal(same["seconds"], 30),
                    f"{extrapolated(same['seconds'], scale)}; {same['changes']:,} change events "
                    f"({same['sent']:,} messages published)"))
    rss = max(r.mb for r in (rss_first, rss_same, rss_changed))
    rows.append(Row(f"Roster import, peak RSS ({tag})", "< 2 GB at 1.0", rss, "MB", None, "",
                    rss < 2048 if scale == 1.0 else None,
                    f"this process's peak over each import (since {rss_first.since}); judged at scale 1.0 only"))
    return rows


async def slice_part(b: Backends, sizes: Sizes, ports: Ports, keep: bool) -> list[Row]:
    from slice import report, run_round

    print(f"\n== walking slice, {sizes.slice_events:,} events", flush=True)
    r = await run_round(b, sizes.slice_events, raw_seconds=5.0, ports=ports, keep=keep)
    report(sizes.slice_events, [r])
    goal = ">= 20,000 ev/s and >= 0.20x raw"

    def met(rate: float) -> bool:
        return rate >= 20_000 and rate / r["raw"] >= 0.2

    return [
        Row("Slice end to end per instance: roster", goal, r["roster"], "ev/s", r["raw"], "aiokafka+COPY+commit",
            met(r["roster"]), f"consume, inbox, store, outbox, relay publish; {sizes.slice_events:,} events; raw "
            f"timed over {r['raw_seconds']:.1f} s ({r['raw_passes']} passes); CPU per event: service "
            f"{r['roster_us']:,.0f} µs, PostgreSQL {r['roster_db_us']:,.0f} µs"),
        Row("Slice end to end per instance: caseload", goal, r["caseload"], "ev/s", r["raw"], "aiokafka+COPY+commit",
            met(r["caseload"]), f"consume, inbox, projection; CPU per event: service {r['caseload_us']:,.0f} µs, "
            f"PostgreSQL {r['caseload_db_us']:,.0f} µs"),
    ]


async def caseload_part(b: Backends, sizes: Sizes, ports: Ports, keep: bool) -> list[Row]:
    from caseload import latency_and_query

    print(f"\n== caseload: a district of {sizes.district_students:,} students; latency {sizes.latency_seconds:g} s "
          f"at 1,000/s, then 50 readers for {sizes.query_seconds:g} s", flush=True)
    out = await latency_and_query(b, ["latency", "query"], students=sizes.district_students, rate=1000.0,
                                  seconds=sizes.latency_seconds, query_seconds=sizes.query_seconds, full_query=False,
                                  ports=ports, keep=keep)
    lat, query = out["latency"], out["query"]
    unseen = lat["sent"] - lat["matched"]
    return [
        Row("Caseload page GET /v1/caseloads/me, 50 readers, p99", "< 50 ms", query["p99"] * 1000, "ms",
            query["healthz_p99"] * 1000, "/healthz", query["p99"] < 0.05 and not query["failures"],
            f"{query['items']} students a page; {query['rate']:,.0f} pages/s"
            + (f"; {query['failures']} FAILED" if query["failures"] else "")),
        Row("Roster event -> caseload event at 1,000/s, p99", "< 250 ms", lat["p99_seen"] * 1000, "ms",
            lat["baseline_p99"] * 1000, "Kafka alone", lat["p99_seen"] < 0.25 and not unseen,
            f"read back by a consumer; to the record's timestamp p99 {lat['p99_published'] * 1000:,.0f} ms; input "
            f"{lat['rate']:,.0f}/s" + (f"; {unseen:,} NOT SEEN" if unseen else "")),
    ]


# A rate is shown only by offering more than it: handled / (first send to all committed)
# at exactly the goal's rate counts the last batch's tail against it, and is under the goal
# by construction however fast the service. So the rate is measured at this share above the
# goal, the latency at the goal.
CAPACITY_OFFERED = 1.4


async def triggers_part(b: Backends, sizes: Sizes, ports: Ports, keep: bool) -> list[Row]:
    from cases import throughput

    rate, seconds = sizes.trigger_rate, sizes.trigger_seconds
    over = rate * CAPACITY_OFFERED
    print(f"\n== trigger -> CaseOpened, mixed kinds, {over:,.0f}/s offered for {seconds:g} s (the rate the service "
          "sustains)", flush=True)
    c = await throughput(b, int(over * seconds * 0.9) + 2_000, over, seconds, 0.1, "mixed", sizes.trigger_drain,
                         ports=ports, keep=keep)
    print(f"\n== trigger -> CaseOpened, mixed kinds, {rate:,.0f}/s offered for {seconds:g} s (latency at the goal)",
          flush=True)
    t = await throughput(b, int(rate * seconds * 0.9) + 2_000, rate, seconds, 0.1, "mixed", sizes.trigger_drain,
                         ports=ports, keep=keep)
    behind = "" if c["caught_up"] else f"; NOT caught up {sizes.trigger_drain:g} s after the load"
    return [
        Row("Trigger -> CaseOpened, mixed kinds: rate", ">= 5,000/s", c["processed_rate"], "/s",
            c["baseline_rate"], "Kafka alone", c["processed_rate"] >= 5_000 and c["caught_up"],
            f"{c['handled']:,} triggers handled / first send to all committed, offered {over:,.0f}/s "
            f"({CAPACITY_OFFERED:g}x the goal: a rate shows only when more is offered), sent {c['input_rate']:,.0f}/s"
            f"{behind}; at {rate:,.0f}/s offered: {t['processed_rate']:,.0f}/s by the same count"),
        Row("Trigger -> CaseOpened, mixed kinds: p99", "< 500 ms", t["p99_seen"] * 1000, "ms",
            t["baseline_p99"] * 1000, "Kafka alone", t["p99_seen"] < 0.5 and not t["missing"],
            f"at {rate:,.0f}/s offered, read back by a consumer; to the record's timestamp p99 "
            f"{t['p99_published'] * 1000:,.0f} ms" + (f"; {t['missing']:,} NOT SEEN" if t["missing"] else "")),
    ]


async def dashboard_part(b: Backends, sizes: Sizes, ports: Ports, keep: bool) -> list[Row]:
    from cases import dashboard_bench

    n = sizes.dashboard_cases
    print(f"\n== district dashboard, {n:,} cases, 20 readers for {sizes.dashboard_seconds:g} s", flush=True)
    d = await dashboard_bench(b, n, sizes.dashboard_seconds, 20, search=False, explain=False, ports=ports, keep=keep)
    goal = 100 if n <= 500_000 else 200
    return [Row(f"District dashboard p99, {d['cases']:,} cases",
                f"< {goal} ms at {'500k' if goal == 100 else '2M'} cases",
                d["p99"] * 1000, "ms", d["school_p99"] * 1000, "school-scoped", d["p99"] < goal / 1000 and not
                d["failures"], f"/healthz p99 {d['healthz_p99'] * 1000:,.1f} ms; {d['open_on_board']:,} open cases "
                f"on the board" + (f"; {d['failures']} FAILED" if d["failures"] else ""))]


RUNNERS = {"import": import_part, "slice": slice_part, "caseload": caseload_part, "triggers": triggers_part,
           "dashboard": dashboard_part}
FAILED_FIGURES = {"import": "Roster import and caseload materialisation", "slice": "Slice end to end",
                  "caseload": "Caseload page and roster -> caseload latency",
                  "triggers": "Trigger -> CaseOpened", "dashboard": "District dashboard"}


def git_commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


async def main() -> int:
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=0.1, help="share of New York City (default 0.1)")
    parser.add_argument("--quick", action="store_true", help="small sizes, short loads: under 3 minutes")
    parser.add_argument("--json", type=Path, help="where the JSON goes (default bench/results/run-<time>.json)")
    parser.add_argument("--only", help=f"comma-separated parts among {', '.join(PARTS)}")
    parser.add_argument("--trigger-rate", type=float, default=5_000,
                        help="triggers per second offered (default 5,000: the goal)")
    parser.add_argument("--keep", action="store_true", help="keep each part's topics and databases")
    parser.add_argument("--http-port-base", type=int, default=0, metavar="PORT",
                        help="the services' HTTP ports: PORT, PORT+1, ... in start order (default: free ports "
                             "chosen below the ephemeral range)")
    args = parser.parse_args()
    parts = [p.strip() for p in args.only.split(",")] if args.only else list(PARTS)
    if unknown := set(parts) - set(PARTS):
        parser.error(f"unknown parts: {', '.join(sorted(unknown))}")
    sizes = Sizes.of(args.scale, args.quick, args.trigger_rate)
    ports = Ports(args.http_port_base)
    started, started_at, load_start = time.perf_counter(), datetime.now(UTC), load_average()
    stamp = started_at.strftime("%Y%m%dT%H%M%SZ")
    out = args.json or ROOT / "bench" / "results" / f"run-{stamp}.json"
    print(f"bench/run: scale {args.scale:g}{' (--quick)' if args.quick else ''}, {os.cpu_count()} cores, "
          f"load average {' '.join(f'{x:.2f}' for x in load_start)}, commit {git_commit()}", flush=True)
    rows: list[Row] = []
    failed = []
    with ExitStack() as stack:
        b = backends(stack, "bench-run-postgres", BIG_POSTGRES)
        for part in PARTS:
            if part not in parts:
                continue
            try:
                rows += await RUNNERS[part](b, sizes, ports, args.keep)
            except Exception as e:  # noqa: BLE001 - one part failing must not hide the others' figures
                traceback.print_exc()
                failed.append(part)
                rows.append(Row(FAILED_FIGURES[part], "-", None, "", note=f"FAILED: {type(e).__name__}: {e}"[:300]))
    took, load_end = time.perf_counter() - started, load_average()
    quick = " --quick (small sizes: trends, not the goals)" if args.quick else ""
    print(f"\nissue 14's figures, scale {args.scale:g}{quick}, {os.cpu_count()} cores, {took:,.0f} s; "
          f"load average (1, 5, 15 min) at the start "
          f"{' '.join(f'{x:.2f}' for x in load_start)}, at the end {' '.join(f'{x:.2f}' for x in load_end)}")
    print(table(rows))
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, {"scale": args.scale, "quick": args.quick, "sizes": asdict(sizes), "cores": os.cpu_count(),
                     "commit": git_commit(), "started_at": started_at.isoformat(), "seconds": took,
                     "load_average": {"start": load_start, "end": load_end}, "failed_parts": failed,
                     "rows": [r.as_dict() for r in rows]})
    print(f"\nJSON: {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
