"""The caseload service's HTTP routes. Every read and action is filtered by the caller's
token: a caseload viewer sees the students on their own caseload, an editor also acts on
them; school admins their schools; district admins their district. A student outside the
caller's scope answers 404, never revealing that the student exists.

Refusals name the rule that failed: 403 when the caller's role cannot take the action, 422
when a student breaks a rule (a batch lists every student refused and applies nothing)."""

from __future__ import annotations

from dataclasses import replace

import uuid
from typing import Annotated, Literal
from uuid import UUID

from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.responses import JSONResponse, Response
from pydantic import AfterValidator, BaseModel, Field

from services.caseload import actions, domain, handlers, pages, store
from services.caseload.domain import Refused
from services.kit.auth import Caller, Identity, TokenCaller, not_found
from services.kit.http import correlation_id
from services.kit.inputs import INT8, Email, EmailText, Key, Moment, text

router = APIRouter(prefix="/v1", tags=["caseload"])

Page = Annotated[int, Query(ge=1, le=500, description="page size")]
Service = text(100, min_length=1, description="the mandated service, e.g. speech")


def _change_position(value: str) -> tuple[int, int]:
    """A change feed position, `<transaction>.<sequence>` as `next_after` gave it."""
    position = tuple(int(p) for p in value.split("."))
    if any(p > INT8 for p in position):
        raise ValueError("is not a position the change feed gave: pass next_after back as it came")
    return position


ChangePosition = Annotated[str, Query(pattern=r"^\d{1,20}\.\d{1,20}$", description="next_after of the page before"),
                           AfterValidator(_change_position)]

# Rules a caller's role breaks (403); the others are about the student (422).
_ROLE_RULES = {"viewer_cannot_act", "not_on_your_caseload", "not_a_supervisor", "not_a_provider",
               "no_access_to_provider", "not_an_admin"}


def _caller(identity: Identity) -> domain.Caller:
    email = domain.login_email(identity.email)
    if email is None:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "the token names no login email")
    return replace(identity, email=email)


def _named(email: str, what: str, *, writing: bool = False) -> str:
    """An email a route takes as an owner (in the path or the body), as a login email. A
    blank one names no one: 404 on a read, 422 on a write (never "remove", never an owner)."""
    login = domain.login_email(email)
    if login is None:
        if writing:
            raise _refusal(Refused("blank_email", f"the {what} is named by their login email; this one is blank"))
        raise not_found(f"{what} not found")
    return login


def _may_read(caller: Identity) -> None:
    if not caller.roles & domain.READ_ROLES:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "needs a caseload role (caseload_viewer, caseload_editor, "
                                                        "provider, supervisor) or an admin role")


def _refusal(r: Refused) -> HTTPException:
    code = status.HTTP_403_FORBIDDEN if r.rule in _ROLE_RULES else status.HTTP_422_UNPROCESSABLE_ENTITY
    return HTTPException(code, {"rule": r.rule, "message": r.message})


def _jsonable(row) -> dict:
    return {k: (str(v) if isinstance(v, UUID) else v.isoformat() if hasattr(v, "isoformat") else v)
            for k, v in dict(row).items()}


async def _visible_student(conn, caller: domain.Caller, district_id: str, student_id: UUID):
    """The student, if the caller may see them; else None (and the route answers 404)."""
    row = await store.student(conn, district_id=district_id, student_id=student_id)
    if row is None:
        return None
    own = await store.on_caseload(conn, owner_email=caller.email, student_id=student_id)
    return row if domain.may_see(caller, schools=row["school_ids"], on_own_caseload=own) else None


