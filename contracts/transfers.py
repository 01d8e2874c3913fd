"""The District Transfer Portal's events (seed 003).

A district hands a student's case history to the next district. The transfers service owns
the requests (its state machine: pending -> accepted | rejected | cancelled | locked |
expired, nothing leaves a final state) and each district's "Activate Case Transfers Between
Districts"; the cases service owns the cases and exports their history on request. The
flow, every step an event, no service reading another's tables:

1. transfers.requests.v1 TransferRequested (district_id: the sending district): the cases
   service of the sending district exports each case, in parts, onto
   cases.histories.v1 (CaseHistoryExported), which the transfers service keeps.
2. The destination accepts with the authentication code (which never leaves the transfers
   service: only its argon2id hash is kept) and chooses, per case, an SIS student of its
   roster or the transfer's own information: TransferAccepted, and per case part a
   CaseDelivered on transfers.deliveries.v1 (district_id: the destination) from which the
   destination's cases service creates the case with its whole history, marked transferred
   in. The sending district's cases service marks its cases transferred out (read-only,
   never deleted) on TransferAccepted.
3. TransferRejected, TransferCancelled, TransferLocked (5 wrong codes), TransferExpired end a
   request otherwise.

What a request event carries is what the parties' notices need: district ids, the request,
the case count, the notes; never the code, never a student's name. Names travel only in the
case histories, to the service that keeps them until acceptance and then to the destination.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from contracts.envelope import DistrictId, Event

TransferStatus = Literal["pending", "accepted", "rejected", "cancelled", "locked", "expired"]


class TransfersActivationChanged(Event):
    """A district turned "Activate Case Transfers Between Districts" on or off (seed 003:
    default off; while off it neither sends nor receives). district_id: that district."""

    event_type: Literal["transfers.activation_changed.v1"] = Field(default="transfers.activation_changed.v1", description="Event type and major version.")
    active: bool = Field(description="On: the district sends and receives transfers, and is listed as a destination.")
    changed_by: str = Field(max_length=320, description="Who changed it (login email; Manage Cases).")


# ---------------------------------------------------------------------------- requests (transfers.requests.v1)


class TransferRequested(Event):
    """A district sends cases to another (one request per destination). district_id: the
    sending district. No code, no names: what the notices need."""

    event_type: Literal["transfers.transfer_requested.v1"] = Field(default="transfers.transfer_requested.v1", description="Event type and major version.")
    request_id: UUID = Field(description="The transfer request.")
    destination_district_id: DistrictId = Field(description="The district the cases go to.")
    case_ids: list[UUID] = Field(min_length=1, max_length=5000, description="The sending district's cases.")
    case_count: int = Field(ge=1, description="How many cases.")
    notes: str | None = Field(default=None, max_length=4000, description="The sender's notes to the destination.")
    requested_by: str = Field(max_length=320, description="Who sent it (login email).")
    expires_at: datetime = Field(description="When the authentication code, and so the request, expires.")


class AcceptedCase(BaseModel):
    """How the destination takes one case: linked to a student of its roster, or as a person
    made from the transfer's own information (linked later, if the student shows up)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    case_id: UUID = Field(description="The sending district's case.")
    student_id: UUID | None = Field(default=None, description="The destination's roster student (an SIS "
                                    "connection); null: use the transfer's information (no SIS connection).")


class TransferAccepted(Event):
    """The destination accepted with the code. district_id: the sending district."""

    event_type: Literal["transfers.transfer_accepted.v1"] = Field(default="transfers.transfer_accepted.v1", description="Event type and major version.")
    request_id: UUID = Field(description="The transfer request.")
    destination_district_id: DistrictId = Field(description="The district that accepted.")
    accepted_by: str = Field(max_length=320, description="Who accepted (login email in the destination).")
    cases: list[AcceptedCase] = Field(min_length=1, max_length=5000, description="Each case and how it was taken.")


class TransferRejected(Event):
    """The destination turned the request down. district_id: the sending district."""

    event_type: Literal["transfers.transfer_rejected.v1"] = Field(default="transfers.transfer_rejected.v1", description="Event type and major version.")
    request_id: UUID = Field(description="The transfer request.")
    destination_district_id: DistrictId = Field(description="The district that rejected.")
    rejected_by: str = Field(max_length=320, description="Who rejected (login email in the destination).")
    reason: str = Field(min_length=1, max_length=2000, description="Why, in the destination's words.")


class TransferCancelled(Event):
    """The sender withdrew a pending request. district_id: the sending district."""

    event_type: Literal["transfers.transfer_cancelled.v1"] = Field(default="transfers.transfer_cancelled.v1", description="Event type and major version.")
    request_id: UUID = Field(description="The transfer request.")
    destination_district_id: DistrictId = Field(description="The destination it was for.")
    cancelled_by: str = Field(max_length=320, description="Who cancelled (login email in the sending district).")


class TransferLocked(Event):
    """Too many wrong authentication codes: the request is locked for good (the sender sends
    again). district_id: the sending district."""

    event_type: Literal["transfers.transfer_locked.v1"] = Field(default="transfers.transfer_locked.v1", description="Event type and major version.")
    request_id: UUID = Field(description="The transfer request.")
    destination_district_id: DistrictId = Field(description="The destination it was for.")
    failed_attempts: int = Field(ge=1, description="Wrong codes entered.")


