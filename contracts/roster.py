"""Events the roster service publishes: the district's roster as Caseflow holds it."""

from __future__ import annotations

from datetime import date
from typing import Literal
from uuid import UUID

from pydantic import Field

from contracts.envelope import Event


class StudentEnrolled(Event):
    """A student is enrolled in a school of the district, as the roster now holds them.

    Published once per change: re-importing the same facts publishes nothing.
    """

    event_type: Literal["roster.student_enrolled.v1"] = Field(default="roster.student_enrolled.v1", description="Event type and major version.")
    student_id: UUID = Field(description="Caseflow's id for the student, stable for (district, source_id).")
    source_id: str = Field(description="The student's id in the district's SIS.")
    school_id: str = Field(description="The school's id in the district's SIS.")
    grade: str = Field(description="Grade level: PK, KG, 01..12.")
    given_name: str = Field(description="Given name (personal data: never logged).")
    family_name: str = Field(description="Family name (personal data: never logged).")
    birth_date: date | None = Field(default=None, description="Date of birth (personal data: never logged).")
    email: str | None = Field(default=None, description="Email (personal data: never logged).")
    state_id: str | None = Field(default=None, description="State or city student id.")


class StudentUpdated(Event):
    """A student the roster already held changed (grade, school, name, ids): the full
    current record, plus the names of the fields that changed."""

    event_type: Literal["roster.student_updated.v1"] = Field(default="roster.student_updated.v1", description="Event type and major version.")
    student_id: UUID = Field(description="Caseflow's id for the student.")
    source_id: str = Field(description="The student's id in the district's SIS.")
    school_id: str = Field(description="The school's id in the district's SIS.")
    grade: str = Field(description="Grade level: PK, KG, 01..12.")
    given_name: str = Field(description="Given name (personal data: never logged).")
    family_name: str = Field(description="Family name (personal data: never logged).")
    birth_date: date | None = Field(default=None, description="Date of birth (personal data: never logged).")
    email: str | None = Field(default=None, description="Email (personal data: never logged).")
    state_id: str | None = Field(default=None, description="State or city student id.")
    changed: list[str] = Field(description="Names of the fields that changed.")
