"""The District Transfer Portal (seed 003), the cases service's side, on real Kafka and
PostgreSQL: a case's whole history exported in parts on request, each entry, task and note
once; cases that cannot go answered with the reason; a request read twice exports once; the
sending district's case transferred out, read-only, out of the open counts; the destination's
case created once from parts delivered in any order and again, with the whole history; a
delivery waiting for its roster student; a person made from the transfer's information,
linked later; one open case per student beside a transferred one; only the destination
district sees the case it took in; two batches of deliveries at once do not deadlock. Only
the cases service runs (or none: its handlers on the database): the tests play the transfers
service, publishing its events."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, date, datetime, timedelta

import httpx
import pytest

from contracts.cases import FormSubmitted, TaskAssigned
from contracts.roster import StudentEnrolled
from contracts.transfers import (
    AcceptedCase,
    CaseDelivered,
    CaseHeader,
    CaseHistoryExported,
    CaseHistoryPart,
    CaseHistoryUnavailable,
    HistoryEntry,
    HistoryNote,
    HistoryTask,
    TransferAccepted,
    TransferredStudent,
    TransferRequested,
)
from services.kit.auth import mint
from services.kit.crash import CRASH_EXIT_CODE
from services.roster.domain import student_id_for
from tests.support import SECRET, Stack, eventually

pytestmark = pytest.mark.integration

WEST, EAST = "d-west", "d-east"  # the sending and the destination district


def bearer(district: str, roles: list[str], schools: list[str], email: str = "admin@d.example.org") -> dict:
    return {"Authorization": "Bearer " + mint(SECRET, email=email, district_id=district, schools=schools, roles=roles)}


WEST_ADMIN = bearer(WEST, ["district_admin", "manage_cases"], [])
EAST_ADMIN = bearer(EAST, ["district_admin", "manage_cases"], [], email="intake@east.example.org")
WEST_COUNSELLOR = bearer(WEST, ["manage_cases"], ["W1"], email="okafor@west.example.org")
EAST_COUNSELLOR = bearer(EAST, ["manage_cases"], ["E1"], email="lee@east.example.org")
BORN = date(2011, 4, 2)


def sid(district: str, source_id: str) -> str:
    return str(student_id_for(district, source_id))


def enrolled(district: str, source_id: str, school: str, *, given: str = "Ana", family: str = "Reyes",
             born: date | None = BORN, at: datetime | None = None) -> StudentEnrolled:
    return StudentEnrolled(district_id=district, occurred_at=at or datetime(2026, 9, 1, tzinfo=UTC),
                           student_id=student_id_for(district, source_id), source_id=source_id, school_id=school,
                           grade="09", given_name=given, family_name=family, birth_date=born)


def form(district: str, source_id: str, at: datetime, n: int = 0) -> FormSubmitted:
    return FormSubmitted(district_id=district, occurred_at=at, student_source_id=source_id, form_id=f"f-{n}",
                         form_name=f"Counseling referral {n}", actor_email="okafor@west.example.org")


@pytest.fixture
async def cases(system: Stack):
    await system.prepare("cases")
    service = await system.service("cases").start().ready()
    service.client = httpx.AsyncClient(base_url=service.url, timeout=30)
    yield service
    await service.client.aclose()


async def enable(client, headers: dict, kind: str = "submit_form") -> datetime:
    body = (await client.put(f"/v1/dictionary/{kind}", json={"enabled": True}, headers=headers)).json()
    return datetime.fromisoformat({i["trigger_kind"]: i for i in body["items"]}[kind]["enabled_at"])


async def cases_of(client, district_headers: dict, person: str, status: str | None = None) -> list[dict]:
    query = f"/v1/cases?person={person}" + (f"&status={status}" if status else "")
    return (await client.get(query, headers=district_headers)).json()["items"]


async def whole_timeline(client, headers: dict, student_id: str) -> list[dict]:
    items, after = [], 0
    while True:
        answer = await client.get(f"/v1/students/{student_id}/timeline?limit=500&after={after}", headers=headers)
        assert answer.status_code == 200, answer.text
        page = answer.json()
        items += page["items"]
        if page["next_after"] is None:
            return items
        after = page["next_after"]


def as_compared(entries: list[dict]) -> list[tuple]:
    """A timeline entry as both districts must show it (ids and case numbers are each's own)."""
    return [(e["at"], e["kind"], e["summary"], e["actor"], e["note"]) for e in entries]


async def a_case_with_a_long_history(system: Stack, client, source_id: str, *, entries: int = 420,
                                     big_task_notes: int = 0) -> dict:
    """A WEST case with `entries` forms on its timeline, three tasks (one done), notes on the
    case and on a task (`big_task_notes` of 10,000 characters each on one task)."""
    at = await enable(client, WEST_ADMIN) + timedelta(seconds=1)
    tasks = [uuid.uuid4() for _ in range(3)]
    await system.publish_all(
        [enrolled(WEST, source_id, "W1")]
        + [form(WEST, source_id, at + timedelta(milliseconds=i), i) for i in range(entries)]
        + [TaskAssigned(district_id=WEST, occurred_at=at + timedelta(seconds=5, milliseconds=i),
                        student_source_id=source_id, task_id=t, title=f"Task {i}",
                        assignee_email="okafor@west.example.org", due_date=date(2026, 12, 1))
           for i, t in enumerate(tasks)])

    async def whole():
        found = await cases_of(client, WEST_ADMIN, source_id)
        if found and found[0]["tasks_total"] == 3:
            return found[0]

    case = await eventually(whole, timeout=60, what="the long case with its three tasks")
    for i in range(3):
        assert (await client.post(f"/v1/cases/{case['case_id']}/notes", headers=WEST_ADMIN,
                                  json={"body": f"Case note {i}"})).status_code == 201
    assert (await client.post(f"/v1/tasks/{tasks[0]}/notes", headers=WEST_ADMIN,
                              json={"body": "Left a voicemail"})).status_code == 201
    for i in range(big_task_notes):
        assert (await client.post(f"/v1/tasks/{tasks[1]}/notes", headers=WEST_ADMIN,
                                  json={"body": f"{i:03d} " + "x" * 9_990})).status_code == 201
    assert (await client.post(f"/v1/tasks/{tasks[0]}/complete", headers=WEST_ADMIN)).status_code == 200
    return case


async def histories(system: Stack, request_id: uuid.UUID) -> list:
    out = []
    for r in await system.records("cases.histories.v1", key=str(request_id).encode()):
        kind = {b"cases.case_history_exported.v1": CaseHistoryExported,
                b"cases.case_history_unavailable.v1": CaseHistoryUnavailable}[dict(r.headers)["ce_type"]]
        out.append((kind.model_validate_json(r.value), len(r.value)))
    return out


async def exported(system: Stack, request_id: uuid.UUID, cases: int = 1) -> list:
    """The request's answers once every case is answered (all the parts of each)."""

    async def complete():
        found = [e for e, _ in await histories(system, request_id)]
        done = {e.case_id for e in found if isinstance(e, CaseHistoryUnavailable)}
        parts: dict = {}
        for e in found:
            if isinstance(e, CaseHistoryExported):
                parts.setdefault(e.history.case.case_id, set()).add(e.history.part)
                if len(parts[e.history.case.case_id]) == e.history.parts:
                    done.add(e.history.case.case_id)
        return found if len(done) == cases else None

    return await eventually(complete, timeout=60, what="the request's cases answered")


def requested(case_ids: list, request_id: uuid.UUID | None = None) -> TransferRequested:
    return TransferRequested(district_id=WEST, request_id=request_id or uuid.uuid4(), destination_district_id=EAST,
                             case_ids=case_ids, case_count=len(case_ids), requested_by="okafor@west.example.org",
                             expires_at=datetime.now(UTC) + timedelta(days=14))


def delivered(part: CaseHistoryPart, request_id: uuid.UUID, student_id: str | None,
              accepted_at: datetime = datetime(2026, 11, 2, 15, 0, tzinfo=UTC)) -> CaseDelivered:
    return CaseDelivered(district_id=EAST, request_id=request_id, source_district_id=WEST,
                         accepted_by="intake@east.example.org", accepted_at=accepted_at,
                         student_id=uuid.UUID(student_id) if student_id else None, history=part)


def a_part(*, given: str = "Mia", family: str = "Okafor", born: date | None = BORN, source_id: str = "W-77",
           status: str = "open", entries: int = 2) -> CaseHistoryPart:
    """A one-part history as the sending district would export it."""
    at = datetime(2026, 10, 1, 9, 0, tzinfo=UTC)
    note = HistoryNote(note_id=uuid.uuid4(), author="okafor@west.example.org", body="Met the family",
                       written_at=at + timedelta(hours=1))
    return CaseHistoryPart(
        case=CaseHeader(case_id=uuid.uuid4(), case_number="26-000099", status=status, school_id="W1",
                        trigger_kind="submit_form", opened_at=at, team_name="Grade 9 SST"),
        student=TransferredStudent(source_id=source_id, given_name=given, family_name=family, birth_date=born,
                                   grade="09", school_id="W1"),
        part=1, parts=1,
        timeline=[HistoryEntry(at=at + timedelta(minutes=i), kind="submit_form", summary=f"Form submitted: {i}",
                               actor="okafor@west.example.org") for i in range(entries)]
        + [HistoryEntry(at=note.written_at, kind="note", summary="Note on the case", actor=note.author,
                        ref_id=note.note_id)],
        tasks=[HistoryTask(task_id=uuid.uuid4(), title="Call home", assignee_email="okafor@west.example.org",
                           status="open", assigned_at=at)],
        notes=[note])


async def transferred_in(system: Stack, count: int) -> list[dict]:
    async def published():
        found = [json.loads(r.value) for r in await system.records("cases.v1")
                 if dict(r.headers)["ce_type"] == b"cases.case_transferred_in.v1"]
        return found if len(found) >= count else None

    return await eventually(published, timeout=60, what=f"{count} CaseTransferredIn")


# ---------------------------------------------------------------------------- the sending district


async def test_a_long_history_is_exported_whole_in_parts_each_entry_task_and_note_exactly_once(cases, system: Stack):
    client = cases.client
    case = await a_case_with_a_long_history(system, client, "long", entries=450, big_task_notes=30)
    request = requested([uuid.UUID(case["case_id"])])
    await system.publish(request)
    answers = await exported(system, request.request_id)
    sizes = [size for _, size in await histories(system, request.request_id)]

    parts = sorted(answers, key=lambda e: e.history.part)
    assert [p.history.part for p in parts] == list(range(1, len(parts) + 1)) and len(parts) >= 3
    assert all(p.history.parts == len(parts) and p.district_id == WEST for p in parts)
    assert all(len(p.history.timeline) <= 200 for p in parts) and max(sizes) < 300_000  # well under 1 MB
    student = parts[0].history.student
    assert (student.source_id, student.given_name, student.birth_date) == ("long", "Ana", BORN)

    # Every timeline entry of the case, once, entry by entry as the timeline shows them.
    timeline = [e for e in await whole_timeline(client, WEST_ADMIN, sid(WEST, "long"))
                if e["case_id"] == case["case_id"]]
    sent = [e for p in parts for e in p.history.timeline]
    assert len(sent) == len(timeline) == 450 + 1 + 3 + 3 + 1 + 30 + 1  # forms, opened, tasks, notes, completed
    assert [(e.at, e.kind, e.summary, e.actor) for e in sent] == [
        (datetime.fromisoformat(e["at"]), e["kind"], e["summary"], e["actor"]) for e in timeline]
    # Every task once; every note once, a task's with its task or naming it.
    tasks = [t for p in parts for t in p.history.tasks]
    assert sorted(str(t.task_id) for t in tasks) == sorted(t["task_id"] for t in case_tasks(
        (await client.get(f"/v1/cases/{case['case_id']}", headers=WEST_ADMIN)).json()))
    notes = [(n.note_id, t.task_id) for p in parts for t in p.history.tasks for n in t.notes] + [
        (n.note_id, n.task_id) for p in parts for n in p.history.notes]
    assert len(notes) == len({n for n, _ in notes}) == 3 + 1 + 30
    assert sum(1 for _, task in notes if task is None) == 3  # the case's own notes
    assert [t.status for t in sorted(tasks, key=lambda t: t.title)] == ["done", "open", "open"]
    log = cases.log()
    assert "Reyes" not in log and "2011-04-02" not in log  # no name, no birth date in the logs


def case_tasks(case: dict) -> list[dict]:
    return case["tasks"]


async def test_a_case_of_another_district_unknown_or_already_transferred_out_is_unavailable_with_the_reason(
        cases, system: Stack):
    client = cases.client
    at = await enable(client, WEST_ADMIN) + timedelta(seconds=1)
    await enable(client, EAST_ADMIN)
    await system.publish_all([enrolled(WEST, "w-1", "W1"), enrolled(EAST, "e-1", "E1"), form(WEST, "w-1", at),
                              form(EAST, "e-1", at)])
    west_case = (await eventually(lambda: cases_of(client, WEST_ADMIN, "w-1"), what="the west case"))[0]
    east_case = (await eventually(lambda: cases_of(client, EAST_ADMIN, "e-1"), what="the east case"))[0]
    unknown = uuid.uuid4()
    request = requested([uuid.UUID(west_case["case_id"]), uuid.UUID(east_case["case_id"]), unknown])
    await system.publish(request)
    answers = await exported(system, request.request_id, cases=3)
    unavailable = {str(e.case_id): e.reason for e in answers if isinstance(e, CaseHistoryUnavailable)}
    assert unavailable == {east_case["case_id"]: "not a case of the sending district",
                           str(unknown): "not a case of the sending district"}
    assert [e.history.case.case_id for e in answers if isinstance(e, CaseHistoryExported)] == [
        uuid.UUID(west_case["case_id"])]

    await system.publish(TransferAccepted(district_id=WEST, request_id=request.request_id,
                                          destination_district_id=EAST, accepted_by="intake@east.example.org",
                                          cases=[AcceptedCase(case_id=west_case["case_id"])]))
    await eventually(lambda: cases_of(client, WEST_ADMIN, "w-1", status="transferred_out"), what="transferred out")
    again = requested([uuid.UUID(west_case["case_id"])])
    await system.publish(again)
    [answer] = await exported(system, again.request_id)
    assert isinstance(answer, CaseHistoryUnavailable)
    assert answer.reason == "already transferred out to district d-east"


async def test_a_transfer_request_read_twice_exports_once(cases, system: Stack):
    client = cases.client
    at = await enable(client, WEST_ADMIN) + timedelta(seconds=1)
    await system.publish_all([enrolled(WEST, "twice", "W1")] + [form(WEST, "twice", at + timedelta(seconds=i), i)
                                                                for i in range(3)])

    async def whole():
        found = await cases_of(client, WEST_ADMIN, "twice")
        timeline = await whole_timeline(client, WEST_ADMIN, sid(WEST, "twice")) if found else []
        return found if len(timeline) == 4 else None

    case = (await eventually(whole, what="the case with its three forms"))[0]
    request = requested([uuid.UUID(case["case_id"])])
    await system.publish(request)
    first = await exported(system, request.request_id)
    # The same event again (a redelivery), and the same request under a new event id.
    await system.publish(request)
    await system.publish(request.model_copy(update={"event_id": uuid.uuid4()}))
    await system.caught_up("cases")
    again = await histories(system, request.request_id)
    assert len(again) == len(first) == 1
    assert [e.event_id for e, _ in again] == [e.event_id for e in first]


async def test_a_case_transferred_out_is_read_only_kept_whole_and_leaves_the_open_counts(cases, system: Stack):
    client = cases.client
    at = await enable(client, WEST_ADMIN) + timedelta(seconds=1)
    task = uuid.uuid4()
    await system.publish_all([enrolled(WEST, "mover", "W1"), form(WEST, "mover", at),
                              TaskAssigned(district_id=WEST, occurred_at=at + timedelta(seconds=1),
                                           student_source_id="mover", task_id=task, title="Call home",
                                           assignee_email="okafor@west.example.org",
                                           due_date=date.today() - timedelta(days=3))])

    async def with_task():
        found = await cases_of(client, WEST_ADMIN, "mover")
        return found if found and found[0]["tasks_total"] == 1 else None

    case = (await eventually(with_task, what="the case with its task"))[0]
    case_id = case["case_id"]
    board = (await client.get("/v1/dashboard", headers=WEST_ADMIN)).json()
    assert (board["open_cases"], board["overdue_tasks"]["count"]) == (1, 1)
    assert [t["title"] for t in (await client.get("/v1/tasks", headers=WEST_COUNSELLOR)).json()["items"]] == [
        "Call home"]
    request_id = uuid.uuid4()
    accepted = TransferAccepted(district_id=WEST, occurred_at=at + timedelta(minutes=1), request_id=request_id,
                                destination_district_id=EAST, accepted_by="intake@east.example.org",
                                cases=[AcceptedCase(case_id=case_id)])
    await system.publish(accepted)
    await system.publish(accepted.model_copy(update={"event_id": uuid.uuid4()}))  # accepted twice: once

    async def gone():
        body = (await client.get(f"/v1/cases/{case_id}", headers=WEST_COUNSELLOR)).json()
        return body if body["status"] == "transferred_out" else None

    body = await eventually(gone, what="the case transferred out")
    assert (body["transferred_to"], body["transferred_out_request"], body["transferred_out_by"]) == (
        EAST, str(request_id), "intake@east.example.org")
    assert body["tasks_total"] == 1  # kept whole: never deleted

    # Every write answers 409 naming where it went; reads still work.
    writes = [client.patch(f"/v1/cases/{case_id}", headers=WEST_COUNSELLOR, json={"team_name": "SST"}),
              client.post(f"/v1/cases/{case_id}/close", headers=WEST_COUNSELLOR, json={"reason": "moved"}),
              client.post(f"/v1/cases/{case_id}/reopen", headers=WEST_COUNSELLOR),
              client.post(f"/v1/cases/{case_id}/notes", headers=WEST_COUNSELLOR, json={"body": "x"}),
              client.post(f"/v1/tasks/{task}/notes", headers=WEST_COUNSELLOR, json={"body": "x"}),
              client.post(f"/v1/tasks/{task}/complete", headers=WEST_COUNSELLOR)]
    for write in writes:
        answer = await write
        assert answer.status_code == 409 and "d-east" in answer.json()["detail"], answer.text
    timeline = await whole_timeline(client, WEST_COUNSELLOR, sid(WEST, "mover"))
    assert [e["kind"] for e in timeline] == ["submit_form", "case_opened", "assign_task", "case_transferred_out"]
    assert timeline[-1]["summary"] == f"Case {case['case_number']} transferred out to district d-east"
    assert [c["case_id"] for c in await cases_of(client, WEST_ADMIN, "mover", status="transferred_out")] == [case_id]

    # Out of the open counts; no longer the student's open case: a new trigger opens a new one.
    board = (await client.get("/v1/dashboard", headers=WEST_ADMIN)).json()
    assert board["open_cases"] == 0 and board["by_school"] == []
    assert board["overdue_tasks"] == {"count": 0, "oldest": []}  # its tasks are no one's work here now
    assert (await client.get("/v1/tasks?status=all", headers=WEST_COUNSELLOR)).json()["items"] == []
    await system.publish(form(WEST, "mover", datetime.now(UTC) + timedelta(seconds=1), 9))

    async def reopened_elsewhere():
        return await cases_of(client, WEST_ADMIN, "mover", status="open")

    fresh = (await eventually(reopened_elsewhere, what="a new case for the student"))[0]
    assert fresh["case_id"] != case_id
    assert (await client.get("/v1/dashboard", headers=WEST_ADMIN)).json()["open_cases"] == 1

    async def out_published():
        found = [json.loads(r.value) for r in await system.records("cases.v1")
                 if dict(r.headers)["ce_type"] == b"cases.case_transferred_out.v1"]
        return found or None

    [out] = await eventually(out_published, what="CaseTransferredOut")
    assert (out["case_id"], out["destination_district_id"], out["request_id"]) == (case_id, EAST, str(request_id))
    await system.caught_up("cases")
    assert len(await out_published()) == 1


# ---------------------------------------------------------------------------- the destination district


async def test_parts_delivered_out_of_order_and_again_make_one_case_with_the_whole_history_seen_only_by_the_destination(
        cases, system: Stack):
    client = cases.client
    source = await a_case_with_a_long_history(system, client, "long", entries=420, big_task_notes=4)
    await system.publish(enrolled(EAST, "e-long", "E1", given="Ana", family="Reyes"))
    request = requested([uuid.UUID(source["case_id"])])
    await system.publish(request)
    parts = sorted(await exported(system, request.request_id), key=lambda e: e.history.part)
    assert len(parts) >= 3
    deliveries = [delivered(p.history, request.request_id, sid(EAST, "e-long")) for p in parts]
    # Last part first, then all of them again, then one part under a new event id.
    for d in [*reversed(deliveries), *deliveries, deliveries[1].model_copy(update={"event_id": uuid.uuid4()})]:
        await system.publish(d)
    [announced] = await transferred_in(system, 1)
    await system.caught_up("cases")
    assert len(await transferred_in(system, 1)) == 1  # once, whatever came twice

    found = await cases_of(client, EAST_ADMIN, "e-long")
    assert len(found) == 1
    case = (await client.get(f"/v1/cases/{found[0]['case_id']}", headers=EAST_COUNSELLOR)).json()
    assert case["case_id"] == announced["case_id"] and announced["student_id"] == sid(EAST, "e-long")
    assert (case["transferred_in_from"], case["transferred_in_case_id"], case["transferred_in_case_number"],
            case["transferred_in_by"]) == (WEST, source["case_id"], source["case_number"], "intake@east.example.org")
    assert case["status"] == "open" and case["school_id"] == "E1" and case["tasks_total"] == 3
    assert case["case_number"].startswith("26-")  # the destination's own numbering
    assert case["opened_at"] == source["opened_at"]

    # The whole history, entry by entry, notes included.
    west = [e for e in await whole_timeline(client, WEST_ADMIN, sid(WEST, "long"))
            if e["case_id"] == source["case_id"]]
    east = await whole_timeline(client, EAST_ADMIN, sid(EAST, "e-long"))
    assert [e["kind"] for e in east].count("case_transferred_in") == 1
    arrived = next(e for e in east if e["kind"] == "case_transferred_in")
    assert arrived["summary"] == f"Case transferred in from d-west (case {source['case_number']})"
    assert as_compared([e for e in east if e["kind"] != "case_transferred_in"]) == as_compared(west)
    assert len(west) == 420 + 1 + 3 + 3 + 1 + 4 + 1
    east_tasks = sorted(case["tasks"], key=lambda t: t["title"])
    assert [(t["title"], t["status"]) for t in east_tasks] == [("Task 0", "done"), ("Task 1", "open"),
                                                               ("Task 2", "open")]
    db = await system.db("cases")
    try:
        notes = await db.fetch("SELECT task_id, body FROM notes WHERE case_id = $1", uuid.UUID(case["case_id"]))
    finally:
        await db.close()
    assert len(notes) == 3 + 1 + 4 and sum(1 for n in notes if n["task_id"] is None) == 3

    # The destination's case only: the sending district does not see it, nor another district.
    assert (await client.get(f"/v1/cases/{case['case_id']}", headers=WEST_ADMIN)).status_code == 404
    assert (await client.post(f"/v1/cases/{case['case_id']}/notes", headers=WEST_ADMIN, json={"body": "x"})
            ).status_code == 404
    assert (await client.get(f"/v1/students/{sid(EAST, 'e-long')}/timeline", headers=WEST_ADMIN)).status_code == 404
    assert case["case_id"] not in {c["case_id"] for c in await cases_of(client, WEST_ADMIN, "Reyes")}
    elsewhere = bearer("d-north", ["district_admin", "manage_cases"], [])
    assert (await client.get(f"/v1/cases/{case['case_id']}", headers=elsewhere)).status_code == 404
    # And it is the destination's to work: a note, with manage_cases at the student's school.
    assert (await client.post(f"/v1/cases/{case['case_id']}/notes", headers=EAST_COUNSELLOR,
                              json={"body": "Welcome meeting set"})).status_code == 201
    assert "Reyes" not in cases.log() and "voicemail" not in cases.log()


async def test_a_crash_between_the_database_commit_and_the_offset_commit_applies_each_part_once(system: Stack):
    """Seed 003: a crash between any two steps neither loses nor duplicates a case. The
    service dies after committing the parts, before Kafka hears of it: they come again,
    and change nothing."""
    await system.prepare("cases")
    request_id = uuid.uuid4()
    whole = a_part(entries=3)
    halves = [whole.model_copy(update={"part": 1, "parts": 2, "timeline": whole.timeline[:2], "notes": []}),
              whole.model_copy(update={"part": 2, "parts": 2, "timeline": whole.timeline[2:], "tasks": []})]
    await system.publish_all([delivered(p, request_id, None) for p in reversed(halves)])
    crashing = system.service("cases").start(CASEFLOW_CRASH_AT="consumer.after_db_commit")
    assert await crashing.exited() == CRASH_EXIT_CODE
    service = await system.service("cases").start().ready()
    [announced] = await transferred_in(system, 1)
    await system.caught_up("cases")
    assert len(await transferred_in(system, 1)) == 1
    async with httpx.AsyncClient(base_url=service.url) as client:
        found = await cases_of(client, EAST_ADMIN, "Okafor")
        assert [c["case_id"] for c in found] == [announced["case_id"]] and found[0]["tasks_total"] == 1
        timeline = await whole_timeline(client, EAST_ADMIN, announced["student_id"])
    assert [e["kind"] for e in timeline] == ["submit_form", "submit_form", "submit_form", "note",
                                             "case_transferred_in"]


async def test_a_delivery_for_a_roster_student_not_known_yet_waits_then_applies_when_they_arrive(
        cases, system: Stack):
    client = cases.client
    request_id = uuid.uuid4()
    await system.publish(delivered(a_part(), request_id, sid(EAST, "newcomer")))
    await system.caught_up("cases")
    assert await cases_of(client, EAST_ADMIN, "newcomer") == []
    assert await system.records("cases.v1") == []  # nothing transferred in yet

    await system.publish(enrolled(EAST, "newcomer", "E1", given="Mia", family="Okafor"))
    found = await eventually(lambda: cases_of(client, EAST_ADMIN, "newcomer"), what="the waiting delivery applied")
    assert found[0]["school_id"] == "E1" and found[0]["student_id"] == sid(EAST, "newcomer")
    [announced] = await transferred_in(system, 1)
    assert announced["case_id"] == found[0]["case_id"] and announced["school_id"] == "E1"
    timeline = await whole_timeline(client, EAST_COUNSELLOR, sid(EAST, "newcomer"))
    assert [e["kind"] for e in timeline] == ["submit_form", "submit_form", "note", "case_transferred_in"]
    assert timeline[2]["note"] == "Met the family"

    # A delivery naming another district's student can never apply: dead-lettered, with why.
    await system.publish(enrolled(WEST, "w-only", "W1"))

    async def known_in_west():
        answer = await client.get(f"/v1/students/{sid(WEST, 'w-only')}/timeline", headers=WEST_ADMIN)
        return answer.status_code == 200

    await eventually(known_in_west, what="the west student")
    await system.publish(delivered(a_part(), uuid.uuid4(), sid(WEST, "w-only")))

    async def dead():
        return await system.records("transfers.deliveries.v1.DLT")

    [letter] = await eventually(dead, what="the dead letter")
    assert "names a student of district d-west, not d-east" in dict(letter.headers)["dlt_reason"].decode()


async def test_use_transfer_info_makes_a_person_of_the_district_linked_later_to_a_roster_student(
        cases, system: Stack):
    client = cases.client
    first, second = a_part(source_id="W-77"), a_part(source_id="W-77", status="closed")
    await system.publish(delivered(first, uuid.uuid4(), None))
    await system.publish(delivered(second, uuid.uuid4(), None))  # another request, the same student
    announced = await transferred_in(system, 2)
    assert len({a["student_id"] for a in announced}) == 1  # one person, two cases
    person = announced[0]["student_id"]
    assert {a["school_id"] for a in announced} == {None}
    assert person not in {sid(EAST, s) for s in ("mia", "other", "stranger")}

    # Like a student on the case and the timeline: no school here, so the district's Manage
    # Cases users (at any school: those who accept and link transfers) and district-wide staff.
    found = await cases_of(client, EAST_ADMIN, "Okafor")
    assert len(found) == 2 and {(c["given_name"], c["family_name"], c["school_id"]) for c in found} == {
        ("Mia", "Okafor", None)}
    open_case = next(c for c in found if c["status"] == "open")
    assert (await client.get(f"/v1/cases/{open_case['case_id']}", headers=EAST_COUNSELLOR)).status_code == 200
    assert len(await cases_of(client, EAST_COUNSELLOR, "Okafor")) == 2
    teacher = bearer(EAST, ["caseload_viewer"], ["E1"], email="teacher@east.example.org")
    assert (await client.get(f"/v1/cases/{open_case['case_id']}", headers=teacher)).status_code == 404
    assert await cases_of(client, teacher, "Okafor") == []
    timeline = await whole_timeline(client, EAST_ADMIN, person)
    assert len([e for e in timeline if e["kind"] == "case_transferred_in"]) == 2
    refused = await client.post("/v1/tasks", headers=EAST_ADMIN, json={
        "student_id": person, "title": "Call home", "assignee_email": "lee@east.example.org"})
    assert refused.status_code == 409 and "link them" in refused.json()["detail"]

    # The student shows up in the roster; suggestions by name and birth date, best first.
    await system.publish_all([enrolled(EAST, "mia", "E1", given="Mia", family="Okafor"),
                              enrolled(EAST, "other", "E2", given="Mia", family="Okafor", born=date(2012, 1, 1)),
                              enrolled(EAST, "stranger", "E1", given="Lee", family="Park")])

    async def suggested():
        body = (await client.get(f"/v1/cases/{open_case['case_id']}/student-suggestions", headers=EAST_ADMIN)).json()
        return body["items"] if len(body["items"]) == 2 else None

    suggestions = await eventually(suggested, what="two suggestions")
    assert [(s["student_id"], s["score"]) for s in suggestions] == [(sid(EAST, "mia"), 3), (sid(EAST, "other"), 1)]
    assert suggestions[0]["matches"] == ["birth date", "family name", "given name"]

    # Linking moves the person's cases and timeline to the student, at the student's school.
    linked = await client.put(f"/v1/cases/{open_case['case_id']}/student", headers=EAST_ADMIN,
                              json={"student_id": sid(EAST, "mia")})
    assert linked.status_code == 200, linked.text
    assert (linked.json()["student_id"], linked.json()["school_id"]) == (sid(EAST, "mia"), "E1")
    again = await client.put(f"/v1/cases/{open_case['case_id']}/student", headers=EAST_ADMIN,
                             json={"student_id": sid(EAST, "mia")})
    assert again.status_code == 200  # a retried link is one link
    other = await client.put(f"/v1/cases/{open_case['case_id']}/student", headers=EAST_ADMIN,
                             json={"student_id": sid(EAST, "other")})
    assert other.status_code == 409
    moved = await whole_timeline(client, EAST_COUNSELLOR, sid(EAST, "mia"))  # now the school's staff see it
    assert [e["kind"] for e in moved].count("case_transferred_in") == 2
    assert [e["kind"] for e in moved].count("student_linked") == 2
    assert await whole_timeline(client, EAST_ADMIN, person) == []
    assert {c["student_id"] for c in await cases_of(client, EAST_ADMIN, "Okafor")} == {sid(EAST, "mia")}
    assert (await client.get(f"/v1/cases/{open_case['case_id']}", headers=EAST_COUNSELLOR)).status_code == 200

    # A later case for the same person goes straight to the student they were linked to.
    await system.publish(delivered(a_part(source_id="W-77"), uuid.uuid4(), None))
    third = [a for a in await transferred_in(system, 3) if a["case_id"] not in {b["case_id"] for b in announced}]
    assert [a["student_id"] for a in third] == [sid(EAST, "mia")]
    assert "Okafor" not in cases.log() and "2011-04-02" not in cases.log()


async def test_one_open_case_per_student_triggers_join_the_students_own_case_beside_a_transferred_open_one(
        cases, system: Stack):
    """Seed 004 meets seed 003: a case transferred in keeps its status, so it may be open
    beside the student's own open case; the student's own case keeps taking their triggers,
    and only when none of their own is open do triggers join the transferred one."""
    client = cases.client
    at = await enable(client, EAST_ADMIN) + timedelta(seconds=1)
    await system.publish_all([enrolled(EAST, "kai", "E1"), form(EAST, "kai", at, 1)])
    own = (await eventually(lambda: cases_of(client, EAST_ADMIN, "kai"), what="the student's own case"))[0]
    await system.publish(delivered(a_part(), uuid.uuid4(), sid(EAST, "kai")))
    [announced] = await transferred_in(system, 1)
    both = await cases_of(client, EAST_ADMIN, "kai", status="open")
    assert {c["case_id"] for c in both} == {own["case_id"], announced["case_id"]}

    await system.publish(form(EAST, "kai", at + timedelta(seconds=5), 2))

    async def joined():
        entries = [e for e in await whole_timeline(client, EAST_ADMIN, sid(EAST, "kai")) if e["kind"] == "submit_form"
                   and e["summary"] == "Form submitted: Counseling referral 2"]
        return entries or None

    assert (await eventually(joined, what="the trigger on the timeline"))[0]["case_id"] == own["case_id"]
    refused = await client.post(f"/v1/cases/{announced['case_id']}/reopen", headers=EAST_ADMIN)
    assert refused.status_code == 409  # it is open already

    # With the student's own case closed, support continues in the transferred case.
    assert (await client.post(f"/v1/cases/{own['case_id']}/close", headers=EAST_ADMIN, json={"reason": "done"})
            ).status_code == 200
    await system.publish(form(EAST, "kai", at + timedelta(seconds=10), 3))

    async def joined_transferred():
        entries = [e for e in await whole_timeline(client, EAST_ADMIN, sid(EAST, "kai")) if e["kind"] == "submit_form"
                   and e["summary"] == "Form submitted: Counseling referral 3"]
        return entries or None

    assert (await eventually(joined_transferred, what="the next trigger"))[0]["case_id"] == announced["case_id"]
    assert len(await cases_of(client, EAST_ADMIN, "kai")) == 2  # no third case opened
    reopen = await client.post(f"/v1/cases/{own['case_id']}/reopen", headers=EAST_ADMIN)
    assert reopen.status_code == 409 and announced["case_number"] in reopen.json()["detail"]
    assert (await client.get("/v1/dashboard", headers=EAST_ADMIN)).json()["open_cases"] == 1
    db = await system.db("cases")
    try:  # cases opened by week: a transferred case was not opened here
        assert await db.fetchval("SELECT sum(opened) FROM weekly_openings WHERE district_id = $1", EAST) == 1
    finally:
        await db.close()


async def test_two_batches_of_deliveries_for_the_same_persons_in_opposite_orders_at_once_do_not_deadlock(
        service_db, monkeypatch):
    """Two consumers' batches at once (real PostgreSQL, no service): one applies a delivery
    for person X and pauses; the other, for the same two persons in the other order, goes as
    far as it can; then the first goes on. Locked delivery by delivery, each held one person
    and waited for the other's (a deadlock: both waited deadlock_timeout, one was retried;
    bench/transfers.py met it between a batch of deliveries and a transfer out). Each batch
    locks all its persons first, in one order: the second waits, then both commit."""
    import asyncio

    from services.cases import handlers
    from services.kit.consumer import UnitOfWork
    from services.kit.settings import AuthSettings, KafkaSettings, Settings

    settings = Settings(service="cases", database_url="", kafka=KafkaSettings(), auth=AuthSettings(secret="x" * 40),
                        http_port=0)
    pool = await service_db("cases")
    # W-1 and W-2: persons in two different lock buckets.
    first = [delivered(a_part(source_id=s, family=f"Person{s}"), uuid.uuid4(), None) for s in ("W-1", "W-2")]
    second = [delivered(a_part(source_id=s, family=f"Person{s}"), uuid.uuid4(), None) for s in ("W-2", "W-1")]
    paused, go = asyncio.Event(), asyncio.Event()
    real = handlers.apply_delivery

    async def pausing(uow, d):
        await real(uow, d)
        if d is first[0]:
            paused.set()
            await go.wait()

    monkeypatch.setattr(handlers, "apply_delivery", pausing)

    async def batch(conn, deliveries):
        async with conn.transaction():
            await handlers.on_deliveries(UnitOfWork(conn, source="caseflow.cases", settings=settings), deliveries)

    async with pool.acquire() as a, pool.acquire() as b, pool.acquire() as watcher:
        one = asyncio.create_task(batch(a, first))
        await asyncio.wait_for(paused.wait(), 10)
        other = asyncio.create_task(batch(b, second))

        async def waits_or_done():
            return other.done() or await watcher.fetchval(
                "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", b.get_server_pid())

        await eventually(waits_or_done, what="the second batch to wait for the first, or to finish")
        go.set()
        outcomes = await asyncio.gather(one, other, return_exceptions=True)
        assert outcomes == [None, None]  # no DeadlockDetectedError
        assert await watcher.fetchval("SELECT count(*) FROM cases WHERE transferred_in_from = $1", WEST) == 4
        assert await watcher.fetchval("SELECT count(*) FROM delivered_parts") == 4
