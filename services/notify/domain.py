"""Who gets which notice, what it says, and how its sending goes: the rules, without I/O.

Who gets what (seeds 003 and 004):
- TransferRequested: the destination district's Manage Cases users, a pending incoming
  transfer (the sending district's name, how many cases, the sender's notes, how to
  accept); the sending district's Manage Cases users, a pending outgoing transfer.
- TransferAccepted / Rejected / Cancelled / Locked / Expired: both districts' Manage Cases
  users, how the request ended.
- TaskAssigned: the assignee.
- CaseOpened: its case manager, when the case opened with one.

Manage Cases users of a district: the login emails holding `manage_cases` there (at any
school, or district-wide) in this service's copy of caseload.access.v1. `district_admin`
alone does not count: the seed says "users with Manage Cases permissions". A staff member
the roster says has left (every record of them deactivated) gets nothing; one the roster
does not know (named by configuration, or not imported yet) still does.

What a notice says: case numbers, counts, district names, staff emails and links; never
a student's name, birth date or SIS id, never a case or task note, never the transfer's
authentication code (FERPA practice: email is not a secure channel). The one free text
sent is the transfer's notes, which the seed sends to the destination with the request.
A task's title and a rejection's reason are free text written about a student: they stay
behind the link.

Transfer alerts to Manage Cases users are required; task and case notices can be turned
off by each staff member.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from contracts.cases import CaseOpened, TaskAssigned
from contracts.transfers import (
    TransferAccepted,
    TransferCancelled,
    TransferExpired,
    TransferLocked,
    TransferRejected,
    TransferRequested,
)

# ---------------------------------------------------------------------------- the notices


@dataclass(frozen=True)
class Notice:
    label: str
    required: bool


NOTICES: dict[str, Notice] = {
    "transfer_incoming": Notice("A transfer of cases to your district awaits acceptance", required=True),
    "transfer_outgoing": Notice("Cases are pending transfer out of your district", required=True),
    "transfer_ended": Notice("A transfer request of your district was accepted, rejected, cancelled, locked or "
                             "expired", required=True),
    "task_assigned": Notice("A task was assigned to you", required=False),
    "case_opened": Notice("A case opened with you as its case manager", required=False),
}
OPTIONAL_NOTICES = tuple(name for name, n in NOTICES.items() if not n.required)

# The access level whose holders get a district's transfer alerts (seed 003: "users with
# Manage Cases permissions"). district_admin alone is not it.
MANAGE_CASES_LEVELS = ("manage_cases",)

DEFAULT_SENDER_NAME = "Caseflow"

TRANSFER_ENDINGS = {
    TransferAccepted: "accepted",
    TransferRejected: "rejected",
    TransferCancelled: "cancelled",
    TransferLocked: "locked",
    TransferExpired: "expired",
}
TRANSFER_EVENTS = (TransferRequested, *TRANSFER_ENDINGS)

TRIGGER_LABELS = {
    "submit_form": "Submit a Form",
    "create_plan": "Create a Plan",
    "assign_task": "Assign a Task",
    "schedule_meeting": "Schedule a Student Meeting",
    "conduct_plan_review": "Conduct a Plan Review",
    "submit_file": "Submit a File",
}


class Refused(Exception):
    """A person's change breaks a rule: `rule` names it, `message` says it in words."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(message)
        self.rule = rule
        self.message = message


def login_email(text: str | None) -> str | None:
    """An email as a login: trimmed, lower case; blank is none."""
    if text is None or not text.strip():
        return None
    return text.strip().lower()


# ---------------------------------------------------------------------------- who gets what


@dataclass(frozen=True)
class Recipient:
    email: str
    district_id: str  # the recipient's district: its sender name, its admins' delivery log
    notice: str


@dataclass(frozen=True)
class Holder:
    """A login email holding one of MANAGE_CASES_LEVELS in a district, and what the roster
    says of them: True on the roster, False left it, None not known to it."""

    email: str
    on_roster: bool | None


def manage_cases_users(holders: Iterable[Holder]) -> list[str]:
    """The district's Manage Cases users: every holder but those who left the roster."""
    return sorted({h.email for h in holders if h.on_roster is not False})


def districts_to_ask(event: Any) -> tuple[str, ...]:
    """Whose Manage Cases users an event's notices go to (none: it names its recipient)."""
    if isinstance(event, TRANSFER_EVENTS):
        return (event.destination_district_id, event.district_id)
    return ()


