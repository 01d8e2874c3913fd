"""The cases service's HTTP routes (seed 004). Changing the dictionary needs district_admin;
opening (by a task or a meeting), closing, reopening, assigning and editing cases need
manage_cases in the case's school; other staff read the cases of their schools. Another
district's case, or one outside the caller's schools, answers 404.

District transfers (seed 003): a case transferred out answers every write with 409 naming
the district it went to, and reads as before; a case transferred in is the destination's
like any other. A transfer person's case (no school here) is district-wide staff's; Manage
Cases links the person to a roster student (PUT /v1/cases/{id}/student), helped by
suggestions by name and birth date."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from typing import Annotated, Literal
from uuid import UUID

from fastapi import APIRouter, HTTPException, Query, Request, status
from pydantic import BaseModel, Field

from contracts.cases import (
    CaseClosed,
    CaseNoteAdded,
    CaseReopened,
    DictionaryChanged,
    StudentMeetingScheduled,
    TaskAssigned,
    TaskCompleted,
)
from services.cases import domain, store
from services.kit.auth import Caller, Identity, not_found
from services.kit.http import checked_event
from services.kit.inputs import Day, Email, EmailText, Key, Moment, Name, cursor, text

router = APIRouter(prefix="/v1", tags=["cases"])

Page = Annotated[int, Query(ge=1, le=500, description="page size")]
TriggerKind = Literal["submit_form", "create_plan", "assign_task", "schedule_meeting", "conduct_plan_review",
                      "submit_file"]


def _jsonable(row) -> dict:
    return {k: (str(v) if isinstance(v, UUID) else v.isoformat() if hasattr(v, "isoformat") else v)
            for k, v in dict(row).items()}


def _needs_manage_cases() -> HTTPException:
    return HTTPException(status.HTTP_403_FORBIDDEN, "this needs the manage_cases role for the case's school")


def _writable(case_status: str, case_number: str, transferred_to: str | None) -> None:
    """409 for a write to a case transferred out (domain.read_only)."""
    if why := domain.read_only(case_status, case_number, transferred_to):
        raise HTTPException(status.HTTP_409_CONFLICT, why)


def _now() -> datetime:
    return datetime.now(UTC)


# ---------------------------------------------------------------------------- the dictionary


class EntryChange(BaseModel):
    enabled: bool


def _staff(caller: Identity) -> None:
    if not domain.is_staff(caller):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "needs an access level in the district (granted by an admin, "
                                                        "by the district's roster default, or in the token)")


@router.get("/dictionary")
async def get_dictionary(request: Request, caller: Caller) -> dict:
    """The district's Case Management Dictionary: which triggers open cases, since when
    (staff of the district: any access level)."""
    _staff(caller)
    async with request.app.state.pool.acquire() as conn:
        entries = await store.dictionaries(conn, [caller.district_id])
        history = await conn.fetch(
            """SELECT trigger_kind, enabled, changed_by, changed_at FROM dictionary_history
               WHERE district_id = $1 ORDER BY changed_at DESC LIMIT 100""", caller.district_id)
    items = []
    for kind, label in domain.DICTIONARY.items():
        entry = entries.get((caller.district_id, kind))
        items.append({"trigger_kind": kind, "label": label, "enabled": bool(entry and entry.enabled),
                      "enabled_at": entry.enabled_at.isoformat() if entry and entry.enabled_at else None})
    return {"items": items, "history": [_jsonable(r) for r in history]}


@router.put("/dictionary/{trigger_kind}")
async def set_dictionary_entry(request: Request, caller: Caller, trigger_kind: TriggerKind,
                               body: EntryChange) -> dict:
    """Enable or disable a trigger (district admins). Enabling is not retroactive: only
    triggers that happen from now on open cases."""
    if not caller.district_wide:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "changing the dictionary needs district_admin")
    at = _now()
    async with request.app.state.runtime.unit_of_work() as uow:
        if await store.set_entry(uow.conn, caller.district_id, trigger_kind, body.enabled, caller.email.lower(), at):
            uow.emit(DictionaryChanged(district_id=caller.district_id, occurred_at=at, trigger_kind=trigger_kind,
                                       enabled=body.enabled, changed_by=caller.email.lower(),
                                       producer="caseflow.cases"))
    return await get_dictionary(request, caller)


# ---------------------------------------------------------------------------- cases


async def _case(conn, caller: Identity, case_id: UUID, lock: bool = False):
    row = await store.case_row(conn, caller.district_id, case_id, lock=lock)
    if row is None or not domain.sees_school(caller, row["school_id"]):
        raise not_found("case not found")
    return row


@router.get("/cases")
async def search_cases(request: Request, caller: Caller, case_number: Key | None = None,
                       person: text(300, min_length=1, description="person of concern: name or SIS id") | None = None,
                       school_id: Key | None = None, team_name: text(120) | None = None,
                       team_leader: EmailText | None = None, case_manager: EmailText | None = None,
                       status_: Annotated[Literal["open", "closed", "transferred_out"] | None,
                                          Query(alias="status")] = None,
                       after: Key | None = None, limit: Page = 50) -> dict:
    """Search cases by case number, person of concern, building, team name, team leader or
    case manager, within the caller's schools (district admins: the district)."""
    schools = domain.case_scope(caller)
    async with request.app.state.pool.acquire() as conn:
        rows = await store.search(conn, district_id=caller.district_id, schools=schools, status=status_,
                                  case_number=case_number, person=person, school_id=school_id, team_name=team_name,
                                  team_leader=team_leader, case_manager=case_manager, after=after, limit=limit)
    items = [_jsonable(r) for r in rows]
    return {"items": items, "next_after": items[-1]["case_number"] if len(items) == limit else None}


