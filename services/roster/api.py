"""The roster's HTTP routes. Every read and write is scoped to the caller's district (and,
below district admins, their schools); another district's data answers 404."""

from __future__ import annotations

import asyncio
import csv
import io
import uuid
from pathlib import Path
from typing import Annotated, Literal
from uuid import UUID

from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.responses import JSONResponse, Response

from services.kit import logs
from services.kit.auth import Caller, Identity, not_found
from services.kit.http import allow_body
from services.kit.inputs import INT4, Key, cursor
from services.roster import dropfolder, store
from services.roster.importer import ImportOptions, check_package, district_org_refusal, run_import
from services.roster.oneroster import PackageRejected

router = APIRouter(prefix="/v1", tags=["roster"])
log = logs.get("caseflow.roster.api")

READERS = {"district_admin", "school_admin"}
Page = Annotated[int, Query(ge=1, le=1000, description="page size")]
Entity = Literal["students", "staff", "classes"]


def _reader_scope(caller: Identity) -> list[str] | None:
    """None: the whole district; else the schools the caller may see."""
    if not caller.roles & READERS:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "reading the roster needs the district_admin or school_admin role")
    return caller.scope("school_admin")


def _require_district_admin(caller: Identity) -> None:
    if not caller.district_wide:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "roster imports need the district_admin role")


def _page(rows: list[dict], limit: int, cursor: str) -> dict:
    return {"items": rows, "next_after": rows[-1][cursor] if len(rows) == limit else None}


def _jsonable(row) -> dict:
    return {k: (str(v) if isinstance(v, UUID) else v.isoformat() if hasattr(v, "isoformat") else v)
            for k, v in dict(row).items()}


# ------------------------------------------------------------------------------ reads


@router.get("/students")
async def list_students(request: Request, caller: Caller, school_id: Key | None = None,
                        include_withdrawn: bool = False, after: UUID | None = None, limit: Page = 100) -> dict:
    """Students of the caller's district (or their schools), by student id, a page at a time."""
    schools = _reader_scope(caller)
    async with request.app.state.pool.acquire() as conn:
        rows = await store.students_page(conn, district_id=caller.district_id, schools=schools, school_id=school_id,
                                         include_withdrawn=include_withdrawn, after=after, limit=limit)
    return _page([_jsonable(r) for r in rows], limit, "student_id")


@router.get("/students/{student_id}")
async def get_student(request: Request, caller: Caller, student_id: UUID) -> dict:
    schools = _reader_scope(caller)
    async with request.app.state.pool.acquire() as conn:
        row = await store.student(conn, district_id=caller.district_id, student_id=student_id)
    if row is None or (schools is not None and not set(row["school_ids"]) & set(schools)):
        raise not_found("student not found")
    return _jsonable(row)


@router.get("/staff")
async def list_staff(request: Request, caller: Caller, school_id: Key | None = None, after: UUID | None = None,
                     limit: Page = 100) -> dict:
    schools = _reader_scope(caller)
    async with request.app.state.pool.acquire() as conn:
        rows = await store.staff_page(conn, district_id=caller.district_id, schools=schools, school_id=school_id,
                                      after=after, limit=limit)
    return _page([_jsonable(r) for r in rows], limit, "staff_id")


@router.get("/classes")
async def list_classes(request: Request, caller: Caller, school_id: Key | None = None, after: UUID | None = None,
                       limit: Page = 100) -> dict:
    schools = _reader_scope(caller)
    async with request.app.state.pool.acquire() as conn:
        rows = await store.classes_page(conn, district_id=caller.district_id, schools=schools, school_id=school_id,
                                        after=after, limit=limit)
    return _page([_jsonable(r) for r in rows], limit, "class_id")


@router.get("/enrollments")
async def list_enrollments(request: Request, caller: Caller, school_id: Key | None = None,
                           class_source_id: Key | None = None, user_source_id: Key | None = None,
                           after: Key | None = None, limit: Page = 100) -> dict:
    """Enrolment records by sourcedId (students and staff in classes), with the dates each
    counts and whether it counts today; `after` is the last item's `cursor`."""
    schools = _reader_scope(caller)
    today = request.app.state.runtime.definition.options.today()
    async with request.app.state.pool.acquire() as conn:
        rows = await store.enrollments_page(conn, district_id=caller.district_id, schools=schools,
                                            school_id=school_id, class_source_id=class_source_id,
                                            user_source_id=user_source_id, after=after, limit=limit, today=today)
    return _page([_jsonable(r) for r in rows], limit, "cursor")


