"""The roster service: district enrolment facts in, the district's roster and its exact
changes out."""

from __future__ import annotations

from pathlib import Path

from contracts.sis import SisStaffUpserted, SisStudentEnrolled, SisStudentWithdrawn
from contracts.topics import (
    ROSTER_CLASSES,
    ROSTER_DISTRICTS,
    ROSTER_ENROLLMENTS,
    ROSTER_IMPORTS,
    ROSTER_STAFF,
    ROSTER_STUDENTS,
    SIS_STAFF,
    SIS_STUDENTS,
)
from services.kit import access
from services.kit.consumer import Subscription
from services.kit.runtime import ServiceDefinition
from services.roster import api, class_members, dropfolder, handlers
from services.roster.importer import ImportOptions, recover_on_start


def definition() -> ServiceDefinition:
    return ServiceDefinition(
        name="roster",
        directory=Path(__file__).parent,
        description="Turns district enrolment files and SIS events into students, classes, staff and enrolments, "
        "and publishes each exact change.",
        subscriptions=[
            Subscription(
                topic=SIS_STUDENTS,
                consumer="caseflow.roster.sis-students",
                handlers={
                    SisStudentEnrolled: handlers.on_sis_students_enrolled,
                    SisStudentWithdrawn: handlers.on_sis_students_withdrawn,
                },
                description="Student facts from districts' SIS systems.",
            ),
            Subscription(
                topic=SIS_STAFF,
                consumer="caseflow.roster.sis-staff",
                handlers={SisStaffUpserted: handlers.on_sis_staff_upserted},
                description="Staff facts from districts' SIS systems.",
            ),
            access.subscription("roster"),
        ],
        routers=[api.router],
        publishes=[ROSTER_STUDENTS, ROSTER_STAFF, ROSTER_CLASSES, ROSTER_ENROLLMENTS, ROSTER_IMPORTS, ROSTER_DISTRICTS],
        background=[recover_on_start, dropfolder.requeue_on_start, dropfolder.watch, class_members.keep_class_members_current],
        options=ImportOptions.from_env(),
    )