@router.get("/cases/{case_id}")
async def get_case(request: Request, caller: Caller, case_id: UUID) -> dict:
    async with request.app.state.pool.acquire() as conn:
        row = await _case(conn, caller, case_id)
        tasks = await conn.fetch("SELECT * FROM tasks WHERE case_id = $1 ORDER BY assigned_at", case_id)
    return {**_jsonable(row), "tasks": [_jsonable(t) for t in tasks]}


class CaseTeam(BaseModel):
    team_name: text(120) | None = None
    team_leader: Email | None = None
    case_manager: Email | None = None


class SchoolCaseManager(BaseModel):
    case_manager: Email | None = Field(description="login email; null: no default case manager")


@router.get("/schools/{school_id}/case-manager")
async def get_school_case_manager(request: Request, caller: Caller, school_id: Key) -> dict:
    """The school's default case manager: every case opened at the school starts with them
    (CaseOpened names them, and they get the case notice). Staff of the school."""
    if not caller.may_see_school(school_id):
        raise not_found("school not found")
    async with request.app.state.pool.acquire() as conn:
        found = await store.school_case_managers(conn, [(caller.district_id, school_id)])
    return {"school_id": school_id, "case_manager": found.get((caller.district_id, school_id))}


@router.put("/schools/{school_id}/case-manager")
async def set_school_case_manager(request: Request, caller: Caller, school_id: Key, body: SchoolCaseManager) -> dict:
    """Set (or, with null, clear) the school's default case manager (manage_cases at the
    school). Cases already open keep theirs."""
    if not caller.may_see_school(school_id):
        raise not_found("school not found")
    if not domain.manages_school(caller, school_id):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "setting a school's case manager needs manage_cases there")
    async with request.app.state.pool.acquire() as conn:
        await store.set_school_case_manager(conn, caller.district_id, school_id,
                                            body.case_manager.strip().lower() if body.case_manager else None,
                                            caller.email.strip().lower())
    return await get_school_case_manager(request, caller, school_id)


@router.patch("/cases/{case_id}")
async def edit_case(request: Request, caller: Caller, case_id: UUID, body: CaseTeam) -> dict:
    """Set the case's team name, team leader and case manager."""
    changes = body.model_dump(exclude_unset=True)
    if not changes:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, "nothing to change: team_name, team_leader, "
                                                                   "case_manager")
    async with request.app.state.runtime.unit_of_work() as uow:
        row = await _case(uow.conn, caller, case_id, lock=True)
        if not domain.manages_school(caller, row["school_id"]):
            raise _needs_manage_cases()
        _writable(row["status"], row["case_number"], row["transferred_to"])
        values = {k: (v.lower() if v and k != "team_name" else v) for k, v in changes.items()}
        sets = ", ".join(f"{k} = ${i + 2}" for i, k in enumerate(values))
        await uow.conn.execute(f"UPDATE cases SET {sets} WHERE case_id = $1", case_id, *values.values())
        summary = "Case team: " + ", ".join(f"{k.replace('_', ' ')} {v or '(none)'}" for k, v in values.items())
        await store.add_timeline(uow.conn, [(caller.district_id, row["student_id"], case_id, _now(), "case_edited",
                                             summary, caller.email.lower(), None)])
    return await get_case(request, caller, case_id)


