"""Events that special education systems publish into Caseflow: service mandates (an IEP
or service mandate for a student) and the first attendance a provider records for a
service session (seed 001). The caseload service decides from them which providers may
have which students on their caseload.

Outside systems know students by their SIS id, so these carry `student_source_id`.
"""

from __future__ import annotations

from datetime import date
from typing import Literal

from pydantic import Field

from contracts.envelope import FromOutside, OutsideEmail, OutsideId


class MandateRecorded(FromOutside):
    """A student has a mandate for a service (from an IEP or a service mandate)."""

    event_type: Literal["sped.mandate_recorded.v1"] = Field(default="sped.mandate_recorded.v1", description="Event type and major version.")
    mandate_id: OutsideId = Field(description="The mandate's id in the special education system.")
    student_source_id: OutsideId = Field(description="The student's id in the district's SIS.")
    service: str = Field(min_length=1, max_length=100, description="The mandated service, e.g. speech, counseling, OT.")
    start_date: date | None = Field(default=None, description="When the mandate starts.")
    end_date: date | None = Field(default=None, description="When the mandate is due to end, if known.")


class MandateEnded(FromOutside):
    """A student's mandate ended: the providers linked to it lose the student."""

    event_type: Literal["sped.mandate_ended.v1"] = Field(default="sped.mandate_ended.v1", description="Event type and major version.")
    mandate_id: OutsideId = Field(description="The mandate's id in the special education system.")
    student_source_id: OutsideId = Field(description="The student's id in the district's SIS.")
    reason: str | None = Field(default=None, max_length=200, description="Why it ended (declassified, aged out, ...).")


class FirstAttendanceRecorded(FromOutside):
    """A provider entered the student's first attendance for a service session (the
    "first attend"): the student joins that provider's caseload."""

    event_type: Literal["sped.first_attendance_recorded.v1"] = Field(default="sped.first_attendance_recorded.v1", description="Event type and major version.")
    student_source_id: OutsideId = Field(description="The student's id in the district's SIS.")
    provider_email: OutsideEmail = Field(min_length=3, description="The provider's login email.")
    service: str = Field(min_length=1, max_length=100, description="The service delivered, e.g. speech.")
    session_date: date = Field(description="The date of the session.")
    mandate_id: OutsideId | None = Field(default=None, description="The mandate served, when the system knows it.")
