"""The outbox relay on a real Apache Kafka broker and a real PostgreSQL server: one message
never stops a service's event stream. A row the relay cannot send, or that the broker
refuses, is set aside (outbox_refused, and a dead-letter copy where one can be made) and
the rows after it are published in order; a relay that fails is logged, restarted, and
reported not ready while it is down; /metrics shows a relay that is held back."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import asyncpg
import httpx
import pytest

from contracts.envelope import Event
from contracts.roster import StudentEnrolled, StudentUpdated
from contracts.sis import SisStudentEnrolled
from services.kit import outbox
from services.kit.outbox import _RELAY_LOCK  # the relay's leadership, held by a test as another instance would
from services.kit.settings import KafkaSettings
from services.roster.domain import student_id_for
from tests.support import ServiceProcess, Stack, eventually

pytestmark = pytest.mark.integration

STUDENTS = "roster.students.v1"


def enrolled(district: str, source_id: str, **changes) -> StudentEnrolled:
    facts = dict(district_id=district, student_id=uuid.uuid4(), source_id=source_id, school_id="02M001",
                 grade="05", given_name="Ana", family_name="Reyes")
    return StudentEnrolled(**{**facts, **changes})


def updated(before: StudentEnrolled, **changes) -> StudentUpdated:
    facts = {**before.model_dump(exclude={"event_id", "event_type", "occurred_at"}), **changes}
    return StudentUpdated(**facts, changed=sorted(changes))


def message(system: Stack, event: Event, **kafka) -> outbox.OutgoingMessage:
    settings = KafkaSettings(**{**system.kafka_settings.model_dump(), **kafka})
    return outbox.message_for(event, source="caseflow.roster", kafka=settings)


async def add_row(conn: asyncpg.Connection, m: outbox.OutgoingMessage, *, key: bytes | None) -> int:
    """An outbox row as SQL may build one, with whatever key it was given."""
    return await conn.fetchval(
        "INSERT INTO outbox (topic, key, payload, headers) VALUES ($1, $2, $3, $4) RETURNING id",
        m.topic, key, m.payload, [part for header in m.headers for part in header],
    )


async def outbox_empty(conn: asyncpg.Connection) -> bool:
    return await conn.fetchval("SELECT count(*) = 0 FROM outbox")


async def metrics(service: ServiceProcess) -> str:
    async with httpx.AsyncClient() as client:
        return (await client.get(service.url + "/metrics", timeout=5)).text


def sample(text: str, name: str, **labels: str) -> float | None:
    wanted = "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else ""
    for line in text.splitlines():
        if line.startswith(f"caseflow_{name}{wanted} "):
            return float(line.rsplit(" ", 1)[1])
    return None


async def readiness(service: ServiceProcess) -> tuple[int, dict] | None:
    try:
        async with httpx.AsyncClient() as client:
            response = await client.get(service.url + "/readyz", timeout=5)
            return response.status_code, response.json()
    except httpx.HTTPError:
        return None


def event_ids(records) -> list[str]:
    return [json.loads(r.value)["event_id"] for r in records]


async def test_a_row_the_relay_cannot_send_is_set_aside_and_the_rows_after_it_are_published(system: Stack):
    await system.prepare("roster")
    roster = await system.service("roster").start().ready()
    conn = await system.db("roster")
    try:
        poisoned = message(system, enrolled("d-poisoned", "S-1"))
        # The outbox refuses a row without a key, whoever builds it...
        with pytest.raises(asyncpg.CheckViolationError):
            await add_row(conn, poisoned, key=None)
        # ...but a row written before the constraint, or around it, is set aside by the relay.
        good = [enrolled("d-good", f"S-{n}") for n in range(3)]
        async with conn.transaction():
            await conn.execute("ALTER TABLE outbox DROP CONSTRAINT outbox_key_present")
            poisoned_id = await add_row(conn, poisoned, key=None)
            await outbox.write(conn, [message(system, e) for e in good])

        await eventually(lambda: outbox_empty(conn), what="the outbox drained past the row with no key")
        assert sorted(event_ids(await system.records(STUDENTS))) == sorted(str(e.event_id) for e in good)
        [dead] = await system.records(STUDENTS + ".DLT")
        headers = {n: v.decode() for n, v in dead.headers}
        assert dead.key is None and dead.value == poisoned.payload
        assert headers["dlt_reason"] == "no key" and headers["dlt_topic"] == system.topic(STUDENTS)
        assert headers["dlt_outbox_id"] == str(poisoned_id) and headers["ce_type"] == "roster.student_enrolled.v1"
        refused = await conn.fetchrow("SELECT * FROM outbox_refused")
        assert (refused["id"], refused["reason"], refused["payload"]) == (poisoned_id, "no key", poisoned.payload)
        assert refused["dead_letter_topic"] == system.topic(STUDENTS + ".DLT")

        # A restart finds the relay going on past more of the same; what is too large even
        # for its dead letter is kept in outbox_refused alone.
        roster.stop()
        empty_key = message(system, enrolled("d-poisoned", "S-2"))
        too_large = message(system, enrolled("d-poisoned", "S-3", family_name="Reyes" * 250_000),
                            max_message_bytes=2_000_000)
        null_header = message(system, enrolled("d-poisoned", "S-4"))
        null_header.headers.append(("ce_correlationid", None))  # as SQL builds it from a NULL
        later = [enrolled("d-good", f"S-{n}") for n in range(3, 6)]
        async with conn.transaction():
            empty_key_id = await add_row(conn, empty_key, key=b"")
            too_large_id = await add_row(conn, too_large, key=too_large.key)
            null_header_id = await add_row(conn, null_header, key=null_header.key)
            await outbox.write(conn, [message(system, e) for e in later])
        roster = await system.service("roster").start().ready()

        await eventually(lambda: outbox_empty(conn), what="the outbox drained again after a restart")
        assert sorted(event_ids(await system.records(STUDENTS))) == sorted(str(e.event_id) for e in good + later)
        assert sorted(dict(d.headers)["dlt_reason"] for d in await system.records(STUDENTS + ".DLT")) == \
            [b"an empty key", b"malformed headers (a NULL name or value)", b"no key"]
        refused = {r["id"]: r for r in await conn.fetch("SELECT * FROM outbox_refused")}
        assert refused.keys() == {poisoned_id, empty_key_id, too_large_id, null_header_id}
        assert refused[too_large_id]["dead_letter_topic"] is None
        assert re.fullmatch(r"\d+ bytes, more than the 1000000 a message may have \(KAFKA_MAX_MESSAGE_BYTES\)",
                            refused[too_large_id]["reason"])

        text = await metrics(roster)
        assert sample(text, "outbox_refused_rows") == 4
        assert sample(text, "outbox_refused_total", topic=system.topic(STUDENTS)) == 3  # this process's three
        set_aside = [line for line in roster.log_lines() if line.get("event", "").startswith("outbox message could")]
        assert {line["outbox_id"] for line in set_aside} == {empty_key_id, too_large_id, null_header_id}
        assert all(line["level"] == "error" for line in set_aside)
        assert "Reyes" not in roster.log() and "Ana" not in roster.log()
    finally:
        await conn.close()


async def test_a_record_the_broker_refuses_is_found_in_its_batch_and_the_records_after_it_keep_their_order(
        system: Stack):
    await system.prepare("roster")
    # The relay's own limit above the broker's (about 1 MiB): the broker is the one to refuse.
    roster = await system.service("roster", KAFKA_MAX_MESSAGE_BYTES="4000000").start().ready()
    conn = await system.db("roster")
    try:
        first = enrolled("d-a", "S-1")
        huge = updated(first, family_name="Reyes" * 250_000)
        after = updated(first, grade="06")
        other = enrolled("d-b", "S-2")
        rows = [message(system, e, max_message_bytes=4_000_000) for e in (first, huge, after, other)]
        async with conn.transaction():
            ids = [await add_row(conn, m, key=m.key) for m in rows]

        await eventually(lambda: outbox_empty(conn), what="the outbox drained past the refused record")
        key = str(first.student_id).encode()
        assert event_ids(await system.records(STUDENTS, key=key)) == [str(first.event_id), str(after.event_id)]
        assert event_ids(await system.records(STUDENTS, key=str(other.student_id).encode())) == [str(other.event_id)]
        refused = await conn.fetchrow("SELECT id, reason, dead_letter_topic FROM outbox_refused")
        assert refused["id"] == ids[1] and refused["dead_letter_topic"] is None
        assert refused["reason"].startswith("refused by the broker: ") and "MessageSizeTooLarge" in refused["reason"]
        assert await system.records(STUDENTS + ".DLT") == []
        assert any(line.get("event") == "a record batch was refused; resending its records one at a time"
                   for line in roster.log_lines())
        assert "Reyes" not in roster.log()
    finally:
        await conn.close()


async def test_a_relay_that_fails_is_logged_restarted_and_not_ready_while_it_is_down(system: Stack, tmp_path: Path):
    await system.prepare("roster")
    failing = tmp_path / "relay-fails"
    failing.touch()
    roster = system.service("roster", CASEFLOW_FAIL_AT="relay.publish", CASEFLOW_FAIL_WHILE=str(failing)).start()

    async def down():
        answer = await readiness(roster)
        return answer if answer and answer[0] == 503 and not answer[1]["checks"]["outbox_relay"]["ok"] else None

    _, body = await eventually(down, timeout=60, what="/readyz 503 for the relay")
    checks = body["checks"]
    assert checks["outbox_relay"]["state"] == "restarting" and checks["outbox_relay"]["error"] == "InjectedFailure"
    assert checks["database"]["ok"] and checks["broker"]["ok"]
    assert checks["recover_on_start"]["ok"] and checks["watch"]["ok"]  # the service's other jobs are fine
    failures = [line for line in roster.log_lines()
                if line.get("event") == "task failed; restarting it" and line.get("task") == "outbox_relay"]
    assert failures and failures[0]["level"] == "error" and "InjectedFailure" in failures[0]["exception"]

    failing.unlink()
    await roster.ready()
    text = await metrics(roster)
    assert sample(text, "task_restarts_total", task="outbox_relay") >= 1
    assert sample(text, "task_up", task="outbox_relay") == 1
    assert sample(text, "task_last_success_timestamp_seconds", task="outbox_relay") > 0

    # and it publishes again
    await system.publish(SisStudentEnrolled(district_id="d-slice", source_id="S-100", school_id="02M001",
                                            grade="05", given_name="Ana", family_name="Reyes"))
    key = str(student_id_for("d-slice", "S-100")).encode()
    await eventually(lambda: system.records(STUDENTS, key=key), what="the roster's event published")


async def test_metrics_show_how_long_the_oldest_unsent_event_has_waited_while_the_relay_is_held_back(system: Stack):
    await system.prepare("roster")
    other_instance = await system.db("roster")
    try:
        await other_instance.execute("SELECT pg_advisory_lock($1)", _RELAY_LOCK)  # it leads, and publishes nothing
        roster = await system.service("roster").start().ready()
        assert sample(await metrics(roster), "outbox_oldest_unsent_age_seconds") == 0

        await system.publish(SisStudentEnrolled(district_id="d-slice", source_id="S-100", school_id="02M001",
                                                grade="05", given_name="Ana", family_name="Reyes"))

        async def waiting() -> bool:
            return sample(await metrics(roster), "outbox_oldest_unsent_age_seconds") > 0

        await eventually(waiting, what="a growing age of the oldest unsent event")
        assert (await readiness(roster))[1]["checks"]["outbox_relay"]["role"] == "standby"

        await other_instance.execute("SELECT pg_advisory_unlock($1)", _RELAY_LOCK)

        async def caught_up() -> bool:
            return sample(await metrics(roster), "outbox_oldest_unsent_age_seconds") == 0

        await eventually(caught_up, what="the age back to 0 once the relay leads")
        key = str(student_id_for("d-slice", "S-100")).encode()
        assert len(await system.records(STUDENTS, key=key)) == 1
    finally:
        await other_instance.close()


async def test_the_relay_leaders_lock_connection_is_dropped_by_the_server_soon_after_its_client_goes_silent(
        postgres_url: str):
    """A leader lost with its machine closes no socket: PostgreSQL must find its connection
    dead by itself (TCP keepalives, ~25 s) to free the lock for a standby, not in the OS's
    two hours. Checked on the server's side of the connection the relay leads with."""
    conn = await outbox.leadership_connection(postgres_url)
    try:
        for name, value in outbox.LEADERSHIP_KEEPALIVES.items():
            assert int(await conn.fetchval(f"SHOW {name}")) == value, name
        assert await conn.fetchval("SELECT inet_server_addr() IS NOT NULL")  # over TCP, where keepalives apply
    finally:
        await conn.close()


