import io
import json
import logging

from services.kit import logs


def _logged(emit) -> dict:
    stream = io.StringIO()
    logs.configure("test", "DEBUG", stream=stream)
    emit()
    return json.loads(stream.getvalue().strip().splitlines()[-1])


def test_personal_fields_are_redacted_by_name():
    line = _logged(lambda: logs.get("t").info("student seen", given_name="Ana", family_name="Reyes",
                                             birth_date="2015-03-01", auth_code="X7-99", grade="05"))
    assert line["given_name"] == line["family_name"] == line["birth_date"] == line["auth_code"] == "[redacted]"
    assert line["grade"] == "05"


def test_emails_are_redacted_inside_any_text():
    line = _logged(lambda: logs.get("t").warning("mail to ana.reyes@school.example.org bounced"))
    assert "ana.reyes" not in json.dumps(line)


def test_nested_personal_data_is_redacted():
    line = _logged(lambda: logs.get("t").info("payload", body={"student": {"given_name": "Ana", "grade": "05"},
                                                                 "contacts": [{"email": "x@y.org"}]}))
    text = json.dumps(line)
    assert "Ana" not in text and "x@y.org" not in text and '"grade": "05"' in text


def test_records_from_other_libraries_are_redacted_too():
    line = _logged(lambda: logging.getLogger("aiokafka.other").error("token for ana@x.org: Bearer abc.def.ghi"))
    text = json.dumps(line)
    assert "ana@x.org" not in text and "abc.def.ghi" not in text


def test_log_lines_are_json_with_level_time_and_service():
    line = _logged(lambda: logs.get("t").info("hello", event_id="e-1"))
    assert line["level"] == "info" and line["service"] == "test" and "timestamp" in line and line["event_id"] == "e-1"
