"""Events built by PostgreSQL (services/kit/events_sql.py): the payload's JSON object, made
by to_json per field (json_object), holds what json_build_object held, field by field, for
every kind of value an event carries; only the spaces differ."""

from __future__ import annotations

import json

import pytest

from services.kit import db
from services.kit.events_sql import json_object

pytestmark = pytest.mark.integration

# name -> SQL expression of each kind of value events carry, NULLs and awkward text among them.
FIELDS = {
    "uuid": "'0b3c4d2e-1111-2222-3333-444455556666'::uuid", "text": "$1::text", "no_text": "NULL::text",
    "number": "42::bigint", "fraction": "1.50::numeric", "yes": "true", "no": "(1 = 2)", "no_bool": "NULL::boolean",
    "texts": "ARRAY[$1::text, 'b', NULL]", "no_texts": "NULL::text[]", "empty_texts": "ARRAY[]::text[]",
    "json": "to_json(ARRAY['x', 'y'])", "date": "'2026-09-01'::date", "no_date": "NULL::date",
    "at": "'2026-09-01 08:30:15.123456+00'::timestamptz",
}
AWKWARD = ['say "hi"', "back\\slash", "line\nbreak", "tab\tand\x01control", "Ñuñez 😀", "'quoted'", "", "}{,:"]


async def test_a_json_object_holds_what_json_build_object_held(postgres_url):
    conn = await db.connect(postgres_url)
    try:
        await conn.execute("SET TimeZone = 'UTC'")
        built = "json_build_object(" + ", ".join(f"'{name}', {expr}" for name, expr in FIELDS.items()) + ")::text"
        for text in AWKWARD:
            ours, theirs = await conn.fetchrow(f"SELECT {json_object(FIELDS)}, {built}", text)
            assert json.loads(ours) == json.loads(theirs)
            assert list(json.loads(ours)) == list(FIELDS)  # the fields in their order
            assert json.loads(ours)["text"] == text
    finally:
        await conn.close()


def test_a_field_name_is_a_name_never_text_to_quote():
    with pytest.raises(ValueError, match="not a field name"):
        json_object({"a\",\"b": "1"})
    with pytest.raises(ValueError, match="not a field name"):
        json_object({"it's": "1"})
