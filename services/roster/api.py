"""The roster's HTTP routes. Every read is scoped to the caller's district (and schools)."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, HTTPException, Query, Request, status

from services.kit.auth import Caller, Identity, not_found
from services.roster import store

router = APIRouter(prefix="/v1", tags=["roster"])

READERS = {"district_admin", "school_admin"}


def _require_reader(caller: Identity) -> list[str] | None:
    if not caller.roles & READERS:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "reading the roster needs the district_admin or school_admin role")
    return None if caller.district_wide else sorted(caller.schools)


def _public(row) -> dict:
    return {**dict(row), "student_id": str(row["student_id"])}


@router.get("/students")
async def list_students(
    request: Request,
    caller: Caller,
    school_id: str | None = None,
    after: UUID | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict:
    """Students of the caller's district (or their schools), by student id, a page at a time."""
    schools = _require_reader(caller)
    async with request.app.state.pool.acquire() as conn:
        rows = await store.students_page(
            conn, district_id=caller.district_id, schools=schools, school_id=school_id, after=after, limit=limit
        )
    items = [_public(r) for r in rows]
    return {"items": items, "next_after": items[-1]["student_id"] if len(items) == limit else None}


@router.get("/students/{student_id}")
async def get_student(request: Request, caller: Caller, student_id: UUID) -> dict:
    schools = _require_reader(caller)
    async with request.app.state.pool.acquire() as conn:
        row = await store.student(conn, district_id=caller.district_id, student_id=student_id)
    if row is None or (schools is not None and row["school_id"] not in schools):
        raise not_found("student not found")
    return _public(row)
