"""The transfers service's SQL. Runs inside the caller's transaction; never commits.

A request's row is locked (FOR UPDATE) by every path that may move it (accept, reject,
cancel, a code try, regenerate, expiry, a history part arriving), so two of them never
decide on the same state: the second reads what the first did. `end_request` moves only a
pending request: the database, too, lets nothing leave a final state."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from uuid import UUID

import asyncpg

from services.transfers.domain import CaseFacts, CaseHistoryState, Person

# ---------------------------------------------------------------------------- projections


async def upsert_districts(conn: asyncpg.Connection, rows: list[tuple]) -> None:
    """rows: (district_id, name, source_id, as_of); the newest name wins."""
    if rows:
        await conn.execute(
            """INSERT INTO districts (district_id, name, source_id, as_of)
               SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[])
               ON CONFLICT (district_id) DO UPDATE SET name = EXCLUDED.name, source_id = EXCLUDED.source_id,
                   as_of = EXCLUDED.as_of
               WHERE districts.as_of <= EXCLUDED.as_of""",
            *(list(c) for c in zip(*rows, strict=True)))


async def project_students(conn: asyncpg.Connection, rows: list[tuple]) -> None:
    """rows: (student_id, district_id, source_id, school_id, grade, given_name, family_name,
    birth_date, active, as_of); the newest fact per student wins."""
    if rows:
        await conn.execute(
            """INSERT INTO students (student_id, district_id, source_id, school_id, grade, given_name, family_name,
                                     birth_date, active, as_of)
               SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                                    $7::text[], $8::date[], $9::bool[], $10::timestamptz[])
               ON CONFLICT (student_id) DO UPDATE SET district_id = EXCLUDED.district_id,
                   source_id = EXCLUDED.source_id, school_id = EXCLUDED.school_id, grade = EXCLUDED.grade,
                   given_name = EXCLUDED.given_name, family_name = EXCLUDED.family_name,
                   birth_date = EXCLUDED.birth_date, active = EXCLUDED.active, as_of = EXCLUDED.as_of
               WHERE students.as_of <= EXCLUDED.as_of""",
            *(list(c) for c in zip(*rows, strict=True)))


async def withdraw_students(conn: asyncpg.Connection, rows: list[tuple]) -> None:
    """rows: (student_id, as_of)."""
    if rows:
        await conn.execute(
            """UPDATE students s SET active = false, as_of = r.at
               FROM unnest($1::uuid[], $2::timestamptz[]) AS r(id, at)
               WHERE s.student_id = r.id AND s.as_of <= r.at""",
            *(list(c) for c in zip(*rows, strict=True)))


async def insert_cases(conn: asyncpg.Connection, rows: list[tuple]) -> None:
    """rows: (case_id, district_id, case_number, school_id, student_id, status, as_of): a case
    opened, or transferred in. Read again, changes nothing."""
    if rows:
        await conn.execute(
            """INSERT INTO cases (case_id, district_id, case_number, school_id, student_id, status, as_of)
               SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::uuid[], $6::text[],
                                    $7::timestamptz[])
               ON CONFLICT (case_id) DO NOTHING""",
            *(list(c) for c in zip(*rows, strict=True)))


async def set_case_status(conn: asyncpg.Connection, rows: list[tuple]) -> None:
    """rows: (case_id, status, as_of): closed or reopened; an older fact changes nothing."""
    if rows:
        await conn.execute(
            """UPDATE cases c SET status = r.status, as_of = r.at
               FROM unnest($1::uuid[], $2::text[], $3::timestamptz[]) AS r(id, status, at)
               WHERE c.case_id = r.id AND c.as_of <= r.at""",
            *(list(c) for c in zip(*rows, strict=True)))


async def mark_transferred_out(conn: asyncpg.Connection, case_ids: Sequence[UUID]) -> None:
    if case_ids:
        await conn.execute("UPDATE cases SET transferred_out = true WHERE case_id = ANY($1::uuid[])", list(case_ids))


async def cases_by_id(conn: asyncpg.Connection, case_ids: Sequence[UUID]) -> dict[UUID, CaseFacts]:
    rows = await conn.fetch(
        """SELECT case_id, district_id, school_id, case_number, transferred_out FROM cases
           WHERE case_id = ANY($1::uuid[])""", list(case_ids))
    return {r["case_id"]: CaseFacts(r["case_id"], r["district_id"], r["school_id"], r["case_number"],
                                    r["transferred_out"]) for r in rows}


async def roster_students(conn: asyncpg.Connection, district_id: str, student_ids: Iterable[UUID]) -> dict[UUID, bool]:
    """The district's roster students among these ids: id -> active."""
    rows = await conn.fetch("SELECT student_id, active FROM students WHERE district_id = $1 "
                            "AND student_id = ANY($2::uuid[])", district_id, list(set(student_ids)))
    return {r["student_id"]: r["active"] for r in rows}


