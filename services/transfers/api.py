"""The District Transfer Portal's HTTP routes (seed 003). Every route needs Manage Cases in
the caller's district (403 otherwise); a request that is not the caller's district's
(outgoing) or addressed to it (incoming) answers 404, like one that does not exist. Writes
are in actions.py, reads in store.py; this file parses, calls and shapes answers.

The authentication code appears in two answers only, to the sender: sending, and
regenerating (both `Cache-Control: no-store`). It is never echoed, logged or published."""

from __future__ import annotations

from typing import Annotated, Literal
from uuid import UUID

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from services.kit.auth import Caller, Identity
from services.kit.http import correlation_id
from services.kit.inputs import District, text
from services.transfers import actions, domain, store
from services.transfers.domain import SENDER, Refused

router = APIRouter(prefix="/v1/transfers", tags=["transfers"])

_STATUS = {"forbidden": status.HTTP_403_FORBIDDEN, "not_found": status.HTTP_404_NOT_FOUND,
           "conflict": status.HTTP_409_CONFLICT, "invalid": status.HTTP_422_UNPROCESSABLE_CONTENT}
Page = Annotated[int, Query(ge=1, le=200, description="page size")]
Status = Literal["pending", "accepted", "rejected", "cancelled", "locked", "expired"]
_NO_STORE = {"Cache-Control": "no-store"}


def _refusal(r: Refused) -> JSONResponse:
    body: dict = {"detail": r.message}
    if r.problems:
        body["problems"] = r.problems
    return JSONResponse(body, status_code=_STATUS[r.kind])


# ---------------------------------------------------------------------------- activation


class Activation(BaseModel):
    active: bool = Field(description="On: the district sends and receives transfers, and is listed as a destination.")


async def _activation(request: Request, caller: Identity) -> dict:
    async with request.app.state.pool.acquire() as conn:
        row = await store.activation_row(conn, caller.district_id)
        history = await store.activation_history(conn, caller.district_id)
    return {"district_id": caller.district_id, "label": "Activate Case Transfers Between Districts",
            "active": bool(row and row["active"]), "changed_by": row["changed_by"] if row else None,
            "changed_at": row["changed_at"] if row else None,
            "history": [dict(h) for h in history]}


@router.get("/activation")
async def get_activation(request: Request, caller: Caller) -> dict:
    """The caller's district's "Activate Case Transfers Between Districts" (off until turned
    on), with its history, newest first: {district_id, label, active, changed_by,
    changed_at, history: [{active, changed_by, changed_at}]}."""
    try:
        domain.require_portal(caller)
    except Refused as r:
        return _refusal(r)
    return await _activation(request, caller)


@router.put("/activation")
async def set_activation(request: Request, caller: Caller, body: Activation) -> dict:
    """Turn it on or off (seed 003: off, the district neither sends nor receives, and is not
    listed as a destination). Answers as GET; publishes TransfersActivationChanged when it
    changed."""
    try:
        await actions.set_activation(request.app.state.runtime, caller, body.active, correlation_id(request))
    except Refused as r:
        return _refusal(r)
    return await _activation(request, caller)


@router.get("/destinations")
async def list_destinations(request: Request, caller: Caller) -> dict:
    """The districts a transfer may go to: those with the toggle on, by name (seed 003: "In
    order for the destination district to appear in District Name(s), they must have Case
    Transfer Requests toggled ON"). {items: [{district_id, name}]}."""
    try:
        domain.require_portal(caller)
    except Refused as r:
        return _refusal(r)
    async with request.app.state.pool.acquire() as conn:
        rows = await store.destinations(conn, caller.district_id)
    return {"items": [dict(r) for r in rows]}


# ---------------------------------------------------------------------------- sending


class Sending(BaseModel):
    case_ids: list[UUID] = Field(min_length=1, max_length=5000, description="The cases to transfer: one, or many "
                                 "(bulk), all of the caller's district.")
    destination_district_ids: list[District] = Field(min_length=1, max_length=50, description="Where to: one "
                                                       "request per district, each with its own code.")
    notes: text(4000) | None = Field(default=None, description="Notes to accompany the cases.")


@router.post("", status_code=status.HTTP_201_CREATED)
async def send_transfer(request: Request, response: Response, caller: Caller, body: Sending) -> dict:
    """Transfer cases to one or more districts. Answers 201 {requests: [{request_id,
    destination_district_id, destination_name, case_count, status, requested_at,
    expires_at, authentication_code}]}: each request's code, shown this once (share it with
    the destination out of band). 409 while the caller's district has transfers off; 422
    naming each destination that is not listed and each case that cannot be sent (`problems`:
    case_id, rule unknown_case | transferred_out | needs_manage_cases)."""
    try:
        sent = await actions.send(request.app.state.runtime, caller, body.case_ids, body.destination_district_ids,
                                  body.notes, correlation_id(request))
    except Refused as r:
        return _refusal(r)
    response.headers.update(_NO_STORE)
    return {"requests": sent}


