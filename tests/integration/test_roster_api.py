"""The roster's import API and drop folder on a running roster service (real Kafka and
PostgreSQL): a district admin uploads a package, follows it, reads its problems; a
package dropped in the district's inbox is imported once and filed with its report."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import shutil
import zipfile
from pathlib import Path

import httpx
import pytest

from tests.support import Stack, eventually, token

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "oneroster"
DISTRICT = "nycdoe"


def zipped(folder: Path, to: Path) -> bytes:
    with zipfile.ZipFile(to, "w", zipfile.ZIP_DEFLATED) as z:
        for p in sorted(folder.glob("*.csv")):
            z.write(p, p.name)
    return to.read_bytes()


def admin(district: str = DISTRICT) -> dict:
    return {"Authorization": f"Bearer {token(district, ['district_admin'])}"}


@pytest.fixture
async def roster(system: Stack, tmp_path):
    await system.prepare("roster")
    drop = tmp_path / "drop"
    (drop / DISTRICT / "inbox").mkdir(parents=True)
    service = await system.service("roster", CASEFLOW_ROSTER_DROP_FOLDER=str(drop),
                                   CASEFLOW_ROSTER_DROP_POLL_SECONDS="0.3",
                                   CASEFLOW_ROSTER_PACKAGES=str(tmp_path / "packages")).start().ready()
    service.drop = drop
    return service


async def upload(client: httpx.AsyncClient, folder: Path, to: Path, query: str = "") -> httpx.Response:
    return await client.post(f"/v1/imports{query}", content=zipped(folder, to),
                             headers={**admin(), "Content-Type": "application/zip"})


async def finished(client: httpx.AsyncClient, location: str) -> dict:
    async def done():
        body = (await client.get(location, headers=admin())).json()
        return body if body["status"] != "running" else None

    return await eventually(done, what="the import to finish")


async def test_a_district_admin_uploads_a_package_and_reads_its_report(roster, tmp_path):
    async with httpx.AsyncClient(base_url=roster.url) as client:
        upload = await client.post("/v1/imports", content=zipped(FIXTURES / "errors_small", tmp_path / "p.zip"),
                                   headers={**admin(), "Content-Type": "application/zip"})
        assert upload.status_code == 202
        report = await finished(client, upload.headers["Location"])
        assert report["status"] == "applied" and report["error_count"] == 10 and report["warning_count"] == 1
        assert report["summary"]["students_enrolled"] == 12

        problems = (await client.get(report["problems"], headers=admin())).json()["items"]
        assert any(p["file"] == "users.csv" and p["line"] == 20 and p["source_id"] == "stu-0020"
                   and p["column"] == "familyName" and p["reason"] == "missing required field familyName" for p in problems)
        as_csv = await client.get(report["problems"] + "?format=csv", headers=admin())
        rows = list(csv.DictReader(io.StringIO(as_csv.text)))
        assert as_csv.headers["content-type"].startswith("text/csv") and len(rows) == 11
        assert set(rows[0]) == {"severity", "file", "line", "sourcedId", "column", "value", "reason"}
        assert {r["sourcedId"] for r in rows if r["file"] == "enrollments.csv"} == {"enr-0901", "enr-0902", "enr-0903"}

        history = (await client.get("/v1/imports", headers=admin())).json()["items"]
        assert [i["import_id"] for i in history] == [report["import_id"]]
        students = (await client.get("/v1/students?limit=5", headers=admin())).json()
        assert len(students["items"]) == 5 and students["next_after"]
        staff = (await client.get("/v1/staff", headers=admin())).json()["items"]
        assert {s["source_id"]: s["matched"] for s in staff}["stf-1005"] is False
        classes = (await client.get("/v1/classes?school_id=sch-02M001", headers=admin())).json()["items"]
        assert {c["class_type"] for c in classes} <= {"homeroom", "scheduled"} and classes
        enrolled = (await client.get("/v1/enrollments?user_source_id=stu-0001", headers=admin())).json()["items"]
        assert enrolled and all(e["user_source_id"] == "stu-0001" for e in enrolled)

    # The import's events left through the outbox onto the real broker, keyed by student.
    async def published():
        return len(await roster.stack.records("roster.students.v1")) == 12 or None

    await eventually(published, what="the 12 StudentEnrolled events on Kafka")
    await roster.stack.caught_up("roster")  # and the import's other events, on other topics and partitions
    records = await roster.stack.records("roster.students.v1")
    assert {dict(r.headers)["ce_type"] for r in records} == {b"roster.student_enrolled.v1"}
    assert all(json.loads(r.value)["student_id"].encode() == r.key for r in records)
    completed = await roster.stack.records("roster.imports.v1")
    assert json.loads(completed[0].value)["rejected_rows"] == 10


async def test_imports_and_their_reports_are_the_district_admins_alone(roster, tmp_path):
    async with httpx.AsyncClient(base_url=roster.url) as client:
        upload = await client.post("/v1/imports", content=zipped(FIXTURES / "bulk_small", tmp_path / "p.zip"),
                                   headers={**admin(), "Content-Type": "application/zip"})
        await finished(client, upload.headers["Location"])
        location = upload.headers["Location"]
        assert (await client.get(location, headers=admin("another-district"))).status_code == 404
        assert (await client.get(location + "/problems", headers=admin("another-district"))).status_code == 404
        school_admin = {"Authorization": f"Bearer {token(DISTRICT, ['school_admin'], ['sch-02M001'])}"}
        refused = await client.post("/v1/imports", content=b"PK", headers={**school_admin,
                                                                             "Content-Type": "application/zip"})
        assert refused.status_code == 403 and "district_admin" in refused.json()["detail"]
        assert (await client.post("/v1/imports", content=b"", headers=admin())).status_code == 400


async def test_a_held_import_is_applied_only_when_confirmed(roster, tmp_path):
    async with httpx.AsyncClient(base_url=roster.url) as client:
        first = await client.post("/v1/imports", content=zipped(FIXTURES / "bulk_small", tmp_path / "a.zip"),
                                  headers={**admin(), "Content-Type": "application/zip"})
        await finished(client, first.headers["Location"])
        empty_users = tmp_path / "truncated"
        shutil.copytree(FIXTURES / "bulk_small", empty_users)
        lines = (empty_users / "users.csv").read_text(encoding="utf-8-sig").splitlines(keepends=True)
        (empty_users / "users.csv").write_text("".join(lines[:3]))  # the SIS export died after two rows
        upload = await client.post("/v1/imports", content=zipped(empty_users, tmp_path / "t.zip"),
                                   headers={**admin(), "Content-Type": "application/zip"})
        held = await finished(client, upload.headers["Location"])
        assert held["status"] == "held" and "withdraw" in held["message"]
        active = (await client.get("/v1/students?limit=1000", headers=admin())).json()["items"]
        assert len(active) == 12  # nothing changed

        confirm = await client.post(upload.headers["Location"] + "/confirm", headers=admin())
        assert confirm.status_code == 202
        applied = await eventually(lambda: _status_is(client, upload.headers["Location"], "applied"),
                                   what="the confirmed import")
        assert applied["summary"]["students_withdrawn"] >= 10
        again = await client.post(upload.headers["Location"] + "/confirm", headers=admin())
        assert again.status_code == 409


async def _status_is(client, location, wanted):
    body = (await client.get(location, headers=admin())).json()
    return body if body["status"] == wanted else None


async def test_a_package_in_the_drop_folder_is_imported_once_and_filed_with_its_report(roster, tmp_path):
    inbox = roster.drop / DISTRICT / "inbox"
    zipped(FIXTURES / "bulk_small", inbox / "2026-09-01.zip")
    shutil.copytree(FIXTURES / "no_manifest", inbox / "2026-09-02")  # a folder without a manifest: not a package yet

    processed = roster.drop / DISTRICT / "processed"
    report = await eventually(lambda: _filed(processed, "2026-09-01"), what="the processed package")
    assert report["status"] == "applied" and report["counts"]["students_enrolled"] == 12
    assert (processed / "2026-09-01.zip").exists() and (processed / "2026-09-01.problems.csv").exists()
    assert not (inbox / "2026-09-01.zip").exists()

    zipped(FIXTURES / "missing_bulk_file", inbox / "2026-09-03.zip")
    failed = roster.drop / DISTRICT / "failed"
    report = await eventually(lambda: _filed(failed, "2026-09-03"), what="the failed package")
    assert "no users.csv" in report["message"]
    assert (inbox / "2026-09-02").exists()  # left alone
    async with httpx.AsyncClient(base_url=roster.url) as client:
        history = (await client.get("/v1/imports", headers=admin())).json()["items"]
    assert sorted(i["status"] for i in history) == ["applied", "rejected"]
    assert {i["origin"] for i in history} == {"drop-folder"}


async def _exists(path: Path) -> bool:
    await asyncio.sleep(0)
    return path.exists()


async def _filed(folder: Path, stem: str) -> dict | None:
    """The report of a package filed in folder, once its report and its problems are both
    there: the report is written first, then the problems, and a report being written
    exists before it reads whole."""
    await asyncio.sleep(0)
    try:
        report = json.loads((folder / f"{stem}.report.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return report if (folder / f"{stem}.problems.csv").exists() else None


async def test_reconciliation_shows_what_the_file_said_beside_what_is_held(roster, tmp_path):
    async with httpx.AsyncClient(base_url=roster.url) as client:
        upload = await client.post("/v1/imports", content=zipped(FIXTURES / "bulk_small", tmp_path / "p.zip"),
                                   headers={**admin(), "Content-Type": "application/zip"})
        await finished(client, upload.headers["Location"])
        view = (await client.get("/v1/reconcile/students/stu-0012", headers=admin())).json()
        assert view["last_file"]["file"] == "users.csv" and view["last_file"]["line"] > 1
        assert view["last_file"]["said"]["grade"] == view["held"]["grade"] == "10"
        assert view["differences"] == []
        assert (await client.get("/v1/reconcile/students/stu-0012",
                                 headers=admin("another-district"))).status_code == 404
        klass = (await client.get("/v1/reconcile/classes/cls-02M001-3-401", headers=admin())).json()
        assert klass["held"]["class_type"] == "homeroom"


@pytest.mark.parametrize(("name", "said"), [
    ("not_a_zip", "neither a folder nor a zip archive"),
    ("no_manifest", "no manifest.csv"),
    ("semicolons", "users.csv has no column sourcedId, role, orgSourcedIds, givenName, familyName, grades; its header looks "
                   "`;`-separated"),
])
async def test_an_upload_that_is_not_a_readable_package_is_refused_at_once(roster, tmp_path, name, said):
    package = tmp_path / "p"
    shutil.copytree(FIXTURES / ("no_manifest" if name == "no_manifest" else "bulk_small"), package)
    users = package / "users.csv"
    users.write_text(users.read_text(encoding="utf-8-sig").replace(",", ";"))
    body = b"sourcedId,role\nnot a zip" if name == "not_a_zip" else zipped(package, tmp_path / "p.zip")
    async with httpx.AsyncClient(base_url=roster.url) as client:
        refused = await client.post("/v1/imports", content=body, headers={**admin(), "Content-Type": "application/zip"})
        assert refused.status_code == 422 and said in refused.json()["detail"], refused.text
        assert (await client.get("/v1/imports", headers=admin())).json()["items"] == []  # nothing to follow


async def test_an_upload_naming_another_district_org_is_refused_unless_confirmed(roster, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(FIXTURES / "bulk_small", other)
    orgs = other / "orgs.csv"
    orgs.write_text(orgs.read_text(encoding="utf-8-sig").replace("nycdoe", "yonkers")
                    .replace("New York City Department of Education", "Yonkers Public Schools"))
    async with httpx.AsyncClient(base_url=roster.url) as client:
        await finished(client, (await upload(client, FIXTURES / "bulk_small", tmp_path / "a.zip")).headers["Location"])
        refused = await upload(client, other, tmp_path / "b.zip")
        assert refused.status_code == 409
        assert "orgs.csv names district yonkers (Yonkers Public Schools)" in refused.json()["detail"]
        confirmed = await upload(client, other, tmp_path / "c.zip", "?confirm_district=true")
        assert confirmed.status_code == 202
        assert (await finished(client, confirmed.headers["Location"]))["status"] == "applied"


async def test_a_package_the_drop_folder_held_is_applied_from_held_when_confirmed(roster, tmp_path):
    inbox = roster.drop / DISTRICT / "inbox"
    zipped(FIXTURES / "bulk_small", inbox / "monday.zip")
    await eventually(lambda: _exists(roster.drop / DISTRICT / "processed" / "monday.report.json"), what="monday")
    truncated = tmp_path / "truncated"
    shutil.copytree(FIXTURES / "bulk_small", truncated)
    lines = (truncated / "users.csv").read_text(encoding="utf-8-sig").splitlines(keepends=True)
    (truncated / "users.csv").write_text("".join(lines[:3]))
    zipped(truncated, inbox / "tuesday.zip")
    held = roster.drop / DISTRICT / "held"
    report = await eventually(lambda: _filed(held, "tuesday"), what="tuesday, held")
    assert report["status"] == "held" and any("withdraw" in why for why in report["held_because"])
    async with httpx.AsyncClient(base_url=roster.url) as client:
        location = f"/v1/imports/{report['import_id']}"
        assert (await client.post(location + "/confirm", headers=admin())).status_code == 202
        await eventually(lambda: _status_is(client, location, "applied"), what="the confirmed import")
    # Filed with the district's other applied packages, its report saying applied; nothing left in held/.
    processed = roster.drop / DISTRICT / "processed"
    await eventually(lambda: _exists(processed / "tuesday.report.json"), what="tuesday, filed in processed/")
    assert json.loads((processed / "tuesday.report.json").read_text())["status"] == "applied"
    assert (processed / "tuesday.zip").exists() and not any(held.iterdir())


async def test_confirming_an_import_the_command_line_held_leaves_the_districts_own_package_alone(
        roster, system: Stack, tmp_path):
    """The README trial of issue 8: confirming over HTTP an import held from the command line
    deleted the district's own file (and failed on a folder)."""
    from services.kit import db
    from services.roster.importer import run_import

    pool = await db.create_pool(system.database_url("roster"), min_size=1, max_size=3)
    await run_import(pool, district_id=DISTRICT, path=FIXTURES / "bulk_small", kafka=system.kafka_settings)
    mine = tmp_path / "my_export"
    shutil.copytree(FIXTURES / "bulk_small", mine)
    lines = (mine / "users.csv").read_text(encoding="utf-8-sig").splitlines(keepends=True)
    (mine / "users.csv").write_text("".join(lines[:3]))
    held = await run_import(pool, district_id=DISTRICT, path=mine, kafka=system.kafka_settings)
    assert held.status == "held" and f"POST /v1/imports/{held.import_id}/confirm" in held.message
    async with httpx.AsyncClient(base_url=roster.url) as client:
        location = f"/v1/imports/{held.import_id}"
        assert (await client.post(location + "/confirm", headers=admin())).status_code == 202
        await eventually(lambda: _status_is(client, location, "applied"), what="the confirmed import")
    assert (mine / "users.csv").exists(), "the district's own package is theirs to keep"
    await pool.close()


