"""What an HTTP input may be before a route sees it: the types every service's `api.py`
declares its query, path and body fields with. Each refuses, with a 422 naming the field,
what the database or the events cannot hold (a NUL character or a lone surrogate in a text,
a text longer than its column means, an integer beyond the column's range, a time without
its UTC offset or outside the calendar once in UTC), so no odd input reaches PostgreSQL
or an event and fails there. Plumbing only: the lengths and patterns are each route's."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, AwareDatetime, BeforeValidator, Field

from contracts.envelope import EMAIL_PATTERN, ID_PATTERN, not_an_email, not_an_id, out_of_range, unstorable

INT4 = 2**31 - 1  # PostgreSQL integer / serial
INT8 = 2**63 - 1  # PostgreSQL bigint / bigserial


def _storable(value: str) -> str:
    if problem := unstorable(value):
        raise ValueError(f"the text {problem}")
    return value


def _an_id(value: str) -> str:
    if problem := not_an_id(value):
        raise ValueError(f"the id {problem}")
    return value


def _an_email(value: str) -> str:
    if not value.strip():
        raise ValueError("the email is blank: an email is something@somewhere")
    if value != value.strip():
        raise ValueError("the email has spaces around it")
    if problem := not_an_email(value):
        raise ValueError(f"the email {problem}")
    return value


def _in_utc(value: datetime) -> datetime:
    if problem := out_of_range(value):
        raise ValueError(f"the time {problem}")
    return value.astimezone(UTC)


def _iso_8601(value: Any) -> Any:
    """A time is written as ISO 8601 text, never a number of seconds."""
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str):
        raise ValueError("a time is written as ISO 8601 text with its UTC offset, e.g. 2026-09-01T08:00:00-04:00")
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise ValueError("is not a time: write it as ISO 8601 with its UTC offset, e.g. 2026-09-01T08:00:00-04:00") \
            from None


def text(max_length: int, *, min_length: int = 0, pattern: str | None = None, description: str | None = None) -> Any:
    """A text of at most `max_length` characters that PostgreSQL can store."""
    return Annotated[str, Field(min_length=min_length, max_length=max_length, pattern=pattern,
                                description=description), AfterValidator(_storable)]


# An id from the district's systems (SIS sourcedIds, school org ids), or a short code: no
# control character, as the SIS contracts' ids (contracts.sis.SisId) and OneRoster sourcedIds
# (ids are derived from them with separators between the parts).
Key = Annotated[str, Field(min_length=1, max_length=128, json_schema_extra={"pattern": ID_PATTERN}),
                AfterValidator(_storable), AfterValidator(_an_id)]
# A district's id (a transfer's destination): as every event's district_id
# (contracts.envelope.DistrictId), 1-64 characters, no control character.
District = Annotated[str, Field(min_length=1, max_length=64, json_schema_extra={"pattern": ID_PATTERN}),
                     AfterValidator(_storable), AfterValidator(_an_id)]
# A name or title people write.
Name = text(300, min_length=1)
# An email as a path or filter (blank or odd ones are the route's to judge).
EmailText = text(320)
# An email a body names: something@somewhere (contracts.envelope.not_an_email, as for the
# emails of events from outside and OneRoster files), lower-cased by the route.
Email = Annotated[str, Field(min_length=3, max_length=320, json_schema_extra={"pattern": EMAIL_PATTERN}),
                  AfterValidator(_storable), AfterValidator(_an_email)]

# A time with its UTC offset (08:00 where?), read as UTC; 422 when it names no offset or
# falls outside the calendar once in UTC.
Moment = Annotated[AwareDatetime, BeforeValidator(_iso_8601), AfterValidator(_in_utc)]


def _iso_day(value: Any) -> Any:
    """A day is written YYYY-MM-DD, never a number (which pydantic would read as seconds
    since 1970 and turn into a day nobody meant)."""
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    if not isinstance(value, str):
        raise ValueError("a day is written YYYY-MM-DD, e.g. 2026-11-20")
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise ValueError("is not a day: write it YYYY-MM-DD, e.g. 2026-11-20") from None


# A calendar day (a due date, a cut-off), as YYYY-MM-DD only.
Day = Annotated[date, BeforeValidator(_iso_day)]


def cursor(*, minimum: int = 0, maximum: int = INT8, description: str = "the last item's position, "
           "from next_after") -> Any:
    """A paging position in an integer column: beyond its range, no row is there (422)."""
    return Annotated[int, Field(ge=minimum, le=maximum, description=description)]
