"""Odd HTTP input is refused at the edge with a 4xx that says what is wrong, never a 500;
what is answered 2xx is not lost later (issue 9, defect 4). On the real services, Kafka and
PostgreSQL: a NUL character or a lone surrogate in any text, integers beyond what the
database holds, times whose UTC conversion overflows or that name no offset, huge strings
and bodies, malformed JSON and the wrong content type."""

from __future__ import annotations

import io
import json
import uuid
import zipfile

import httpx
import pytest

from contracts.sis import SisStudentEnrolled
from services.kit.auth import mint
from services.roster.domain import student_id_for
from tests.support import ROOT, SECRET, Stack, eventually

pytestmark = pytest.mark.integration

DISTRICT = "d-input"
SCHOOL = "02M001"
SOURCE_ID = "S-1"
STUDENT = str(student_id_for(DISTRICT, SOURCE_ID))


def bearer(roles: list[str], *, email: str = "okafor@d.example.org", district: str = DISTRICT,
           schools: list[str] | None = None) -> dict:
    return {"Authorization": "Bearer " + mint(SECRET, email=email, district_id=district, schools=schools or [SCHOOL],
                                                 roles=roles)}


ADMIN = bearer(["district_admin", "manage_cases", "caseload_editor"])


@pytest.fixture
async def services(system: Stack):
    """roster, caseload and cases, with one student each knows."""
    await system.prepare("roster", "caseload", "cases")
    # One after the other, as the other tests start theirs: on a busy machine, three starting
    # at once may each take longer than a start is given.
    roster = await system.service("roster", CASEFLOW_HTTP_MAX_BODY_BYTES="65536").start().ready()
    caseload = await system.service("caseload").start().ready()
    cases = await system.service("cases", CASEFLOW_HTTP_MAX_BODY_BYTES="65536").start().ready()
    await system.publish(SisStudentEnrolled(district_id=DISTRICT, source_id=SOURCE_ID, school_id=SCHOOL, grade="10",
                                            given_name="Ana", family_name="Reyes"))

    async def known():
        async with httpx.AsyncClient() as client:
            answers = [await client.get(f"{caseload.url}/v1/students/{STUDENT}", headers=ADMIN),
                       await client.get(f"{cases.url}/v1/students/{STUDENT}/timeline", headers=ADMIN)]
            return all(a.status_code == 200 for a in answers)

    await eventually(known, what="the student in caseload and cases")
    return {"roster": roster, "caseload": caseload, "cases": cases}


async def answers(services: dict, requests: list[tuple]) -> list[tuple]:
    """Each request (service, method, url, json body or None) with its answer's status and body."""
    out = []
    async with httpx.AsyncClient(timeout=30) as client:
        for service, method, url, body in requests:
            # JSON as any client may send it: escapes for what is not ASCII (a lone surrogate too).
            content = None if body is None else json.dumps(body).encode()
            response = await client.request(method, services[service].url + url, content=content,
                                            headers={**ADMIN, "Content-Type": "application/json"})
            try:
                payload = response.json()
            except ValueError:
                payload = response.text
            out.append((service, method, url, response.status_code, payload))
    return out


def refused_with_a_message(results: list[tuple]) -> list[tuple]:
    """The answers that are not a 4xx JSON with a message (what should be empty)."""
    return [r for r in results if not (400 <= r[3] < 500 and isinstance(r[4], dict) and r[4].get("detail"))]


NUL = "a\u0000b"
SURROGATE = "a\ud800b"