async def _act(request: Request, identity: Identity, action: actions.Action, student_ids: list[UUID],
               single: bool = False) -> dict:
    caller = _caller(identity)
    try:
        changes = await actions.run(request.app.state.runtime, caller, identity.district_id, action, student_ids,
                                    correlation_id=correlation_id(request) or str(uuid.uuid4()))
    except Refused as r:
        raise _refusal(r) from None
    except actions.BatchRefused as refused:
        if single:
            r = refused.refusals[0]
            if r.rule == "not_found":
                raise not_found("student not found") from None
            raise _refusal(Refused(r.rule, r.message)) from None
        return JSONResponse(
            {"detail": f"nothing was applied: {len(refused.refusals)} of {len(set(student_ids))} students refused",
             "errors": [{"student_id": str(r.student_id), "rule": r.rule, "message": r.message}
                        for r in refused.refusals]},
            status_code=status.HTTP_422_UNPROCESSABLE_ENTITY)
    return {"applied": len(set(student_ids)), "changes": [
        {"change": c["change"], "owner_email": c["owner_email"], "student_id": str(c["student_id"]),
         "reason": c["reason"], "detail": c["detail"]} for c in changes]}


# ---------------------------------------------------------------------------- caseloads


@router.get("/caseloads/me")
async def my_caseload(request: Request, token: TokenCaller, school_id: Key | None = None, grade: Key | None = None,
                      reason: Key | None = None, after: UUID | None = None, limit: Page = 100) -> Response:
    """The caller's caseload, each student with why they are on it and since when."""
    # The page most read: the caller's grants and whether their kept page is still true are
    # read in one query (services/caseload/pages.py), then the caller is authorised.
    key = pages.PageKey(token.district_id, _caller(token).email, school_id, grade, reason, after, limit, None)
    state = request.app.state
    caller, page = await pages.own_caseload(state.caseload_pages, state.caseload_page_checks, state.pool, token, key)
    _may_read(caller)
    if page is None:
        async with state.pool.acquire() as conn:
            page = await pages.read_afresh(state.caseload_pages, conn, key)
    return Response(page, media_type="application/json")


@router.get("/caseloads/{owner_email}")
async def caseload_of(request: Request, caller: Caller, owner_email: EmailText, school_id: Key | None = None,
                      grade: Key | None = None, reason: Key | None = None, after: UUID | None = None,
                      limit: Page = 100) -> Response:
    """Another staff member's caseload (admins, and supervisors for providers: only the
    students of the schools they see)."""
    owner = _named(owner_email, "caseload")
    if owner == _caller(caller).email:
        _may_read(caller)
        return await _caseload(request, caller, owner, school_id, grade, reason, after, limit)
    if not caller.roles & (domain.ADMIN_ROLES | {"supervisor"}):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "only admins and supervisors read other staff members' "
                                                        "caseloads")
    return await _caseload(request, caller, owner, school_id, grade, reason, after, limit)


async def _caseload(request, caller: Identity, owner_email, school_id, grade, reason, after, limit) -> Response:
    # An admin reading another's caseload sees only the students of their own schools.
    schools = None if owner_email == _caller(caller).email else caller.scope("school_admin", "supervisor")
    key = pages.PageKey(caller.district_id, owner_email, school_id, grade, reason, after, limit,
                        None if schools is None else tuple(schools))
    async with request.app.state.pool.acquire() as conn:
        page = await pages.caseload_page(request.app.state.caseload_pages, conn, key)
    return Response(page, media_type="application/json")


@router.get("/caseload-changes")
async def caseload_changes(request: Request, caller: Caller, since: Moment | None = None,
                           after: ChangePosition | None = None,
                           limit: Annotated[int, Query(ge=1, le=5000)] = 1000) -> dict:
    """Membership changes, oldest first: start with `since` (a time), then pass `next_after`
    back as `after` to read on. A district admin reads the district's, a school admin their
    schools', everyone else the changes to their own caseload."""
    _may_read(caller)
    cursor = after or (0, 0)
    async with request.app.state.pool.acquire() as conn:
        rows = await store.changes(
            conn, district_id=caller.district_id, after=cursor, since=since,
            owner_email=None if caller.roles & domain.ADMIN_ROLES else _caller(caller).email,
            schools=caller.scope("school_admin") if caller.has("school_admin") else None,
            limit=limit)
    items = [{k: v for k, v in _jsonable(r).items() if k not in ("xid", "seq")} for r in rows]
    next_after = f"{rows[-1]['xid']}.{rows[-1]['seq']}" if rows else (f"{after[0]}.{after[1]}" if after else None)
    return {"items": items, "next_after": next_after}


