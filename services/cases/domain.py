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

The District Transfer Portal (seed 003), the cases service's side:
- A case is exported, on a transfer request, only by its own district and only while it has
  not gone to another district (`export_refusal`); its whole history goes in parts small
  enough for Kafka (`history_parts`).
- On acceptance the sending district's case becomes transferred out: kept, read-only, never
  deleted (`read_only`); it is no longer the student's open case.
- The destination's case gets a deterministic id, task, note and timeline ids
  (`transferred_case_id`, `transferred_id`, `timeline_key`), so each part applies once.
- One open case per student meets transferred cases (`trigger_case`): a case transferred in
  keeps its status; the student's own open case takes their triggers, else the open case
  transferred in does.
- A person made from a transfer's information is linked later to a roster student; matches
  are suggested by name and birth date (`suggestion`).
"""

from __future__ import annotations

import unicodedata
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from itertools import groupby
from uuid import UUID

from contracts.cases import (
    FileSubmitted,
    FormSubmitted,
    InterventionGroupMemberAdded,
    PlanCreated,
    PlanReviewConducted,
    StudentMeetingScheduled,
    TaskAssigned,
)
from contracts.transfers import CaseHeader, CaseHistoryPart, HistoryEntry, HistoryNote, HistoryTask, TransferredStudent
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


def manages_school(caller: Identity, school_id: str | None) -> bool:
    """Opening, closing, assigning and editing need manage_cases at the case's school (seed
    003: "must have Manage Cases Permissions"); other staff read the cases of the schools
    where they hold any access level (sees_school). A case with no school here (a person
    made from a transfer's information, waiting for an SIS connection: school_id None) is
    the district's Manage Cases users': any of them, at whichever school, sees it, works it
    and links it to a roster student (seed 003: they accept transfers)."""
    if school_id is None:
        return caller.has("manage_cases")
    return caller.holds("manage_cases", school_id)


def sees_school(caller: Identity, school_id: str | None) -> bool:
    """Reads the cases of this school (any access level there); a case with no school here:
    the district's Manage Cases users (manages_school) and district-wide staff."""
    if school_id is None:
        return caller.has("manage_cases") or caller.may_see_school(None)
    return caller.may_see_school(school_id)


NO_SCHOOL = ""  # in a scope: the cases with no school here (a transfer person's)


def case_scope(caller: Identity) -> list[str] | None:
    """The schools whose cases the caller reads, as the store takes them (None: the whole
    district), NO_SCHOOL among them for the district's Manage Cases users."""
    schools = caller.scope()
    if schools is not None and caller.has("manage_cases"):
        schools.append(NO_SCHOOL)
    return schools


def is_staff(caller: Identity) -> bool:
    """Holds some access level in the district (granted, by the roster default, or in the
    token): a signed token naming someone with none, or whose access was revoked, reads
    and works nothing here, not even tasks once assigned to them."""
    return bool(caller.roles)


def student_schools(school_id: str, school_ids: Iterable[str] | None) -> tuple[str, ...]:
    """Every school a student is enrolled in, sorted: the home school always among them;
    None (an older producer) means the home school alone; the roster's order changes nothing."""
    listed = {s.strip() for s in (school_ids or ())}
    return tuple(sorted((listed | {school_id}) - {""}))


def sees_student(caller: Identity, schools: Iterable[str]) -> bool:
    """Staff of any of the student's schools read the student's timeline and find them. A
    person made from a transfer's information has no school here: sees_school(None)."""
    schools = tuple(schools)
    return any(caller.may_see_school(s) for s in schools) if schools else sees_school(caller, None)


def manages_student(caller: Identity, schools: Iterable[str]) -> bool:
    """manage_cases in any of the student's schools: tasks and meetings for the student (a
    transfer person: the district's Manage Cases users)."""
    schools = tuple(schools)
    return any(manages_school(caller, s) for s in schools) if schools else manages_school(caller, None)


# ---------------------------------------------------------------------------- the District Transfer Portal (seed 003)

TRANSFERRED_OUT = "transferred_out"
# Ids the destination derives from what it was sent, the same however often a part arrives.
TRANSFER_IDS = UUID("5f1d2c3e-7a0b-4c8d-9e6f-003d15a7c0de")
MAX_PART_ENTRIES = 200      # timeline entries per part
MAX_PART_BYTES = 256 * 1024  # JSON of a part's entries, tasks and notes (Kafka takes 1,000,000 per message)


def export_refusal(case_status: str | None, transferred_to: str | None) -> str | None:
    """Why a case cannot be exported for a transfer request, in words (CaseHistoryUnavailable),
    or None. case_status None: no such case in the sending district (the request's
    district_id). Seed 003: a case leaves a district once; the one sent stays read-only."""
    if case_status is None:
        return "not a case of the sending district"
    if case_status == TRANSFERRED_OUT:
        return f"already transferred out to district {transferred_to}"
    return None


def read_only(case_status: str, case_number: str, transferred_to: str | None) -> str | None:
    """Why a case takes no more writes (edit, close, reopen, notes, its tasks), or None: a
    case transferred out is kept, read-only, never deleted (seed 003)."""
    if case_status == TRANSFERRED_OUT:
        return (f"case {case_number} was transferred to district {transferred_to}: it is kept here read-only; "
                f"district {transferred_to} works it now")
    return None


def transferred_out_summary(case_number: str, destination_district_id: str) -> str:
    return f"Case {case_number} transferred out to district {destination_district_id}"


def transferred_in_summary(source_district_id: str, source_case_number: str) -> str:
    return f"Case transferred in from {source_district_id} (case {source_case_number})"


def time_ordered_id(unix_ms: int, random: bytes) -> UUID:
    """A new id that sorts by its moment (UUID version 7, RFC 9562): unix_ms (milliseconds
    since 1970, 48 bits) first, then 74 bits of `random` (10 bytes, e.g. os.urandom(10)).
    For the ids that are ours to choose (a case a trigger opens): a batch's new rows then sit
    together at the end of the indexes keyed by them (cases_pkey, timeline_by_case), not one
    page each all over them, which costs a page read and, after each checkpoint, a full page
    written to the WAL. Ids another party can derive keep theirs (transferred_case_id).
    Raises ValueError when unix_ms does not fit 48 bits or random is not 10 bytes."""
    if not 0 <= unix_ms < 1 << 48 or len(random) != 10:
        raise ValueError("unix_ms must fit 48 bits and random be 10 bytes")
    r = int.from_bytes(random, "big")
    return UUID(int=(unix_ms << 80) | (0x7 << 76) | ((r >> 68) << 64) | (0b10 << 62) | (r & ((1 << 62) - 1)))


def transferred_case_id(request_id: UUID, source_case_id: UUID) -> UUID:
    """The destination's id of a transferred case: one per (request, source case), so every
    part of it, and every replay, finds the same case."""
    return uuid.uuid5(TRANSFER_IDS, f"case/{request_id}/{source_case_id}")


def transferred_id(case_id: UUID, source_id: UUID) -> UUID:
    """The destination's id of a task or a note of a transferred case (and of what a timeline
    entry is about): a note's entry finds its note; another request's copy gets other ids."""
    return uuid.uuid5(case_id, f"item/{source_id}")


def timeline_key(case_id: UUID, part: int, index: int) -> UUID:
    """A transferred timeline entry's key: its place in the part it came in."""
    return uuid.uuid5(case_id, f"timeline/{part}/{index}")


def transferred_in_key(case_id: UUID) -> UUID:
    return uuid.uuid5(case_id, "transferred-in")


def transfer_person_id(district_id: str, source_district_id: str, student: TransferredStudent, request_id: UUID,
                       source_case_id: UUID) -> UUID:
    """The person made from a transfer's information ("use transfer info"): one per student
    of the sending district (by their SIS id there), however many cases and requests bring
    them; a student sent without an SIS id (a person the sender itself had from a transfer)
    is one per case sent."""
    if student.source_id:
        return uuid.uuid5(TRANSFER_IDS, f"person/{district_id}/{source_district_id}/{student.source_id}")
    return uuid.uuid5(TRANSFER_IDS, f"person/{district_id}/{request_id}/{source_case_id}")


def history_parts(case: CaseHeader, student: TransferredStudent, timeline: Sequence[HistoryEntry],
                  tasks: Sequence[HistoryTask], notes: Sequence[HistoryNote], *,
                  max_entries: int = MAX_PART_ENTRIES, max_bytes: int = MAX_PART_BYTES) -> list[CaseHistoryPart]:
    """A case's whole history in parts numbered 1..n, each with the case and the student, at
    most `max_entries` timeline entries and about `max_bytes` of entries, tasks and notes;
    every entry, task and note in exactly one part, in order (timeline oldest first, then the
    tasks, then the case's notes).

    Entries of one moment (a trigger and the case it opened) stay in one part where they fit:
    parts are applied in any order, and entries of equal time keep their order only within a
    part. A task goes with its notes; when they do not fit in one part, the notes that do not
    travel apart, in the next parts' notes, naming their task (HistoryNote.task_id)."""
    parts: list[dict] = []
    current = {"timeline": [], "tasks": [], "notes": [], "bytes": 0}

    def size(item) -> int:
        return len(item.model_dump_json().encode()) + 1

    def empty() -> bool:
        return not (current["timeline"] or current["tasks"] or current["notes"])

    def room(nbytes: int, entries: int = 0) -> bool:
        return len(current["timeline"]) + entries <= max_entries and current["bytes"] + nbytes <= max_bytes

    def close() -> None:
        nonlocal current
        if not empty():
            parts.append(current)
            current = {"timeline": [], "tasks": [], "notes": [], "bytes": 0}

    def add(kind: str, item, nbytes: int, entries: int = 0) -> None:
        if not room(nbytes, entries):
            close()
        current[kind].append(item)
        current["bytes"] += nbytes

    for _, same_moment in groupby(timeline, key=lambda e: e.at):
        group = list(same_moment)
        sizes = [size(e) for e in group]
        fits_a_part = len(group) <= max_entries and sum(sizes) <= max_bytes
        if fits_a_part and not room(sum(sizes), len(group)):
            close()
        for entry, nbytes in zip(group, sizes, strict=True):
            add("timeline", entry, nbytes, 1)
    for task in tasks:
        bare = task.model_copy(update={"notes": []})
        note_sizes = [size(n) for n in task.notes]
        whole = size(bare) + sum(note_sizes)
        if not room(whole):
            close()
        if room(whole):
            add("tasks", task, whole)
            continue
        kept, nbytes = 0, size(bare)  # an empty part, and still too much: the notes that fit stay
        while kept < len(task.notes) and nbytes + note_sizes[kept] <= max_bytes:
            nbytes += note_sizes[kept]
            kept += 1
        add("tasks", task.model_copy(update={"notes": list(task.notes[:kept])}), nbytes)
        for note in task.notes[kept:]:
            apart = note.model_copy(update={"task_id": task.task_id})
            add("notes", apart, size(apart))
    for note in notes:
        add("notes", note, size(note))
    close()
    parts = parts or [current]
    return [CaseHistoryPart(case=case, student=student, part=i, parts=len(parts), timeline=p["timeline"],
                            tasks=p["tasks"], notes=p["notes"]) for i, p in enumerate(parts, start=1)]


@dataclass(frozen=True)
class OpenCase:
    """An open case of a student, as the trigger rule needs it."""

    case_id: UUID
    transferred_in: bool
    opened_at: datetime


def trigger_case(open_cases: Iterable[OpenCase]) -> UUID | None:
    """The case a student's triggers join (seed 004: one open case per student), or None
    (then an enabled trigger opens one). The student's own open case (opened here; at most
    one) first; else an open case transferred in (seed 003: support continues where it came
    from), the oldest if several. A case transferred in keeps the status it had: it may be
    open beside the student's own open case, which then keeps taking the triggers."""
    ranked = sorted(open_cases, key=lambda c: (c.transferred_in, c.opened_at, c.case_id))
    return ranked[0].case_id if ranked else None


def _folded(name: str | None) -> str:
    """A name as people would match it: case, accents and spacing aside."""
    decomposed = unicodedata.normalize("NFKD", name or "")
    return " ".join("".join(c for c in decomposed if not unicodedata.combining(c)).casefold().split())


def suggestion(given_name: str, family_name: str, birth_date: date | None, candidate_given: str,
               candidate_family: str, candidate_birth: date | None) -> tuple[int, tuple[str, ...]] | None:
    """How well a roster student matches a person made from a transfer's information (seed
    003: the destination links the case to an existing student), as (score, what matches),
    or None: birth date and both names 3; birth date and one name 2; both names 1 (a
    birth date alone, or one name alone, is no suggestion)."""
    same = tuple(what for what, yes in (
        ("birth date", birth_date is not None and birth_date == candidate_birth),
        ("family name", _folded(family_name) == _folded(candidate_family) != ""),
        ("given name", _folded(given_name) == _folded(candidate_given) != ""),
    ) if yes)
    names = sum(1 for what in same if what.endswith("name"))
    if "birth date" in same and names:
        return 1 + names, same
    if names == 2:
        return 1, same
    return None
