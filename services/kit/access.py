"""Every service's projection of the access levels the caseload service grants
(caseload.access.v1), and the read that adds them to a caller's token.

A service authorises from its own copy, never from the caseload service's tables: the
runtime subscribes each service with HTTP routes to the topic (`subscription`), the
handler keeps access_held (kit migration 003), and auth.current_identity reads the
caller's rows per request, so a revoke takes effect as soon as this service has read it.
"""

from __future__ import annotations

from dataclasses import replace

import asyncpg

from contracts.caseload import AccessGranted, AccessRevoked
from contracts.topics import CASELOAD_ACCESS
from services.kit.consumer import Subscription, UnitOfWork
from services.kit.identity import Holding, Identity


def subscription(service: str) -> Subscription:
    return Subscription(
        topic=CASELOAD_ACCESS,
        consumer=f"caseflow.{service}.access",
        handlers={AccessGranted: on_access, AccessRevoked: on_access},
        description="Access levels granted and revoked: who may do what, per school (this service's own copy).",
    )


async def on_access(uow: UnitOfWork, events: list[AccessGranted | AccessRevoked]) -> None:
    """Newest fact per grant wins (a grant's events share a key, so they arrive in order;
    an older one read again changes nothing)."""
    last = {e.grant_id: e for e in events}
    rows = [(e.grant_id, e.district_id, e.staff_email.strip().lower(), e.level, e.school_id, e.basis,
             getattr(e, "granted_by", None), isinstance(e, AccessGranted), e.occurred_at) for e in last.values()]
    await uow.conn.execute(
        """INSERT INTO access_held (grant_id, district_id, staff_email, level, school_id, basis, granted_by, held, as_of)
           SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                                $8::bool[], $9::timestamptz[])
           ON CONFLICT (grant_id) DO UPDATE SET held = EXCLUDED.held, as_of = EXCLUDED.as_of,
               granted_by = CASE WHEN EXCLUDED.held THEN EXCLUDED.granted_by ELSE access_held.granted_by END
           WHERE access_held.as_of <= EXCLUDED.as_of""",
        *(list(c) for c in zip(*rows, strict=True)),
    )


def held_array(district_id: str = "$1", email: str = "$2") -> str:
    """SQL for a caller's grants as one array of (level, school_id, basis, granted_by, as_of)
    records, for a service's own query to read beside what it serves (one round trip):
    `district_id` and `email` are SQL expressions (parameters or columns), the email as
    held (held_email). Read with holdings()."""
    return f"""array(SELECT ROW(h.level, h.school_id, h.basis, h.granted_by, h.as_of) FROM access_held h
                      WHERE h.district_id = {district_id} AND h.staff_email = {email} AND h.held)"""


def held_email(email: str) -> str:
    return email.strip().lower()


def holdings(records) -> tuple[Holding, ...]:
    return tuple(Holding(*r) for r in records)


def with_grants(identity: Identity, granted: tuple[Holding, ...]) -> Identity:
    """The identity a token names, holding also what this service knows was granted."""
    return replace(identity, holdings=identity.holdings + granted) if granted else identity


async def held_by(conn: asyncpg.Connection | asyncpg.Pool, district_id: str, email: str) -> tuple[Holding, ...]:
    """What this service knows `email` holds in the district (from caseload.access.v1)."""
    rows = await conn.fetch(
        """SELECT level, school_id, basis, granted_by, as_of FROM access_held
           WHERE district_id = $1 AND staff_email = $2 AND held""", district_id, held_email(email))
    return tuple(Holding(r["level"], r["school_id"], r["basis"], r["granted_by"], r["as_of"]) for r in rows)
