"""The cases service's event handlers: keep its own copy of the roster's students, and
decide, trigger by trigger, per the district's dictionary, whether a case opens; and its
side of the District Transfer Portal (seed 003): export a case's history on request, mark
the sending district's case transferred out on acceptance, create the destination's case
from the delivered parts."""

from __future__ import annotations

import os
import time
import uuid
from collections import Counter
from datetime import UTC, datetime

from pydantic import ValidationError

from contracts.cases import CaseTransferredIn, CaseTransferredOut, TaskAssigned
from contracts.roster import StudentEnrolled, StudentUpdated, StudentWithdrawn
from contracts.topics import CASE_TRIGGERS, CASES
from contracts.transfers import (
    CaseDelivered,
    CaseHeader,
    CaseHistoryExported,
    CaseHistoryUnavailable,
    HistoryEntry,
    HistoryNote,
    HistoryTask,
    TransferAccepted,
    TransferredStudent,
    TransferRequested,
)
from services.cases import domain, store
from services.kit import db, logs
from services.kit.consumer import UnitOfWork
from services.kit.outbox import Unpublishable

log = logs.get("caseflow.cases.transfers")


async def on_roster_students(uow: UnitOfWork, events: list[StudentEnrolled | StudentUpdated | StudentWithdrawn]) -> None:
    # Every statement here is a probe, key by key: by index whatever the statistics say
    # (db.probing_by_index; the tables' triggers too, migration 012).
    async with db.probing_by_index(uow.conn):
        await _project_students(uow, events)


async def _project_students(uow: UnitOfWork, events: list[StudentEnrolled | StudentUpdated | StudentWithdrawn]) -> None:
    latest = {}
    withdrawn = []
    for e in events:  # one student's events arrive in order: the last one stands
        if isinstance(e, StudentWithdrawn):
            latest.pop(e.student_id, None)
            withdrawn.append((e.student_id, e.occurred_at))
        else:
            latest[e.student_id] = (e.student_id, e.district_id, e.source_id, e.school_id, e.grade, e.given_name,
                                    e.family_name, "active", e.occurred_at,
                                    domain.student_schools(e.school_id, e.school_ids), e.birth_date)
    await store.lock_students(uow.conn, {(e.district_id, e.source_id) for e in events}
                              | {store.student_key(e.district_id, e.student_id) for e in events})
    await store.project_students(uow.conn, list(latest.values()))
    await store.withdraw_students(uow.conn, withdrawn)
    # Triggers that came before the roster knew the student apply now, in their order.
    waiting = await store.take_waiting(uow.conn, {(r[1], r[2]) for r in latest.values()})
    if waiting:
        await apply_triggers(uow, [CASE_TRIGGERS.event_class(w["event_type"]).model_validate(w["payload"])
                                   for w in waiting])
    # So do transferred cases delivered for them (seed 003: linked to an existing student).
    deliveries = await store.take_waiting_deliveries(uow.conn, {(r[1], r[0]) for r in latest.values()})
    if deliveries:
        await apply_deliveries(uow, [CaseDelivered.model_validate(w["payload"]) for w in deliveries])


async def on_triggers(uow: UnitOfWork, triggers: list) -> None:
    # Every statement here is a probe, key by key: by index whatever the statistics say
    # (db.probing_by_index; the tables' triggers too, migration 012).
    async with db.probing_by_index(uow.conn):
        await apply_triggers(uow, triggers)


