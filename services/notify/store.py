"""The notify service's SQL. Runs inside the caller's transaction; never commits."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from uuid import UUID

import asyncpg

from services.notify.domain import Holder, staff_name
from services.notify.mail import Outgoing


def _columns(rows: list[tuple]) -> list[list]:
    return [list(c) for c in zip(*rows, strict=True)]


# ---------------------------------------------------------------------------- the projection


async def project_staff(conn: asyncpg.Connection, rows: list[tuple]) -> None:
    """rows: (staff_id, district_id, email, given_name, family_name, as_of): on the roster."""
    if rows:
        await conn.execute(
            """INSERT INTO staff (staff_id, district_id, email, given_name, family_name, active, as_of)
               SELECT i, d, e, g, f, true, at
               FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[])
                    AS r(i, d, e, g, f, at)
               ON CONFLICT (staff_id) DO UPDATE SET district_id = EXCLUDED.district_id, email = EXCLUDED.email,
                   given_name = EXCLUDED.given_name, family_name = EXCLUDED.family_name, active = true,
                   as_of = EXCLUDED.as_of
               WHERE staff.as_of <= EXCLUDED.as_of""",
            *_columns(rows),
        )


async def deactivate_staff(conn: asyncpg.Connection, rows: list[tuple]) -> None:
    """rows: (staff_id, as_of): left the roster."""
    if rows:
        await conn.execute(
            """UPDATE staff s SET active = false, as_of = r.at
               FROM unnest($1::uuid[], $2::timestamptz[]) AS r(i, at)
               WHERE s.staff_id = r.i AND s.as_of <= r.at""",
            *_columns(rows),
        )


async def project_districts(conn: asyncpg.Connection, rows: list[tuple]) -> None:
    """rows: (district_id, name, as_of)."""
    if rows:
        await conn.execute(
            """INSERT INTO districts (district_id, name, as_of)
               SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[])
               ON CONFLICT (district_id) DO UPDATE SET name = EXCLUDED.name, as_of = EXCLUDED.as_of
               WHERE districts.as_of <= EXCLUDED.as_of""",
            *_columns(rows),
        )


async def district_names(conn: asyncpg.Connection, districts: Iterable[str]) -> dict[str, str]:
    rows = await conn.fetch("SELECT district_id, name FROM districts WHERE district_id = ANY($1::text[])",
                            sorted(set(districts)))
    return {r["district_id"]: r["name"] for r in rows}


async def holders(conn: asyncpg.Connection, districts: Iterable[str], levels: Iterable[str]) -> dict[str, list[Holder]]:
    """Per district, every login email holding one of `levels` there (at any school or
    district-wide, on any basis), with whether the roster has them (True), had them (False)
    or never knew them (None)."""
    districts = sorted(set(districts))
    if not districts:
        return {}
    rows = await conn.fetch(
        """SELECT a.district_id, a.staff_email,
                  (SELECT bool_or(s.active) FROM staff s
                   WHERE s.district_id = a.district_id AND s.email = a.staff_email) AS on_roster
           FROM (SELECT DISTINCT district_id, staff_email FROM access_held
                 WHERE held AND district_id = ANY($1::text[]) AND level = ANY($2::text[])) a""",
        districts, list(levels),
    )
    out: dict[str, list[Holder]] = {d: [] for d in districts}
    for r in rows:
        out[r["district_id"]].append(Holder(r["staff_email"], r["on_roster"]))
    return out


async def staff_names(conn: asyncpg.Connection, people: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """(district, email) -> the name the roster gives them (its newest active record)."""
    people = sorted(set(people))
    if not people:
        return {}
    rows = await conn.fetch(
        """SELECT DISTINCT ON (s.district_id, s.email) s.district_id, s.email, s.given_name, s.family_name
           FROM staff s JOIN unnest($1::text[], $2::text[]) AS k(d, e) ON s.district_id = k.d AND s.email = k.e
           ORDER BY s.district_id, s.email, s.active DESC, s.as_of DESC""",
        *_columns(people),
    )
    return {(r["district_id"], r["email"]): name for r in rows
            if (name := staff_name(r["given_name"], r["family_name"]))}


async def on_roster(conn: asyncpg.Connection, people: Iterable[tuple[str, str]]) -> dict[tuple[str, str], bool]:
    """(district, email) -> whether the roster has them now; absent: the roster never knew them."""
    people = sorted(set(people))
    if not people:
        return {}
    rows = await conn.fetch(
        """SELECT s.district_id, s.email, bool_or(s.active) AS active FROM staff s
           JOIN unnest($1::text[], $2::text[]) AS k(d, e) ON s.district_id = k.d AND s.email = k.e
           GROUP BY s.district_id, s.email""",
        *_columns(people),
    )
    return {(r["district_id"], r["email"]): r["active"] for r in rows}


# ---------------------------------------------------------------------------- preferences and senders


async def turned_off(conn: asyncpg.Connection, people: Iterable[tuple[str, str]]) -> set[tuple[str, str, str]]:
    """(district, email, notice) of every notice these staff members turned off."""
    people = sorted(set(people))
    if not people:
        return set()
    rows = await conn.fetch(
        """SELECT p.district_id, p.staff_email, p.notice FROM notice_preferences p
           JOIN unnest($1::text[], $2::text[]) AS k(d, e) ON p.district_id = k.d AND p.staff_email = k.e
           WHERE NOT p.enabled""",
        *_columns(people),
    )
    return {(r["district_id"], r["staff_email"], r["notice"]) for r in rows}


async def set_preferences(conn: asyncpg.Connection, district_id: str, email: str, changes: dict[str, bool],
                          at: datetime) -> None:
    if changes:
        await conn.execute(
            """INSERT INTO notice_preferences (district_id, staff_email, notice, enabled, changed_at)
               SELECT $1, $2, n, e, $5 FROM unnest($3::text[], $4::bool[]) AS c(n, e)
               ON CONFLICT (district_id, staff_email, notice) DO UPDATE SET enabled = EXCLUDED.enabled,
                   changed_at = EXCLUDED.changed_at""",
            district_id, email, list(changes), list(changes.values()), at,
        )


async def sender(conn: asyncpg.Connection | asyncpg.Pool, district_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT sender_name, changed_by, changed_at FROM district_senders WHERE district_id = $1",
                               district_id)


async def set_sender(conn: asyncpg.Connection, district_id: str, name: str, by: str, at: datetime) -> None:
    await conn.execute(
        """INSERT INTO district_senders (district_id, sender_name, changed_by, changed_at) VALUES ($1, $2, $3, $4)
           ON CONFLICT (district_id) DO UPDATE SET sender_name = EXCLUDED.sender_name,
               changed_by = EXCLUDED.changed_by, changed_at = EXCLUDED.changed_at""",
        district_id, name, by, at,
    )


# ---------------------------------------------------------------------------- notices and deliveries


async def add_notices(conn: asyncpg.Connection, rows: list[tuple]) -> None:
    """rows: (event_id, notice, event_type, subject, context)."""
    if rows:
        await conn.execute(
            """INSERT INTO notices (event_id, notice, event_type, subject, context)
               SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::jsonb[])
               ON CONFLICT DO NOTHING""",
            *_columns(rows),
        )


async def add_deliveries(conn: asyncpg.Connection, rows: list[tuple]) -> int:
    """rows: (event_id, notice, recipient, district_id, message_id), pending, due now. One
    statement however many (a burst of 10,000 recipients is one insert). A (event,
    recipient) already there is left as it is."""
    if not rows:
        return 0
    status = await conn.execute(
        """INSERT INTO deliveries (event_id, notice, recipient, district_id, message_id)
           SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[])
           ON CONFLICT (event_id, recipient) DO NOTHING""",
        *_columns(rows),
    )
    return int(status.rsplit(" ", 1)[-1])


async def claim_due(conn: asyncpg.Connection, limit: int, default_sender: str) -> list[Outgoing]:
    """Lock up to `limit` pending deliveries whose time has come, oldest due first, skipping
    those another sender holds; with what their messages need. Locked until the caller's
    transaction ends."""
    rows = await conn.fetch(
        """WITH due AS (
               SELECT delivery_id FROM deliveries
               WHERE status = 'pending' AND next_attempt_at <= now()
               ORDER BY next_attempt_at
               LIMIT $1
               FOR UPDATE SKIP LOCKED)
           SELECT d.delivery_id, d.event_id, d.notice, d.recipient, d.message_id, d.attempts, n.subject, n.context,
                  coalesce(ds.sender_name, $2) AS sender_name
           FROM due JOIN deliveries d USING (delivery_id)
           JOIN notices n ON n.event_id = d.event_id AND n.notice = d.notice
           LEFT JOIN district_senders ds ON ds.district_id = d.district_id
           ORDER BY d.next_attempt_at, d.delivery_id""",
        limit, default_sender,
    )
    return [Outgoing(delivery_id=r["delivery_id"], event_id=str(r["event_id"]), notice=r["notice"],
                     recipient=r["recipient"], message_id=r["message_id"], attempts=r["attempts"],
                     subject=r["subject"], context=r["context"], sender_name=r["sender_name"]) for r in rows]


async def record_attempts(conn: asyncpg.Connection, rows: list[tuple]) -> None:
    """rows: (delivery_id, status, next_attempt_at or None, reply): one attempt each."""
    if rows:
        await conn.execute(
            """UPDATE deliveries d SET status = r.status, attempts = d.attempts + 1,
                   next_attempt_at = coalesce(r.next_at, d.next_attempt_at), last_reply = r.reply,
                   sent_at = CASE WHEN r.status = 'sent' THEN now() END
               FROM unnest($1::bigint[], $2::text[], $3::timestamptz[], $4::text[]) AS r(id, status, next_at, reply)
               WHERE d.delivery_id = r.id""",
            *_columns(rows),
        )


async def prune(conn: asyncpg.Connection, days: int) -> int:
    """Forget deliveries sent or failed more than `days` ago, and the notices left without one."""
    status = await conn.execute(
        """DELETE FROM deliveries WHERE status <> 'pending' AND created_at < now() - make_interval(days => $1)""",
        days)
    await conn.execute(
        """DELETE FROM notices n WHERE n.created_at < now() - make_interval(days => $1)
           AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = n.event_id AND d.notice = n.notice)""",
        days)
    return int(status.rsplit(" ", 1)[-1])


# ---------------------------------------------------------------------------- the delivery log

_LOG_COLUMNS = """d.delivery_id, d.event_id, n.event_type, d.notice, d.recipient, n.subject, d.status, d.attempts,
                  d.created_at, d.next_attempt_at, d.sent_at, d.last_reply, d.message_id"""


async def deliveries_page(conn: asyncpg.Connection, *, district_id: str, event_id: UUID | None, recipient: str | None,
                          status: str | None, after: int | None, limit: int) -> list[asyncpg.Record]:
    """The district's deliveries, newest first, after the position `after` (a delivery id)."""
    return await conn.fetch(
        f"""SELECT {_LOG_COLUMNS}
            FROM deliveries d JOIN notices n ON n.event_id = d.event_id AND n.notice = d.notice
            WHERE d.district_id = $1 AND ($2::uuid IS NULL OR d.event_id = $2)
              AND ($3::text IS NULL OR d.recipient = $3) AND ($4::text IS NULL OR d.status = $4)
              AND ($5::bigint IS NULL OR d.delivery_id < $5)
            ORDER BY d.delivery_id DESC LIMIT $6""",
        district_id, event_id, recipient, status, after, limit,
    )


async def delivery(conn: asyncpg.Connection, district_id: str, delivery_id: int) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"""SELECT {_LOG_COLUMNS}
            FROM deliveries d JOIN notices n ON n.event_id = d.event_id AND n.notice = d.notice
            WHERE d.district_id = $1 AND d.delivery_id = $2""",
        district_id, delivery_id,
    )
