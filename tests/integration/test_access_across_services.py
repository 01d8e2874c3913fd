"""Access levels assigned in Caseflow reach every service (issue 11; seed 000: staff "can be
assigned an access level"; seed 003: "must have Manage Cases Permissions"), on real Kafka
and PostgreSQL with the roster, caseload and cases services running together.

A caller's token names only who they are (email, district: what an SSO identity provider
sends). What they may do comes from the grants the caseload service publishes on
caseload.access.v1, which the roster and the cases service each keep in their own
projection: a grant opens roster reads, caseloads, point persons, cases and the
dictionary; a revoke closes them again in each service as soon as it has read the revoke
(bench/access_lag.py measures how soon; no test here limits the time)."""

from __future__ import annotations

import time
import uuid
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from contracts import cloudevents
from contracts.caseload import AccessGranted, AccessRevoked
from contracts.cases import FormSubmitted
from contracts.sis import SisStaffUpserted, SisStudentEnrolled
from contracts.topics import CASELOAD_ACCESS
from services.kit.auth import mint
from services.roster.domain import student_id_for
from tests.support import SECRET, Stack, eventually

pytestmark = pytest.mark.integration

A, B = "d-across", "d-across-b"  # two districts; each has a school it calls E1
FIRST_ADMIN = "it.admin@a.example.org"  # A's first district admin, named in configuration
PRINCIPAL = "grace@a.example.org"  # an administrator at A's E1 in the roster: no access by default
EDITOR = "lee@a.example.org"  # an administrator at A's E2 in the roster
DEPUTY = "deputy@a.example.org"  # not in the roster (a district admin may be anyone A names)
TWIN = "sam@shared.example.org"  # on the roster of both districts, at each one's E1
B_ADMIN = "admin@b.example.org"
SETTLE = 60.0  # generous: how long a service may take to read a grant or revoke, never asserted


def who(email: str, district: str = A, roles: list[str] | None = None) -> dict:
    """A token as an SSO identity provider sends it: the person and district, no roles."""
    return {"Authorization": "Bearer " + mint(SECRET, email=email, district_id=district, roles=roles)}


def sid(district: str, source_id: str) -> str:
    return str(student_id_for(district, source_id))


def staff(district: str, source_id: str, email: str, school: str = "E1") -> SisStaffUpserted:
    return SisStaffUpserted(district_id=district, source_id=source_id, role="administrator", given_name="G",
                            family_name=source_id, email=email, school_ids=[school])


def student(district: str, source_id: str, school: str) -> SisStudentEnrolled:
    return SisStudentEnrolled(district_id=district, source_id=source_id, school_id=school, grade="03",
                              given_name="Ana", family_name=f"Reyes-{source_id}")


@dataclass
class Caseflow:
    system: Stack
    roster: httpx.AsyncClient
    caseload: httpx.AsyncClient
    cases: httpx.AsyncClient
    a_case: str  # an open case of A's student at E1
    b_case: str  # an open case of B's student at B's E1


@pytest.fixture(scope="module")
async def caseflow(real_backends):
    """The three services of one system, with two small districts put in through the SIS
    topics (the roster publishes them on to the others) and one open case in each."""
    system = Stack(real_backends)
    async with AsyncExitStack() as stack:
        stack.push_async_callback(system.stop)
        await system.prepare("roster", "caseload", "cases")
        clients = {}
        for name, env in (("roster", {}), ("caseload", {"CASEFLOW_DISTRICT_ADMINS": f"{A}={FIRST_ADMIN}"}),
                          ("cases", {})):
            service = await system.service(name, **env).start().ready()
            clients[name] = await stack.enter_async_context(httpx.AsyncClient(base_url=service.url, timeout=10))
        await system.publish_all([
            staff(A, "p-1", PRINCIPAL), staff(A, "e-1", EDITOR, "E2"), staff(A, "t-1", TWIN), staff(B, "t-1", TWIN),
            student(A, "a-e1", "E1"), student(A, "a-e2", "E2"), student(B, "b-e1", "E1"),
        ], source="tests.sis")
        await system.caught_up("roster", "caseload", "cases", timeout=120)
        a_case = await open_case(system, clients["cases"], who(FIRST_ADMIN), A, "a-e1")
        b_case = await open_case(system, clients["cases"], who(B_ADMIN, B, roles=["district_admin"]), B, "b-e1")
        yield Caseflow(system, clients["roster"], clients["caseload"], clients["cases"], a_case, b_case)