def text_inputs(odd: str) -> list[tuple]:
    """Every text field, query and path parameter of the three services, holding `odd`."""
    enc = path = "".join(c if c.isalnum() else "".join(f"%{b:02X}" for b in c.encode("utf-8", "surrogatepass"))
                         for c in odd)
    return [
        # roster: query and path parameters
        ("roster", "GET", f"/v1/students?school_id={enc}", None),
        ("roster", "GET", f"/v1/staff?school_id={enc}", None),
        ("roster", "GET", f"/v1/classes?school_id={enc}", None),
        ("roster", "GET", f"/v1/enrollments?school_id={enc}", None),
        ("roster", "GET", f"/v1/enrollments?class_source_id={enc}", None),
        ("roster", "GET", f"/v1/enrollments?user_source_id={enc}", None),
        ("roster", "GET", f"/v1/enrollments?after={enc}", None),
        ("roster", "GET", f"/v1/reconcile/students/{path}", None),
        # caseload: query, path and body
        ("caseload", "GET", f"/v1/caseloads/me?school_id={enc}", None),
        ("caseload", "GET", f"/v1/caseloads/me?grade={enc}", None),
        ("caseload", "GET", f"/v1/caseloads/me?reason={enc}", None),
        ("caseload", "GET", f"/v1/caseloads/{path}", None),
        ("caseload", "GET", f"/v1/supports?school_id={enc}", None),
        ("caseload", "GET", f"/v1/providers/{path}", None),
        ("caseload", "PUT", f"/v1/providers/{path}", {"schools": [SCHOOL]}),
        ("caseload", "PUT", "/v1/providers/p@d.example.org", {"schools": [odd]}),
        ("caseload", "PUT", f"/v1/students/{STUDENT}/point-persons/{path}", {"owner_email": "okafor@d.example.org"}),
        ("caseload", "PUT", f"/v1/students/{STUDENT}/point-persons/attendance", {"owner_email": f"{odd}@d.org"}),
        ("caseload", "PUT", "/v1/point-person-types", [{"type": "attendance", "label": odd, "levels": ["ES"]}]),
        ("caseload", "PUT", "/v1/point-person-types", [{"type": "attendance", "label": "A", "levels": [odd]}]),
        ("caseload", "POST", "/v1/supports", {"school_id": odd, "name": "Tier 2", "lead_email": "okafor@d.example.org"}),
        ("caseload", "POST", "/v1/supports", {"school_id": SCHOOL, "name": odd, "lead_email": "okafor@d.example.org"}),
        ("caseload", "POST", f"/v1/providers/{path}/students", {"student_ids": [STUDENT]}),
        ("caseload", "POST", "/v1/providers/p@d.example.org/students", {"student_ids": [STUDENT], "service": odd}),
        ("caseload", "POST", "/v1/batch-actions", {"action": "assign_point_person", "student_ids": [STUDENT],
                                                   "type": odd, "owner_email": "okafor@d.example.org"}),
        ("caseload", "POST", "/v1/batch-actions", {"action": "add_to_provider_caseload", "student_ids": [STUDENT],
                                                   "provider_email": "p@d.example.org", "service": odd}),
        # cases: query and body
        ("cases", "GET", f"/v1/cases?case_number={enc}", None),
        ("cases", "GET", f"/v1/cases?person={enc}", None),
        ("cases", "GET", f"/v1/cases?school_id={enc}", None),
        ("cases", "GET", f"/v1/cases?team_name={enc}", None),
        ("cases", "GET", f"/v1/cases?team_leader={enc}", None),
        ("cases", "GET", f"/v1/cases?case_manager={enc}", None),
        ("cases", "GET", f"/v1/cases?after={enc}", None),
        ("cases", "GET", f"/v1/dashboard?school_id={enc}", None),
        ("cases", "POST", "/v1/tasks", {"student_id": STUDENT, "title": odd, "assignee_email": "okafor@d.example.org"}),
        ("cases", "POST", "/v1/tasks", {"student_id": STUDENT, "title": "Call", "assignee_email": f"{odd}@d.org"}),
        ("cases", "POST", "/v1/meetings", {"student_id": STUDENT, "title": odd,
                                           "scheduled_for": "2026-11-20T15:00:00Z"}),
    ]


async def test_a_nul_character_in_any_field_query_or_path_parameter_is_refused_with_a_message(services):
    results = await answers(services, text_inputs(NUL))
    assert refused_with_a_message(results) == []
    assert all("NUL" in json.dumps(r[4]) for r in results if r[3] == 422), results


async def test_a_lone_surrogate_in_any_text_is_refused_with_a_message(services):
    # In a JSON body "\ud800" is valid JSON but no Unicode text; in a URL, bytes that are no UTF-8.
    results = await answers(services, text_inputs(SURROGATE))
    assert refused_with_a_message(results) == []


async def test_a_meeting_whose_title_holds_a_nul_is_refused_not_accepted_then_lost(services, system: Stack):
    async with httpx.AsyncClient(base_url=services["cases"].url) as client:
        refused = await client.post("/v1/meetings", headers=ADMIN, json={
            "student_id": STUDENT, "title": "Attendance\u0000meeting", "scheduled_for": "2026-11-20T15:00:00Z"})
        assert refused.status_code == 422, refused.text
        assert refused.json()["problems"][0]["field"] == "body.title"
        # A title with any other odd but storable text is accepted and reaches the timeline.
        title = "Réunion 👩‍👧 \u202eتجربة\u202c " + "x" * 280
        accepted = await client.post("/v1/meetings", headers=ADMIN, json={
            "student_id": STUDENT, "title": title[:300], "scheduled_for": "2026-11-20T15:00:00+14:00"})
        assert accepted.status_code == 202, accepted.text

        async def on_the_timeline():
            items = (await client.get(f"/v1/students/{STUDENT}/timeline", headers=ADMIN)).json()["items"]
            return [i for i in items if i["kind"] == "schedule_meeting"]

        entries = await eventually(on_the_timeline, what="the meeting on the student's timeline")
    assert title[:300] in entries[0]["summary"]
    assert await system.records("cases.triggers.v1.DLT") == []


