"""The caseload service's HTTP routes. Every read is scoped to the caller's district and schools."""

from __future__ import annotations

from uuid import UUID

from fastapi import APIRouter, HTTPException, Request, status

from services.caseload import store
from services.kit.auth import Caller, not_found

router = APIRouter(prefix="/v1", tags=["caseload"])


@router.get("/students/{student_id}")
async def get_student(request: Request, caller: Caller, student_id: UUID) -> dict:
    """A student as the caseload service knows them (school admins and district admins)."""
    if not caller.roles & {"district_admin", "school_admin"}:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "needs the district_admin or school_admin role")
    async with request.app.state.pool.acquire() as conn:
        row = await store.student(conn, district_id=caller.district_id, student_id=student_id)
    if row is None or not caller.may_see_school(row["school_id"]):
        raise not_found("student not found")
    return {**dict(row), "student_id": str(row["student_id"]), "as_of": row["as_of"].isoformat()}
