"""What people do in the District Transfer Portal (seed 003), each in one transaction with
the events it causes (the outbox): toggle "Activate Case Transfers Between Districts", send
cases to one or more districts, regenerate a request's code, open it with the code,
accept, reject, cancel; and the expiry of requests whose window passed.

Each action locks the request's row first, so two actions on one request take turns and the
second reads what the first did: an accept and a cancel racing end with one winner and a 409
for the other naming who won and when; a retried accept answers what the first did and
publishes nothing again. A wrong code is counted (and may lock the request) in a transaction
that commits before the refusal is answered.

Each action returns the answer's body (dicts of plain values) or raises domain.Refused."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from uuid import UUID, uuid4

import asyncpg

from contracts.transfers import (
    AcceptedCase,
    CaseDelivered,
    CaseHistoryPart,
    TransferAccepted,
    TransferCancelled,
    TransferExpired,
    TransferLocked,
    TransferRejected,
    TransferRequested,
    TransferredStudent,
    TransfersActivationChanged,
)
from services.kit import logs
from services.kit.consumer import UnitOfWork
from services.kit.crash import crashpoint
from services.kit.identity import Identity
from services.kit.outbox import Unpublishable
from services.transfers import codes, domain, store
from services.transfers.domain import (
    ACCEPTED,
    CANCELLED,
    DESTINATION,
    EXPIRED,
    LOCKED,
    PENDING,
    REJECTED,
    SENDER,
    Ended,
    Refused,
)

log = logs.get("caseflow.transfers.actions")
PRODUCER = "caseflow.transfers"


def _now() -> datetime:
    return datetime.now(UTC)


def _who(caller: Identity) -> str:
    return caller.email.strip().lower()


# ---------------------------------------------------------------------------- activation


async def set_activation(runtime, caller: Identity, active: bool, correlation_id: str | None) -> None:
    """Turn the caller's district's toggle on or off (Manage Cases); recorded and published
    as TransfersActivationChanged only when it changes."""
    domain.require_portal(caller)
    at, by = _now(), _who(caller)
    async with runtime.unit_of_work() as uow:
        if await store.set_activation(uow.conn, caller.district_id, active, by, at):
            uow.emit(TransfersActivationChanged(district_id=caller.district_id, occurred_at=at, active=active,
                                                changed_by=by, correlation_id=correlation_id, producer=PRODUCER))
            log.info("case transfers turned " + ("on" if active else "off"), district_id=caller.district_id)


# ---------------------------------------------------------------------------- sending


async def send(runtime, caller: Identity, case_ids: Sequence[UUID], destinations: Sequence[str], notes: str | None,
               correlation_id: str | None) -> list[dict]:
    """One request per destination, each with the given cases and notes and its own
    authentication code, shown here once. Refused: 403 without Manage Cases; 409 while the
    caller's district has transfers off; 422 for a destination that is not listed (off, or
    unknown) or the caller's own district, and for each case the caller may not send
    (`domain.refusals_to_send`), naming each."""
    domain.require_portal(caller)
    case_ids = list(dict.fromkeys(case_ids))
    destinations = list(dict.fromkeys(destinations))
    ttl = runtime.definition.options.code_ttl
    # The codes and their hashes first (a hash takes a while): the transaction stays short.
    issued = [(uuid4(), d, domain.new_code()) for d in destinations]
    hashes = [await codes.hash_code(domain.normalised_code(code)) for _, _, code in issued]
    at, by = _now(), _who(caller)
    expires = domain.expires_at(at, ttl)
    async with runtime.unit_of_work() as uow:
        conn = uow.conn
        active = await store.activation_of(conn, [caller.district_id, *destinations], lock=True)
        if not active[caller.district_id]:
            raise Refused("conflict", "case transfers are off in your district: turn on Activate Case Transfers "
                                      "Between Districts to send")
        domain.check_destinations(caller.district_id, destinations, [d for d, on in active.items() if on])
        known = await store.cases_by_id(conn, case_ids)
        refused = domain.refusals_to_send(caller, case_ids, known)
        if refused:
            raise Refused("invalid", f"{len(refused)} of the {len(case_ids)} cases cannot be sent: "
                          + "; ".join(f"{p['case_id']}: {p['problem']}" for p in refused), refused)
        cases = [known[c] for c in case_ids]
        names = await store.district_names(conn, destinations)
        answer = []
        for (request_id, destination, code), code_hash in zip(issued, hashes, strict=True):
            await store.insert_request(conn, request_id=request_id, source=caller.district_id,
                                       destination=destination, case_count=len(cases), notes=notes, requested_by=by,
                                       requested_at=at, expires_at=expires, code_hash=code_hash,
                                       correlation_id=correlation_id)
            await store.insert_request_cases(conn, request_id, cases)
            await store.add_history(conn, [(request_id, at, "requested", by, caller.district_id,
                                            f"{len(cases)} case(s) sent to {names.get(destination, destination)}")])
            uow.emit(TransferRequested(district_id=caller.district_id, occurred_at=at, request_id=request_id,
                                       destination_district_id=destination, case_ids=case_ids,
                                       case_count=len(case_ids), notes=notes, requested_by=by, expires_at=expires,
                                       correlation_id=correlation_id, producer=PRODUCER))
            answer.append({"request_id": request_id, "destination_district_id": destination,
                           "destination_name": names.get(destination, destination), "case_count": len(cases),
                           "status": PENDING, "requested_at": at, "expires_at": expires,
                           "authentication_code": code})
    log.info("transfer requests sent", district_id=caller.district_id, requests=[str(a["request_id"]) for a in answer],
             case_count=len(case_ids))
    return answer


async def regenerate_code(runtime, caller: Identity, request_id: UUID, correlation_id: str | None) -> dict:
    """A new authentication code for a pending outgoing request, shown here once; the old
    one opens nothing from now on. The request keeps its expiry."""
    domain.require_portal(caller)
    code = domain.new_code()
    code_hash = await codes.hash_code(domain.normalised_code(code))
    at = _now()
    async with runtime.unit_of_work() as uow:
        row = await _request(uow.conn, caller, request_id, SENDER)
        late = await _expired_if_due(uow, row, at, "regenerate the code", correlation_id)
        if late is None:
            domain.require_pending(row["status"], _ended(row), "regenerate the code")
            await store.replace_code(uow.conn, request_id, code_hash, at)
            await store.add_history(uow.conn, [(request_id, at, "code_regenerated", _who(caller), caller.district_id,
                                                "a new authentication code; the old one no longer works")])
    if late is not None:
        raise late
    return {"request_id": request_id, "authentication_code": code, "code_issued_at": at,
            "expires_at": row["expires_at"]}


# ---------------------------------------------------------------------------- receiving


@dataclass
class _Opened:
    row: asyncpg.Record
    states: list[domain.CaseHistoryState]


async def preview(runtime, caller: Identity, request_id: UUID, typed_code: str, correlation_id: str | None) -> dict:
    """Open an incoming request with its code (a try: a wrong code counts toward the lock):
    per case, the transfer's person (name, birth date, grade), how much of its history has
    arrived, and the destination's roster students to suggest for linking."""
    code = _readable(typed_code)
    at = _now()
    async with runtime.unit_of_work() as uow:
        opened = await _open_incoming(uow, caller, request_id, code, at, "open the request", correlation_id,
                                      need_complete=False)
        if isinstance(opened, Refused):
            refused = opened
        else:
            refused = None
            await store.add_history(uow.conn, [(request_id, at, "opened", _who(caller), caller.district_id,
                                                "opened with the authentication code")])
            persons = await store.first_parts(uow.conn, request_id)
            cases = await store.request_cases(uow.conn, request_id)
    if refused is not None:
        raise refused
    return await _preview_body(runtime, caller, opened, cases, persons)


