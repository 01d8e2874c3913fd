"""An event that cannot be published is refused when it is emitted, never in the outbox."""

from __future__ import annotations

import uuid
from typing import Literal

import pytest
from pydantic import Field

from contracts.envelope import Event
from contracts.roster import EnrollmentAdded, StudentEnrolled
from services.kit.outbox import Unpublishable, message_for
from services.kit.settings import KafkaSettings

KAFKA = KafkaSettings(topic_prefix="t.")


def enrolment_added(**changes) -> EnrollmentAdded:
    return EnrollmentAdded(district_id="d-ana", person_id=uuid.uuid4(), role="student", class_id=uuid.uuid4(),
                           class_source_id="ALG1-02", user_source_id="S-100", school_id="02M001", primary=False,
                           **changes)


def student(**changes) -> StudentEnrolled:
    facts = dict(district_id="d", student_id=uuid.uuid4(), source_id="S-100", school_id="02M001", grade="05",
                 given_name="Ana", family_name="Reyes")
    return StudentEnrolled(**{**facts, **changes})


def refusal(event: Event, kafka: KafkaSettings = KAFKA) -> str:
    with pytest.raises(Unpublishable) as refused:
        message_for(event, source="caseflow.test", kafka=kafka)
    return str(refused.value)


def test_a_publishable_event_becomes_its_topics_message_keyed_by_its_entity():
    event = enrolment_added()
    message = message_for(event, source="caseflow.test", kafka=KAFKA)
    assert message.topic == "t.roster.enrollments.v1" and message.key == str(event.person_id).encode()


def test_an_event_without_its_key_is_refused_naming_the_type_and_the_key_field():
    # What a roster import once wrote: an EnrollmentAdded with no person.
    reason = refusal(enrolment_added().model_copy(update={"person_id": None}))
    assert reason == "roster.enrollment_added.v1: no key (person_id is empty)"


def test_an_event_with_an_empty_key_is_refused():
    reason = refusal(student().model_copy(update={"student_id": ""}))
    assert reason == "roster.student_enrolled.v1: no key (student_id is empty)"


def test_an_event_no_topic_carries_is_refused():
    class MarkRecorded(Event):
        event_type: Literal["test.mark_recorded.v1"] = Field(default="test.mark_recorded.v1")
        student: str

    assert refusal(MarkRecorded(district_id="d", student="Ana")) == \
        "test.mark_recorded.v1: no topic carries this event type"


def test_an_event_larger_than_a_message_may_be_is_refused_with_its_size_not_its_values():
    reason = refusal(student(family_name="Reyes" * 300), KafkaSettings(max_message_bytes=1000))
    assert reason.startswith("roster.student_enrolled.v1: ") and "more than the 1000 a message may have" in reason
    assert "Reyes" not in reason


def test_the_default_limit_lets_a_large_event_through_and_refuses_a_megabyte():
    assert message_for(student(family_name="x" * 100_000), source="s", kafka=KAFKA)
    assert "more than the 1000000" in refusal(student(family_name="x" * 1_000_000))


def test_an_event_that_cannot_be_serialised_is_refused_without_its_values():
    reason = refusal(student().model_copy(update={"school_id": object()}))
    assert reason == "roster.student_enrolled.v1: cannot be serialised (PydanticSerializationError)"
    reason = refusal(student(given_name="Ana").model_copy(update={"given_name": "\ud800Ana"}))
    assert "Ana" not in reason and "cannot be serialised" in reason
