"""Events the caseload service publishes: who has which student on their caseload, and why."""

from __future__ import annotations

from typing import Literal
from uuid import UUID

from pydantic import Field

from contracts.envelope import Event

Reason = Literal["homeroom", "section", "point_person", "support", "provider"]


class CaseloadMembershipAdded(Event):
    """A student is now on a staff member's caseload, for the reason given."""

    event_type: Literal["caseload.membership_added.v1"] = Field(default="caseload.membership_added.v1", description="Event type and major version.")
    student_id: UUID = Field(description="The student (roster student id).")
    owner_email: str = Field(description="The caseload's owner: the staff member's login email.")
    reason: Reason = Field(description="Why: homeroom, section, point_person, support or provider.")
    detail: str = Field(description="In words, e.g. 'homeroom 3-401', 'section ALG1-02'.")
    source_ref: str = Field(description="What the reason refers to: a class id, a point person type, a support id...")
    school_id: str = Field(description="The school the membership belongs to (SIS org id): the class's school for "
                           "homeroom and section memberships (a dual-enrolled student's section may be at another of "
                           "their schools); the student's home school for point person, support and provider ones.")


class CaseloadMembershipRemoved(Event):
    """A student left a staff member's caseload for the reason given (the other reasons
    that keep them there, if any, stand)."""

    event_type: Literal["caseload.membership_removed.v1"] = Field(default="caseload.membership_removed.v1", description="Event type and major version.")
    student_id: UUID = Field(description="The student (roster student id).")
    owner_email: str = Field(description="The caseload's owner: the staff member's login email.")
    reason: Reason = Field(description="The reason that no longer holds.")
    detail: str = Field(description="In words, e.g. 'homeroom 3-401'.")
    source_ref: str = Field(description="What the reason referred to.")
    school_id: str = Field(description="The membership's school as it was added (see CaseloadMembershipAdded).")
