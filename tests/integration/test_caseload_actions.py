"""Manual and provider caseloads through the caseload service's HTTP API and events, on
real Kafka and PostgreSQL (seeds 000 and 001): point persons by school level, supports,
batch actions all or nothing, provider caseloads under mandates, Viewer and Editor
access, and the change feed."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta

import httpx
import pytest

from contracts.roster import ClassUpserted, EnrollmentAdded, StaffUpserted, StudentEnrolled, StudentWithdrawn
from contracts.special_education import FirstAttendanceRecorded, MandateEnded, MandateRecorded
from services.kit.auth import mint
from services.roster.domain import class_id_for, staff_id_for, student_id_for
from tests.support import SECRET, Stack, eventually

pytestmark = pytest.mark.integration

DISTRICT = "d-actions"
# Schools by the grades they serve.
SCHOOL_GRADES = {"E1": "03", "M1": "07", "H1": "10", "K8": "KG", "S612": "11"}
STUDENTS = {  # source id -> school
    "es-1": "E1", "es-2": "E1", "ms-1": "M1", "hs-1": "H1", "hs-2": "H1", "k8-1": "K8", "k8-2": "K8",
    "s612-1": "S612", "s612-2": "S612",
}
GRADES = {"k8-2": "08", "s612-2": "06"}  # K8 serves KG and 08; S612 serves 06 and 11
HOMEROOM_TEACHER = "rivera@d.example.org"  # homeroom 3-401 at E1: es-1, es-2
COUNSELLOR = "okafor@d.example.org"
NEW_COUNSELLOR = "lindqvist@d.example.org"
SPEECH = "speech.provider@agency.example.org"
OT = "ot.provider@agency.example.org"


def sid(source_id: str) -> str:
    return str(student_id_for(DISTRICT, source_id))


def bearer(email: str, roles: list[str], schools: list[str] | None = None, district: str = DISTRICT) -> dict:
    return {"Authorization": "Bearer " + mint(SECRET, email=email, district_id=district, schools=schools or [],
                                               roles=roles)}


ADMIN = bearer("admin@d.example.org", ["district_admin"])


def roster_events() -> list:
    at = dict(district_id=DISTRICT, occurred_at=datetime(2026, 9, 1, tzinfo=UTC))
    events: list = []
    for source_id, school in STUDENTS.items():
        events.append(StudentEnrolled(student_id=student_id_for(DISTRICT, source_id), source_id=source_id,
                                      school_id=school, grade=GRADES.get(source_id, SCHOOL_GRADES[school]),
                                      given_name="Student", family_name=source_id, **at))
    for n, email in enumerate([HOMEROOM_TEACHER, COUNSELLOR, NEW_COUNSELLOR]):
        events.append(StaffUpserted(staff_id=staff_id_for(DISTRICT, f"t{n}"), source_id=f"t{n}", role="teacher",
                                    given_name="T", family_name=str(n), email=email, school_ids=list(SCHOOL_GRADES),
                                    matched=True, **at))
    homeroom = class_id_for(DISTRICT, "hr-3-401")
    events.append(ClassUpserted(class_id=homeroom, source_id="hr-3-401", school_id="E1", class_type="homeroom",
                                title="3-401", grades=["03"], periods=[], **at))
    for person, role, source in [(staff_id_for(DISTRICT, "t0"), "teacher", "t0"),
                                 (student_id_for(DISTRICT, "es-1"), "student", "es-1"),
                                 (student_id_for(DISTRICT, "es-2"), "student", "es-2")]:
        events.append(EnrollmentAdded(person_id=person, role=role, class_id=homeroom, class_source_id="hr-3-401",
                                      user_source_id=source, school_id="E1", primary=True, **at))
    return events


@pytest.fixture
async def caseloads(system: Stack):
    await system.prepare("caseload")
    service = await system.service("caseload").start().ready()
    await system.publish_all(roster_events())
    # Every event, not only the homeroom's: the counsellors' staff records, keyed by
    # staff member, may land on other partitions and arrive later.
    await system.caught_up("caseload", timeout=90)
    async with httpx.AsyncClient(base_url=service.url) as client:
        hr = (await client.get(f"/v1/caseloads/{HOMEROOM_TEACHER}", headers=ADMIN)).json()["items"]
        known = [(await client.get(f"/v1/students/{sid(s)}", headers=ADMIN)).status_code for s in STUDENTS]
        assert len(hr) == 2 and set(known) == {200}, "the district's roster in the caseload service"
    service.client = httpx.AsyncClient(base_url=service.url)
    yield service
    await service.client.aclose()


async def my_caseload(client, headers) -> dict[str, list[str]]:
    body = (await client.get("/v1/caseloads/me", headers=headers)).json()
    return {item["student_id"]: [w["detail"] for w in item["why"]] for item in body["items"]}


async def test_point_persons_by_school_level_one_per_type_replaced_with_history(caseloads, system: Stack):
    client = caseloads.client
    # The seed's table, against a school of every level: available, or refused by the rule.
    available = {"attendance": set(STUDENTS), "academic": set(STUDENTS),
                 **{t: {"hs-1", "hs-2", "s612-1", "s612-2"} for t in ("regents", "credits", "postsecondary")}}
    for type_name, students in available.items():
        for source_id in STUDENTS:
            answer = await client.put(f"/v1/students/{sid(source_id)}/point-persons/{type_name}",
                                      json={"owner_email": COUNSELLOR}, headers=ADMIN)
            if source_id in students:
                assert answer.status_code == 200, (type_name, source_id, answer.text)
            else:
                assert answer.status_code == 422, (type_name, source_id)
                assert answer.json()["detail"]["rule"] == "type_not_available_at_school_level"

    # One attendance point person per student: a new one replaces the old, with history.
    hs1 = sid("hs-1")
    replaced = await client.put(f"/v1/students/{hs1}/point-persons/attendance",
                                json={"owner_email": NEW_COUNSELLOR}, headers=ADMIN)
    assert {(c["change"], c["owner_email"]) for c in replaced.json()["changes"]} == {
        ("removed", COUNSELLOR), ("added", NEW_COUNSELLOR)}
    people = (await client.get(f"/v1/students/{hs1}/point-persons", headers=ADMIN)).json()
    assert {p["type"]: p["owner_email"] for p in people["current"]}["attendance"] == NEW_COUNSELLOR
    assert [(h["owner_email"], h["ended_why"]) for h in people["history"]] == [(COUNSELLOR, "replaced")]
    theirs = await my_caseload(client, bearer(NEW_COUNSELLOR, ["caseload_viewer"]))
    assert theirs == {hs1: ["Attendance point person"]}
    mine = await my_caseload(client, bearer(COUNSELLOR, ["caseload_viewer"]))
    assert "Attendance point person" not in mine[hs1] and "Regents point person" in mine[hs1]

    # Unknown staff member: refused, nothing changed.
    unknown = await client.put(f"/v1/students/{hs1}/point-persons/attendance",
                               json={"owner_email": "nobody@d.example.org"}, headers=ADMIN)
    assert unknown.status_code == 422 and unknown.json()["detail"]["rule"] == "unknown_staff_member"

    # Every change went out as an event keyed by the student, with its reason.
    async def published():
        records = await system.records("caseload.memberships.v1", key=hs1.encode())
        kinds = [(dict(r.headers)["ce_type"], json.loads(r.value)["owner_email"]) for r in records]
        return kinds if {(b"caseload.membership_removed.v1", COUNSELLOR),
                         (b"caseload.membership_added.v1", NEW_COUNSELLOR)} <= set(kinds) else None

    await eventually(published, what="the replaced point person's events, the removal and the addition")


async def test_a_batch_applies_to_every_student_or_to_none(caseloads):
    client = caseloads.client
    batch = {"action": "assign_point_person", "type": "regents", "owner_email": COUNSELLOR,
             "student_ids": [sid("hs-1"), sid("hs-2"), sid("es-1"), "00000000-0000-4000-8000-000000000000"]}
    refused = await client.post("/v1/batch-actions", json=batch, headers=ADMIN)
    assert refused.status_code == 422
    errors = {e["student_id"]: e["rule"] for e in refused.json()["errors"]}
    assert errors == {sid("es-1"): "type_not_available_at_school_level",
                      "00000000-0000-4000-8000-000000000000": "not_found"}
    assert await my_caseload(client, bearer(COUNSELLOR, ["caseload_viewer"])) == {}  # nothing applied

    batch["student_ids"] = [sid("hs-1"), sid("hs-2"), sid("s612-1")]
    applied = await client.post("/v1/batch-actions", json=batch, headers=ADMIN)
    assert applied.status_code == 200 and applied.json()["applied"] == 3
    assert set(await my_caseload(client, bearer(COUNSELLOR, ["caseload_viewer"]))) == set(batch["student_ids"])

    removed = await client.post("/v1/batch-actions", headers=ADMIN, json={
        "action": "remove_point_person", "type": "regents", "student_ids": batch["student_ids"]})
    assert removed.status_code == 200
    assert await my_caseload(client, bearer(COUNSELLOR, ["caseload_viewer"])) == {}


async def test_supports_put_their_students_on_the_leads_caseload(caseloads):
    client = caseloads.client
    created = await client.post("/v1/supports", headers=ADMIN, json={
        "school_id": "H1", "name": "Tier 2 reading", "lead_email": COUNSELLOR})
    assert created.status_code == 201
    support = created.json()["support_id"]
    other_school = await client.post(f"/v1/supports/{support}/students", headers=ADMIN,
                                     json={"student_ids": [sid("hs-1"), sid("ms-1")]})
    assert other_school.status_code == 422
    assert [e["rule"] for e in other_school.json()["errors"]] == ["other_school"]

    added = await client.post(f"/v1/supports/{support}/students", headers=ADMIN,
                              json={"student_ids": [sid("hs-1"), sid("hs-2")]})
    assert added.status_code == 200
    lead = bearer(COUNSELLOR, ["caseload_viewer"])
    assert await my_caseload(client, lead) == {sid("hs-1"): ['support "Tier 2 reading" lead'],
                                               sid("hs-2"): ['support "Tier 2 reading" lead']}

    # A new lead takes the support's students with it.
    handed = await client.patch(f"/v1/supports/{support}", headers=ADMIN, json={"lead_email": NEW_COUNSELLOR})
    assert handed.status_code == 200
    assert await my_caseload(client, lead) == {}
    assert set(await my_caseload(client, bearer(NEW_COUNSELLOR, ["caseload_viewer"]))) == {sid("hs-1"), sid("hs-2")}
    gone = await client.delete(f"/v1/supports/{support}/students/{sid('hs-2')}", headers=ADMIN)
    assert gone.status_code == 200
    assert set(await my_caseload(client, bearer(NEW_COUNSELLOR, ["caseload_viewer"]))) == {sid("hs-1")}


async def test_a_viewer_sees_only_their_caseload_and_cannot_act(caseloads):
    client = caseloads.client
    viewer = bearer(HOMEROOM_TEACHER, ["caseload_viewer"], ["E1"])
    editor = bearer(HOMEROOM_TEACHER, ["caseload_editor"], ["E1"])
    es1, ms1 = sid("es-1"), sid("ms-1")
    assert set(await my_caseload(client, viewer)) == {es1, sid("es-2")}
    assert (await client.get(f"/v1/students/{es1}", headers=viewer)).status_code == 200
    assert (await client.get(f"/v1/students/{ms1}", headers=viewer)).status_code == 404

    cannot = await client.put(f"/v1/students/{es1}/point-persons/attendance", headers=viewer,
                              json={"owner_email": COUNSELLOR})
    assert cannot.status_code == 403 and cannot.json()["detail"]["rule"] == "viewer_cannot_act"
    batch = await client.post("/v1/batch-actions", headers=viewer, json={
        "action": "assign_point_person", "type": "attendance", "owner_email": COUNSELLOR, "student_ids": [es1]})
    assert batch.status_code == 403

    # An editor acts on their own caseload, and cannot reach past it.
    assert (await client.put(f"/v1/students/{es1}/point-persons/attendance", headers=editor,
                             json={"owner_email": COUNSELLOR})).status_code == 200
    assert (await client.put(f"/v1/students/{ms1}/point-persons/attendance", headers=editor,
                             json={"owner_email": COUNSELLOR})).status_code == 404

    # Another district sees nothing of this one.
    elsewhere = bearer("admin@other.example.org", ["district_admin"], district="d-other")
    assert (await client.get(f"/v1/students/{es1}", headers=elsewhere)).status_code == 404
    assert (await client.put(f"/v1/students/{es1}/point-persons/attendance", headers=elsewhere,
                             json={"owner_email": COUNSELLOR})).status_code == 404
    assert (await client.get(f"/v1/caseloads/{HOMEROOM_TEACHER}", headers=elsewhere)).json()["items"] == []


async def test_provider_caseloads_need_a_mandate_and_an_authorisation(caseloads, system: Stack):
    client = caseloads.client
    at = datetime.now(UTC)
    hs1, hs2, ms1 = sid("hs-1"), sid("hs-2"), sid("ms-1")
    await system.publish_all([
        MandateRecorded(district_id=DISTRICT, occurred_at=at, mandate_id="iep-1-speech", student_source_id="hs-1",
                        service="speech"),
        MandateRecorded(district_id=DISTRICT, occurred_at=at, mandate_id="iep-3-speech", student_source_id="ms-1",
                        service="speech"),
    ])
    assert (await client.put(f"/v1/providers/{SPEECH}", headers=ADMIN, json={"schools": ["H1"]})).status_code == 200
    supervisor = bearer("supervisor@d.example.org", ["supervisor"], ["H1", "M1"])

    async def mandates_known():  # keyed by student: the two may arrive in either order
        return all([(await client.get(f"/v1/students/{s}/providers", headers=ADMIN)).json()["mandates"]
                    for s in (hs1, ms1)]) or None

    await eventually(mandates_known, what="both mandates in the caseload service")

    def add(headers, students, provider=SPEECH):
        return client.post(f"/v1/providers/{provider}/students", headers=headers, json={"student_ids": students})

    no_mandate = await add(supervisor, [hs2])
    assert no_mandate.status_code == 422 and no_mandate.json()["detail"]["rule"] == "no_mandate"
    not_authorised = await add(supervisor, [ms1])
    assert not_authorised.status_code == 422 and not_authorised.json()["detail"]["rule"] == "provider_not_authorised"
    no_access = await add(bearer("sup2@d.example.org", ["supervisor"], ["E1", "H1"]), [hs1], provider=OT)
    assert no_access.status_code == 403 and no_access.json()["detail"]["rule"] == "no_access_to_provider"
    assert (await add(supervisor, [hs1])).status_code == 200
    provider = bearer(SPEECH, ["provider"])
    assert await my_caseload(client, provider) == {hs1: ["provider mandate for speech"]}

    # The provider adds a student to their own caseload under the same rules; a student of
    # a school they may not serve is not theirs to find.
    assert (await add(provider, [ms1])).status_code == 404
    assert (await client.put(f"/v1/providers/{SPEECH}", headers=ADMIN,
                             json={"schools": ["H1", "M1"]})).status_code == 200
    assert (await add(provider, [ms1])).status_code == 200

    # First attendance adds the student within seconds; it waits for a mandate if none yet.
    await client.put(f"/v1/providers/{OT}", headers=ADMIN, json={"schools": ["H1"]})
    await system.publish_all([FirstAttendanceRecorded(district_id=DISTRICT, occurred_at=at, student_source_id="hs-2",
                                                      provider_email=OT, service="OT", session_date=date.today())])

    async def waiting():
        pending = (await client.get("/v1/first-attendances?status=pending", headers=ADMIN)).json()["items"]
        return pending or None

    assert [p["waiting_for"] for p in await eventually(waiting, what="the waiting first attendance")] == ["no_mandate"]
    await system.publish_all([MandateRecorded(district_id=DISTRICT, occurred_at=at + timedelta(seconds=1),
                                              mandate_id="iep-2-ot", student_source_id="hs-2", service="OT")])

    async def ot_caseload():
        held = await my_caseload(client, bearer(OT, ["provider"]))
        return held or None

    assert await eventually(ot_caseload, what="the OT provider's caseload") == {hs2: ["provider mandate for OT"]}

    # A mandate that ends removes the provider link, kept as history.
    await system.publish_all([MandateEnded(district_id=DISTRICT, occurred_at=at + timedelta(seconds=2),
                                           mandate_id="iep-1-speech", student_source_id="hs-1", reason="declassified")])

    async def speech_without_hs1():
        held = await my_caseload(client, provider)
        return held if hs1 not in held else None

    assert set(await eventually(speech_without_hs1, what="the ended mandate's link removed")) == {ms1}
    history = (await client.get(f"/v1/students/{hs1}/providers", headers=ADMIN)).json()
    assert history["mandates"] == []
    assert [(p["provider_email"], p["ended_why"]) for p in history["providers"]] == [
        (SPEECH, "mandate ended: declassified")]


async def test_the_change_feed_lets_another_tool_stay_in_sync(caseloads, system: Stack):
    client = caseloads.client
    start = (await client.get("/v1/caseload-changes", headers=ADMIN)).json()
    assert {(c["change"], c["owner_email"]) for c in start["items"]} == {("added", HOMEROOM_TEACHER)}
    cursor = start["next_after"]
    await client.put(f"/v1/students/{sid('hs-1')}/point-persons/attendance", headers=ADMIN,
                     json={"owner_email": COUNSELLOR})
    await client.put(f"/v1/students/{sid('hs-1')}/point-persons/attendance", headers=ADMIN,
                     json={"owner_email": NEW_COUNSELLOR})
    await system.publish_all([StudentWithdrawn(district_id=DISTRICT, occurred_at=datetime.now(UTC),
                                               student_id=student_id_for(DISTRICT, "es-1"), source_id="es-1",
                                               school_id="E1", reason="sis_withdrawal")])

    async def caught_up():
        page = (await client.get(f"/v1/caseload-changes?after={cursor}", headers=ADMIN)).json()
        return page if len(page["items"]) == 4 else None

    page = await eventually(caught_up, what="four changes after the cursor")
    changes = [(c["change"], c["owner_email"], c["reason"]) for c in page["items"]]
    assert changes[0] == ("added", COUNSELLOR, "point_person")
    assert set(changes[1:3]) == {("removed", COUNSELLOR, "point_person"), ("added", NEW_COUNSELLOR, "point_person")}
    assert changes[3] == ("removed", HOMEROOM_TEACHER, "homeroom")
    assert (await client.get(f"/v1/caseload-changes?after={page['next_after']}", headers=ADMIN)).json()["items"] == []
    # A teacher reads the changes to their own caseload only.
    own = (await client.get("/v1/caseload-changes", headers=bearer(COUNSELLOR, ["caseload_viewer"]))).json()
    assert {c["owner_email"] for c in own["items"]} == {COUNSELLOR}


async def test_a_district_sets_its_own_point_person_types(caseloads):
    client = caseloads.client
    defaults = (await client.get("/v1/point-person-types", headers=ADMIN)).json()["items"]
    assert [(t["type"], t["levels"]) for t in defaults] == [
        ("attendance", ["ES", "HS", "MS"]), ("academic", ["ES", "HS", "MS"]), ("regents", ["HS"]),
        ("credits", ["HS"]), ("postsecondary", ["HS"])]
    school_admin = bearer("principal@d.example.org", ["school_admin"], ["E1"])
    assert (await client.put("/v1/point-person-types", headers=school_admin, json=[])).status_code == 403

    assert (await client.put(f"/v1/students/{sid('hs-1')}/point-persons/regents", headers=ADMIN,
                             json={"owner_email": COUNSELLOR})).status_code == 200
    mine = [{"type": "attendance", "label": "Attendance", "levels": ["ES", "MS", "HS"]},
            {"type": "academic", "label": "Academic", "levels": ["HS"]},
            {"type": "ell", "label": "English learners", "levels": ["EMS"]}]
    in_use = await client.put("/v1/point-person-types", headers=ADMIN, json=mine)
    assert in_use.status_code == 409 and "regents (1 students)" in in_use.json()["detail"]
    assert (await client.delete(f"/v1/students/{sid('hs-1')}/point-persons/regents", headers=ADMIN)).status_code == 200
    assert (await client.put("/v1/point-person-types", headers=ADMIN, json=mine)).status_code == 200
    bad_level = await client.put("/v1/point-person-types", headers=ADMIN,
                                 json=[{"type": "x", "label": "X", "levels": ["college"]}])
    assert bad_level.status_code == 422 and "unknown school level" in bad_level.json()["detail"]

    academic_es = await client.put(f"/v1/students/{sid('es-1')}/point-persons/academic", headers=ADMIN,
                                   json={"owner_email": COUNSELLOR})
    assert academic_es.status_code == 422
    ell = await client.put(f"/v1/students/{sid('es-1')}/point-persons/ell", headers=ADMIN,
                           json={"owner_email": COUNSELLOR})
    assert ell.status_code == 200
    assert await my_caseload(client, bearer(COUNSELLOR, ["caseload_viewer"])) == {
        sid("es-1"): ["English learners point person"]}


async def test_a_blank_email_names_no_provider_no_point_person_and_no_caseload(caseloads, system: Stack):
    client = caseloads.client
    hs1 = sid("hs-1")
    await system.publish_all([MandateRecorded(district_id=DISTRICT, occurred_at=datetime.now(UTC),
                                              mandate_id="iep-9-speech", student_source_id="hs-1", service="speech")])

    async def mandate_known():
        return (await client.get(f"/v1/students/{hs1}/providers", headers=ADMIN)).json()["mandates"] or None

    await eventually(mandate_known, what="the mandate in the caseload service")
    supervisor = bearer("supervisor@d.example.org", ["supervisor"], ["H1"])
    for blank in ("%20%20", "%09"):
        authorised = await client.put(f"/v1/providers/{blank}", headers=ADMIN, json={"schools": ["H1"]})
        assert authorised.status_code == 422 and authorised.json()["detail"]["rule"] == "blank_email"
        added = await client.post(f"/v1/providers/{blank}/students", headers=supervisor, json={"student_ids": [hs1]})
        assert added.status_code == 422 and added.json()["detail"]["rule"] == "blank_email"
        assert (await client.get(f"/v1/providers/{blank}", headers=ADMIN)).status_code == 404
        assert (await client.get(f"/v1/caseloads/{blank}", headers=ADMIN)).status_code == 404
    for blank in ("", "  "):
        point = await client.put(f"/v1/students/{hs1}/point-persons/attendance", headers=ADMIN,
                                 json={"owner_email": blank})
        assert point.status_code == 422
        batch = await client.post("/v1/batch-actions", headers=ADMIN, json={
            "action": "add_to_provider_caseload", "provider_email": blank, "student_ids": [hs1]})
        assert batch.status_code == 422
    # A provider written with spaces and capitals is the same provider.
    assert (await client.put("/v1/providers/%20Speech.Provider@Agency.example.org", headers=ADMIN,
                             json={"schools": ["H1"]})).status_code == 200
    assert (await client.post(f"/v1/providers/{SPEECH.upper()}/students", headers=supervisor,
                              json={"student_ids": [hs1]})).status_code == 200
    owners = (await client.get(f"/v1/students/{hs1}/caseloads", headers=ADMIN)).json()["caseloads"]
    assert [(c["owner_email"], c["reason"]) for c in owners] == [(SPEECH, "provider")]
