"""The district dashboard's counts (kept by triggers as cases change, migration 002) equal
the counts recomputed from the cases themselves, after any sequence of openings, closings,
reopenings, moves to another school, team changes and deletions: for the whole district
and for any set of schools."""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import UTC, date, datetime

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from services.cases import store

pytestmark = pytest.mark.integration

SCHOOLS = ["02M001", "02M475", "13K430"]
TEAMS = [None, "Attendance", "Wellness"]
PEOPLE = [None, "a.reyes@schools.nyc.gov", "j.okafor@schools.nyc.gov"]

operations = st.lists(st.one_of(
    st.tuples(st.just("open"), st.sampled_from(SCHOOLS), st.sampled_from(TEAMS), st.sampled_from(PEOPLE),
              st.sampled_from(PEOPLE)),
    st.tuples(st.just("close"), st.integers(0, 50)),
    st.tuples(st.just("reopen"), st.integers(0, 50)),
    st.tuples(st.just("move"), st.integers(0, 50), st.sampled_from(SCHOOLS)),
    st.tuples(st.just("reassign"), st.integers(0, 50), st.sampled_from(TEAMS), st.sampled_from(PEOPLE),
              st.sampled_from(PEOPLE)),
    st.tuples(st.just("delete"), st.integers(0, 50)),
), min_size=1, max_size=40)


def expected(cases: list[dict], schools: list[str] | None) -> dict:
    open_ = [c for c in cases if c["status"] == "open" and (schools is None or c["school_id"] in schools)]

    def by(field: str) -> Counter:
        return Counter(c[field] for c in open_)

    return {"open_cases": len(open_), "by_school": by("school_id"), "by_team": by("team_name"),
            "by_team_leader": by("team_leader"), "by_case_manager": by("case_manager")}


def shown(board: dict) -> dict:
    return {"open_cases": board["open_cases"],
            **{d: Counter({row["key"]: row["open_cases"] for row in board[d]})
               for d in ("by_school", "by_team", "by_team_leader", "by_case_manager")}}


@pytest.fixture
async def cases_pool(service_db):
    return await service_db("cases")


@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(ops=operations)
async def test_every_dashboard_dimension_counts_what_the_cases_say(cases_pool, ops):
    district = f"d-{uuid.uuid4().hex[:8]}"
    async with cases_pool.acquire() as conn:
        for op in ops:
            ids = [r["case_id"] for r in await conn.fetch(
                "SELECT case_id FROM cases WHERE district_id = $1 ORDER BY case_number", district)]
            pick = ids[op[1] % len(ids)] if ids and op[0] != "open" else None
            if op[0] == "open":
                n = await conn.fetchval("SELECT count(*) FROM cases WHERE district_id = $1", district)
                await conn.execute(
                    """INSERT INTO cases (case_id, district_id, case_number, student_id, school_id, status,
                                          trigger_kind, source_event_id, opened_at, team_name, team_leader, case_manager)
                       VALUES ($1, $2, $3, $4, $5, 'open', 'attendance', $6, $7, $8, $9, $10)""",
                    uuid.uuid4(), district, f"2026-{n + 1:05d}", uuid.uuid4(), op[1], uuid.uuid4(),
                    datetime(2026, 11, 2, tzinfo=UTC), op[2], op[3], op[4])
            elif pick is None:
                continue
            elif op[0] == "close":
                await conn.execute("UPDATE cases SET status = 'closed' WHERE case_id = $1", pick)
            elif op[0] == "reopen":
                await conn.execute("UPDATE cases SET status = 'open' WHERE case_id = $1", pick)
            elif op[0] == "move":
                await conn.execute("UPDATE cases SET school_id = $2 WHERE case_id = $1", pick, op[2])
            elif op[0] == "reassign":
                await conn.execute("UPDATE cases SET team_name = $2, team_leader = $3, case_manager = $4 "
                                   "WHERE case_id = $1", pick, op[2], op[3], op[4])
            elif op[0] == "delete":
                await conn.execute("DELETE FROM cases WHERE case_id = $1", pick)
        cases = [dict(r) for r in await conn.fetch("SELECT * FROM cases WHERE district_id = $1", district)]
        for schools in (None, SCHOOLS[:1], SCHOOLS[1:]):
            board = await store.dashboard(conn, district_id=district, schools=schools, today=date(2026, 11, 2))
            assert shown(board) == expected(cases, schools), (ops, schools)


async def test_three_open_cases_at_two_schools_show_as_two_rows(cases_pool):
    """Issue 10's example: by_school was one row with a null key."""
    district = f"d-{uuid.uuid4().hex[:8]}"
    async with cases_pool.acquire() as conn:
        for n, school in enumerate(["02M001", "02M001", "02M475"]):
            await conn.execute(
                """INSERT INTO cases (case_id, district_id, case_number, student_id, school_id, status, trigger_kind,
                                      source_event_id, opened_at)
                   VALUES ($1, $2, $3, $4, $5, 'open', 'attendance', $6, now())""",
                uuid.uuid4(), district, f"2026-{n:05d}", uuid.uuid4(), school, uuid.uuid4())
        board = await store.dashboard(conn, district_id=district, schools=None, today=date(2026, 11, 2))
    assert board["by_school"] == [{"key": "02M001", "open_cases": 2}, {"key": "02M475", "open_cases": 1}]
