"""The envelope every Caseflow event carries, whoever produced it."""

from __future__ import annotations

import unicodedata
from datetime import UTC, date, datetime
from uuid import UUID, uuid4

from types import UnionType
from typing import Annotated, Literal, Self, Union, get_args, get_origin

from pydantic import (AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, ValidationInfo,
                      field_validator, model_validator)
from pydantic_core import SchemaValidator


def utc_now() -> datetime:
    return datetime.now(UTC)


def unstorable(text: str) -> str | None:
    """Why a text cannot be stored or sent as UTF-8 text (PostgreSQL's text refuses NUL; a
    lone surrogate is no Unicode character), or None when it can."""
    if "\x00" in text:
        return "holds a NUL character (\\u0000), which cannot be stored"
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return "holds a lone surrogate (\\ud800-\\udfff), which is no character"
    return None


def not_an_id(text: str) -> str | None:
    """Why a text cannot be an id from a district's systems (a SIS sourcedId, a school's org
    id): it holds a control character (U+0000-U+001F, U+007F), and ids are derived from them
    with separators between the parts ("staff\\nT-1" would name staff member T-1); or None."""
    if text.isprintable():
        return None
    for ch in text:
        if ch < " " or ch == "\x7f":
            return f"holds a control character (U+{ord(ch):04X}), which an id cannot hold"
    return None


# What not_an_id refuses, for JSON Schema readers (the check itself is not_an_id's).
ID_PATTERN = r"^[^\x00-\x1f\x7f]*$"


def _an_id(value: str) -> str:
    if problem := not_an_id(value):
        raise ValueError(f"the id {problem}")
    return value


def outside_id(max_length: int = 128):
    """An id another system gives (a SIS sourcedId or org id, a state student id, a
    mandate's or a form's id): 1 to max_length characters once surrounding spaces are
    stripped (as for every text of an event from outside), none of them a control character
    (not_an_id)."""
    return Annotated[str, Field(min_length=1, max_length=max_length, json_schema_extra={"pattern": ID_PATTERN}),
                     AfterValidator(_an_id)]


OutsideId = outside_id()

# A district's id (the tenant every event, token and import belongs to): 1-64 characters,
# no control character (not_an_id: ids are derived from it with line breaks between the
# parts, and a district "D\nstaff" would give its student T-1 district D's staff member T-1's id).
DISTRICT_ID_LENGTH = 64
DistrictId = outside_id(DISTRICT_ID_LENGTH)


def not_a_district_id(text: str) -> str | None:
    """Why a text cannot be a district's id where no event's schema reads it (a token's
    claim, the CLI's --district, a drop folder's name): DistrictId's rule, said in words."""
    if not text.strip():
        return "is blank"
    if len(text) > DISTRICT_ID_LENGTH:
        return f"has more than {DISTRICT_ID_LENGTH} characters"
    return not_an_id(text)


def not_an_email(text: str) -> str | None:
    """Why a text cannot be a login email, judged without its surrounding spaces: an email
    is something@somewhere, one @ with text on both sides and no space or control character
    in it (caseloads, access and grants are keyed by it, and grant ids are derived from it
    with separators between the parts); or None. Only the shape: whether the address
    exists is the district's identity provider's to say. A blank text is not judged here: a
    blank email means none (each service's login_email)."""
    address = text.strip()
    if not address:
        return None
    local, at, domain = address.partition("@")
    if not at:
        return "has no @ (an email is something@somewhere)"
    if not local:
        return "has nothing before its @"
    if not domain:
        return "has nothing after its @"
    if "@" in domain:
        return "holds more than one @"
    if not address.isprintable() or " " in address:
        for ch in address:
            if unicodedata.category(ch) == "Zs":
                return f"holds a space (U+{ord(ch):04X}), which an email cannot hold"
            if not ch.isprintable():
                return f"holds a control or invisible character (U+{ord(ch):04X}), which an email cannot hold"
    return None


# What not_an_email accepts, for JSON Schema readers (the check itself is not_an_email's):
# an email as it is, and (an event's field from outside) one with spaces around it or blank.
_EMAIL = r"[^@\s\x00-\x1f\x7f]+@[^@\s\x00-\x1f\x7f]+"
EMAIL_PATTERN = rf"^{_EMAIL}$"
BLANK_OR_EMAIL_PATTERN = rf"^\s*({_EMAIL})?\s*$"


def _an_email(value: str) -> str:
    if problem := not_an_email(value):
        raise ValueError(f"the email {problem}")
    return value