class TransferExpired(Event):
    """The code's window passed before acceptance. district_id: the sending district."""

    event_type: Literal["transfers.transfer_expired.v1"] = Field(default="transfers.transfer_expired.v1", description="Event type and major version.")
    request_id: UUID = Field(description="The transfer request.")
    destination_district_id: DistrictId = Field(description="The destination it was for.")


# ---------------------------------------------------------------------------- a case's history


class HistoryNote(BaseModel):
    """A note on the case, or on one of its tasks."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    note_id: UUID
    author: str = Field(max_length=320)
    body: str = Field(max_length=20000)
    written_at: datetime
    task_id: UUID | None = Field(default=None, description="The task the note is on, set only for a task's note "
                                 "that travels apart from its task (in CaseHistoryPart.notes, when the task's "
                                 "notes do not all fit in the task's part); null: a note on the case.")


class HistoryTask(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    task_id: UUID
    title: str = Field(max_length=300)
    assignee_email: str = Field(max_length=320)
    due_date: date | None = None
    status: Literal["open", "done"]
    assigned_by: str | None = Field(default=None, max_length=320)
    assigned_at: datetime
    completed_at: datetime | None = None
    completed_by: str | None = Field(default=None, max_length=320)
    notes: list[HistoryNote] = Field(default_factory=list, description="The task's notes, oldest first.")


class HistoryEntry(BaseModel):
    """One line of the student's timeline for the case: a trigger (form, plan, task,
    meeting, plan review, file), a status change, a note."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    at: datetime
    kind: str = Field(max_length=64, description="e.g. trigger:submit_form, case_opened, case_closed, note.")
    summary: str = Field(max_length=2000)
    actor: str | None = Field(default=None, max_length=320)
    ref_id: UUID | None = Field(default=None, description="What the entry is about in the sending district: the "
                                "note (kind note), the task (task_completed), the trigger event; the destination "
                                "maps note and task ids to its own, so a note's entry still shows the note.")


class TransferredStudent(BaseModel):
    """The person of concern as the sending district knows them (personal data: never
    logged; travels only to the transfers service and, on acceptance, the destination)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    source_id: str = Field(max_length=128, description="The student's id in the sending district's SIS.")
    given_name: str = Field(max_length=300)
    family_name: str = Field(max_length=300)
    birth_date: date | None = None
    grade: str | None = Field(default=None, max_length=16)
    school_id: str = Field(max_length=128, description="The sending district's school of the case.")


class CaseHeader(BaseModel):
    """The case itself, as it stands in the sending district."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    case_id: UUID
    case_number: str = Field(max_length=32)
    status: Literal["open", "closed"]
    school_id: str = Field(max_length=128)
    trigger_kind: str = Field(max_length=64)
    opened_at: datetime
    team_name: str | None = Field(default=None, max_length=120)
    team_leader: str | None = Field(default=None, max_length=320)
    case_manager: str | None = Field(default=None, max_length=320)
    closed_at: datetime | None = None
    closed_by: str | None = Field(default=None, max_length=320)
    close_reason: str | None = Field(default=None, max_length=2000)


class CaseHistoryPart(BaseModel):
    """One part of a case's whole history (a long history comes in several, each with the
    case and the student, so each part can be applied on its own, once). Parts are numbered
    1..parts; timeline entries, tasks and notes are each in exactly one part."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    case: CaseHeader
    student: TransferredStudent
    part: int = Field(ge=1)
    parts: int = Field(ge=1)
    timeline: list[HistoryEntry] = Field(default_factory=list, description="Oldest first.")
    tasks: list[HistoryTask] = Field(default_factory=list)
    notes: list[HistoryNote] = Field(default_factory=list, description="Notes on the case (not on a task).")


class CaseHistoryExported(Event):
    """The sending district's cases service exported one part of a case's history for a
    transfer request (cases.histories.v1, keyed by request). district_id: the
    sending district."""

    event_type: Literal["cases.case_history_exported.v1"] = Field(default="cases.case_history_exported.v1", description="Event type and major version.")
    request_id: UUID = Field(description="The transfer request it was exported for.")
    history: CaseHistoryPart = Field(description="The part.")


class CaseHistoryUnavailable(Event):
    """The sending district's cases service could not export a case for a request (not a
    case of the district, or already transferred out): the request cannot be accepted as
    sent. district_id: the sending district."""

    event_type: Literal["cases.case_history_unavailable.v1"] = Field(default="cases.case_history_unavailable.v1", description="Event type and major version.")
    request_id: UUID = Field(description="The transfer request.")
    case_id: UUID = Field(description="The case.")
    reason: str = Field(max_length=300, description="Why, in words.")


class CaseDelivered(Event):
    """An accepted case's history, part by part, for the destination's cases service
    (transfers.deliveries.v1, keyed by request). district_id: the destination district."""

    event_type: Literal["transfers.case_delivered.v1"] = Field(default="transfers.case_delivered.v1", description="Event type and major version.")
    request_id: UUID = Field(description="The transfer request.")
    source_district_id: DistrictId = Field(description="The district the case came from.")
    accepted_by: str = Field(max_length=320, description="Who accepted it.")
    accepted_at: datetime = Field(description="When.")
    student_id: UUID | None = Field(default=None, description="The destination's roster student it is linked to; "
                                    "null: a person made from the transfer's information.")
    history: CaseHistoryPart = Field(description="The part.")