async def test_the_relay_reads_the_outbox_by_its_key_however_it_has_grown(system: Stack):
    """A relay's first passes, on a fresh service's outbox (analysed empty), and then a first
    import's rows. Before db.PROBES, every pass took its rows out by reading the whole outbox
    (here 4 scans a pass, parallel workers' included): planned for 2,000 ids, a scan looked
    cheaper than 2,000 probes to PostgreSQL's cost model, which expects pages read from disk."""
    from services.kit import db
    from services.kit.metrics import Metrics
    from services.roster.app import definition

    await system.prepare("roster")
    dsn = system.database_url("roster")
    conn = await system.db("roster")
    await db.migrate(conn, db.migrations_for("roster", definition().directory))
    pool = await db.create_pool(dsn, min_size=1, max_size=1)  # one connection: its prepared statements
    relay = outbox.OutboxRelay(dsn=dsn, pool=pool, producer_factory=lambda: outbox.producer_for(system.kafka_settings),
                               metrics=Metrics("t"), batch_size=2000)
    producer = outbox.producer_for(system.kafka_settings)
    await producer.start()
    try:
        # What autovacuum's next ANALYZE would put right (a minute or more later) is held still.
        await conn.execute("ALTER TABLE outbox SET (autovacuum_enabled = false); ANALYZE outbox")
        for n in range(8):  # past five calls of each statement, the outbox small
            await outbox.write(conn, [message(system, enrolled("d1", f"S-{n}-{i}")) for i in range(3)])
            assert await relay.publish_once(producer) == 3
        first = await add_row(conn, m := message(system, enrolled("d1", "S-import")), key=m.key)
        await conn.execute("""INSERT INTO outbox (topic, key, payload, headers)
                              SELECT topic, key, payload, headers FROM outbox, generate_series(1, 100000)
                              WHERE id = $1""", first)
        await conn.execute("SELECT pg_stat_force_next_flush()")
        before = await conn.fetchval("SELECT seq_scan FROM pg_stat_user_tables WHERE relname = 'outbox'")
        for _ in range(4):
            assert await relay.publish_once(producer) == 2000
        await conn.execute("SELECT pg_stat_force_next_flush()")
        assert await conn.fetchval("SELECT seq_scan FROM pg_stat_user_tables WHERE relname = 'outbox'") == before
    finally:
        await producer.stop()
        await pool.close()
        await conn.close()
