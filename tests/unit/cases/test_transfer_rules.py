"""Seed 003, the District Transfer Portal, the cases service's rules: a case's whole history
exported in parts small enough for Kafka, every entry, task and note in exactly one part; a
case transferred out is read-only and no longer exported; the destination's ids are
deterministic; one open case per student (seed 004) meets transferred cases; a person made
from a transfer's information is matched to roster students by name and birth date."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.transfers import CaseHeader, HistoryEntry, HistoryNote, HistoryTask, TransferredStudent
from services.cases.domain import (
    MAX_PART_BYTES,
    OpenCase,
    export_refusal,
    history_parts,
    read_only,
    suggestion,
    timeline_key,
    transfer_person_id,
    transferred_case_id,
    transferred_id,
    trigger_case,
)

T0 = datetime(2026, 9, 8, 9, 0, tzinfo=UTC)
CASE = CaseHeader(case_id=uuid.uuid4(), case_number="26-000042", status="open", school_id="H1",
                  trigger_kind="submit_form", opened_at=T0)
STUDENT = TransferredStudent(source_id="S-1", given_name="Ana", family_name="Reyes", birth_date=date(2011, 4, 2),
                             grade="09", school_id="H1")


def entries(n: int, same_every: int = 1) -> list[HistoryEntry]:
    return [HistoryEntry(at=T0 + timedelta(seconds=i // same_every), kind="submit_form", summary=f"Form {i}",
                         actor="okafor@d.example.org", ref_id=uuid.uuid4()) for i in range(n)]


def note(body: str = "Called home") -> HistoryNote:
    return HistoryNote(note_id=uuid.uuid4(), author="okafor@d.example.org", body=body, written_at=T0)


def task(notes: list[HistoryNote] | None = None) -> HistoryTask:
    return HistoryTask(task_id=uuid.uuid4(), title="Call home", assignee_email="okafor@d.example.org", status="open",
                       assigned_at=T0, notes=notes or [])


def flatten(parts):
    timeline = [e for p in parts for e in p.timeline]
    tasks = [t for p in parts for t in p.tasks]
    notes = [n for p in parts for n in p.notes]
    return timeline, tasks, notes


def test_a_long_history_goes_in_numbered_parts_each_entry_in_exactly_one():
    timeline = entries(450)
    parts = history_parts(CASE, STUDENT, timeline, [task([note()])], [note(), note()])
    assert [p.part for p in parts] == [1, 2, 3] and {p.parts for p in parts} == {3}
    assert all(len(p.timeline) <= 200 for p in parts)
    got_timeline, got_tasks, got_notes = flatten(parts)
    assert got_timeline == timeline  # oldest first, each once
    assert len(got_tasks) == 1 and len(got_notes) == 2
    assert all(p.case == CASE and p.student == STUDENT for p in parts)  # each part applies on its own


def test_a_short_history_is_one_part_and_an_empty_one_too():
    assert [p.part for p in history_parts(CASE, STUDENT, entries(3), [], [])] == [1]
    only = history_parts(CASE, STUDENT, [], [], [])
    assert len(only) == 1 and only[0].parts == 1 and only[0].timeline == []


def test_every_part_stays_well_under_the_message_limit():
    big = "x" * 10_000
    parts = history_parts(CASE, STUDENT, entries(50), [task([note(big) for _ in range(10)])],
                          [note(big) for _ in range(80)])
    for p in parts:
        assert len(p.model_dump_json().encode()) < MAX_PART_BYTES + 8_000 < 1_000_000


def test_entries_of_one_moment_stay_in_one_part_so_their_order_survives_any_delivery_order():
    # A trigger and the case it opened share their time: never cut between them.
    timeline = entries(401, same_every=2)  # pairs at one moment; 200 would cut the 100th pair
    parts = history_parts(CASE, STUDENT, timeline, [], [])
    for p in parts:
        later = {e.at for q in parts if q.part > p.part for e in q.timeline}
        assert not {e.at for e in p.timeline} & later
    assert flatten(parts)[0] == timeline


def test_a_task_whose_notes_do_not_fit_one_part_sends_the_rest_apart_naming_it():
    big = "y" * 10_000
    long_task = task([note(big) for _ in range(40)])  # about 400 KB of notes
    parts = history_parts(CASE, STUDENT, entries(2), [long_task], [note()])
    _, tasks, notes = flatten(parts)
    assert [t.task_id for t in tasks] == [long_task.task_id]  # the task itself once
    travelling = [n for n in notes if n.task_id == long_task.task_id]
    assert travelling and len(tasks[0].notes) + len(travelling) == 40
    assert [n.note_id for n in [*tasks[0].notes, *travelling]] == [n.note_id for n in long_task.notes]
    assert [n for n in notes if n.task_id is None] != []  # the case's own note, still a case note


@settings(max_examples=40, deadline=None)
@given(n_entries=st.integers(0, 700), tie=st.integers(1, 5), n_tasks=st.integers(0, 6),
       notes_per_task=st.integers(0, 30), n_notes=st.integers(0, 40), body=st.integers(1, 12_000))
def test_whatever_the_history_every_item_is_in_exactly_one_part(n_entries, tie, n_tasks, notes_per_task, n_notes,
                                                                body):
    timeline = entries(n_entries, tie)
    tasks = [task([note("z" * body) for _ in range(notes_per_task)]) for _ in range(n_tasks)]
    notes = [note("w" * body) for _ in range(n_notes)]
    parts = history_parts(CASE, STUDENT, timeline, tasks, notes)
    assert [p.part for p in parts] == list(range(1, len(parts) + 1)) and {p.parts for p in parts} == {len(parts)}
    got_timeline, got_tasks, got_notes = flatten(parts)
    assert got_timeline == timeline
    assert [t.task_id for t in got_tasks] == [t.task_id for t in tasks]
    sent = [n.note_id for t in got_tasks for n in t.notes] + [n.note_id for n in got_notes]
    assert sorted(sent) == sorted([n.note_id for t in tasks for n in t.notes] + [n.note_id for n in notes])
    assert all(len(p.timeline) <= 200 and len(p.model_dump_json()) < 1_000_000 for p in parts)


def test_a_case_is_exported_only_by_its_district_and_only_until_it_is_transferred_out():
    assert export_refusal("open", None) is None and export_refusal("closed", None) is None
    assert export_refusal(None, None) == "not a case of the sending district"
    assert "district d-east" in export_refusal("transferred_out", "d-east")


def test_a_case_transferred_out_is_read_only_and_says_where_it_went():
    assert read_only("open", "26-000001", None) is None and read_only("closed", "26-000001", None) is None
    why = read_only("transferred_out", "26-000001", "d-east")
    assert "26-000001" in why and "d-east" in why and "read-only" in why


def test_the_destination_derives_the_same_ids_from_the_same_delivery_and_others_from_another_request():
    request, other_request, source_case = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    case = transferred_case_id(request, source_case)
    assert case == transferred_case_id(request, source_case) != transferred_case_id(other_request, source_case)
    item = uuid.uuid4()
    assert transferred_id(case, item) == transferred_id(case, item) != transferred_id(
        transferred_case_id(other_request, source_case), item)
    assert timeline_key(case, 1, 0) != timeline_key(case, 2, 0) != timeline_key(case, 1, 1)


def test_a_transfer_person_is_one_per_student_of_the_sending_district_whatever_the_request():
    a = transfer_person_id("d-east", "d-west", STUDENT, uuid.uuid4(), uuid.uuid4())
    assert a == transfer_person_id("d-east", "d-west", STUDENT, uuid.uuid4(), uuid.uuid4())
    assert a != transfer_person_id("d-north", "d-west", STUDENT, uuid.uuid4(), uuid.uuid4())
    nameless = STUDENT.model_copy(update={"source_id": ""})  # sent without an SIS id: one per case
    request, case = uuid.uuid4(), uuid.uuid4()
    assert transfer_person_id("d-east", "d-west", nameless, request, case) != transfer_person_id(
        "d-east", "d-west", nameless, request, uuid.uuid4())


def test_one_open_case_per_student_the_students_own_case_takes_triggers_before_a_transferred_one():
    own, transferred, older_transferred = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    assert trigger_case([]) is None
    assert trigger_case([OpenCase(transferred, True, T0 - timedelta(days=90)), OpenCase(own, False, T0)]) == own
    # With no case of their own open, support continues in the case that came with them.
    assert trigger_case([OpenCase(transferred, True, T0)]) == transferred
    assert trigger_case([OpenCase(transferred, True, T0), OpenCase(older_transferred, True, T0 - timedelta(1))]) \
        == older_transferred


def test_roster_students_are_suggested_by_birth_date_and_names():
    born = date(2011, 4, 2)
    assert suggestion("Ana", "Reyes", born, "ana", "REYES", born) == (3, ("birth date", "family name", "given name"))
    assert suggestion("Ana", "Reyes", born, "Anita", "Reyes", born) == (2, ("birth date", "family name"))
    assert suggestion("Ana", "Reyes", born, "Ana", "Reyes", date(2012, 1, 1)) == (1, ("family name", "given name"))
    assert suggestion("José", "Núñez", born, "Jose", "Nunez", None)[0] == 1  # accents aside
    assert suggestion("Ana", "Reyes", born, "Lee", "Park", born) is None  # a birth date alone is no match
    assert suggestion("Ana", "Reyes", None, "Lee", "Reyes", None) is None