async def test_a_rejected_row_shows_in_the_reconcile_view_and_a_second_school_sees_its_student(roster, tmp_path):
    package = tmp_path / "p"
    shutil.copytree(FIXTURES / "bulk_small", package)
    users = package / "users.csv"
    text = users.read_text(encoding="utf-8-sig")
    text = text.replace(",Sofia,Rodriguez,", ",Sofia,,")  # stu-0001 without a family name
    text = text.replace("stu-0007,active,2026-09-01T12:00:00.000Z,true,sch-02M104,",
                        'stu-0007,active,2026-09-01T12:00:00.000Z,true,"sch-02M104,sch-02M475",')
    users.write_text(text)
    async with httpx.AsyncClient(base_url=roster.url) as client:
        await finished(client, (await upload(client, FIXTURES / "bulk_small", tmp_path / "a.zip")).headers["Location"])
        second = await upload(client, package, tmp_path / "b.zip")
        assert (await finished(client, second.headers["Location"]))["status"] == "applied"
        view = (await client.get("/v1/reconcile/students/stu-0001", headers=admin())).json()
        assert view["last_file"]["accepted"] is False and view["last_file"]["problems"] == ["missing required field familyName"]
        assert view["held"]["status"] == "active"

        hs_admin = {"Authorization": f"Bearer {token(DISTRICT, ['school_admin'], ['sch-02M475'])}"}
        students = (await client.get("/v1/students?limit=1000", headers=hs_admin)).json()["items"]
        dual = [s for s in students if s["source_id"] == "stu-0007"]
        assert dual and dual[0]["school_id"] == "sch-02M104" and dual[0]["school_ids"] == ["sch-02M104", "sch-02M475"]
        assert (await client.get(f"/v1/students/{dual[0]['student_id']}", headers=hs_admin)).status_code == 200


