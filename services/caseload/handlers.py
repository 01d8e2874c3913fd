"""The caseload service's event handlers: keep the roster projection, then bring the
caseloads of every student the change touches in line with the rules, publishing each
membership added or removed."""

from __future__ import annotations

from uuid import UUID

from contracts.caseload import CaseloadMembershipAdded, CaseloadMembershipRemoved
from contracts.roster import (
    ClassRemoved,
    ClassUpserted,
    EnrollmentAdded,
    EnrollmentRemoved,
    StaffDeactivated,
    StaffUpserted,
    StudentEnrolled,
    StudentUpdated,
    StudentWithdrawn,
)
from services.caseload import domain, store
from services.kit.consumer import UnitOfWork


async def on_roster_students(uow: UnitOfWork, events: list[StudentEnrolled | StudentUpdated | StudentWithdrawn]) -> None:
    held = await store.held_students(uow.conn, (e.student_id for e in events))
    await store.project_students(uow.conn, domain.latest_students(events, held))
    await _refresh(uow, {e.student_id for e in events}, events[-1])


async def on_roster_staff(uow: UnitOfWork, events: list[StaffUpserted | StaffDeactivated]) -> None:
    last: dict[UUID, tuple] = {}  # one staff member's events arrive in order: the last one stands
    for e in events:
        if isinstance(e, StaffUpserted):
            last[e.staff_id] = (e.staff_id, e.district_id, e.source_id, e.role, e.email, True, e.occurred_at)
        else:
            last[e.staff_id] = (e.staff_id, e.district_id, e.source_id, "teacher", None, False, e.occurred_at)
    rows = list(last.values())
    # A deactivation keeps the role we knew.
    roles = await store.lock_staff_roles(uow.conn, [r[0] for r in rows])
    rows = [r if r[5] else (*r[:3], roles.get(r[0], r[3]), *r[4:]) for r in rows]
    await store.project_staff(uow.conn, rows)
    await _refresh(uow, await store.students_taught_by(uow.conn, (e.staff_id for e in events)), events[-1])


async def on_roster_classes(uow: UnitOfWork, events: list[ClassUpserted | ClassRemoved]) -> None:
    last = {e.class_id: e for e in events}  # in order per class: the last event stands
    upserts = [(e.class_id, e.district_id, e.source_id, e.school_id, e.class_type, e.title, e.class_code,
                e.occurred_at) for e in last.values() if isinstance(e, ClassUpserted)]
    removed = [e.class_id for e in last.values() if isinstance(e, ClassRemoved)]
    await store.project_classes(uow.conn, upserts, removed)
    await _refresh(uow, await store.students_in_classes(uow.conn, (e.class_id for e in events)), events[-1])


async def on_roster_enrollments(uow: UnitOfWork, events: list[EnrollmentAdded | EnrollmentRemoved]) -> None:
    added = {(e.class_id, e.person_id): (e.class_id, e.person_id, e.role, e.district_id)
             for e in events if isinstance(e, EnrollmentAdded)}
    removed = []
    for e in events:  # in order: an enrolment added then removed in one batch is removed
        if isinstance(e, EnrollmentRemoved):
            added.pop((e.class_id, e.person_id), None)
            removed.append((e.class_id, e.person_id))
    await store.project_members(uow.conn, list(added.values()), removed)
    touched: set[UUID] = {e.person_id for e in events if e.role == "student"}
    touched |= await store.students_in_classes(uow.conn, (e.class_id for e in events if e.role != "student"))
    await _refresh(uow, touched, events[-1])


async def _refresh(uow: UnitOfWork, student_ids: set[UUID], cause) -> None:
    for row in await store.refresh_automatic(uow.conn, student_ids):
        fields = dict(
            district_id=row["district_id"], student_id=row["student_id"], owner_email=row["owner_email"],
            reason=row["reason"], detail=row["detail"], source_ref=row["source_ref"], school_id=row["school_id"],
            occurred_at=cause.occurred_at, correlation_id=cause.correlation_id, producer="caseflow.caseload",
        )
        uow.emit(CaseloadMembershipAdded(**fields) if row["change"] == "added" else CaseloadMembershipRemoved(**fields))
