"""Where PostgreSQL applies a roster rule to millions of rows at once, it applies the very
rule services/roster/domain.py states: these tests run both on the same facts."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.roster import domain
from services.roster.class_members import current
from services.roster.importer import _HOME_SCHOOL

pytestmark = pytest.mark.integration

DAY0 = date(2026, 9, 1)
days = st.one_of(st.none(), st.integers(0, 30).map(lambda n: DAY0 + timedelta(days=n)))
schools = st.sampled_from(["A", "B", "C", "a", "Z"])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(begin=days, end=days, class_starts=days, class_ends=days, today=days.filter(lambda d: d is not None))
async def test_who_counts_today_is_decided_alike(postgres_url, begin, end, class_starts, class_ends, today):
    import asyncpg

    conn = await asyncpg.connect(postgres_url)
    try:
        in_sql = await conn.fetchval(
            f"SELECT {current()} FROM (SELECT $3::date AS begin_date, $4::date AS end_date) e, "
            f"(SELECT $5::date AS starts, $6::date AS ends) c WHERE $1::text IS NULL",
            None, today, begin, end, class_starts, class_ends)
    finally:
        await conn.close()
    span = domain.enrolment_span(begin, end, (class_starts, class_ends))
    assert in_sql == domain.is_current(span, today)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(listed=st.lists(schools, min_size=1, max_size=4, unique=True), primary=st.one_of(st.none(), schools),
       held=st.one_of(st.none(), schools))
async def test_the_home_school_of_a_student_of_several_schools_is_chosen_alike(postgres_url, listed, primary, held):
    import asyncpg

    conn = await asyncpg.connect(postgres_url)
    try:
        home, ordered = await conn.fetchrow(
            f"""SELECT h.home, ARRAY[h.home] || ARRAY(SELECT x FROM unnest(s.school_ids) x WHERE x <> h.home
                                                     ORDER BY x COLLATE "C")
                FROM (SELECT $1::text[] AS school_ids, $2::text AS primary_school) s,
                     (SELECT $3::text AS school_id) c,
                     LATERAL (SELECT {_HOME_SCHOOL} AS home) h""",
            listed, primary, held)
    finally:
        await conn.close()
    assert home == domain.home_school(listed, primary=primary, held=held)
    assert tuple(ordered) == domain.school_list(home, listed)
