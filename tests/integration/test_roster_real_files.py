"""Roster files as districts send them (issue 8): a bad row never loses held data and never
stops the event stream, records follow their sourcedId, and who is in a class today
honours enrolment dates and terms. The base package is tests/fixtures/oneroster/bulk_small;
"after base" means the same district imported it first. Real PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import date

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.kit.settings import KafkaSettings
from services.roster import class_members
from services.roster.importer import ImportOptions, run_import
from tests.integration.test_roster_import import (
    apply_events,
    change_events,
    clear_outbox,
    events_in_outbox,
    held_state,
    school_roster,
)
from tests.packages import Edited, write

pytestmark = pytest.mark.integration
KAFKA = KafkaSettings()
D = "nycdoe"
NOVEMBER = date(2026, 11, 2)


async def imported(pool, path, **kw):
    return await run_import(pool, district_id=kw.pop("district", D), path=path, kafka=KAFKA, today=kw.pop("today", NOVEMBER),
                            **kw)


@pytest.fixture
async def base(service_db):
    """A roster database holding bulk_small, with an empty outbox."""
    pool = await service_db("roster")
    first = await imported(pool, Edited("bulk_small", _tmp() / "base").path)
    assert first.status == "applied" and first.error_count == 0, first.problems
    await clear_outbox(pool)
    return pool


def _tmp():
    import tempfile
    from pathlib import Path

    return Path(tempfile.mkdtemp(prefix="roster-files-"))


async def outbox_keys(pool) -> list:
    async with pool.acquire() as conn:
        return [r[0] for r in await conn.fetch("SELECT key FROM outbox ORDER BY id")]


def errors(result) -> dict:
    return {(p.file, p.line, p.source_id, p.column): p.reason for p in result.problems if p.severity == "error"}


# ------------------------------------------------- 1. one record never stops the stream


async def test_a_teacher_enrolled_as_a_student_is_reported_and_publishes_nothing(base, tmp_path):
    package = Edited("bulk_small", tmp_path / "p").add(
        "enrollments.csv", "stf-1003,student,cls-02M475-CHEM-01,enr-0018,active,2026-09-01T12:00:00.000Z,"
                           "sch-02M475,false,2026-09-10,2027-01-29")
    result = await imported(base, package.path)
    assert result.status == "applied" and result.error_count == 1
    assert errors(result) == {("enrollments.csv", 35, "enr-0018", "role"): "role student, but users.csv says teacher"}
    assert await change_events(base) == []  # nothing changed, so nothing to say
    assert all(await outbox_keys(base))  # and no event without a key


async def test_a_sourced_id_holding_a_control_character_is_reported_and_changes_nothing(base, tmp_path):
    """The roster derives ids from sourcedIds with line breaks between the parts: a student
    "staff\\nstf-1001" would have been given teacher stf-1001's id. Such a row is reported
    with its file, line and reason, and nothing else changes."""
    before = await held_state(base, D)
    package = (Edited("bulk_small", tmp_path / "p")
               .add("users.csv", '"staff\nstf-1001",active,2026-09-01T12:00:00.000Z,true,sch-02M001,student,x1,,Ana,'
                                 'Reyes,,,,,,,03,')
               .add("users.csv", '"stu-\t0099",active,2026-09-01T12:00:00.000Z,true,sch-02M001,student,x2,,Ana,Reyes,'
                                 ',,,,,,03,'))
    result = await imported(base, package.path)
    assert result.status == "applied"
    assert errors(result) == {
        ("users.csv", 20, "staff\nstf-1001", "sourcedId"):
            "sourcedId holds a control character (U+000A), which an id cannot hold",
        ("users.csv", 22, "stu-\t0099", "sourcedId"):
            "sourcedId holds a control character (U+0009), which an id cannot hold",
    }
    assert await held_state(base, D) == before
    assert await change_events(base) == []


@pytest.mark.parametrize(("line", "reason"), [
    # a student enrolled as a teacher
    ("stu-0010,teacher,cls-02M475-CHEM-01,enr-0019,active,2026-09-01T12:00:00.000Z,sch-02M475,true,,",
     "role teacher, but users.csv says student"),
    # an enrolment's school that is not its class's
    ("stu-0010,student,cls-02M475-CHEM-01,enr-0020,active,2026-09-01T12:00:00.000Z,sch-02M104,false,,",
     "the class cls-02M475-CHEM-01 is at sch-02M475 (classes.csv)"),
    # an enrolment that ends before it begins
    ("stu-0010,student,cls-02M475-CHEM-01,enr-0021,active,2026-09-01T12:00:00.000Z,sch-02M475,false,2026-10-01,"
     "2026-09-01", "ends before it begins"),
])
async def test_every_cross_file_inconsistency_is_reported_with_its_row(base, tmp_path, line, reason):
    result = await imported(base, Edited("bulk_small", tmp_path / "p").add("enrollments.csv", line).path)
    ((file, number, sid, _column), said), = errors(result).items()
    assert (file, number, sid) == ("enrollments.csv", 35, line.split(",")[3]) and said == reason
    assert await change_events(base) == []


async def test_a_guardian_enrolled_in_a_class_is_refused_and_a_proctor_is_not_an_unknown_user(base, tmp_path):
    package = (Edited("bulk_small", tmp_path / "p")
               .add("users.csv", "gdn-1,active,2026-09-01T12:00:00.000Z,true,sch-02M475,guardian,g1,,Gia,Diallo,,,,,,"
                                 "stu-0012,,")
               .add("users.csv", "prc-1,active,2026-09-01T12:00:00.000Z,true,sch-02M475,proctor,p1,,Pat,Okoro,,,"
                                 "p@schools.example.org,,,,,")
               .add("enrollments.csv", "gdn-1,student,cls-02M475-CHEM-01,enr-0022,active,2026-09-01T12:00:00.000Z,"
                                       "sch-02M475,false,,")
               .add("enrollments.csv", "prc-1,proctor,cls-02M475-CHEM-01,enr-0023,active,2026-09-01T12:00:00.000Z,"
                                       "sch-02M475,false,,"))
    result = await imported(base, package.path)
    assert errors(result) == {("enrollments.csv", 35, "enr-0022", "role"): "role student, but users.csv says guardian"}
    (note,) = [p for p in result.problems if p.file == "enrollments.csv" and p.severity == "warning"]
    assert note.source_id == "enr-0023" and "proctors are not kept" in note.reason
    assert await change_events(base) == []


# ------------------------------- 2. a record present in a bulk file but rejected is kept


async def test_an_unambiguous_grade_is_read_and_said_once_per_file(base, tmp_path):
    package = Edited("bulk_small", tmp_path / "p").edit("users.csv", "stu-0001", grades="3").edit(
        "users.csv", "stu-0002", grades="3").edit("users.csv", "stu-0005", grades="4")
    result = await imported(base, package.path)
    assert result.status == "applied" and result.error_count == 0
    notes = sorted((p.line, p.value, p.reason) for p in result.problems if p.column == "grades")
    assert notes == [(8, "3", "read as '03' (and 1 more rows like it)"), (12, "4", "read as '04'")]
    assert await change_events(base) == []  # stu-0001 is still in grade 03, in her homeroom


async def test_role_teacher_in_title_case_deactivates_nobody(base, tmp_path):
    package = Edited("bulk_small", tmp_path / "p")
    for staff in ("stf-1001", "stf-1002", "stf-1003", "stf-1004", "stf-1005"):
        package.edit("users.csv", staff, role="Teacher")
    package.edit("users.csv", "stu-0003", status="Active")
    result = await imported(base, package.path)
    assert result.status == "applied" and result.error_count == 0
    assert {(p.column, p.value) for p in result.problems if p.severity == "warning" and p.column} >= {
        ("role", "Teacher"), ("status", "Active")}
    assert await change_events(base) == []


@pytest.mark.parametrize(("file", "sid", "change"), [
    ("users.csv", "stu-0001", {"familyName": ""}),  # a required field left blank
    ("users.csv", "stu-0001", {"grades": "3rd"}),  # a grade that is not one for sure
    ("users.csv", "stu-0001", {"orgSourcedIds": "sch-99X999"}),  # an unknown school
    ("users.csv", "stf-1001", {"email": "maria.santos1"}),  # not an email
    ("users.csv", "stf-1001", {"email": "maria santos@schools.nyc.gov"}),  # a space in it
    ("users.csv", "stu-0001", {"email": "ana@@schools.nyc.gov"}),
    ("users.csv", "stf-1001", {"role": "janitor"}),
    ("classes.csv", "cls-02M001-3-401", {"classType": "lab"}),
    ("classes.csv", "cls-02M001-3-401", {"schoolSourcedId": ""}),
    ("enrollments.csv", "enr-0101", {"primary": "maybe"}),
    ("enrollments.csv", "enr-0101", {"beginDate": "9/10/2026"}),
    ("orgs.csv", "sch-02M001", {"type": "skool"}),
])
async def test_a_row_present_but_rejected_keeps_what_the_roster_holds(base, tmp_path, file, sid, change):
    before = await held_state(base, D)
    package = Edited("bulk_small", tmp_path / "p").edit(file, sid, **change)
    result = await imported(base, package.path, confirm=True)  # 1 of orgs.csv's 4 rows is more than the guard's 20%
    assert result.status == "applied" and result.error_count >= 1
    assert any(p.source_id == sid for p in result.problems if p.severity == "error")
    assert await held_state(base, D) == before
    assert await change_events(base) == []


async def test_an_email_with_a_space_in_it_is_reported_with_the_reason_and_the_staff_member_kept(base, tmp_path):
    """A login email is something@somewhere with no space or control character in it: the
    rule the SIS events' emails and HTTP bodies' emails are read by (contracts.envelope.
    not_an_email). It held "@" alone: "maria santos@..." was saved as the login email."""
    before = await held_state(base, D)
    package = Edited("bulk_small", tmp_path / "p").edit("users.csv", "stf-1001", email="maria santos@schools.nyc.gov")
    result = await imported(base, package.path)
    assert [(p.file, p.source_id, p.column, p.reason) for p in result.problems if p.severity == "error"] == [
        ("users.csv", "stf-1001", "email", "is not an email address: it holds a space (U+0020), which an email "
                                           "cannot hold")]
    assert await held_state(base, D) == before
    assert await change_events(base) == []


async def test_a_bad_birth_date_keeps_the_one_held_and_a_blank_one_clears_it(base, tmp_path):
    package = Edited("bulk_small", tmp_path / "p").edit("demographics.csv", "stu-0001", birthDate="2018-02-30")
    result = await imported(base, package.path)
    assert errors(result) == {("demographics.csv", 2, "stu-0001", "birthDate"): "is not a date (YYYY-MM-DD)"}
    assert (await held_state(base, D))["students"]["stu-0001"][4] == "2018-03-14"
    assert await change_events(base) == []

    cleared = Edited("bulk_small", tmp_path / "q").edit("demographics.csv", "stu-0001", birthDate="")
    await imported(base, cleared.path)
    (updated,) = await change_events(base)
    assert updated.source_id == "stu-0001" and updated.changed == ["birth_date"] and updated.birth_date is None


async def test_a_demographics_delta_alone_changes_a_birth_date(base, tmp_path):
    package = Edited("bulk_small", tmp_path / "p").delta_of("demographics")
    row = package.row("demographics.csv", "stu-0002")
    package.only("demographics.csv", [{**row, "birthDate": "2018-11-03"}])
    result = await imported(base, package.path)
    assert result.status == "applied", result.message
    (updated,) = await change_events(base)
    assert updated.source_id == "stu-0002" and updated.changed == ["birth_date"]
    assert (await held_state(base, D))["students"]["stu-0003"][4] == "2018-06-21"  # the others keep theirs


@pytest.mark.parametrize(("what", "edit", "held_because"), [
    ("staff", lambda p: [p.remove("users.csv", s) for s in ("stf-1001", "stf-1002")],
     "deactivate 2 of 6 active staff"),
    ("classes", lambda p: [p.remove("classes.csv", c) for c in ("cls-02M001-3-401", "cls-02M001-3-402",
                                                                 "cls-02M001-4-405")],
     "remove 3 of 11 classes"),
    ("enrolments", lambda p: [p.remove("enrollments.csv", f"enr-{n:04d}") for n in range(201, 207)]
     + [p.remove("enrollments.csv", f"enr-{n:04d}") for n in range(301, 304)],
     "remove 9 of 33 class enrolments"),
    ("rejected rows", lambda p: [p.edit("users.csv", s, grades="3rd") for s in ("stu-0001", "stu-0002", "stu-0003",
                                                                                "stu-0004")],
     "4 of 18 rows of users.csv were rejected"),
])
async def test_the_guard_holds_every_kind_of_loss_until_a_person_confirms(base, tmp_path, what, edit, held_because):
    before = await held_state(base, D)
    package = Edited("bulk_small", tmp_path / "p")
    edit(package)
    held = await imported(base, package.path)
    assert held.status == "held" and held_because in held.message, held.message
    assert await held_state(base, D) == before and await events_in_outbox(base) == []
    confirmed = await imported(base, package.path, confirm=True)
    assert confirmed.status == "applied"


@pytest.mark.parametrize("share", ["0.5"])
async def test_each_guard_has_its_own_setting(base, tmp_path, share):
    package = Edited("bulk_small", tmp_path / "p").remove("users.csv", "stf-1001").remove("users.csv", "stf-1002")
    options = ImportOptions.from_env({"CASEFLOW_ROSTER_WIPE_SHARE_STAFF": share})
    assert (await imported(base, package.path, options=options)).status == "applied"


# Random rows of a valid re-import are corrupted as exporters do: nothing whose sourcedId
# is in the file is lost, and the events say exactly what changed.
_CORRUPTIONS = {
    "users": [{"givenName": ""}, {"grades": "3rd"}, {"orgSourcedIds": "X"}, {"role": "janitor"}, {"status": "gone"}],
    "classes": [{"classType": "lab"}, {"schoolSourcedId": "X"}, {"title": ""}],
    "enrollments": [{"primary": "maybe"}, {"classSourcedId": ""}, {"role": "lead"}, {"beginDate": "soon"}],
}


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n_students=st.integers(4, 12), seed=st.randoms(use_true_random=False),
       corrupt=st.lists(st.tuples(st.sampled_from(sorted(_CORRUPTIONS)), st.integers(0, 50), st.integers(0, 4)),
                        min_size=1, max_size=6),
       grade_changes=st.sets(st.integers(0, 11), max_size=3))
async def test_corrupted_rows_in_a_bulk_file_never_withdraw_what_they_name(service_db, tmp_path, n_students, seed,
                                                                           corrupt, grade_changes):
    from tests.integration.test_roster_import import _shared_pool

    pool = await _shared_pool(service_db)
    district = f"d-{uuid.uuid4().hex[:8]}"
    folder = tmp_path / district
    day1 = school_roster(n_students)
    await imported(pool, write(day1, folder / "a"), district=district, confirm=True)
    before = await held_state(pool, district)
    await clear_outbox(pool)
    day2 = school_roster(n_students)
    for i in grade_changes:
        if f"S{i}" in day2.students and day2.students[f"S{i}"]["grade"] == "03":
            day2.students[f"S{i}"]["grade"] = "04"
    package = Edited.__new__(Edited)
    package.path = write(day2, folder / "b")
    named: dict[str, set[str]] = {}
    for file, pick, kind in corrupt:
        header, rows = package._read(f"{file}.csv")
        row = rows[pick % len(rows)]
        named.setdefault(file, set()).add(row["sourcedId"])
        package.edit(f"{file}.csv", row["sourcedId"], **_CORRUPTIONS[file][kind % len(_CORRUPTIONS[file])])
    result = await imported(pool, package.path, district=district, confirm=True)
    assert result.status == "applied", result.message
    after = await held_state(pool, district)
    for sid in named.get("users", ()):
        held = before["students"].get(sid) or before["staff"].get(sid)
        assert (after["students"].get(sid) or after["staff"].get(sid)) == held, f"{sid} changed though rejected"
    for cid in named.get("classes", ()):
        assert after["classes"].get(cid) == before["classes"].get(cid)
    assert all(s[-1] == "active" for s in after["students"].values())
    assert apply_events(before, await change_events(pool)) == after


# ---------------------------------------------- 3. duplicate records never crash an import


async def test_a_re_enrolment_under_a_new_sourced_id_makes_one_member_and_the_dry_run_agrees(base, tmp_path):
    package = Edited("bulk_small", tmp_path / "p").add(
        "enrollments.csv", "stu-0010,student,cls-02M475-ALG1-01,enr-0301b,active,2026-09-01T12:00:00.000Z,"
                           "sch-02M475,false,2026-10-01,2027-06-25")
    dry = await imported(base, package.path, dry_run=True)
    real = await imported(base, package.path)
    assert dry.status == "dry_run" and real.status == "applied", (dry.message, real.message)
    assert dry.counts == real.counts and real.counts["enrollment_records_changed"] == 1
    assert real.counts["enrollments_added"] == 0 and real.error_count == 0
    assert await change_events(base) == []  # stu-0010 was, and is, in ALG1-01
    async with base.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM imports WHERE status = 'running'") == 0


async def test_a_teacher_listed_twice_in_a_class_is_one_member_primary_if_either_row_says_so(base, tmp_path):
    package = Edited("bulk_small", tmp_path / "p").add(
        "enrollments.csv", "stf-1005,teacher,cls-02M475-ALG1-01,enr-0012b,active,2026-09-01T12:00:00.000Z,"
                           "sch-02M475,true,2026-09-10,2027-06-25")
    result = await imported(base, package.path)
    assert result.status == "applied" and result.counts["enrollments_added"] == 1
    (changed,) = await change_events(base)
    assert (changed.event_type, changed.user_source_id, changed.primary) == (
        "roster.enrollment_added.v1", "stf-1005", True)
    assert (await held_state(base, D))["enrollments"][("cls-02M475-ALG1-01", "stf-1005")] == ("teacher", True)


async def test_an_unexpected_failure_marks_the_import_failed_with_a_message_and_changes_nothing(base, tmp_path):
    class Broken(KafkaSettings):
        def topic(self, name: str) -> str:
            raise RuntimeError("the topic registry is unreachable")

    before = await held_state(base, D)
    result = await run_import(base, district_id=D, path=Edited("bulk_small_next", tmp_path / "p").path,
                              kafka=Broken(), today=NOVEMBER)
    assert result.status == "failed"
    assert "nothing was changed" in result.message and str(result.import_id) in result.message
    async with base.acquire() as conn:
        assert await conn.fetchval("SELECT status FROM imports WHERE import_id = $1", result.import_id) == "failed"
    assert await held_state(base, D) == before


# ------------------------------------------------ 4. records are identified by sourcedId


async def test_an_enrolment_moved_to_another_homeroom_leaves_the_first(base, tmp_path):
    package = Edited("delta_small", tmp_path / "p").delta_of("enrollments")
    package.only("enrollments.csv", [{
        "sourcedId": "enr-0103", "status": "active", "dateLastModified": "2027-01-15T12:00:00.000Z",
        "classSourcedId": "cls-02M001-3-402", "schoolSourcedId": "sch-02M001", "userSourcedId": "stu-0002",
        "role": "student", "primary": "false", "beginDate": "2027-01-15", "endDate": "2027-06-25"}])
    result = await imported(base, package.path, today=date(2027, 1, 15))
    assert result.status == "applied", result.message
    homerooms = [k for k in (await held_state(base, D))["enrollments"] if k[1] == "stu-0002"]
    assert homerooms == [("cls-02M001-3-402", "stu-0002")]
    kinds = [(e.event_type, e.class_source_id) for e in await change_events(base) if e.user_source_id == "stu-0002"]
    assert kinds == [("roster.enrollment_removed.v1", "cls-02M001-3-401"),
                     ("roster.enrollment_added.v1", "cls-02M001-3-402")]


async def test_a_deleted_record_and_a_new_one_for_the_same_class_keep_the_student_in_it(base, tmp_path):
    package = Edited("delta_small", tmp_path / "p").delta_of("enrollments")
    common = {"dateLastModified": "2026-10-01T12:00:00.000Z", "classSourcedId": "cls-02M475-ALG1-01",
              "schoolSourcedId": "sch-02M475", "userSourcedId": "stu-0010", "role": "student", "primary": "false"}
    package.only("enrollments.csv", [
        {**common, "sourcedId": "enr-0301", "status": "tobedeleted", "beginDate": "2026-09-10", "endDate": "2027-06-25"},
        {**common, "sourcedId": "enr-0301b", "status": "active", "beginDate": "2026-10-01", "endDate": "2027-06-25"}])
    result = await imported(base, package.path)
    assert result.status == "applied", result.message
    assert ("cls-02M475-ALG1-01", "stu-0010") in (await held_state(base, D))["enrollments"]
    assert await change_events(base) == []


# ------------------------------------- 5. "responsible today": enrolment dates and terms


def _term_package(tmp_path) -> Edited:
    """bulk_small plus a spring section (its enrolments begin 2027-02-01, in term-2027-spring)
    and an enrolment whose last day was 2026-10-31."""
    return (Edited("bulk_small", tmp_path / "p")
            .add("classes.csv", "cls-02M475-BIO-02,active,2026-09-01T12:00:00.000Z,Biology - Section 02,10,"
                                "crs-02M475-CHEM,BIO-02,scheduled,Lab 5F,sch-02M475,term-2027-spring,Science,03101,7")
            .add("enrollments.csv", "stf-1004,teacher,cls-02M475-BIO-02,enr-0013,active,2026-09-01T12:00:00.000Z,"
                                    "sch-02M475,true,,")
            .add("enrollments.csv", "stu-0012,student,cls-02M475-BIO-02,enr-0310,active,2026-09-01T12:00:00.000Z,"
                                    "sch-02M475,false,2027-02-01,2027-06-25")
            .add("enrollments.csv", "stu-0011,student,cls-02M475-CHEM-01,enr-0311,active,2026-09-01T12:00:00.000Z,"
                                    "sch-02M475,false,2026-09-10,2026-10-31"))


async def test_only_enrolments_current_today_make_class_members(base, tmp_path):
    result = await imported(base, _term_package(tmp_path).path)
    assert result.status == "applied" and result.counts["enrollment_records_changed"] == 3
    members = (await held_state(base, D))["enrollments"]
    assert ("cls-02M475-BIO-02", "stu-0012") not in members  # spring has not started
    assert ("cls-02M475-BIO-02", "stf-1004") not in members  # the teacher's row has no dates: the term's count
    assert ("cls-02M475-CHEM-01", "stu-0011") not in members  # ended 2026-10-31
    assert [e.event_type for e in await change_events(base)] == ["roster.class_upserted.v1"]  # BIO-02, no one in it


async def test_class_members_change_the_day_a_term_starts_or_an_enrolment_ends_without_a_new_file(base, tmp_path):
    await imported(base, _term_package(tmp_path).path)
    await clear_outbox(base)

    async def step(day: date) -> list:
        async with base.acquire() as conn, conn.transaction():
            await class_members.bring_to(conn, D, day, KAFKA)
        events = [(e.event_type.split(".")[1], e.class_source_id, e.user_source_id) for e in await change_events(base)]
        await clear_outbox(base)
        return sorted(events)

    assert await step(date(2027, 1, 29)) == []  # CHEM-01's last day: still in it
    assert await step(date(2027, 1, 30)) == [  # the fall term is over
        ("enrollment_removed", "cls-02M475-CHEM-01", "stf-1005"),
        ("enrollment_removed", "cls-02M475-CHEM-01", "stu-0012")]
    assert await step(date(2027, 2, 1)) == [  # spring starts
        ("enrollment_added", "cls-02M475-BIO-02", "stf-1004"),
        ("enrollment_added", "cls-02M475-BIO-02", "stu-0012")]
    assert await step(date(2027, 2, 1)) == []  # one step a day says it once
    # A clock moved back (a test, a restored backup) brings the lists back too.
    assert len(await step(date(2026, 11, 2))) == 4


async def test_an_import_on_a_later_day_brings_the_lists_to_that_day_first(base, tmp_path):
    package = _term_package(tmp_path)
    await imported(base, package.path)
    await clear_outbox(base)
    result = await imported(base, package.path, today=date(2027, 2, 1))
    assert result.status == "applied" and sum(result.counts.values()) == 0  # the file changed nothing
    moved = {(e.event_type, e.class_source_id) for e in await change_events(base)}
    assert ("roster.enrollment_added.v1", "cls-02M475-BIO-02") in moved
    assert ("roster.enrollment_removed.v1", "cls-02M475-CHEM-01") in moved


async def test_a_term_whose_dates_change_moves_its_classes_members(base, tmp_path):
    package = _term_package(tmp_path)
    await imported(base, package.path)
    await clear_outbox(base)
    earlier = Edited("bulk_small", tmp_path / "s").delta_of("academicSessions")
    spring = earlier.row("academicSessions.csv", "term-2027-spring")
    earlier.only("academicSessions.csv", [{**spring, "startDate": "2026-11-01"}])
    result = await imported(base, earlier.path)
    assert result.status == "applied", result.message
    added = {(e.class_source_id, e.user_source_id) for e in await change_events(base)}
    assert added == {("cls-02M475-BIO-02", "stf-1004")}  # stu-0012's own beginDate still says February


# ---------------------------------------------------------------------- 6. dual enrolment


async def test_a_student_of_two_schools_belongs_to_both_whatever_the_order(base, tmp_path):
    package = (Edited("bulk_small", tmp_path / "p").edit("users.csv", "stu-0007", orgSourcedIds="sch-02M104,sch-02M475")
               .add("enrollments.csv", "stu-0007,student,cls-02M475-ALG1-02,enr-0209,active,2026-09-01T12:00:00.000Z,"
                                       "sch-02M475,false,2026-09-10,2027-06-25"))
    result = await imported(base, package.path)
    assert result.status == "applied" and result.error_count == 0
    events = await change_events(base)
    (updated,) = [e for e in events if e.event_type == "roster.student_updated.v1"]
    assert updated.school_id == "sch-02M104" and updated.school_ids == ["sch-02M104", "sch-02M475"]
    (added,) = [e for e in events if e.event_type == "roster.enrollment_added.v1"]
    assert added.school_id == "sch-02M475"  # a member keeps the school of its class
    await clear_outbox(base)

    reordered = Edited("bulk_small", tmp_path / "q").edit("users.csv", "stu-0007",
                                                           orgSourcedIds="sch-02M475,sch-02M104")
    reordered.add("enrollments.csv", "stu-0007,student,cls-02M475-ALG1-02,enr-0209,active,2026-09-01T12:00:00.000Z,"
                                     "sch-02M475,false,2026-09-10,2027-06-25")
    assert (await imported(base, reordered.path)).status == "applied"
    assert await change_events(base) == []  # the order of the list never moves a student


# ------------------------------------------ 7. unreadable files are rejected whole


async def test_a_semicolon_separated_file_is_rejected_whole_and_says_why(base, tmp_path):
    package = Edited("bulk_small", tmp_path / "p")
    text = (package.path / "users.csv").read_text(encoding="utf-8-sig")
    (package.path / "users.csv").write_text(text.replace(",", ";"), encoding="utf-8")
    before = await held_state(base, D)
    result = await imported(base, package.path)
    assert result.status == "rejected"
    assert "users.csv has no column" in result.message and "looks `;`-separated" in result.message
    assert result.problems == [] and await held_state(base, D) == before


async def test_a_first_import_of_an_unreadable_file_imports_nobody(service_db, tmp_path):
    pool = await service_db("roster")
    package = Edited("bulk_small", tmp_path / "p")
    text = (package.path / "enrollments.csv").read_text()
    (package.path / "enrollments.csv").write_text(text.replace(",", "\t"))
    result = await imported(pool, package.path)
    assert result.status == "rejected" and "looks tab-separated" in result.message
    assert (await held_state(pool, D))["students"] == {}


@pytest.mark.parametrize("district", [f"{D}\nstaff", "d" * 65, " "])
async def test_an_import_for_a_district_id_that_is_no_id_is_rejected_and_imports_nobody(base, tmp_path, district):
    """The CLI's --district or a drop folder named "nycdoe\nstaff": its student T-1 would be
    given the id of district nycdoe's staff member T-1 (ids are derived with line breaks
    between the parts)."""
    before = await held_state(base, D)
    result = await imported(base, Edited("bulk_small", tmp_path / "p").path, district=district)
    assert result.status == "rejected" and result.message.startswith("the district id ")
    assert await held_state(base, D) == before and (await held_state(base, district))["students"] == {}
    assert await change_events(base) == []


def _as_oneroster_12(package: Edited) -> Edited:
    """The same roster as ClassLink or School Data Sync export it in OneRoster 1.2: users.csv
    without role and orgSourcedIds, with primaryOrgSourcedId; each user's roles in roles.csv."""
    header, users = package._read("users.csv")
    roles = []
    for u in users:
        orgs = u["orgSourcedIds"].split(",")
        for i, org in enumerate(orgs):
            roles.append({"sourcedId": f"role-{u['sourcedId']}-{i}", "status": "active",
                          "dateLastModified": u["dateLastModified"], "userSourcedId": u["sourcedId"],
                          "roleType": "primary" if i == 0 else "secondary",
                          "role": {"administrator": "principal"}.get(u["role"], u["role"]), "orgSourcedId": org})
    new_header = [h for h in header if h not in ("role", "orgSourcedIds")] + ["primaryOrgSourcedId", "pronouns"]
    package._write("users.csv", new_header, [{**u, "primaryOrgSourcedId": u["orgSourcedIds"].split(",")[0]}
                                             for u in users])
    package._write("roles.csv", ["sourcedId", "status", "dateLastModified", "userSourcedId", "roleType", "role",
                                 "orgSourcedId", "userProfileSourcedId", "beginDate", "endDate"], roles)
    (package.path / "userProfiles.csv").write_text("sourcedId,status,dateLastModified,userSourcedId,profileType,"
                                                   "vendorId,applicationId,description,credentialType,username,"
                                                   "password\n")
    return package.manifest(version="1.2", roles="bulk", userProfiles="bulk")