# ---------------------------------------------------------------------------- students


@router.get("/students/{student_id}")
async def get_student(request: Request, caller: Caller, student_id: UUID) -> dict:
    _may_read(caller)
    async with request.app.state.pool.acquire() as conn:
        row = await _visible_student(conn, _caller(caller), caller.district_id, student_id)
    if row is None:
        raise not_found("student not found")
    return _jsonable(row)


@router.get("/students/{student_id}/caseloads")
async def caseloads_with_student(request: Request, caller: Caller, student_id: UUID) -> dict:
    """Every caseload the student is on, and why (admins)."""
    if not caller.roles & domain.ADMIN_ROLES:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "only admins see every caseload a student is on")
    async with request.app.state.pool.acquire() as conn:
        if await _visible_student(conn, _caller(caller), caller.district_id, student_id) is None:
            raise not_found("student not found")
        rows = await store.caseloads_with(conn, district_id=caller.district_id, student_id=student_id)
    return {"student_id": str(student_id), "caseloads": [_jsonable(r) for r in rows]}


# ---------------------------------------------------------------------------- point persons


class PointPersonTypeIn(BaseModel):
    type: str = Field(min_length=1, max_length=40, pattern=r"^[a-z][a-z0-9_]*$")
    label: text(80, min_length=1)
    levels: list[text(40, min_length=1)] = Field(min_length=1, max_length=10,
                                                description="School levels: ES, MS, HS (EMS = ES and MS)")


@router.get("/point-person-types")
async def get_point_person_types(request: Request, caller: Caller) -> dict:
    """The district's point person types and the school levels each is available at."""
    _may_read(caller)
    async with request.app.state.pool.acquire() as conn:
        types = await store.point_person_types(conn, caller.district_id)
    return {"items": [{"type": t.type, "label": t.label, "levels": sorted(t.levels)} for t in types]}


@router.put("/point-person-types")
async def set_point_person_types(request: Request, caller: Caller, body: list[PointPersonTypeIn]) -> dict:
    """Replace the district's point person types (district admins). A type still assigned
    to students cannot be dropped."""
    if not caller.district_wide:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "changing point person types needs district_admin")
    try:
        types = [domain.PointPersonType(t.type, t.label, domain.parse_levels(t.levels)) for t in body]
    except ValueError as e:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, str(e)) from None
    if len({t.type for t in types}) != len(types):
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, "each type may appear once")
    async with request.app.state.runtime.unit_of_work() as uow:
        await store.lock_point_person_types(uow.conn, caller.district_id)
        in_use = await store.point_person_counts(uow.conn, caller.district_id)
        dropped = {t: n for t, n in in_use.items() if t not in {x.type for x in types}}
        if dropped:
            raise HTTPException(status.HTTP_409_CONFLICT, "still assigned: " + ", ".join(
                f"{t} ({n} students)" for t, n in sorted(dropped.items())) + "; remove those point persons first")
        await store.set_point_person_types(uow.conn, caller.district_id, types, _caller(caller).email)
    return await get_point_person_types(request, caller)


class PointPersonIn(BaseModel):
    owner_email: Email


@router.get("/students/{student_id}/point-persons")
async def point_persons(request: Request, caller: Caller, student_id: UUID) -> dict:
    """The student's point persons, and who held each role before (history)."""
    _may_read(caller)
    async with request.app.state.pool.acquire() as conn:
        if await _visible_student(conn, _caller(caller), caller.district_id, student_id) is None:
            raise not_found("student not found")
        current, history = await store.point_persons_of(conn, student_id)
    return {"student_id": str(student_id), "current": [_jsonable(r) for r in current],
            "history": [_jsonable(r) for r in history]}


@router.put("/students/{student_id}/point-persons/{type}")
async def assign_point_person(request: Request, caller: Caller, student_id: UUID, type: Key,
                              body: PointPersonIn) -> dict:
    """Make a staff member the student's point person of this type, replacing the one before."""
    owner = _named(body.owner_email, "point person", writing=True)
    return await _act(request, caller, actions.AssignPointPerson(type, owner), [student_id],
                      single=True)