class Closing(BaseModel):
    reason: text(500, min_length=1)


async def _managed_case(uow, caller: Identity, case_id: UUID):
    """The case, locked with its student's other case work, for someone who manages it."""
    row = await _case(uow.conn, caller, case_id)
    if not domain.manages_school(caller, row["school_id"]):
        raise _needs_manage_cases()
    await store.lock_students(uow.conn, {(caller.district_id, row["student_source_id"] or ""),
                                         store.student_key(caller.district_id, row["student_id"])})
    row = await _case(uow.conn, caller, case_id, lock=True)
    _writable(row["status"], row["case_number"], row["transferred_to"])
    return row


@router.post("/cases/{case_id}/close")
async def close_case(request: Request, caller: Caller, case_id: UUID, body: Closing) -> dict:
    at = _now()
    async with request.app.state.runtime.unit_of_work() as uow:
        row = await _managed_case(uow, caller, case_id)
        if row["status"] != "open":
            raise HTTPException(status.HTTP_409_CONFLICT, f"case {row['case_number']} is already closed")
        await uow.conn.execute("UPDATE cases SET status = 'closed', closed_at = $2, closed_by = $3, close_reason = $4 "
                               "WHERE case_id = $1", case_id, at, caller.email.lower(), body.reason)
        await store.add_timeline(uow.conn, [(caller.district_id, row["student_id"], case_id, at, "case_closed",
                                             f"Case {row['case_number']} closed: {body.reason}", caller.email.lower(),
                                             None)])
        uow.emit(checked_event(CaseClosed, district_id=caller.district_id, occurred_at=at, case_id=case_id,
                               case_number=row["case_number"], student_id=row["student_id"], reason=body.reason,
                               closed_by=caller.email.lower(), producer="caseflow.cases"))
    return await get_case(request, caller, case_id)


@router.post("/cases/{case_id}/reopen")
async def reopen_case(request: Request, caller: Caller, case_id: UUID) -> dict:
    at = _now()
    async with request.app.state.runtime.unit_of_work() as uow:
        row = await _managed_case(uow, caller, case_id)
        if row["status"] == "open":
            raise HTTPException(status.HTTP_409_CONFLICT, f"case {row['case_number']} is open")
        other = (await store.open_cases(uow.conn, [row["student_id"]])).get(row["student_id"])
        if other:
            number = await uow.conn.fetchval("SELECT case_number FROM cases WHERE case_id = $1", other)
            raise HTTPException(status.HTTP_409_CONFLICT, f"the student has another open case, {number}: one open "
                                                          "case per student")
        await uow.conn.execute("UPDATE cases SET status = 'open', closed_at = NULL, closed_by = NULL, "
                               "close_reason = NULL WHERE case_id = $1", case_id)
        await store.add_timeline(uow.conn, [(caller.district_id, row["student_id"], case_id, at, "case_reopened",
                                             f"Case {row['case_number']} reopened", caller.email.lower(), None)])
        uow.emit(CaseReopened(district_id=caller.district_id, occurred_at=at, case_id=case_id,
                              case_number=row["case_number"], student_id=row["student_id"],
                              reopened_by=caller.email.lower(), producer="caseflow.cases"))
    return await get_case(request, caller, case_id)


class NoteIn(BaseModel):
    body: text(10_000, min_length=1)


@router.post("/cases/{case_id}/notes", status_code=status.HTTP_201_CREATED)
async def add_case_note(request: Request, caller: Caller, case_id: UUID, body: NoteIn) -> dict:
    async with request.app.state.runtime.unit_of_work() as uow:
        row = await _case(uow.conn, caller, case_id)
        if not domain.manages_school(caller, row["school_id"]):
            raise _needs_manage_cases()
        _writable(row["status"], row["case_number"], row["transferred_to"])
        return await _note(uow, caller, row["student_id"], case_id, None, body.body)


class StudentLink(BaseModel):
    student_id: UUID = Field(description="A roster student of the district")