async def _preview_body(runtime, caller: Identity, opened: _Opened, cases, persons: dict) -> dict:
    people = {}
    for case_id, part in persons.items():
        s = TransferredStudent.model_validate(store.as_json(part)["student"])
        people[case_id] = (domain.Person(s.given_name, s.family_name, s.birth_date), s.grade)
    async with runtime.pool.acquire() as conn:
        pool = await store.candidates(conn, caller.district_id, [p for p, _ in people.values()])
    state_of = {s.case_id: s.state for s in opened.states}
    items = []
    for c in cases:
        known = people.get(c["case_id"])
        person, suggested = None, []
        if known is not None:
            p, grade = known
            person = {"given_name": p.given_name, "family_name": p.family_name, "birth_date": p.birth_date,
                      "grade": grade}
            by_id = {sid: row for sid, _, row in pool}
            suggested = [{"student_id": sid, "given_name": by_id[sid]["given_name"],
                          "family_name": by_id[sid]["family_name"], "birth_date": by_id[sid]["birth_date"],
                          "grade": by_id[sid]["grade"], "school_id": by_id[sid]["school_id"], "matched_on": why}
                         for sid, why in domain.suggestions(p, [(sid, sp) for sid, sp, _ in pool])]
        items.append({"case_id": c["case_id"], "history": state_of[c["case_id"]], "person": person,
                      "suggestions": suggested})
    return {"request_id": opened.row["request_id"], "status": opened.row["status"],
            "histories": domain.histories_state(opened.states), "cases": items}