@router.delete("/students/{student_id}/point-persons/{type}")
async def remove_point_person(request: Request, caller: Caller, student_id: UUID, type: Key) -> dict:
    return await _act(request, caller, actions.AssignPointPerson(type, None), [student_id], single=True)


# ---------------------------------------------------------------------------- supports


class SupportIn(BaseModel):
    school_id: Key
    name: text(120, min_length=1)
    lead_email: Email


class SupportChange(BaseModel):
    name: text(120, min_length=1) | None = None
    lead_email: Email | None = None


class Students(BaseModel):
    student_ids: list[UUID] = Field(min_length=1, max_length=5000)


def _may_manage_supports(caller: Identity, school_id: str) -> None:
    c = _caller(caller)
    if c.district_wide or c.holds_any(("school_admin", "caseload_editor"), school_id):
        return
    if not c.roles & domain.ACT_ROLES:
        raise _refusal(Refused("viewer_cannot_act", "a caseload viewer may see students, not act on them"))
    raise not_found("school not found")


async def _support(conn, caller: Identity, support_id: UUID):
    row = await store.support(conn, caller.district_id, support_id)
    if row is None or not caller.may_see_school(row["school_id"]):
        raise not_found("support not found")
    return row


@router.post("/supports", status_code=status.HTTP_201_CREATED)
async def create_support(request: Request, caller: Caller, body: SupportIn) -> dict:
    """A named group of students with a lead (e.g. "Tier 2 reading"): the lead has its
    students on their caseload."""
    _may_manage_supports(caller, body.school_id)
    support_id = uuid.uuid4()
    async with request.app.state.runtime.unit_of_work() as uow:
        if not await store.active_staff_emails(uow.conn, caller.district_id, [body.lead_email]):
            raise _refusal(Refused("unknown_staff_member", "the lead must be an active staff member of the district "
                                                            "with a login email"))
        created = await store.create_support(uow.conn, support_id=support_id, district_id=caller.district_id,
                                             school_id=body.school_id, name=body.name,
                                             lead_email=_named(body.lead_email, "lead", writing=True),
                                             by=_caller(caller).email)
        if not created:
            raise HTTPException(status.HTTP_409_CONFLICT, f"the school already has a support named {body.name!r}")
        row = await store.support(uow.conn, caller.district_id, support_id)
    return _jsonable(row)


@router.get("/supports")
async def list_supports(request: Request, caller: Caller, school_id: Key | None = None) -> dict:
    _may_read(caller)
    schools = caller.scope()
    if school_id is not None:
        schools = [school_id] if schools is None or school_id in schools else []
    async with request.app.state.pool.acquire() as conn:
        rows = await store.supports(conn, caller.district_id, schools)
    return {"items": [_jsonable(r) for r in rows]}


@router.get("/supports/{support_id}")
async def get_support(request: Request, caller: Caller, support_id: UUID) -> dict:
    _may_read(caller)
    async with request.app.state.pool.acquire() as conn:
        return _jsonable(await _support(conn, caller, support_id))


@router.patch("/supports/{support_id}")
async def change_support(request: Request, caller: Caller, support_id: UUID, body: SupportChange) -> dict:
    """Rename a support or hand it to a new lead: its students move to the new lead's caseload."""
    async with request.app.state.runtime.unit_of_work() as uow:
        row = await _support(uow.conn, caller, support_id)
        _may_manage_supports(caller, row["school_id"])
        if body.lead_email and not await store.active_staff_emails(uow.conn, caller.district_id, [body.lead_email]):
            raise _refusal(Refused("unknown_staff_member", "the lead must be an active staff member of the district "
                                                            "with a login email"))
        await store.change_support(uow.conn, support_id, name=body.name,
                                   lead_email=_named(body.lead_email, "lead", writing=True) if body.lead_email else None)
        members = await store.support_student_ids(uow.conn, support_id)
        await handlers.refresh(uow, members)
        row = await store.support(uow.conn, caller.district_id, support_id)
    return _jsonable(row)


