"""Importing OneRoster packages on a real PostgreSQL: only changes are stored and published,
bad rows are reported and skipped, bad packages change nothing, a truncated file is held."""

from __future__ import annotations

import uuid
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contracts import cloudevents
from contracts.topics import TOPICS
from services.kit.settings import KafkaSettings
from services.roster.importer import run_import
from tests.packages import Roster, write

pytestmark = pytest.mark.integration
KAFKA = KafkaSettings()


def school_roster(n_students: int = 10) -> Roster:
    r = Roster(schools={"02M001": "P.S. 1", "02M475": "Stuyvesant HS"})
    r.teachers = {"T1": {"school": "02M001", "given": "Maria", "family": "Lopez", "email": "mlopez@example.org"},
                  "T2": {"school": "02M475", "given": "John", "family": "Smith", "email": None}}
    r.classes = {"HR-401": {"school": "02M001", "type": "homeroom", "title": "3-401", "grades": "03"},
                 "ALG1-02": {"school": "02M475", "type": "scheduled", "title": "Algebra I", "grades": "09"}}
    r.enrollments = {("HR-401", "T1"): {"role": "teacher", "primary": True},
                     ("ALG1-02", "T2"): {"role": "teacher", "primary": True}}
    for i in range(n_students):
        elementary = i % 2 == 0
        sid = f"S{i}"
        r.students[sid] = {"school": "02M001" if elementary else "02M475", "grade": "03" if elementary else "09",
                           "given": f"Given{i}", "family": f"Family{i}", "born": "2016-05-01" if elementary else "2011-05-01"}
        r.enrollments[("HR-401" if elementary else "ALG1-02", sid)] = {"role": "student"}
    return r


async def events_in_outbox(pool) -> list:
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT topic, payload, headers FROM outbox ORDER BY id")
    events = []
    for r in rows:
        flat = r["headers"]
        headers = [(flat[i], flat[i + 1].encode()) for i in range(0, len(flat), 2)]
        events.append(cloudevents.decode(TOPICS[r["topic"]], r["payload"], headers))  # the contract accepts it
    return events


async def change_events(pool) -> list:
    return [e for e in await events_in_outbox(pool) if e.event_type != "roster.import_completed.v1"]


async def clear_outbox(pool) -> None:
    async with pool.acquire() as conn:
        await conn.execute("DELETE FROM outbox")


async def held_state(pool, district: str) -> dict:
    async with pool.acquire() as conn:
        students = {r["source_id"]: (r["school_id"], r["grade"], r["given_name"], r["family_name"],
                                     r["birth_date"].isoformat() if r["birth_date"] else None, r["status"])
                    for r in await conn.fetch("SELECT * FROM students WHERE district_id = $1", district)}
        staff = {r["source_id"]: (r["role"], r["given_name"], r["family_name"], r["email"], r["status"])
                 for r in await conn.fetch("SELECT * FROM staff WHERE district_id = $1", district)}
        classes = {r["source_id"]: (r["school_id"], r["class_type"], r["title"])
                   for r in await conn.fetch("SELECT * FROM classes WHERE district_id = $1", district)}
        enrollments = {(r["class_source_id"], r["user_source_id"]): (r["role"], r["is_primary"])
                       for r in await conn.fetch("SELECT * FROM class_members WHERE district_id = $1", district)}
    return {"students": students, "staff": staff, "classes": classes, "enrollments": enrollments}