def lying(archive: bytes, member: str, lie: str) -> bytes:
    """The archive with one member's central directory entry (what zipfile trusts) or its
    compressed bytes altered: sizes or CRC that do not match its contents, or damaged data."""
    data = bytearray(archive)
    entry = data.index(b"PK\x01\x02")  # the first central directory entry
    while data[entry + 46:entry + 46 + len(member)] != member.encode():
        entry = data.index(b"PK\x01\x02", entry + 4)
    crc, compressed, size = (int.from_bytes(data[entry + at:entry + at + 4], "little") for at in (16, 20, 24))
    local = int.from_bytes(data[entry + 42:entry + 46], "little")
    start = local + 30 + int.from_bytes(data[local + 26:local + 28], "little") + int.from_bytes(
        data[local + 28:local + 30], "little")

    def put(at: int, value: int) -> None:
        data[entry + at:entry + at + 4] = value.to_bytes(4, "little")

    if lie == "smaller than it is":
        put(24, size // 3)
    elif lie == "larger than it is":
        put(24, size * 3)
    elif lie == "another CRC":
        put(16, crc ^ 0x5A5A5A5A)
    elif lie == "damaged data":
        for at in range(start + compressed // 2, start + compressed // 2 + 16):
            data[at] ^= 0xFF
    elif lie == "compressed size too small":
        put(20, compressed // 2)
    return bytes(data)


@pytest.mark.parametrize("lie", ["smaller than it is", "another CRC", "damaged data", "compressed size too small",
                                 "larger than it is"])
async def test_a_zip_whose_headers_lie_is_refused_with_why_and_its_upload_is_removed(roster, tmp_path, lie):
    """Issue 9: a zip whose headers lie about sizes ended as "failed: BadZipFile" and its
    upload stayed on disk. An archive is read only when each member reads to its end with
    the CRC it declares: any other is refused with a reason a data team can act on, and the
    upload is gone once the import is final. (A member declared larger than it is, whose
    bytes are whole and match its CRC, reads right and is imported.)"""
    body = lying(zipped(FIXTURES / "bulk_small", tmp_path / "p.zip"), "users.csv", lie)
    async with httpx.AsyncClient(base_url=roster.url) as client:
        sent = await client.post("/v1/imports", content=body, headers={**admin(), "Content-Type": "application/zip"})
        if lie == "larger than it is":
            assert (await finished(client, sent.headers["Location"]))["status"] == "applied"
            assert not any((tmp_path / "packages").rglob("*.zip"))
            return
        if sent.status_code == 202:
            report = await finished(client, sent.headers["Location"])
            assert report["status"] == "rejected", report
            said = report["message"]
        else:
            assert sent.status_code == 422, sent.text
            said = sent.json()["detail"]
        assert "users.csv" in said and "damaged" in said and "make the zip again" in said, said
        assert "BadZipFile" not in said
        assert not any((tmp_path / "packages").rglob("*.zip")), "the upload is removed once its import is final"


async def test_an_archive_damaged_far_into_a_large_file_is_rejected_by_its_import_and_removed(roster, tmp_path):
    """The damage shows only when the import reads that far (the upload's checks read each
    file's header): the import ends rejected, saying which file to zip again, nothing held
    changes, and the upload is removed."""
    package = tmp_path / "big"
    shutil.copytree(FIXTURES / "bulk_small", package)
    enrollments = package / "enrollments.csv"
    lines = enrollments.read_text(encoding="utf-8-sig").splitlines()
    first = lines[1].split(",")
    padding = (",".join([*first[:3], f"enr-pad-{i}", *first[4:]]) for i in range(40_000))
    enrollments.write_text("\n".join([*lines, *padding]) + "\n")
    body = lying(zipped(package, tmp_path / "big.zip"), "enrollments.csv", "damaged data")
    async with httpx.AsyncClient(base_url=roster.url) as client:
        sent = await client.post("/v1/imports", content=body, headers={**admin(), "Content-Type": "application/zip"})
        assert sent.status_code == 202, sent.text
        report = await finished(client, sent.headers["Location"])
        assert report["status"] == "rejected" and "enrollments.csv in the archive is damaged" in report["message"]
        assert not any((tmp_path / "packages").rglob("*.zip")), "the upload is removed once its import is final"
        students = await client.get("/v1/students", headers=admin())
        assert students.status_code == 200 and students.json()["items"] == []  # nothing was applied


async def test_a_district_whose_drop_folder_cannot_be_read_holds_no_other_district_back_and_is_reported(
        roster, tmp_path):
    """Issue 9: every background task survives one bad input, and /readyz tells the truth:
    one district's unreadable inbox (here a file where the folder should be) is reported as
    the drop folder failing, while another district's package is imported as usual."""
    (roster.drop / "aaa-district").mkdir()
    (roster.drop / "aaa-district" / "inbox").write_text("not a folder")  # sorted before nycdoe
    async with httpx.AsyncClient(base_url=roster.url) as client:
        async def not_ready():
            answer = await client.get("/readyz")
            return answer.status_code == 503 and answer.json()["checks"]["watch"]
        check = await eventually(not_ready, what="the drop folder reported failing")
        assert check["ok"] is False and "aaa-district" in check["error"] and check["state"] == "running"

        inbox = roster.drop / DISTRICT / "inbox"
        zipped(FIXTURES / "bulk_small", inbox / "2026-09-01.zip")
        processed = roster.drop / DISTRICT / "processed"
        await eventually(lambda: _exists(processed / "2026-09-01.report.json"), what="nycdoe's package, imported")

        (roster.drop / "aaa-district" / "inbox").unlink()
        (roster.drop / "aaa-district" / "inbox").mkdir()

        async def ready():
            return (await client.get("/readyz")).status_code == 200
        await eventually(ready, what="ready again once the folder reads")