@router.delete("/supports/{support_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_support(request: Request, caller: Caller, support_id: UUID) -> None:
    """Close a support: its students leave the lead's caseload."""
    async with request.app.state.runtime.unit_of_work() as uow:
        row = await _support(uow.conn, caller, support_id)
        _may_manage_supports(caller, row["school_id"])
        members = await store.support_student_ids(uow.conn, support_id)
        await store.delete_support(uow.conn, support_id)
        await handlers.refresh(uow, members)


@router.post("/supports/{support_id}/students")
async def add_to_support(request: Request, caller: Caller, support_id: UUID, body: Students) -> dict:
    """Add students to the support: all or nothing."""
    async with request.app.state.pool.acquire() as conn:
        row = await _support(conn, caller, support_id)
    return await _act(request, caller, actions.SupportMembership(dict(row), add=True), body.student_ids)


@router.delete("/supports/{support_id}/students/{student_id}")
async def remove_from_support(request: Request, caller: Caller, support_id: UUID, student_id: UUID) -> dict:
    async with request.app.state.pool.acquire() as conn:
        row = await _support(conn, caller, support_id)
    return await _act(request, caller, actions.SupportMembership(dict(row), add=False), [student_id], single=True)


# ---------------------------------------------------------------------------- batch actions


class BatchAction(BaseModel):
    action: Literal["assign_point_person", "remove_point_person", "add_to_support", "remove_from_support",
                    "add_to_provider_caseload", "remove_from_provider_caseload"]
    student_ids: list[UUID] = Field(min_length=1, max_length=5000)
    type: Key | None = Field(default=None, description="point person type")
    owner_email: Email | None = Field(default=None, description="the point person")
    support_id: UUID | None = None
    provider_email: Email | None = None
    service: Service | None = Field(default=None, description="the mandated service (when the student has several)")


@router.post("/batch-actions")
async def batch_action(request: Request, caller: Caller, body: BatchAction) -> dict:
    """One action on many students (from a list or the data grid): every student is checked
    first; if any is refused, nothing is applied and each refusal is listed (422)."""
    def need(field_name: str):
        value = getattr(body, field_name)
        if value is None:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, f"{body.action} needs {field_name}")
        return value

    if body.action in ("assign_point_person", "remove_point_person"):
        owner = _named(need("owner_email"), "point person", writing=True) if body.action == "assign_point_person" \
            else None
        action: actions.Action = actions.AssignPointPerson(need("type"), owner)
    elif body.action in ("add_to_support", "remove_from_support"):
        async with request.app.state.pool.acquire() as conn:
            row = await _support(conn, caller, need("support_id"))
        action = actions.SupportMembership(dict(row), add=body.action == "add_to_support")
    else:
        action = actions.ProviderCaseload(_named(need("provider_email"), "provider", writing=True), body.service,
                                          add=body.action == "add_to_provider_caseload")
    return await _act(request, caller, action, body.student_ids)


# ---------------------------------------------------------------------------- providers (seed 001)


class ProviderSchools(BaseModel):
    schools: list[Key] = Field(default_factory=list, max_length=2000)
    district_wide: bool = False


class ProviderStudents(BaseModel):
    student_ids: list[UUID] = Field(min_length=1, max_length=5000)
    service: Service | None = None


@router.get("/providers/{provider_email}")
async def get_provider(request: Request, caller: Caller, provider_email: EmailText) -> dict:
    """Where a provider is authorised to serve (admins, supervisors, the provider)."""
    email = _named(provider_email, "provider")
    if email != _caller(caller).email and not caller.roles & (domain.ADMIN_ROLES | {"supervisor"}):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "only admins, supervisors and the provider read this")
    async with request.app.state.pool.acquire() as conn:
        schools = await store.provider_schools(conn, caller.district_id, email)
    return {"provider_email": email, "district_wide": "*" in schools, "schools": sorted(schools - {"*"})}