async def apply_triggers(uow: UnitOfWork, triggers: list) -> None:
    """Each trigger, in order: on the student's timeline always; opening a case when its
    dictionary entry is enabled (since before it happened) and none is open; else joining
    the open case. Triggers for students the roster does not know yet wait for them."""
    conn = uow.conn
    await store.lock_students(conn, {(t.district_id, t.student_source_id) for t in triggers})
    students, open_case = await store.students_for_triggers(conn, {(t.district_id, t.student_source_id)
                                                                  for t in triggers})
    known = [t for t in triggers if (t.district_id, t.student_source_id) in students]
    await store.wait_for_students(conn, [t for t in triggers if (t.district_id, t.student_source_id) not in students])
    if not known:
        return
    entries = await store.dictionaries(conn, {t.district_id for t in known})

    # The new cases' ids: this moment and 10 random bytes each, read from the OS once a batch.
    decisions, now_ms, entropy, opened = [], time.time_ns() // 1_000_000, os.urandom(10 * len(known)), 0
    for t in known:
        s = students[(t.district_id, t.student_source_id)]
        kind = domain.KIND_OF[type(t)]
        action, why = domain.decide(kind, t.occurred_at, entries.get((t.district_id, kind)),
                                    s["student_id"] in open_case)
        if action == domain.OPEN:
            open_case[s["student_id"]] = domain.time_ordered_id(now_ms, entropy[10 * opened:10 * opened + 10])
            opened += 1
        decisions.append((t, s, kind, action, why, open_case.get(s["student_id"])))

    # Case numbers, reserved per district and year in one step each.
    wanted = Counter((t.district_id, t.occurred_at.year) for t, _, _, action, _, _ in decisions
                     if action == domain.OPEN)
    first = {key: await store.next_case_numbers(conn, key[0], key[1], n) for key, n in sorted(wanted.items())}
    managers = await store.school_case_managers(conn, {(t.district_id, s["school_id"])
                                                       for t, s, _, action, _, _ in decisions if action == domain.OPEN})
    used: Counter = Counter()
    cases, timeline, tasks = [], [], []
    for t, s, kind, action, why, case_id in decisions:
        if action == domain.OPEN:
            key = (t.district_id, t.occurred_at.year)
            number = domain.case_number(key[1], first[key] + used[key])
            used[key] += 1
            manager = managers.get((t.district_id, s["school_id"]))  # the school's default, where one is set
            cases.append((case_id, t.district_id, number, s["student_id"], s["school_id"], kind, t.event_id,
                          t.occurred_at, manager, s["source_id"], t.correlation_id))
        timeline.append((t.district_id, s["student_id"], case_id, t.occurred_at, kind, domain.summary(t),
                         t.actor_email, t.event_id))
        if action == domain.OPEN:
            timeline.append((t.district_id, s["student_id"], case_id, t.occurred_at, "case_opened",
                             f"Case {number} opened: {why}", None, t.event_id))
        if isinstance(t, TaskAssigned):
            tasks.append((t.task_id, t.district_id, s["student_id"], case_id, t.title, t.assignee_email.lower(),
                          t.due_date, t.actor_email, t.occurred_at))

    # PostgreSQL stores the batch and writes the cases' CaseOpened into the outbox itself, in
    # the statement that opens them (events_sql.case_opened_events): none is built here.
    await store.insert_cases(conn, uow.topic(CASES.name), datetime.now(UTC).isoformat(), cases)
    await store.add_timeline(conn, timeline)
    await store.upsert_tasks(conn, tasks)


# ---------------------------------------------------------------------------- the District Transfer Portal (seed 003)


async def on_transfer_requested(uow: UnitOfWork, requests: list[TransferRequested]) -> None:
    """A district sends cases to another (district_id: the sending district). Each case of
    that district not transferred out is exported whole, in parts (domain.history_parts), as
    CaseHistoryExported on cases.histories.v1; any other case is answered
    CaseHistoryUnavailable with the reason. Each (request, case) is answered once, however
    often the request is read (the inbox by event id, case_exports by request and case)."""
    for request in requests:
        await export_for(uow, request)


async def export_for(uow: UnitOfWork, request: TransferRequested) -> None:
    conn = uow.conn
    await store.lock_request(conn, request.request_id)
    done = await store.answered(conn, request.request_id, request.case_ids)
    wanted = [c for c in dict.fromkeys(request.case_ids) if c not in done]
    if not wanted:
        return
    cases = await store.cases_to_export(conn, request.district_id, wanted)
    exportable = [c for c in wanted if c in cases and not domain.export_refusal(cases[c]["status"], None)]
    timelines, tasks, notes = await store.histories(conn, exportable)
    answers = []
    for case_id in wanted:
        row = cases.get(case_id)
        reason = domain.export_refusal(row["status"] if row else None, row["transferred_to"] if row else None)
        if reason is None:
            emitted = len(uow.outgoing)
            try:
                parts = _parts(row, timelines[case_id], tasks[case_id], notes[case_id])
                for part in parts:
                    uow.emit(CaseHistoryExported(district_id=request.district_id, request_id=request.request_id,
                                                 history=part, correlation_id=request.correlation_id,
                                                 producer="caseflow.cases"))
            except (ValidationError, Unpublishable) as e:
                del uow.outgoing[emitted:]  # none of this case's parts
                reason = "its history could not be exported: " + _why(e)
            else:
                answers.append((case_id, "exported", len(parts), None))
                continue
        uow.emit(CaseHistoryUnavailable(district_id=request.district_id, request_id=request.request_id,
                                        case_id=case_id, reason=reason, correlation_id=request.correlation_id,
                                        producer="caseflow.cases"))
        answers.append((case_id, "unavailable", 0, reason))
        log.info("case not exported", request_id=str(request.request_id), case_id=str(case_id), reason=reason)
    await store.record_answers(conn, request.request_id, request.district_id, answers)


