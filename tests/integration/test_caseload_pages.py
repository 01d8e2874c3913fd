"""Kept caseload pages (services/caseload/pages.py) on real Kafka and PostgreSQL: a page two
instances of the caseload service keep is never served once something it shows has
changed, whichever instance (or consumer) made the change, and the next request after the
commit already answers the new page; a revoked caller is refused at once by every
instance; a district's pages never show another's; and, on the database alone, the
snapshot check catches a transaction that began before a page was read and committed after
it (which a "newest version" number would miss)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from contracts.roster import (
    ClassUpserted,
    EnrollmentAdded,
    EnrollmentRemoved,
    StaffUpserted,
    StudentEnrolled,
    StudentUpdated,
)
from services.caseload import store
from services.caseload.pages import PageChecks
from services.kit import access
from services.kit.auth import mint
from services.roster.domain import class_id_for, staff_id_for, student_id_for
from tests.support import SECRET, Stack, eventually

pytestmark = pytest.mark.integration

DISTRICT, OTHER = "d-pages", "d-pages-other"
ADMIN = "it.admin@d.example.org"  # each district's first admin, by configuration
TEACHER = "rivera@d.example.org"  # homeroom teacher of 3-401 at E1, in both districts (one email)
COUNSELLOR = "okafor@d.example.org"  # no default level: reads only while granted one
AT = datetime(2026, 9, 1, tzinfo=UTC)


def who(email: str, district: str = DISTRICT) -> dict:
    """An identity-only token, as an SSO identity provider sends it."""
    return {"Authorization": "Bearer " + mint(SECRET, email=email, district_id=district)}


def sid(source_id: str, district: str = DISTRICT) -> str:
    return str(student_id_for(district, source_id))


def student(source_id: str, district: str = DISTRICT, *, given: str = "Ana", grade: str = "03",
            at: datetime = AT) -> StudentEnrolled:
    return StudentEnrolled(district_id=district, occurred_at=at, student_id=student_id_for(district, source_id),
                           source_id=source_id, school_id="E1", grade=grade, given_name=given, family_name=source_id)


def enrolment(cls, district: str, person_id, role: str, source_id: str, at: datetime = AT):
    return cls(district_id=district, occurred_at=at, person_id=person_id, role=role,
               class_id=class_id_for(district, "hr-3-401"), class_source_id="hr-3-401", user_source_id=source_id,
               school_id="E1", **({"primary": True} if cls is EnrollmentAdded else {}))


def district_events(district: str, students: list[str]) -> list:
    events: list = [student(s, district) for s in students]
    events.append(StaffUpserted(district_id=district, occurred_at=AT, staff_id=staff_id_for(district, "t-1"),
                                source_id="t-1", role="teacher", given_name="T", family_name="R", email=TEACHER,
                                school_ids=["E1"], matched=True))
    events.append(StaffUpserted(district_id=district, occurred_at=AT, staff_id=staff_id_for(district, "c-1"),
                                source_id="c-1", role="counselor", given_name="C", family_name="O", email=COUNSELLOR,
                                school_ids=["E1"], matched=True))
    events.append(ClassUpserted(district_id=district, occurred_at=AT, class_id=class_id_for(district, "hr-3-401"),
                                source_id="hr-3-401", school_id="E1", class_type="homeroom", title="3-401",
                                grades=["03"], periods=[]))
    events.append(enrolment(EnrollmentAdded, district, staff_id_for(district, "t-1"), "teacher", "t-1"))
    events += [enrolment(EnrollmentAdded, district, student_id_for(district, s), "student", s) for s in students]
    return events


@pytest.fixture
async def instances(system: Stack):
    """Two instances of the caseload service on one database, each keeping its own pages."""
    await system.prepare("caseload")
    admins = f"{DISTRICT}={ADMIN},{OTHER}={ADMIN}"
    services = [system.service("caseload", CASEFLOW_DISTRICT_ADMINS=admins).start() for _ in range(2)]
    for service in services:
        await service.ready()
    await system.publish_all(district_events(DISTRICT, ["s-1", "s-2"]) + district_events(OTHER, ["o-1"]))
    await system.caught_up("caseload", timeout=90)
    clients = [httpx.AsyncClient(base_url=s.url) for s in services]
    yield clients
    for client in clients:
        await client.aclose()


async def page(client: httpx.AsyncClient, headers: dict, **query) -> dict[str, tuple]:
    """student_id -> (given name, grade, the details of why) on the caller's own page."""
    answer = await client.get("/v1/caseloads/me", headers=headers, params=query)
    assert answer.status_code == 200, answer.text
    return {i["student_id"]: (i["given_name"], i["grade"], tuple(w["detail"] for w in i["why"]))
            for i in answer.json()["items"]}