@router.put("/providers/{provider_email}")
async def authorise_provider(request: Request, caller: Caller, provider_email: EmailText, body: ProviderSchools) -> dict:
    """Set the schools a provider may serve (a district admin; a school admin for their
    schools). Links to students of schools no longer authorised end; first attendances
    waiting for this authorisation apply."""
    if not caller.roles & domain.ADMIN_ROLES:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "authorising providers needs district_admin or school_admin")
    if body.district_wide and not caller.district_wide:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "only a district admin authorises a provider district-wide")
    within = caller.schools_for("school_admin")  # None: the district
    outside = set(body.schools) - within if within is not None else set()
    if outside:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "not your schools: " + ", ".join(sorted(outside)))
    email, me = _named(provider_email, "provider", writing=True), _caller(caller).email
    schools = ["*"] if body.district_wide else sorted(set(body.schools))
    async with request.app.state.runtime.unit_of_work() as uow:
        await store.authorise_provider(uow.conn, caller.district_id, email, schools, me,
                                       within=within)
        ended = await store.end_unauthorised_links(uow.conn, caller.district_id, email, me)
        applied = await store.apply_first_attendances(uow.conn, caller.district_id, provider_email=email)
        touched = ended | await store.student_ids_for(
            uow.conn, caller.district_id, [r["student_source_id"] for r in applied if r["status"] == "applied"])
        await handlers.refresh(uow, touched)
    return await get_provider(request, caller, provider_email)


@router.post("/providers/{provider_email}/students")
async def add_to_provider_caseload(request: Request, caller: Caller, provider_email: EmailText,
                                   body: ProviderStudents) -> dict:
    """Seed 001: a supervisor with access to the students and the provider, or the provider
    themself, adds students with a mandate the provider is authorised to serve."""
    action = actions.ProviderCaseload(_named(provider_email, "provider", writing=True), body.service, add=True)
    return await _act(request, caller, action, body.student_ids, single=len(body.student_ids) == 1)


@router.delete("/providers/{provider_email}/students/{student_id}")
async def remove_from_provider_caseload(request: Request, caller: Caller, provider_email: EmailText,
                                        student_id: UUID) -> dict:
    action = actions.ProviderCaseload(_named(provider_email, "provider", writing=True), None, add=False)
    return await _act(request, caller, action, [student_id], single=True)


@router.get("/students/{student_id}/providers")
async def student_providers(request: Request, caller: Caller, student_id: UUID) -> dict:
    """The student's active mandates and every provider link, ended ones too (history)."""
    _may_read(caller)
    async with request.app.state.pool.acquire() as conn:
        row = await _visible_student(conn, _caller(caller), caller.district_id, student_id)
        if row is None:
            raise not_found("student not found")
        mandates = (await store.active_mandates(conn, caller.district_id, [row["source_id"]])).get(row["source_id"], [])
        links = await store.provider_links_of(conn, caller.district_id, row["source_id"]) if row["source_id"] else []
    return {"student_id": str(student_id),
            "mandates": [{"mandate_id": m, "service": s} for m, s in mandates],
            "providers": [_jsonable(r) for r in links]}


@router.get("/first-attendances")
async def first_attendances(request: Request, caller: Caller, status_: Annotated[
        Literal["pending", "applied"], Query(alias="status")] = "pending", limit: Page = 100) -> dict:
    """First attendances, e.g. those still waiting (for a mandate, the provider's
    authorisation, or the roster to know the student), for admins to chase."""
    if not caller.roles & domain.ADMIN_ROLES:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "needs district_admin or school_admin")
    async with request.app.state.pool.acquire() as conn:
        rows = await store.first_attendances(conn, district_id=caller.district_id, status=status_, limit=limit,
                                             schools=caller.scope("school_admin"))
    return {"items": [_jsonable(r) for r in rows]}


# ---------------------------------------------------------------------------- access levels (seeds 000, 003)

AccessLevel = Literal["caseload_viewer", "caseload_editor", "manage_cases", "provider", "supervisor", "school_admin",
                      "district_admin"]
