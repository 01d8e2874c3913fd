"""The caseload service: who may see and act on which students."""

from __future__ import annotations

from pathlib import Path

from contracts.roster import StudentEnrolled, StudentUpdated
from contracts.topics import ROSTER_STUDENTS
from services.caseload import api, handlers
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
                },
                description="The roster's students, kept as the caseload service's own projection.",
            )
        ],
        routers=[api.router],
    )