@router.get("/reconcile/{entity}/{source_id}")
async def reconcile(request: Request, caller: Caller, entity: Entity, source_id: Key) -> dict:
    """What the latest file said about a student, staff member or class (also when the row
    was rejected, with why), beside what the roster holds, so "the file is right but the
    system is wrong" is settled in a minute."""
    kinds = {"students": "student", "staff": "staff", "classes": "class"}
    schools = _reader_scope(caller)
    async with request.app.state.pool.acquire() as conn:
        file_row, held = await store.reconciliation(conn, district_id=caller.district_id, entity=kinds[entity],
                                                    source_id=source_id)
    said = (file_row or {}).get("row_data") or {}
    visible = set((held or {}).get("school_ids") or [(held or {}).get("school_id")])
    visible |= set(said.get("school_ids") or [said.get("school_id")])
    if (file_row is None and held is None) or (schools is not None and not visible & set(schools)):
        raise not_found(f"{kinds[entity]} not found")
    file_view = None
    if file_row is not None:
        file_view = {"import_id": str(file_row["import_id"]), "file": file_row["file"], "line": file_row["line"],
                     "accepted": file_row["accepted"], "problems": list(file_row["reasons"]), "said": said}
    held_view = _jsonable(held) if held is not None else None
    differences = []
    if file_view and held_view and file_row["accepted"]:
        differences = sorted(k for k in said if k != "status" and k in held_view and not _same(said[k], held_view[k]))
        if said.get("status") == "active" and held_view.get("status") in ("withdrawn", "inactive"):
            differences.append("status")
    # A bulk file that leaves a record out says it is gone: no row of the latest file.
    return {"source_id": source_id, "in_latest_file": file_view is not None, "last_file": file_view,
            "held": held_view, "differences": differences}


def _same(said, held) -> bool:
    if isinstance(said, list) and isinstance(held, list):
        return sorted(said) == sorted(held)
    return said == held


# ---------------------------------------------------------------------------- imports