async def open_case(system: Stack, cases: httpx.AsyncClient, admin: dict, district: str, source_id: str) -> str:
    """A district admin turns Submit a Form on; a referral form then opens the student's case."""
    async def enabled():
        return (await cases.put("/v1/dictionary/submit_form", json={"enabled": True}, headers=admin)).status_code == 200

    # A's first admin is a district admin by configuration: the cases service knows once it has read the grant.
    await eventually(enabled, SETTLE, what=f"{district}'s Submit a Form enabled")
    await system.publish(FormSubmitted(district_id=district, occurred_at=datetime.now(UTC) + timedelta(seconds=1),
                                       student_source_id=source_id, form_id="f-1", form_name="Counseling referral"))

    async def opened():
        items = (await cases.get("/v1/cases", params={"person": source_id}, headers=admin)).json()["items"]
        return items[0]["case_id"] if items else None

    return await eventually(opened, SETTLE, what=f"{source_id}'s case")


# ---------------------------------------------------------------------------- helpers


async def change(caseflow: Caseflow, action: str, email: str, level: str, schools: list[str] | None = None) -> None:
    """A's first district admin grants or revokes (identity-only token, by configuration)."""
    body = {"staff_email": email, "level": level}
    body |= {"schools": schools} if schools else {"district_wide": True}
    path = "/v1/access/grants" if action == "grant" else "/v1/access/revocations"
    answer = await caseflow.caseload.post(path, json=body, headers=who(FIRST_ADMIN))
    assert answer.status_code == 200, answer.text
    assert [c["outcome"] for c in answer.json()["changes"]] == ["granted" if action == "grant" else "revoked"]


async def reads(caseflow: Caseflow, caller: dict) -> dict[str, int]:
    """What each service answers the caller's reads of A's student at E1, and its case."""
    student_id = sid(A, "a-e1")
    calls = {
        "roster: students of E1": (caseflow.roster, "/v1/students?school_id=E1"),
        "roster: the student": (caseflow.roster, f"/v1/students/{student_id}"),
        "caseload: my caseload": (caseflow.caseload, "/v1/caseloads/me"),
        "caseload: the student": (caseflow.caseload, f"/v1/students/{student_id}"),
        "caseload: point persons": (caseflow.caseload, f"/v1/students/{student_id}/point-persons"),
        "cases: the case": (caseflow.cases, f"/v1/cases/{caseflow.a_case}"),
        "cases: the timeline": (caseflow.cases, f"/v1/students/{student_id}/timeline"),
    }
    return {what: (await client.get(path, headers=caller)).status_code for what, (client, path) in calls.items()}


NO_ACCESS = {"roster: students of E1": 403, "roster: the student": 403, "caseload: my caseload": 403,
             "caseload: the student": 403, "caseload: point persons": 403, "cases: the case": 404,
             "cases: the timeline": 404}
SCHOOL_ADMIN = dict.fromkeys(NO_ACCESS, 200)


async def until_reads(caseflow: Caseflow, caller: dict, expected: dict[str, int], what: str) -> float:
    """Wait until every service answers as expected; the seconds it took (printed, not asserted)."""
    started, last = time.monotonic(), {}

    async def settled():
        last.update(await reads(caseflow, caller))
        return last == expected

    try:
        await eventually(settled, SETTLE, what=what)
    except AssertionError:
        raise AssertionError(f"{what}: {last}") from None
    took = time.monotonic() - started
    print(f"{what}: {took:.2f} s")
    return took


async def found_cases(caseflow: Caseflow, caller: dict) -> set[str]:
    return {c["case_id"] for c in (await caseflow.cases.get("/v1/cases", headers=caller)).json()["items"]}


# ---------------------------------------------------------------------------- the rules


