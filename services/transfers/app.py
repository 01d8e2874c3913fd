"""The transfers service: the District Transfer Portal (seed 003). Each district's
"Activate Case Transfers Between Districts"; transfer requests of one or many cases to one
or more districts, each opened with its authentication code; accepting delivers every part
of every case's history to the destination's cases service; reject, cancel, lock, expire.

Its own copies of other services' facts: district names (roster.districts.v1), the
roster's students for link suggestions (roster.students.v1), each case's district, school,
number and status (cases.v1), the exported case histories (cases.histories.v1) and who
holds Manage Cases (caseload.access.v1)."""

from __future__ import annotations

from pathlib import Path

from contracts.cases import CaseClosed, CaseOpened, CaseReopened, CaseTransferredIn, CaseTransferredOut
from contracts.roster import DistrictUpserted, StudentEnrolled, StudentUpdated, StudentWithdrawn
from contracts.topics import (
    CASE_HISTORIES,
    CASES,
    ROSTER_DISTRICTS,
    ROSTER_STUDENTS,
    TRANSFER_DELIVERIES,
    TRANSFER_REQUESTS,
    TRANSFERS_ACTIVATION,
)
from contracts.transfers import CaseHistoryExported, CaseHistoryUnavailable
from services.kit import access
from services.kit.consumer import Subscription
from services.kit.runtime import ServiceDefinition
from services.transfers import api, handlers
from services.transfers.expiry import expire_transfer_requests
from services.transfers.options import TransfersOptions


def definition() -> ServiceDefinition:
    return ServiceDefinition(
        name="transfers",
        directory=Path(__file__).parent,
        description="The District Transfer Portal: districts send cases, with their whole history, to each other.",
        subscriptions=[
            Subscription(
                topic=ROSTER_DISTRICTS,
                consumer="caseflow.transfers.roster-districts",
                handlers={DistrictUpserted: handlers.on_districts},
                description="District names: destinations are listed by name.",
            ),
            Subscription(
                topic=ROSTER_STUDENTS,
                consumer="caseflow.transfers.roster-students",
                handlers={StudentEnrolled: handlers.on_roster_students, StudentUpdated: handlers.on_roster_students,
                          StudentWithdrawn: handlers.on_roster_students},
                description="The roster's students: whom to suggest when a destination links an incoming case.",
            ),
            Subscription(
                topic=CASES,
                consumer="caseflow.transfers.cases",
                handlers={CaseOpened: handlers.on_cases_opened, CaseTransferredIn: handlers.on_cases_opened,
                          CaseClosed: handlers.on_case_status, CaseReopened: handlers.on_case_status,
                          CaseTransferredOut: handlers.on_cases_transferred_out},
                description="Each case's district, school, number and status: what a transfer is checked against.",
            ),
            Subscription(
                topic=CASE_HISTORIES,
                consumer="caseflow.transfers.case-histories",
                handlers={CaseHistoryExported: handlers.on_case_histories,
                          CaseHistoryUnavailable: handlers.on_case_histories},
                description="Case histories exported for transfer requests, kept until each request ends.",
            ),
            access.subscription("transfers"),
        ],
        routers=[api.router],
        publishes=[TRANSFERS_ACTIVATION, TRANSFER_REQUESTS, TRANSFER_DELIVERIES],
        background=[expire_transfer_requests],
        options=TransfersOptions.from_env(),
    )