# ---------------------------------------------------------------------------- lists and one request


async def _listing(request: Request, caller: Identity, side: str, status_: str | None, after: UUID | None,
                   limit: int) -> dict:
    domain.require_portal(caller)
    async with request.app.state.pool.acquire() as conn:
        rows = await store.listing(conn, side=side, district_id=caller.district_id, status=status_, after=after,
                                   limit=limit)
        histories = await store.histories_summary(conn, [r["request_id"] for r in rows])
    items = [_summary(r, domain.histories_state(histories.get(r["request_id"], []), r["status"]),
                      outgoing=side == "source")
             for r in rows]
    return {"items": items, "next_after": items[-1]["request_id"] if len(items) == limit else None}


def _summary(r, histories: str, *, outgoing: bool) -> dict:
    """A request as both sides read it in their lists (nothing of the cases' contents)."""
    out = {"request_id": r["request_id"], "status": r["status"], "case_count": r["case_count"], "notes": r["notes"],
           "requested_by": r["requested_by"], "requested_at": r["requested_at"], "expires_at": r["expires_at"],
           "ended_by": r["ended_by"], "ended_at": r["ended_at"], "reason": r["reason"],
           "failed_attempts": r["failed_attempts"], "histories": histories}
    if outgoing:
        out.update(destination_district_id=r["destination_district_id"], destination_name=r["destination_name"])
    else:
        out.update(source_district_id=r["source_district_id"], source_name=r["source_name"])
    return out


@router.get("/outgoing")
async def list_outgoing(request: Request, caller: Caller, status_: Annotated[Status | None, Query(alias="status")] = None,
                        after: UUID | None = None, limit: Page = 50) -> dict:
    """The caller's district's requests to others, newest first: {items: [{request_id,
    destination_district_id, destination_name, status, case_count, notes, requested_by,
    requested_at, expires_at, ended_by, ended_at, reason, failed_attempts, histories}],
    next_after}. A request locked by wrong codes shows as locked."""
    try:
        return await _listing(request, caller, "source", status_, after, limit)
    except Refused as r:
        return _refusal(r)


@router.get("/incoming")
async def list_incoming(request: Request, caller: Caller, status_: Annotated[Status | None, Query(alias="status")] = None,
                        after: UUID | None = None, limit: Page = 50) -> dict:
    """Requests addressed to the caller's district, newest first: sending district (id and
    name), case count, notes, dates, status; nothing of the cases' contents."""
    try:
        return await _listing(request, caller, "destination", status_, after, limit)
    except Refused as r:
        return _refusal(r)


@router.get("/{request_id}")
async def get_transfer(request: Request, caller: Caller, request_id: UUID) -> dict:
    """One request, for either side, with who did what and when: the list's fields, plus
    `direction` (outgoing | incoming), both districts, `cases` and `history` [{at, action,
    actor, district_id, detail}]. The sender sees each case (case_id, case_number,
    school_id, history: arriving | complete | unavailable while pending, then delivered
    (accepted) or dropped (ended otherwise), unavailable_reason); the
    destination sees the cases only once it accepted (case_id, student_id, link)."""
    try:
        domain.require_portal(caller)
    except Refused as r:
        return _refusal(r)
    async with request.app.state.pool.acquire() as conn:
        row = await store.request(conn, request_id)
        side = row and domain.side_of(caller, row["source_district_id"], row["destination_district_id"])
        if not side:
            return _refusal(Refused("not_found", "no transfer request of your district with this id"))
        states = await store.history_states(conn, request_id)
        cases = await store.request_cases(conn, request_id)
        history = await store.history(conn, request_id)
    ended = domain.ended_histories(row["status"])
    state_of = {s.case_id: ended or s.state for s in states}
    body = _summary(row, domain.histories_state(states, row["status"]), outgoing=side == SENDER)
    body.update(direction="outgoing" if side == SENDER else "incoming",
                source_district_id=row["source_district_id"], source_name=row["source_name"],
                destination_district_id=row["destination_district_id"], destination_name=row["destination_name"],
                unavailable_cases=sum(s == domain.UNAVAILABLE for s in state_of.values()),
                history=[dict(h) for h in history])
    if side == SENDER:
        body["cases"] = [{"case_id": c["case_id"], "case_number": c["case_number"], "school_id": c["school_id"],
                          "history": state_of[c["case_id"]], "unavailable_reason": c["unavailable"],
                          "student_id": c["linked_student_id"]} for c in cases]
    elif row["status"] == domain.ACCEPTED:
        body["cases"] = [{"case_id": c["case_id"], "case_number": c["case_number"], "student_id": c["linked_student_id"],
                          "link": "existing_student" if c["linked_student_id"] else "transfer_info"} for c in cases]
    else:
        body["cases"] = None  # before acceptance the destination sees nothing of the cases
    return body