@router.put("/cases/{case_id}/student")
async def link_student(request: Request, caller: Caller, case_id: UUID, body: StudentLink) -> dict:
    """Link the person of a transferred case, made from the transfer's information, to a
    roster student of the district (seed 003: "use transfer info", linked later when the
    student shows up in the roster). Every case, task, note and timeline entry of the person
    moves to the student; their cases take the student's school. The person is kept, linked.
    A transferred open case keeps its status beside the student's own open case, which keeps
    taking their triggers (domain.trigger_case).

    Needs manage_cases for the case (district-wide: a transfer person's case has no school
    here) and at one of the student's schools. Answers the case as GET does. 404: the case
    or the student is not the caller's to see (or not a roster student); 403: not Manage
    Cases; 409: the case is transferred out, or its person is a roster student already (the
    same student again answers 200: a retried link is one link)."""
    at, d = _now(), caller.district_id
    async with request.app.state.runtime.unit_of_work() as uow:
        row = await _case(uow.conn, caller, case_id)
        if not domain.manages_school(caller, row["school_id"]):
            raise _needs_manage_cases()
        target = await store.student(uow.conn, d, body.student_id)
        if target is None or target["source_id"] is None or not domain.sees_student(caller, target["school_ids"]):
            raise not_found("student not found")
        if not domain.manages_student(caller, target["school_ids"]):
            raise HTTPException(status.HTTP_403_FORBIDDEN, "this needs the manage_cases role at one of the "
                                                           "student's schools")
        await store.lock_students(uow.conn, {(d, target["source_id"]), store.student_key(d, target["student_id"]),
                                             store.student_key(d, row["student_id"])})
        row = await _case(uow.conn, caller, case_id, lock=True)
        _writable(row["status"], row["case_number"], row["transferred_to"])
        if row["student_id"] != body.student_id:
            if row["student_transferred_from"] is None:
                raise HTTPException(status.HTTP_409_CONFLICT, f"the person of case {row['case_number']} is a roster "
                                    "student already: only a person made from a transfer's information is linked")
            moved = await store.link_person(uow.conn, d, row["student_id"], target["student_id"], target["school_id"],
                                            caller.email.lower(), at)
            await store.add_timeline(uow.conn, [
                (d, target["student_id"], m["case_id"], at, "student_linked",
                 f"Case {m['case_number']}: the person made from the transfer's information linked to a roster "
                 "student (SIS connection)", caller.email.lower(), None) for m in moved])
    return await get_case(request, caller, case_id)


@router.get("/cases/{case_id}/student-suggestions")
async def student_suggestions(request: Request, caller: Caller, case_id: UUID,
                              limit: Annotated[int, Query(ge=1, le=50)] = 10) -> dict:
    """Roster students who may be the person of a transferred case made from the transfer's
    information, best first (domain.suggestion: birth date and both names, birth date and
    one name, both names), among the students the caller sees: {"items": [{student_id,
    source_id, given_name, family_name, birth_date, school_id, grade, score, matches}]}.
    Needs manage_cases for the case; 409 when its person is a roster student already."""
    async with request.app.state.pool.acquire() as conn:
        row = await _case(conn, caller, case_id)
        if not domain.manages_school(caller, row["school_id"]):
            raise _needs_manage_cases()
        if row["student_transferred_from"] is None:
            raise HTTPException(status.HTTP_409_CONFLICT, f"the person of case {row['case_number']} is a roster "
                                                          "student already")
        person = await store.student(conn, caller.district_id, row["student_id"])
        candidates = await store.suggestion_candidates(conn, caller.district_id, person["family_name"],
                                                       person["birth_date"], caller.scope())
    ranked = []
    for c in candidates:
        match = domain.suggestion(person["given_name"], person["family_name"], person["birth_date"],
                                  c["given_name"], c["family_name"], c["birth_date"])
        if match:
            ranked.append({**_jsonable(c), "score": match[0], "matches": list(match[1])})
    ranked.sort(key=lambda c: (-c["score"], c["family_name"], c["given_name"], c["student_id"]))
    return {"items": ranked[:limit]}