async def candidates(conn: asyncpg.Connection, district_id: str,
                     persons: Iterable[Person]) -> list[tuple[UUID, Person, asyncpg.Record]]:
    """Active students of the district sharing a birth date or a family name with any of
    these persons: what the domain ranks into suggestions."""
    persons = list(persons)
    births = sorted({p.birth_date for p in persons if p.birth_date is not None})
    families = sorted({p.family_name.strip().lower() for p in persons})
    rows = await conn.fetch(
        """SELECT student_id, given_name, family_name, birth_date, grade, school_id FROM students
           WHERE district_id = $1 AND active AND (birth_date = ANY($2::date[]) OR lower(family_name) = ANY($3::text[]))
           LIMIT 2000""", district_id, births, families)
    return [(r["student_id"], Person(r["given_name"], r["family_name"], r["birth_date"]), r) for r in rows]


# ---------------------------------------------------------------------------- activation


async def activation_of(conn: asyncpg.Connection, districts: Iterable[str], *, lock: bool = False) -> dict[str, bool]:
    """Each district's toggle (a district with no row is off). `lock`: hold the rows until
    commit (FOR SHARE), so a toggle turned off meanwhile waits for this send or accept."""
    districts = sorted(set(districts))
    rows = await conn.fetch(
        "SELECT district_id, active FROM activation WHERE district_id = ANY($1::text[]) ORDER BY district_id"
        + (" FOR SHARE" if lock else ""), districts)
    found = {r["district_id"]: r["active"] for r in rows}
    return {d: found.get(d, False) for d in districts}


async def set_activation(conn: asyncpg.Connection, district_id: str, active: bool, by: str, at: datetime) -> bool:
    """Turn the toggle on or off; False when it already was so (nothing recorded). A district
    with no row is off: turning it off changes nothing."""
    current = await conn.fetchval("SELECT active FROM activation WHERE district_id = $1 FOR UPDATE", district_id)
    if bool(current) == active:
        return False
    changed = await conn.fetchval(
        """INSERT INTO activation AS a (district_id, active, changed_by, changed_at) VALUES ($1, $2, $3, $4)
           ON CONFLICT (district_id) DO UPDATE SET active = EXCLUDED.active, changed_by = EXCLUDED.changed_by,
               changed_at = EXCLUDED.changed_at
           WHERE a.active IS DISTINCT FROM EXCLUDED.active
           RETURNING true""", district_id, active, by, at)
    if not changed:  # another call made the same change first
        return False
    await conn.execute("INSERT INTO activation_history (district_id, active, changed_by, changed_at) "
                       "VALUES ($1, $2, $3, $4)", district_id, active, by, at)
    return True


async def activation_row(conn: asyncpg.Connection, district_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT active, changed_by, changed_at FROM activation WHERE district_id = $1",
                               district_id)


async def activation_history(conn: asyncpg.Connection, district_id: str, limit: int = 100) -> list[asyncpg.Record]:
    return await conn.fetch("SELECT active, changed_by, changed_at FROM activation_history WHERE district_id = $1 "
                            "ORDER BY id DESC LIMIT $2", district_id, limit)