def apply_events(state: dict, events: list) -> dict:
    """What a subscriber holding `state` knows after reading the events: the contract's meaning."""
    s = {k: dict(v) for k, v in state.items()}
    for e in events:
        match e.event_type:
            case "roster.student_enrolled.v1" | "roster.student_updated.v1":
                s["students"][e.source_id] = (e.school_id, e.grade, e.given_name, e.family_name,
                                              e.birth_date.isoformat() if e.birth_date else None, "active")
            case "roster.student_withdrawn.v1":
                s["students"][e.source_id] = (*s["students"][e.source_id][:5], "withdrawn")
            case "roster.staff_upserted.v1":
                s["staff"][e.source_id] = (e.role, e.given_name, e.family_name, e.email, "active")
            case "roster.staff_deactivated.v1":
                s["staff"][e.source_id] = (*s["staff"][e.source_id][:4], "inactive")
            case "roster.class_upserted.v1":
                s["classes"][e.source_id] = (e.school_id, e.class_type, e.title)
            case "roster.class_removed.v1":
                del s["classes"][e.source_id]
            case "roster.enrollment_added.v1":
                s["enrollments"][(e.class_source_id, e.user_source_id)] = (e.role, e.primary)
            case "roster.enrollment_removed.v1":
                del s["enrollments"][(e.class_source_id, e.user_source_id)]
            case "roster.district_upserted.v1":
                pass  # the district's name: not part of the roster held here
            case other:
                raise AssertionError(f"unexpected {other}")
    return s


async def test_a_first_import_stores_the_roster_and_publishes_each_fact_once(service_db, tmp_path):
    pool = await service_db("roster")
    result = await run_import(pool, district_id="d1", path=write(school_roster(), tmp_path / "p"), kafka=KAFKA)
    assert result.status == "applied"
    assert result.counts == {"students_enrolled": 10, "students_updated": 0, "students_withdrawn": 0,
                             "staff_upserted": 2, "staff_deactivated": 0, "classes_upserted": 2,
                             "classes_removed": 0, "enrollments_added": 12, "enrollments_removed": 0,
                             "enrollment_records_changed": 12, "enrollment_records_removed": 0}
    events = await events_in_outbox(pool)
    assert [e.event_type for e in events].count("roster.student_enrolled.v1") == 10
    assert events[-1].event_type == "roster.import_completed.v1" and events[-1].counts == result.counts
    state = await held_state(pool, "d1")
    assert state == apply_events({"students": {}, "staff": {}, "classes": {}, "enrollments": {}}, events[:-1])
    warnings = [(p.file, p.line, p.column) for p in result.problems if p.severity == "warning"]
    assert warnings == [("users.csv", 13, "email"),  # the unmatched teacher
                        ("orgs.csv", 2, "sourcedId")]  # the district org D is remembered for district d1


async def test_re_importing_the_identical_package_publishes_no_change(service_db, tmp_path):
    pool = await service_db("roster")
    package = write(school_roster(), tmp_path / "p", zip_to=tmp_path / "p.zip")
    await run_import(pool, district_id="d1", path=package, kafka=KAFKA)
    await clear_outbox(pool)
    again = await run_import(pool, district_id="d1", path=package, kafka=KAFKA)
    assert again.status == "applied" and sum(again.counts.values()) == 0
    assert await change_events(pool) == []


async def test_the_district_org_s_name_is_published_when_first_seen_and_when_it_changes(service_db, tmp_path):
    pool = await service_db("roster")
    roster = school_roster()
    await run_import(pool, district_id="d-named", path=write(roster, tmp_path / "p1"), kafka=KAFKA)
    named = [e for e in await change_events(pool) if e.event_type == "roster.district_upserted.v1"]
    assert [(e.district_id, e.name, e.source_id) for e in named] == [("d-named", "District", "D")]
    await clear_outbox(pool)
    await run_import(pool, district_id="d-named", path=write(roster, tmp_path / "p2"), kafka=KAFKA)
    assert await change_events(pool) == []  # the same name: nothing to say
    roster.district_name = "Springfield Public Schools"
    await run_import(pool, district_id="d-named", path=write(roster, tmp_path / "p3"), kafka=KAFKA)
    assert [(e.event_type, e.name) for e in await change_events(pool)] == [
        ("roster.district_upserted.v1", "Springfield Public Schools")]


