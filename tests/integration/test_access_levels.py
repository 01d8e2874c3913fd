"""Access levels assigned in Caseflow (seed 000: "can be assigned an access level of
Caseload Viewer or Caseload Editor"; seed 003: "must have Manage Cases Permissions"), on
real Kafka and PostgreSQL: grants, revokes and batches with the rule each refusal names,
the roster default and its withdrawal, configuration's first district admin, history,
what a caller may do and why, and districts kept apart."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from contracts.caseload import AccessGranted, AccessRevoked
from contracts.roster import StaffDeactivated, StaffUpserted, StudentEnrolled
from contracts.topics import CASELOAD_ACCESS
from services.kit.auth import mint
from services.roster.domain import staff_id_for, student_id_for
from tests.support import SECRET, Stack, eventually

pytestmark = pytest.mark.integration

DISTRICT, OTHER = "d-access", "d-access-other"
FIRST_ADMIN = "it.admin@d.example.org"  # named in configuration
TEACHER = "rivera@d.example.org"  # a teacher at E1 and M1
COUNSELLOR = "okafor@d.example.org"  # a counselor at H1
PRINCIPAL = "principal.e1@d.example.org"  # school admin of E1 (by grant)
AT = datetime(2026, 9, 1, tzinfo=UTC)
GRANTED = AccessGranted.model_fields["event_type"].default
REVOKED = AccessRevoked.model_fields["event_type"].default


async def published(system: Stack, email: str) -> list[dict]:
    """What caseload.access.v1 carries for this staff member (keyed by their email)."""
    return [json.loads(r.value) for r in await system.records(CASELOAD_ACCESS.name, key=email.encode())]


def who(email: str, district: str = DISTRICT, roles: list[str] | None = None, schools: list[str] | None = None):
    """A token as an SSO identity provider sends it: the person and district, no roles."""
    return {"Authorization": "Bearer " + mint(SECRET, email=email, district_id=district, roles=roles,
                                               schools=schools)}


def staff(source_id: str, email: str | None, role: str, schools: list[str], at: datetime = AT) -> StaffUpserted:
    return StaffUpserted(district_id=DISTRICT, occurred_at=at, staff_id=staff_id_for(DISTRICT, source_id),
                         source_id=source_id, role=role, given_name="G", family_name=source_id, email=email,
                         school_ids=schools, matched=email is not None)


@pytest.fixture
async def caseload(system: Stack):
    await system.prepare("caseload")
    service = system.service("caseload", CASEFLOW_DISTRICT_ADMINS=f"{DISTRICT}={FIRST_ADMIN.upper()}").start()
    await service.ready()
    await system.publish_all([
        staff("t-1", TEACHER, "teacher", ["E1", "M1"]),
        staff("c-1", COUNSELLOR, "counselor", ["H1"]),
        staff("p-1", PRINCIPAL, "administrator", ["E1"]),
        StudentEnrolled(district_id=DISTRICT, occurred_at=AT, student_id=student_id_for(DISTRICT, "s-1"),
                        source_id="s-1", school_id="E1", grade="03", given_name="A", family_name="B"),
    ])
    await system.caught_up("caseload", timeout=90)
    service.client = httpx.AsyncClient(base_url=service.url)
    yield service
    await service.client.aclose()


async def holders(client, **query) -> set[tuple]:
    body = (await client.get("/v1/access", params=query, headers=who(FIRST_ADMIN))).json()
    return {(i["staff_email"], i["level"], i["school_id"], i["basis"]) for i in body["items"]}


async def test_configuration_names_the_first_district_admin_who_needs_no_roles_in_the_token(caseload):
    me = (await caseload.client.get("/v1/access/me", headers=who(FIRST_ADMIN))).json()
    assert me["district_wide"] and me["email"] == FIRST_ADMIN
    assert [(lv["level"], lv["district_wide"], lv["basis"]) for lv in me["levels"]] == \
        [("district_admin", True, "configuration")]
    # Another district's admin of the same name holds nothing there.
    assert (await caseload.client.get("/v1/access", headers=who(FIRST_ADMIN, OTHER))).status_code == 403


async def test_a_teacher_matched_to_an_email_holds_caseload_viewer_at_their_schools_by_the_roster_default(
        caseload, system: Stack):
    client = caseload.client
    assert {(e, lv, s, b) for e, lv, s, b in await holders(client) if e == TEACHER} == {
        (TEACHER, "caseload_viewer", "E1", "roster_default"), (TEACHER, "caseload_viewer", "M1", "roster_default")}
    # A counselor and an administrator get nothing by default: the built-in default is for teachers.
    assert not {h for h in await holders(client) if h[0] in (COUNSELLOR, PRINCIPAL)}
    # With only their identity, the teacher reads their caseload.
    assert (await client.get("/v1/caseloads/me", headers=who(TEACHER))).status_code == 200
    me = (await client.get("/v1/access/me", headers=who(TEACHER.upper()))).json()
    assert {(lv["level"], lv["school_id"], lv["basis"]) for lv in me["levels"]} == {
        ("caseload_viewer", "E1", "roster_default"), ("caseload_viewer", "M1", "roster_default")}
    # Published, keyed by the staff member's email, for every service's projection.
    granted = [r for r in await published(system, TEACHER) if r["event_type"] == GRANTED]
    assert {(g["level"], g["school_id"], g["basis"]) for g in granted} >= {
        ("caseload_viewer", "E1", "roster_default"), ("caseload_viewer", "M1", "roster_default")}


async def test_leaving_the_roster_withdraws_the_default_and_keeps_an_admins_grant_until_revoked(
        caseload, system: Stack):
    client = caseload.client
    granted = await client.post("/v1/access/grants", headers=who(FIRST_ADMIN),
                                json={"staff_email": TEACHER, "level": "caseload_editor", "schools": ["E1"]})
    assert granted.status_code == 200, granted.text
    assert granted.json()["changes"] == [{"staff_email": TEACHER, "level": "caseload_editor", "school_id": "E1",
                                          "outcome": "granted"}]
    # Moved to E1 only: the default at M1 goes; then they leave the roster.
    await system.publish(staff("t-1", TEACHER, "teacher", ["E1"], at=AT + timedelta(days=1)))
    async def left_m1():
        return ("caseload_viewer", "M1", "roster_default") not in await _levels(client, TEACHER)
    await eventually(left_m1, what="the default at M1 withdrawn")
    assert await _levels(client, TEACHER) == {("caseload_viewer", "E1", "roster_default"),
                                              ("caseload_editor", "E1", "granted")}
    await system.publish(StaffDeactivated(district_id=DISTRICT, occurred_at=AT + timedelta(days=2),
                                          staff_id=staff_id_for(DISTRICT, "t-1"), source_id="t-1"))

    async def default_gone():
        return await _levels(client, TEACHER) == {("caseload_editor", "E1", "granted")}
    await eventually(default_gone, what="the roster default withdrawn on deactivation")
    history = (await client.get("/v1/access/history", params={"staff_email": TEACHER},
                                headers=who(FIRST_ADMIN))).json()["items"]
    revoked = [h for h in history if h["change"] == "revoked" and h["basis"] == "roster_default"]
    assert {(h["school_id"], h["reason"]) for h in revoked} >= {("E1", "left the roster")}
    # The admin's grant stays until an admin revokes it.
    revoke = await client.post("/v1/access/revocations", headers=who(FIRST_ADMIN),
                               json={"staff_email": TEACHER, "level": "caseload_editor", "schools": ["E1"]})
    assert revoke.json()["changes"][0]["outcome"] == "revoked"
    assert await _levels(client, TEACHER) == set()
    assert (await client.get("/v1/caseloads/me", headers=who(TEACHER))).status_code == 403
    assert any(r["event_type"] == REVOKED and r["revoked_by"] == FIRST_ADMIN and r["level"] == "caseload_editor"
               for r in await published(system, TEACHER))


async def _levels(client, email: str) -> set[tuple]:
    body = (await client.get("/v1/access", params={"staff_email": email}, headers=who(FIRST_ADMIN))).json()
    return {(i["level"], i["school_id"], i["basis"]) for i in body["items"]}


async def test_a_school_admin_assigns_caseload_levels_at_their_own_schools_only(caseload):
    client = caseload.client
    made = await client.post("/v1/access/grants", headers=who(FIRST_ADMIN),
                             json={"staff_email": PRINCIPAL, "level": "school_admin", "schools": ["E1"]})
    assert made.status_code == 200, made.text
    principal = who(PRINCIPAL)

    async def refused(body: dict, code: int) -> str:
        answer = await client.post("/v1/access/grants", headers=principal, json=body)
        assert answer.status_code == code, answer.text
        return answer.json()["errors"][0]["rule"]

    assert (await client.post("/v1/access/grants", headers=principal, json={
        "staff_email": TEACHER, "level": "caseload_editor", "schools": ["E1"]})).json()["changes"][0]["outcome"] \
        == "granted"
    assert await refused({"staff_email": TEACHER, "level": "caseload_editor", "schools": ["M1"]}, 403) == \
        "outside_your_schools"
    assert await refused({"staff_email": TEACHER, "level": "school_admin", "schools": ["E1"]}, 403) == \
        "needs_district_admin"
    assert await refused({"staff_email": TEACHER, "level": "manage_cases", "district_wide": True}, 403) == \
        "needs_district_admin"
    assert await refused({"staff_email": "nobody@d.example.org", "level": "caseload_viewer", "schools": ["E1"]},
                         422) == "unknown_staff_member"
    # A teacher with only a viewer's access assigns nothing.
    answer = await client.post("/v1/access/grants", headers=who(TEACHER),
                               json={"staff_email": TEACHER, "level": "caseload_editor", "schools": ["E1"]})
    assert answer.status_code == 403 and answer.json()["errors"][0]["rule"] == "not_an_admin"
    # The school admin sees the grants at their schools (and the district-wide ones), not M1's.
    seen = (await client.get("/v1/access", headers=principal)).json()["items"]
    assert {i["school_id"] for i in seen} <= {"E1", None} and any(i["level"] == "caseload_editor" for i in seen)


async def test_a_batch_applies_in_order_all_or_nothing_and_lists_every_refusal(caseload):
    client = caseload.client
    admin = who(FIRST_ADMIN)
    batch = [
        {"action": "grant", "staff_email": COUNSELLOR, "level": "manage_cases", "school_id": "H1"},
        {"action": "grant", "staff_email": COUNSELLOR, "level": "caseload_editor", "school_id": "H1"},
        {"action": "revoke", "staff_email": TEACHER, "level": "caseload_viewer", "school_id": "E1"},  # a default
        {"action": "grant", "staff_email": TEACHER, "level": "district_admin", "school_id": "E1"},
    ]
    answer = await client.post("/v1/access/batch", headers=admin, json={"changes": batch})
    assert answer.status_code == 422, answer.text
    assert [(e["index"], e["rule"]) for e in answer.json()["errors"]] == [
        (2, "roster_default"), (3, "district_admin_is_district_wide")]
    assert not {h for h in await holders(client) if h[0] == COUNSELLOR}, "nothing applied"

    answer = await client.post("/v1/access/batch", headers=admin, json={"changes": batch[:2] + [
        {"action": "revoke", "staff_email": COUNSELLOR, "level": "caseload_editor", "school_id": "H1"},
        {"action": "grant", "staff_email": COUNSELLOR, "level": "manage_cases", "school_id": "H1"}]})
    assert answer.status_code == 200, answer.text
    assert [c["outcome"] for c in answer.json()["changes"]] == ["granted", "granted", "revoked", "unchanged"]
    assert {h for h in await holders(client) if h[0] == COUNSELLOR} == {(COUNSELLOR, "manage_cases", "H1", "granted")}
    history = (await client.get("/v1/access/history", params={"staff_email": COUNSELLOR}, headers=admin)).json()
    assert [(h["change"], h["level"], h["changed_by"]) for h in history["items"]] == [
        ("revoked", "caseload_editor", FIRST_ADMIN), ("granted", "caseload_editor", FIRST_ADMIN),
        ("granted", "manage_cases", FIRST_ADMIN)]


async def test_the_last_district_admin_stays_and_configuration_is_changed_in_configuration(caseload):
    client, admin = caseload.client, who(FIRST_ADMIN)
    answer = await client.post("/v1/access/revocations", headers=admin,
                               json={"staff_email": FIRST_ADMIN, "level": "district_admin", "district_wide": True})
    assert answer.status_code == 422 and answer.json()["errors"][0]["rule"] == "configuration"
    deputy = "deputy.it@d.example.org"  # not in the roster: a district admin may be anyone the district names
    assert (await client.post("/v1/access/grants", headers=admin, json={
        "staff_email": deputy, "level": "district_admin", "district_wide": True})).status_code == 200
    # The deputy may remove their own grant only while another district admin remains.
    answer = await client.post("/v1/access/revocations", headers=who(deputy),
                               json={"staff_email": deputy, "level": "district_admin", "district_wide": True})
    assert answer.json()["changes"][0]["outcome"] == "revoked"
    assert (await client.get("/v1/access", headers=who(deputy))).status_code == 403


async def test_roster_defaults_are_the_districts_to_set_and_apply_to_everyone_at_once(caseload):
    client, admin = caseload.client, who(FIRST_ADMIN)
    refused = await client.put("/v1/access/defaults", headers=who(TEACHER), json={"teacher": ["caseload_editor"]})
    assert refused.status_code == 403
    answer = await client.put("/v1/access/defaults", headers=admin,
                              json={"teacher": ["caseload_editor"], "counselor": ["caseload_viewer", "manage_cases"]})
    assert answer.status_code == 200, answer.text
    assert answer.json()["defaults"]["teacher"] == ["caseload_editor"] and answer.json()["granted"] == 4
    assert answer.json()["revoked"] == 2
    assert {h[1:] for h in await holders(client) if h[0] in (TEACHER, COUNSELLOR)} == {
        ("caseload_editor", "E1", "roster_default"), ("caseload_editor", "M1", "roster_default"),
        ("caseload_viewer", "H1", "roster_default"), ("manage_cases", "H1", "roster_default")}
    bad = await client.put("/v1/access/defaults", headers=admin, json={"teacher": ["district_admin"]})
    assert bad.status_code == 422 and bad.json()["detail"]["rule"] == "not_a_default_level"


async def test_another_districts_admin_neither_sees_nor_changes_a_districts_assignments(caseload):
    client = caseload.client
    other_admin = who("admin@other.example.org", OTHER, roles=["district_admin"])
    seen = (await client.get("/v1/access", headers=other_admin)).json()["items"]
    assert seen == []
    # Revoking "our" teacher's access from the other district reaches nothing of ours.
    answer = await client.post("/v1/access/revocations", headers=other_admin,
                               json={"staff_email": TEACHER, "level": "caseload_viewer", "schools": ["E1"]})
    assert answer.json()["changes"][0]["outcome"] == "unchanged"
    # Granting to our teacher's email there needs them in that district's roster.
    answer = await client.post("/v1/access/grants", headers=other_admin,
                               json={"staff_email": TEACHER, "level": "caseload_editor", "schools": ["E1"]})
    assert answer.status_code == 422 and answer.json()["errors"][0]["rule"] == "unknown_staff_member"
    assert (TEACHER, "caseload_viewer", "E1", "roster_default") in await holders(client)


async def test_the_command_line_makes_a_districts_first_admin_who_then_grants(caseload, system: Stack, monkeypatch,
                                                                              capsys):
    import asyncio

    from services import cli

    newcomer, district = "it@new-district.example.org", "d-access-new"
    monkeypatch.setattr(cli, "_ENV", None)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", system.backends.kafka)
    monkeypatch.setenv("CASEFLOW_TOPIC_PREFIX", system.prefix)
    monkeypatch.setenv("CASEFLOW_CASELOAD_DATABASE_URL", system.database_url("caseload"))
    argv = ["access", "grant-district-admin", "--district", district, "--email", newcomer.upper()]
    assert await asyncio.to_thread(cli.main, argv) == 0
    assert capsys.readouterr().out.strip() == f"{newcomer} district_admin of {district}: granted"
    assert await asyncio.to_thread(cli.main, argv) == 0
    assert capsys.readouterr().out.strip().endswith(": unchanged")
    me = (await caseload.client.get("/v1/access/me", headers=who(newcomer, district))).json()
    assert [(lv["level"], lv["basis"], lv["granted_by"].startswith("command line")) for lv in me["levels"]] == \
        [("district_admin", "granted", True)]
    # Published through the service's outbox like any grant (one event: the second run changed nothing).
    await eventually(lambda: published(system, newcomer), what="the grant published")
    assert [r["event_type"] for r in await published(system, newcomer)] == [GRANTED]


async def test_a_grant_names_a_school_of_the_roster_and_a_district_admin_may_hold_other_levels(caseload):
    client, admin = caseload.client, who(FIRST_ADMIN)
    typo = await client.post("/v1/access/grants", headers=admin,
                             json={"staff_email": TEACHER, "level": "caseload_editor", "schools": ["E9"]})
    assert typo.status_code == 422 and typo.json()["errors"][0]["rule"] == "unknown_school"
    # The configured district admin is not in the roster, yet may take Manage Cases (the
    # transfer portal needs it); someone neither in the roster nor an admin may not.
    mine = await client.post("/v1/access/grants", headers=admin,
                             json={"staff_email": FIRST_ADMIN, "level": "manage_cases", "district_wide": True})
    assert mine.status_code == 200 and mine.json()["changes"][0]["outcome"] == "granted"
    stranger = await client.post("/v1/access/grants", headers=admin,
                                 json={"staff_email": "x@d.example.org", "level": "manage_cases", "schools": ["E1"]})
    assert stranger.json()["errors"][0]["rule"] == "unknown_staff_member"
