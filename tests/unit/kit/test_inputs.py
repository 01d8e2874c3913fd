"""The kit's input types and the events' own check: what a database or a consumer cannot
hold is refused where it arrives, with a message (issue 9, defect 4)."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import uuid4

import jwt
import pytest
from pydantic import TypeAdapter, ValidationError

from contracts.cases import StudentMeetingScheduled
from contracts.roster import StaffUpserted
from contracts.sis import SisStudentEnrolled
from services.kit.auth import TokenVerifier, mint
from services.kit.inputs import INT4, INT8, District, Email, Key, Moment, cursor, text
from services.kit.settings import AuthSettings

SECRET = "unit-secret-" + "x" * 32


def refusal(type_, value) -> str:
    with pytest.raises(ValidationError) as e:
        TypeAdapter(type_).validate_python(value)
    return e.value.errors()[0]["msg"]


@pytest.mark.parametrize("value", ["a\x00b", "\x00", "x" * 127 + "\x00"])
def test_a_text_with_a_nul_character_is_refused_and_says_so(value):
    assert "NUL" in refusal(text(128, min_length=1), value)


@pytest.mark.parametrize("value", ["a\x00b", "staff\nT-1", "S-\t1", "02M\x1f001", "S\x7f1"])
def test_an_id_with_a_control_character_is_refused(value):
    """As the SIS contracts' ids and OneRoster sourcedIds: ids are derived from them with
    separators between the parts."""
    assert "which an id cannot hold" in refusal(Key, value) or "NUL" in refusal(Key, value)
    assert "which an id cannot hold" in refusal(District, value) or "NUL" in refusal(District, value)
    assert TypeAdapter(Key).validate_python("02M001 Annex, \"B\"") == "02M001 Annex, \"B\""


@pytest.mark.parametrize(("value", "reason"), [
    ("maria.santos1", "the email has no @ (an email is something@somewhere)"),
    ("maria santos@school.org", "the email holds a space (U+0020), which an email cannot hold"),
    ("maria\x1f@school.org", "the email holds a control or invisible character (U+001F), which an email cannot hold"),
    ("a@b@c", "the email holds more than one @"),
    ("   ", "the email is blank: an email is something@somewhere"),
    (" maria@school.org", "the email has spaces around it"),
])
def test_an_email_a_body_names_is_refused_unless_it_is_an_email_and_says_why(value, reason):
    """The same rule as the emails of events from outside and OneRoster files
    (contracts.envelope.not_an_email): a point person, a support lead, a grant's holder."""
    assert refusal(Email, value) == f"Value error, {reason}"
    assert TypeAdapter(Email).validate_python("Ana.Reyes+1@School.org") == "Ana.Reyes+1@School.org"


def test_a_text_with_a_lone_surrogate_or_too_long_is_refused():
    assert refusal(Key, "a\ud800b")
    assert "at most 128" in refusal(Key, "x" * 129)
    assert TypeAdapter(text(10)).validate_python("Réunion 👩") == "Réunion 👩"


def test_a_cursor_stays_within_its_columns_integer_range():
    assert TypeAdapter(cursor()).validate_python(INT8) == INT8
    for value in (INT8 + 1, 10**20, -1):
        assert refusal(cursor(), value)
    assert TypeAdapter(cursor(minimum=-1, maximum=INT4)).validate_python(-1) == -1
    assert refusal(cursor(minimum=-1, maximum=INT4), INT4 + 1)


def test_a_time_has_its_offset_stays_in_the_calendar_in_utc_and_is_read_as_utc():
    assert TypeAdapter(Moment).validate_python("2026-11-02T08:00:00-05:00") == datetime(2026, 11, 2, 13, tzinfo=UTC)
    assert "out of range" in refusal(Moment, "0001-01-01T00:00:00+14:00")
    assert "out of range" in refusal(Moment, "9999-12-31T23:59:59-14:00")
    assert "timezone" in refusal(Moment, "2026-11-02T08:00:00")
    assert "ISO 8601" in refusal(Moment, "3007")


def test_an_event_refuses_text_and_times_its_consumers_cannot_store():
    meeting = dict(district_id="d", student_source_id="S-1", meeting_id="m-1", title="Meeting",
                   scheduled_for=datetime(2026, 11, 20, 15, tzinfo=UTC))
    StudentMeetingScheduled(**meeting)
    with pytest.raises(ValidationError, match="title holds a NUL"):
        StudentMeetingScheduled(**{**meeting, "title": "Attendance\x00meeting"})
    with pytest.raises(ValidationError, match="scheduled_for is out of range"):
        StudentMeetingScheduled.model_validate_json(
            StudentMeetingScheduled(**meeting).model_dump_json().replace("2026-11-20T15:00:00Z",
                                                                         "0001-01-01T00:00:00+14:00"))
    with pytest.raises(ValidationError, match="school_ids holds a NUL"):  # in a list, in any event
        StaffUpserted(district_id="d", staff_id=uuid4(), source_id="T-1", role="teacher", given_name="Ana",
                      family_name="Reyes", school_ids=["A", "B\x00"], matched=False)
    with pytest.raises(ValidationError, match="school_ids.1"):  # an SIS id holds no control character at all
        SisStudentEnrolled(district_id="d", source_id="S-1", school_id="A", school_ids=["A", "B\x00"], grade="05",
                           given_name="Ana", family_name="Reyes")
    with pytest.raises(ValidationError, match="out of range"):
        SisStudentEnrolled(district_id="d", source_id="S-1", school_id="A", grade="05", given_name="Ana",
                           family_name="Reyes", occurred_at="0001-01-01T00:00:00+14:00")


@pytest.mark.parametrize("claims", [dict(district_id="d\x00"), dict(email="a\x00@d.org"), dict(schools=["A\x00"]),
                                    dict(district_id="d" * 65), dict(schools=[""]), dict(district_id="nycdoe\nstaff"),
                                    dict(schools=["02M\x1f001"])])
def test_a_token_whose_claims_cannot_be_stored_is_invalid(claims):
    fields = {"email": "c@s.org", "district_id": "d1", "schools": ["A"], "roles": [], **claims}
    with pytest.raises(jwt.InvalidTokenError, match="claim"):
        TokenVerifier(AuthSettings(secret=SECRET)).verify(mint(SECRET, **fields))