def _parts(row, timeline: list, tasks: list, notes: list) -> list:
    header = CaseHeader(case_id=row["case_id"], case_number=row["case_number"], status=row["status"],
                        school_id=row["school_id"] or "", trigger_kind=row["trigger_kind"], opened_at=row["opened_at"],
                        team_name=row["team_name"], team_leader=row["team_leader"], case_manager=row["case_manager"],
                        closed_at=row["closed_at"], closed_by=row["closed_by"], close_reason=row["close_reason"])
    student = TransferredStudent(source_id=row["student_source_id"] or "", given_name=row["given_name"],
                                 family_name=row["family_name"], birth_date=row["birth_date"], grade=row["grade"],
                                 school_id=row["school_id"] or "")
    task_notes: dict[uuid.UUID, list] = {t["task_id"]: [] for t in tasks}
    case_notes = []
    for n in notes:
        note = HistoryNote(note_id=n["note_id"], author=n["author"], body=n["body"], written_at=n["written_at"])
        (task_notes[n["task_id"]] if n["task_id"] in task_notes else case_notes).append(note)
    return domain.history_parts(
        header, student,
        [HistoryEntry(at=e["at"], kind=e["kind"], summary=e["summary"], actor=e["actor"], ref_id=e["event_id"])
         for e in timeline],
        [HistoryTask(task_id=t["task_id"], title=t["title"], assignee_email=t["assignee_email"], due_date=t["due_date"],
                     status=t["status"], assigned_by=t["assigned_by"], assigned_at=t["assigned_at"],
                     completed_at=t["completed_at"], completed_by=t["completed_by"], notes=task_notes[t["task_id"]])
         for t in tasks],
        case_notes)


def _why(e: Exception) -> str:
    """What is wrong, by field, never with the values (a history holds names and notes)."""
    if isinstance(e, ValidationError):
        return "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()[:3])[:250]
    return str(e)[:250]


async def on_transfer_accepted(uow: UnitOfWork, acceptances: list[TransferAccepted]) -> None:
    """The destination accepted (district_id: the sending district): each of the district's
    cases becomes transferred out, kept read-only, never deleted, with where it went, the
    request, who accepted and when; a timeline entry; CaseTransferredOut on cases.v1. It is
    no longer the student's open case. A case already transferred out is left as it is."""
    conn = uow.conn
    for accepted in acceptances:
        ids = [c.case_id for c in accepted.cases]
        found = await store.cases_to_transfer_out(conn, accepted.district_id, ids)
        await store.lock_students(conn, {(accepted.district_id, r["student_source_id"]) for r in found
                                         if r["student_source_id"]}
                                  | {store.student_key(accepted.district_id, r["student_id"]) for r in found})
        rows, timeline = [], []
        for r in await store.cases_to_transfer_out(conn, accepted.district_id, ids, lock=True):
            if r["status"] == domain.TRANSFERRED_OUT:
                if r["transferred_out_request"] != accepted.request_id:
                    log.warning("accepted case was already transferred out by another request",
                                request_id=str(accepted.request_id), case_id=str(r["case_id"]))
                continue
            at = accepted.occurred_at
            rows.append((r["case_id"], accepted.destination_district_id, accepted.request_id, accepted.accepted_by, at))
            timeline.append((accepted.district_id, r["student_id"], r["case_id"], at, "case_transferred_out",
                             domain.transferred_out_summary(r["case_number"], accepted.destination_district_id),
                             accepted.accepted_by, accepted.request_id))
            uow.emit(CaseTransferredOut(district_id=accepted.district_id, occurred_at=at, case_id=r["case_id"],
                                        case_number=r["case_number"], student_id=r["student_id"],
                                        destination_district_id=accepted.destination_district_id,
                                        request_id=accepted.request_id, correlation_id=accepted.correlation_id,
                                        producer="caseflow.cases"))
        if missing := set(ids) - {r["case_id"] for r in found}:
            log.warning("accepted cases not found in the sending district", request_id=str(accepted.request_id),
                        cases=sorted(str(c) for c in missing))
        await store.transfer_out(conn, rows)
        await store.add_timeline(conn, timeline)


async def on_deliveries(uow: UnitOfWork, deliveries: list[CaseDelivered]) -> None:
    await apply_deliveries(uow, deliveries)


async def apply_deliveries(uow: UnitOfWork, deliveries: list[CaseDelivered]) -> None:
    """Each delivered part, in order (district_id: the destination): see apply_delivery.

    The persons of the whole batch are locked first, in one step (store.lock_students: one
    order): locked delivery by delivery, a batch of deliveries and another batch taking the
    same lock buckets in order (a transfer out, triggers) deadlocked, each costing both the
    deadlock timeout and a retry (bench/transfers.py)."""
    await store.lock_students(uow.conn, [store.student_key(d.district_id, _person_of(d)) for d in deliveries])
    for delivery in deliveries:
        await apply_delivery(uow, delivery)


