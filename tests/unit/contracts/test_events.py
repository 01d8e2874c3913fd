import json
import re
from datetime import UTC, date, datetime, timedelta, timezone
from types import UnionType
from typing import Annotated, Literal, Union, get_args, get_origin
from uuid import UUID, uuid4

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from contracts import cloudevents
from contracts.envelope import BLANK_OR_EMAIL_PATTERN, EMAIL_PATTERN, FromOutside, not_an_email
from contracts.roster import StudentEnrolled
from contracts.sis import SisStudentEnrolled
from contracts.topics import EVENT_TYPES, SIS_STUDENTS, TOPICS, partition_key, topic_for

FACTS = {"district_id": "d1", "source_id": "S-1", "school_id": "02M001", "grade": "05",
         "given_name": "Ana", "family_name": "Reyes"}


def test_an_event_carries_the_envelope():
    event = SisStudentEnrolled(**FACTS)
    assert isinstance(event.event_id, UUID)
    assert event.event_type == "sis.student_enrolled.v1"
    assert event.occurred_at.tzinfo is not None


def test_times_are_kept_in_utc():
    event = SisStudentEnrolled(**FACTS, occurred_at=datetime(2026, 9, 1, 8, 0, tzinfo=timezone(timedelta(hours=-4))))
    assert event.occurred_at == datetime(2026, 9, 1, 12, 0, tzinfo=UTC)
    assert event.occurred_at.utcoffset() == timedelta(0)


def test_unknown_fields_from_a_newer_producer_are_tolerated():
    event = SisStudentEnrolled.model_validate({**FACTS, "homeroom_color": "blue"})
    assert event.source_id == "S-1"


def test_a_missing_required_field_is_rejected():
    with pytest.raises(ValidationError):
        SisStudentEnrolled.model_validate({k: v for k, v in FACTS.items() if k != "grade"})


def test_a_naive_time_is_rejected():
    with pytest.raises(ValidationError):
        SisStudentEnrolled.model_validate({**FACTS, "occurred_at": "2026-09-01T08:00:00"})


def test_every_event_type_names_its_major_version_and_is_carried_by_one_topic():
    for event_type, cls in EVENT_TYPES.items():
        assert event_type.rsplit(".", 1)[1].startswith("v")
        carriers = [t for t in TOPICS.values() if cls in t.events]
        assert len(carriers) == 1, event_type


def test_every_event_on_a_topic_has_the_topic_key_field():
    for topic in TOPICS.values():
        for cls in topic.events:
            assert topic.key_field in cls.model_fields, (topic.name, cls.__name__)


def test_the_key_is_the_entity_id_so_one_students_events_keep_their_order():
    event = SisStudentEnrolled(**FACTS)
    assert topic_for(event) is SIS_STUDENTS
    assert partition_key(event) == "S-1"


def test_cloudevents_binary_mode_headers_are_written():
    event = SisStudentEnrolled(**FACTS, correlation_id="import-7")
    headers = dict(cloudevents.headers_for(event, "caseflow.roster"))
    assert headers["ce_specversion"] == b"1.0"
    assert headers["ce_id"] == str(event.event_id).encode()
    assert headers["ce_type"] == b"sis.student_enrolled.v1"
    assert headers["ce_source"] == b"caseflow.roster"
    assert datetime.fromisoformat(headers["ce_time"].decode()) == event.occurred_at
    assert headers["content-type"] == b"application/json"
    assert headers["ce_correlationid"] == b"import-7"


def test_an_encoded_event_decodes_to_itself():
    event = SisStudentEnrolled(**FACTS)
    decoded = cloudevents.decode(SIS_STUDENTS, cloudevents.encode(event), cloudevents.headers_for(event, "x"))
    assert decoded == event