async def test_an_identity_only_token_gains_access_by_a_grant_and_loses_it_by_a_revoke_in_every_service(
        caseflow: Caseflow):
    principal = who(PRINCIPAL)
    student_id = sid(A, "a-e1")

    # No grant: the roster and caseloads refuse, the cases service finds nothing.
    assert await reads(caseflow, principal) == NO_ACCESS
    assert await found_cases(caseflow, principal) == set()
    assert (await caseflow.caseload.put(f"/v1/students/{student_id}/point-persons/attendance",
                                        json={"owner_email": PRINCIPAL}, headers=principal)).status_code == 403
    assert (await caseflow.cases.post(f"/v1/cases/{caseflow.a_case}/close", json={"reason": "done"},
                                      headers=principal)).status_code == 404

    # School admin and Manage Cases at E1: every service lets them in, as far as E1 goes.
    await change(caseflow, "grant", PRINCIPAL, "school_admin", ["E1"])
    await change(caseflow, "grant", PRINCIPAL, "manage_cases", ["E1"])
    await until_reads(caseflow, principal, SCHOOL_ADMIN, "the grants read by every service")
    assert await reads(caseflow, who(PRINCIPAL.upper())) == SCHOOL_ADMIN  # an email is one person in any case
    listed = (await caseflow.roster.get("/v1/students", headers=principal)).json()["items"]
    assert [s["student_id"] for s in listed] == [student_id]  # E1's student, not E2's
    assert (await caseflow.roster.get(f"/v1/students/{sid(A, 'a-e2')}", headers=principal)).status_code == 404
    assert await found_cases(caseflow, principal) == {caseflow.a_case}

    # They act: a point person (caseload), close and reopen the case and assign a task (cases).
    assigned = await caseflow.caseload.put(f"/v1/students/{student_id}/point-persons/attendance",
                                           json={"owner_email": PRINCIPAL}, headers=principal)
    assert assigned.status_code == 200, assigned.text
    async def closes():  # Manage Cases is its own grant: the cases service may read it a moment later
        answer = await caseflow.cases.post(f"/v1/cases/{caseflow.a_case}/close", json={"reason": "resolved"},
                                           headers=principal)
        assert answer.status_code in (200, 403), answer.text
        return answer.status_code == 200 and answer.json()["status"] == "closed"

    await eventually(closes, SETTLE, what="the case closed by the principal")
    reopened = await caseflow.cases.post(f"/v1/cases/{caseflow.a_case}/reopen", headers=principal)
    assert reopened.status_code == 200 and reopened.json()["status"] == "open", reopened.text
    task = await caseflow.cases.post("/v1/tasks", headers=principal, json={
        "student_id": student_id, "title": "Call home", "assignee_email": PRINCIPAL})
    assert task.status_code == 202 and task.json()["case_id"] == caseflow.a_case, task.text

    # Revoked: each service answers as it did before the grant (403 or 404), nothing found.
    await change(caseflow, "revoke", PRINCIPAL, "school_admin", ["E1"])
    await change(caseflow, "revoke", PRINCIPAL, "manage_cases", ["E1"])
    await until_reads(caseflow, principal, NO_ACCESS, "the revokes read by every service")
    assert await found_cases(caseflow, principal) == set()
    dashboard = (await caseflow.cases.get("/v1/dashboard", headers=principal)).json()
    assert (dashboard["open_cases"], dashboard["by_school"]) == (0, []), dashboard
    assert (await caseflow.caseload.delete(f"/v1/students/{student_id}/point-persons/attendance",
                                           headers=principal)).status_code == 403
    assert (await caseflow.cases.post(f"/v1/cases/{caseflow.a_case}/close", json={"reason": "again"},
                                      headers=principal)).status_code == 404
    assert (await caseflow.cases.post("/v1/tasks", headers=principal, json={
        "student_id": student_id, "title": "Call home", "assignee_email": PRINCIPAL})).status_code == 404

    # Granted again (the same grant, a new event): back in every service.
    await change(caseflow, "grant", PRINCIPAL, "school_admin", ["E1"])
    await change(caseflow, "grant", PRINCIPAL, "manage_cases", ["E1"])
    await until_reads(caseflow, principal, SCHOOL_ADMIN, "the grants given again read by every service")
    await change(caseflow, "revoke", PRINCIPAL, "school_admin", ["E1"])
    await change(caseflow, "revoke", PRINCIPAL, "manage_cases", ["E1"])
    await until_reads(caseflow, principal, NO_ACCESS, "the second revokes read by every service")