@router.post("/imports", status_code=status.HTTP_202_ACCEPTED, openapi_extra={"requestBody": {
    "required": True, "description": "The OneRoster package: a .zip of its CSV files, manifest.csv among them.",
    "content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}}}})
async def upload_import(request: Request, caller: Caller, dry_run: bool = False,
                        confirm_district: bool = False) -> JSONResponse:
    """Upload a OneRoster package as a .zip (body: application/zip). A package that cannot
    be read (not a zip, no manifest, a declared file missing, a file without a column the
    roster needs) answers 422 at once, with why; one whose orgs.csv names another district
    org than the district's earlier files answers 409 unless confirm_district=true. Else
    202: the import runs in the background; follow it at the returned location."""
    _require_district_admin(caller)
    options: ImportOptions = request.app.state.runtime.definition.options
    import_id = uuid.uuid4()
    path = options.packages / caller.district_id / f"{import_id}.zip"
    path.parent.mkdir(parents=True, exist_ok=True)
    size = 0
    allow_body(request, options.max_upload_bytes)
    try:
        with open(path, "wb") as f:
            async for chunk in request.stream():
                size += len(chunk)
                if size > options.max_upload_bytes:
                    raise HTTPException(status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
                                        f"the package is larger than {options.max_upload_bytes:,} bytes")
                f.write(chunk)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    if size == 0:
        path.unlink(missing_ok=True)
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "empty body: send the package as a .zip (application/zip)")
    try:
        async with request.app.state.pool.acquire() as conn:
            refusal = await asyncio.to_thread(check_package, path, "the upload") or (
                None if confirm_district else await district_org_refusal(conn, caller.district_id, path))
    except PackageRejected as e:
        path.unlink(missing_ok=True)
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, f"the package cannot be imported: {e}") from None
    if refusal:
        path.unlink(missing_ok=True)
        raise HTTPException(status.HTTP_409_CONFLICT, f"{refusal}; if this package is right for {caller.district_id}, "
                                                      f"send it again with ?confirm_district=true")
    await _start_import(request, caller, path, import_id, dry_run=dry_run, confirm=False,
                        confirm_district=confirm_district)
    return JSONResponse({"import_id": str(import_id), "status": "running"}, status_code=202,
                        headers={"Location": f"/v1/imports/{import_id}"})


@router.get("/imports")
async def list_imports(request: Request, caller: Caller, limit: Page = 50) -> dict:
    _require_district_admin(caller)
    async with request.app.state.pool.acquire() as conn:
        rows = await store.imports(conn, district_id=caller.district_id, limit=limit)
    return {"items": [_import_view(r) for r in rows]}


@router.get("/imports/{import_id}")
async def get_import(request: Request, caller: Caller, import_id: UUID) -> dict:
    _require_district_admin(caller)
    async with request.app.state.pool.acquire() as conn:
        row = await store.import_(conn, district_id=caller.district_id, import_id=import_id)
    if row is None:
        raise not_found("import not found")
    return _import_view(row)


@router.get("/imports/{import_id}/problems", response_model=None)
async def import_problems(request: Request, caller: Caller, import_id: UUID, format: Literal["json", "csv"] = "json",
                          after: cursor(minimum=-1, maximum=INT4) = -1,
                          limit: Annotated[int, Query(ge=1, le=100_000)] = 1000):
    """The import's row problems: file, line, sourcedId, column, value, reason (JSON, or format=csv)."""
    _require_district_admin(caller)
    async with request.app.state.pool.acquire() as conn:
        if await store.import_(conn, district_id=caller.district_id, import_id=import_id) is None:
            raise not_found("import not found")
        rows = await store.import_problems(conn, import_id=import_id, after=after, limit=limit)
    if format == "csv":
        out = io.StringIO()
        w = csv.writer(out)
        w.writerow(["severity", "file", "line", "sourcedId", "column", "value", "reason"])
        for r in rows:
            w.writerow([r["severity"], r["file"], r["line"], r["source_id"], r["column"], r["value"], r["reason"]])
        return Response(out.getvalue(), media_type="text/csv",
                        headers={"Content-Disposition": f'attachment; filename="import-{import_id}-problems.csv"'})
    items = [dict(r) for r in rows]
    return {"items": items, "next_after": items[-1]["seq"] if len(items) == limit else None}


@router.post("/imports/{import_id}/confirm", status_code=status.HTTP_202_ACCEPTED)
async def confirm_import(request: Request, caller: Caller, import_id: UUID) -> dict:
    """Apply an import the wipe guard held, after a person checked it."""
    _require_district_admin(caller)
    async with request.app.state.pool.acquire() as conn:
        row = await store.import_(conn, district_id=caller.district_id, import_id=import_id)
    if row is None:
        raise not_found("import not found")
    if row["status"] != "held":
        raise HTTPException(status.HTTP_409_CONFLICT, f"only a held import can be confirmed; this one is {row['status']}")
    if not row["package_path"] or not Path(row["package_path"]).exists():
        raise HTTPException(status.HTTP_409_CONFLICT, f"the package of this held import is no longer where it was kept "
                                                      f"({Path(row['package_path'] or '?').name}); send it again")
    await _start_import(request, caller, Path(row["package_path"]), import_id, dry_run=False, confirm=True)
    return {"import_id": str(import_id), "status": "running"}


async def _start_import(request: Request, caller: Identity, path: Path, import_id: UUID, *, dry_run: bool,
                        confirm: bool, confirm_district: bool = False) -> None:
    """Start the import in the background; return once it is on record, so the location we
    answer with resolves at once."""
    runtime = request.app.state.runtime
    options: ImportOptions = runtime.definition.options
    on_record = asyncio.Event()

    async def job() -> None:
        try:
            result = await run_import(runtime.pool, district_id=caller.district_id, path=path,
                                      kafka=runtime.settings.kafka, origin="http", created_by=caller.email,
                                      dry_run=dry_run, confirm=confirm, confirm_district=confirm_district,
                                      options=options, import_id=import_id, on_record=on_record)
            if result.status != "held":
                dropfolder.settle_package(options, path, result)
            runtime.relay.wake()
        except Exception as e:  # noqa: BLE001 - recorded on the import, for the person who uploaded it
            log.error("import failed", import_id=str(import_id), error=repr(e))
            if dropfolder.within(path, options.packages):
                path.unlink(missing_ok=True)
            async with runtime.pool.acquire() as conn:
                await conn.execute("UPDATE imports SET status = 'failed', message = $2, finished_at = now() "
                                   "WHERE import_id = $1", import_id, f"failed: {type(e).__name__}")

    task = runtime.spawn(job(), name=f"import-{import_id}")
    recorded = asyncio.create_task(on_record.wait())
    await asyncio.wait([task, recorded], return_when=asyncio.FIRST_COMPLETED)
    recorded.cancel()


def _import_view(row) -> dict:
    view = _jsonable(row)
    view.pop("package_path", None)
    view["rows_skipped"] = view["error_count"]  # rows, not problems; error_count is its earlier name
    view["problems"] = f"/v1/imports/{row['import_id']}/problems"
    return view
