"""`caseflow publish` puts one event on the real broker as a foreign system would: checked
against its contract, keyed by the topic's key field, with CloudEvents headers; it prints
the event id a consumer will see (issue 10)."""

from __future__ import annotations

import json

import pytest

from contracts import cloudevents
from contracts.topics import SIS_STUDENTS
from services import cli
from tests.support import Stack

pytestmark = pytest.mark.integration


async def test_publish_puts_a_checked_event_with_its_cloudevents_headers_on_the_topic(system: Stack, monkeypatch,
                                                                                       capsys):
    await system.prepare("roster")  # the topics
    monkeypatch.setattr(cli, "_ENV", None)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", system.backends.kafka)
    monkeypatch.setenv("CASEFLOW_TOPIC_PREFIX", system.prefix)
    enrolment = {"district_id": "nycdoe", "source_id": "stu-2001", "school_id": "sch-02M475", "grade": "09",
                 "given_name": "Ana", "family_name": "Reyes"}
    # In a thread: the command runs its own event loop, as it does from a shell.
    import asyncio

    code = await asyncio.to_thread(cli.main, ["publish", "sis.students.v1", "--type", "sis.student_enrolled.v1",
                                              json.dumps(enrolment)])
    assert code == 0
    event_id = capsys.readouterr().out.strip()
    records = await system.records(SIS_STUDENTS.name, key=b"stu-2001")
    assert len(records) == 1
    event = cloudevents.decode(SIS_STUDENTS, records[0].value, records[0].headers)
    assert str(event.event_id) == event_id and event.source_id == "stu-2001" and event.school_id == "sch-02M475"
    assert dict(records[0].headers)["ce_source"] == b"caseflow.cli"
