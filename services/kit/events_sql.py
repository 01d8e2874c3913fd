"""Events built by PostgreSQL, in the contracts' shape, straight into the outbox.

When one statement changes thousands of rows (a roster import, a caseload materialised),
building each event in Python costs more than the change itself: a pydantic model, its
JSON, its CloudEvents headers, a COPY row. `outbox_insert` writes the SQL that does the
same in the database, as an INSERT ... SELECT over the rows of the change: the payload
`cloudevents.encode` would write (the event as JSON) and the headers
`cloudevents.headers_for` would (CloudEvents 1.0 Kafka binary mode, as text pairs, the
outbox's shape). The services that use it test that every row decodes, with
`cloudevents.decode`, to the event their contract describes.

The SQL is made from the service's own constants (event types, column expressions), never
from input: the values arrive as the rows' columns and the statement's parameters.
"""

from __future__ import annotations


def outbox_insert(*, event_type: str, source: str, rows: str, key: str, fields: dict[str, str], topic: str,
                  district_id: str, occurred_at: str, correlation_id: str, order_by: str | None = None,
                  event_id: str = "gen_random_uuid()") -> str:
    """SQL inserting into the outbox one event per row of `rows`.

    event_type: the SQL expression of its type, a quoted constant ('roster.student_enrolled.v1')
    or per row (a CASE choosing among the contract's types);

    rows: a SELECT (or a CTE's name wrapped in one), its columns read as e.<column>;
    key: the expression of the message key (the topic's key field), never NULL;
    fields: the event's own fields, name -> SQL expression of a known type (to_json turns
    text, numbers, booleans, uuids, arrays and json into their JSON forms; see json_object);
    topic, district_id, occurred_at (ISO 8601 text), correlation_id: SQL expressions, per
    row or parameters ($n); a NULL correlation id is left out of the headers, as
    cloudevents.headers_for leaves it out;
    order_by: the order the rows take in the outbox (the relay publishes in id order);
    event_id: the SQL expression of each event's id over the row as r.<column> (a column not
    named event_id), by default a random one, as a new Event has."""
    payload = json_object({"event_id": "e.event_id", "event_type": f"({event_type})::text",
                           "occurred_at": f"({occurred_at})::text", "district_id": f"({district_id})::text",
                           "correlation_id": f"({correlation_id})::text", "producer": f"'{source}'::text", **fields})
    order = f" ORDER BY {order_by}" if order_by else ""
    return f"""
        INSERT INTO outbox (topic, key, payload, headers)
        SELECT {topic}, convert_to(({key})::text, 'UTF8'),
               convert_to({payload}, 'UTF8'),
               ARRAY['ce_specversion', '1.0', 'ce_id', e.event_id::text, 'ce_type', ({event_type})::text,
                     'ce_source', '{source}', 'ce_time', ({occurred_at})::text,
                     'ce_districtid', ({district_id})::text, 'content-type', 'application/json']
               || CASE WHEN ({correlation_id}) IS NULL THEN ARRAY[]::text[]
                       ELSE ARRAY['ce_correlationid', ({correlation_id})::text] END
        FROM (SELECT {event_id} AS event_id, r.* FROM ({rows}) r) e{order}"""


def json_object(fields: dict[str, str]) -> str:
    """The SQL text expression of a JSON object: name -> SQL expression of a known type (not
    an untyped literal: write 'x'::text), each value as to_json writes it, NULL as null.

    What json_build_object writes, without its spaces, for two fifths less of PostgreSQL's
    CPU: json_build_object looks up each argument's type and output function at every row
    (a microsecond per field; events of 17 fields, millions of them in a city's import),
    to_json once per expression. Names are the contracts' field names, never input."""
    members = []
    for name, expr in fields.items():
        if not name.isidentifier():
            raise ValueError(f"{name!r} is not a field name")
        members.append(f"""'{'{' if not members else ','}"{name}":' || coalesce(to_json({expr})::text, 'null')""")
    return "(" + " || ".join(members) + " || '}')" if members else "'{}'"