async def committed(system: Stack, sql: str, *args) -> None:
    """Wait until the caseload service has committed what `sql` checks (true)."""
    conn = await system.db("caseload")
    try:
        async def done():
            return bool(await conn.fetchval(sql, *args))
        await eventually(done, timeout=60, what=sql)
    finally:
        await conn.close()


async def test_a_kept_page_shows_each_change_on_every_instance_from_the_next_request(instances, system: Stack):
    a, b = instances
    me = who(TEACHER)
    first = {sid("s-1"): ("Ana", "03", ("homeroom 3-401",)), sid("s-2"): ("Ana", "03", ("homeroom 3-401",))}
    for client in (a, b):  # each instance keeps the page, twice over (the second read is the kept one)
        assert await page(client, me) == first and await page(client, me) == first
        assert set(await page(client, me, grade="03")) == {sid("s-1"), sid("s-2")}

    # A student's name and grade change (a roster event, applied by whichever instance reads it).
    await system.publish(StudentUpdated(district_id=DISTRICT, occurred_at=AT + timedelta(days=1),
                                        student_id=student_id_for(DISTRICT, "s-1"), source_id="s-1", school_id="E1",
                                        grade="04", given_name="Beatriz", family_name="s-1",
                                        changed=["given_name", "grade"]))
    await committed(system, "SELECT given_name = 'Beatriz' FROM students WHERE student_id = $1",
                    student_id_for(DISTRICT, "s-1"))
    for client in (a, b):
        assert (await page(client, me))[sid("s-1")][:2] == ("Beatriz", "04")
        assert set(await page(client, me, grade="03")) == {sid("s-2")}

    # A student joins the homeroom: a membership added.
    await system.publish_all([student("s-3"), enrolment(EnrollmentAdded, DISTRICT, student_id_for(DISTRICT, "s-3"),
                                                         "student", "s-3", at=AT + timedelta(days=1))])
    await committed(system, "SELECT EXISTS (SELECT 1 FROM memberships WHERE owner_email = $1 AND student_id = $2)",
                    TEACHER, student_id_for(DISTRICT, "s-3"))
    for client in (a, b):
        assert set(await page(client, me)) == {sid("s-1"), sid("s-2"), sid("s-3")}

    # A student leaves it: a membership removed.
    await system.publish(enrolment(EnrollmentRemoved, DISTRICT, student_id_for(DISTRICT, "s-2"), "student", "s-2",
                                   at=AT + timedelta(days=2)))
    await committed(system, "SELECT NOT EXISTS (SELECT 1 FROM memberships WHERE owner_email = $1 AND student_id = $2)",
                    TEACHER, student_id_for(DISTRICT, "s-2"))
    for client in (a, b):
        assert set(await page(client, me)) == {sid("s-1"), sid("s-3")}


