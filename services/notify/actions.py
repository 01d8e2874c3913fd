"""What people change in the notify service: their own notice preferences, and a district
admin's sender name for the district's notices. Each checks the domain's rule, then writes
in one transaction."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from services.notify import domain, store


async def change_preferences(runtime, *, district_id: str, email: str,
                             wanted: dict[str, bool | None]) -> list[dict[str, Any]]:
    """Turn notices on or off for oneself; a required one cannot be turned off (Refused)."""
    changes = domain.preference_changes(wanted)
    async with runtime.unit_of_work() as uow:
        await store.set_preferences(uow.conn, district_id, email, changes, datetime.now(UTC))
        off = await store.turned_off(uow.conn, [(district_id, email)])
    return domain.preferences(notice for _, _, notice in off)


async def name_sender(runtime, *, district_id: str, name: str, by: str) -> None:
    """The display name of the From of the district's notices (Refused when a mail header
    cannot carry it)."""
    if problem := domain.sender_name_problem(name):
        raise domain.Refused("sender_name", f"the sender name {problem}")
    async with runtime.unit_of_work() as uow:
        await store.set_sender(uow.conn, district_id, name.strip(), by, datetime.now(UTC))
