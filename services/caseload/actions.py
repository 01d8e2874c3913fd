"""Actions people take on students' caseloads (seed 000: point persons, supports; seed 001:
provider caseloads), on one student or a batch. A batch checks every student first and
applies all or nothing: one transaction, the state change and the membership events it
causes together (the outbox).

Each action says who may take it, what it needs to know, the rule per student, and how it
is applied; `run` does the rest the same way for all of them.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from uuid import UUID

import asyncpg

from services.caseload import domain, handlers, store
from services.caseload.domain import Caller, Refused


@dataclass(frozen=True)
class StudentRefused:
    student_id: UUID
    rule: str
    message: str


class BatchRefused(Exception):
    """Nothing was applied: these students broke a rule."""

    def __init__(self, refusals: list[StudentRefused]) -> None:
        super().__init__(f"{len(refusals)} student(s) refused")
        self.refusals = refusals


@dataclass
class Context:
    conn: object
    caller: Caller
    district_id: str
    facts: dict = field(default_factory=dict)  # what prepare() looked up for the checks


class Action:
    """An editor on their own caseload, or an admin in their scope, by default."""

    def require_role(self, caller: Caller) -> None:
        if not caller.roles & domain.ACT_ROLES:
            raise Refused("viewer_cannot_act", "a caseload viewer may see students, not act on them; this needs "
                                               "caseload_editor or an admin role")

    def visible(self, ctx: Context, student) -> bool:
        return domain.may_see(ctx.caller, schools=student["school_ids"], on_own_caseload=student["on_own_caseload"])

    async def prepare(self, ctx: Context, students: dict) -> None:
        pass

    def check(self, ctx: Context, student) -> None:
        domain.check_may_act(ctx.caller, schools=student["school_ids"], on_own_caseload=student["on_own_caseload"])

    async def apply(self, ctx: Context, students: list) -> None:
        raise NotImplementedError


async def run(runtime, caller: Caller, district_id: str, action: Action, student_ids: list[UUID],
              correlation_id: str | None = None) -> list:
    """Check every student, then apply to all (returning the membership changes) or raise
    BatchRefused and change nothing. A Refused for the whole action propagates."""
    action.require_role(caller)
    ids = list(dict.fromkeys(student_ids))
    for attempt in range(5):
        try:
            return await _run_once(runtime, caller, district_id, action, ids, correlation_id)
        except (asyncpg.exceptions.DeadlockDetectedError, asyncpg.exceptions.SerializationError):
            if attempt == 4:
                raise
            await asyncio.sleep(0.05 * 2 ** attempt)  # a roster batch held the same students: run again
    raise AssertionError("unreachable")


async def _run_once(runtime, caller: Caller, district_id: str, action: Action, ids: list[UUID],
                    correlation_id: str | None) -> list:
    async with runtime.unit_of_work() as uow:
        students = await store.students_for_action(uow.conn, district_id=district_id, student_ids=ids,
                                                   caller_email=caller.email)
        ctx = Context(uow.conn, caller, district_id)
        await action.prepare(ctx, students)
        refused = []
        for student_id in ids:
            student = students.get(student_id)
            if student is None or not action.visible(ctx, student):
                refused.append(StudentRefused(student_id, "not_found", "student not found"))
                continue
            if student["status"] != "active":
                refused.append(StudentRefused(student_id, "student_withdrawn", "the student is withdrawn"))
                continue
            try:
                action.check(ctx, student)
            except Refused as r:
                refused.append(StudentRefused(student_id, r.rule, r.message))
        if refused:
            raise BatchRefused(refused)  # rolls the transaction back: nothing applied
        await action.apply(ctx, [students[i] for i in ids])
        changes = await handlers.refresh(uow, ids, correlation_id=correlation_id, report=True)
    return changes


# ---------------------------------------------------------------------------- point persons


@dataclass
class AssignPointPerson(Action):
    """Make `owner_email` the student's point person of this type (None: remove it). The
    type must be available at the student's school level; the one replaced is kept in history."""

    type: str
    owner_email: str | None

    async def prepare(self, ctx: Context, students: dict) -> None:
        types = {t.type: t for t in await store.point_person_types(ctx.conn, ctx.district_id)}
        ctx.facts["type"] = types.get(self.type)
        grades = await store.school_grades(ctx.conn, ctx.district_id,
                                           {school for s in students.values() for school in s["school_ids"]})
        ctx.facts["levels"] = {school: domain.school_levels(g) for school, g in grades.items()}
        ctx.facts["owner_known"] = self.owner_email is None or bool(
            await store.active_staff_emails(ctx.conn, ctx.district_id, [self.owner_email]))

    def check(self, ctx: Context, student) -> None:
        super().check(ctx, student)
        if self.owner_email is None:
            if ctx.facts["type"] is None:
                raise Refused("unknown_point_person_type", f"no point person type {self.type!r} in this district")
            return
        domain.check_point_person(ctx.facts["type"], self.type,
                                  domain.student_levels(student["school_ids"], ctx.facts["levels"]),
                                  ctx.facts["owner_known"])

    async def apply(self, ctx: Context, students: list) -> None:
        await store.assign_point_persons(ctx.conn, district_id=ctx.district_id,
                                         student_ids=[s["student_id"] for s in students], type_=self.type,
                                         owner_email=self.owner_email, by=ctx.caller.email)


