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
    school_ids: list[str] | None = Field(
        default=None, description="Every school the student is enrolled in (dual enrolment, OneRoster "
        "orgSourcedIds), school_id among them, in a stable order. Staff of each of these schools see the student.")


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
    school_ids: list[str] | None = Field(
        default=None, description="Every school the student is enrolled in (dual enrolment, OneRoster "
        "orgSourcedIds), school_id among them, in a stable order. Staff of each of these schools see the student.")
    changed: list[str] = Field(description="Names of the fields that changed.")


class StudentWithdrawn(Event):
    """A student left the district's roster: absent from a bulk file, marked tobedeleted
    in a delta, or withdrawn by the SIS. The record is kept; the student is no longer active."""

    event_type: Literal["roster.student_withdrawn.v1"] = Field(default="roster.student_withdrawn.v1", description="Event type and major version.")
    student_id: UUID = Field(description="Caseflow's id for the student.")
    source_id: str = Field(description="The student's id in the district's SIS.")
    school_id: str = Field(description="The school the student was last enrolled in.")
    reason: Literal["absent_from_bulk_file", "tobedeleted", "sis_withdrawal"] = Field(
        description="Why: absent from a bulk users file, tobedeleted in a delta, or the SIS said so."
    )


class StaffUpserted(Event):
    """A staff account (teacher, aide, administrator) was added or changed. A teacher with
    no email cannot be matched to a login and gets no caseload (matched is false)."""

    event_type: Literal["roster.staff_upserted.v1"] = Field(default="roster.staff_upserted.v1", description="Event type and major version.")
    staff_id: UUID = Field(description="Caseflow's id for the staff member, stable for (district, source_id).")
    source_id: str = Field(description="The staff member's id in the district's SIS.")
    role: Literal["teacher", "aide", "administrator", "counselor"] = Field(description="OneRoster role (1.2's principal and site, district and system administrators are administrator).")
    given_name: str = Field(description="Given name.")
    family_name: str = Field(description="Family name.")
    email: str | None = Field(default=None, description="Login email; the key that matches the account to a caseload "
                              "user. None when the district gave none (a blank or whitespace email is none).")
    identifier: str | None = Field(default=None, description="District staff id (e.g. EIS number).")
    school_ids: list[str] = Field(description="Schools the staff member works in (SIS org ids).")
    matched: bool = Field(description="True when the account has an email, so it can be matched to a login.")


class StaffDeactivated(Event):
    """A staff account left the roster (absent from a bulk file, or tobedeleted)."""

    event_type: Literal["roster.staff_deactivated.v1"] = Field(default="roster.staff_deactivated.v1", description="Event type and major version.")
    staff_id: UUID = Field(description="Caseflow's id for the staff member.")
    source_id: str = Field(description="The staff member's id in the district's SIS.")


class ClassUpserted(Event):
    """A class was added or changed: an official class (homeroom) or a course section (scheduled)."""

    event_type: Literal["roster.class_upserted.v1"] = Field(default="roster.class_upserted.v1", description="Event type and major version.")
    class_id: UUID = Field(description="Caseflow's id for the class, stable for (district, source_id).")
    source_id: str = Field(description="The class's id in the district's SIS.")
    school_id: str = Field(description="The school (SIS org id).")
    class_type: Literal["homeroom", "scheduled"] = Field(description="homeroom: an official class; scheduled: a course section.")
    title: str = Field(description="Title, e.g. 3-401 or Algebra I.")
    class_code: str | None = Field(default=None, description="Section code, e.g. ALG1-02.")
    course_source_id: str | None = Field(default=None, description="The course (SIS id) of a section.")
    grades: list[str] = Field(description="Grade levels served.")
    periods: list[str] = Field(description="Periods the section meets.")


class ClassRemoved(Event):
    """A class left the roster; its enrolments are removed with their own events."""

    event_type: Literal["roster.class_removed.v1"] = Field(default="roster.class_removed.v1", description="Event type and major version.")
    class_id: UUID = Field(description="Caseflow's id for the class.")
    source_id: str = Field(description="The class's id in the district's SIS.")
    school_id: str = Field(description="The school (SIS org id).")


class EnrollmentAdded(Event):
    """A student or teacher was enrolled in a class. Keyed by the person, so one person's
    enrolments stay in order."""

    event_type: Literal["roster.enrollment_added.v1"] = Field(default="roster.enrollment_added.v1", description="Event type and major version.")
    person_id: UUID = Field(description="student_id of a student, staff_id of a teacher or aide.")
    role: Literal["student", "teacher", "aide", "administrator"] = Field(description="The person's role in the class.")
    class_id: UUID = Field(description="Caseflow's id for the class.")
    class_source_id: str = Field(description="The class's id in the SIS.")
    user_source_id: str = Field(description="The person's id in the SIS.")
    school_id: str = Field(description="The class's school (SIS org id).")
    primary: bool = Field(description="True for the class's main teacher.")


class EnrollmentRemoved(Event):
    """A student or teacher is no longer enrolled in a class."""

    event_type: Literal["roster.enrollment_removed.v1"] = Field(default="roster.enrollment_removed.v1", description="Event type and major version.")
    person_id: UUID = Field(description="student_id of a student, staff_id of a teacher or aide.")
    role: Literal["student", "teacher", "aide", "administrator"] = Field(description="The person's role in the class.")
    class_id: UUID = Field(description="Caseflow's id for the class.")
    class_source_id: str = Field(description="The class's id in the SIS.")
    user_source_id: str = Field(description="The person's id in the SIS.")
    school_id: str = Field(description="The class's school (SIS org id).")


class RosterImportCompleted(Event):
    """A roster import finished and its changes were published (before this event, in order
    per entity). Counts say how many of each change it made."""

    event_type: Literal["roster.import_completed.v1"] = Field(default="roster.import_completed.v1", description="Event type and major version.")
    import_id: UUID = Field(description="The import.")
    counts: dict[str, int] = Field(description="Changes by kind, e.g. students_enrolled, enrollments_removed.")
    rejected_rows: int = Field(description="Rows skipped for errors (see the import's error report).")


class DistrictUpserted(Event):
    """The district as its roster names it (the OneRoster org of type district): new, or
    renamed. The transfer portal lists destination districts by this name (seed 003)."""

    event_type: Literal["roster.district_upserted.v1"] = Field(default="roster.district_upserted.v1", description="Event type and major version.")
    name: str = Field(min_length=1, max_length=300, description="The district's name, e.g. 'New York City Department "
                      "of Education'.")
    source_id: str | None = Field(default=None, max_length=128, description="The district org's sourcedId in the "
                                  "district's files, when it came from one.")