async def test_a_dry_run_shows_the_changes_and_changes_nothing(service_db, tmp_path):
    pool = await service_db("roster")
    result = await run_import(pool, district_id="d1", path=write(school_roster(), tmp_path / "p"), kafka=KAFKA,
                              dry_run=True)
    assert result.status == "dry_run" and result.counts["students_enrolled"] == 10
    assert result.examples["students_enrolled"][:2] == ["S0", "S1"]
    assert await held_state(pool, "d1") == {"students": {}, "staff": {}, "classes": {}, "enrollments": {}}
    assert await events_in_outbox(pool) == []


async def test_a_truncated_file_is_held_by_the_wipe_guard_until_confirmed(service_db, tmp_path):
    pool = await service_db("roster")
    await run_import(pool, district_id="d1", path=write(school_roster(10), tmp_path / "full"), kafka=KAFKA)
    await clear_outbox(pool)
    before = await held_state(pool, "d1")
    truncated = write(school_roster(7), tmp_path / "truncated")  # 3 of 10 students would go: 30% > 20%

    held = await run_import(pool, district_id="d1", path=truncated, kafka=KAFKA)
    assert held.status == "held" and "withdraw 3 of 10 active students" in held.message
    assert await held_state(pool, "d1") == before and await events_in_outbox(pool) == []

    confirmed = await run_import(pool, district_id="d1", path=truncated, kafka=KAFKA, confirm=True)
    assert confirmed.status == "applied" and confirmed.counts["students_withdrawn"] == 3
    withdrawn = [e for e in await change_events(pool) if e.event_type == "roster.student_withdrawn.v1"]
    assert sorted(e.source_id for e in withdrawn) == ["S7", "S8", "S9"]
    assert {e.reason for e in withdrawn} == {"absent_from_bulk_file"}


async def test_a_delta_applies_only_its_rows(service_db, tmp_path):
    pool = await service_db("roster")
    roster = school_roster(8)  # withdrawing 1 of 8 stays under the wipe guard's 20%
    await run_import(pool, district_id="d1", path=write(roster, tmp_path / "bulk"), kafka=KAFKA)
    await clear_outbox(pool)
    delta = Roster(students={"S9": {"school": "02M001", "grade": "KG", "given": "New", "family": "Kid"}},
                   enrollments={("HR-401", "S9"): {"role": "student"}})
    path = write(delta, tmp_path / "delta", modes={"orgs": "absent", "classes": "absent", "users": "delta",
                                                    "enrollments": "delta", "demographics": "absent"},
                 deleted={"users": [{"sourcedId": "S1", "role": "student"}],
                          "enrollments": [{"sourcedId": "x", "classSourcedId": "ALG1-02", "userSourcedId": "S1",
                                           "role": "student"}]})
    result = await run_import(pool, district_id="d1", path=path, kafka=KAFKA)
    assert result.status == "applied", result.problems
    assert {k: v for k, v in result.counts.items() if v} == {
        "students_enrolled": 1, "students_withdrawn": 1, "enrollments_added": 1, "enrollments_removed": 1,
        "enrollment_records_changed": 1, "enrollment_records_removed": 1}
    state = await held_state(pool, "d1")
    assert state["students"]["S1"][-1] == "withdrawn" and state["students"]["S0"][-1] == "active"
    assert ("HR-401", "S9") in state["enrollments"] and ("ALG1-02", "S1") not in state["enrollments"]