def test_an_outside_system_may_send_the_envelope_in_headers_only():
    body = json.dumps({k: v for k, v in FACTS.items() if k != "district_id"}).encode()
    headers = [("ce_specversion", b"1.0"), ("ce_id", b"sis-42"), ("ce_type", b"sis.student_enrolled.v1"),
               ("ce_source", b"powerschool"), ("ce_time", b"2026-09-01T12:00:00Z"), ("ce_districtid", b"d1")]
    event = cloudevents.decode(SIS_STUDENTS, body, headers)
    assert event.district_id == "d1"
    assert event.occurred_at == datetime(2026, 9, 1, 12, tzinfo=UTC)
    # A non-UUID ce_id maps to the same UUID every time, so redelivery is still deduplicated.
    assert event.event_id == cloudevents.decode(SIS_STUDENTS, body, headers).event_id
    other_source = [(n, b"infinite-campus" if n == "ce_source" else v) for n, v in headers]
    assert event.event_id != cloudevents.decode(SIS_STUDENTS, body, other_source).event_id


def test_a_uuid_ce_id_is_the_event_id():
    event_id = uuid4()
    body = json.dumps(FACTS).encode()
    event = cloudevents.decode(SIS_STUDENTS, body, [("ce_id", str(event_id).encode()), ("ce_type", b"sis.student_enrolled.v1")])
    assert event.event_id == event_id


def test_an_event_without_a_time_takes_the_record_time():
    body = json.dumps({**FACTS, "event_type": "sis.student_enrolled.v1", "event_id": str(uuid4())}).encode()
    received = datetime(2026, 9, 2, tzinfo=UTC)
    assert cloudevents.decode(SIS_STUDENTS, body, [], received).occurred_at == received
    with_type_header = [("ce_type", b"sis.student_enrolled.v1")]
    assert cloudevents.decode(SIS_STUDENTS, body, with_type_header, received).occurred_at == received


def test_an_event_without_an_id_is_refused_since_its_redelivery_could_not_be_recognised():
    body = json.dumps({**FACTS, "event_type": "sis.student_enrolled.v1"}).encode()
    with pytest.raises(cloudevents.BadMessage, match="no event id"):
        cloudevents.decode(SIS_STUDENTS, body, [("ce_type", b"sis.student_enrolled.v1")])


def test_headers_that_disagree_with_a_whole_event_body_are_refused():
    event = SisStudentEnrolled(**FACTS)
    headers = [(n, b"other-district" if n == "ce_districtid" else v) for n, v in cloudevents.headers_for(event, "x")]
    with pytest.raises(cloudevents.BadMessage, match="disagrees"):
        cloudevents.decode(SIS_STUDENTS, cloudevents.encode(event), headers)


@pytest.mark.parametrize(
    ("body", "headers", "reason"),
    [
        (b"{not json", [("ce_type", b"sis.student_enrolled.v1")], "not JSON"),
        (b"", [("ce_type", b"sis.student_enrolled.v1")], "empty body"),
        (b"[1, 2]", [("ce_type", b"sis.student_enrolled.v1")], "not a JSON object"),
        (json.dumps({**FACTS, "event_id": str(uuid4())}).encode(), [], "no event type"),
        (json.dumps(FACTS).encode(), [("ce_type", b"sis.student_exploded.v1")], "unknown event type"),
        (json.dumps(FACTS).encode(), [("ce_type", b"roster.student_enrolled.v1")], "unknown event type"),
        (json.dumps(FACTS).encode(), [("ce_type", b"sis.student_enrolled.v1"), ("content-type", b"text/xml")],
         "content-type"),
        (json.dumps({**FACTS, "event_type": "sis.student_enrolled.v1"}).encode(),
         [("ce_type", b"sis.student_enrolled.v2")], "disagrees"),
        (json.dumps({**FACTS, "grade": None}).encode(), [("ce_type", b"sis.student_enrolled.v1")], "grade"),
    ],
)
def test_a_bad_message_is_refused_with_a_reason(body, headers, reason):
    with pytest.raises(cloudevents.BadMessage, match=reason):
        cloudevents.decode(SIS_STUDENTS, body, headers)


