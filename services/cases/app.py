"""The cases service: opens cases per each district's trigger dictionary; tasks, notes,
timeline, dashboard and search; publishes CaseOpened and the rest of each case's life."""

from __future__ import annotations

from pathlib import Path

from contracts.cases import TRIGGERS
from contracts.roster import StudentEnrolled, StudentUpdated, StudentWithdrawn
from contracts.topics import (
    CASE_DICTIONARY,
    CASE_HISTORIES,
    CASE_TRIGGERS,
    CASES,
    ROSTER_STUDENTS,
    TRANSFER_DELIVERIES,
    TRANSFER_REQUESTS,
)
from contracts.transfers import CaseDelivered, TransferAccepted, TransferRequested
from services.cases import api, handlers
from services.kit import access
from services.kit.consumer import Subscription
from services.kit.runtime import ServiceDefinition


def definition() -> ServiceDefinition:
    return ServiceDefinition(
        name="cases",
        directory=Path(__file__).parent,
        description="Opens cases per each district's trigger dictionary; tasks, timeline, dashboard; publishes CaseOpened; "
                    "exports, transfers out and takes in cases through the District Transfer Portal.",
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
            Subscription(
                topic=TRANSFER_REQUESTS,
                consumer="caseflow.cases.transfer-requests",
                handlers={TransferRequested: handlers.on_transfer_requested,
                          TransferAccepted: handlers.on_transfer_accepted},
                description="District transfer requests (seed 003): the sending district's cases exported on "
                            "request, marked transferred out on acceptance.",
            ),
            Subscription(
                topic=TRANSFER_DELIVERIES,
                consumer="caseflow.cases.transfer-deliveries",
                handlers={CaseDelivered: handlers.on_deliveries},
                description="Accepted cases' histories, part by part: the destination's cases, transferred in.",
            ),
            access.subscription("cases"),
        ],
        routers=[api.router],
        publishes=[CASES, CASE_DICTIONARY, CASE_TRIGGERS, CASE_HISTORIES],
    )