async def test_a_oneroster_12_package_gives_the_same_roster_as_its_11_twin(service_db, base, tmp_path):
    pool = await service_db("roster")
    result = await imported(pool, _as_oneroster_12(Edited("bulk_small", tmp_path / "p")).path)
    assert result.status == "applied" and result.error_count == 0, (result.message, result.problems)
    assert await held_state(pool, D) == await held_state(base, D)


async def test_a_12_users_file_under_a_11_manifest_is_rejected_with_the_way_out(service_db, tmp_path):
    pool = await service_db("roster")
    package = _as_oneroster_12(Edited("bulk_small", tmp_path / "p")).manifest(version="1.1")
    result = await imported(pool, package.path)
    assert result.status == "rejected" and "users.csv has no column role, orgSourcedIds" in result.message
    assert "oneroster.version 1.2" in result.message


# ------------------------------------------------- 8. reports a data team can act on


async def test_every_problem_names_its_records_sourced_id_and_rows_are_counted_once(service_db, tmp_path):
    pool = await service_db("roster")
    package = Edited("errors_small", tmp_path / "p").edit("users.csv", "stf-1006", givenName="", familyName="")
    result = await imported(pool, package.path, confirm=True)
    rows = {(p.file, p.line) for p in result.problems if p.severity == "error"}
    assert result.error_count == len(rows) == 11  # the ten bad rows of errors_small, and stf-1006 (two problems)
    assert len([p for p in result.problems if p.source_id == "stf-1006"]) == 2
    assert all(p.source_id for p in result.problems if p.line and p.line > 1)