async def test_a_revoked_caller_is_refused_at_once_by_every_instance_and_a_renamed_support_shows(instances):
    a, b = instances
    admin, counsellor = who(ADMIN), who(COUNSELLOR)
    made = await a.post("/v1/supports", headers=admin, json={"school_id": "E1", "name": "Tier 2 reading",
                                                             "lead_email": COUNSELLOR})
    assert made.status_code == 201, made.text
    support = made.json()["support_id"]
    assert (await a.post(f"/v1/supports/{support}/students", headers=admin,
                         json={"student_ids": [sid("s-1")]})).status_code == 200
    assert (await b.get("/v1/caseloads/me", headers=counsellor)).status_code == 403  # no level yet
    granted = await b.post("/v1/access/grants", headers=admin,
                           json={"staff_email": COUNSELLOR, "level": "caseload_viewer", "schools": ["E1"]})
    assert granted.status_code == 200, granted.text
    for client in (a, b):  # granted at once too, and each instance keeps the page
        assert await page(client, counsellor) == {sid("s-1"): ("Ana", "03", ('support "Tier 2 reading" lead',))}
        assert await page(client, counsellor) == {sid("s-1"): ("Ana", "03", ('support "Tier 2 reading" lead',))}

    # Renamed on one instance (the membership's detail changes in place): both show it.
    renamed = await a.patch(f"/v1/supports/{support}", headers=admin, json={"name": "Tier 3 reading"})
    assert renamed.status_code == 200, renamed.text
    for client in (b, a):
        assert await page(client, counsellor) == {sid("s-1"): ("Ana", "03", ('support "Tier 3 reading" lead',))}

    # Revoked on one instance: the next request to either is refused, kept page or not.
    revoked = await a.post("/v1/access/revocations", headers=admin,
                           json={"staff_email": COUNSELLOR, "level": "caseload_viewer", "schools": ["E1"]})
    assert revoked.json()["changes"][0]["outcome"] == "revoked", revoked.text
    for client in (b, a):
        assert (await client.get("/v1/caseloads/me", headers=counsellor)).status_code == 403
        assert (await client.get("/v1/caseloads/me", headers=counsellor, params={"limit": 1})).status_code == 403


async def test_one_email_in_two_districts_keeps_two_pages_apart(instances):
    a, b = instances
    ours, theirs = who(TEACHER), who(TEACHER, OTHER)
    for client in (a, b, a, b):
        assert set(await page(client, ours)) == {sid("s-1"), sid("s-2")}
        assert set(await page(client, theirs)) == {sid("o-1", OTHER)}
    # An admin reads the teacher's caseload of their own district only; another district's
    # student answers 404.
    for district, expected in ((DISTRICT, {sid("s-1"), sid("s-2")}), (OTHER, {sid("o-1", OTHER)})):
        answer = await a.get(f"/v1/caseloads/{TEACHER}", headers=who(ADMIN, district))
        assert {i["student_id"] for i in answer.json()["items"]} == expected
    assert (await b.get(f"/v1/students/{sid('o-1', OTHER)}", headers=who(ADMIN))).status_code == 404


# ---------------------------------------------------------------------------- the check itself


