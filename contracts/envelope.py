"""The envelope every Caseflow event carries, whoever produced it."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID, uuid4

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator


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
