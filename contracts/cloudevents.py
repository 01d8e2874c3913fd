"""CloudEvents 1.0 Kafka binary mode: attributes in ce_* headers, the event as the body.

Outside systems may send only the payload in the body and the envelope in headers
(kcat -H ce_id=... -H ce_type=...); both forms decode to the same event.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from datetime import datetime

from pydantic import ValidationError

from contracts.envelope import Event
from contracts.topics import Topic

SPEC_VERSION = "1.0"
JSON = "application/json"

# Outside ids that are not UUIDs are mapped into this namespace with their source,
# since CloudEvents makes (source, id) unique, not id alone.
_OUTSIDE_IDS = uuid.UUID("8b0e3c0e-5d2f-4d6b-9a61-1f1b5c3c9e01")


class BadMessage(ValueError):
    """A message that can never be processed: it goes to the dead-letter topic."""


def header_pairs(event: Event, source: str) -> list[tuple[str, str]]:
    """The event's CloudEvents attributes as (header, text) pairs: what the outbox keeps."""
    headers = [
        ("ce_specversion", SPEC_VERSION),
        ("ce_id", str(event.event_id)),
        ("ce_type", event.event_type),
        ("ce_source", source),
        ("ce_time", event.occurred_at.isoformat()),
        ("ce_districtid", event.district_id),
        ("content-type", JSON),
    ]
    if event.correlation_id:
        headers.append(("ce_correlationid", event.correlation_id))
    return headers


def headers_for(event: Event, source: str) -> list[tuple[str, bytes]]:
    """The event's CloudEvents attributes as Kafka record headers."""
    return [(name, value.encode()) for name, value in header_pairs(event, source)]


def encode(event: Event) -> bytes:
    return event.model_dump_json().encode()


def decode(
    topic: Topic,
    body: bytes | None,
    headers: Iterable[tuple[str, bytes | None]],
    received_at: datetime | None = None,
) -> Event:
    """Decode one Kafka record into the event class its type names, or raise BadMessage.

    An outside event with no time of its own takes the record's timestamp (received_at),
    so a redelivered record decodes to the same event.
    """
    attrs = {}
    for name, value in headers:
        if not name.isascii() and not _is_utf8(name):
            raise BadMessage(f"a header name is not UTF-8 ({name.encode(errors='surrogateescape')!r})")
        if name.startswith("ce_") or name == "content-type":
            if value is None:
                raise BadMessage(f"header {name} has no value")
            try:
                attrs[name] = value.decode()
            except UnicodeDecodeError:
                raise BadMessage(f"header {name} is not UTF-8") from None

    content_type = attrs.get("content-type", JSON)
    if not content_type.startswith(JSON):
        raise BadMessage(f"content-type {content_type!r} is not supported; send {JSON}")
    if not body:
        raise BadMessage("empty body")
    fast = _whole_event(topic, body, attrs)
    if fast is not None:
        return fast
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadMessage(f"body is not JSON: {e.msg if isinstance(e, json.JSONDecodeError) else 'not UTF-8'}") from None
    if not isinstance(data, dict):
        raise BadMessage("body is not a JSON object")

    if "ce_specversion" in attrs and attrs["ce_specversion"] != SPEC_VERSION:
        raise BadMessage(f"ce_specversion {attrs['ce_specversion']!r} is not {SPEC_VERSION}")
    _merge(data, "event_type", attrs.get("ce_type"))
    _merge(data, "occurred_at", attrs.get("ce_time"), same=_same_instant)
    if data.get("occurred_at") is None and received_at is not None:
        data["occurred_at"] = received_at.isoformat()
    _merge(data, "district_id", attrs.get("ce_districtid"))
    _merge(data, "correlation_id", attrs.get("ce_correlationid"))
    if "ce_id" in attrs:
        _merge(data, "event_id", str(_event_id(attrs["ce_id"], attrs.get("ce_source", ""))))

    event_type = data.get("event_type")
    if not isinstance(event_type, str):
        raise BadMessage("no event type: set ce_type or event_type")
    cls = topic.event_class(event_type)
    if cls is None:
        raise BadMessage(f"unknown event type {event_type!r} on topic {topic.name}")
    problems = [] if data.get("event_id") is not None else ["no event id: set ce_id or event_id"]
    try:
        event = cls.model_validate(data)
    except ValidationError as e:
        problems.append(describe(e))
    if problems:
        raise BadMessage(f"{event_type} is invalid: {'; '.join(problems)}")
    return event


def _is_utf8(name: str) -> bool:
    """False for a header name read from bytes that are not UTF-8 (kept surrogate-escaped)."""
    try:
        name.encode()
    except UnicodeEncodeError:
        return False
    return True


def _whole_event(topic: Topic, body: bytes, attrs: dict[str, str]) -> Event | None:
    """The common case, parsed in one step: a body that is the whole event, as Caseflow
    and careful producers send it, agreeing with its headers. None: take the long way."""
    cls = topic.event_class(attrs.get("ce_type", ""))
    if cls is None:
        return None
    try:
        event = cls.from_json(body)
    except ValidationError:
        return None
    given = event.__pydantic_fields_set__
    if "event_id" not in given or "occurred_at" not in given:
        return None  # ids and times are never made up here: a redelivery must decode the same
    ce_id, ce_time = attrs.get("ce_id"), attrs.get("ce_time")
    if (
        (ce_id is not None and not _names(ce_id, event.event_id))
        or attrs.get("ce_districtid", event.district_id) != event.district_id
        or (ce_time is not None and not _at(ce_time, event.occurred_at))
        or attrs.get("ce_correlationid", event.correlation_id) != event.correlation_id
    ):
        return None
    return event


def _names(ce_id: str, event_id: uuid.UUID) -> bool:
    """ce_id == str(event_id): the UUID's canonical text, without making it in Python
    (UUID.__str__ slices and joins in Python; its int is at hand)."""
    return (len(ce_id) == 36 and ce_id[8] == ce_id[13] == ce_id[18] == ce_id[23] == "-"
            and ce_id.replace("-", "") == "%032x" % event_id.int)


def describe(error: ValidationError) -> str:
    """The reasons only: pydantic's own message quotes the input, which may be personal data."""
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}"
        for err in error.errors(include_input=False, include_url=False)
    )


def _event_id(ce_id: str, source: str) -> uuid.UUID:
    try:
        return uuid.UUID(ce_id)
    except ValueError:
        return uuid.uuid5(_OUTSIDE_IDS, f"{source}\n{ce_id}")


def _merge(data: dict, field: str, header: str | None, same=lambda a, b: a == b) -> None:
    if header is None:
        return
    if field not in data or data[field] is None:
        data[field] = header
    elif not same(str(data[field]), header):
        raise BadMessage(f"header for {field} disagrees with the body")


def _at(text: str, moment: datetime) -> bool:
    """Does an ISO 8601 time (a ce_time header) name this moment?"""
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")) == moment
    except (ValueError, TypeError):  # not a time, or one without an offset
        return False


def _same_instant(a: str, b: str) -> bool:
    try:
        return datetime.fromisoformat(a.replace("Z", "+00:00")) == datetime.fromisoformat(b.replace("Z", "+00:00"))
    except ValueError:
        return a == b
