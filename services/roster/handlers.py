"""The roster's event handlers: load, decide with the domain, save, emit."""

from __future__ import annotations

from contracts.sis import SisStudentEnrolled
from services.kit.consumer import UnitOfWork
from services.roster import domain, store


async def on_sis_students_enrolled(uow: UnitOfWork, facts: list[SisStudentEnrolled]) -> None:
    held = await store.lock_students(uow.conn, (domain.student_id_for(f.district_id, f.source_id) for f in facts))
    changed, events = domain.enrol(held, facts)
    await store.save_students(uow.conn, changed.values())
    for event in events:
        uow.emit(event)
