"""The walking slice on a real Apache Kafka broker and a real PostgreSQL server:
an outside SIS publishes a student's enrolment; the roster stores it and publishes its
own event through the outbox; the caseload service keeps the student in its projection."""

from __future__ import annotations

import json
import shutil
import subprocess
from datetime import UTC, datetime, timedelta

import pytest

from contracts.sis import SisStudentEnrolled
from services.kit.crash import CRASH_EXIT_CODE
from services.roster.domain import student_id_for
from tests.support import Stack, eventually

pytestmark = pytest.mark.integration

DISTRICT = "d-slice"


def enrolment(source_id: str = "S-100", **changes) -> SisStudentEnrolled:
    facts = dict(district_id=DISTRICT, source_id=source_id, school_id="02M001", grade="05",
                 given_name="Ana", family_name="Reyes", occurred_at=datetime.now(UTC) - timedelta(minutes=5))
    return SisStudentEnrolled(**{**facts, **changes})


async def count(system: Stack, service: str, sql: str, *args) -> int:
    conn = await system.db(service)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


async def roster_events(system: Stack, source_id: str) -> list[dict]:
    key = str(student_id_for(DISTRICT, source_id)).encode()
    return [json.loads(r.value) for r in await system.records("roster.students.v1", key=key)]


async def caseload_has(system: Stack, source_id: str, grade: str = "05") -> bool:
    return await count(
        system, "caseload", "SELECT count(*) FROM students WHERE student_id = $1 AND grade = $2",
        student_id_for(DISTRICT, source_id), grade,
    ) == 1


async def test_an_enrolment_published_once_is_stored_once_in_each_service(system: Stack):
    await system.prepare("roster", "caseload")
    roster = await system.service("roster").start().ready()
    caseload = await system.service("caseload").start().ready()

    await system.publish(enrolment())

    await eventually(lambda: caseload_has(system, "S-100"), what="the caseload projection")
    assert await count(system, "roster", "SELECT count(*) FROM students") == 1
    assert await count(system, "caseload", "SELECT count(*) FROM students") == 1
    events = await roster_events(system, "S-100")
    assert [e["event_type"] for e in events] == ["roster.student_enrolled.v1"]
    assert roster.proc.poll() is None and caseload.proc.poll() is None


async def test_the_same_event_delivered_twice_has_one_effect(system: Stack):
    await system.prepare("roster", "caseload")
    first = enrolment(grade="05")
    promoted = enrolment(grade="06")
    for event in (first, promoted, first):  # the third is a redelivery of the first: same event_id
        await system.publish(event)
    await system.service("roster").start().ready()
    await system.service("caseload").start().ready()

    await eventually(lambda: caseload_has(system, "S-100", grade="06"), what="grade 06 in the caseload projection")
    # Grade 06 shows the second record handled; the redelivery after it may still be on its
    # way, and must have been handled before "one effect" means anything.
    await system.caught_up("roster", "caseload")
    assert await count(system, "roster", "SELECT count(*) FROM inbox") == 2
    assert await count(system, "roster", "SELECT grade FROM students") == "06"
    events = await roster_events(system, "S-100")
    assert [e["event_type"] for e in events] == ["roster.student_enrolled.v1", "roster.student_updated.v1"]
    assert events[1]["changed"] == ["grade"]


async def test_a_malformed_message_is_dead_lettered_and_the_next_one_on_its_partition_still_processed(system: Stack):
    await system.prepare("roster", "caseload")
    key = b"S-200"
    await system.produce_raw("sis.students.v1", b"{not json", key=key, partition=0,
                             headers=[("ce_type", b"sis.student_enrolled.v1")])
    missing_grade = enrolment("S-200").model_dump(mode="json")
    del missing_grade["grade"]
    await system.produce_raw("sis.students.v1", json.dumps(missing_grade).encode(), key=key, partition=0, headers=[])
    await system.produce_raw("sis.students.v1", b'{"district_id": "d"}', key=key, partition=0,
                             headers=[("ce_type", b"sis.student_transferred.v9")])
    await system.publish(enrolment("S-200"), partition=0)
    roster = await system.service("roster").start().ready()

    dead = await eventually(lambda: system.records("sis.students.v1.DLT"), what="dead letters")
    await eventually(lambda: _len_at_least(system, "sis.students.v1.DLT", 3), what="three dead letters")
    dead = await system.records("sis.students.v1.DLT")
    reasons = [dict(r.headers)["dlt_reason"].decode() for r in dead]
    assert any("not JSON" in r for r in reasons)
    assert any("grade: Field required" in r for r in reasons)
    assert any("unknown event type 'sis.student_transferred.v9'" in r for r in reasons)
    assert dead[0].value == b"{not json" and dead[0].key == key
    assert {dict(r.headers)["dlt_topic"].decode() for r in dead} == {system.topic("sis.students.v1")}
    assert [int(dict(r.headers)["dlt_offset"]) for r in dead] == [0, 1, 2]

    await eventually(lambda: count(system, "roster", "SELECT count(*) FROM students"), what="the good message")
    assert roster.proc.poll() is None
    assert "Reyes" not in roster.log() and "Ana" not in roster.log()


