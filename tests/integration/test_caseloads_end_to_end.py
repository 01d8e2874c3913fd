"""From a district's file to a teacher's caseload, across real Kafka and PostgreSQL: the
roster imports the package and publishes; the caseload service follows within seconds,
says why each student is there, and shows each caller only what they may see."""

from __future__ import annotations

import zipfile
from pathlib import Path

import httpx
import pytest

from services.roster.domain import student_id_for
from tests.support import Stack, eventually, token

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "oneroster"
DISTRICT = "nycdoe"
MARIA = "maria.santos1@schools.example.org"  # homeroom 3-401 at sch-02M001
KEISHA = "keisha.williams1@schools.example.org"  # no email in bulk_small: unmatched


def bearer(email: str, roles: list[str], schools: list[str] | None = None, district: str = DISTRICT) -> dict:
    from services.kit.auth import mint
    from tests.support import SECRET

    return {"Authorization": "Bearer " + mint(SECRET, email=email, district_id=district, schools=schools or [],
                                               roles=roles)}


async def upload(roster, package: Path, tmp_path: Path) -> None:
    archive = tmp_path / f"{package.name}.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for p in sorted(package.glob("*.csv")):
            z.write(p, p.name)
    admin = {"Authorization": f"Bearer {token(DISTRICT, ['district_admin'])}", "Content-Type": "application/zip"}
    async with httpx.AsyncClient(base_url=roster.url) as client:
        location = (await client.post("/v1/imports", content=archive.read_bytes(), headers=admin)).headers["Location"]

        async def applied():
            body = (await client.get(location, headers=admin)).json()
            assert body["status"] in ("running", "applied"), body
            return body["status"] == "applied"

        await eventually(applied, what="the import")


async def caseload(service, headers) -> dict[str, list[str]]:
    async with httpx.AsyncClient(base_url=service.url) as client:
        body = (await client.get("/v1/caseloads/me", headers=headers)).json()
    return {item["student_id"]: [w["detail"] for w in item["why"]] for item in body["items"]}


async def test_a_teachers_caseload_follows_the_districts_files(system: Stack, tmp_path):
    await system.prepare("roster", "caseload")
    roster = await system.service("roster").start().ready()
    caseloads = await system.service("caseload").start().ready()
    await upload(roster, FIXTURES / "bulk_small", tmp_path)

    maria = bearer(MARIA, ["caseload_viewer"], ["sch-02M001"])
    stu1, stu2 = str(student_id_for(DISTRICT, "stu-0001")), str(student_id_for(DISTRICT, "stu-0002"))

    async def marias_homeroom():
        held = await caseload(caseloads, maria)
        return held if {stu1, stu2} <= set(held) else None

    # Generous: on a broker started moments ago, the first consumer groups take a while to form.
    await eventually(marias_homeroom, timeout=90, what="Maria's homeroom on her caseload")
    # Every other fact of the file too (the art class, Keisha's sections, other students are
    # keyed apart and may come later): what is absent below is absent for good.
    await system.caught_up("roster", "caseload")
    held = await caseload(caseloads, maria)
    assert held[stu1] == ["homeroom Class 3-401"]  # the art class is not a K-5 caseload rule
    keisha = bearer(KEISHA, ["caseload_viewer"], ["sch-02M475"])
    assert await caseload(caseloads, keisha) == {}  # unmatched teacher: no caseload

    async with httpx.AsyncClient(base_url=caseloads.url) as client:
        stu10 = student_id_for(DISTRICT, "stu-0010")
        assert (await client.get(f"/v1/students/{stu1}", headers=maria)).status_code == 200
        assert (await client.get(f"/v1/students/{stu10}", headers=maria)).status_code == 404  # not hers
        other = bearer("admin@elsewhere.org", ["district_admin"], district="another-district")
        assert (await client.get(f"/v1/students/{stu1}", headers=other)).status_code == 404
        assert (await client.get(f"/v1/caseloads/{KEISHA}", headers=maria)).status_code == 403

    # The next day's file gives Keisha an email: her caseload appears.
    await upload(roster, FIXTURES / "bulk_small_next", tmp_path)

    async def keishas_sections():
        held = await caseload(caseloads, keisha)
        return held if str(stu10) in held else None

    await eventually(keishas_sections, timeout=60, what="Keisha's caseload once she is matched")
    await system.caught_up("roster", "caseload")  # each of her sections, and their events published
    held = await caseload(caseloads, keisha)
    assert any(d.startswith("section ELA9-01") for d in held[str(stu10)])
    admin = bearer("admin@nycdoe.org", ["district_admin"])
    async with httpx.AsyncClient(base_url=caseloads.url) as client:
        listing = (await client.get(f"/v1/students/{stu10}/caseloads", headers=admin)).json()
    assert KEISHA in {c["owner_email"] for c in listing["caseloads"]}
    # Every change was published, keyed by student.
    records = await system.records("caseload.memberships.v1")
    assert records and all(r.key for r in records)


async def test_a_caseload_follows_the_calendar_without_a_new_file(system: Stack, tmp_path):
    """CHEM-01 is a fall-term section (its enrolments end 2027-01-29): the day after, its
    teacher no longer has its students, though no file said so that day."""
    await system.prepare("roster", "caseload")
    roster = await system.service("roster").start(CASEFLOW_TODAY="2027-01-29").ready()
    caseloads = await system.service("caseload").start().ready()
    await upload(roster, FIXTURES / "bulk_small_next", tmp_path)  # Keisha, matched, teaches CHEM-01
    keisha = bearer(KEISHA, ["caseload_viewer"], ["sch-02M475"])
    stu12 = str(student_id_for(DISTRICT, "stu-0012"))

    async def in_chemistry():
        held = await caseload(caseloads, keisha)
        return held if "section CHEM-01" in held.get(stu12, []) else None

    await eventually(in_chemistry, timeout=90, what="stu-0012 on Keisha's caseload through CHEM-01")

    roster.stop()
    await roster.start(CASEFLOW_TODAY="2027-01-30").ready()  # the roster's calendar step runs as it starts

    async def term_over():
        held = await caseload(caseloads, keisha)
        return held if stu12 not in held and held else None

    await eventually(term_over, timeout=60, what="the fall term's end on Keisha's caseload")
    # The step removed CHEM-01's other students in the same transaction, on other partitions.
    await system.caught_up("roster", "caseload")
    held = await caseload(caseloads, keisha)
    assert held and all("CHEM-01" not in d for details in held.values() for d in details)
