"""The notify service's event handlers: keep its own copy of the roster's staff and
districts (the access levels are the kit's, services/kit/access.py), and for each event
that calls for notices, write one pending delivery per recipient in the consumer's
transaction, the one that claims the event in the inbox: a redelivered event adds none.
Sending is the sender's (services/notify/sender.py), never the consumer's: a burst of
recipients costs a consumer one insert."""

from __future__ import annotations

from typing import Any

from contracts.roster import DistrictUpserted, StaffDeactivated, StaffUpserted
from services.kit.consumer import UnitOfWork
from services.notify import domain, store


async def on_staff(uow: UnitOfWork, events: list[StaffUpserted | StaffDeactivated]) -> None:
    """One staff member's events arrive in order: upserts, then leavings, each only over an
    older fact."""
    upserted = {e.staff_id: (e.staff_id, e.district_id, domain.login_email(e.email), e.given_name, e.family_name,
                             e.occurred_at) for e in events if isinstance(e, StaffUpserted)}
    left = [(e.staff_id, e.occurred_at) for e in events if isinstance(e, StaffDeactivated)]
    await store.project_staff(uow.conn, list(upserted.values()))
    await store.deactivate_staff(uow.conn, left)


async def on_districts(uow: UnitOfWork, events: list[DistrictUpserted]) -> None:
    latest = {e.district_id: (e.district_id, e.name, e.occurred_at) for e in events}
    await store.project_districts(uow.conn, list(latest.values()))


async def notify_parties(uow: UnitOfWork, events: list[Any]) -> None:
    """Transfer requests and how they end, tasks assigned, cases opened: who gets which
    notice is the domain's; here the facts it needs are loaded and its answer is saved."""
    conn = uow.conn
    asked = {d for e in events for d in domain.districts_to_ask(e)}
    found = await store.holders(conn, asked, domain.MANAGE_CASES_LEVELS)
    manage_cases = {district: domain.manage_cases_users(h) for district, h in found.items()}
    reachable = await store.on_roster(conn, {p for e in events if (p := domain.named_recipient(e))})
    planned = [(e, domain.recipients_for(e, manage_cases, reachable)) for e in events]
    off = await store.turned_off(conn, {(r.district_id, r.email) for _, rs in planned for r in rs
                                        if not domain.NOTICES[r.notice].required})
    names = await store.district_names(conn, asked)
    acted = await store.staff_names(conn, {a for e in events for a in domain.actors(e)})

    notices, deliveries = [], []
    for event, recipients in planned:
        recipients = domain.wanted(recipients, off)
        if not recipients:
            continue
        contents = domain.contents_for(event, {r.notice for r in recipients}, names, acted)
        notices += [(event.event_id, notice, event.event_type, c.subject, c.context) for notice, c in contents.items()]
        deliveries += [(event.event_id, r.notice, r.email, r.district_id, domain.message_id(event.event_id, r.email))
                       for r in recipients]
    await store.add_notices(conn, notices)
    await store.add_deliveries(conn, deliveries)