async def _note(uow, caller: Identity, student_id: UUID, case_id: UUID | None, task_id: UUID | None,
                text: str) -> dict:
    note_id, at, author = uuid.uuid4(), _now(), caller.email.lower()
    await uow.conn.execute(
        "INSERT INTO notes (note_id, district_id, student_id, case_id, task_id, author, body, written_at) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8)", note_id, caller.district_id, student_id, case_id, task_id, author,
        text, at)
    await store.add_timeline(uow.conn, [(caller.district_id, student_id, case_id, at, "note",
                                         "Note on a task" if task_id else "Note on the case", author, note_id)])
    uow.emit(CaseNoteAdded(district_id=caller.district_id, occurred_at=at, note_id=note_id, case_id=case_id,
                           task_id=task_id, student_id=student_id, author_email=author, producer="caseflow.cases"))
    return {"note_id": str(note_id), "written_at": at.isoformat()}


# ---------------------------------------------------------------------------- tasks and meetings


class TaskIn(BaseModel):
    student_id: UUID
    title: Name
    assignee_email: Email
    due_date: Day | None = None


class MeetingIn(BaseModel):
    student_id: UUID
    title: Name
    scheduled_for: Moment = Field(description="when the meeting is, with its UTC offset")


async def _managed_student(uow, caller: Identity, student_id: UUID):
    row = await store.student(uow.conn, caller.district_id, student_id)
    if row is None or not domain.sees_student(caller, row["school_ids"]):
        raise not_found("student not found")
    if not domain.manages_student(caller, row["school_ids"]):
        raise _needs_manage_cases()
    if row["source_id"] is None:
        raise HTTPException(status.HTTP_409_CONFLICT, "this person came with a transferred case and has no SIS id "
                            "here: link them to a roster student (PUT /v1/cases/{case_id}/student) first")
    return row


@router.post("/tasks", status_code=status.HTTP_202_ACCEPTED)
async def assign_task(request: Request, caller: Caller, body: TaskIn) -> dict:
    """Assign a task for a student. It is stored at once; its TaskAssigned trigger then
    opens a case if the dictionary says so, or joins the open case."""
    at, task_id = _now(), uuid.uuid4()
    async with request.app.state.runtime.unit_of_work() as uow:
        s = await _managed_student(uow, caller, body.student_id)
        open_case = (await store.open_cases(uow.conn, [s["student_id"]])).get(s["student_id"])
        await store.upsert_tasks(uow.conn, [(task_id, caller.district_id, s["student_id"], open_case, body.title,
                                             body.assignee_email.lower(), body.due_date, caller.email.lower(), at)])
        uow.emit(checked_event(TaskAssigned, district_id=caller.district_id, occurred_at=at,
                               student_source_id=s["source_id"], actor_email=caller.email.lower(), task_id=task_id,
                               title=body.title, assignee_email=body.assignee_email.lower(), due_date=body.due_date,
                               producer="caseflow.cases"))
    return {"task_id": str(task_id), "case_id": str(open_case) if open_case else None}


@router.get("/tasks")
async def my_tasks(request: Request, caller: Caller,
                   status_: Annotated[Literal["open", "done", "all"], Query(alias="status")] = "open",
                   due_before: Day | None = None, overdue: bool = False,
                   after: Annotated[str | None, Query(description="next_after of the previous page")] = None,
                   limit: Page = 100) -> dict:
    """The caller's tasks (seed 004: tasks are assigned to staff members): open by default,
    or done, or all; due_before a date; overdue (open and due before today). Soonest due
    first; next_after pages on."""
    _staff(caller)
    try:
        cursor = None if after is None else (
            (None if after.split("/")[0] == "-" else date.fromisoformat(after.split("/")[0])), UUID(after.split("/")[1]))
    except (ValueError, IndexError):
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, "after: use the next_after of the previous page") from None
    async with request.app.state.pool.acquire() as conn:
        rows = await store.assigned_tasks(conn, district_id=caller.district_id, assignee_email=caller.email.lower(),
                                          status=None if status_ == "all" else status_, due_before=due_before,
                                          overdue_on=date.today() if overdue else None, after=cursor, limit=limit)
    items = [_jsonable(r) for r in rows]
    last = rows[-1] if len(rows) == limit else None
    return {"items": items,
            "next_after": None if last is None else f"{last['due_date'] or '-'}/{last['task_id']}"}


