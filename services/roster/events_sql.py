"""Roster events built by PostgreSQL, in the contracts' shape, straight into the outbox.

A city-sized import changes millions of rows; building each event in Python would cost
more than everything else the import does. So the change tables (temporary tables of the
import or of the calendar step) are turned into outbox rows by one INSERT ... SELECT per
event type (services/kit/events_sql.py). A test decodes every payload with the contract's
model, so the two cannot drift; the kit's outbox refuses a row without a key.
"""

from __future__ import annotations

from dataclasses import dataclass

from contracts.topics import ROSTER_CLASSES, ROSTER_ENROLLMENTS, ROSTER_STAFF, ROSTER_STUDENTS
from services.kit.events_sql import outbox_insert

SOURCE = "caseflow.roster"


@dataclass(frozen=True)
class EventSql:
    topic: str
    sql: str


def event_sql(event_type: str, topic: str, rows: str, key: str, fields: dict[str, str]) -> EventSql:
    """INSERT INTO outbox the event of each row of `rows`, keyed by `key` (services/kit/events_sql.py).
    $1 district, $2 occurred_at (ISO text), $3 correlation id, $4 topic."""
    return EventSql(topic, outbox_insert(event_type=f"'{event_type}'", source=SOURCE, rows=rows, key=key,
                                         fields=fields, topic="$4", district_id="$1", occurred_at="$2",
                                         correlation_id="$3"))


STUDENT_FIELDS = {
    "student_id": "e.student_id", "source_id": "e.source_id", "school_id": "e.school_id",
    "school_ids": "to_json(e.school_ids)", "grade": "e.grade", "given_name": "e.given_name",
    "family_name": "e.family_name", "birth_date": "e.birth_date", "email": "e.email", "state_id": "e.state_id",
}
STAFF_FIELDS = {
    "staff_id": "e.staff_id", "source_id": "e.source_id", "role": "e.role", "given_name": "e.given_name",
    "family_name": "e.family_name", "email": "e.email", "identifier": "e.identifier",
    "school_ids": "to_json(e.school_ids)", "matched": "(e.email IS NOT NULL)",
}
MEMBER_FIELDS = {
    "person_id": "e.person_id", "role": "e.role", "class_id": "e.class_id",
    "class_source_id": "e.class_source_id", "user_source_id": "e.user_source_id", "school_id": "e.school_id",
}



def sis_student_events(change: str, rows: str, topic: str) -> str:
    """INSERT INTO outbox the StudentEnrolled (change 'enrolled') or StudentUpdated ('updated')
    of each row of `rows` that the SIS caused: each its own event id (e.roster_event_id,
    derived from the fact's), district, time and correlation id (store.enrol_students)."""
    event_type, fields = {
        "enrolled": ("roster.student_enrolled.v1", STUDENT_FIELDS),
        "updated": ("roster.student_updated.v1", {**STUDENT_FIELDS, "changed": "to_json(e.changed)"}),
    }[change]
    return outbox_insert(event_type=f"'{event_type}'", source=SOURCE, rows=f"{rows} WHERE change = '{change}'",
                         key="e.student_id", fields=fields, topic=topic, district_id="e.district_id",
                         occurred_at="e.occurred_at", correlation_id="e.correlation_id",
                         event_id="r.roster_event_id")


def sis_staff_events(rows: str, topic: str) -> str:
    """INSERT INTO outbox the StaffUpserted of each row of `rows` that the SIS caused, each
    its own event id (e.roster_event_id), district, time and correlation id (store.upsert_staff)."""
    return outbox_insert(event_type="'roster.staff_upserted.v1'", source=SOURCE, rows=rows, key="e.staff_id",
                         fields=STAFF_FIELDS, topic=topic, district_id="e.district_id", occurred_at="e.occurred_at",
                         correlation_id="e.correlation_id", event_id="r.roster_event_id")


# Removals before additions: one person's events are published in the order they happen.
MEMBER_REMOVED = event_sql("roster.enrollment_removed.v1", ROSTER_ENROLLMENTS.name,
                           "SELECT * FROM member_removals", "e.person_id", MEMBER_FIELDS)
MEMBER_ADDED = event_sql("roster.enrollment_added.v1", ROSTER_ENROLLMENTS.name,
                         "SELECT * FROM member_additions", "e.person_id",
                         {**MEMBER_FIELDS, "primary": "e.is_primary"})

# An import's events, in the order they are written; a person's enrolment events come
# after the person's own, a class's removal after its members' removals.
IMPORT_EVENTS = [
    event_sql("roster.student_enrolled.v1", ROSTER_STUDENTS.name,
              "SELECT * FROM student_changes WHERE change = 'enrolled'", "e.student_id", STUDENT_FIELDS),
    event_sql("roster.student_updated.v1", ROSTER_STUDENTS.name,
              "SELECT * FROM student_changes WHERE change = 'updated'", "e.student_id",
              {**STUDENT_FIELDS, "changed": "to_json(e.changed)"}),
    event_sql("roster.student_withdrawn.v1", ROSTER_STUDENTS.name, "SELECT * FROM student_withdrawals",
              "e.student_id", {"student_id": "e.student_id", "source_id": "e.source_id", "school_id": "e.school_id",
                               "reason": "e.reason"}),
    event_sql("roster.staff_upserted.v1", ROSTER_STAFF.name, "SELECT * FROM staff_changes", "e.staff_id",
              STAFF_FIELDS),
    event_sql("roster.staff_deactivated.v1", ROSTER_STAFF.name, "SELECT * FROM staff_deactivations", "e.staff_id",
              {"staff_id": "e.staff_id", "source_id": "e.source_id"}),
    event_sql("roster.class_upserted.v1", ROSTER_CLASSES.name, "SELECT * FROM class_changes", "e.class_id",
              {"class_id": "e.class_id", "source_id": "e.source_id", "school_id": "e.school_id",
               "class_type": "e.class_type", "title": "e.title", "class_code": "e.class_code",
               "course_source_id": "e.course_source_id", "grades": "to_json(e.grades)",
               "periods": "to_json(e.periods)"}),
    MEMBER_REMOVED,
    event_sql("roster.class_removed.v1", ROSTER_CLASSES.name, "SELECT * FROM class_removals", "e.class_id",
              {"class_id": "e.class_id", "source_id": "e.source_id", "school_id": "e.school_id"}),
    MEMBER_ADDED,
]