async def test_a_transaction_that_began_before_the_page_was_read_and_committed_after_is_seen(service_db):
    """The snapshot a page was read in, not a "newest change" number: a writer that took its
    transaction id before the read (so an older id than a later writer's) and commits after
    it still marks the page changed. Rows are forgotten only below a horizon noted earlier."""
    pool = await service_db("caseload")
    district, owner, student_id = "d-snap", "t@d.example.org", student_id_for("d-snap", "s-1")
    async with pool.acquire() as conn:
        await conn.execute(
            """INSERT INTO students (student_id, district_id, school_id, school_ids, grade, given_name, family_name,
                                     as_of) VALUES ($1, $2, 'E1', '{E1}', '03', 'Ana', 'B', now())""",
            student_id, district)
        await conn.execute(
            """INSERT INTO memberships (owner_email, student_id, reason, source_ref, district_id, school_id, detail)
               VALUES ($1, $2, 'homeroom', 'c-1', $3, 'E1', 'homeroom 3-401')""", owner, student_id, district)
    read_with = dict(district_id=district, owner_email=owner, school_id=None, grade=None, reason=None, after=None,
                     limit=100, schools=None)

    async with pool.acquire() as early, pool.acquire() as reader:
        early_tx = early.transaction()
        await early_tx.start()
        await early.execute("UPDATE students SET given_name = 'Beatriz' WHERE student_id = $1", student_id)
        body, snapshot = await store.caseload_page_read(reader, **read_with)
        assert '"Ana"' in body
        # A later transaction commits first: seen.
        async with pool.acquire() as late:
            await late.execute("UPDATE memberships SET detail = 'homeroom 3-402' WHERE student_id = $1", student_id)
        assert await store.caseload_page_changed(reader, district_id=district, owner_email=owner, snapshot=snapshot)
        body, snapshot = await store.caseload_page_read(reader, **read_with)
        assert '"Ana"' in body and "3-402" in body
        assert not await store.caseload_page_changed(reader, district_id=district, owner_email=owner,
                                                     snapshot=snapshot)
        # The early one (an older transaction id) commits last: seen too.
        await early_tx.commit()
        assert await store.caseload_page_changed(reader, district_id=district, owner_email=owner, snapshot=snapshot)
        body, snapshot = await store.caseload_page_read(reader, **read_with)
        assert '"Beatriz"' in body
        assert not await store.caseload_page_changed(reader, district_id=district, owner_email=owner,
                                                     snapshot=snapshot)
        # Another owner's and another district's changes are not this page's.
        await reader.execute(
            """INSERT INTO memberships (owner_email, student_id, reason, source_ref, district_id, school_id, detail)
               VALUES ('other@d.example.org', $1, 'support', 'x', $2, 'E1', 'x')""", student_id, "d-other")
        assert not await store.caseload_page_changed(reader, district_id=district, owner_email=owner,
                                                     snapshot=snapshot)

        # Forgetting: only rows below a horizon noted before this page was read, so none it
        # could still need; once past, its own rows go too and the check still answers.
        horizon = await store.caseload_page_horizon(reader)
        kept = await reader.fetchval("SELECT count(*) FROM caseload_page_changes")
        assert await store.forget_caseload_page_changes(reader, before=horizon) == kept
        await reader.execute("UPDATE students SET grade = '04' WHERE student_id = $1", student_id)
        assert await store.caseload_page_changed(reader, district_id=district, owner_email=owner, snapshot=snapshot)


async def test_checks_sent_together_each_get_their_own_answer(service_db):
    """Many requests' checks in one query (pages.PageChecks): each answer is its own
    caller's grants and its own owner's page, whatever else shares the query; a check that
    arrives while a query is out goes in the next one."""
    pool = await service_db("caseload")
    district = "d-batch"
    async with pool.acquire() as conn:
        _, fresh = await store.caseload_page_read(conn, district_id=district, owner_email="x", school_id=None,
                                                  grade=None, reason=None, after=None, limit=1, schools=None)
        for n in range(0, 40, 2):  # the even owners' pages change after the snapshot; the even callers hold a level
            await conn.execute("INSERT INTO caseload_page_changes (district_id, owner_email) VALUES ($1, $2)",
                               district, f"owner{n}@d.org")
            await conn.execute(
                """INSERT INTO access_held (grant_id, district_id, staff_email, level, school_id, basis, held, as_of)
                   VALUES (gen_random_uuid(), $1, $2, 'caseload_viewer', $3, 'granted', true, now())""",
                district, f"caller{n}@d.org", f"S{n}")
    checks = PageChecks()
    answers = await asyncio.gather(*(checks.check(pool, district, f"Caller{n}@d.org ", f"owner{n}@d.org", fresh)
                                     for n in range(40)))
    for n, (held, changed) in enumerate(answers):
        assert changed == (n % 2 == 0), n
        assert [(h.level, h.school_id) for h in access.holdings(held)] == ([("caseload_viewer", f"S{n}")]
                                                                            if n % 2 == 0 else []), n
    held, changed = await checks.check(pool, district, "caller1@d.org", "owner1@d.org", None)
    assert changed and held == []  # no kept page: read it
