"""Case management events (seed 004).

Triggers come from other systems (forms, MTSS, meetings, file storage) and from the cases
service's own API (tasks, meetings), on one topic keyed by the student's SIS id, so one
student's triggers stay in order. Each district's Case Management Dictionary decides which
kinds open a case.

The cases service publishes the life of each case, keyed by student: CaseOpened is the
contract outside subscribers rely on (v1 may only grow), then CaseClosed, CaseReopened,
TaskCompleted and CaseNoteAdded; and DictionaryChanged, keyed by district.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Literal
from uuid import UUID

from pydantic import Field

from contracts.envelope import Event, FromOutside, OutsideEmail, OutsideId

# The dictionary's entries, in the seed's order and words.
TriggerKind = Literal["submit_form", "create_plan", "assign_task", "schedule_meeting", "conduct_plan_review",
                      "submit_file"]


class _Trigger(FromOutside):
    student_source_id: OutsideId = Field(description="The student's id in the district's SIS.")
    actor_email: str | None = Field(default=None, max_length=320, description="Who did it, when known.")


class FormSubmitted(_Trigger):
    """A referral form was submitted for the student (dictionary: Submit a Form)."""

    event_type: Literal["cases.form_submitted.v1"] = Field(default="cases.form_submitted.v1", description="Event type and major version.")
    form_id: OutsideId = Field(description="The form response's id in the forms system.")
    form_name: str = Field(min_length=1, max_length=200, description="e.g. Counseling referral.")


class PlanCreated(_Trigger):
    """An MTSS plan was created for the student (dictionary: Create a Plan)."""

    event_type: Literal["cases.plan_created.v1"] = Field(default="cases.plan_created.v1", description="Event type and major version.")
    plan_id: OutsideId = Field(description="The plan's id in the MTSS system.")
    plan_name: str = Field(min_length=1, max_length=200, description="e.g. Tier 2 reading plan.")


class InterventionGroupMemberAdded(_Trigger):
    """The student joined an MTSS intervention group, which creates a plan for them: it
    counts as Create a Plan."""

    event_type: Literal["cases.intervention_group_member_added.v1"] = Field(default="cases.intervention_group_member_added.v1", description="Event type and major version.")
    group_id: OutsideId = Field(description="The intervention group's id.")
    group_name: str = Field(min_length=1, max_length=200, description="e.g. Tier 2 reading, period 3.")


class TaskAssigned(_Trigger):
    """A staff member was assigned a task for the student (dictionary: Assign a Task)."""

    event_type: Literal["cases.task_assigned.v1"] = Field(default="cases.task_assigned.v1", description="Event type and major version.")
    task_id: UUID = Field(description="The task's id.")
    title: str = Field(min_length=1, max_length=300, description="What is to be done.")
    assignee_email: OutsideEmail = Field(min_length=3, description="The staff member assigned.")
    due_date: date | None = Field(default=None, description="When it is due.")


class StudentMeetingScheduled(_Trigger):
    """The student was added to a scheduled Student Meeting (dictionary: Schedule a Meeting)."""

    event_type: Literal["cases.student_meeting_scheduled.v1"] = Field(default="cases.student_meeting_scheduled.v1", description="Event type and major version.")
    meeting_id: OutsideId = Field(description="The meeting's id.")
    title: str = Field(min_length=1, max_length=300, description="e.g. Attendance meeting.")
    scheduled_for: datetime = Field(description="When the meeting is.")


class PlanReviewConducted(_Trigger):
    """A review of the student's MTSS plan was conducted (dictionary: Conduct a Plan Review)."""

    event_type: Literal["cases.plan_review_conducted.v1"] = Field(default="cases.plan_review_conducted.v1", description="Event type and major version.")
    plan_id: OutsideId = Field(description="The plan reviewed.")
    review_id: OutsideId = Field(description="The review's id.")
    outcome: str | None = Field(default=None, max_length=300, description="e.g. continue, intensify, exit.")


class FileSubmitted(_Trigger):
    """A file was attached to the student's profile (dictionary: Submit a File)."""

    event_type: Literal["cases.file_submitted.v1"] = Field(default="cases.file_submitted.v1", description="Event type and major version.")
    file_id: OutsideId = Field(description="The file's id in file storage.")
    file_name: str = Field(min_length=1, max_length=300, description="The file's name.")


TRIGGERS: tuple[type[_Trigger], ...] = (FormSubmitted, PlanCreated, InterventionGroupMemberAdded, TaskAssigned,
                                        StudentMeetingScheduled, PlanReviewConducted, FileSubmitted)


# ---------------------------------------------------------------------------- what the cases service publishes


