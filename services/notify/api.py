"""The notify service's HTTP routes: each staff member's notice preferences (their own,
any signed token), the district's sender name (district admins change it) and the delivery
log (district admins, their district only: another district's delivery answers 404)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from fastapi import APIRouter, HTTPException, Path, Query, Request, status
from pydantic import BaseModel, ConfigDict, Field

from services.kit.auth import Caller, Identity, not_found
from services.kit.inputs import INT8, EmailText, cursor, text
from services.notify import actions, domain, store

router = APIRouter(prefix="/v1", tags=["notify"])

Page = Annotated[int, Query(ge=1, le=500, description="page size")]


def _email(identity: Identity) -> str:
    email = domain.login_email(identity.email)
    if email is None:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "the token names no login email")
    return email


def _refusal(r: domain.Refused) -> HTTPException:
    return HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, {"rule": r.rule, "message": r.message})


def _needs_district_admin(caller: Identity, what: str) -> None:
    if not caller.district_wide:
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"{what} needs district_admin")


# ---------------------------------------------------------------------------- preferences


class NoticeSetting(BaseModel):
    notice: str
    label: str
    required: bool = Field(description="Required notices (transfer alerts) cannot be turned off.")
    enabled: bool


class Preferences(BaseModel):
    staff_email: str
    district_id: str
    notices: list[NoticeSetting]


class PreferencesChange(BaseModel):
    """Each notice to turn on (true) or off (false); one not named stays as it is. Only
    task_assigned and case_opened can be turned off."""

    model_config = ConfigDict(extra="forbid")

    transfer_incoming: bool | None = None
    transfer_outgoing: bool | None = None
    transfer_ended: bool | None = None
    task_assigned: bool | None = None
    case_opened: bool | None = None


@router.get("/notices/preferences/me")
async def my_preferences(request: Request, caller: Caller) -> Preferences:
    """The notices the caller gets, and which they may turn off."""
    email = _email(caller)
    off = await store.turned_off(request.app.state.pool, [(caller.district_id, email)])
    return Preferences(staff_email=email, district_id=caller.district_id,
                       notices=domain.preferences(notice for _, _, notice in off))


@router.put("/notices/preferences/me")
async def change_my_preferences(request: Request, caller: Caller, body: PreferencesChange) -> Preferences:
    """Turn the caller's own notices on or off. Transfer alerts to Manage Cases users cannot
    be turned off: asking answers 422 with the rule `transfer_alerts_required`."""
    email = _email(caller)
    try:
        notices = await actions.change_preferences(request.app.state.runtime, district_id=caller.district_id,
                                                   email=email, wanted=body.model_dump())
    except domain.Refused as r:
        raise _refusal(r) from None
    return Preferences(staff_email=email, district_id=caller.district_id, notices=notices)


# ---------------------------------------------------------------------------- the district's sender name


class Sender(BaseModel):
    district_id: str
    sender_name: str = Field(description="The display name of the From of the district's notices.")
    default: bool = Field(description="True while the district has not named one.")
    changed_by: str | None = None
    changed_at: datetime | None = None


class SenderChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sender_name: text(domain.SENDER_NAME_LONGEST, min_length=1, description="e.g. NYC Schools Caseflow")


@router.get("/notices/sender")
async def get_sender(request: Request, caller: Caller) -> Sender:
    """The name the district's notices come from ("Caseflow" until a district admin names one)."""
    row = await store.sender(request.app.state.pool, caller.district_id)
    if row is None:
        return Sender(district_id=caller.district_id, sender_name=domain.DEFAULT_SENDER_NAME, default=True)
    return Sender(district_id=caller.district_id, sender_name=row["sender_name"], default=False,
                  changed_by=row["changed_by"], changed_at=row["changed_at"])


@router.put("/notices/sender")
async def set_sender(request: Request, caller: Caller, body: SenderChange) -> Sender:
    """Name the district's notices' sender (district admins)."""
    _needs_district_admin(caller, "naming the district's sender")
    try:
        await actions.name_sender(request.app.state.runtime, district_id=caller.district_id, name=body.sender_name,
                                  by=_email(caller))
    except domain.Refused as r:
        raise _refusal(r) from None
    return await get_sender(request, caller)


# ---------------------------------------------------------------------------- the delivery log


class Delivery(BaseModel):
    delivery_id: int
    event_id: UUID
    event_type: str
    notice: str
    recipient: str
    subject: str
    status: Literal["pending", "sent", "failed"]
    attempts: int
    created_at: datetime
    next_attempt_at: datetime | None = Field(description="When it is tried next (pending only).")
    sent_at: datetime | None
    last_reply: str | None = Field(description="The SMTP server's reply to the last attempt, or the connection error.")
    message_id: str


class DeliveryPage(BaseModel):
    items: list[Delivery]
    next_after: int | None = Field(description="Pass as `after` for the next page; null on the last.")


def _delivery(row) -> Delivery:
    d = dict(row)
    if d["status"] != "pending":
        d["next_attempt_at"] = None
    return Delivery(**d)


@router.get("/deliveries")
async def deliveries(request: Request, caller: Caller, event_id: UUID | None = None,
                     recipient: EmailText | None = None,
                     status_: Annotated[Literal["pending", "sent", "failed"] | None, Query(alias="status")] = None,
                     after: cursor(minimum=1) | None = None, limit: Page = 100) -> DeliveryPage:
    """The delivery log of the caller's district (district admins), newest first: each
    notice to each of the district's recipients, its status, attempts and the server's last
    reply. Nothing beyond the recipient's email and the subject."""
    _needs_district_admin(caller, "the delivery log")
    async with request.app.state.pool.acquire() as conn:
        rows = await store.deliveries_page(conn, district_id=caller.district_id, event_id=event_id,
                                           recipient=domain.login_email(recipient) if recipient else None,
                                           status=status_, after=after, limit=limit)
    items = [_delivery(r) for r in rows]
    return DeliveryPage(items=items, next_after=items[-1].delivery_id if len(items) == limit else None)


@router.get("/deliveries/{delivery_id}")
async def delivery(request: Request, caller: Caller,
                   delivery_id: Annotated[int, Path(ge=1, le=INT8, description="the delivery")]) -> Delivery:
    """One delivery of the caller's district (district admins); another district's answers 404."""
    _needs_district_admin(caller, "the delivery log")
    async with request.app.state.pool.acquire() as conn:
        row = await store.delivery(conn, caller.district_id, delivery_id)
    if row is None:
        raise not_found("delivery not found")
    return _delivery(row)