# Rules about who the caller is (403); the others are about the change (422).
_ACCESS_ROLE_RULES = {"not_an_admin", "needs_district_admin", "outside_your_schools"}


class AccessAt(BaseModel):
    """A level for a staff member at these schools, or district-wide."""

    staff_email: Email
    level: AccessLevel
    schools: list[Key] = Field(default_factory=list, max_length=2000, description="SIS org ids")
    district_wide: bool = Field(default=False, description="the whole district instead of schools")


class AccessChangeIn(BaseModel):
    action: Literal["grant", "revoke"]
    staff_email: Email
    level: AccessLevel
    school_id: Key | None = Field(default=None, description="SIS org id; absent: district-wide")


class AccessChanges(BaseModel):
    changes: list[AccessChangeIn] = Field(min_length=1, max_length=5000)


def _places(body: AccessAt, grant: bool) -> list[domain.AccessChange]:
    if body.district_wide == bool(body.schools):
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY,
                            "name the schools, or set district_wide to true (one or the other)")
    email = _named(body.staff_email, "staff member", writing=True)
    places = [None] if body.district_wide else sorted(set(body.schools))
    return [domain.AccessChange(grant, email, body.level, school) for school in places]


async def _change_access(request: Request, identity: Identity, changes: list[domain.AccessChange]) -> dict:
    try:
        outcomes = await actions.change_access(request.app.state.runtime, _caller(identity), changes,
                                               correlation_id=correlation_id(request) or str(uuid.uuid4()))
    except actions.AccessChangesRefused as refused:
        code = status.HTTP_403_FORBIDDEN if all(r.rule in _ACCESS_ROLE_RULES for r in refused.refusals) \
            else status.HTTP_422_UNPROCESSABLE_ENTITY
        return JSONResponse(
            {"detail": f"nothing was applied: {len(refused.refusals)} of {len(changes)} changes refused",
             "errors": [{"index": r.index, "staff_email": changes[r.index].staff_email,
                         "level": changes[r.index].level, "school_id": changes[r.index].school_id,
                         "rule": r.rule, "message": r.message} for r in refused.refusals]},
            status_code=code)
    return {"changes": [{"staff_email": c.staff_email, "level": c.level, "school_id": c.school_id,
                         "outcome": outcome} for c, outcome in zip(changes, outcomes, strict=True)]}


@router.post("/access/grants")
async def grant_access(request: Request, caller: Caller, body: AccessAt) -> dict:
    """Grant a staff member a level at schools or district-wide (a district admin; a school
    admin the caseload, case and provider levels at their own schools). Granting what is
    already granted changes nothing ("unchanged"). Refusals name the rule (403 for the
    caller's own access, else 422); nothing is applied if any is refused."""
    return await _change_access(request, caller, _places(body, grant=True))


@router.post("/access/revocations")
async def revoke_access(request: Request, caller: Caller, body: AccessAt) -> dict:
    """End an admin's grant of a level at schools or district-wide. Access held by the
    roster default or configuration is refused with the rule that says where to change it;
    the district's last district admin stays."""
    return await _change_access(request, caller, _places(body, grant=False))


@router.post("/access/batch")
async def change_access_batch(request: Request, caller: Caller, body: AccessChanges) -> dict:
    """Grants and revokes applied in order, all or nothing (up to 5,000)."""
    changes = [domain.AccessChange(c.action == "grant", _named(c.staff_email, "staff member", writing=True),
                                   c.level, c.school_id) for c in body.changes]
    return await _change_access(request, caller, changes)


def _access_reader(caller: Identity) -> list[str] | None:
    if not caller.roles & domain.ADMIN_ROLES:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "reading who holds access needs district_admin or school_admin")
    return caller.scope("school_admin")