@pytest.mark.parametrize("name", ["traversal", "bomb", "no_manifest", "missing_bulk_file", "not_csv"])
async def test_an_unusable_package_is_rejected_whole_and_changes_nothing(service_db, tmp_path, name):
    pool = await service_db("roster")
    good = write(school_roster(), tmp_path / "good")
    await run_import(pool, district_id="d1", path=good, kafka=KAFKA)
    await clear_outbox(pool)
    before = await held_state(pool, "d1")
    bad = tmp_path / f"{name}.zip"
    with zipfile.ZipFile(bad, "w", zipfile.ZIP_DEFLATED) as z:
        for p in good.iterdir():
            if name == "no_manifest" and p.name == "manifest.csv":
                continue
            if name == "missing_bulk_file" and p.name == "users.csv":
                continue
            z.write(p, p.name)
        if name == "traversal":
            z.writestr("../../etc/cron.d/evil.csv", "x")
        if name == "bomb":
            z.writestr("orgs_padding.csv", "0" * (50 * 1024**2))
        if name == "not_csv":  # a Latin-1 name on the second record: line 3
            z.writestr("users.csv", (good / "users.csv").read_bytes().replace(b"Given1", b"Jos\xe9"))
    result = await run_import(pool, district_id="d1", path=bad, kafka=KAFKA)
    assert result.status == "rejected"
    expected = {"traversal": "unsafe path", "bomb": "zip bomb", "no_manifest": "no manifest.csv",
                "missing_bulk_file": "no users.csv", "not_csv": "not UTF-8: line 3 "}[name]
    assert expected in result.message
    assert await held_state(pool, "d1") == before and await events_in_outbox(pool) == []


async def test_bad_rows_are_reported_with_file_line_column_and_reason_and_the_rest_proceeds(service_db, tmp_path):
    pool = await service_db("roster")
    roster = school_roster(4)
    roster.students["S-BAD"] = {"school": "09X999", "grade": "03", "given": "No", "family": "School"}
    roster.students["S-GRADE"] = {"school": "02M001", "grade": "3rd", "given": "Bad", "family": "Grade"}
    roster.classes["LAB-1"] = {"school": "02M001", "type": "lab", "title": "Lab"}
    roster.enrollments[("HR-999", "S0")] = {"role": "student"}
    roster.enrollments[("ALG1-02", "S-GHOST")] = {"role": "student"}
    roster.classes["HR-402"] = {"school": "02M001", "type": "homeroom", "title": "3-402"}
    roster.enrollments[("HR-402", "S0")] = {"role": "student"}  # S0 is already in homeroom HR-401
    # 2 of 8 users rejected is more than the guard's 20%: a person confirms it.
    result = await run_import(pool, district_id="d1", path=write(roster, tmp_path / "p"), kafka=KAFKA, confirm=True)
    assert result.status == "applied"
    reasons = {(p.file, p.column, p.value, p.reason) for p in result.problems if p.severity == "error"}
    assert ("users.csv", "orgSourcedIds", "09X999", "refers to an unknown org") in reasons
    assert ("users.csv", "grades", "3rd", "bad grade: expected PK, KG, 01..12 and the like") in reasons
    assert any(r[:3] == ("classes.csv", "classType", "lab") and r[3].startswith("bad value") for r in reasons)
    assert ("enrollments.csv", "classSourcedId", "HR-999", "refers to an unknown class") in reasons
    assert ("enrollments.csv", "userSourcedId", "S-GHOST", "refers to an unknown user") in reasons
    assert any(r[:3] == ("enrollments.csv", "classSourcedId", "HR-402") and "already in a homeroom" in r[3]
               for r in reasons)
    assert all(p.line and p.line > 1 for p in result.problems)
    state = await held_state(pool, "d1")
    assert set(state["students"]) == {"S0", "S1", "S2", "S3"}  # the good rows went in


student_ids = [f"S{i}" for i in range(6)]
rosters = st.builds(
    lambda students, teacher_email, class_types, memberships: _roster_from(students, teacher_email, class_types,
                                                                           memberships),
    st.dictionaries(st.sampled_from(student_ids),
                    st.tuples(st.sampled_from(["02M001", "02M475"]), st.sampled_from(["KG", "03", "09"]),
                              st.sampled_from(["Ana", "Lee"]), st.sampled_from([None, "2015-01-01", "2016-02-02"]))),
    st.sampled_from([None, "t@example.org"]),
    st.lists(st.sampled_from(["homeroom", "scheduled"]), min_size=0, max_size=3),
    st.sets(st.tuples(st.integers(0, 2), st.sampled_from(student_ids))),
)