async def accept(runtime, caller: Identity, request_id: UUID, typed_code: str,
                 choices: Sequence[tuple[UUID, UUID | None]], correlation_id: str | None) -> dict:
    """Accept an incoming request with its code, each case linked to a student of the
    destination's roster or taking the transfer's information (None). In one transaction: the
    request accepted, TransferAccepted, and every part of every case's history as a
    CaseDelivered (deterministic event ids) for the destination's cases service. A retried
    accept with the same choices answers the same and publishes nothing; anything else on a
    request that ended answers 409 saying how it ended."""
    code = _readable(typed_code)
    at, by = _now(), _who(caller)
    async with runtime.unit_of_work() as uow:
        row = await _request(uow.conn, caller, request_id, DESTINATION)
        if row["status"] == ACCEPTED:
            links = {c["case_id"]: c["linked_student_id"] for c in await store.request_cases(uow.conn, request_id)}
            if dict(choices) == links:  # the same accept again (a double click, a retry): the same answer
                return await _accepted_body(uow.conn, request_id)
        opened = await _open_incoming(uow, caller, request_id, code, at, "accept", correlation_id,
                                      need_complete=True, choices=choices)
        if not isinstance(opened, Refused):
            try:
                await _accept(uow, opened.row, choices, by, at, correlation_id)
            except Unpublishable as e:  # a part larger than a message may be: nothing happens, and it says why
                raise Refused("conflict", f"the cases cannot be delivered: {e}; the sending district must export "
                                          "them in smaller parts") from None
            crashpoint("transfers.accept.before_commit")
    if isinstance(opened, Refused):
        raise opened
    crashpoint("transfers.accept.after_commit")
    log.info("transfer request accepted", request_id=str(request_id), district_id=caller.district_id,
             case_count=len(choices))
    async with runtime.pool.acquire() as conn:
        return await _accepted_body(conn, request_id)


async def _accept(uow: UnitOfWork, row, choices, by: str, at: datetime, correlation_id: str | None) -> None:
    conn, request_id = uow.conn, row["request_id"]
    source, destination = row["source_district_id"], row["destination_district_id"]
    assert await store.end_request(conn, request_id, ACCEPTED, by=by, at=at)  # locked and pending: it moves
    await store.set_links(conn, request_id, choices)
    linked = sum(1 for _, s in choices if s is not None)
    await store.add_history(conn, [(request_id, at, "accepted", by, destination,
                                    f"{len(choices)} case(s): {linked} linked to students of the roster, "
                                    f"{len(choices) - linked} with the transfer's information")])
    link_of = dict(choices)
    uow.emit(TransferAccepted(district_id=source, occurred_at=at, request_id=request_id,
                              destination_district_id=destination, accepted_by=by,
                              cases=[AcceptedCase(case_id=c, student_id=s) for c, s in choices],
                              correlation_id=correlation_id, producer=PRODUCER))
    for part in await store.parts_of(conn, request_id):
        history = CaseHistoryPart.model_validate(store.as_json(part["history"]))
        uow.emit(CaseDelivered(event_id=domain.delivery_event_id(request_id, part["case_id"], part["part"]),
                               district_id=destination, occurred_at=at, request_id=request_id,
                               source_district_id=source, accepted_by=by, accepted_at=at,
                               student_id=link_of[part["case_id"]], history=history,
                               correlation_id=correlation_id, producer=PRODUCER))
    await store.drop_parts(conn, request_id)  # delivered through the outbox: kept no longer here