class CaseOpened(Event):
    """A case opened for a student because an enabled trigger arrived while none was open.
    The contract outside subscribers rely on: v1 may only grow."""

    event_type: Literal["cases.case_opened.v1"] = Field(default="cases.case_opened.v1", description="Event type and major version.")
    case_id: UUID = Field(description="The case's id.")
    case_number: str = Field(description="The case number people read and say, unique in the district (e.g. 26-000042).")
    school_id: str = Field(description="The building: the student's school (SIS org id) when the case opened.")
    student_id: UUID = Field(description="The person of concern (roster student id).")
    student_source_id: str = Field(description="The student's id in the district's SIS.")
    trigger_kind: TriggerKind = Field(description="The dictionary entry that opened it.")
    source_event_id: UUID = Field(description="The trigger event's id.")
    source_occurred_at: datetime = Field(description="When the trigger happened.")
    case_manager: str | None = Field(default=None, description="The case manager the case opened with (login "
                                     "email): the school's default case manager, where the district set one.")


class CaseClosed(Event):
    """A case was closed, with the reason."""

    event_type: Literal["cases.case_closed.v1"] = Field(default="cases.case_closed.v1", description="Event type and major version.")
    case_id: UUID = Field(description="The case's id.")
    case_number: str = Field(description="The case number.")
    student_id: UUID = Field(description="The person of concern.")
    reason: str = Field(description="Why it closed.")
    closed_by: str = Field(description="Who closed it (email).")


class CaseReopened(Event):
    """A closed case was reopened."""

    event_type: Literal["cases.case_reopened.v1"] = Field(default="cases.case_reopened.v1", description="Event type and major version.")
    case_id: UUID = Field(description="The case's id.")
    case_number: str = Field(description="The case number.")
    student_id: UUID = Field(description="The person of concern.")
    reopened_by: str = Field(description="Who reopened it (email).")


class TaskCompleted(Event):
    """A task for a student was marked complete."""

    event_type: Literal["cases.task_completed.v1"] = Field(default="cases.task_completed.v1", description="Event type and major version.")
    task_id: UUID = Field(description="The task's id.")
    case_id: UUID | None = Field(default=None, description="The case the task belongs to, if any.")
    student_id: UUID = Field(description="The student.")
    completed_by: str = Field(description="Who completed it (email).")


class CaseNoteAdded(Event):
    """A note was added to a case or one of its tasks. The note's text stays in the cases
    service (it may be sensitive); subscribers fetch it with a token."""

    event_type: Literal["cases.case_note_added.v1"] = Field(default="cases.case_note_added.v1", description="Event type and major version.")
    note_id: UUID = Field(description="The note's id.")
    case_id: UUID | None = Field(default=None, description="The case, if the student has one open.")
    task_id: UUID | None = Field(default=None, description="The task the note is on, if any.")
    student_id: UUID = Field(description="The student.")
    author_email: str = Field(description="Who wrote it.")


class CaseTransferredIn(Event):
    """A case arrived from another district through the transfer portal (seed 003), with its
    whole history, under a case number of this district. district_id: the destination."""

    event_type: Literal["cases.case_transferred_in.v1"] = Field(default="cases.case_transferred_in.v1", description="Event type and major version.")
    case_id: UUID = Field(description="The case's id here.")
    case_number: str = Field(description="Its case number in this district.")
    school_id: str | None = Field(default=None, description="The linked student's school here (SIS org id); null for "
                                  "a person made from the transfer's information.")
    student_id: UUID = Field(description="The person of concern here: a roster student, or the person made from the "
                             "transfer's information.")
    status: Literal["open", "closed"] = Field(description="As it stood in the sending district.")
    source_district_id: str = Field(description="The district it came from.")
    source_case_id: UUID = Field(description="Its id in the sending district.")
    request_id: UUID = Field(description="The transfer request.")
    accepted_by: str = Field(description="Who accepted it (login email).")


class CaseTransferredOut(Event):
    """A case went to another district through the transfer portal: here it is kept,
    read-only, never deleted. district_id: the sending district."""

    event_type: Literal["cases.case_transferred_out.v1"] = Field(default="cases.case_transferred_out.v1", description="Event type and major version.")
    case_id: UUID = Field(description="The case.")
    case_number: str = Field(description="The case number.")
    student_id: UUID = Field(description="The person of concern.")
    destination_district_id: str = Field(description="The district it went to.")
    request_id: UUID = Field(description="The transfer request.")


class DictionaryChanged(Event):
    """A district admin enabled or disabled a trigger in the Case Management Dictionary."""

    event_type: Literal["cases.dictionary_changed.v1"] = Field(default="cases.dictionary_changed.v1", description="Event type and major version.")
    trigger_kind: TriggerKind = Field(description="The dictionary entry.")
    enabled: bool = Field(description="Whether the trigger now opens cases.")
    changed_by: str = Field(description="Who changed it (email).")
