"""The envelope every Caseflow event carries, whoever produced it."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID, uuid4

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator


def utc_now() -> datetime:
    return datetime.now(UTC)


class Event(BaseModel):
    """Base of every event.

    Unknown fields are ignored, so a consumer keeps working when a newer producer adds
    fields within the same major version; a missing required field is rejected.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    event_id: UUID = Field(default_factory=uuid4, description="Unique id of this event; consumers deduplicate on it.")
    event_type: str = Field(description="Stable name with its major version, e.g. roster.student_enrolled.v1.")
    occurred_at: AwareDatetime = Field(default_factory=utc_now, description="When the fact happened, in UTC.")
    district_id: str = Field(min_length=1, max_length=64, description="The school district the fact belongs to.")
    correlation_id: str | None = Field(default=None, description="Ties together the events caused by one request or import.")
    producer: str | None = Field(default=None, description="The system that produced the event, e.g. caseflow.roster.")

    @field_validator("occurred_at")
    @classmethod
    def _in_utc(cls, value: datetime) -> datetime:
        return value.astimezone(UTC)


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
    def _optional_fields(cls) -> frozenset[str]:
        cached = cls.__dict__.get("_optional_cache")
        if cached is None:
            cached = frozenset(name for name, f in cls.model_fields.items()
                               if not f.is_required() and f.default is None)
            type.__setattr__(cls, "_optional_cache", cached)
        return cached