@router.get("/access")
async def who_holds_access(request: Request, caller: Caller, school: Key | None = None,
                           level: AccessLevel | None = None, staff_email: EmailText | None = None,
                           after: text(460, min_length=3) | None = None, limit: Page = 500) -> dict:
    """Who holds what: every grant held now, by staff email (district admins: the district;
    school admins: their schools and the district-wide grants). Pass `next_after` back as
    `after` for the next page."""
    schools = _access_reader(caller)
    cursor = None
    if after is not None:
        email, _, gid = after.rpartition("/")
        try:
            cursor = (email, UUID(gid))
        except ValueError:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, "after: pass back a next_after") from None
    async with request.app.state.pool.acquire() as conn:
        rows = await store.access_holders(conn, district_id=caller.district_id, schools=schools, school_id=school,
                                          level=level, staff_email=domain.login_email(staff_email or ""),
                                          after=cursor, limit=limit)
    return {"items": [_jsonable(r) for r in rows],
            "next_after": f"{rows[-1]['staff_email']}/{rows[-1]['grant_id']}" if len(rows) == limit else None}


@router.get("/access/me")
async def my_access(caller: Caller) -> dict:
    """What I may do, and why: each level, where (a school, or district_wide; a token's role
    without schools is at no school in particular: it reaches one's own caseload), and its
    basis: token (my token's claims), granted (by an admin: by whom, since when),
    roster_default (the district's default for my roster role) or configuration."""
    return {"email": caller.email.strip().lower(), "district_id": caller.district_id,
            "district_wide": caller.district_wide,
            "levels": [{"level": h.level, "school_id": h.school_id or None, "district_wide": h.district_wide,
                        "basis": h.basis, "granted_by": h.granted_by,
                        "since": h.since.isoformat() if h.since else None}
                       for h in sorted(caller.holdings, key=lambda h: (h.level, h.school_id or "", h.basis))]}


@router.get("/access/history")
async def access_history(request: Request, caller: Caller, staff_email: EmailText | None = None,
                         before: Annotated[int | None, Query(ge=1, le=INT8)] = None, limit: Page = 100) -> dict:
    """Who granted or revoked what, when, newest first; pass `next_before` back as `before`."""
    schools = _access_reader(caller)
    async with request.app.state.pool.acquire() as conn:
        rows = await store.access_history(conn, district_id=caller.district_id, schools=schools,
                                          staff_email=domain.login_email(staff_email or ""), before=before,
                                          limit=limit)
    return {"items": [_jsonable(r) for r in rows], "next_before": rows[-1]["id"] if len(rows) == limit else None}


@router.get("/access/defaults")
async def get_access_defaults(request: Request, caller: Caller) -> dict:
    """The levels each roster role gives at the staff member's schools, as the district set
    them or by default (a teacher: caseload_viewer)."""
    _access_reader(caller)
    async with request.app.state.pool.acquire() as conn:
        set_by = (await store.access_defaults(conn, [caller.district_id])).get(caller.district_id, {})
    defaults = domain.district_defaults(set_by)
    return {"defaults": {role: list(defaults.get(role, ())) for role in domain.ROSTER_ROLES},
            "set_by_district": sorted(set_by)}


@router.put("/access/defaults")
async def set_access_defaults(request: Request, caller: Caller,
                              body: dict[Literal["teacher", "aide", "administrator", "counselor"],
                                         Annotated[list[AccessLevel], Field(max_length=7)]]) -> dict:
    """Set the levels roster roles give (a district admin): e.g. {"teacher":
    ["caseload_editor"], "counselor": ["caseload_viewer", "manage_cases"]}; roles left out
    keep theirs. Every staff member of the district is brought in line at once, each grant
    and revoke published."""
    try:
        changes = await actions.set_access_defaults(request.app.state.runtime, _caller(caller),
                                                    {k: list(v) for k, v in body.items()},
                                                    correlation_id=correlation_id(request) or str(uuid.uuid4()))
    except Refused as r:
        code = status.HTTP_403_FORBIDDEN if r.rule in _ACCESS_ROLE_RULES else status.HTTP_422_UNPROCESSABLE_ENTITY
        raise HTTPException(code, {"rule": r.rule, "message": r.message}) from None
    result = await get_access_defaults(request, caller)
    result["granted"] = sum(c["held"] for c in changes)
    result["revoked"] = sum(not c["held"] for c in changes)
    return result
