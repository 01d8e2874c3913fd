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


# ---------------------------------------------------------------------------- access levels

AccessLevel = Literal["caseload_viewer", "caseload_editor", "manage_cases", "provider", "supervisor", "school_admin",
                      "district_admin"]
# Why a staff member holds an access level: an admin granted it (seed 000: "can be
# assigned an access level"), the district's default for their roster role, or the
# service's configuration (a district's first district admin).
AccessBasis = Literal["granted", "roster_default", "configuration"]


class AccessGranted(Event):
    """A staff member now holds an access level at a school, or district-wide (school_id
    null). One grant is one level at one place on one basis: the same level at the same
    school may be held on two bases (the roster default and an admin's grant), and stays
    held until both are gone."""

    event_type: Literal["caseload.access_granted.v1"] = Field(default="caseload.access_granted.v1", description="Event type and major version.")
    grant_id: UUID = Field(description="The grant: the same for the same staff member, level, place and basis (a "
                           "level granted again after a revoke has the same id).")
    staff_email: str = Field(min_length=1, max_length=320, description="The staff member's login email, in lower "
                             "case: who a signed token names.")
    level: AccessLevel = Field(description="The access level (seeds 000 and 003): caseload_viewer, caseload_editor, "
                               "manage_cases, provider, supervisor, school_admin or district_admin.")
    school_id: str | None = Field(max_length=128, description="Where the level holds (SIS org id); null: the whole "
                                  "district.")
    basis: AccessBasis = Field(description="granted (by an admin), roster_default (the district's default for the "
                               "staff member's roster role) or configuration.")
    granted_by: str | None = Field(default=None, description="The admin who granted it (login email); null for a "
                                   "roster default or configuration.")


class AccessRevoked(Event):
    """A grant no longer holds (revoked by an admin; for a roster default: the staff member
    left the roster, lost their email or school, or the district changed its default)."""

    event_type: Literal["caseload.access_revoked.v1"] = Field(default="caseload.access_revoked.v1", description="Event type and major version.")
    grant_id: UUID = Field(description="The grant that ended (see AccessGranted).")
    staff_email: str = Field(min_length=1, max_length=320, description="The staff member's login email, in lower case.")
    level: AccessLevel = Field(description="The access level that ended.")
    school_id: str | None = Field(max_length=128, description="Where it held; null: the whole district.")
    basis: AccessBasis = Field(description="The basis it was held on.")
    revoked_by: str | None = Field(default=None, description="The admin who revoked it; null when the roster or "
                                   "configuration ended it.")
    reason: str = Field(max_length=300, description="Why, in words: 'revoked by an admin', 'left the roster', ...")
