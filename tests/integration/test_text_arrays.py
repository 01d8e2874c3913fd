"""Lists given to PostgreSQL one per row (kit.db.text_array) arrive as they were sent: no
id an outside system sends can split into two elements or merge two into one. School ids
were joined by U+001F and split in SQL, so an id holding that character became two schools,
and a staff member listing one blank school held none."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.kit import db

pytestmark = pytest.mark.integration

AWKWARD = ["02M001", "A\x1fB", 'say "hi"', "back\\slash", "{braces}", "a,b", "NULL", " spaced ", "", "Ñuñez 😀",
           "line\nbreak", "\\\"", "}", "{"]


async def test_every_element_arrives_as_it_was_sent(postgres_url):
    conn = await db.connect(postgres_url)
    try:
        lists = [AWKWARD, [], ["A\x1fB"], None, ["NULL"], [""]]
        rows = await conn.fetch("SELECT x::text[] AS a FROM unnest($1::text[]) WITH ORDINALITY AS u(x, n) ORDER BY n",
                                [db.text_array(items) for items in lists])
        assert [r["a"] for r in rows] == lists
    finally:
        await conn.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.lists(st.text(alphabet=st.characters(blacklist_characters="\x00", codec="utf-8"), max_size=12),
                         max_size=5), min_size=1, max_size=6))
async def test_any_lists_of_text_round_trip(postgres_url, lists):
    conn = await db.connect(postgres_url)
    try:
        got = await conn.fetchval("SELECT array_agg(array_to_json(x::text[])::text ORDER BY n) "
                                  "FROM unnest($1::text[]) WITH ORDINALITY AS u(x, n)",
                                  [db.text_array(items) for items in lists])
        assert [json.loads(g) for g in got] == lists
    finally:
        await conn.close()
