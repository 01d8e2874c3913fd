"""The CaseOpened of a batch of triggers is written into the outbox by PostgreSQL, in the
statement that opens the cases (services/cases/events_sql.py): every row is the event the
contract describes, as the handler built it in Python before, read back with the contract
(and by its fast path: the body is the whole event and agrees with its headers)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from contracts import cloudevents
from contracts.cases import CaseOpened, FormSubmitted, PlanCreated, TaskAssigned
from contracts.roster import StudentEnrolled
from contracts.topics import CASES
from services.cases import handlers, store
from services.kit.consumer import UnitOfWork
from services.kit.settings import AuthSettings, KafkaSettings, Settings
from services.roster.domain import student_id_for

pytestmark = pytest.mark.integration

SETTINGS = Settings(service="cases", database_url="", kafka=KafkaSettings(), auth=AuthSettings(secret="x" * 40),
                    http_port=0)
T0 = datetime(2026, 9, 1, 8, 30, 15, 123456, tzinfo=UTC)


async def outbox_events(conn, before: int) -> list[CaseOpened]:
    events = []
    for r in await conn.fetch("SELECT topic, key, payload, headers FROM outbox WHERE id > $1 ORDER BY id", before):
        headers = [(n, v.encode()) for n, v in zip(r["headers"][::2], r["headers"][1::2], strict=True)]
        assert cloudevents._whole_event(CASES, r["payload"], {n: v.decode() for n, v in headers})
        event = cloudevents.decode(CASES, r["payload"], headers)
        assert (r["topic"], r["key"]) == (SETTINGS.kafka.topic(CASES.name), str(event.student_id).encode())
        assert dict(headers)["ce_source"] == b"caseflow.cases"
        events.append(event)
    return events


async def test_the_cases_a_batch_opens_are_published_by_postgresql_as_the_contract_says(service_db):
    pool = await service_db("cases")
    async with pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        try:
            await conn.execute("SET LOCAL TimeZone = 'America/New_York'")  # the events' times stay in UTC
            uow = UnitOfWork(conn, source="caseflow.cases", settings=SETTINGS)
            await handlers.on_roster_students(uow, [StudentEnrolled(
                district_id="d1", occurred_at=T0 - timedelta(days=30), student_id=student_id_for("d1", f"s{i}"),
                source_id=f"s{i}", school_id=f"H{i % 2}", grade="10", given_name="Ana", family_name="Reyes")
                for i in range(4)])
            for kind in ("submit_form", "create_plan", "assign_task"):
                await store.set_entry(conn, "d1", kind, True, "admin", T0 - timedelta(days=20))
            await store.set_school_case_manager(conn, "d1", "H1", "cm@x.org", "admin")
            triggers = [
                FormSubmitted(district_id="d1", occurred_at=T0, student_source_id="s0", actor_email="c@x.org",
                              correlation_id="corr-0", form_id="f0", form_name="Counseling referral"),
                PlanCreated(district_id="d1", occurred_at=T0 + timedelta(seconds=1), student_source_id="s1",
                            actor_email="c@x.org", plan_id="p1", plan_name="Tier 2"),  # no correlation id
                FormSubmitted(district_id="d1", occurred_at=T0 + timedelta(seconds=2), student_source_id="s0",
                              actor_email="c@x.org", correlation_id="corr-2", form_id="f2", form_name="Again"),
                TaskAssigned(district_id="d1", occurred_at=T0 + timedelta(seconds=3), student_source_id="s3",
                             actor_email="c@x.org", correlation_id="corr-3", task_id=uuid.uuid4(), title="Call home",
                             assignee_email="t@x.org"),
            ]
            before = await conn.fetchval("SELECT coalesce(max(id), 0) FROM outbox")
            started = datetime.now(UTC)
            uow = UnitOfWork(conn, source="caseflow.cases", settings=SETTINGS)
            await handlers.on_triggers(uow, triggers)
            assert uow.outgoing == []  # the database wrote them
            events = await outbox_events(conn, before)

            opened = await conn.fetch(
                """SELECT c.*, s.source_id FROM cases c JOIN students s USING (student_id)
                   WHERE c.district_id = 'd1' ORDER BY c.case_number""")
            by_trigger = {t.event_id: t for t in triggers}
            # What the handler built in Python for each case it opened, but the event's own id and time.
            expected = [CaseOpened(
                district_id="d1", case_id=c["case_id"], case_number=c["case_number"], school_id=c["school_id"],
                student_id=c["student_id"], student_source_id=c["source_id"], trigger_kind=c["trigger_kind"],
                source_event_id=c["source_event_id"], source_occurred_at=by_trigger[c["source_event_id"]].occurred_at,
                correlation_id=by_trigger[c["source_event_id"]].correlation_id, producer="caseflow.cases",
                case_manager=c["case_manager"]) for c in opened]
            assert len(expected) == 3
            assert [e.model_dump(exclude={"event_id", "occurred_at"}) for e in events] == \
                [e.model_dump(exclude={"event_id", "occurred_at"}) for e in expected]
            assert [(e.case_manager, e.correlation_id) for e in events] == \
                [(None, "corr-0"), ("cm@x.org", None), ("cm@x.org", "corr-3")]
            assert all(e.source_occurred_at.tzinfo == UTC for e in events)
            assert len({e.event_id for e in events}) == 3
            assert all(started <= e.occurred_at <= datetime.now(UTC) and e.occurred_at.tzinfo == UTC for e in events)
        finally:
            await tx.rollback()
