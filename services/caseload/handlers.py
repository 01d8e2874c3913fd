"""The caseload service's event handlers: keep the roster projection and the special
education facts (mandates, first attendances), then bring the caseloads of every student
the change touches in line with the rules, publishing each membership added or removed."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID

from contracts.caseload import AccessGranted, AccessRevoked
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
from contracts.special_education import FirstAttendanceRecorded, MandateEnded, MandateRecorded
from contracts.topics import CASELOAD_MEMBERSHIPS
from services.caseload import domain, store
from services.kit.consumer import UnitOfWork


async def on_roster_students(uow: UnitOfWork, events: list[StudentEnrolled | StudentUpdated | StudentWithdrawn]) -> None:
    sources = {(e.district_id, e.source_id) for e in events if e.source_id}
    await store.lock_sources(uow.conn, sources)
    own = {e.student_id: e for e in events}  # each student's last event in the batch
    held = await store.held_students(uow.conn, own)
    latest = domain.latest_students(events, held)
    await store.project_students(uow.conn, latest)
    # First attendances that waited for the roster to know the student (asked only of the
    # districts where one is pending: the sources are locked, none of theirs can arrive meanwhile).
    known = [(s.district_id, s.source_id) for s in latest if s.source_id]
    waiting = await store.districts_with_pending_first_attendances(uow.conn, {d for d, _ in known})
    for district_id, source_ids in _by_district(pair for pair in known if pair[0] in waiting):
        await store.apply_first_attendances(uow.conn, district_id, source_ids=source_ids)
    await refresh(uow, own, events[-1], own)


async def on_roster_staff(uow: UnitOfWork, events: list[StaffUpserted | StaffDeactivated]) -> None:
    await store.lock_class_lists(uow.conn, {e.district_id for e in events}, exclusive=True)
    last: dict[UUID, tuple] = {}  # one staff member's events arrive in order: the last one stands
    for e in events:
        if isinstance(e, StaffUpserted):  # a blank email (an older producer's "") is no email: unmatched
            last[e.staff_id] = (e.staff_id, e.district_id, e.source_id, e.role, domain.login_email(e.email), True,
                                e.occurred_at, e.school_ids)
        else:
            last[e.staff_id] = (e.staff_id, e.district_id, e.source_id, "teacher", None, False, e.occurred_at,
                                None)
    rows = list(last.values())
    # A deactivation keeps the role we knew.
    roles = await store.lock_staff_roles(uow.conn, [r[0] for r in rows])
    rows = [r if r[5] else (*r[:3], roles.get(r[0], r[3]), *r[4:]) for r in rows]
    await store.project_staff(uow.conn, rows)
    # A teacher's email or standing changes only their students' caseloads in the classes they teach.
    await refresh(uow, (), events[-1], in_classes=await store.students_taught_by(uow.conn, last))
    await refresh_roster_defaults(uow, last, events[-1].correlation_id)


async def on_roster_classes(uow: UnitOfWork, events: list[ClassUpserted | ClassRemoved]) -> None:
    await store.lock_class_lists(uow.conn, {e.district_id for e in events}, exclusive=True)
    last = {e.class_id: e for e in events}  # in order per class: the last event stands
    upserts = [(e.class_id, e.district_id, e.source_id, e.school_id, e.class_type, e.title, e.class_code,
                e.occurred_at) for e in last.values() if isinstance(e, ClassUpserted)]
    removed = [e.class_id for e in last.values() if isinstance(e, ClassRemoved)]
    await store.project_classes(uow.conn, upserts, removed)
    # A class's type, school or removal changes only its students' caseloads in that class.
    await refresh(uow, (), events[-1], in_classes=await store.students_in_classes(uow.conn, last))


async def on_roster_enrollments(uow: UnitOfWork, events: list[EnrollmentAdded | EnrollmentRemoved]) -> None:
    await store.lock_class_lists(uow.conn, {e.district_id for e in events},
                                 exclusive=any(e.role != "student" for e in events))
    added = {(e.class_id, e.person_id): (e.class_id, e.person_id, e.role, e.district_id)
             for e in events if isinstance(e, EnrollmentAdded)}
    removed = []
    for e in events:  # in order: an enrolment added then removed in one batch is removed
        if isinstance(e, EnrollmentRemoved):
            added.pop((e.class_id, e.person_id), None)
            removed.append((e.class_id, e.person_id))
    await store.project_members(uow.conn, list(added.values()), removed)
    # An enrolment changes only caseloads in its class: a student's, their own there; a
    # teacher's, those of every student of the class there. One refresh of (student, class)
    # pairs for the whole batch (services/caseload/store.py: in parts of REFRESH_PAIRS).
    # Brought in line whole, a teacher's students cost seven times the work: each student's
    # every class (pg_stat_statements, scale 0.05: 66 ms a batch, as much as its 2,000
    # students' own enrolments).
    cause_of = {e.person_id: e for e in events if e.role == "student"}
    pairs = {(e.person_id, e.class_id) for e in events if e.role == "student"}
    taught = {e.class_id for e in events if e.role != "student"}
    if taught:
        pairs |= await store.students_in_classes(uow.conn, taught)
    await refresh(uow, (), events[-1], cause_of, in_classes=pairs)


async def on_mandates_recorded(uow: UnitOfWork, events: list[MandateRecorded]) -> None:
    await store.lock_sources(uow.conn, {(e.district_id, e.student_source_id) for e in events})
    await store.record_mandates(uow.conn, events)
    await _refresh_by_source(uow, events, apply_waiting=True)


async def on_mandates_ended(uow: UnitOfWork, events: list[MandateEnded]) -> None:
    await store.lock_sources(uow.conn, {(e.district_id, e.student_source_id) for e in events})
    await store.end_mandates(uow.conn, events)
    await _refresh_by_source(uow, events)


async def on_first_attendances(uow: UnitOfWork, events: list[FirstAttendanceRecorded]) -> None:
    """Seed 001: a provider's "first attend" adds the student to their caseload, here within
    seconds. Without an active mandate, or the provider's authorisation for the student's
    school, or a student the roster knows, it waits (and applies when that arrives). A first
    attendance naming no provider (a blank email) can never apply: it fails, to be
    dead-lettered with its reason."""
    events = [e.model_copy(update={"provider_email": domain.login_email(e.provider_email)}) for e in events]
    if any(e.provider_email is None for e in events):
        raise ValueError("a first attendance names no provider: its provider_email is blank")
    await store.lock_sources(uow.conn, {(e.district_id, e.student_source_id) for e in events})
    await store.record_first_attendances(uow.conn, events)
    await _refresh_by_source(uow, events, apply_waiting=True)


async def _refresh_by_source(uow: UnitOfWork, events, apply_waiting: bool = False) -> None:
    for district_id, source_ids in _by_district((e.district_id, e.student_source_id) for e in events):
        if apply_waiting:
            await store.apply_first_attendances(uow.conn, district_id, source_ids=source_ids)
        await refresh(uow, await store.student_ids_for(uow.conn, district_id, source_ids), events[-1])


def _by_district(pairs) -> list[tuple[str, list[str]]]:
    out: dict[str, set[str]] = {}
    for district_id, source_id in pairs:
        out.setdefault(district_id, set()).add(source_id)
    return [(d, sorted(ids)) for d, ids in out.items()]


async def refresh(uow: UnitOfWork, student_ids, cause=None, cause_of: dict | None = None,
                  correlation_id: str | None = None, *, report: bool = False,
                  in_classes: set[tuple[UUID, UUID]] | None = None) -> list:
    """Bring these students' caseloads in line and publish each membership added or
    removed (CaseloadMembershipAdded / Removed, written into the outbox by the same SQL).
    cause: the event the changes answer; cause_of: the student's own event, where there is
    one (its time and correlation id go on the student's membership events); without a
    cause, now and `correlation_id`. report: return the changes (rows with `change`,
    owner_email, student_id, reason, detail, ...), for an answer to a person's action.
    in_classes: (student, class) pairs: only those students' caseloads in those classes
    (student_ids is then ignored)."""
    causes: dict[tuple, store.Cause] = {}  # a batch's events mostly share their time and correlation id
    return await store.refresh_caseloads(
        uow.conn, student_ids, topic=uow.topic(CASELOAD_MEMBERSHIPS.name), report=report,
        in_classes=list(in_classes) if in_classes is not None else None,
        cause=_cause(cause, causes) if cause is not None else store.Cause(datetime.now(UTC).isoformat(),
                                                                          correlation_id),
        cause_of={s: _cause(e, causes) for s, e in (cause_of or {}).items()})


def _cause(event, made: dict[tuple, store.Cause]) -> store.Cause:
    """The event's time as ISO 8601 text and its correlation id, made once per distinct pair
    (an event's occurred_at is always in UTC, contracts.envelope: equal times, equal text)."""
    key = (event.occurred_at, event.correlation_id)
    cause = made.get(key)
    if cause is None:
        cause = made[key] = store.Cause(event.occurred_at.isoformat(), event.correlation_id)
    return cause


# ---------------------------------------------------------------------------- access levels


def access_row(*, grant: bool, district_id: str, staff_email: str, level: str, school_id: str | None, basis: str,
               changed_by: str | None, reason: str, at: datetime, staff_id: UUID | None = None,
               grant_id: UUID | None = None) -> dict:
    return dict(grant_id=grant_id or domain.grant_id(district_id, staff_email, level, school_id, basis, staff_id),
                district_id=district_id, staff_email=staff_email, level=level, school_id=school_id, basis=basis,
                held=grant, changed_by=changed_by, reason=reason, at=at, staff_id=staff_id)


async def record_access(uow: UnitOfWork, rows: list[dict], correlation_id: str | None = None) -> None:
    """Write these grants and revokes with their history and publish each
    (caseload.access.v1), in the caller's transaction."""
    await store.write_access(uow.conn, rows)
    for r in rows:
        fields = dict(district_id=r["district_id"], occurred_at=r["at"], grant_id=r["grant_id"],
                      staff_email=r["staff_email"], level=r["level"], school_id=r["school_id"], basis=r["basis"],
                      correlation_id=correlation_id, producer="caseflow.caseload")
        uow.emit(AccessGranted(**fields, granted_by=r["changed_by"]) if r["held"]
                 else AccessRevoked(**fields, revoked_by=r["changed_by"], reason=r["reason"]))


async def refresh_roster_defaults(uow: UnitOfWork, staff_ids, correlation_id: str | None = None) -> list[dict]:
    """Bring the access these staff records hold by their district's roster defaults in line
    with the roster (domain.roster_default_access): grant what is now due, revoke what no
    longer is (left the roster, no email, another school, a changed default). An admin's
    grants are not touched."""
    staff_ids = list(set(staff_ids))
    if not staff_ids:
        return []
    staff = await store.staff_for_defaults(uow.conn, staff_ids)
    held = await store.held_defaults(uow.conn, staff_ids)
    districts = {s["district_id"] for s in staff} | {h["district_id"] for h in held}
    await store.lock_access(uow.conn, districts)
    held = {h["grant_id"]: h for h in await store.held_defaults(uow.conn, staff_ids)}  # as of the lock
    set_by = await store.access_defaults(uow.conn, districts)
    now = await store.access_clock(uow.conn)
    wanted: dict[UUID, dict] = {}
    why_not: dict[UUID, str] = {}
    for s in staff:
        email = domain.login_email(s["email"])
        why_not[s["staff_id"]] = domain.default_withdrawn_because(active=s["active"], email=email)
        due = domain.roster_default_access(role=s["role"], email=email, active=s["active"], school_ids=s["school_ids"],
                                           defaults=domain.district_defaults(set_by.get(s["district_id"], {})))
        for level, school in due:
            row = access_row(grant=True, district_id=s["district_id"], staff_email=email, level=level,
                             school_id=school, basis="roster_default", changed_by=None,
                             reason=f"the district's default for {s['role']}s", at=now, staff_id=s["staff_id"])
            wanted[row["grant_id"]] = row
    rows = [row for gid, row in wanted.items() if gid not in held]
    rows += [access_row(grant=False, district_id=h["district_id"], staff_email=h["staff_email"], level=h["level"],
                        school_id=h["school_id"], basis="roster_default", changed_by=None,
                        reason=why_not.get(h["staff_id"], "left the roster"), at=now, staff_id=h["staff_id"],
                        grant_id=gid)
             for gid, h in held.items() if gid not in wanted]
    await record_access(uow, rows, correlation_id)
    return rows
