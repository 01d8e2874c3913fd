"""The caseload service: who may see and act on which students."""

from __future__ import annotations

from pathlib import Path

from contracts.roster import (
    ClassRemoved,
    ClassUpserted,
    EnrollmentAdded,
    EnrollmentRemoved,
    StaffDeactivated,
    StaffUpserted,
    StudentEnrolled,
    StudentUpdated,
    StudentWithdrawn,
)
from contracts.special_education import FirstAttendanceRecorded, MandateEnded, MandateRecorded
from contracts.topics import (
    CASELOAD_ACCESS,
    CASELOAD_MEMBERSHIPS,
    ROSTER_CLASSES,
    ROSTER_ENROLLMENTS,
    ROSTER_STAFF,
    ROSTER_STUDENTS,
    SPED_MANDATES,
)
from services.caseload import api, handlers, pages
from services.caseload.upkeep import (
    CaseloadOptions,
    bring_roster_defaults_in_line,
    drop_blank_owners,
    grant_configured_admins,
    keep_change_feed_bounded,
    keep_page_changes_bounded,
)
from services.kit.consumer import Subscription
from services.kit.runtime import ServiceDefinition


def definition() -> ServiceDefinition:
    return ServiceDefinition(
        name="caseload",
        directory=Path(__file__).parent,
        description="Keeps every staff member's caseload of students, live with the roster.",
        subscriptions=[
            Subscription(
                topic=ROSTER_STUDENTS,
                consumer="caseflow.caseload.roster-students",
                handlers={
                    StudentEnrolled: handlers.on_roster_students,
                    StudentUpdated: handlers.on_roster_students,
                    StudentWithdrawn: handlers.on_roster_students,
                },
                description="The roster's students, kept as the caseload service's own projection.",
            ),
            Subscription(
                topic=ROSTER_STAFF,
                consumer="caseflow.caseload.roster-staff",
                handlers={StaffUpserted: handlers.on_roster_staff, StaffDeactivated: handlers.on_roster_staff},
                description="Staff accounts: a teacher's caseload needs their login email.",
            ),
            Subscription(
                topic=ROSTER_CLASSES,
                consumer="caseflow.caseload.roster-classes",
                handlers={ClassUpserted: handlers.on_roster_classes, ClassRemoved: handlers.on_roster_classes},
                description="Official classes and course sections.",
            ),
            Subscription(
                topic=ROSTER_ENROLLMENTS,
                consumer="caseflow.caseload.roster-enrollments",
                handlers={EnrollmentAdded: handlers.on_roster_enrollments,
                          EnrollmentRemoved: handlers.on_roster_enrollments},
                description="Who is in which class: students and their teachers.",
            ),
            Subscription(
                topic=SPED_MANDATES,
                consumer="caseflow.caseload.sped-mandates",
                handlers={MandateRecorded: handlers.on_mandates_recorded, MandateEnded: handlers.on_mandates_ended,
                          FirstAttendanceRecorded: handlers.on_first_attendances},
                description="Service mandates and first attendances: who may have a student on a provider caseload.",
            ),
        ],
        routers=[api.router],
        publishes=[CASELOAD_MEMBERSHIPS, CASELOAD_ACCESS],
        background=[keep_change_feed_bounded, drop_blank_owners, grant_configured_admins, bring_roster_defaults_in_line,
                    keep_page_changes_bounded],
        http_state=lambda: {"caseload_pages": pages.PageCache(), "caseload_page_checks": pages.PageChecks()},
        options=CaseloadOptions.from_env(),
    )