# ---------------------------------------------------------------------------- supports


@dataclass
class SupportMembership(Action):
    """Add students to a support (or take them out): its lead has them on their caseload.
    A support belongs to one school; its students are enrolled in that school."""

    support: dict
    add: bool

    def check(self, ctx: Context, student) -> None:
        super().check(ctx, student)
        if self.add:
            domain.check_support_school(self.support, student["school_ids"])

    async def apply(self, ctx: Context, students: list) -> None:
        await store.support_members(ctx.conn, self.support["support_id"], [s["student_id"] for s in students],
                                    add=self.add, by=ctx.caller.email)


# ---------------------------------------------------------------------------- provider caseloads (seed 001)


@dataclass
class ProviderCaseload(Action):
    """Put students on a provider's caseload (a supervisor for a provider, or a provider for
    themself), under a mandate and the provider's authorisation; or take them off."""

    provider_email: str
    service: str | None
    add: bool

    def require_role(self, caller: Caller) -> None:
        pass  # who may change a provider's caseload depends on the provider: see prepare

    async def prepare(self, ctx: Context, students: dict) -> None:
        ctx.facts["provider_schools"] = schools = await store.provider_schools(ctx.conn, ctx.district_id,
                                                                               self.provider_email)
        domain.check_may_change_provider_caseload(ctx.caller, self.provider_email, schools)
        ctx.facts["mandates"] = await store.active_mandates(
            ctx.conn, ctx.district_id, [s["source_id"] for s in students.values() if s["source_id"]])
        ctx.facts["link"] = {}

    def visible(self, ctx: Context, student) -> bool:
        if super().visible(ctx, student):
            return True
        # A provider finds the students of the schools they are authorised to serve.
        return self.provider_email == ctx.caller.email and domain.provider_serves(ctx.facts["provider_schools"],
                                                                                  student["school_ids"])

    def check(self, ctx: Context, student) -> None:
        if self.add:
            ctx.facts["link"][student["student_id"]] = domain.mandate_to_link(
                provider_schools=ctx.facts["provider_schools"], student_schools=student["school_ids"],
                mandates=ctx.facts["mandates"].get(student["source_id"], []), service=self.service)

    async def apply(self, ctx: Context, students: list) -> None:
        via = "provider" if self.provider_email == ctx.caller.email else "supervisor"
        if self.add:
            await store.link_provider(ctx.conn, district_id=ctx.district_id, provider_email=self.provider_email,
                                      links=[(s["source_id"], ctx.facts["link"][s["student_id"]]) for s in students],
                                      added_via=via, added_by=ctx.caller.email)
        else:
            await store.end_provider_links(ctx.conn, district_id=ctx.district_id,
                                           source_ids=[s["source_id"] for s in students],
                                           provider_email=self.provider_email, ended_by=ctx.caller.email,
                                           why=f"taken off by {via}")


# ---------------------------------------------------------------------------- access levels (seeds 000, 003)


@dataclass(frozen=True)
class AccessRefused:
    index: int  # the change's place in the request, from 0
    rule: str
    message: str


class AccessChangesRefused(Exception):
    """Nothing was applied: these changes broke a rule."""

    def __init__(self, refusals: list[AccessRefused]) -> None:
        super().__init__(f"{len(refusals)} access change(s) refused")
        self.refusals = refusals


