"""Every HTTP call carries a signed token; every read is scoped to the caller's district
and schools; another district's student answers 404."""

from __future__ import annotations

import re

import httpx
import pytest

from contracts.sis import SisStudentEnrolled
from services.roster.domain import student_id_for
from tests.support import Stack, eventually, token

pytestmark = pytest.mark.integration

DISTRICT = "d-http"


@pytest.fixture
async def roster(system: Stack):
    await system.prepare("roster", "caseload")
    roster = await system.service("roster").start().ready()
    caseload = await system.service("caseload").start().ready()
    await system.publish(SisStudentEnrolled(district_id=DISTRICT, source_id="S-1", school_id="02M001", grade="05",
                                            given_name="Ana", family_name="Reyes"))

    async def in_caseload():
        async with httpx.AsyncClient() as client:
            r = await client.get(f"{caseload.url}/v1/students/{student_id_for(DISTRICT, 'S-1')}",
                                 headers=auth(DISTRICT, ["district_admin"]))
            return r.status_code == 200

    await eventually(in_caseload, what="the student in both services")
    return roster, caseload


def auth(district: str, roles: list[str], schools: list[str] | None = None, **kw) -> dict:
    return {"Authorization": f"Bearer {token(district, roles, schools, **kw)}"}


async def test_a_call_without_a_valid_token_is_refused(roster):
    service, _ = roster
    async with httpx.AsyncClient(base_url=service.url) as client:
        assert (await client.get("/v1/students")).status_code == 401
        assert (await client.get("/v1/students", headers={"Authorization": "Bearer not.a.token"})).status_code == 401
        expired = auth(DISTRICT, ["district_admin"], ttl=-5)
        response = await client.get("/v1/students", headers=expired)
        assert response.status_code == 401 and response.json()["detail"] == "token expired"
        forged = auth(DISTRICT, ["district_admin"], secret="someone-elses-secret-of-enough-length")
        assert (await client.get("/v1/students", headers=forged)).status_code == 401


async def test_a_district_admin_sees_their_district_and_another_district_gets_404(roster):
    service, caseload = roster
    sid = student_id_for(DISTRICT, "S-1")
    async with httpx.AsyncClient() as client:
        mine = await client.get(f"{service.url}/v1/students", headers=auth(DISTRICT, ["district_admin"]))
        assert [s["source_id"] for s in mine.json()["items"]] == ["S-1"]
        assert (await client.get(f"{service.url}/v1/students/{sid}",
                                 headers=auth(DISTRICT, ["district_admin"]))).status_code == 200
        other = auth("another-district", ["district_admin"])
        assert (await client.get(f"{service.url}/v1/students", headers=other)).json()["items"] == []
        for url in (f"{service.url}/v1/students/{sid}", f"{caseload.url}/v1/students/{sid}"):
            response = await client.get(url, headers=other)
            assert response.status_code == 404 and response.json() == {"detail": "student not found"}


async def test_a_school_admin_sees_only_their_schools(roster):
    service, caseload = roster
    sid = student_id_for(DISTRICT, "S-1")
    async with httpx.AsyncClient() as client:
        for url in (f"{service.url}/v1/students/{sid}", f"{caseload.url}/v1/students/{sid}"):
            assert (await client.get(url, headers=auth(DISTRICT, ["school_admin"], ["02M001"]))).status_code == 200
            assert (await client.get(url, headers=auth(DISTRICT, ["school_admin"], ["09X999"]))).status_code == 404
        listed = await client.get(f"{service.url}/v1/students", headers=auth(DISTRICT, ["school_admin"], ["09X999"]))
        assert listed.json()["items"] == []


async def test_a_role_without_roster_access_is_told_so(roster):
    service, _ = roster
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{service.url}/v1/students", headers=auth(DISTRICT, ["caseload_viewer"], ["02M001"]))
    assert response.status_code == 403 and "district_admin" in response.json()["detail"]


async def test_a_bad_request_gets_a_4xx_that_says_what_is_wrong(roster):
    service, _ = roster
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{service.url}/v1/students?limit=0", headers=auth(DISTRICT, ["district_admin"]))
        assert response.status_code == 422
        assert response.json()["problems"][0]["field"] == "query.limit"
        response = await client.get(f"{service.url}/v1/students/not-a-uuid", headers=auth(DISTRICT, ["district_admin"]))
        assert response.status_code == 422


async def test_health_readiness_metrics_and_asyncapi_are_served(roster):
    service, _ = roster
    async with httpx.AsyncClient(base_url=service.url) as client:
        assert (await client.get("/healthz")).json()["status"] == "ok"
        ready = (await client.get("/readyz")).json()
        assert ready["ready"] and ready["checks"]["migrations"]["pending"] == []
        metrics = (await client.get("/metrics")).text
        assert "caseflow_events_consumed_total" in metrics and "caseflow_batch_handle_seconds_bucket" in metrics
        spec = (await client.get("/asyncapi.json")).json()
    assert spec["asyncapi"].startswith("3.")
    channels = {c["address"] for c in spec["channels"].values()}
    assert {service.stack.topic("sis.students.v1"), service.stack.topic("roster.students.v1")} <= channels
    payloads = [m["payload"] for m in spec["components"]["messages"].values()]
    assert any("source_id" in str(p) for p in payloads)


async def test_the_api_docs_work_offline_and_document_the_package_upload(roster):
    """Issue 10: /docs loaded Swagger UI from a CDN (blank without internet), and
    POST /v1/imports showed no request body."""
    service, _ = roster
    async with httpx.AsyncClient(base_url=service.url) as client:
        for page in ("/docs", "/redoc"):
            html = (await client.get(page)).text
            scripts = re.findall(r'src="([^"]+)"', html)
            assert scripts and all(src.startswith("/docs-assets/") for src in scripts), scripts
            for src in scripts:
                asset = await client.get(src)
                assert asset.status_code == 200 and len(asset.content) > 100_000
        document = (await client.get("/openapi.json")).json()
    upload = document["paths"]["/v1/imports"]["post"]
    assert upload["requestBody"]["required"]
    assert upload["requestBody"]["content"]["application/zip"]["schema"]["format"] == "binary"
    # Every route says it takes a bearer token, so Swagger UI offers "Authorize".
    (scheme,) = document["components"]["securitySchemes"].values()
    assert scheme["type"] == "http" and scheme["scheme"] == "bearer"
    assert all(op.get("security") for path in document["paths"].values() for op in path.values())


async def test_no_student_name_reaches_the_logs(roster):
    service, caseload = roster
    for log in (service.log(), caseload.log()):
        assert "Reyes" not in log and "Ana" not in log