def recipients_for(event: Any, manage_cases: Mapping[str, Iterable[str]],
                   reachable: Mapping[tuple[str, str], bool] | None = None) -> list[Recipient]:
    """Who gets a notice of this event, and which. `manage_cases`: each district's Manage
    Cases users (districts_to_ask). `reachable`: for an event naming its recipient, whether
    the roster still has them ((district, email) -> False when they left; absent: unknown,
    reached). One notice per recipient and event: someone on both sides of a transfer gets
    the destination's."""
    reachable = reachable or {}
    out: list[Recipient] = []
    if isinstance(event, TransferRequested):
        out += [Recipient(e, event.destination_district_id, "transfer_incoming")
                for e in manage_cases.get(event.destination_district_id, ())]
        out += [Recipient(e, event.district_id, "transfer_outgoing") for e in manage_cases.get(event.district_id, ())]
    elif isinstance(event, tuple(TRANSFER_ENDINGS)):
        for district in (event.destination_district_id, event.district_id):
            out += [Recipient(e, district, "transfer_ended") for e in manage_cases.get(district, ())]
    elif isinstance(event, TaskAssigned):
        email = login_email(event.assignee_email)
        if email and reachable.get((event.district_id, email), True):
            out.append(Recipient(email, event.district_id, "task_assigned"))
    elif isinstance(event, CaseOpened):
        email = login_email(event.case_manager)
        if email and reachable.get((event.district_id, email), True):
            out.append(Recipient(email, event.district_id, "case_opened"))
    seen: set[str] = set()
    unique = []
    for r in out:
        if r.email not in seen:
            seen.add(r.email)
            unique.append(r)
    return unique


def named_recipient(event: Any) -> tuple[str, str] | None:
    """(district, email) of the one person an event names as its recipient, if any."""
    if isinstance(event, TaskAssigned):
        email = login_email(event.assignee_email)
    elif isinstance(event, CaseOpened):
        email = login_email(event.case_manager)
    else:
        return None
    return (event.district_id, email) if email else None


def wanted(recipients: Iterable[Recipient], turned_off: set[tuple[str, str, str]]) -> list[Recipient]:
    """The recipients who want their notice: a required notice always; another unless the
    staff member turned it off ((district, email, notice) in turned_off)."""
    return [r for r in recipients
            if NOTICES[r.notice].required or (r.district_id, r.email, r.notice) not in turned_off]


# ---------------------------------------------------------------------------- what it says


@dataclass(frozen=True)
class Content:
    """What every recipient of one kind of notice of one event reads: the subject, and the
    fields the templates fill in."""

    subject: str
    context: dict[str, Any]


def _cases(n: int | None) -> str:
    return "" if n is None else f"{n} case" if n == 1 else f"{n} cases"


def link(app_url: str, path: str) -> str:
    return app_url.rstrip("/") + path


def contents_for(event: Any, notices: Iterable[str], district_names: Mapping[str, str],
                 staff_names: Mapping[tuple[str, str], str] | None = None) -> dict[str, Content]:
    """The content of each kind of notice this event gives (only those asked for): the
    same for every recipient of that kind. Staff who acted are named as the roster names
    them (`staff_names`: (district, email) -> name; see actors). Links are kept as paths
    (`path`): the sender puts the web app's address before them."""
    names = staff_names or {}
    def name(district_id: str) -> str:
        return district_names.get(district_id) or district_id

    out: dict[str, Content] = {}
    for notice in set(notices):
        if isinstance(event, TRANSFER_EVENTS):
            sending, destination = name(event.district_id), name(event.destination_district_id)
            base = {"request_id": str(event.request_id), "sending_district": sending,
                    "destination_district": destination,
                    "path": f"/transfers/{event.request_id}"}
            if notice == "transfer_incoming":
                out[notice] = Content(
                    f"Transfer request: {_cases(event.case_count)} from {sending} await your acceptance",
                    {**base, "case_count": event.case_count, "notes": event.notes,
                     "requested_by": _who(event.district_id, event.requested_by, names),
                     "expires_at": _when(event.expires_at)})
            elif notice == "transfer_outgoing":
                out[notice] = Content(
                    f"Transfer pending: {_cases(event.case_count)} to {destination}",
                    {**base, "case_count": event.case_count,
                     "requested_by": _who(event.district_id, event.requested_by, names),
                     "expires_at": _when(event.expires_at)})
            elif notice == "transfer_ended":
                outcome = TRANSFER_ENDINGS[type(event)]
                count = len(event.cases) if isinstance(event, TransferAccepted) else None
                by = next((_who(d, e, names) for d, e in actors(event)), None)
                what = f"{_cases(count)} from {sending} to {destination}" if count else \
                    f"from {sending} to {destination}"
                out[notice] = Content(
                    f"Transfer {outcome}: {what}",
                    {**base, "outcome": outcome, "case_count": count, "by": by,
                     "failed_attempts": getattr(event, "failed_attempts", None)})
        elif isinstance(event, TaskAssigned) and notice == "task_assigned":
            due = event.due_date.isoformat() if event.due_date else None
            out[notice] = Content(
                "A task was assigned to you" + (f" (due {due})" if due else ""),
                {"task_id": str(event.task_id), "due_date": due, "assigned_by": _who(event.district_id, event.actor_email, names),
                 "path": f"/tasks/{event.task_id}"})
        elif isinstance(event, CaseOpened) and notice == "case_opened":
            out[notice] = Content(
                f"Case {event.case_number} opened: you are its case manager",
                {"case_id": str(event.case_id), "case_number": event.case_number, "school_id": event.school_id,
                 "trigger": TRIGGER_LABELS.get(event.trigger_kind, event.trigger_kind),
                 "path": f"/cases/{event.case_id}"})
    return out


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def staff_name(given_name: str | None, family_name: str | None) -> str | None:
    """A staff member as the roster names them, or None."""
    name = " ".join(p.strip() for p in (given_name, family_name) if p and p.strip())
    return name or None