def test_a_refusal_never_quotes_personal_data():
    body = json.dumps({**FACTS, "birth_date": "Ana's birthday", "given_name": ""}).encode()
    with pytest.raises(cloudevents.BadMessage) as refused:
        cloudevents.decode(SIS_STUDENTS, body, [("ce_type", b"sis.student_enrolled.v1")])
    assert "birth_date" in str(refused.value) and "given_name" in str(refused.value)
    assert "Ana" not in str(refused.value)


def test_roster_events_describe_themselves_for_subscribers():
    schema = StudentEnrolled.model_json_schema()
    assert all("description" in prop for prop in schema["properties"].values())


@pytest.mark.parametrize("blank", ["", "   ", "\t"])
def test_from_an_outside_system_a_blank_optional_text_means_none(blank):
    from contracts.sis import SisStaffUpserted

    staff = SisStaffUpserted.model_validate_json(json.dumps(
        {"district_id": "d1", "source_id": "T-1", "role": "teacher", "given_name": "Ana", "family_name": "Reyes",
         "email": blank, "identifier": blank, "school_ids": ["02M001"]}))
    assert staff.email is None and staff.identifier is None
    student = SisStudentEnrolled.model_validate({**FACTS, "email": blank, "state_id": blank})
    assert student.email is None and student.state_id is None


def test_from_an_outside_system_a_blank_required_text_is_still_refused():
    with pytest.raises(ValidationError):
        SisStudentEnrolled.model_validate({**FACTS, "given_name": "  "})


_WHOLE = StudentEnrolled(district_id="d1", student_id=uuid4(), source_id="S-1", school_id="02M001", grade="05",
                         given_name="Ana", family_name="Reyes", school_ids=["02M001"])


@pytest.mark.parametrize(
    ("field", "json_value", "refusal"),
    [
        ("given_name", '"An\\u0000a"', "NUL"),
        ("school_ids", '["02M001", "X\\u0000"]', "NUL"),
        ("given_name", '"An\\ud800a"', "lone surrogate"),
        ("occurred_at", '"0001-01-01T00:00:00+01:00"', "out of range"),
        ("occurred_at", '"9999-12-31T23:59:59-01:00"', "out of range"),
        ("occurred_at", '"\\u0030001-01-01T00:00:00+01:00"', "out of range"),  # a year's digit as an escape
    ],
)
def test_a_json_body_with_unstorable_text_or_time_is_refused_as_when_made_in_python(field, json_value, refusal):
    """Event.from_json leaves out the walk over every field when the bytes show nothing can be
    unstorable; whatever could be is still walked and refused, with the reason."""
    body = _WHOLE.model_dump_json().replace(f'"{field}":', f'"{field}":{json_value},"was_{field}":', 1).encode()
    with pytest.raises(ValidationError):
        StudentEnrolled.from_json(body)
    with pytest.raises(cloudevents.BadMessage, match=refusal):
        headers = [h for h in cloudevents.headers_for(_WHOLE, "caseflow.roster") if h[0] != "ce_time"]
        cloudevents.decode(TOPICS["roster.students.v1"], body, headers)


@pytest.mark.parametrize("time", ['"9999-12-31T23:59:59-14:00"', '"\\u0039999-12-31T23:59:59-14:00"'])
def test_a_time_out_of_range_anywhere_in_a_json_body_is_refused(time):
    from contracts.cases import StudentMeetingScheduled

    meeting = StudentMeetingScheduled(district_id="d1", student_source_id="S-1", meeting_id="m-1", title="Attendance",
                                      scheduled_for=datetime(2026, 11, 20, 15, tzinfo=UTC))
    body = meeting.model_dump_json().replace('"2026-11-20T15:00:00Z"', time).encode()
    with pytest.raises(ValidationError, match="scheduled_for is out of range"):
        StudentMeetingScheduled.from_json(body)


def test_from_json_reads_what_model_validate_json_reads():
    named = _WHOLE.model_copy(update={"given_name": "Zoë \"Ana\"", "family_name": "Núñez\\Reyes"})
    for body in (cloudevents.encode(_WHOLE), cloudevents.encode(named), named.model_dump_json(indent=2).encode()):
        assert StudentEnrolled.from_json(body) == StudentEnrolled.model_validate_json(body)