async def test_paging_cursors_beyond_what_the_database_holds_are_refused(services):
    import_id = uuid.uuid4()
    requests = []
    for value in (10**20, 2**63, 2**31, -(2**63) - 1, "9" * 5000):
        requests += [
            ("cases", "GET", f"/v1/students/{STUDENT}/timeline?after={value}", None),
            ("roster", "GET", f"/v1/imports/{import_id}/problems?after={value}", None),
            ("caseload", "GET", f"/v1/caseload-changes?after={value}.0", None),
            ("caseload", "GET", f"/v1/caseload-changes?after=0.{value}", None),
        ]
    results = await answers(services, requests)
    # 2**31 fits a bigint cursor: only the roster's problems (an integer) refuse it.
    fits = [r for r in results if r[3] == 200 or (r[3] == 404 and "problems" in r[2] and f"={2**31}" in r[2])]
    assert {(r[0], r[2]) for r in fits} == {
        ("cases", f"/v1/students/{STUDENT}/timeline?after={2**31}"),
        ("caseload", f"/v1/caseload-changes?after={2**31}.0"),
        ("caseload", f"/v1/caseload-changes?after=0.{2**31}"),
    }
    assert refused_with_a_message([r for r in results if r not in fits]) == []


async def test_a_time_whose_utc_conversion_overflows_or_names_no_offset_is_refused(services):
    since = "/v1/caseload-changes?since="
    results = await answers(services, [
        ("caseload", "GET", since + "0001-01-01T00:00:00%2B14:00", None),
        ("caseload", "GET", since + "9999-12-31T23:59:59-14:00", None),
        ("caseload", "GET", since + "2026-11-02T08:00:00", None),  # no offset: which 08:00?
        ("cases", "POST", "/v1/meetings", {"student_id": STUDENT, "title": "Meeting",
                                           "scheduled_for": "0001-01-01T00:00:00+14:00"}),
        ("cases", "POST", "/v1/meetings", {"student_id": STUDENT, "title": "Meeting",
                                           "scheduled_for": "9999-12-31T23:59:59-14:00"}),
        ("cases", "POST", "/v1/meetings", {"student_id": STUDENT, "title": "Meeting",
                                           "scheduled_for": "2026-11-20T15:00:00"}),
    ])
    assert refused_with_a_message(results) == []
    assert all(r[3] == 422 for r in results), results
    async with httpx.AsyncClient(base_url=services["caseload"].url) as client:
        fine = await client.get("/v1/caseload-changes", params={"since": "2026-11-02T08:00:00-05:00"}, headers=ADMIN)
    assert fine.status_code == 200


async def test_huge_strings_are_refused_with_a_message(services):
    huge = "x" * 20_000
    results = await answers(services, [
        ("roster", "GET", f"/v1/students?school_id={huge}", None),
        ("caseload", "GET", f"/v1/caseloads/me?reason={huge}", None),
        ("cases", "GET", f"/v1/cases?person={huge}", None),
        ("cases", "POST", f"/v1/cases/{uuid.uuid4()}/close", {"reason": huge}),
        ("caseload", "PUT", "/v1/providers/p@d.example.org", {"schools": [huge]}),
    ])
    assert refused_with_a_message(results) == []


async def test_a_json_body_over_the_limit_is_refused_with_413_and_a_zip_upload_is_not(services):
    async with httpx.AsyncClient(timeout=60) as client:
        big = {"student_ids": [STUDENT] * 5000, "padding": "x" * (2 * 1024 * 1024)}
        response = await client.post(f"{services['caseload'].url}/v1/batch-actions", headers=ADMIN, json=big)
        assert response.status_code == 413
        assert "1,048,576 bytes" in response.json()["detail"]

        async def chunks():  # no Content-Length: counted as it arrives
            for _ in range(40):
                yield b" " * 65536
            yield b"{}"

        response = await client.post(f"{services['caseload'].url}/v1/supports", content=chunks(),
                                     headers={**ADMIN, "Content-Type": "application/json"})
        assert response.status_code == 413
        # The cases and roster services' limit is set lower (CASEFLOW_HTTP_MAX_BODY_BYTES=65536) ...
        response = await client.post(f"{services['cases'].url}/v1/cases/{uuid.uuid4()}/notes", headers=ADMIN,
                                     json={"body": "x" * 70_000})
        assert response.status_code == 413 and "65,536 bytes" in response.json()["detail"]
        # ... and the roster's package uploads keep their own.
        package = io.BytesIO()
        with zipfile.ZipFile(package, "w", zipfile.ZIP_STORED) as z:
            for p in sorted((ROOT / "tests" / "fixtures" / "oneroster" / "bulk_small").glob("*.csv")):
                z.write(p, p.name)
            z.writestr("notes.txt", bytes(range(256)) * 300)
        package = package.getvalue()
        response = await client.post(f"{services['roster'].url}/v1/imports?dry_run=true", headers={
            **ADMIN, "Content-Type": "application/zip"}, content=package)
        assert len(package) > 65_536 and response.status_code == 202, response.text


