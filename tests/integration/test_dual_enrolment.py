"""Dual enrolment in the caseload service, on real Kafka and PostgreSQL: a student enrolled
in two schools belongs to both; staff of each see them, find them on caseloads, act on
them; a provider authorised at either may serve them. The issue's example: stu-0007,
enrolled at 02M104 and 02M475, takes Algebra I at 02M475."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import httpx
import pytest

from contracts.roster import ClassUpserted, EnrollmentAdded, StaffUpserted, StudentEnrolled, StudentUpdated
from contracts.special_education import FirstAttendanceRecorded, MandateRecorded
from services.kit.auth import mint
from services.roster.domain import class_id_for, staff_id_for, student_id_for
from tests.support import SECRET, Stack, eventually

pytestmark = pytest.mark.integration

DISTRICT = "d-dual"
WEI = "wei.chen1@schools.example.org"  # teaches Algebra I, section ALG1-01, at 02M475
AISHA = "aisha.rahman1@schools.example.org"  # teaches Mathematics 7, section MATH7-01, at 02M104
COUNSELLOR = "okafor@schools.example.org"
SPEECH = "speech.provider@agency.example.org"
T0 = datetime(2026, 9, 1, tzinfo=UTC)


def sid(source_id: str) -> str:
    return str(student_id_for(DISTRICT, source_id))


def bearer(email: str, roles: list[str], schools: list[str] | None = None) -> dict:
    return {"Authorization": "Bearer " + mint(SECRET, email=email, district_id=DISTRICT, schools=schools or [],
                                               roles=roles)}


ADMIN_475 = bearer("principal.475@schools.example.org", ["school_admin"], ["02M475"])
ADMIN_104 = bearer("principal.104@schools.example.org", ["school_admin"], ["02M104"])
ADMIN_001 = bearer("principal.001@schools.example.org", ["school_admin"], ["02M001"])
DISTRICT_ADMIN = bearer("admin@schools.example.org", ["district_admin"])


def stu7(school_ids: list[str] | None, at: datetime = T0, updated: bool = False):
    fields = dict(district_id=DISTRICT, occurred_at=at, student_id=student_id_for(DISTRICT, "stu-0007"),
                  source_id="stu-0007", school_id="02M104", grade="07", given_name="G", family_name="F",
                  school_ids=school_ids)
    return StudentUpdated(**fields, changed=["school_ids"]) if updated else StudentEnrolled(**fields)


def roster_events() -> list:
    at = dict(district_id=DISTRICT, occurred_at=T0)
    events: list = [stu7(["02M104", "02M475"]),
                    # a 9th grader at 02M475 alone: the school serves high school grades
                    StudentEnrolled(student_id=student_id_for(DISTRICT, "stu-0010"), source_id="stu-0010",
                                    school_id="02M475", grade="09", given_name="G", family_name="F", **at)]
    for n, (email, school) in enumerate([(WEI, "02M475"), (AISHA, "02M104"), (COUNSELLOR, "02M475")]):
        events.append(StaffUpserted(staff_id=staff_id_for(DISTRICT, f"stf-{n}"), source_id=f"stf-{n}",
                                    role="teacher", given_name="T", family_name=str(n), email=email,
                                    school_ids=[school], matched=True, **at))
    for source, school, code, teacher, students in [
            ("cls-02M475-ALG1-01", "02M475", "ALG1-01", "stf-0", ["stu-0007", "stu-0010"]),
            ("cls-02M104-MATH7-01", "02M104", "MATH7-01", "stf-1", ["stu-0007"])]:
        class_id = class_id_for(DISTRICT, source)
        events.append(ClassUpserted(class_id=class_id, source_id=source, school_id=school, class_type="scheduled",
                                    title=code, class_code=code, grades=["07", "09"], periods=["1"], **at))
        people = [(staff_id_for(DISTRICT, teacher), "teacher", teacher)] + [
            (student_id_for(DISTRICT, s), "student", s) for s in students]
        events += [EnrollmentAdded(person_id=person, role=role, class_id=class_id, class_source_id=source,
                                   user_source_id=user, school_id=school, primary=role == "teacher", **at)
                   for person, role, user in people]
    return events


async def caseload(client, owner: str, headers, **query) -> dict[str, dict]:
    body = (await client.get(f"/v1/caseloads/{owner}", params=query, headers=headers)).json()
    return {item["student_id"]: item for item in body["items"]}


async def test_a_student_enrolled_in_two_schools_belongs_to_both(system: Stack):
    await system.prepare("caseload")
    service = await system.service("caseload").start().ready()
    await system.publish_all(roster_events())
    seven = sid("stu-0007")
    async with httpx.AsyncClient(base_url=service.url) as client:
        async def on_both_caseloads():
            wei = await caseload(client, WEI, DISTRICT_ADMIN)
            aisha = await caseload(client, AISHA, DISTRICT_ADMIN)
            return (wei, aisha) if seven in wei and seven in aisha else None

        await eventually(on_both_caseloads, timeout=90, what="stu-0007 on both section teachers' caseloads")
        # ... and the rest of the roster: the counsellor acted on below is another staff
        # member, keyed apart from the two teachers.
        await system.caught_up("caseload")

        # The school admin of 02M475 reads the student (not 404) and finds them on the
        # caseload of the section teacher, the school filter included.
        answer = await client.get(f"/v1/students/{seven}", headers=ADMIN_475)
        assert answer.status_code == 200
        assert answer.json()["school_id"] == "02M104" and answer.json()["school_ids"] == ["02M104", "02M475"]
        wei = await caseload(client, WEI, ADMIN_475)
        assert [w["detail"] for w in wei[seven]["why"]] == ["section ALG1-01"]
        assert seven in await caseload(client, WEI, ADMIN_475, school_id="02M475")
        assert seven in await caseload(client, AISHA, ADMIN_475)  # a student of 02M475 on any caseload
        listed = await client.get(f"/v1/students/{seven}/caseloads", headers=ADMIN_475)
        assert listed.status_code == 200
        assert {c["owner_email"] for c in listed.json()["caseloads"]} == {WEI, AISHA}
        # ... and so does the admin of the home school; a third school's sees nothing.
        assert (await client.get(f"/v1/students/{seven}", headers=ADMIN_104)).status_code == 200
        assert (await client.get(f"/v1/students/{seven}", headers=ADMIN_001)).status_code == 404
        assert seven not in await caseload(client, WEI, ADMIN_001)

        # The section's membership belongs to 02M475, the class's school, on the change feed too.
        changes = (await client.get("/v1/caseload-changes", headers=ADMIN_475)).json()["items"]
        assert {(c["owner_email"], c["school_id"]) for c in changes if c["student_id"] == seven} == {
            (WEI, "02M475")}

        # The admin of 02M475 acts on the student: a Regents point person (a high school type,
        # available through 02M475), a support of 02M475, in one batch each.
        batch = await client.post("/v1/batch-actions", headers=ADMIN_475, json={
            "action": "assign_point_person", "type": "regents", "owner_email": COUNSELLOR, "student_ids": [seven]})
        assert batch.status_code == 200, batch.text
        support = (await client.post("/v1/supports", headers=ADMIN_475, json={
            "school_id": "02M475", "name": "Tier 2 math", "lead_email": COUNSELLOR})).json()["support_id"]
        added = await client.post(f"/v1/supports/{support}/students", headers=ADMIN_475,
                                  json={"student_ids": [seven]})
        assert added.status_code == 200, added.text
        assert (await client.post("/v1/batch-actions", headers=ADMIN_001, json={
            "action": "assign_point_person", "type": "attendance", "owner_email": COUNSELLOR,
            "student_ids": [seven]})).json()["errors"][0]["rule"] == "not_found"

        # A provider authorised at 02M475 alone serves the student: the first attendance applies.
        assert (await client.put(f"/v1/providers/{SPEECH}", headers=ADMIN_475,
                                 json={"schools": ["02M475"]})).status_code == 200
        await system.publish_all([
            MandateRecorded(district_id=DISTRICT, occurred_at=T0, mandate_id="iep-7-speech",
                            student_source_id="stu-0007", service="speech"),
            FirstAttendanceRecorded(district_id=DISTRICT, occurred_at=T0, student_source_id="stu-0007",
                                    provider_email=SPEECH, service="speech", session_date=date(2026, 9, 14))])

        async def served():
            return seven in await caseload(client, SPEECH, DISTRICT_ADMIN) or None

        await eventually(served, what="the provider's first attendance applied")

        # The same schools in the other order: the student's record changes, nothing else.
        await system.caught_up("caseload")  # the memberships above all published, to count from
        before = await system.records("caseload.memberships.v1", key=seven.encode())
        await system.publish_all([stu7(["02M475", "02M104"], at=T0 + timedelta(hours=1), updated=True)])

        async def updated():
            body = (await client.get(f"/v1/students/{seven}", headers=DISTRICT_ADMIN)).json()
            return body if body["as_of"].startswith("2026-09-01T01:00") else None

        assert (await eventually(updated, what="the reordered update"))["school_ids"] == ["02M104", "02M475"]
        await system.caught_up("caseload")  # whatever the update emitted, the relay has published
        assert len(await system.records("caseload.memberships.v1", key=seven.encode())) == len(before)
