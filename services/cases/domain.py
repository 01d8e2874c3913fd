"""The case management rules (seed 004), without I/O.

- A district's Case Management Dictionary says which triggers open a case; a new district
  starts with everything off.
- An enabled trigger for a student with no open case opens one; with a case open, the
  trigger joins that case's timeline. One open case per student.
- Not retroactive: a trigger that happened before its dictionary entry was enabled opens
  nothing (the seed: cases are not opened retroactively for students who already had plans).
- Every trigger goes on the student's timeline, whether it opened a case or not.
- Dual enrolment: a student belongs to every school they are enrolled in; staff of each read
  the student's timeline and find the student; a case stays at the school it was opened at
  (the student's home school then).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime

from contracts.cases import (
    FileSubmitted,
    FormSubmitted,
    InterventionGroupMemberAdded,
    PlanCreated,
    PlanReviewConducted,
    StudentMeetingScheduled,
    TaskAssigned,
)
from services.kit.auth import Identity

# The dictionary's entries, in the seed's words.
DICTIONARY = {
    "submit_form": "Submit a Form",
    "create_plan": "Create a Plan",
    "assign_task": "Assign a Task",
    "schedule_meeting": "Schedule a Student Meeting",
    "conduct_plan_review": "Conduct a Plan Review",
    "submit_file": "Submit a File",
}

KIND_OF = {
    FormSubmitted: "submit_form",
    PlanCreated: "create_plan",
    InterventionGroupMemberAdded: "create_plan",  # joining an intervention group creates a plan
    TaskAssigned: "assign_task",
    StudentMeetingScheduled: "schedule_meeting",
    PlanReviewConducted: "conduct_plan_review",
    FileSubmitted: "submit_file",
}


@dataclass(frozen=True)
class Entry:
    """One dictionary entry of a district."""

    enabled: bool
    enabled_at: datetime | None


OPEN, JOIN, RECORD = "open", "join", "record"


def decide(kind: str, occurred_at: datetime, entry: Entry | None, has_open_case: bool) -> tuple[str, str]:
    """What a trigger does: open a case, join the open one, or only go on the timeline;
    and why, in words."""
    if has_open_case:
        return JOIN, "joined the open case"
    if entry is None or not entry.enabled:
        return RECORD, f"{DICTIONARY[kind]} does not open cases in this district"
    if entry.enabled_at is None or occurred_at < entry.enabled_at:
        return RECORD, f"happened before {DICTIONARY[kind]} was enabled: cases are not opened retroactively"
    return OPEN, f"opened a case ({DICTIONARY[kind]})"


def case_number(year: int, n: int) -> str:
    """Short enough to say on the phone: the year, then the district's count that year."""
    return f"{year % 100:02d}-{n:06d}"


def summary(trigger) -> str:
    """The timeline's words for a trigger (never the student's personal data)."""
    match trigger:
        case FormSubmitted():
            return f"Form submitted: {trigger.form_name}"
        case PlanCreated():
            return f"Plan created: {trigger.plan_name}"
        case InterventionGroupMemberAdded():
            return f"Added to intervention group {trigger.group_name} (plan created)"
        case TaskAssigned():
            due = f", due {trigger.due_date.isoformat()}" if trigger.due_date else ""
            return f"Task assigned to {trigger.assignee_email}: {trigger.title}{due}"
        case StudentMeetingScheduled():
            return f"Student meeting scheduled: {trigger.title}, {trigger.scheduled_for.isoformat(timespec='minutes')}"
        case PlanReviewConducted():
            outcome = f": {trigger.outcome}" if trigger.outcome else ""
            return f"Plan review conducted{outcome}"
        case FileSubmitted():
            return f"File submitted: {trigger.file_name}"
    raise ValueError(f"not a trigger: {type(trigger).__name__}")


def overdue(due_date: date | None, status: str, today: date) -> bool:
    return status == "open" and due_date is not None and due_date < today


# ---------------------------------------------------------------------------- access


def manages_school(caller: Identity, school_id: str) -> bool:
    """Opening, closing, assigning and editing need manage_cases at the case's school (seed
    003: "must have Manage Cases Permissions"); other staff read the cases of the schools
    where they hold any access level (Identity.may_see_school)."""
    return caller.holds("manage_cases", school_id)


def student_schools(school_id: str, school_ids: Iterable[str] | None) -> tuple[str, ...]:
    """Every school a student is enrolled in, sorted: the home school always among them;
    None (an older producer) means the home school alone; the roster's order changes nothing."""
    listed = {s.strip() for s in (school_ids or ())}
    return tuple(sorted((listed | {school_id}) - {""}))


def sees_student(caller: Identity, schools: Iterable[str]) -> bool:
    """Staff of any of the student's schools read the student's timeline and find them."""
    return any(caller.may_see_school(s) for s in schools)


def manages_student(caller: Identity, schools: Iterable[str]) -> bool:
    """manage_cases in any of the student's schools: tasks and meetings for the student."""
    return any(manages_school(caller, s) for s in schools)