async def destinations(conn: asyncpg.Connection, but: str) -> list[asyncpg.Record]:
    """Districts with the toggle on, other than `but`, by name (the id where the roster has
    not named it yet)."""
    return await conn.fetch(
        """SELECT a.district_id, coalesce(d.name, a.district_id) AS name FROM activation a
           LEFT JOIN districts d USING (district_id)
           WHERE a.active AND a.district_id <> $1
           ORDER BY lower(coalesce(d.name, a.district_id)), a.district_id""", but)


async def district_names(conn: asyncpg.Connection, districts: Iterable[str]) -> dict[str, str]:
    rows = await conn.fetch("SELECT district_id, name FROM districts WHERE district_id = ANY($1::text[])",
                            sorted(set(districts)))
    return {r["district_id"]: r["name"] for r in rows}


# ---------------------------------------------------------------------------- requests


async def insert_request(conn: asyncpg.Connection, *, request_id: UUID, source: str, destination: str,
                         case_count: int, notes: str | None, requested_by: str, requested_at: datetime,
                         expires_at: datetime, code_hash: str, correlation_id: str | None) -> None:
    await conn.execute(
        """INSERT INTO transfer_requests (request_id, source_district_id, destination_district_id, status, case_count,
                                          notes, requested_by, requested_at, expires_at, code_hash, code_issued_at,
                                          correlation_id)
           VALUES ($1, $2, $3, 'pending', $4, $5, $6, $7, $8, $9, $7, $10)""",
        request_id, source, destination, case_count, notes, requested_by, requested_at, expires_at, code_hash,
        correlation_id)


async def insert_request_cases(conn: asyncpg.Connection, request_id: UUID, cases: Sequence[CaseFacts]) -> None:
    await conn.execute(
        """INSERT INTO request_cases (request_id, case_id, position, case_number, school_id)
           SELECT $1, * FROM unnest($2::uuid[], $3::int[], $4::text[], $5::text[])""",
        request_id, [c.case_id for c in cases], list(range(1, len(cases) + 1)), [c.case_number for c in cases],
        [c.school_id for c in cases])


async def add_history(conn: asyncpg.Connection, rows: list[tuple]) -> None:
    """rows: (request_id, at, action, actor, district_id, detail)."""
    if rows:
        await conn.executemany("INSERT INTO request_history (request_id, at, action, actor, district_id, detail) "
                               "VALUES ($1, $2, $3, $4, $5, $6)", rows)


_REQUEST = """SELECT r.*, coalesce(s.name, r.source_district_id) AS source_name,
                     coalesce(d.name, r.destination_district_id) AS destination_name
              FROM transfer_requests r
              LEFT JOIN districts s ON s.district_id = r.source_district_id
              LEFT JOIN districts d ON d.district_id = r.destination_district_id"""


async def request(conn: asyncpg.Connection, request_id: UUID, *, lock: bool = False) -> asyncpg.Record | None:
    """One request with its districts' names; `lock`: its row is held until commit."""
    if lock:
        # The lock is taken on the request's own row alone (not the joined names).
        await conn.execute("SELECT 1 FROM transfer_requests WHERE request_id = $1 FOR UPDATE", request_id)
    return await conn.fetchrow(_REQUEST + " WHERE r.request_id = $1", request_id)


async def lock_requests(conn: asyncpg.Connection, request_ids: Iterable[UUID]) -> dict[UUID, asyncpg.Record]:
    """Lock several requests' rows until commit, in one order (no deadlock between batches)."""
    rows = await conn.fetch(
        """SELECT request_id, source_district_id, destination_district_id, status FROM transfer_requests
           WHERE request_id = ANY($1::uuid[]) ORDER BY request_id FOR UPDATE""", sorted(set(request_ids)))
    return {r["request_id"]: r for r in rows}