# A login email from outside, at most 320 characters: something@somewhere (not_an_email);
# blank when the field allows none (a blank is none).
OutsideEmail = Annotated[str, Field(max_length=320, json_schema_extra={"pattern": BLANK_OR_EMAIL_PATTERN}),
                         AfterValidator(_an_email)]


def out_of_range(moment: datetime) -> str | None:
    """Why a time cannot be stored (its UTC time falls outside years 1 to 9999), or None."""
    try:
        moment.astimezone(UTC) if moment.tzinfo is not None else moment
    except OverflowError:
        return "is out of range: in UTC it falls before year 1 or after year 9999"
    return None


def storable_as_json(body: bytes, *, times: bool = True) -> bool:
    """True when nothing a JSON body spells can be unstorable, seen in its bytes alone.

    pydantic's JSON parser refuses a body that is not UTF-8, a raw control character in a
    string and a lone surrogate escape: text read from JSON can be unstorable only by holding
    NUL, which JSON spells only as an escape (\\u0000). A time is out of range once in UTC
    only in year 1 or 9999, and a time written as text starts with its year ("0001-...);
    one written as a number is a Unix time, read in UTC. So a body without a backslash
    (no escape, which could spell NUL or disguise a year's digits) and without "0001- or
    "9999- holds no text and no time Event._storable would refuse. times=False: the body's
    times are checked otherwise (an event whose only time is occurred_at, which _in_utc
    checks), so only its text is looked at: one scan for one byte."""
    if b"\\" in body:
        return False
    return not times or (b'"0001-' not in body and b'"9999-' not in body)


# The validation context of Event.from_json for a body storable_as_json passed.
_STORABLE_AS_JSON = {"storable": "seen in the bytes"}


def _may_hold_a_time(annotation) -> bool:
    if annotation in (str, int, float, bool, UUID, date, type(None)):
        return False
    if get_origin(annotation) is Literal:
        return False
    args = get_args(annotation)
    if get_origin(annotation) in (list, tuple, set, frozenset, Union, UnionType) and args:
        return any(_may_hold_a_time(a) for a in args if a is not Ellipsis)
    return True  # a datetime, a nested model, a mapping, or a type not foreseen here: look


# Values with no text and no time in them: nothing to refuse (every event checks every field).
_ALWAYS_STORABLE = frozenset({type(None), bool, int, float, UUID, date})


def _refusal(value) -> str | None:
    if isinstance(value, str):
        return unstorable(value)
    if isinstance(value, datetime):
        return out_of_range(value)
    if isinstance(value, (list, tuple, set, frozenset)):
        return next((r for r in map(_refusal, value) if r), None)
    if isinstance(value, dict):
        return next((r for r in map(_refusal, [*value.keys(), *value.values()]) if r), None)
    if isinstance(value, BaseModel):  # a nested part of an event (a case's history)
        return _refusal(value.__dict__)
    return None


class Event(BaseModel):
    """Base of every event.

    Unknown fields are ignored, so a consumer keeps working when a newer producer adds
    fields within the same major version; a missing required field is rejected.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    event_id: UUID = Field(default_factory=uuid4, description="Unique id of this event; consumers deduplicate on it.")
    event_type: str = Field(description="Stable name with its major version, e.g. roster.student_enrolled.v1.")
    occurred_at: AwareDatetime = Field(default_factory=utc_now, description="When the fact happened, in UTC.")
    district_id: DistrictId = Field(description="The school district the fact belongs to.")
    correlation_id: str | None = Field(default=None, description="Ties together the events caused by one request or import.")
    producer: str | None = Field(default=None, description="The system that produced the event, e.g. caseflow.roster.")

    @field_validator("occurred_at")
    @classmethod
    def _in_utc(cls, value: datetime) -> datetime:
        try:
            return value.astimezone(UTC)  # one conversion, which is also out_of_range's test
        except OverflowError:
            raise ValueError(out_of_range(value)) from None

    @classmethod
    def from_json(cls, body: bytes | str) -> Self:
        """The event a JSON body holds: cls.model_validate_json(body), the same refusals,
        with Event._storable's walk over every field left out when the bytes already say
        that nothing in them can be unstorable (storable_as_json)."""
        plain = type(body) is bytes and storable_as_json(body, times=cls._times_beyond_occurred_at())
        return cls.model_validate_json(body, context=_STORABLE_AS_JSON if plain else None)

    @classmethod
    def _times_beyond_occurred_at(cls) -> bool:
        """Can a field other than occurred_at hold a time (a datetime, in a list, a nested
        model, a mapping, anything untyped)? Worked out once per class."""
        cached = cls.__dict__.get("_times_cache")
        if cached is None:
            cached = any(_may_hold_a_time(f.annotation) for name, f in cls.model_fields.items() if name != "occurred_at")
            type.__setattr__(cls, "_times_cache", cached)
        return cached

    @model_validator(mode="after")
    def _storable(self, info: ValidationInfo):
        """Every event's text and times are what its consumers can store: no NUL, no lone
        surrogate, no time outside the calendar once in UTC. An event that breaks this is
        refused where it is made (an HTTP request answers 422) or dead-lettered where it
        arrives, never accepted and then lost in a consumer's database."""
        if info.context is _STORABLE_AS_JSON:
            return self  # from_json: its bytes hold nothing unstorable
        for name, value in self.__dict__.items():
            kind = type(value)
            if kind is str:  # most fields: the checks of unstorable, without a call each
                if "\x00" not in value and value.isascii():
                    continue
            elif kind in _ALWAYS_STORABLE:
                continue
            if problem := _refusal(value):
                raise ValueError(f"{name} {problem}")
        return self