async def test_the_reconcile_view_shows_the_latest_row_also_when_it_was_rejected(base, tmp_path):
    from services.roster import store

    await imported(base, Edited("bulk_small", tmp_path / "p").edit("users.csv", "stu-0001", familyName="").path)
    async with base.acquire() as conn:
        said, held = await store.reconciliation(conn, district_id=D, entity="student", source_id="stu-0001")
    assert said["accepted"] is False and said["reasons"] == ["missing required field familyName"]
    assert held["status"] == "active"


async def test_rows_that_only_moved_show_their_new_line_and_are_not_rewritten(base, tmp_path):
    """A re-import whose rows moved (one added near the top moves every row after it) says
    where each row is now, without rewriting what each row said."""
    import csv

    from services.roster import store

    async def view(source_id: str, entity: str = "student") -> dict:
        async with base.acquire() as conn:
            return (await store.reconciliation(conn, district_id=D, entity=entity, source_id=source_id))[0]

    async def stored() -> dict:
        async with base.acquire() as conn:
            return {(r[0], r[1]): r[2] for r in await conn.fetch(
                "SELECT entity, source_id, xmin::text FROM last_file_rows WHERE district_id = $1", D)}

    assert (await view("stu-0001"))["line"] == 8 and (await view("stu-0012"))["line"] == 19
    before = await stored()
    moved = Edited("bulk_small", tmp_path / "moved")
    with open(moved.path / "users.csv", newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    moved.only("users.csv", rows[-1:] + rows[:-1])  # stu-0012 first: every other row one line down
    result = await imported(base, moved.path)
    assert result.status == "applied" and _changes(result) == 0, result.counts
    assert await stored() == before  # nothing rewritten
    first, last = await view("stu-0001"), await view("stu-0012")
    assert (first["line"], last["line"]) == (9, 2)
    assert first["import_id"] == last["import_id"] == result.import_id  # the latest file's lines
    assert (await view("cls-02M001-3-401", "class"))["import_id"] == result.import_id

    again = await imported(base, Edited("bulk_small", tmp_path / "again").path)
    assert (await view("stu-0001"))["line"] == 8 and (await view("stu-0012"))["line"] == 19
    assert (await view("stu-0001"))["import_id"] == again.import_id
    async with base.acquire() as conn:  # a bulk file's lines replace the older ones
        assert await conn.fetchval("SELECT count(*) FROM file_lines WHERE district_id = $1", D) == 2


def _changes(result) -> int:
    return sum(v for k, v in result.counts.items() if not k.startswith("enrollment_records"))


async def test_a_package_from_another_district_org_is_held_until_confirmed(base, tmp_path):
    package = Edited("bulk_small", tmp_path / "p").edit("orgs.csv", "nycdoe", sourcedId="yonkers", name="Yonkers")
    for school in ("sch-02M001", "sch-02M104", "sch-02M475"):
        package.edit("orgs.csv", school, parentSourcedId="yonkers")
    held = await imported(base, package.path)
    assert held.status == "held" and "orgs.csv names district yonkers (Yonkers)" in held.message
    assert (await imported(base, package.path, confirm=True)).status == "applied"


async def test_staff_of_every_kind_enrolled_in_a_class_are_members_not_unknown_users(base, tmp_path):
    package = (Edited("bulk_small", tmp_path / "p")
               .add("users.csv", "aid-1,active,2026-09-01T12:00:00.000Z,true,sch-02M475,aide,a1,,Ana,Ruiz,,,"
                                 "a1@schools.example.org,,,,,")
               .add("enrollments.csv", "aid-1,aide,cls-02M475-ALG1-01,enr-0024,active,2026-09-01T12:00:00.000Z,"
                                       "sch-02M475,false,,")
               .add("enrollments.csv", "stf-1006,teacher,cls-02M475-ALG1-01,enr-0025,active,2026-09-01T12:00:00.000Z,"
                                       "sch-02M475,false,,")
               .add("demographics.csv", "stf-1006,active,2026-09-01T12:00:00.000Z,,,,,,,,,,,,male,1970-01-01")
               .add("demographics.csv", "stu-9999,active,2026-09-01T12:00:00.000Z,,,,,,,,,,,,male,2012-01-01"))
    result = await imported(base, package.path)
    assert result.status == "applied" and result.error_count == 0, result.problems
    members = (await held_state(base, D))["enrollments"]
    assert members[("cls-02M475-ALG1-01", "aid-1")] == ("aide", False)
    assert members[("cls-02M475-ALG1-01", "stf-1006")] == ("teacher", False)  # an administrator who teaches
    notes = {p.source_id: p.reason for p in result.problems if p.file == "demographics.csv"}
    assert "not students are not kept" in notes["stf-1006"] and "not in users.csv" in notes["stu-9999"]


async def test_the_reconcile_view_covers_staff_says_when_the_latest_file_left_a_record_out_and_names_alike(
        base, tmp_path):
    """The README trial of issue 8: staff always showed no file row; a student the latest
    file left out showed an older file's row as if current; a rejected row's keys were the
    file's columns (grades, orgSourcedIds) while an accepted one's were grade, school_ids."""
    from services.roster import store

    async with base.acquire() as conn:
        staff_said, _ = await store.reconciliation(conn, district_id=D, entity="staff", source_id="stf-1001")
    assert staff_said is not None and staff_said["accepted"] is True and staff_said["file"] == "users.csv"
    assert staff_said["row_data"]["role"] == "teacher" and staff_said["row_data"]["school_ids"]

    await imported(base, Edited("bulk_small", tmp_path / "p").remove("users.csv", "stu-0002")
                   .edit("users.csv", "stu-0001", grades="").path, confirm=True)
    async with base.acquire() as conn:
        left_out, held = await store.reconciliation(conn, district_id=D, entity="student", source_id="stu-0002")
        rejected, _ = await store.reconciliation(conn, district_id=D, entity="student", source_id="stu-0001")
        accepted, _ = await store.reconciliation(conn, district_id=D, entity="student", source_id="stu-0003")
    assert left_out is None and held["status"] == "withdrawn"
    assert rejected["accepted"] is False and set(rejected["row_data"]) == set(accepted["row_data"])
    assert isinstance(rejected["row_data"]["school_ids"], list)


@pytest.mark.parametrize(("file", "column", "written", "meant"), [
    ("users.csv", "grades", "grade", "grades"),
    ("users.csv", "email", "emial", "email"),
    ("enrollments.csv", "beginDate", "beginDat", "beginDate"),
    ("classes.csv", "termSourcedIds", "termSourceIds", "termSourcedIds"),
])
async def test_a_misspelt_column_refuses_the_file_instead_of_reading_every_row_without_it(
        base, tmp_path, file, column, written, meant):
    """The README trial of issue 8: users.csv with `grade` for `grades` rejected every
    student row by row ("a student needs exactly one grade"), and a misspelt optional
    column (email) would have been read as empty in every row, changing what is held."""
    result = await imported(base, Edited("bulk_small", tmp_path / "p").rename_column(file, column, written).path)
    assert result.status == "rejected"
    assert f"{file} has a column {written} where OneRoster names one {meant}" in result.message
    assert await change_events(base) == []