# ---------------------------------------------------------------------------- the code


@router.post("/{request_id}/code")
async def regenerate_code(request: Request, response: Response, caller: Caller, request_id: UUID) -> dict:
    """The sender's new authentication code for a pending request, shown this once: {request_id,
    authentication_code, code_issued_at, expires_at}. The old code opens nothing from now on;
    the wrong tries made against it no longer count; the request keeps its expiry. 409 once
    the request ended."""
    try:
        body = await actions.regenerate_code(request.app.state.runtime, caller, request_id, correlation_id(request))
    except Refused as r:
        return _refusal(r)
    response.headers.update(_NO_STORE)
    return body


class CodeEntry(BaseModel):
    code: text(64, min_length=1, description="The authentication code the sender shared (any grouping, any case).")


@router.post("/{request_id}/preview")
async def preview_transfer(request: Request, caller: Caller, request_id: UUID, body: CodeEntry) -> dict:
    """Open an incoming request with its code (a wrong code counts: the 5th locks the
    request): {request_id, status, histories, cases: [{case_id, history, person:
    {given_name, family_name, birth_date, grade} | null (not arrived yet), suggestions:
    [{student_id, given_name, family_name, birth_date, grade, school_id, matched_on}]}]}.
    422 for a wrong or unreadable code (an unreadable one is no try); 409 once the request
    ended, or while either district has transfers off."""
    try:
        return await actions.preview(request.app.state.runtime, caller, request_id, body.code, correlation_id(request))
    except Refused as r:
        return _refusal(r)


class CaseChoice(BaseModel):
    case_id: UUID
    student_id: UUID | None = Field(description="Link to existing student: a student of your district's roster (an "
                                                "SIS connection); null: use transfer info (no SIS connection).")


class Acceptance(BaseModel):
    code: text(64, min_length=1, description="The authentication code the sender shared.")
    cases: list[CaseChoice] = Field(min_length=1, max_length=5000, description="Every case of the request, once.")


@router.post("/{request_id}/accept")
async def accept_transfer(request: Request, caller: Caller, request_id: UUID, body: Acceptance) -> dict:
    """Accept an incoming request: {request_id, status: accepted, accepted_by, accepted_at,
    cases: [{case_id, student_id, link: existing_student | transfer_info, parts}]}. Every
    part of every case's history goes to your cases service (CaseDelivered) with
    TransferAccepted, in one transaction. Sent again with the same choices: the same answer,
    nothing published twice. 409 when the request ended (saying how, by whom, when), while
    either district has transfers off, or while histories are still arriving or could not be
    exported; 422 for a wrong code, or a case not chosen for, chosen twice, or linked to
    no active student of your roster."""
    try:
        return await actions.accept(request.app.state.runtime, caller, request_id, body.code,
                                    [(c.case_id, c.student_id) for c in body.cases], correlation_id(request))
    except Refused as r:
        return _refusal(r)


class Rejection(BaseModel):
    reason: text(2000, min_length=1, description="Why, in your words (the sending district reads it).")


@router.post("/{request_id}/reject")
async def reject_transfer(request: Request, caller: Caller, request_id: UUID, body: Rejection) -> dict:
    """Turn down an incoming pending request (TransferRejected); answers as GET."""
    try:
        await actions.reject(request.app.state.runtime, caller, request_id, body.reason, correlation_id(request))
    except Refused as r:
        return _refusal(r)
    return await get_transfer(request, caller, request_id)


@router.post("/{request_id}/cancel")
async def cancel_transfer(request: Request, caller: Caller, request_id: UUID) -> dict:
    """Withdraw an outgoing pending request (TransferCancelled); answers as GET. 409 once it
    ended (e.g. "cannot cancel: the request was accepted by x at t")."""
    try:
        await actions.cancel(request.app.state.runtime, caller, request_id, correlation_id(request))
    except Refused as r:
        return _refusal(r)
    return await get_transfer(request, caller, request_id)