@pytest.mark.parametrize("event_type", sorted(EVENT_TYPES))
def test_an_event_that_can_hold_a_time_besides_occurred_at_has_its_json_times_looked_at(event_type):
    """Event.from_json looks for times out of range in the bytes of every event that can hold a
    time other than occurred_at (which _in_utc checks): cross-checked with the JSON Schema."""
    cls = EVENT_TYPES[event_type]
    schema = cls.model_json_schema()
    del schema["properties"]["occurred_at"]
    if '"date-time"' in json.dumps(schema):
        assert cls._times_beyond_occurred_at()


def test_a_ce_id_names_an_event_id_only_in_its_canonical_text():
    """The whole-event path compares ce_id with the id's canonical text (str(UUID)), made
    from its int: every other spelling of the same UUID takes the long way, as before."""
    event_id = UUID("0123abcd-4567-89ef-0123-456789abcdef")
    canonical = str(event_id)
    spellings = [canonical, canonical.upper(), canonical.replace("-", ""), "{" + canonical + "}",
                 "urn:uuid:" + canonical, canonical[:8] + canonical[9:13] + "-" + canonical[8] + canonical[13:],
                 canonical[:-1] + "-", canonical + " ", "", str(uuid4())]
    for text in spellings:
        assert cloudevents._names(text, event_id) == (text == canonical), text
    assert cloudevents._names(str(UUID(int=0)), UUID(int=0))


@pytest.mark.parametrize("raw", [b"\x00", b"\xed\xa0\x80", b"\xff"])
def test_a_raw_nul_surrogate_or_byte_that_is_not_utf8_in_a_json_body_is_refused(raw):
    """storable_as_json lets pydantic's JSON parser refuse what no escape spells (a raw control
    character, bytes that are not UTF-8, a surrogate encoded as bytes): should a parser ever
    accept them, this fails before an unstorable text is accepted."""
    body = cloudevents.encode(_WHOLE).replace(b'"Reyes"', b'"Re' + raw + b'yes"')
    assert raw in body
    with pytest.raises(ValidationError):
        StudentEnrolled.from_json(body)
    with pytest.raises(cloudevents.BadMessage):
        cloudevents.decode(TOPICS["roster.students.v1"], body, cloudevents.headers_for(_WHOLE, "caseflow.roster"))


_OUTSIDE = sorted(t for t, cls in EVENT_TYPES.items() if issubclass(cls, FromOutside))
_BLANKS = ["", " ", "   ", "\t", "\n", "\r\n", "\x1f", "\u00a0", "\u2003", "\u3000", " \u00a0\t"]