class FromOutside(Event):
    """Base of the events outside systems publish into Caseflow (SIS, special education,
    case triggers). Their exporters write "no value" in many ways; a blank or
    whitespace-only text where the contract allows none means none (a staff member with
    email "" has no email, and so no caseload). Text is read without its surrounding
    whitespace, so a required name of spaces is refused like an empty one."""

    model_config = ConfigDict(frozen=True, extra="ignore", str_strip_whitespace=True)

    @model_validator(mode="before")
    @classmethod
    def _blank_means_none(cls, data):
        if isinstance(data, dict):
            optional = cls._optional_fields()
            return {k: (None if k in optional and isinstance(v, str) and not v.strip() else v)
                    for k, v in data.items()}
        return data

    @classmethod
    def from_json(cls, body: bytes | str) -> Self:
        """Event.from_json, without pydantic's slow road where it can: a before-validator of
        the whole model (_blank_means_none) makes pydantic build every JSON body as Python
        objects first, at twice the cost of reading it straight into the event. So the body
        is first read by the event's own schema with that one step left out
        (_without_blank_means_none), and that reading is kept only when no optional field
        holds a blank text, where the step changes nothing: then it is the same event. A
        blank given to an optional text is read as a blank text (seen, below); given to an
        optional day or list it is refused (a blank is neither). Either way, and for any body
        refused, the body is read again the whole way, whose answer (the event, or its
        refusals) is the one given. ValidationError as Event.from_json."""
        without = cls._without_blank_means_none()
        if without is None:
            return super().from_json(body)
        plain = type(body) is bytes and storable_as_json(body, times=cls._times_beyond_occurred_at())
        context = _STORABLE_AS_JSON if plain else None
        try:
            event = without.validate_json(body, context=context)
        except ValidationError:
            pass  # refused, or a blank that means none where a text cannot be: the whole way says
        else:
            values = event.__dict__
            for name in cls._optional_fields():
                value = values[name]
                if type(value) is str and not value.strip():
                    break  # a blank text, which means none
            else:
                return event
        return cls.model_validate_json(body, context=context)

    @classmethod
    def _without_blank_means_none(cls) -> SchemaValidator | None:
        """A validator of the class's own schema (its fields, their checks, Event._storable,
        the class's instances made) without its _blank_means_none step; None when the schema
        is not shaped as expected (then from_json always takes the whole way). Once per class."""
        cached = cls.__dict__.get("_without_cache", _UNKNOWN)
        if cached is _UNKNOWN:
            schema = _without_step(cls.__pydantic_core_schema__, cls._blank_means_none) \
                if cls.__pydantic_complete__ else None
            cached = SchemaValidator(schema) if schema is not None else None
            type.__setattr__(cls, "_without_cache", cached)
        return cached

    @classmethod
    def _optional_fields(cls) -> frozenset[str]:
        cached = cls.__dict__.get("_optional_cache")
        if cached is None:
            cached = frozenset(name for name, f in cls.model_fields.items()
                               if not f.is_required() and f.default is None)
            type.__setattr__(cls, "_optional_cache", cached)
        return cached


_UNKNOWN = object()


def _without_step(schema: dict, step) -> dict | None:
    """A pydantic core schema with its first "function-before" step calling `step` taken out
    (its inner schema in its place), found through the schemas that wrap it (the after-
    validators, the model); None when there is no such step."""
    if schema.get("type") == "function-before" and schema.get("function", {}).get("function") == step:
        return schema["schema"]
    inner = schema.get("schema")
    if isinstance(inner, dict):
        found = _without_step(inner, step)
        if found is not None:
            return {**schema, "schema": found}
    return None
