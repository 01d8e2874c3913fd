"""The topic registry: which topic carries which events, keyed by which entity.

Events of one entity that must stay in order share one topic keyed by that entity's id,
so a student's enrolment and withdrawal never overtake each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from contracts.cases import (
    TRIGGERS,
    CaseClosed,
    CaseNoteAdded,
    CaseOpened,
    CaseReopened,
    CaseTransferredIn,
    CaseTransferredOut,
    DictionaryChanged,
    TaskCompleted,
)
from contracts.caseload import AccessGranted, AccessRevoked, CaseloadMembershipAdded, CaseloadMembershipRemoved
from contracts.envelope import Event
from contracts.roster import (
    ClassRemoved,
    DistrictUpserted,
    ClassUpserted,
    EnrollmentAdded,
    EnrollmentRemoved,
    RosterImportCompleted,
    StaffDeactivated,
    StaffUpserted,
    StudentEnrolled,
    StudentUpdated,
    StudentWithdrawn,
)
from contracts.sis import SisStaffUpserted, SisStudentEnrolled, SisStudentWithdrawn
from contracts.transfers import (
    CaseDelivered,
    CaseHistoryExported,
    CaseHistoryUnavailable,
    TransferAccepted,
    TransferCancelled,
    TransferExpired,
    TransferLocked,
    TransferRejected,
    TransferRequested,
    TransfersActivationChanged,
)
from contracts.special_education import FirstAttendanceRecorded, MandateEnded, MandateRecorded


@dataclass(frozen=True)
class Topic:
    name: str
    key_field: str
    partitions: int
    events: tuple[type[Event], ...]
    description: str
    _by_type: dict[str, type[Event]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_type", {event_type_of(cls): cls for cls in self.events})

    @property
    def dead_letter(self) -> str:
        return f"{self.name}.DLT"

    def event_class(self, event_type: str) -> type[Event] | None:
        return self._by_type.get(event_type)


def event_type_of(cls: type[Event]) -> str:
    return cls.model_fields["event_type"].default


SIS_STUDENTS = Topic(
    name="sis.students.v1",
    key_field="source_id",
    partitions=6,
    events=(SisStudentEnrolled, SisStudentWithdrawn),
    description="Student facts from districts' SIS systems, keyed by the student's SIS id.",
)

SIS_STAFF = Topic(
    name="sis.staff.v1",
    key_field="source_id",
    partitions=3,
    events=(SisStaffUpserted,),
    description="Staff facts from districts' SIS systems, keyed by the staff member's SIS id.",
)

ROSTER_STUDENTS = Topic(
    name="roster.students.v1",
    key_field="student_id",
    partitions=6,
    events=(StudentEnrolled, StudentUpdated, StudentWithdrawn),
    description="The roster's students as Caseflow holds them, keyed by student id.",
)

ROSTER_STAFF = Topic(
    name="roster.staff.v1",
    key_field="staff_id",
    partitions=6,
    events=(StaffUpserted, StaffDeactivated),
    description="Staff accounts (teachers, aides, administrators), keyed by staff id.",
)

ROSTER_CLASSES = Topic(
    name="roster.classes.v1",
    key_field="class_id",
    partitions=6,
    events=(ClassUpserted, ClassRemoved),
    description="Official classes (homerooms) and course sections, keyed by class id.",
)

ROSTER_ENROLLMENTS = Topic(
    name="roster.enrollments.v1",
    key_field="person_id",
    partitions=12,
    events=(EnrollmentAdded, EnrollmentRemoved),
    description="Students and teachers in classes, keyed by the person (student_id or staff_id).",
)

ROSTER_IMPORTS = Topic(
    name="roster.imports.v1",
    key_field="district_id",
    partitions=3,
    events=(RosterImportCompleted,),
    description="Completed roster imports with their counts, keyed by district.",
)

CASELOAD_MEMBERSHIPS = Topic(
    name="caseload.memberships.v1",
    key_field="student_id",
    partitions=12,
    events=(CaseloadMembershipAdded, CaseloadMembershipRemoved),
    description="Students added to and removed from staff members' caseloads, with the reason; keyed by student.",
)

CASELOAD_ACCESS = Topic(
    name="caseload.access.v1",
    key_field="staff_email",
    partitions=6,
    events=(AccessGranted, AccessRevoked),
    description="Access levels granted to and revoked from staff members, per school or district-wide (seeds 000 "
                "and 003); keyed by the staff member's login email. Every service authorises from its own "
                "projection of this topic.",
)

SPED_MANDATES = Topic(
    name="sped.mandates.v1",
    key_field="student_source_id",
    partitions=6,
    events=(MandateRecorded, MandateEnded, FirstAttendanceRecorded),
    description="Students' service mandates and providers' first attendances from special education systems, "
                "keyed by the student's SIS id.",
)

CASE_TRIGGERS = Topic(
    name="cases.triggers.v1",
    key_field="student_source_id",
    partitions=12,
    events=TRIGGERS,
    description="What may open a case (forms, plans, tasks, meetings, plan reviews, files), from any system, "
                "keyed by the student's SIS id.",
)

CASES = Topic(
    name="cases.v1",
    key_field="student_id",
    partitions=12,
    events=(CaseOpened, CaseClosed, CaseReopened, TaskCompleted, CaseNoteAdded, CaseTransferredIn,
            CaseTransferredOut),
    description="Cases opened, closed and reopened, tasks completed, notes added, cases transferred in and out "
                "between districts; keyed by student.",
)

CASE_DICTIONARY = Topic(
    name="cases.dictionary.v1",
    key_field="district_id",
    partitions=3,
    events=(DictionaryChanged,),
    description="Changes to districts' Case Management Dictionaries, keyed by district.",
)

ROSTER_DISTRICTS = Topic(
    name="roster.districts.v1",
    key_field="district_id",
    partitions=3,
    events=(DistrictUpserted,),
    description="Districts as their rosters name them (the district org), keyed by district.",
)

TRANSFERS_ACTIVATION = Topic(
    name="transfers.districts.v1",
    key_field="district_id",
    partitions=3,
    events=(TransfersActivationChanged,),
    description="Each district's \"Activate Case Transfers Between Districts\" turned on or off (seed 003), keyed by "
                "district.",
)

TRANSFER_REQUESTS = Topic(
    name="transfers.requests.v1",
    key_field="request_id",
    partitions=6,
    events=(TransferRequested, TransferAccepted, TransferRejected, TransferCancelled, TransferLocked,
            TransferExpired),
    description="District transfer requests and how each ended (seed 003), keyed by request. Never the "
                "authentication code, never a student's name.",
)

CASE_HISTORIES = Topic(
    name="cases.histories.v1",
    key_field="request_id",
    partitions=6,
    events=(CaseHistoryExported, CaseHistoryUnavailable),
    description="Case histories the sending district's cases service exports for a transfer request, in parts, "
                "keyed by request; read by the transfers service only.",
)

TRANSFER_DELIVERIES = Topic(
    name="transfers.deliveries.v1",
    key_field="request_id",
    partitions=6,
    events=(CaseDelivered,),
    description="Accepted cases' histories, part by part, for the destination's cases service; keyed by request.",
)

TOPICS: dict[str, Topic] = {
    t.name: t
    for t in (SIS_STUDENTS, SIS_STAFF, ROSTER_STUDENTS, ROSTER_STAFF, ROSTER_CLASSES, ROSTER_ENROLLMENTS, ROSTER_IMPORTS,
              CASELOAD_MEMBERSHIPS, CASELOAD_ACCESS, SPED_MANDATES, CASE_TRIGGERS, CASES, CASE_DICTIONARY,
              ROSTER_DISTRICTS, TRANSFERS_ACTIVATION, TRANSFER_REQUESTS, CASE_HISTORIES, TRANSFER_DELIVERIES)
}

EVENT_TYPES: dict[str, type[Event]] = {event_type_of(cls): cls for t in TOPICS.values() for cls in t.events}
_TOPIC_OF: dict[str, Topic] = {event_type_of(cls): t for t in TOPICS.values() for cls in t.events}


def topic_for(event: Event | type[Event]) -> Topic:
    event_type = event.event_type if isinstance(event, Event) else event_type_of(event)
    try:
        return _TOPIC_OF[event_type]
    except KeyError:
        raise LookupError(f"no topic carries {event_type}") from None


def partition_key(event: Event) -> str:
    """The id of the entity whose events must stay in order: the Kafka message key."""
    return str(getattr(event, topic_for(event).key_field))
