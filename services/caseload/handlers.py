"""The caseload service's event handlers."""

from __future__ import annotations

from contracts.roster import StudentEnrolled, StudentUpdated
from services.caseload import domain, store
from services.kit.consumer import UnitOfWork


async def on_roster_students(uow: UnitOfWork, events: list[StudentEnrolled | StudentUpdated]) -> None:
    await store.project_students(uow.conn, domain.latest_students(events))
