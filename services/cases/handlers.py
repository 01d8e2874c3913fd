"""The cases service's event handlers: keep its own copy of the roster's students, and
decide, trigger by trigger, per the district's dictionary, whether a case opens."""

from __future__ import annotations

import uuid
from collections import Counter

from contracts.cases import CaseOpened, TaskAssigned
from contracts.roster import StudentEnrolled, StudentUpdated, StudentWithdrawn
from contracts.topics import CASE_TRIGGERS
from services.cases import domain, store
from services.kit.consumer import UnitOfWork


async def on_roster_students(uow: UnitOfWork, events: list[StudentEnrolled | StudentUpdated | StudentWithdrawn]) -> None:
    latest = {}
    withdrawn = []
    for e in events:  # one student's events arrive in order: the last one stands
        if isinstance(e, StudentWithdrawn):
            latest.pop(e.student_id, None)
            withdrawn.append((e.student_id, e.occurred_at))
        else:
            latest[e.student_id] = (e.student_id, e.district_id, e.source_id, e.school_id, e.grade, e.given_name,
                                    e.family_name, "active", e.occurred_at,
                                    domain.student_schools(e.school_id, e.school_ids))
    await store.lock_students(uow.conn, {(e.district_id, e.source_id) for e in events})
    await store.project_students(uow.conn, list(latest.values()))
    await store.withdraw_students(uow.conn, withdrawn)
    # Triggers that came before the roster knew the student apply now, in their order.
    waiting = await store.take_waiting(uow.conn, {(r[1], r[2]) for r in latest.values()})
    if waiting:
        await apply_triggers(uow, [CASE_TRIGGERS.event_class(w["event_type"]).model_validate(w["payload"])
                                   for w in waiting])


async def on_triggers(uow: UnitOfWork, triggers: list) -> None:
    await apply_triggers(uow, triggers)


async def apply_triggers(uow: UnitOfWork, triggers: list) -> None:
    """Each trigger, in order: on the student's timeline always; opening a case when its
    dictionary entry is enabled (since before it happened) and none is open; else joining
    the open case. Triggers for students the roster does not know yet wait for them."""
    conn = uow.conn
    await store.lock_students(conn, {(t.district_id, t.student_source_id) for t in triggers})
    students = await store.students_by_source(conn, {(t.district_id, t.student_source_id) for t in triggers})
    known = [t for t in triggers if (t.district_id, t.student_source_id) in students]
    await store.wait_for_students(conn, [t for t in triggers if (t.district_id, t.student_source_id) not in students])
    if not known:
        return
    student_of = {id(t): students[(t.district_id, t.student_source_id)] for t in known}
    open_case = await store.open_cases(conn, (s["student_id"] for s in student_of.values()))
    entries = await store.dictionaries(conn, {t.district_id for t in known})

    decisions = []
    for t in known:
        s = student_of[id(t)]
        kind = domain.KIND_OF[type(t)]
        action, why = domain.decide(kind, t.occurred_at, entries.get((t.district_id, kind)),
                                    s["student_id"] in open_case)
        if action == domain.OPEN:
            open_case[s["student_id"]] = uuid.uuid4()
        decisions.append((t, s, kind, action, why, open_case.get(s["student_id"])))

    # Case numbers, reserved per district and year in one step each.
    wanted = Counter((t.district_id, t.occurred_at.year) for t, _, _, action, _, _ in decisions
                     if action == domain.OPEN)
    first = {key: await store.next_case_numbers(conn, key[0], key[1], n) for key, n in sorted(wanted.items())}
    used: Counter = Counter()
    cases, timeline, tasks = [], [], []
    for t, s, kind, action, why, case_id in decisions:
        if action == domain.OPEN:
            key = (t.district_id, t.occurred_at.year)
            number = domain.case_number(key[1], first[key] + used[key])
            used[key] += 1
            cases.append((case_id, t.district_id, number, s["student_id"], s["school_id"], kind, t.event_id,
                          t.occurred_at))
            uow.emit(CaseOpened(
                district_id=t.district_id, case_id=case_id, case_number=number, school_id=s["school_id"],
                student_id=s["student_id"], student_source_id=s["source_id"], trigger_kind=kind,
                source_event_id=t.event_id, source_occurred_at=t.occurred_at, correlation_id=t.correlation_id,
                producer="caseflow.cases",
            ))
        timeline.append((t.district_id, s["student_id"], case_id, t.occurred_at, kind, domain.summary(t),
                         t.actor_email, t.event_id))
        if action == domain.OPEN:
            timeline.append((t.district_id, s["student_id"], case_id, t.occurred_at, "case_opened",
                             f"Case {number} opened: {why}", None, t.event_id))
        if isinstance(t, TaskAssigned):
            tasks.append((t.task_id, t.district_id, s["student_id"], case_id, t.title, t.assignee_email.lower(),
                          t.due_date, t.actor_email, t.occurred_at))
    await store.insert_cases(conn, cases)
    await store.add_timeline(conn, timeline)
    await store.upsert_tasks(conn, tasks)