def _example_value(annotation, n: int):
    """A valid JSON value for a required field of this annotation."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return args[0]
    if origin is Annotated:
        return _example_value(args[0], n)
    if origin in (Union, UnionType):
        return None if type(None) in args else _example_value(args[0], n)
    if origin is list:  # of ids (contracts.sis.SisId), or of anything else
        return ["02M001"] if not args or args[0] is str or get_origin(args[0]) is Annotated else \
            [_example_value(args[0], n)]
    if origin is dict:
        return {}
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _valid_body(annotation)
    return {str: f"v{n}", datetime: "2026-11-20T15:00:00Z", date: "2026-11-20", UUID: str(UUID(int=n + 1)),
            int: 1, bool: True, float: 1.0}[annotation]


def _outcome(read, body: bytes):
    try:
        event = read(body)
    except ValidationError as e:
        return "refused", e.errors(include_url=False, include_context=False)  # ctx holds exceptions, equal only to themselves
    return type(event), event.model_dump(), event.model_fields_set


@pytest.mark.parametrize("event_type", _OUTSIDE)
def test_every_outside_event_is_read_from_json_without_pydantics_slow_road(event_type):
    """FromOutside.from_json reads a body with the event's schema less _blank_means_none: a
    contract whose schema it cannot take apart would be read the slow way, unnoticed."""
    assert EVENT_TYPES[event_type]._without_blank_means_none() is not None


@pytest.mark.parametrize("event_type", _OUTSIDE)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_an_outside_event_read_from_json_is_what_the_whole_validation_reads(event_type, data):
    """Blank optional texts (every spelling str.strip() clears), values, nulls, absences and
    wrong types in every field: FromOutside.from_json gives the event (type, values, fields
    given) or the refusals that model_validate_json, with its _blank_means_none, gives."""
    cls = EVENT_TYPES[event_type]
    body = {"event_id": str(uuid4()), "occurred_at": "2026-11-20T15:00:00Z"}
    for n, (name, field) in enumerate(cls.model_fields.items()):
        if name in body or name == "event_type":
            continue
        choices = [_BLANKS, ["  padded  ", None, 7, [], ["a", " "]]]
        if field.is_required():
            choices.append([_example_value(field.annotation, n)] * 4)
        else:
            choices.append(["v", "2026-11-20", ["02M001"], "absent"])
        value = data.draw(st.sampled_from(data.draw(st.sampled_from(choices))), label=name)
        if value != "absent":
            body[name] = value
    raw = json.dumps(body, ensure_ascii=data.draw(st.booleans(), label="ascii")).encode()
    assert _outcome(cls.from_json, raw) == _outcome(cls.model_validate_json, raw)


def test_a_blank_optional_text_read_from_json_means_none_for_every_spelling():
    for blank in _BLANKS:
        body = json.dumps({**FACTS, "email": blank, "state_id": blank, "birth_date": blank, "school_ids": blank})
        student = SisStudentEnrolled.from_json(body.encode())
        assert (student.email, student.state_id, student.birth_date, student.school_ids) == (None, None, None, None)


# ---------------------------------------------------------------- ids and emails from outside

_ENVELOPE = {"event_id", "event_type", "occurred_at", "district_id", "correlation_id", "causation_id"}


def _valid_body(cls) -> dict:
    body = {"district_id": "d1"} if "district_id" in cls.model_fields else {}
    for n, (name, field) in enumerate(cls.model_fields.items()):
        if field.is_required() and name not in body:
            body[name] = "ana@school.org" if name.endswith("_email") else _example_value(field.annotation, n)
    return body


def _text(annotation) -> bool:
    """str, or an Annotated str, optional or not."""
    if annotation is str:
        return True
    if get_origin(annotation) is Annotated:
        return get_args(annotation)[0] is str
    if get_origin(annotation) in (Union, UnionType):
        return all(a is type(None) or _text(a) for a in get_args(annotation))
    return False


def _ids_and_emails(cls) -> tuple[list[str], list[str]]:
    names = [n for n, f in cls.model_fields.items() if n not in _ENVELOPE and _text(f.annotation)]
    return ([n for n in names if n.endswith("_id") or n == "identifier"],
            [n for n in names if n == "email" or n.endswith("_email") and n != "actor_email"])


@pytest.mark.parametrize("event_type", _OUTSIDE)
def test_every_id_an_outside_system_sends_is_refused_with_a_control_character_in_it(event_type):
    """Fix the kind: the SIS contracts' ids refused control characters; the special education
    system's and the trigger events' ids (mandate_id, student_source_id, form_id, ...) did not.
    One rule, contracts.envelope.not_an_id, for every id from outside."""
    cls = EVENT_TYPES[event_type]
    ids, _ = _ids_and_emails(cls)
    assert ids, f"{event_type} carries no id from outside"
    cls.from_json(json.dumps(_valid_body(cls)))
    for name in ids:
        for bad in ("S-\n1", "S\x1f1", "S\x7f1"):
            with pytest.raises(ValidationError) as e:
                cls.from_json(json.dumps({**_valid_body(cls), name: bad}))
            assert f"{name}: Value error, the id holds a control character" in cloudevents.describe(e.value)


@pytest.mark.parametrize(("address", "reason"), [
    ("maria.santos1", "has no @ (an email is something@somewhere)"),
    ("@school.org", "has nothing before its @"),
    ("maria@", "has nothing after its @"),
    ("maria@@school.org", "holds more than one @"),
    ("maria@school@org", "holds more than one @"),
    ("maria santos@school.org", "holds a space (U+0020), which an email cannot hold"),
    ("maria\u00a0santos@school.org", "holds a space (U+00A0), which an email cannot hold"),
    ("maria\tsantos@school.org", "holds a control or invisible character (U+0009), which an email cannot hold"),
    ("maria\x1f@school.org", "holds a control or invisible character (U+001F), which an email cannot hold"),
    ("maria\u200b@school.org", "holds a control or invisible character (U+200B), which an email cannot hold"),
])
def test_an_email_is_something_at_somewhere_with_no_space_or_control_character(address, reason):
    assert not_an_email(address) == reason
    if address.isascii():  # the patterns tell JSON Schema readers the rule's ASCII part
        assert not re.match(EMAIL_PATTERN, address) and not re.match(BLANK_OR_EMAIL_PATTERN, address)


@pytest.mark.parametrize("address", ["maria.santos@school.org", "ana+1@x", "Ñúñez@escuela.es", "a@b"])
def test_an_email_as_districts_write_them_is_an_email(address):
    assert not_an_email(address) is None and not_an_email(f"  {address} ") is None
    assert re.match(EMAIL_PATTERN, address) and re.match(BLANK_OR_EMAIL_PATTERN, f" {address} ")


@pytest.mark.parametrize("event_type", _OUTSIDE)
def test_every_email_an_outside_system_sends_is_refused_unless_it_is_an_email(event_type):
    """An SIS staff member's login email (the key of a caseload and of their grants), a
    provider's, a task's assignee: "maria santos@school.org" was saved as sent; a OneRoster
    file's row was refused for less. One rule, contracts.envelope.not_an_email, for both.
    A blank optional email still means none."""
    cls = EVENT_TYPES[event_type]
    _, emails = _ids_and_emails(cls)
    for name in emails:
        with pytest.raises(ValidationError) as e:
            cls.from_json(json.dumps({**_valid_body(cls), name: "maria santos@school.org"}))
        assert cloudevents.describe(e.value) == f"{name}: Value error, the email holds a space (U+0020), which an " \
                                                "email cannot hold"
        read = cls.from_json(json.dumps({**_valid_body(cls), name: " Maria@School.org "}))
        assert getattr(read, name) == "Maria@School.org"
        if not cls.model_fields[name].is_required():
            assert getattr(cls.from_json(json.dumps({**_valid_body(cls), name: "  "})), name) is None


def test_the_outside_emails_checked_are_the_ones_that_key_caseloads_grants_and_tasks():
    checked = {t: _ids_and_emails(EVENT_TYPES[t])[1] for t in _OUTSIDE}
    assert {t: e for t, e in checked.items() if e} == {
        "cases.task_assigned.v1": ["assignee_email"],
        "sis.staff_upserted.v1": ["email"],
        "sis.student_enrolled.v1": ["email"],
        "sped.first_attendance_recorded.v1": ["provider_email"],
    }


@pytest.mark.parametrize("event_type", sorted(EVENT_TYPES))
def test_every_events_district_id_is_an_id(event_type):
    """A district "nycdoe\nstaff" would give its student T-1 the id of district nycdoe's
    staff member T-1 (the roster derives ids with line breaks between the parts): one
    district's SIS could overwrite another's staff. Every event, from outside or not."""
    cls = EVENT_TYPES[event_type]
    for district in ("nycdoe\nstaff", "d\x1f1", "d" * 65, ""):
        with pytest.raises(ValidationError) as e:
            cls.model_validate_json(json.dumps({**_valid_body(cls), "district_id": district}))
        assert any(err["loc"] == ("district_id",) for err in e.value.errors()), cloudevents.describe(e.value)