def actors(event: Any) -> list[tuple[str, str]]:
    """(district, email) of the staff members an event says acted (who requested, accepted,
    rejected, cancelled, assigned): the notices name them as the roster does."""
    found = []
    if isinstance(event, TransferRequested | TransferCancelled):
        found.append((event.district_id, getattr(event, "requested_by", None) or getattr(event, "cancelled_by", None)))
    elif isinstance(event, TransferAccepted | TransferRejected):
        found.append((event.destination_district_id, getattr(event, "accepted_by", None)
                      or getattr(event, "rejected_by", None)))
    elif isinstance(event, TaskAssigned):
        found.append((event.district_id, event.actor_email))
    return [(d, e) for d, email in found if (e := login_email(email))]


def _who(district_id: str, email: str | None, names: Mapping[tuple[str, str], str]) -> str | None:
    """"Luis Rivera (rivera@d.org)", or the email alone when the roster does not name them."""
    if not email:
        return None
    name = names.get((district_id, login_email(email) or ""))
    return f"{name} ({email})" if name else email


# ---------------------------------------------------------------------------- sending


def message_id(event_id: UUID | str, recipient: str) -> str:
    """The Message-ID of the notice of one event to one recipient: the same every time it
    is sent, so a resend after a crash between the server's acceptance and the delivery's
    commit is recognisable downstream."""
    digest = hashlib.sha256(f"{event_id}|{recipient}".encode()).hexdigest()[:32]
    return f"<{digest}@caseflow.notify>"


SENT, RETRY, FAILED = "sent", "retry", "failed"


def outcome_of(code: int | None) -> str:
    """What an SMTP reply code means for the delivery: 2xx sent; 5xx failed for good (not
    retried); 4xx, and no reply at all (the connection was lost or timed out), retried."""
    if code is not None and 200 <= code < 300:
        return SENT
    if code is not None and 500 <= code < 600:
        return FAILED
    return RETRY


@dataclass(frozen=True)
class RetryPolicy:
    first_seconds: float = 60.0
    max_seconds: float = 3600.0
    max_attempts: int = 10


def after_attempt(outcome: str, attempts: int, now: datetime, policy: RetryPolicy) -> tuple[str, datetime | None]:
    """The delivery's status after its `attempts`-th attempt ended with `outcome`, and when
    to try next (None: never). Transient failures wait first_seconds, doubling up to
    max_seconds; after max_attempts the delivery has failed."""
    if outcome == SENT:
        return "sent", None
    if outcome == FAILED or attempts >= policy.max_attempts:
        return "failed", None
    delay = min(policy.first_seconds * 2 ** (attempts - 1), policy.max_seconds)
    return "pending", now + timedelta(seconds=delay)


# ---------------------------------------------------------------------------- what people change


def preference_changes(wanted_notices: Mapping[str, bool | None]) -> dict[str, bool]:
    """The changes a staff member asks for, checked: a required notice cannot be turned off
    (`transfer_alerts_required`); asking for one on changes nothing."""
    changes = {}
    for notice, enabled in wanted_notices.items():
        if enabled is None:
            continue
        if notice not in NOTICES:
            raise Refused("unknown_notice", f"there is no notice named {notice}")
        if NOTICES[notice].required:
            if not enabled:
                raise Refused("transfer_alerts_required",
                              f"{notice} cannot be turned off: transfer alerts go to every Manage Cases user of the "
                              "district (seed 003); only task_assigned and case_opened can be")
            continue
        changes[notice] = enabled
    return changes


def preferences(turned_off: Iterable[str]) -> list[dict[str, Any]]:
    """Each notice, whether the staff member gets it and whether they may turn it off."""
    off = set(turned_off)
    return [{"notice": name, "label": n.label, "required": n.required, "enabled": n.required or name not in off}
            for name, n in NOTICES.items()]


SENDER_NAME_LONGEST = 100


def sender_name_problem(name: str) -> str | None:
    """Why a district's sender name cannot be the display name of its notices' From, or None."""
    if not name.strip():
        return "is blank"
    if len(name) > SENDER_NAME_LONGEST:
        return f"is longer than {SENDER_NAME_LONGEST} characters"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "holds a control character (a line break or a tab), which a mail header cannot carry"
    return None