async def test_malformed_json_and_the_wrong_content_type_are_told_apart(services):
    url = services["cases"].url + "/v1/meetings"
    async with httpx.AsyncClient() as client:
        malformed = await client.post(url, headers={**ADMIN, "Content-Type": "application/json"},
                                      content=b'{"title": "Meeting",')
        assert malformed.status_code == 422 and "not valid JSON" in malformed.json()["detail"]
        as_text = await client.post(url, headers={**ADMIN, "Content-Type": "text/plain"}, content=b"title=Meeting")
        assert as_text.status_code == 415 and "application/json" in as_text.json()["detail"]
        invalid_utf8 = await client.post(url, headers={**ADMIN, "Content-Type": "application/json"},
                                         content=b'{"title": "\xff\xfe"}')
        assert 400 <= invalid_utf8.status_code < 500 and invalid_utf8.json()["detail"], invalid_utf8.text


async def test_a_token_whose_claims_hold_unstorable_text_is_refused(services):
    odd = [bearer(["district_admin"], district="d\u0000x"), bearer(["district_admin"], email="a\u0000@d.org"),
           bearer(["school_admin"], schools=["02M\u0000001"]), bearer(["district_admin"], district="d" * 200)]
    async with httpx.AsyncClient() as client:
        for headers in odd:
            for service, url in (("roster", f"/v1/students/{STUDENT}"), ("caseload", f"/v1/students/{STUDENT}"),
                                 ("cases", f"/v1/students/{STUDENT}/timeline")):
                response = await client.get(services[service].url + url, headers=headers)
                assert response.status_code == 401, (service, response.text)
                assert response.json()["detail"].startswith("invalid token")


async def test_no_odd_input_reached_the_database_unvalidated(services):
    """The kit's last line (a database refusing a value answers 422) is never what answered."""
    await answers(services, text_inputs(NUL) + text_inputs(SURROGATE))
    for service in services.values():
        assert "input reached the database unvalidated" not in service.log()
        assert "Traceback" not in service.log()



async def test_a_misspelt_query_parameter_is_refused_never_ignored(services):
    """`?shcool_id=` ignored would answer the whole unfiltered list as if it were filtered."""
    results = await answers(services, [
        ("cases", "GET", "/v1/cases?shcool_id=02M001", None),
        ("caseload", "GET", "/v1/caseloads/me?grde=10", None),
        ("roster", "GET", "/v1/students?limit=5&schol=02M001", None),
    ])
    assert [r[3] for r in results] == [422, 422, 422]
    assert refused_with_a_message(results) == []
    for r in results:
        assert "this route takes" in r[4]["detail"] and "shcool" not in r[4]["detail"]
    ok = await answers(services, [("cases", "GET", "/v1/cases?school_id=02M001", None)])
    assert ok[0][3] == 200


async def test_a_day_is_written_as_a_day_never_a_number_read_as_seconds(services):
    """Schemathesis found `?due_before=-2.6e-232` answered 200: a number taken as seconds
    since 1970. A day (a due date, a cut-off) is YYYY-MM-DD or refused."""
    results = await answers(services, [
        ("cases", "GET", "/v1/tasks?due_before=-2.628610968297487e-232", None),
        ("cases", "GET", "/v1/tasks?due_before=1700000000", None),
        ("cases", "POST", "/v1/tasks", {"student_id": STUDENT, "title": "Call home",
                                        "assignee_email": "okafor@d.example.org", "due_date": 0}),
    ])
    assert [r[3] for r in results] == [422, 422, 422]
    assert refused_with_a_message(results) == []
    assert (await answers(services, [("cases", "GET", "/v1/tasks?due_before=2026-11-20", None)]))[0][3] == 200