async def test_a_caseload_editor_by_grant_reads_their_caseload_and_acts_on_it_until_revoked(caseflow: Caseflow):
    """The caseload service owns the grants: it applies a grant or revoke in the transaction
    that publishes it, so its own answers change at once; the cases service's follow."""
    editor, student_id = who(EDITOR), sid(A, "a-e2")
    point_person = f"/v1/students/{student_id}/point-persons"
    # A district admin makes them the student's academic point person: on their caseload.
    made = await caseflow.caseload.put(f"{point_person}/academic", json={"owner_email": EDITOR},
                                       headers=who(FIRST_ADMIN))
    assert made.status_code == 200, made.text
    assert (await caseflow.caseload.get("/v1/caseloads/me", headers=editor)).status_code == 403

    await change(caseflow, "grant", EDITOR, "caseload_editor", ["E2"])
    mine = (await caseflow.caseload.get("/v1/caseloads/me", headers=editor)).json()["items"]
    assert [s["student_id"] for s in mine] == [student_id]
    acted = await caseflow.caseload.put(f"{point_person}/attendance", json={"owner_email": EDITOR}, headers=editor)
    assert acted.status_code == 200, acted.text
    assert (await caseflow.roster.get("/v1/students", headers=editor)).status_code == 403  # roster reads: admins

    async def timeline(code: int):
        return (await caseflow.cases.get(f"/v1/students/{student_id}/timeline", headers=editor)).status_code == code

    await eventually(lambda: timeline(200), SETTLE, what="the editor's school's student in the cases service")

    await change(caseflow, "revoke", EDITOR, "caseload_editor", ["E2"])
    assert (await caseflow.caseload.get("/v1/caseloads/me", headers=editor)).status_code == 403
    assert (await caseflow.caseload.delete(f"{point_person}/attendance", headers=editor)).status_code == 403
    await eventually(lambda: timeline(404), SETTLE, what="the revoke in the cases service")


async def test_a_district_admin_by_grant_reads_the_district_and_changes_the_dictionary_until_revoked(
        caseflow: Caseflow):
    deputy = who(DEPUTY)

    async def answers() -> tuple[int, int, int]:
        dictionary = await caseflow.cases.put("/v1/dictionary/submit_file", json={"enabled": True}, headers=deputy)
        students = await caseflow.roster.get("/v1/students", headers=deputy)
        access = await caseflow.caseload.get("/v1/access", headers=deputy)
        return dictionary.status_code, students.status_code, access.status_code

    assert await answers() == (403, 403, 403)
    await change(caseflow, "grant", DEPUTY, "district_admin")

    async def admitted():
        return await answers() == (200, 200, 200)

    await eventually(admitted, SETTLE, what="the deputy admitted by every service")
    listed = (await caseflow.roster.get("/v1/students", headers=deputy)).json()["items"]
    assert {s["student_id"] for s in listed} == {sid(A, "a-e1"), sid(A, "a-e2")}  # the whole district, only A
    history = (await caseflow.cases.get("/v1/dictionary", headers=deputy)).json()["history"]
    assert (history[0]["trigger_kind"], history[0]["enabled"], history[0]["changed_by"]) == \
        ("submit_file", True, DEPUTY)

    await change(caseflow, "revoke", DEPUTY, "district_admin")

    async def refused():
        return await answers() == (403, 403, 403)

    await eventually(refused, SETTLE, what="the deputy refused by every service")


async def test_a_grant_in_one_district_gives_that_email_nothing_in_another(caseflow: Caseflow):
    in_a, in_b = who(TWIN, A), who(TWIN, B)
    b_student = sid(B, "b-e1")
    await change(caseflow, "grant", TWIN, "school_admin", ["E1"])
    await change(caseflow, "grant", TWIN, "manage_cases", ["E1"])
    await until_reads(caseflow, in_a, SCHOOL_ADMIN, "the grants in A read by every service")
    await caseflow.system.caught_up("roster", "cases")  # B's side has read them too: what is absent stays absent

    # In B, where they hold nothing, at the school B also calls E1: refused, or nothing there.
    assert (await caseflow.roster.get("/v1/students", headers=in_b)).status_code == 403
    assert (await caseflow.roster.get(f"/v1/students/{b_student}", headers=in_b)).status_code == 403
    assert (await caseflow.caseload.get(f"/v1/students/{b_student}", headers=in_b)).status_code == 403
    assert await found_cases(caseflow, in_b) == set()
    assert (await caseflow.cases.get(f"/v1/cases/{caseflow.b_case}", headers=in_b)).status_code == 404
    assert (await caseflow.cases.post(f"/v1/cases/{caseflow.b_case}/close", json={"reason": "not mine"},
                                      headers=in_b)).status_code == 404
    assert (await caseflow.cases.get(f"/v1/students/{b_student}/timeline", headers=in_b)).status_code == 404
    # From A, B's student and case are not there either.
    assert (await caseflow.roster.get(f"/v1/students/{b_student}", headers=in_a)).status_code == 404
    assert (await caseflow.cases.get(f"/v1/cases/{caseflow.b_case}", headers=in_a)).status_code == 404
    assert await found_cases(caseflow, in_a) == {caseflow.a_case}
    # B's own admin sees B's case, as before.
    assert await found_cases(caseflow, who(B_ADMIN, B, roles=["district_admin"])) == {caseflow.b_case}


