"""The notify service: emails the parties of a transfer request, a task's assignee and a
case's case manager, exactly once per (event, recipient), through SMTP, with a delivery
log. Its own projection (staff, districts, access levels) from the roster's and the
caseload service's events; the sender is a background job apart from the consumers."""

from __future__ import annotations

from pathlib import Path

from contracts.cases import CaseOpened, TaskAssigned
from contracts.roster import DistrictUpserted, StaffDeactivated, StaffUpserted
from contracts.topics import CASE_TRIGGERS, CASES, ROSTER_DISTRICTS, ROSTER_STAFF, TRANSFER_REQUESTS
from services.kit import access
from services.kit.consumer import Subscription
from services.kit.runtime import ServiceDefinition
from services.notify import api, domain, handlers, sender
from services.notify.mail import NotifyOptions


def definition() -> ServiceDefinition:
    return ServiceDefinition(
        name="notify",
        directory=Path(__file__).parent,
        description="Emails the parties of a transfer request, a task's assignee and a case's case manager, once per "
                    "event and recipient, with a delivery log.",
        subscriptions=[
            Subscription(
                topic=ROSTER_STAFF,
                consumer="caseflow.notify.roster-staff",
                handlers={StaffUpserted: handlers.on_staff, StaffDeactivated: handlers.on_staff},
                description="Staff names and login emails, and who left the roster (notify's own copy).",
            ),
            Subscription(
                topic=ROSTER_DISTRICTS,
                consumer="caseflow.notify.roster-districts",
                handlers={DistrictUpserted: handlers.on_districts},
                description="Districts' names, for the transfer notices.",
            ),
            access.subscription("notify"),
            Subscription(
                topic=TRANSFER_REQUESTS,
                consumer="caseflow.notify.transfer-requests",
                handlers={cls: handlers.notify_parties for cls in domain.TRANSFER_EVENTS},
                description="Transfer requests and how each ended: the Manage Cases users of both districts.",
            ),
            Subscription(
                topic=CASE_TRIGGERS,
                consumer="caseflow.notify.case-triggers",
                handlers={TaskAssigned: handlers.notify_parties},
                description="Tasks assigned: the assignee (the other triggers are skipped).",
            ),
            Subscription(
                topic=CASES,
                consumer="caseflow.notify.cases",
                handlers={CaseOpened: handlers.notify_parties},
                description="Cases opened with a case manager: the case manager.",
            ),
        ],
        routers=[api.router],
        background=[sender.send_deliveries],
        options=NotifyOptions.from_env(),
    )