async def _len_at_least(system: Stack, topic: str, n: int) -> bool:
    return len(await system.records(topic)) >= n


async def test_killed_between_database_commit_and_offset_commit_a_restart_leaves_no_double_effect(system: Stack):
    await system.prepare("roster", "caseload")
    # Two facts in one batch; without the inbox, reprocessing them would emit two more updates.
    await system.publish(enrolment(grade="05"))
    await system.publish(enrolment(grade="06"))
    crashing = system.service("roster").start(CASEFLOW_CRASH_AT="consumer.after_db_commit")
    assert await crashing.exited() == CRASH_EXIT_CODE
    assert await count(system, "roster", "SELECT count(*) FROM inbox") == 2  # the database did commit

    await system.service("roster").start().ready()
    await system.service("caseload").start().ready()
    await eventually(lambda: caseload_has(system, "S-100", grade="06"), what="grade 06 in the caseload projection")
    # An empty outbox is not enough: the redelivered batch must have been read again too.
    await system.caught_up("roster", "caseload")
    events = await roster_events(system, "S-100")
    assert [e["event_type"] for e in events] == ["roster.student_enrolled.v1", "roster.student_updated.v1"]


async def test_the_relay_killed_before_publishing_loses_nothing(system: Stack):
    await system.prepare("roster", "caseload")
    await system.publish(enrolment())
    crashing = system.service("roster").start(CASEFLOW_CRASH_AT="relay.before_publish")
    assert await crashing.exited() == CRASH_EXIT_CODE
    assert await count(system, "roster", "SELECT count(*) FROM outbox") == 1
    assert await roster_events(system, "S-100") == []

    await system.service("roster").start().ready()
    await system.service("caseload").start().ready()
    await eventually(lambda: caseload_has(system, "S-100"), what="the caseload projection")
    await system.caught_up("roster", "caseload")  # the relay is done: a second copy would be out by now
    assert len(await roster_events(system, "S-100")) == 1


async def test_the_relay_killed_after_publishing_re_sends_and_consumers_absorb_the_copy(system: Stack):
    await system.prepare("roster", "caseload")
    await system.publish(enrolment())
    crashing = system.service("roster").start(CASEFLOW_CRASH_AT="relay.after_publish")
    assert await crashing.exited() == CRASH_EXIT_CODE

    await system.service("roster").start().ready()
    await system.service("caseload").start().ready()
    await eventually(lambda: count(system, "roster", "SELECT count(*) = 0 FROM outbox"), what="the outbox drained")
    events = await roster_events(system, "S-100")
    assert len(events) == 2 and events[0]["event_id"] == events[1]["event_id"]  # sent twice, one event
    await eventually(lambda: count(system, "caseload", "SELECT count(*) FROM inbox"), what="caseload inbox")
    await eventually(lambda: _inbox_saw_both(system), what="caseload to read both copies")
    assert await count(system, "caseload", "SELECT count(*) FROM inbox") == 1
    assert await count(system, "caseload", "SELECT count(*) FROM students") == 1


async def _inbox_saw_both(system: Stack) -> bool:
    from services.kit.metrics import Metrics  # noqa: F401 - documented below

    # The duplicate counter lives in the caseload process; read it from /metrics.
    import httpx

    proc = next(p for p in system.processes if p.name == "caseload" and p.proc.poll() is None)
    async with httpx.AsyncClient() as client:
        text = (await client.get(proc.url + "/metrics")).text
    return any(line.startswith("caseflow_events_duplicate_total") and not line.endswith(" 0.0")
               for line in text.splitlines())


async def test_an_outside_system_can_publish_with_plain_kafka_tools_and_cloudevents_headers(system: Stack):
    await system.prepare("roster", "caseload")
    body = json.dumps({"source_id": "S-300", "school_id": "02M001", "grade": "KG",
                       "given_name": "Lee", "family_name": "Park"})
    headers = {"ce_specversion": "1.0", "ce_id": "powerschool-000123", "ce_type": "sis.student_enrolled.v1",
               "ce_source": "powerschool", "ce_time": "2026-09-01T12:00:00Z", "ce_districtid": DISTRICT,
               "content-type": "application/json"}
    kcat = shutil.which("kcat") or shutil.which("kafkacat")
    if kcat:
        args = [kcat, "-P", "-b", system.backends.kafka, "-t", system.topic("sis.students.v1"), "-k", "S-300",
                "-X", "message.timeout.ms=10000"]
        for name, value in headers.items():
            args += ["-H", f"{name}={value}"]
        subprocess.run(args, input=body.encode(), check=True, timeout=30)
    else:  # a bare Kafka client, none of Caseflow's code: the same bytes kcat would send
        await system.produce_raw("sis.students.v1", body.encode(), key=b"S-300",
                                 headers=[(k, v.encode()) for k, v in headers.items()])
    await system.service("roster").start().ready()

    await eventually(lambda: count(system, "roster", "SELECT count(*) FROM students WHERE source_id = 'S-300'"),
                     what="the student from the outside system")
    events = await eventually(lambda: roster_events(system, "S-300"), what="the roster's event, through its relay")
    assert events[0]["grade"] == "KG" and events[0]["occurred_at"].startswith("2026-09-01T12:00:00")