async def _task_for(uow, caller: Identity, task_id: UUID):
    """The assignee (while staff of the district), or manage_cases in the student's school,
    may work a task."""
    row = await store.task(uow.conn, caller.district_id, task_id, lock=True)
    assignee = row is not None and row["assignee_email"] == caller.email.lower() and domain.is_staff(caller)
    if row is None or not (domain.sees_school(caller, row["school_id"]) or assignee):
        raise not_found("task not found")
    if not (domain.manages_school(caller, row["school_id"]) or assignee):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "only the assignee or manage_cases may work this task")
    if row["case_status"] is not None:
        _writable(row["case_status"], row["case_number"], row["transferred_to"])
    return row


@router.post("/tasks/{task_id}/notes", status_code=status.HTTP_201_CREATED)
async def add_task_note(request: Request, caller: Caller, task_id: UUID, body: NoteIn) -> dict:
    async with request.app.state.runtime.unit_of_work() as uow:
        row = await _task_for(uow, caller, task_id)
        return await _note(uow, caller, row["student_id"], row["case_id"], task_id, body.body)


@router.post("/tasks/{task_id}/complete")
async def complete_task(request: Request, caller: Caller, task_id: UUID) -> dict:
    at = _now()
    async with request.app.state.runtime.unit_of_work() as uow:
        row = await _task_for(uow, caller, task_id)
        if row["status"] == "done":
            raise HTTPException(status.HTTP_409_CONFLICT, "the task is already complete")
        await store.complete_task(uow.conn, task_id, at, caller.email.lower())
        await store.add_timeline(uow.conn, [(caller.district_id, row["student_id"], row["case_id"], at,
                                             "task_completed", f"Task completed: {row['title']}",
                                             caller.email.lower(), task_id)])
        uow.emit(TaskCompleted(district_id=caller.district_id, occurred_at=at, task_id=task_id, case_id=row["case_id"],
                               student_id=row["student_id"], completed_by=caller.email.lower(),
                               producer="caseflow.cases"))
    return {"task_id": str(task_id), "status": "done"}


@router.post("/meetings", status_code=status.HTTP_202_ACCEPTED)
async def schedule_meeting(request: Request, caller: Caller, body: MeetingIn) -> dict:
    """Schedule a Student Meeting: its trigger opens a case if the dictionary says so."""
    at, meeting_id = _now(), uuid.uuid4()
    async with request.app.state.runtime.unit_of_work() as uow:
        s = await _managed_student(uow, caller, body.student_id)
        uow.emit(checked_event(StudentMeetingScheduled, district_id=caller.district_id, occurred_at=at,
                               student_source_id=s["source_id"], actor_email=caller.email.lower(),
                               meeting_id=str(meeting_id), title=body.title, scheduled_for=body.scheduled_for,
                               producer="caseflow.cases"))
    return {"meeting_id": str(meeting_id)}


# ---------------------------------------------------------------------------- timeline and dashboard


@router.get("/students/{student_id}/timeline")
async def student_timeline(request: Request, caller: Caller, student_id: UUID, after: cursor() = 0,
                           limit: Page = 200) -> dict:
    """Every trigger, task event, note, meeting and status change for the student, in order."""
    async with request.app.state.pool.acquire() as conn:
        s = await store.student(conn, caller.district_id, student_id)
        if s is None or not domain.sees_student(caller, s["school_ids"]):
            raise not_found("student not found")
        rows = await store.timeline(conn, student_id, limit, after)
        cases = await store.cases_of_student(conn, student_id)
    items = [_jsonable(r) for r in rows]
    return {"student_id": str(student_id), "cases": [_jsonable(c) for c in cases], "items": items,
            "next_after": items[-1]["entry_id"] if len(items) == limit else None}


@router.get("/dashboard")
async def dashboard(request: Request, caller: Caller, school_id: Key | None = None) -> dict:
    """Open cases by school, team, team leader and case manager; overdue tasks; cases
    opened by trigger kind and week."""
    schools = domain.case_scope(caller)
    if school_id is not None:
        schools = [school_id] if schools is None or school_id in schools else []
    async with request.app.state.pool.acquire() as conn:
        board = await store.dashboard(conn, district_id=caller.district_id, schools=schools, today=date.today())
    board["overdue_tasks"]["oldest"] = [_jsonable(r) for r in board["overdue_tasks"]["oldest"]]
    board["opened_by_week"] = [_jsonable(r) for r in board["opened_by_week"]]
    return board