async def request_cases(conn: asyncpg.Connection, request_id: UUID) -> list[asyncpg.Record]:
    return await conn.fetch("SELECT * FROM request_cases WHERE request_id = $1 ORDER BY position", request_id)


async def case_ids_of(conn: asyncpg.Connection, request_ids: Iterable[UUID]) -> dict[UUID, dict[UUID, int | None]]:
    """Each request's cases, with the parts each history comes in (None until known)."""
    rows = await conn.fetch("SELECT request_id, case_id, parts FROM request_cases WHERE request_id = ANY($1::uuid[])",
                            list(set(request_ids)))
    out: dict[UUID, dict[UUID, int | None]] = {}
    for r in rows:
        out.setdefault(r["request_id"], {})[r["case_id"]] = r["parts"]
    return out


async def history_states(conn: asyncpg.Connection, request_id: UUID) -> list[CaseHistoryState]:
    rows = await conn.fetch(
        """SELECT rc.case_id, rc.parts, rc.unavailable, count(hp.part) AS received
           FROM request_cases rc LEFT JOIN history_parts hp USING (request_id, case_id)
           WHERE rc.request_id = $1 GROUP BY rc.case_id, rc.parts, rc.unavailable, rc.position
           ORDER BY rc.position""", request_id)
    return [CaseHistoryState(r["case_id"], r["parts"], r["received"], r["unavailable"]) for r in rows]


async def histories_summary(conn: asyncpg.Connection, request_ids: Sequence[UUID]) -> dict[UUID, list[CaseHistoryState]]:
    rows = await conn.fetch(
        """SELECT rc.request_id, rc.case_id, rc.parts, rc.unavailable,
                  (SELECT count(*) FROM history_parts hp WHERE hp.request_id = rc.request_id
                                                          AND hp.case_id = rc.case_id) AS received
           FROM request_cases rc WHERE rc.request_id = ANY($1::uuid[])""", list(request_ids))
    out: dict[UUID, list[CaseHistoryState]] = {}
    for r in rows:
        out.setdefault(r["request_id"], []).append(
            CaseHistoryState(r["case_id"], r["parts"], r["received"], r["unavailable"]))
    return out


async def add_parts(conn: asyncpg.Connection, rows: list[tuple]) -> None:
    """rows: (request_id, case_id, part, parts, history as a dict). A part received again
    changes nothing; the first part of a case says how many there are."""
    if not rows:
        return
    await conn.executemany(
        """INSERT INTO history_parts (request_id, case_id, part, parts, history) VALUES ($1, $2, $3, $4, $5)
           ON CONFLICT (request_id, case_id, part) DO NOTHING""", rows)
    await conn.execute(
        """UPDATE request_cases rc SET parts = k.parts
           FROM unnest($1::uuid[], $2::uuid[], $3::int[]) AS k(request_id, case_id, parts)
           WHERE rc.request_id = k.request_id AND rc.case_id = k.case_id AND rc.parts IS NULL""",
        [r[0] for r in rows], [r[1] for r in rows], [r[3] for r in rows])


async def mark_unavailable(conn: asyncpg.Connection, request_id: UUID, case_id: UUID, reason: str) -> bool:
    """The sending district could not export this case; False when that was known already."""
    done = await conn.execute("UPDATE request_cases SET unavailable = $3 WHERE request_id = $1 AND case_id = $2 "
                              "AND unavailable IS NULL", request_id, case_id, reason)
    return done == "UPDATE 1"


async def parts_of(conn: asyncpg.Connection, request_id: UUID) -> list[asyncpg.Record]:
    """Every part of every case's history, cases in the request's order, parts in theirs."""
    return await conn.fetch(
        """SELECT hp.case_id, hp.part, hp.parts, hp.history FROM history_parts hp
           JOIN request_cases rc USING (request_id, case_id)
           WHERE hp.request_id = $1 ORDER BY rc.position, hp.part""", request_id)