async def _accepted_body(conn, request_id: UUID) -> dict:
    row = await store.request(conn, request_id)
    cases = await store.request_cases(conn, request_id)
    return {"request_id": request_id, "status": row["status"], "accepted_by": row["ended_by"],
            "accepted_at": row["ended_at"],
            "cases": [{"case_id": c["case_id"], "student_id": c["linked_student_id"],
                       "link": "existing_student" if c["linked_student_id"] else "transfer_info",
                       "parts": c["parts"]} for c in cases]}


async def reject(runtime, caller: Identity, request_id: UUID, reason: str, correlation_id: str | None) -> None:
    """Turn down an incoming pending request, with a reason (published: TransferRejected)."""
    await _end_by_person(runtime, caller, request_id, DESTINATION, REJECTED, "reject", correlation_id, reason=reason)


async def cancel(runtime, caller: Identity, request_id: UUID, correlation_id: str | None) -> None:
    """Withdraw an outgoing pending request (published: TransferCancelled)."""
    await _end_by_person(runtime, caller, request_id, SENDER, CANCELLED, "cancel", correlation_id)


async def _end_by_person(runtime, caller: Identity, request_id: UUID, side: str, status: str, action: str,
                         correlation_id: str | None, reason: str | None = None) -> None:
    at = _now()
    async with runtime.unit_of_work() as uow:
        row = await _request(uow.conn, caller, request_id, side)
        late = await _expired_if_due(uow, row, at, action, correlation_id)
        if late is None:
            domain.require_pending(row["status"], _ended(row), action)
            await _end(uow, row, status, by=_who(caller), at=at, district_id=caller.district_id, reason=reason,
                       correlation_id=correlation_id)
    if late is not None:
        raise late
    log.info(f"transfer request {status}", request_id=str(request_id), district_id=caller.district_id)


# ---------------------------------------------------------------------------- expiry


async def expire_due(runtime, now: datetime | None = None) -> tuple[int, int]:
    """Expire every pending request whose window has passed, each in its own transaction
    (one that cannot be expired is logged and left for the next pass; the others go on).
    A request another action holds at the moment is skipped: that action decides it.
    Returns (expired, failed)."""
    now = now or _now()
    async with runtime.pool.acquire() as conn:
        due = await store.due(conn, now)
    expired = failed = 0
    for request_id in due:
        try:
            async with runtime.unit_of_work() as uow:
                got = await uow.conn.fetchval("SELECT 1 FROM transfer_requests WHERE request_id = $1 "
                                              "FOR UPDATE SKIP LOCKED", request_id)
                row = await store.request(uow.conn, request_id) if got else None
                if row is not None and domain.is_due(row["status"], row["expires_at"], now):
                    await _end(uow, row, EXPIRED, by=None, at=now, district_id=None, correlation_id=None)
                    expired += 1
        except Exception as e:  # noqa: BLE001 - one bad request must not stop the others' expiry
            failed += 1
            log.error("could not expire a transfer request; trying again next pass", request_id=str(request_id),
                      error=type(e).__name__)
    if expired:
        log.info("transfer requests expired", expired=expired)
    return expired, failed


# ---------------------------------------------------------------------------- shared steps


def _readable(typed_code: str) -> str:
    code = domain.normalised_code(typed_code)
    if code is None:  # the format is public: refusing it reveals nothing, and is no try
        raise Refused("invalid", f"that is not an authentication code: {domain.CODE_FORMAT}")
    return code


async def _request(conn, caller: Identity, request_id: UUID, side: str):
    """The request, locked, if the caller's district is on `side` of it: else 404 (another
    district's request and no request read the same)."""
    domain.require_portal(caller)
    row = await store.request(conn, request_id, lock=True)
    if row is None or domain.side_of(caller, row["source_district_id"], row["destination_district_id"]) != side:
        raise Refused("not_found", "no outgoing transfer request with this id" if side == SENDER
                      else "no incoming transfer request with this id")
    return row


def _ended(row) -> Ended:
    return Ended(row["status"], row["ended_by"], row["ended_at"])


