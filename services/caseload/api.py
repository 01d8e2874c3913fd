"""The caseload service's HTTP routes. Every read is filtered by the caller's token: a
caseload viewer or editor sees the students on their own caseload; school admins their
schools; district admins their district. A student outside the caller's scope answers 404."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, HTTPException, Query, Request, status

from services.caseload import store
from services.kit.auth import Caller, Identity, not_found

router = APIRouter(prefix="/v1", tags=["caseload"])

ADMINS = {"district_admin", "school_admin"}
CASELOAD_ROLES = {"caseload_viewer", "caseload_editor", "provider", "supervisor"}


def _may_read_caseloads(caller: Identity) -> None:
    if not caller.roles & (ADMINS | CASELOAD_ROLES):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "needs a caseload role (caseload_viewer, caseload_editor, "
                                                        "provider, supervisor) or an admin role")


async def _visible_student(conn, caller: Identity, student_id: UUID):
    """The student, if the caller may see them; else None (and the route answers 404)."""
    row = await store.student(conn, district_id=caller.district_id, student_id=student_id)
    if row is None:
        return None
    if caller.district_wide or ("school_admin" in caller.roles and row["school_id"] in caller.schools):
        return row
    if await store.on_caseload(conn, owner_email=caller.email, student_id=student_id):
        return row
    return None


@router.get("/caseloads/me")
async def my_caseload(request: Request, caller: Caller, school_id: str | None = None, grade: str | None = None,
                      reason: str | None = None, after: UUID | None = None,
                      limit: Annotated[int, Query(ge=1, le=500)] = 100) -> dict:
    """The caller's caseload, each student with why they are on it and since when."""
    _may_read_caseloads(caller)
    return await _caseload(request, caller, caller.email, school_id, grade, reason, after, limit)


@router.get("/caseloads/{owner_email}")
async def caseload_of(request: Request, caller: Caller, owner_email: str, school_id: str | None = None,
                      grade: str | None = None, reason: str | None = None, after: UUID | None = None,
                      limit: Annotated[int, Query(ge=1, le=500)] = 100) -> dict:
    """Another staff member's caseload (admins; school admins see their schools' students)."""
    if owner_email.lower() == caller.email.lower():
        return await my_caseload(request, caller, school_id, grade, reason, after, limit)
    if not caller.roles & ADMINS:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "only admins read other staff members' caseloads")
    return await _caseload(request, caller, owner_email, school_id, grade, reason, after, limit)


async def _caseload(request, caller, owner_email, school_id, grade, reason, after, limit) -> dict:
    async with request.app.state.pool.acquire() as conn:
        rows = await store.caseload_of(conn, district_id=caller.district_id, owner_email=owner_email,
                                       school_id=school_id, grade=grade, reason=reason, after=after, limit=limit)
    items = [
        {"student_id": str(r["student_id"]), "given_name": r["given_name"], "family_name": r["family_name"],
         "school_id": r["school_id"], "grade": r["grade"], "why": r["why"]}
        for r in rows
        if caller.district_wide or owner_email == caller.email or r["school_id"] in caller.schools
    ]
    return {"owner_email": owner_email, "items": items,
            "next_after": str(rows[-1]["student_id"]) if len(rows) == limit else None}


@router.get("/students/{student_id}")
async def get_student(request: Request, caller: Caller, student_id: UUID) -> dict:
    _may_read_caseloads(caller)
    async with request.app.state.pool.acquire() as conn:
        row = await _visible_student(conn, caller, student_id)
    if row is None:
        raise not_found("student not found")
    return {**dict(row), "student_id": str(row["student_id"]), "as_of": row["as_of"].isoformat()}


@router.get("/students/{student_id}/caseloads")
async def caseloads_with_student(request: Request, caller: Caller, student_id: UUID) -> dict:
    """Every caseload the student is on, and why (admins)."""
    if not caller.roles & ADMINS:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "only admins see every caseload a student is on")
    async with request.app.state.pool.acquire() as conn:
        if await _visible_student(conn, caller, student_id) is None:
            raise not_found("student not found")
        rows = await store.caseloads_with(conn, district_id=caller.district_id, student_id=student_id)
    return {"student_id": str(student_id),
            "caseloads": [{**dict(r), "since": r["since"].isoformat()} for r in rows]}