async def first_parts(conn: asyncpg.Connection, request_id: UUID) -> dict[UUID, dict]:
    """Each case's lowest part received: the person and case header it carries."""
    rows = await conn.fetch("SELECT DISTINCT ON (case_id) case_id, history FROM history_parts WHERE request_id = $1 "
                            "ORDER BY case_id, part", request_id)
    return {r["case_id"]: r["history"] for r in rows}


async def drop_parts(conn: asyncpg.Connection, request_id: UUID) -> None:
    """A request that ended keeps no history: delivered (accepted) or not needed."""
    await conn.execute("DELETE FROM history_parts WHERE request_id = $1", request_id)


async def set_links(conn: asyncpg.Connection, request_id: UUID, links: Sequence[tuple[UUID, UUID | None]]) -> None:
    await conn.execute(
        """UPDATE request_cases rc SET linked_student_id = k.student_id
           FROM unnest($2::uuid[], $3::uuid[]) AS k(case_id, student_id)
           WHERE rc.request_id = $1 AND rc.case_id = k.case_id""",
        request_id, [c for c, _ in links], [s for _, s in links])


async def end_request(conn: asyncpg.Connection, request_id: UUID, status: str, *, by: str | None, at: datetime,
                      reason: str | None = None) -> bool:
    """Move a pending request to a final state; False (nothing changed) if it was not pending."""
    done = await conn.execute(
        """UPDATE transfer_requests SET status = $2, ended_by = $3, ended_at = $4, reason = $5
           WHERE request_id = $1 AND status = 'pending'""", request_id, status, by, at, reason)
    return done == "UPDATE 1"


async def count_wrong_code(conn: asyncpg.Connection, request_id: UUID, failed_attempts: int) -> None:
    await conn.execute("UPDATE transfer_requests SET failed_attempts = $2 WHERE request_id = $1",
                       request_id, failed_attempts)


async def replace_code(conn: asyncpg.Connection, request_id: UUID, code_hash: str, at: datetime) -> None:
    """A new code's hash: the old code no longer opens the request, and the wrong tries made
    against it no longer count."""
    await conn.execute("UPDATE transfer_requests SET code_hash = $2, code_issued_at = $3, failed_attempts = 0 "
                       "WHERE request_id = $1 AND status = 'pending'", request_id, code_hash, at)


async def listing(conn: asyncpg.Connection, *, side: str, district_id: str, status: str | None,
                  after: UUID | None, limit: int) -> list[asyncpg.Record]:
    """A district's outgoing (side='source') or incoming (side='destination') requests,
    newest first, paged by the last request id of the previous page."""
    column = {"source": "source_district_id", "destination": "destination_district_id"}[side]
    return await conn.fetch(
        _REQUEST + f""" WHERE r.{column} = $1 AND ($2::text IS NULL OR r.status = $2)
           AND ($3::uuid IS NULL OR (r.requested_at, r.request_id) <
                (SELECT requested_at, request_id FROM transfer_requests WHERE request_id = $3))
           ORDER BY r.requested_at DESC, r.request_id DESC LIMIT $4""",
        district_id, status, after, limit)


async def history(conn: asyncpg.Connection, request_id: UUID) -> list[asyncpg.Record]:
    return await conn.fetch("SELECT at, action, actor, district_id, detail FROM request_history "
                            "WHERE request_id = $1 ORDER BY id", request_id)


async def due(conn: asyncpg.Connection, now: datetime, limit: int = 500) -> list[UUID]:
    """Pending requests whose window has passed, oldest first."""
    rows = await conn.fetch("SELECT request_id FROM transfer_requests WHERE status = 'pending' AND expires_at <= $1 "
                            "ORDER BY expires_at LIMIT $2", now, limit)
    return [r["request_id"] for r in rows]


def as_json(value) -> dict:
    """A jsonb value as asyncpg gives it back (the kit's codec decodes it)."""
    return json.loads(value) if isinstance(value, str) else value