def _roster_from(students, teacher_email, class_types, memberships) -> Roster:
    r = Roster(schools={"02M001": "P.S. 1", "02M475": "HS 475"})
    r.teachers = {"T1": {"school": "02M001", "given": "Maria", "family": "Lopez", "email": teacher_email}}
    for sid, (school, grade, given, born) in students.items():
        r.students[sid] = {"school": school, "grade": grade, "given": given, "family": "F", "born": born}
    for i, kind in enumerate(class_types):
        r.classes[f"C{i}"] = {"school": "02M001", "type": kind, "title": f"Class {i}"}
        r.enrollments[(f"C{i}", "T1")] = {"role": "teacher", "primary": True}
    homeroom_of: dict[str, str] = {}
    for i, sid in sorted(memberships):
        cid = f"C{i}"
        if cid in r.classes and sid in r.students:
            if r.classes[cid]["type"] == "homeroom":
                if sid in homeroom_of:
                    continue  # one homeroom per student per school
                homeroom_of[sid] = cid
            r.enrollments[(cid, sid)] = {"role": "student"}
    return r


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(a=rosters, b=rosters)
async def test_applying_the_events_of_an_import_to_the_old_roster_gives_exactly_the_new_one(service_db, tmp_path, a, b):
    pool = await _shared_pool(service_db)
    district = f"d-{uuid.uuid4().hex[:8]}"
    folder = tmp_path / district
    await run_import(pool, district_id=district, path=write(a, folder / "a"), kafka=KAFKA, confirm=True)
    before = await held_state(pool, district)
    await clear_outbox(pool)
    result = await run_import(pool, district_id=district, path=write(b, folder / "b"), kafka=KAFKA, confirm=True)
    assert result.error_count == 0, result.problems
    after = await held_state(pool, district)
    assert apply_events(before, await change_events(pool)) == after
    # ... and the roster now says exactly what package B says.
    assert {sid for sid, s in after["students"].items() if s[-1] == "active"} == set(b.students)
    assert set(after["classes"]) == set(b.classes)
    assert set(after["enrollments"]) == set(b.enrollments)


_pools: dict = {}


async def _shared_pool(service_db):
    # One database for every example of the property (each example uses its own district).
    key = id(service_db)
    if key not in _pools:
        _pools.clear()
        _pools[key] = await service_db("roster")
    return _pools[key]


async def test_a_crash_in_the_middle_of_an_import_leaves_the_old_roster_and_a_re_run_finishes(service_db, postgres_url,
                                                                                               tmp_path):
    import os
    import subprocess
    import sys
    from urllib.parse import urlsplit

    from services.kit.crash import CRASH_EXIT_CODE

    pool = await service_db("roster")
    async with pool.acquire() as conn:
        dsn = urlsplit(postgres_url)._replace(path=f"/{await conn.fetchval('SELECT current_database()')}").geturl()
    await run_import(pool, district_id="d1", path=write(school_roster(10), tmp_path / "day1"), kafka=KAFKA)
    await clear_outbox(pool)
    before = await held_state(pool, "d1")
    day2 = school_roster(10)
    day2.students["S0"]["grade"] = "04"
    day2.students["S10"] = {"school": "02M001", "grade": "03", "given": "New", "family": "Kid"}
    path = write(day2, tmp_path / "day2")
    env = {**os.environ, "CASEFLOW_ROSTER_DATABASE_URL": dsn, "CASEFLOW_CRASH_AT": "import.after_apply"}
    cli = [sys.executable, "-m", "services.cli", "roster", "import", str(path), "--district", "d1"]

    crashed = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=120)
    assert crashed.returncode == CRASH_EXIT_CODE, crashed.stderr
    assert await held_state(pool, "d1") == before  # the old roster, whole
    assert await events_in_outbox(pool) == []

    env.pop("CASEFLOW_CRASH_AT")
    rerun = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    after = await held_state(pool, "d1")
    assert after["students"]["S0"][1] == "04" and "S10" in after["students"]
    kinds = [e.event_type for e in await change_events(pool)]
    assert kinds.count("roster.student_updated.v1") == 1 and kinds.count("roster.student_enrolled.v1") == 1


FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "oneroster"


async def test_the_next_days_file_publishes_exactly_what_changed(service_db):
    pool = await service_db("roster")
    first = await run_import(pool, district_id="nycdoe", path=FIXTURES / "bulk_small", kafka=KAFKA)
    assert first.status == "applied" and first.error_count == 0, first.problems
    await clear_outbox(pool)
    before = await held_state(pool, "nycdoe")
    result = await run_import(pool, district_id="nycdoe", path=FIXTURES / "bulk_small_next", kafka=KAFKA)
    assert {k: v for k, v in result.counts.items() if v} == {
        "students_enrolled": 1,  # stu-0013
        "students_updated": 2,  # stu-0012 grade, stu-0009 name
        "students_withdrawn": 1,  # stu-0004
        "staff_upserted": 1,  # stf-1005 now has an email
        "classes_removed": 1,  # ART-01
        "enrollments_added": 3,  # enr-0207, enr-0208, enr-0307
        "enrollments_removed": 6,  # enr-0106 (withdrawn), enr-0303 (moved), ART-01's four
        "enrollment_records_changed": 3,
        "enrollment_records_removed": 6,
    }
    events = await change_events(pool)
    updated = {e.source_id: e.changed for e in events if e.event_type == "roster.student_updated.v1"}
    assert updated == {"stu-0012": ["grade"], "stu-0009": ["family_name"]}
    (teacher,) = [e for e in events if e.event_type == "roster.staff_upserted.v1"]
    assert teacher.source_id == "stf-1005" and teacher.matched and teacher.email.startswith("keisha.williams1@")
    assert apply_events(before, events) == await held_state(pool, "nycdoe")


async def test_a_delta_withdraws_a_student_from_their_classes_too(service_db):
    pool = await service_db("roster")
    await run_import(pool, district_id="nycdoe", path=FIXTURES / "bulk_small", kafka=KAFKA)
    await clear_outbox(pool)
    result = await run_import(pool, district_id="nycdoe", path=FIXTURES / "delta_small", kafka=KAFKA)
    assert result.status == "applied" and result.error_count == 0, result.problems
    assert {k: v for k, v in result.counts.items() if v} == {
        "students_enrolled": 1, "students_withdrawn": 1, "enrollments_added": 1,
        "enrollments_removed": 2,  # enr-0202 as sent, and stu-0002's homeroom with him
        "enrollment_records_changed": 1, "enrollment_records_removed": 2}
    state = await held_state(pool, "nycdoe")
    assert len(state["enrollments"]) == 32
    assert state["students"]["stu-0002"][-1] == "withdrawn"


async def test_every_kind_of_bad_row_is_reported_where_it_is(service_db):
    pool = await service_db("roster")
    result = await run_import(pool, district_id="nycdoe", path=FIXTURES / "errors_small", kafka=KAFKA)
    assert result.status == "applied"
    found = {(p.severity, p.file, p.line, p.column, p.value) : p.reason for p in result.problems}
    expected = [
        ("error", "users.csv", 20, "familyName", "", "missing required field familyName"),
        ("error", "classes.csv", 15, "classType", "lab", "bad value"),
        ("error", "users.csv", 21, "role", "janitor", "bad value"),
        ("error", "demographics.csv", 9, "birthDate", "2014-02-30", "is not a date"),
        ("error", "users.csv", 22, "sourcedId", "stu-0007",
         "duplicate sourcedId: already on line 14 (this row is skipped)"),
        ("error", "users.csv", 23, "orgSourcedIds", "sch-99X999", "refers to an unknown org"),
        ("error", "enrollments.csv", 35, "classSourcedId", "cls-02M475-PHYS-01", "refers to an unknown class"),
        ("error", "classes.csv", 14, "courseSourcedId", "crs-02M475-BIO", "refers to an unknown course"),
        ("error", "enrollments.csv", 36, "userSourcedId", "stu-9999", "refers to an unknown user"),
        ("warning", "users.csv", 6, "email", "", "teacher without email"),
        ("error", "enrollments.csv", 37, "classSourcedId", "cls-02M001-3-402", "already in a homeroom"),
    ]
    for severity, file, line, column, value, reason in expected:
        key = (severity, file, line, column, value)
        assert key in found, f"missing {key}; found {sorted(found)}"
        assert reason in found[key]
    assert len(result.problems) == len(expected)
    state = await held_state(pool, "nycdoe")
    assert len([s for s in state["students"].values() if s[-1] == "active"]) == 12
    assert len(state["enrollments"]) == 33