async def change_access(runtime, caller: Caller, changes: list[domain.AccessChange],
                        correlation_id: str | None = None) -> list[str]:
    """Grant or revoke access levels, in order, all or nothing: each change's outcome
    (granted, revoked, unchanged), or AccessChangesRefused listing every change a rule
    refuses (domain.check_may_assign, check_grantee, check_revoke)."""
    district_id = caller.district_id
    refused = []
    for i, change in enumerate(changes):
        try:
            domain.check_may_assign(caller, change)
        except Refused as r:
            refused.append(AccessRefused(i, r.rule, r.message))
    if len(refused) == len(changes):
        raise AccessChangesRefused(refused)
    async with runtime.unit_of_work() as uow:
        await store.lock_access(uow.conn, [district_id])
        staff = await store.active_staff_emails(uow.conn, district_id, [c.staff_email for c in changes if c.grant])
        schools = await store.known_schools(uow.conn, district_id,
                                            {c.school_id for c in changes if c.grant and c.school_id is not None})
        held = await store.held_access(uow.conn, district_id, [(c.staff_email, c.level, c.school_id) for c in changes])
        admins = await store.district_admins(uow.conn, district_id)
        now, outcomes, rows = await store.access_clock(uow.conn), [], []
        not_theirs = {r.index for r in refused}
        for i, change in enumerate(changes):
            if i in not_theirs:
                outcomes.append("refused")
                continue
            place = (change.staff_email, change.level, change.school_id)
            bases = held.setdefault(place, {})
            try:
                if change.grant:
                    domain.check_grantee(change, active_staff=change.staff_email in staff,
                                         district_admin=change.staff_email in admins,
                                         known_school=change.school_id in schools)
                else:
                    domain.check_revoke(change, set(bases), len(admins))
            except Refused as r:
                refused.append(AccessRefused(i, r.rule, r.message))
                outcomes.append("refused")
                continue
            if change.grant == ("granted" in bases):
                outcomes.append("unchanged")
                continue
            row = handlers.access_row(grant=change.grant, district_id=district_id, staff_email=change.staff_email,
                                      level=change.level, school_id=change.school_id, basis="granted",
                                      changed_by=caller.email, reason="granted by an admin" if change.grant
                                      else "revoked by an admin", at=now)
            rows.append(row)
            outcomes.append("granted" if change.grant else "revoked")
            if change.grant:
                bases["granted"] = row["grant_id"]
            else:
                del bases["granted"]
            if change.level == "district_admin":
                holds_admin = any(b for (email, level, _), b in held.items()
                                  if email == change.staff_email and level == "district_admin")
                (admins.add if holds_admin else admins.discard)(change.staff_email)
        if refused:  # rolls the transaction back: nothing applied
            raise AccessChangesRefused(sorted(refused, key=lambda r: r.index))
        await handlers.record_access(uow, rows, correlation_id)
    return outcomes


async def set_access_defaults(runtime, caller: Caller, defaults: dict[str, list[str]],
                              correlation_id: str | None = None) -> list[dict]:
    """A district admin sets the levels a roster role gives at the staff member's schools;
    every staff record of the district is brought in line (grants and revokes published).
    Returns the changes."""
    if not caller.district_wide:
        raise Refused("needs_district_admin", "only a district admin sets the district's roster defaults")
    domain.check_defaults(defaults)
    async with runtime.unit_of_work() as uow:
        await store.lock_access(uow.conn, [caller.district_id])
        await store.set_access_defaults(uow.conn, caller.district_id, defaults, caller.email,
                                        await store.access_clock(uow.conn))
        return await handlers.refresh_roster_defaults(uow, await store.staff_ids_of(uow.conn, caller.district_id),
                                                      correlation_id)


async def grant_configured_admins(uow, configured: list[tuple[str, str]]) -> list[dict]:
    """The district admins configuration names (CASEFLOW_DISTRICT_ADMINS: district=email),
    each district's first: granted on the basis `configuration`; one no longer named is
    revoked. Returns the changes."""
    configured = sorted({(d, e) for d, e in ((d, domain.login_email(e)) for d, e in configured) if e})
    held = await store.configured_grants(uow.conn)
    await store.lock_access(uow.conn, {d for d, _ in configured} | {h["district_id"] for h in held})
    held = {h["grant_id"]: h for h in await store.configured_grants(uow.conn)}
    now = await store.access_clock(uow.conn)
    wanted = {row["grant_id"]: row for row in (
        handlers.access_row(grant=True, district_id=d, staff_email=e, level="district_admin", school_id=None,
                            basis="configuration", changed_by=None, reason="named in CASEFLOW_DISTRICT_ADMINS",
                            at=now) for d, e in configured)}
    rows = [row for gid, row in wanted.items() if gid not in held]
    rows += [handlers.access_row(grant=False, district_id=h["district_id"], staff_email=h["staff_email"],
                                 level=h["level"], school_id=h["school_id"], basis="configuration", changed_by=None,
                                 reason="no longer named in CASEFLOW_DISTRICT_ADMINS", at=now, grant_id=gid)
             for gid, h in held.items() if gid not in wanted]
    await handlers.record_access(uow, rows)
    return rows


async def grant_district_admin(uow, district_id: str, email: str, *, by: str) -> str:
    """Make `email` a district admin of the district (`caseflow access grant-district-admin`):
    granted, or unchanged if they already were by a grant."""
    email = domain.login_email(email)
    if not email or "@" not in email:
        raise ValueError("a district admin is named by their login email")
    await store.lock_access(uow.conn, [district_id])
    held = await store.held_access(uow.conn, district_id, [(email, "district_admin", None)])
    if "granted" in held.get((email, "district_admin", None), {}):
        return "unchanged"
    await handlers.record_access(uow, [handlers.access_row(
        grant=True, district_id=district_id, staff_email=email, level="district_admin", school_id=None,
        basis="granted", changed_by=by, reason="granted from the command line",
        at=await store.access_clock(uow.conn))])
    return "granted"
