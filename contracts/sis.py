"""Events that a district's student information system (SIS) publishes into Caseflow.

These come from outside systems, often not written in Python: they are accepted in
CloudEvents binary mode (attributes in ce_* headers, the payload as the body).
"""

from __future__ import annotations

from datetime import date
from typing import Literal

from pydantic import Field

from contracts.envelope import FromOutside, OutsideEmail, OutsideId, outside_id

# An id in the SIS (a person's sourcedId, a school's org id): an OutsideId, 1-128 characters
# once surrounding spaces are stripped, none of them a control character (the roster derives
# its ids from these with line breaks between the parts: a student "staff\nT-1" would
# otherwise be given staff member T-1's id).
SisId = OutsideId


class SisStudentEnrolled(FromOutside):
    """A district's SIS says a student is enrolled in one of its schools."""

    event_type: Literal["sis.student_enrolled.v1"] = Field(default="sis.student_enrolled.v1", description="Event type and major version.")
    source_id: SisId = Field(description="The student's id in the SIS (OneRoster sourcedId).")
    school_id: SisId = Field(description="The school's id in the SIS (OneRoster org sourcedId).")
    grade: str = Field(min_length=1, max_length=8, description="Grade level as OneRoster writes it: PK, KG, 01..12.")
    given_name: str = Field(min_length=1, max_length=200, description="Student's given name (personal data: never logged).")
    family_name: str = Field(min_length=1, max_length=200, description="Student's family name (personal data: never logged).")
    birth_date: date | None = Field(default=None, description="Date of birth (personal data: never logged).")
    email: OutsideEmail | None = Field(default=None, description="Student's email, if any (personal data: never logged).")
    state_id: outside_id(64) | None = Field(default=None, description="State or city student id (e.g. OSIS number).")
    school_ids: list[SisId] | None = Field(
        default=None, max_length=500, description="Every school the student is enrolled in (dual enrolment), school_id among them; "
        "none means school_id alone.")


class SisStudentWithdrawn(FromOutside):
    """A district's SIS says a student left the district (discharged, transferred out)."""

    event_type: Literal["sis.student_withdrawn.v1"] = Field(default="sis.student_withdrawn.v1", description="Event type and major version.")
    source_id: SisId = Field(description="The student's id in the SIS (OneRoster sourcedId).")


class SisStaffUpserted(FromOutside):
    """A district's SIS says a staff member (teacher, aide, administrator) exists, as now."""

    event_type: Literal["sis.staff_upserted.v1"] = Field(default="sis.staff_upserted.v1", description="Event type and major version.")
    source_id: SisId = Field(description="The staff member's id in the SIS.")
    role: Literal["teacher", "aide", "administrator", "counselor"] = Field(description="OneRoster role (1.2's principal and site, district and system administrators are administrator).")
    given_name: str = Field(min_length=1, max_length=200, description="Given name.")
    family_name: str = Field(min_length=1, max_length=200, description="Family name.")
    email: OutsideEmail | None = Field(default=None, description="Login email; none leaves the teacher unmatched.")
    identifier: outside_id(64) | None = Field(default=None, description="District staff id (e.g. EIS number).")
    school_ids: list[SisId] = Field(min_length=1, max_length=500, description="Schools the staff member works in (SIS org ids).")
