"""The transfers service's event handlers: its own copies of what other services know
(district names, the roster's students, each case's district, school, number and status)
and the case histories the sending district's cases service exports for each request.

A history part that cannot belong to the request it names (no such request, another
district's export, a case the request does not carry, a part numbered past its count, a
count that changed) fails its handler and is dead-lettered with the reason; the messages
never hold a student's name."""

from __future__ import annotations

import json

from contracts.cases import CaseClosed, CaseOpened, CaseReopened, CaseTransferredIn, CaseTransferredOut
from contracts.roster import DistrictUpserted, StudentEnrolled, StudentUpdated, StudentWithdrawn
from contracts.transfers import CaseHistoryExported, CaseHistoryUnavailable
from services.kit import logs
from services.kit.consumer import UnitOfWork
from services.transfers import domain, store

log = logs.get("caseflow.transfers.handlers")


class NotForThisRequest(ValueError):
    """A case history event that cannot belong to the request it names."""


async def on_districts(uow: UnitOfWork, events: list[DistrictUpserted]) -> None:
    latest = {e.district_id: (e.district_id, e.name, e.source_id, e.occurred_at) for e in events}
    await store.upsert_districts(uow.conn, list(latest.values()))


async def on_roster_students(uow: UnitOfWork, events: list[StudentEnrolled | StudentUpdated | StudentWithdrawn]) -> None:
    """The last fact per student stands (one student's events arrive in order)."""
    latest: dict = {}
    withdrawn: dict = {}
    for e in events:
        if isinstance(e, StudentWithdrawn):
            latest.pop(e.student_id, None)
            withdrawn[e.student_id] = (e.student_id, e.occurred_at)
        else:
            withdrawn.pop(e.student_id, None)
            latest[e.student_id] = (e.student_id, e.district_id, e.source_id, e.school_id, e.grade, e.given_name,
                                    e.family_name, e.birth_date, True, e.occurred_at)
    await store.project_students(uow.conn, list(latest.values()))
    await store.withdraw_students(uow.conn, list(withdrawn.values()))


async def on_cases_opened(uow: UnitOfWork, events: list[CaseOpened | CaseTransferredIn]) -> None:
    """A case opened by a trigger, or arrived from another district (its school: the linked
    student's, or none)."""
    await store.insert_cases(uow.conn, [
        (e.case_id, e.district_id, e.case_number, e.school_id, e.student_id,
         "open" if isinstance(e, CaseOpened) else e.status, e.occurred_at) for e in events])


async def on_case_status(uow: UnitOfWork, events: list[CaseClosed | CaseReopened]) -> None:
    await store.set_case_status(uow.conn, [
        (e.case_id, "closed" if isinstance(e, CaseClosed) else "open", e.occurred_at) for e in events])


async def on_cases_transferred_out(uow: UnitOfWork, events: list[CaseTransferredOut]) -> None:
    """Read-only in its district from now on: it cannot be sent again."""
    await store.mark_transferred_out(uow.conn, [e.case_id for e in events])


async def on_case_histories(uow: UnitOfWork, events: list[CaseHistoryExported | CaseHistoryUnavailable]) -> None:
    """Keep each exported part of a pending request's cases; note each case that could not be
    exported (the request then cannot be accepted, and both sides read why). Parts for a
    request that already ended are not kept."""
    conn = uow.conn
    requests = await store.lock_requests(conn, {e.request_id for e in events})
    cases = await store.case_ids_of(conn, requests)
    parts, unavailable = [], []
    for e in events:
        case_id = e.history.case.case_id if isinstance(e, CaseHistoryExported) else e.case_id
        _check_belongs(e, requests.get(e.request_id), cases.get(e.request_id, {}), case_id)
        if requests[e.request_id]["status"] != domain.PENDING:
            log.info("case history for a request that ended; not kept", request_id=str(e.request_id),
                     event_id=str(e.event_id))
            continue
        if isinstance(e, CaseHistoryExported):
            part = e.history
            known = cases[e.request_id][case_id]
            if part.part > part.parts or (known is not None and known != part.parts):
                raise NotForThisRequest(f"case {case_id} of transfer request {e.request_id}: part {part.part} of "
                                        f"{part.parts}, but its history comes in {known or part.parts} part(s)")
            cases[e.request_id][case_id] = part.parts
            parts.append((e.request_id, case_id, part.part, part.parts,
                          json.loads(part.model_dump_json())))
        else:
            unavailable.append((e.request_id, case_id, e.reason, e.occurred_at))
    await store.add_parts(conn, parts)
    for request_id, case_id, reason, at in unavailable:
        if await store.mark_unavailable(conn, request_id, case_id, reason):
            source = requests[request_id]["source_district_id"]
            await store.add_history(conn, [(request_id, at, "history_unavailable", None, source,
                                            f"the sending district could not export case {case_id}: {reason}")])
            log.warning("a case of a transfer request could not be exported", request_id=str(request_id),
                        case_id=str(case_id))


def _check_belongs(event, request, case_ids: dict, case_id) -> None:
    if request is None:
        raise NotForThisRequest(f"no transfer request {event.request_id} here")
    if event.district_id != request["source_district_id"]:
        raise NotForThisRequest(f"transfer request {event.request_id} was not sent by {event.district_id}, the "
                                "district this history comes from")
    if case_id not in case_ids:
        raise NotForThisRequest(f"case {case_id} is not a case of transfer request {event.request_id}")
