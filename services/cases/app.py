"""The cases service: opens cases per each district's trigger dictionary; tasks, notes,
timeline, dashboard and search; publishes CaseOpened and the rest of each case's life."""

from __future__ import annotations

from pathlib import Path

from contracts.cases import TRIGGERS
from contracts.roster import StudentEnrolled, StudentUpdated, StudentWithdrawn
from contracts.topics import CASE_DICTIONARY, CASE_TRIGGERS, CASES, ROSTER_STUDENTS
from services.cases import api, handlers
from services.kit import access
from services.kit.consumer import Subscription
from services.kit.runtime import ServiceDefinition


def definition() -> ServiceDefinition:
    return ServiceDefinition(
        name="cases",
        directory=Path(__file__).parent,
        description="Opens cases per each district's trigger dictionary; tasks, timeline, dashboard; publishes CaseOpened.",
        subscriptions=[
            Subscription(
                topic=ROSTER_STUDENTS,
                consumer="caseflow.cases.roster-students",
                handlers={StudentEnrolled: handlers.on_roster_students, StudentUpdated: handlers.on_roster_students,
                          StudentWithdrawn: handlers.on_roster_students},
                description="The roster's students, kept as the cases service's own projection.",
            ),
            Subscription(
                topic=CASE_TRIGGERS,
                consumer="caseflow.cases.triggers",
                handlers={cls: handlers.on_triggers for cls in TRIGGERS},
                description="Forms, plans, tasks, meetings, plan reviews and files that may open a case.",
            ),
            access.subscription("cases"),
        ],
        routers=[api.router],
        publishes=[CASES, CASE_DICTIONARY, CASE_TRIGGERS],
    )