@pytest.mark.parametrize(("package", "message"), [("no_manifest", "no manifest.csv"),
                                                  ("missing_bulk_file", "no users.csv")])
async def test_a_package_missing_its_manifest_or_a_bulk_file_is_rejected(service_db, package, message):
    pool = await service_db("roster")
    result = await run_import(pool, district_id="nycdoe", path=FIXTURES / package, kafka=KAFKA)
    assert result.status == "rejected" and message in result.message
    assert await held_state(pool, "nycdoe") == {"students": {}, "staff": {}, "classes": {}, "enrollments": {}}


async def test_the_sis_feed_and_the_files_converge_on_the_same_roster(service_db, tmp_path):
    """A student withdrawn by the SIS, or left out of the next bulk file: the same roster."""
    from contracts.sis import SisStudentWithdrawn
    from services.kit.consumer import UnitOfWork
    from services.kit.settings import AuthSettings, Settings
    from services.roster.handlers import on_sis_students_withdrawn

    by_file, by_sis = await service_db("roster"), await service_db("roster")
    day1 = school_roster(10)
    day2 = school_roster(10)
    del day2.students["S3"]
    day2.enrollments = {k: v for k, v in day2.enrollments.items() if k[1] != "S3"}
    for pool in (by_file, by_sis):
        await run_import(pool, district_id="d1", path=write(day1, tmp_path / "day1"), kafka=KAFKA)
        await clear_outbox(pool)

    await run_import(by_file, district_id="d1", path=write(day2, tmp_path / "day2"), kafka=KAFKA)
    settings = Settings(service="roster", database_url="", kafka=KAFKA, auth=AuthSettings(secret="x" * 40), http_port=0)
    async with by_sis.acquire() as conn, conn.transaction():
        uow = UnitOfWork(conn, source="caseflow.roster", settings=settings)
        await on_sis_students_withdrawn(uow, [SisStudentWithdrawn(district_id="d1", source_id="S3")])
        from services.kit import outbox
        await outbox.write(conn, uow.outgoing)

    file_state, sis_state = await held_state(by_file, "d1"), await held_state(by_sis, "d1")
    assert file_state == sis_state
    assert file_state["students"]["S3"][-1] == "withdrawn"
    kinds = lambda events: sorted(e.event_type for e in events)  # noqa: E731
    assert kinds(await change_events(by_file)) == kinds(await change_events(by_sis)) == [
        "roster.enrollment_removed.v1", "roster.student_withdrawn.v1"]


async def test_an_import_interrupted_by_a_stop_is_marked_failed_and_a_running_one_is_left_alone(service_db, tmp_path):
    from services.roster.importer import _lock_key, recover_interrupted

    pool = await service_db("roster")
    died, alive = uuid.uuid4(), uuid.uuid4()
    async with pool.acquire() as conn:
        for import_id in (died, alive):
            await conn.execute("INSERT INTO imports (import_id, district_id, origin, package_name, status) "
                               "VALUES ($1, 'd1', 'http', 'p.zip', 'running')", import_id)
    async with pool.acquire() as other_instance:
        await other_instance.execute("SELECT pg_advisory_lock($1)", _lock_key(alive))  # still importing
        assert await recover_interrupted(pool) == [died]
        await other_instance.execute("SELECT pg_advisory_unlock($1)", _lock_key(alive))
    async with pool.acquire() as conn:
        status = dict(await conn.fetch("SELECT import_id, status FROM imports"))
        message = await conn.fetchval("SELECT message FROM imports WHERE import_id = $1", died)
    assert status == {died: "failed", alive: "running"} and "send the package again" in message