async def apply_delivery(uow: UnitOfWork, d: CaseDelivered) -> None:
    """One part of an accepted case's history, applied once, in any order, whatever crashed
    between (seed 003: the destination creates each case with its whole history).

    The first part seen creates the case: id domain.transferred_case_id(request, source case),
    a new case number of this district (year of acceptance), status, team and dates as sent,
    where it came from, and the entry "Case transferred in from ...". Each part then adds its
    timeline entries, tasks and notes under deterministic ids (a part already applied adds
    nothing); the part that completes the case publishes CaseTransferredIn. The person of
    concern: `student_id`, a roster student of this district (a delivery for one this service
    does not know yet waits for them, as triggers do); null, a person made from the
    transfer's information (domain.transfer_person_id), or the student they were linked to.
    Raises (the part is dead-lettered) when student_id names a student of another district
    or a transfer person."""
    conn, h = uow.conn, d.history
    case_id = domain.transferred_case_id(d.request_id, h.case.case_id)
    person_id = None if d.student_id else _person_of(d)
    await store.lock_students(conn, [store.student_key(d.district_id, d.student_id or person_id)])
    case = await store.transferred_case(conn, case_id)
    if case is not None and case["district_id"] != d.district_id:
        raise ValueError(f"case {case_id} of this request was delivered to district {case['district_id']}")
    if case is None:
        if d.student_id is not None:
            student = await store.student(conn, d.district_id, d.student_id)
            if student is None:
                elsewhere = await store.district_of_student(conn, d.student_id)
                if elsewhere is not None:
                    raise ValueError(f"student_id names a student of district {elsewhere}, not {d.district_id}")
                await store.wait_for_student(conn, d)
                log.info("delivery waits for its student", request_id=str(d.request_id), case_id=str(case_id),
                         part=h.part)
                return
            if student["source_id"] is None:
                raise ValueError("student_id names a person made from a transfer, not a roster student")
        else:
            student = await store.transfer_person(conn, person_id, d.district_id, d.source_district_id, d.request_id,
                                                  h.student, d.accepted_at)
            if student["linked_to"] is not None:
                student = await store.student(conn, d.district_id, student["linked_to"])
        year = d.accepted_at.year
        number = domain.case_number(year, await store.next_case_numbers(conn, d.district_id, year, 1))
        await store.insert_transferred_case(conn, case_id=case_id, district_id=d.district_id, case_number=number,
                                            student_id=student["student_id"], school_id=student["school_id"],
                                            delivery=d)
        await store.add_transferred_timeline(conn, [(
            d.district_id, student["student_id"], case_id, d.accepted_at, "case_transferred_in",
            domain.transferred_in_summary(d.source_district_id, h.case.case_number), d.accepted_by, d.request_id,
            domain.transferred_in_key(case_id))])
        case = await store.transferred_case(conn, case_id)
    if not await store.claim_part(conn, case_id, h.part, h.parts, d.event_id):
        return  # this part was applied already (delivered again under another event id)
    await _apply_part(conn, d, case)
    if await store.parts_applied(conn, case_id) == h.parts:
        uow.emit(CaseTransferredIn(district_id=d.district_id, occurred_at=d.accepted_at, case_id=case_id,
                                   case_number=case["case_number"], school_id=case["school_id"],
                                   student_id=case["student_id"], status=h.case.status,
                                   source_district_id=d.source_district_id, source_case_id=h.case.case_id,
                                   request_id=d.request_id, accepted_by=d.accepted_by,
                                   correlation_id=d.correlation_id, producer="caseflow.cases"))


def _person_of(d: CaseDelivered):
    """Whom a delivery is for: the roster student it names, else the person made from the
    transfer's information."""
    return d.student_id or domain.transfer_person_id(d.district_id, d.source_district_id, d.history.student,
                                                      d.request_id, d.history.case.case_id)


async def _apply_part(conn, d: CaseDelivered, case) -> None:
    h, case_id, district, student = d.history, case["case_id"], d.district_id, case["student_id"]

    def mine(source_id):
        return None if source_id is None else domain.transferred_id(case_id, source_id)

    await store.add_transferred_timeline(conn, [
        (district, student, case_id, e.at, e.kind, e.summary, e.actor, mine(e.ref_id),
         domain.timeline_key(case_id, h.part, i)) for i, e in enumerate(h.timeline)])
    await store.add_transferred_tasks(conn, [
        (mine(t.task_id), district, student, case_id, case["school_id"], t.title, t.assignee_email, t.due_date,
         t.status, t.assigned_by, t.assigned_at, t.completed_at, t.completed_by) for t in h.tasks])
    notes = [(n, t.task_id) for t in h.tasks for n in t.notes] + [(n, n.task_id) for n in h.notes]
    await store.add_transferred_notes(conn, [
        (mine(n.note_id), district, student, case_id, mine(task_id), n.author, n.body, n.written_at)
        for n, task_id in notes])