async def test_an_access_event_delivered_twice_has_one_effect_in_each_services_projection(caseflow: Caseflow):
    """A grant, its revoke, then the grant again as it was (same event id: a redelivery):
    the inbox skips it, and the revoke stands in the roster and the cases service."""
    email, grant_id = "replayed@a.example.org", uuid.uuid4()
    at = datetime.now(UTC)
    granted = AccessGranted(district_id=A, occurred_at=at, grant_id=grant_id, staff_email=email,
                            level="school_admin", school_id="E1", basis="granted", granted_by=FIRST_ADMIN)
    revoked = AccessRevoked(district_id=A, occurred_at=at + timedelta(seconds=1), grant_id=grant_id,
                            staff_email=email, level="school_admin", school_id="E1", basis="granted",
                            revoked_by=FIRST_ADMIN, reason="revoked by an admin")
    caller = who(email)
    await caseflow.system.publish_to(CASELOAD_ACCESS, granted)

    async def roster_reads() -> bool:
        return (await caseflow.roster.get("/v1/students", headers=caller)).status_code == 200

    await eventually(roster_reads, SETTLE, what="the grant in the roster")
    await caseflow.system.publish_to(CASELOAD_ACCESS, revoked)
    await caseflow.system.publish_to(CASELOAD_ACCESS, granted)  # the redelivery
    await caseflow.system.caught_up("roster", "cases")

    assert (await caseflow.roster.get("/v1/students", headers=caller)).status_code == 403
    assert await found_cases(caseflow, caller) == set()
    for service in ("roster", "cases"):
        conn = await caseflow.system.db(service)
        try:
            held = await conn.fetch("SELECT grant_id, held FROM access_held WHERE staff_email = $1", email)
            claimed = await conn.fetch('SELECT event_id, "offset" FROM inbox WHERE consumer = $1 '
                                       'AND event_id = ANY($2) ORDER BY "offset"', f"caseflow.{service}.access",
                                       [granted.event_id, revoked.event_id])
        finally:
            await conn.close()
        assert [(r["grant_id"], r["held"]) for r in held] == [(grant_id, False)], service
        # The grant was claimed at its first delivery, before the revoke: the redelivery was skipped.
        assert [r["event_id"] for r in claimed] == [granted.event_id, revoked.event_id], service


async def test_a_poison_record_on_the_access_topic_is_dead_lettered_and_blocks_nothing(caseflow: Caseflow):
    email = "after.poison@a.example.org"
    system = caseflow.system
    good = AccessGranted(district_id=A, grant_id=uuid.uuid4(), staff_email=email, level="school_admin",
                         school_id="E1", basis="granted", granted_by=FIRST_ADMIN)
    # A body that is not JSON, under an access event's headers and the good one's key (its
    # partition: the good one waits behind it), then the good one.
    poison_headers = cloudevents.headers_for(good.model_copy(update={"event_id": uuid.uuid4()}), "tests")
    await system.produce_raw(CASELOAD_ACCESS.name, b"{not json", key=email.encode(), headers=poison_headers)
    await system.publish_to(CASELOAD_ACCESS, good)

    async def admitted() -> bool:
        return (await caseflow.roster.get("/v1/students", headers=who(email))).status_code == 200 and \
            (await caseflow.cases.get(f"/v1/cases/{caseflow.a_case}", headers=who(email))).status_code == 200

    await eventually(admitted, SETTLE, what="the grant after the poison, in the roster and the cases service")
    await system.caught_up("roster", "cases")
    dead = await system.records(CASELOAD_ACCESS.dead_letter, key=email.encode())
    assert sorted(r.value for r in dead) == [b"{not json", b"{not json"]  # one from each service
    reasons = [dict(r.headers)["dlt_reason"].decode() for r in dead]
    assert all(reason.startswith("body is not JSON") for reason in reasons), reasons