async def _open_incoming(uow: UnitOfWork, caller: Identity, request_id: UUID, code: str, at: datetime, action: str,
                         correlation_id: str | None, *, need_complete: bool,
                         choices: Sequence[tuple[UUID, UUID | None]] | None = None) -> _Opened | Refused:
    """The checks before a code is tried, in an order that never spends a try on a request
    that could not be opened anyway: the caller's side, the state, the window, both toggles,
    the histories, the choices; then the code. Returns the opened request, or the refusal to
    answer once this transaction has committed (a wrong code counted, a lock, an expiry)."""
    row = await _request(uow.conn, caller, request_id, DESTINATION)
    late = await _expired_if_due(uow, row, at, action, correlation_id)
    if late is not None:
        return late
    domain.require_pending(row["status"], _ended(row), action)
    active = await store.activation_of(uow.conn, [row["source_district_id"], row["destination_district_id"]],
                                       lock=True)
    domain.check_both_sides_on(active[row["source_district_id"]], active[row["destination_district_id"]])
    states = await store.history_states(uow.conn, request_id)
    if need_complete:
        domain.check_histories(states)
    if choices is not None:
        roster = await store.roster_students(uow.conn, caller.district_id, [s for _, s in choices if s is not None])
        domain.check_choices([s.case_id for s in states], choices, roster)
    if not await codes.matches(row["code_hash"], code):
        wrong = domain.after_wrong_code(row["failed_attempts"])
        await store.count_wrong_code(uow.conn, request_id, wrong.failed_attempts)
        await store.add_history(uow.conn, [(request_id, at, "wrong_code", _who(caller), caller.district_id,
                                            f"a wrong authentication code ({wrong.failed_attempts} of "
                                            f"{domain.MAX_WRONG_CODES})")])
        if wrong.locks:
            await _end(uow, row, LOCKED, by=None, at=at, district_id=None, correlation_id=correlation_id,
                       failed_attempts=wrong.failed_attempts)
            log.warning("transfer request locked after wrong authentication codes", request_id=str(request_id),
                        failed_attempts=wrong.failed_attempts)
        return Refused("invalid", domain.wrong_code_message(wrong))
    return _Opened(row, states)


async def _expired_if_due(uow: UnitOfWork, row, at: datetime, action: str, correlation_id: str | None) -> Refused | None:
    """A pending request past its window expires now (the job may not have come by yet);
    the refusal says so once this commits."""
    if not domain.is_due(row["status"], row["expires_at"], at):
        return None
    await _end(uow, row, EXPIRED, by=None, at=at, district_id=None, correlation_id=correlation_id)
    return Refused("conflict", f"cannot {action}: the request expired at {row['expires_at'].isoformat()}")


async def _end(uow: UnitOfWork, row, status: str, *, by: str | None, at: datetime, district_id: str | None,
               correlation_id: str | None, reason: str | None = None, failed_attempts: int | None = None) -> None:
    """Move a locked pending request to a final state other than accepted: recorded, its
    history parts dropped, and published."""
    request_id = row["request_id"]
    if not await store.end_request(uow.conn, request_id, status, by=by, at=at, reason=reason):
        raise AssertionError("a locked pending request did not move")  # the row lock makes this impossible
    await store.drop_parts(uow.conn, request_id)
    detail = {REJECTED: reason, LOCKED: f"{failed_attempts} wrong authentication codes",
              EXPIRED: "the authentication code's window passed"}.get(status)
    await store.add_history(uow.conn, [(request_id, at, status, by, district_id, detail)])
    common = dict(district_id=row["source_district_id"], occurred_at=at, request_id=request_id,
                  destination_district_id=row["destination_district_id"], correlation_id=correlation_id,
                  producer=PRODUCER)
    if status == REJECTED:
        uow.emit(TransferRejected(**common, rejected_by=by, reason=reason))
    elif status == CANCELLED:
        uow.emit(TransferCancelled(**common, cancelled_by=by))
    elif status == LOCKED:
        uow.emit(TransferLocked(**common, failed_attempts=failed_attempts))
    elif status == EXPIRED:
        uow.emit(TransferExpired(**common))
    else:
        raise ValueError(f"not a way for a request to end here: {status}")
