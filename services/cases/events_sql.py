"""The cases service's events built by PostgreSQL, in the contracts' shape, straight into the outbox.

A batch of triggers opens hundreds of cases; building each CaseOpened in Python (a pydantic
model, its JSON, its CloudEvents headers, a COPY row) cost about as much as the rest of the
handler's Python. So the statement that opens the cases also writes their CaseOpened into
the outbox (services/kit/events_sql.py), from the same rows. A test decodes every row with
the contract (tests/integration/test_case_opened_by_postgres.py), so the two cannot drift.
"""

from __future__ import annotations

from services.kit.events_sql import outbox_insert

SOURCE = "caseflow.cases"


def utc_text(expr: str) -> str:
    """A timestamptz as ISO 8601 text in UTC, as Python's isoformat writes an aware UTC time
    (whatever the session's TimeZone): the contract's times are in UTC."""
    return f"""(to_char(({expr}) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US') || '+00:00')"""


def case_opened_events(rows: str, *, topic: str, occurred_at: str, order_by: str) -> str:
    """INSERT INTO outbox the CaseOpened of each row of `rows` (a case just opened, with its
    student's SIS id and its trigger's correlation id): keyed by student (cases.v1), a
    random event id as a new event has, occurred_at (ISO text) the moment the batch opened them."""
    return outbox_insert(
        event_type="'cases.case_opened.v1'", source=SOURCE, rows=rows, key="e.student_id", topic=topic,
        district_id="e.district_id", occurred_at=occurred_at, correlation_id="e.correlation_id",
        order_by=order_by,
        fields={"case_id": "e.case_id", "case_number": "e.case_number", "school_id": "e.school_id",
                "student_id": "e.student_id", "student_source_id": "e.student_source_id",
                "trigger_kind": "e.trigger_kind", "source_event_id": "e.source_event_id",
                "source_occurred_at": utc_text("e.opened_at"), "case_manager": "e.case_manager"},
    )
