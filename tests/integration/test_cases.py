"""Cases open per each district's Case Management Dictionary (seed 004), on real Kafka and
PostgreSQL: every trigger kind enabled and disabled, never retroactively, one case per
student however the triggers arrive, triggers for students not yet on the roster applied
when they appear; tasks, notes, close and reopen, timeline, search, dashboard and access."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, date, datetime, timedelta

import httpx
import pytest

from contracts.cases import (
    FileSubmitted,
    FormSubmitted,
    InterventionGroupMemberAdded,
    PlanCreated,
    PlanReviewConducted,
    StudentMeetingScheduled,
    TaskAssigned,
)
from contracts.roster import StudentEnrolled
from services.kit.auth import mint
from services.roster.domain import student_id_for
from tests.support import SECRET, Stack, eventually

pytestmark = pytest.mark.integration

DISTRICT = "d-cases"
ADMIN = {"Authorization": "Bearer " + mint(SECRET, email="admin@d.example.org", district_id=DISTRICT, schools=[],
                                             roles=["district_admin", "manage_cases"])}


def bearer(email: str, roles: list[str], schools: list[str], district: str = DISTRICT) -> dict:
    return {"Authorization": "Bearer " + mint(SECRET, email=email, district_id=district, schools=schools, roles=roles)}


COUNSELLOR = bearer("okafor@d.example.org", ["manage_cases"], ["H1"])
TEACHER = bearer("rivera@d.example.org", ["caseload_viewer"], ["H1"])


def sid(source_id: str) -> str:
    return str(student_id_for(DISTRICT, source_id))


def enrolled(source_id: str, school: str = "H1", at: datetime | None = None,
             school_ids: list[str] | None = None) -> StudentEnrolled:
    return StudentEnrolled(district_id=DISTRICT, occurred_at=at or datetime(2026, 9, 1, tzinfo=UTC),
                           student_id=student_id_for(DISTRICT, source_id), source_id=source_id, school_id=school,
                           grade="10", given_name="Ana", family_name=f"Reyes-{source_id}", school_ids=school_ids)


def trigger(kind: type, source_id: str, at: datetime, **extra):
    fields = {
        FormSubmitted: dict(form_id="f-1", form_name="Counseling referral"),
        PlanCreated: dict(plan_id="p-1", plan_name="Tier 2 reading"),
        InterventionGroupMemberAdded: dict(group_id="g-1", group_name="Tier 2 reading, period 3"),
        TaskAssigned: dict(task_id=uuid.uuid4(), title="Call home", assignee_email="okafor@d.example.org"),
        StudentMeetingScheduled: dict(meeting_id="m-1", title="Attendance meeting", scheduled_for=at),
        PlanReviewConducted: dict(plan_id="p-1", review_id="r-1", outcome="continue"),
        FileSubmitted: dict(file_id="file-1", file_name="504 plan.pdf"),
    }[kind]
    return kind(district_id=DISTRICT, occurred_at=at, student_source_id=source_id, **{**fields, **extra})


@pytest.fixture
async def cases(system: Stack):
    await system.prepare("cases")
    service = await system.service("cases").start().ready()
    service.client = httpx.AsyncClient(base_url=service.url)
    yield service
    await service.client.aclose()


async def enable(client, *kinds: str) -> dict[str, datetime]:
    at = {}
    for kind in kinds:
        body = (await client.put(f"/v1/dictionary/{kind}", json={"enabled": True}, headers=ADMIN)).json()
        at[kind] = datetime.fromisoformat({i["trigger_kind"]: i for i in body["items"]}[kind]["enabled_at"])
    return at


async def case_of(client, source_id: str, headers=ADMIN) -> list[dict]:
    return (await client.get(f"/v1/cases?person={source_id}", headers=headers)).json()["items"]


async def timeline_of(client, source_id: str) -> dict:
    return (await client.get(f"/v1/students/{sid(source_id)}/timeline", headers=ADMIN)).json()


async def test_every_trigger_kind_opens_a_case_only_when_its_dictionary_entry_is_on(cases, system: Stack):
    client = cases.client
    kinds = [FormSubmitted, PlanCreated, InterventionGroupMemberAdded, TaskAssigned, StudentMeetingScheduled,
             PlanReviewConducted, FileSubmitted]
    await system.publish_all([enrolled(f"on-{k.__name__}") for k in kinds] +
                             [enrolled(f"off-{k.__name__}") for k in kinds])
    dictionary = (await client.get("/v1/dictionary", headers=ADMIN)).json()["items"]
    assert [e["enabled"] for e in dictionary] == [False] * 6  # a new district starts with everything off

    # Off: every kind for one set of students; then on: every kind for the other.
    now = datetime.now(UTC)
    await system.publish_all([trigger(k, f"off-{k.__name__}", now) for k in kinds])

    async def all_off_recorded():  # keyed by student: each on its own partition, in any order
        return all([await _timeline_has(client, f"off-{k.__name__}") for k in kinds]) or None

    await eventually(all_off_recorded, what="every disabled trigger recorded")
    await enable(client, *{"submit_form", "create_plan", "assign_task", "schedule_meeting", "conduct_plan_review",
                           "submit_file"})
    later = datetime.now(UTC) + timedelta(seconds=1)
    await system.publish_all([trigger(k, f"on-{k.__name__}", later) for k in kinds])

    async def opened():
        found = {k.__name__: await case_of(client, f"on-{k.__name__}") for k in kinds}
        return found if all(found.values()) else None

    found = await eventually(opened, what="a case for each enabled trigger kind")
    assert {k: v[0]["trigger_kind"] for k, v in found.items()} == {
        "FormSubmitted": "submit_form", "PlanCreated": "create_plan",
        "InterventionGroupMemberAdded": "create_plan",  # joining an intervention group creates a plan
        "TaskAssigned": "assign_task", "StudentMeetingScheduled": "schedule_meeting",
        "PlanReviewConducted": "conduct_plan_review", "FileSubmitted": "submit_file"}
    for k in kinds:
        assert await case_of(client, f"off-{k.__name__}") == []
        entries = (await timeline_of(client, f"off-{k.__name__}"))["items"]
        assert len(entries) == 1 and entries[0]["case_id"] is None  # on the timeline, no case

    # CaseOpened went out for each, keyed by student, with the contract's fields.
    async def published():
        records = await system.records("cases.v1")
        return records if len(records) == len(kinds) else None

    records = await eventually(published, what="seven CaseOpened events")
    body = json.loads(records[0].value)
    assert records[0].key == body["student_id"].encode()
    assert {"case_id", "case_number", "district_id", "school_id", "student_id", "trigger_kind", "source_event_id",
            "source_occurred_at"} <= set(body)


async def _timeline_has(client, source_id: str):
    answer = await client.get(f"/v1/students/{sid(source_id)}/timeline", headers=ADMIN)
    return answer.status_code == 200 and answer.json()["items"] or None


async def test_a_trigger_just_before_enabling_opens_nothing_just_after_opens_a_case(cases, system: Stack):
    client = cases.client
    await system.publish_all([enrolled("before"), enrolled("after")])
    enabled_at = (await enable(client, "create_plan"))["create_plan"]
    await system.publish_all([trigger(PlanCreated, "before", enabled_at - timedelta(milliseconds=1)),
                              trigger(PlanCreated, "after", enabled_at + timedelta(milliseconds=1))])
    opened = await eventually(lambda: case_of(client, "after"), what="the case of the trigger after enabling")
    assert opened[0]["trigger_kind"] == "create_plan"
    await eventually(lambda: _timeline_has(client, "before"), what="the earlier trigger on the timeline")
    assert await case_of(client, "before") == []


async def test_triggers_for_one_student_at_the_same_moment_give_one_case(cases, system: Stack):
    client = cases.client
    await system.publish_all([enrolled("twice")])
    at = (await enable(client, "submit_form", "submit_file"))["submit_file"] + timedelta(seconds=1)
    # A second instance of the service, and triggers on different partitions, all at once.
    other = await system.service("cases").start().ready()
    form, file = trigger(FormSubmitted, "twice", at), trigger(FileSubmitted, "twice", at)
    await asyncio.gather(*[system.publish(t, partition=p) for p, t in enumerate([form, file, form.model_copy(
        update={"event_id": uuid.uuid4()}), file.model_copy(update={"event_id": uuid.uuid4()})])])

    async def all_on_timeline():
        entries = (await timeline_of(client, "twice"))["items"]
        return entries if len([e for e in entries if e["kind"] != "case_opened"]) == 4 else None

    entries = await eventually(all_on_timeline, what="the four triggers on the timeline")
    found = await case_of(client, "twice")
    assert len(found) == 1
    assert {e["case_id"] for e in entries} == {found[0]["case_id"]}
    other.stop()


async def test_a_trigger_for_a_student_the_roster_does_not_know_yet_waits_for_them(cases, system: Stack):
    client = cases.client
    at = (await enable(client, "submit_form"))["submit_form"] + timedelta(seconds=1)
    await system.publish_all([trigger(FormSubmitted, "newcomer", at)])
    await system.caught_up("cases")  # processed, and kept
    assert (await client.get(f"/v1/students/{sid('newcomer')}/timeline", headers=ADMIN)).status_code == 404
    await system.publish_all([enrolled("newcomer", at=at + timedelta(seconds=5))])
    opened = await eventually(lambda: case_of(client, "newcomer"), what="the waiting trigger's case")
    assert opened[0]["trigger_kind"] == "submit_form"
    assert datetime.fromisoformat(opened[0]["opened_at"]) == at  # as of the trigger, not of the roster


async def test_staff_of_each_of_a_students_schools_read_their_timeline_and_the_case_keeps_its_school(
        cases, system: Stack):
    """Dual enrolment: a student enrolled at H1 and H2 is found by the staff of either; a
    case stays at the school it was opened at (the student's home school)."""
    client = cases.client
    at = (await enable(client, "submit_form"))["submit_form"] + timedelta(seconds=1)
    await system.publish_all([enrolled("dual", school="H1", school_ids=["H2", "H1"]),
                              trigger(FormSubmitted, "dual", at)])
    opened = await eventually(lambda: case_of(client, "dual"), what="the dual-enrolled student's case")
    assert opened[0]["school_id"] == "H1"

    second_school = bearer("teacher.h2@d.example.org", ["caseload_viewer"], ["H2"])
    timeline = await client.get(f"/v1/students/{sid('dual')}/timeline", headers=second_school)
    assert timeline.status_code == 200
    assert [e["kind"] for e in timeline.json()["items"]] == ["submit_form", "case_opened"]
    other = bearer("teacher.h3@d.example.org", ["caseload_viewer"], ["H3"])
    assert (await client.get(f"/v1/students/{sid('dual')}/timeline", headers=other)).status_code == 404
    # A counsellor of the second school finds the student to assign a task; it joins the case.
    task = await client.post("/v1/tasks", headers=bearer("counsellor.h2@d.example.org", ["manage_cases"], ["H2"]),
                             json={"student_id": sid("dual"), "title": "Call home",
                                   "assignee_email": "counsellor.h2@d.example.org"})
    assert task.status_code == 202 and task.json()["case_id"] == opened[0]["case_id"]


async def test_tasks_notes_close_and_reopen(cases, system: Stack):
    client = cases.client
    await system.publish_all([enrolled("ana")])
    await enable(client, "assign_task")

    async def known():
        return (await client.get(f"/v1/students/{sid('ana')}/timeline", headers=ADMIN)).status_code == 200

    await eventually(known, what="the student in the cases service")
    refused = await client.post("/v1/tasks", headers=TEACHER, json={
        "student_id": sid("ana"), "title": "Call home", "assignee_email": "okafor@d.example.org"})
    assert refused.status_code == 403  # read-only staff
    first = await client.post("/v1/tasks", headers=COUNSELLOR, json={
        "student_id": sid("ana"), "title": "Call home", "assignee_email": "rivera@d.example.org",
        "due_date": (date.today() - timedelta(days=2)).isoformat()})
    assert first.status_code == 202
    opened = await eventually(lambda: case_of(client, "ana"), what="the case the task opened")
    case_id = opened[0]["case_id"]
    second = await client.post("/v1/tasks", headers=COUNSELLOR, json={
        "student_id": sid("ana"), "title": "Schedule SST", "assignee_email": "okafor@d.example.org"})
    assert second.json()["case_id"] == case_id  # joins the open case

    async def both_triggers():
        entries = (await timeline_of(client, "ana"))["items"]
        return [e for e in entries if e["kind"] == "assign_task"][1:] or None

    assert (await eventually(both_triggers, what="the second task's trigger"))[0]["case_id"] == case_id

    # The assignee adds a note and marks the task complete; progress 1 of 2.
    task = first.json()["task_id"]
    assert (await client.post(f"/v1/tasks/{task}/notes", headers=TEACHER, json={"body": "Left a voicemail"})
            ).status_code == 201
    assert (await client.post(f"/v1/tasks/{task}/complete", headers=TEACHER)).status_code == 200

    async def both_tasks():
        body = (await client.get(f"/v1/cases/{case_id}", headers=COUNSELLOR)).json()
        return body if body["tasks_total"] == 2 else None

    case = await eventually(both_tasks, what="both tasks on the case")
    assert (case["tasks_done"], case["tasks_total"]) == (1, 2)
    board = (await client.get("/v1/dashboard", headers=COUNSELLOR)).json()
    assert board["open_cases"] == 1 and board["overdue_tasks"]["count"] == 0  # the overdue one is done

    team = await client.patch(f"/v1/cases/{case_id}", headers=COUNSELLOR, json={
        "team_name": "Grade 10 SST", "team_leader": "lee@d.example.org", "case_manager": "okafor@d.example.org"})
    assert team.status_code == 200
    closed = await client.post(f"/v1/cases/{case_id}/close", headers=COUNSELLOR, json={"reason": "goals met"})
    assert closed.status_code == 200, closed.text
    assert closed.json()["status"] == "closed"
    assert (await client.post(f"/v1/cases/{case_id}/close", headers=COUNSELLOR, json={"reason": "x"})
            ).status_code == 409
    reopened = await client.post(f"/v1/cases/{case_id}/reopen", headers=COUNSELLOR)
    assert reopened.status_code == 200, reopened.text
    assert reopened.json()["status"] == "open"
    note = await client.post(f"/v1/cases/{case_id}/notes", headers=COUNSELLOR, json={"body": "Family meeting set"})
    assert note.status_code == 201

    timeline = (await timeline_of(client, "ana"))["items"]
    assert [e["kind"] for e in timeline] == [
        "assign_task", "case_opened", "assign_task", "note", "task_completed", "case_edited", "case_closed",
        "case_reopened", "note"]
    assert timeline[3]["note"] == "Left a voicemail" and timeline[3]["actor"] == "rivera@d.example.org"

    async def lifecycle():
        types = [dict(r.headers)["ce_type"] for r in await system.records("cases.v1")]
        return types if len(types) == 6 else None

    assert await eventually(lifecycle, what="the case's events") == [
        b"cases.case_opened.v1", b"cases.case_note_added.v1", b"cases.task_completed.v1", b"cases.case_closed.v1",
        b"cases.case_reopened.v1", b"cases.case_note_added.v1"]
    # Neither the student's name nor a note's text reaches the logs.
    assert "Reyes" not in cases.log() and "voicemail" not in cases.log()


async def test_search_by_each_field_and_no_district_sees_anothers_cases(cases, system: Stack):
    client = cases.client
    await system.publish_all([enrolled("s-1", "H1"), enrolled("s-2", "M1")])
    at = (await enable(client, "submit_file"))["submit_file"] + timedelta(seconds=1)
    await system.publish_all([trigger(FileSubmitted, "s-1", at), trigger(FileSubmitted, "s-2", at)])
    one = (await eventually(lambda: case_of(client, "s-1"), what="case one"))[0]
    await eventually(lambda: case_of(client, "s-2"), what="case two")
    await client.patch(f"/v1/cases/{one['case_id']}", headers=ADMIN, json={
        "team_name": "Grade 10 SST", "team_leader": "lee@d.example.org", "case_manager": "okafor@d.example.org"})

    async def numbers(query: str, headers=ADMIN) -> set[str]:
        return {c["case_number"] for c in (await client.get(f"/v1/cases?{query}", headers=headers)).json()["items"]}

    number = one["case_number"]
    assert await numbers(f"case_number={number}") == {number}
    assert await numbers("person=reyes-s-1") == {number}  # person of concern, by family name
    assert await numbers("person=Ana%20Reyes-s-1") == {number}
    assert await numbers("school_id=H1") == {number}
    assert await numbers("team_name=grade%2010%20sst") == {number}
    assert await numbers("team_leader=lee@d.example.org") == {number}
    assert await numbers("case_manager=okafor@d.example.org") == {number}
    assert len(await numbers("status=open")) == 2
    assert await numbers("status=open", headers=TEACHER) == {number}  # staff see their schools' cases

    elsewhere = bearer("admin@other.example.org", ["district_admin", "manage_cases"], [], district="d-other")
    assert (await client.get(f"/v1/cases/{one['case_id']}", headers=elsewhere)).status_code == 404
    assert (await client.post(f"/v1/cases/{one['case_id']}/close", headers=elsewhere, json={"reason": "x"})
            ).status_code == 404
    assert await numbers("status=open", headers=elsewhere) == set()
    assert (await client.put("/v1/dictionary/submit_form", headers=COUNSELLOR, json={"enabled": True})
            ).status_code == 403
    assert (await client.post(f"/v1/cases/{one['case_id']}/close", headers=TEACHER, json={"reason": "x"})
            ).status_code == 403


async def test_the_asyncapi_document_names_case_opened_and_the_triggers(cases, system: Stack):
    spec = (await cases.client.get("/asyncapi.json")).json()
    channels = {c["address"] for c in spec["channels"].values()}
    assert {system.topic("cases.v1"), system.topic("cases.triggers.v1"), system.topic("roster.students.v1")} <= channels
    assert "case_number" in json.dumps(spec["components"])  # CaseOpened's payload is documented


async def test_a_staff_member_lists_the_tasks_assigned_to_them(cases, system: Stack):
    """Issue 10: an assignee could list their tasks only through a case or the dashboard.
    GET /v1/tasks: the caller's own tasks, open by default, done, due before a date,
    overdue; soonest due first, paged; another district's or another person's never."""
    client = cases.client
    await system.publish_all([enrolled("lee"), enrolled("kai")])

    async def known():
        return all([(await client.get(f"/v1/students/{sid(s)}/timeline", headers=ADMIN)).status_code == 200
                    for s in ("lee", "kai")])

    await eventually(known, what="both students in the cases service")
    today = date.today()
    assigned = {}
    for title, student, due, who in [("Call home", "lee", today - timedelta(days=3), "mina@d.example.org"),
                                     ("Check attendance", "kai", today + timedelta(days=5), "mina@d.example.org"),
                                     ("Plan review", "lee", None, "mina@d.example.org"),
                                     ("Someone else's", "kai", today - timedelta(days=1), "okafor@d.example.org")]:
        answer = await client.post("/v1/tasks", headers=COUNSELLOR, json={
            "student_id": sid(student), "title": title, "assignee_email": who,
            **({"due_date": due.isoformat()} if due else {})})
        assert answer.status_code == 202
        assigned[title] = answer.json()["task_id"]
    mina = bearer("Mina@d.example.org", ["caseload_viewer"], [])  # no school: tasks are hers wherever they are

    async def titles(query: str = "", headers=mina) -> list[str]:
        answer = await client.get(f"/v1/tasks{query}", headers=headers)
        assert answer.status_code == 200, answer.text
        return [t["title"] for t in answer.json()["items"]]

    assert await titles() == ["Call home", "Check attendance", "Plan review"]
    assert await titles("?overdue=true") == ["Call home"]
    assert await titles(f"?due_before={(today + timedelta(days=1)).isoformat()}") == ["Call home"]
    assert (await client.post(f"/v1/tasks/{assigned['Call home']}/complete", headers=mina)).status_code == 200
    assert await titles() == ["Check attendance", "Plan review"]
    assert await titles("?status=done") == ["Call home"]
    assert await titles("?status=all") == ["Call home", "Check attendance", "Plan review"]
    first = (await client.get("/v1/tasks?status=all&limit=2", headers=mina)).json()
    rest = (await client.get(f"/v1/tasks?status=all&limit=2&after={first['next_after']}", headers=mina)).json()
    assert [t["title"] for t in first["items"] + rest["items"]] == ["Call home", "Check attendance", "Plan review"]
    assert rest["next_after"] is None
    assert await titles(headers=bearer("mina@d.example.org", ["caseload_viewer"], [], district="d-other")) == []
    bad = await client.get("/v1/tasks?after=yesterday", headers=mina)
    assert bad.status_code == 422 and "next_after" in bad.text
    # Once she holds no access level (revoked, or a token naming only her), her tasks are
    # neither listed nor worked by her: only manage_cases at the student's school works them.
    no_access = bearer("mina@d.example.org", [], [])
    assert (await client.get("/v1/tasks", headers=no_access)).status_code == 403
    assert (await client.post(f"/v1/tasks/{assigned['Check attendance']}/complete", headers=no_access)) \
        .status_code == 404
    assert (await client.get("/v1/dictionary", headers=no_access)).status_code == 403


async def test_a_case_opened_at_a_school_starts_with_the_schools_default_case_manager(cases, system: Stack):
    """Issue 13: "CaseOpened -> the case manager of the student's school, where one is set".
    Manage Cases at the school sets it; a case opened there starts with them, and CaseOpened
    names them; a school without one opens cases without."""
    client = cases.client
    refused = await client.put("/v1/schools/H1/case-manager", headers=TEACHER, json={"case_manager": "x@d.org"})
    assert refused.status_code == 403
    assert (await client.put("/v1/schools/H2/case-manager", headers=COUNSELLOR,
                             json={"case_manager": "x@d.org"})).status_code == 404  # not one of theirs
    made = await client.put("/v1/schools/H1/case-manager", headers=COUNSELLOR,
                            json={"case_manager": "Lindqvist@D.example.org"})
    assert made.json() == {"school_id": "H1", "case_manager": "lindqvist@d.example.org"}
    await enable(client, "submit_form")
    at = datetime.now(UTC) + timedelta(seconds=1)
    await system.publish_all([enrolled("cm-1"), enrolled("cm-2", school="H2"),
                              trigger(FormSubmitted, "cm-1", at), trigger(FormSubmitted, "cm-2", at)])

    async def both_opened():
        return all([await case_of(client, s) for s in ("cm-1", "cm-2")])

    await eventually(both_opened, what="a case for each student")
    assert (await case_of(client, "cm-1"))[0]["case_manager"] == "lindqvist@d.example.org"
    assert (await case_of(client, "cm-2"))[0]["case_manager"] is None
    async def published():
        found = {json.loads(r.value).get("student_source_id"): json.loads(r.value)
                 for r in await system.records("cases.v1")}
        return found if {"cm-1", "cm-2"} <= set(found) else None

    opened = await eventually(published, what="both CaseOpened published")
    assert opened["cm-1"]["case_manager"] == "lindqvist@d.example.org" and opened["cm-2"]["case_manager"] is None