def test_a_drop_folder_package_interrupted_by_a_stop_goes_back_to_its_inbox(tmp_path):
    from services.roster.dropfolder import requeue_interrupted

    (tmp_path / "d1" / "processing").mkdir(parents=True)
    (tmp_path / "d1" / "processing" / "monday.zip").write_bytes(b"PK")
    assert requeue_interrupted(tmp_path) == ["d1/monday.zip"]
    assert (tmp_path / "d1" / "inbox" / "monday.zip").exists()


async def test_uploads_are_removed_once_their_imports_are_final_and_held_ones_are_kept(service_db, tmp_path):
    """Issue 9: an upload whose import failed stayed on disk. On start the roster removes
    every upload no import needs: final imports' and abandoned ones (no import on record,
    untouched for an hour); a held import's package is kept for its confirm, and a running
    one's, and one just received."""
    import os
    import time

    from services.roster.importer import UNCLAIMED_UPLOAD_SECONDS, remove_settled_uploads

    pool = await service_db("roster")
    packages = tmp_path / "packages"
    (packages / "d1").mkdir(parents=True)
    uploads = {}
    for status in ("applied", "rejected", "failed", "held", "running", None, "abandoned"):
        import_id = uuid.uuid4()
        uploads[status] = packages / "d1" / f"{import_id}.zip"
        uploads[status].write_bytes(b"PK")
        if status in ("applied", "rejected", "failed", "held", "running"):
            async with pool.acquire() as conn:
                await conn.execute("INSERT INTO imports (import_id, district_id, origin, package_name, status) "
                                   "VALUES ($1, 'd1', 'http', 'p.zip', $2)", import_id, status)
    old = time.time() - UNCLAIMED_UPLOAD_SECONDS - 60
    os.utime(uploads["abandoned"], (old, old))
    (packages / "d1" / "notes.zip").write_bytes(b"not an upload of ours")

    removed = await remove_settled_uploads(pool, packages)

    assert sorted(removed) == sorted(uploads[s] for s in ("applied", "rejected", "failed", "abandoned"))
    assert all(uploads[s].exists() for s in ("held", "running", None))
    assert (packages / "d1" / "notes.zip").exists()


async def test_held_tables_are_analysed_by_an_import_only_where_their_statistics_are_stale(service_db):
    from services.roster.importer import stale_statistics

    pool = await service_db("roster")

    async def flushed(conn, sql: str) -> None:  # the statistics counters, as another session sees them
        await conn.execute(sql)
        await conn.execute("SELECT pg_stat_force_next_flush()")
        await conn.execute("SELECT 1")
        await conn.execute("SELECT pg_stat_clear_snapshot()")

    async with pool.acquire() as conn:
        await conn.execute("ALTER TABLE classes SET (autovacuum_enabled = false)")  # (none of autovacuum's own)
        assert await stale_statistics(conn, ("students", "classes")) == []  # empty and never analysed
        await flushed(conn, "INSERT INTO classes (class_id, district_id, source_id, school_id, class_type, title, "
                            "grades, periods) SELECT gen_random_uuid(), 'd1', 'c' || i, 's1', 'scheduled', 'T', "
                            "'{}', '{}' FROM generate_series(1, 200) i")
        assert await stale_statistics(conn, ("students", "classes")) == ["classes"]
        await flushed(conn, "ANALYZE classes")
        assert await stale_statistics(conn, ("students", "classes")) == []
        await flushed(conn, "UPDATE classes SET title = 'U' WHERE source_id IN ('c1', 'c2', 'c3')")
        assert await stale_statistics(conn, ("students", "classes")) == []  # 3 of 200: not stale
        await flushed(conn, "UPDATE classes SET title = 'V'")
        assert await stale_statistics(conn, ("students", "classes")) == ["classes"]
