"""The District Transfer Portal's rules (seed 003, issue 12), without I/O.

- **Activation.** Each district has "Activate Case Transfers Between Districts", off until
  a Manage Cases user turns it on (the seed: "leave the toggle OFF when not actively sending
  or receiving"). While it is off the district neither sends nor receives ("Transfers
  cannot occur when this is toggled off"); a destination is listed by name only while its
  toggle is on ("In order for the destination district to appear in District Name(s), they
  must have Case Transfer Requests toggled ON"); a pending request is accepted only while
  both sides are on.
- **Who.** Every action needs Manage Cases in the acting district ("User must have Manage
  Cases Permissions"); sending a case needs it at the case's school too. A district sees
  its own outgoing requests and those addressed to it, nothing else (404).
- **The request's life.** pending -> accepted | rejected | cancelled | locked | expired;
  nothing leaves a final state (`TRANSITIONS`).
- **The authentication code.** Shown once to the sender ("the sending district will be able
  to view an Authentication Code. This code MUST be shared with the destination district
  before they are able to access the case(s)"); `CODE_LENGTH` symbols of `CODE_ALPHABET`
  (no look-alikes), at least `MIN_CODE_BITS` bits; `MAX_WRONG_CODES` wrong tries lock the
  request; it expires with the request.
- **Accepting.** Per case, "Link to existing student (sis connection)" (a student of the
  destination's roster, suggested by name and birth date) or "Use transfer info (non-sis
  connection)"; only once every part of every case's history has arrived.
"""

from __future__ import annotations

import math
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from uuid import NAMESPACE_URL, UUID, uuid5

from services.kit.identity import Identity

# ---------------------------------------------------------------------------- the request's states

PENDING, ACCEPTED, REJECTED, CANCELLED, LOCKED, EXPIRED = (
    "pending", "accepted", "rejected", "cancelled", "locked", "expired")
STATUSES = (PENDING, ACCEPTED, REJECTED, CANCELLED, LOCKED, EXPIRED)
# Each state and where it may go: only a pending request moves, and each move is final.
TRANSITIONS: dict[str, frozenset[str]] = {
    PENDING: frozenset({ACCEPTED, REJECTED, CANCELLED, LOCKED, EXPIRED}),
    **{final: frozenset() for final in (ACCEPTED, REJECTED, CANCELLED, LOCKED, EXPIRED)},
}
FINAL = frozenset(s for s, onward in TRANSITIONS.items() if not onward)

# What each final state is, in the words its 409 uses ("the request was cancelled by x at t").
_ENDED = {ACCEPTED: "accepted", REJECTED: "rejected", CANCELLED: "cancelled",
          LOCKED: "locked after too many wrong authentication codes", EXPIRED: "expired"}

MANAGE_CASES = "manage_cases"


class Refused(Exception):
    """A rule said no. `kind` is how the HTTP edge answers: forbidden (403: the caller's
    role), not_found (404: absent or not the caller's to see), conflict (409: the request's
    state or a district's toggle), invalid (422: the request's fields). `message` is for a
    person, and never holds the authentication code or a student's name."""

    def __init__(self, kind: str, message: str, problems: list[dict] | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.problems = problems


def may_move(current: str, to: str) -> bool:
    """May a request in state `current` move to `to`? Only from pending, never back."""
    return to in TRANSITIONS.get(current, frozenset())


@dataclass(frozen=True)
class Ended:
    """How a request in a final state ended: who and when (for its 409)."""

    status: str
    by: str | None
    at: datetime | None


def why_final(ended: Ended) -> str:
    """'the request was cancelled by x@d.org at 2026-11-02T10:00:00+00:00'."""
    words = _ENDED.get(ended.status, ended.status)
    by = f" by {ended.by}" if ended.by else ""
    at = f" at {ended.at.isoformat()}" if ended.at else ""
    return f"the request was {words}{by}{at}"


def require_pending(status: str, ended: Ended, action: str) -> None:
    """Raise 409 unless a `status` request may still be moved by `action` (accept, ...)."""
    if status != PENDING:
        raise Refused("conflict", f"cannot {action}: {why_final(ended)}")


def is_due(status: str, expires_at: datetime, now: datetime) -> bool:
    """A pending request whose code's window has passed expires (at accept time, or by the
    expiry job, whichever comes first)."""
    return status == PENDING and now >= expires_at


def expires_at(requested_at: datetime, ttl: timedelta) -> datetime:
    return requested_at + ttl


# ---------------------------------------------------------------------------- who may do what


def uses_portal(caller: Identity) -> bool:
    """Manage Cases somewhere in the caller's district: toggles, lists, sends, accepts,
    rejects, cancels (seed 003: "User must have Manage Cases Permissions")."""
    return caller.has(MANAGE_CASES)


def require_portal(caller: Identity) -> None:
    if not uses_portal(caller):
        raise Refused("forbidden", "the District Transfer Portal needs Manage Cases (manage_cases) in your district")


def may_send_case(caller: Identity, school_id: str | None) -> bool:
    """Sending a case needs Manage Cases at its school; a case without a school (one that
    came in from another district with the transfer's own information) needs it district-wide."""
    if school_id is None:
        return caller.has(MANAGE_CASES) and caller.schools_for(MANAGE_CASES) is None
    return caller.holds(MANAGE_CASES, school_id)


SENDER, DESTINATION = "sender", "destination"


def side_of(caller: Identity, source_district_id: str, destination_district_id: str) -> str | None:
    """Which side of a request the caller's district is on; None: neither (it answers 404)."""
    if caller.district_id == source_district_id:
        return SENDER
    if caller.district_id == destination_district_id:
        return DESTINATION
    return None


@dataclass(frozen=True)
class CaseFacts:
    """A case as the transfers service knows it from cases.v1."""

    case_id: UUID
    district_id: str
    school_id: str | None
    case_number: str
    transferred_out: bool


def refusals_to_send(caller: Identity, case_ids: Sequence[UUID], known: dict[UUID, CaseFacts]) -> list[dict]:
    """Each case the caller may not send, with the rule it breaks: unknown_case (no case of
    the caller's district by this id that the caller may see; never says whether another
    district has it), transferred_out (already in another district), needs_manage_cases
    (at the case's school)."""
    out = []
    for case_id in case_ids:
        case = known.get(case_id)
        if case is None or case.district_id != caller.district_id or not (
                case.school_id is None or caller.may_see_school(case.school_id)):
            out.append({"case_id": str(case_id), "rule": "unknown_case",
                        "problem": "no case of your district by this id (a case opened a moment ago may not be "
                                   "known to the portal yet)"})
        elif case.transferred_out:
            out.append({"case_id": str(case_id), "rule": "transferred_out",
                        "problem": f"case {case.case_number} was transferred out to another district: it is read-only"})
        elif not may_send_case(caller, case.school_id):
            out.append({"case_id": str(case_id), "rule": "needs_manage_cases",
                        "problem": f"sending case {case.case_number} needs Manage Cases at its school"})
    return out


def check_destinations(source_district_id: str, destinations: Sequence[str], active: Iterable[str]) -> None:
    """Each destination is another district with its toggle on (listed): 422 otherwise.
    A district that is off and one that does not exist read the same."""
    problems = []
    listed = set(active)
    for d in destinations:
        if d == source_district_id:
            problems.append({"field": "destination_district_ids", "district_id": d,
                             "problem": "a district does not transfer cases to itself"})
        elif d not in listed:
            problems.append({"field": "destination_district_ids", "district_id": d,
                             "problem": "not a destination: only districts with Activate Case Transfers Between "
                                        "Districts on are listed"})
    if problems:
        raise Refused("invalid", "; ".join(f"{p['district_id']}: {p['problem']}" for p in problems), problems)


def check_both_sides_on(source_active: bool, destination_active: bool) -> None:
    """A pending request is accepted (and opened with its code) only while both districts
    have the toggle on."""
    if not destination_active:
        raise Refused("conflict", "case transfers are off in your district: turn on Activate Case Transfers Between "
                                  "Districts to receive")
    if not source_active:
        raise Refused("conflict", "case transfers are off in the sending district: it must turn on Activate Case "
                                  "Transfers Between Districts before the request can be accepted")


# ---------------------------------------------------------------------------- the authentication code

# No look-alikes: no 0/O, no 1/I/L. 31 symbols, log2(31) = 4.95 bits each.
CODE_ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"
CODE_LENGTH = 12
MIN_CODE_BITS = 50
MAX_WRONG_CODES = 5
_GROUP = 4  # shown as XXXX-XXXX-XXXX, read in any grouping


def entropy_bits(alphabet: str = CODE_ALPHABET, length: int = CODE_LENGTH) -> float:
    """Bits of entropy of a code of `length` symbols drawn uniformly from `alphabet`."""
    return length * math.log2(len(set(alphabet)))


def new_code() -> str:
    """A fresh code, uniformly random (the `secrets` module, the OS's CSPRNG), grouped for
    reading aloud: 'K7QM-3RTX-9HWD'."""
    raw = "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))
    return "-".join(raw[i:i + _GROUP] for i in range(0, CODE_LENGTH, _GROUP))


_SEPARATORS = re.compile(r"[\s\-_.]")


def normalised_code(typed: str) -> str | None:
    """The code as typed, without separators and in capitals, or None when it cannot be a
    code (wrong length, or a character outside the alphabet): such an entry is refused
    without counting as a try, since it reveals nothing. The message never repeats it."""
    code = _SEPARATORS.sub("", typed).upper()
    if len(code) != CODE_LENGTH or any(ch not in CODE_ALPHABET for ch in code):
        return None
    return code


CODE_FORMAT = (f"an authentication code is {CODE_LENGTH} characters of {CODE_ALPHABET} (no 0, O, 1, I or L), "
               "as the sender was shown it")


@dataclass(frozen=True)
class WrongCode:
    """What a wrong code does: the count after it, and whether the request locks now."""

    failed_attempts: int
    locks: bool

    @property
    def tries_left(self) -> int:
        return max(MAX_WRONG_CODES - self.failed_attempts, 0)


def after_wrong_code(failed_attempts: int) -> WrongCode:
    """A wrong code counts; the MAX_WRONG_CODES-th locks the request for good."""
    n = failed_attempts + 1
    return WrongCode(n, n >= MAX_WRONG_CODES)


def wrong_code_message(wrong: WrongCode) -> str:
    if wrong.locks:
        return (f"the authentication code is not right: {MAX_WRONG_CODES} wrong codes locked the request; the sending "
                "district may send the cases again")
    left = wrong.tries_left
    return f"the authentication code is not right: {left} {'try' if left == 1 else 'tries'} left before the request locks"


# ---------------------------------------------------------------------------- case histories and accepting

ARRIVING, COMPLETE, UNAVAILABLE = "arriving", "complete", "unavailable"
# Once a request ends, the histories kept for it are gone: delivered to the destination
# (accepted), or dropped (rejected, cancelled, locked, expired).
DELIVERED, DROPPED = "delivered", "dropped"


@dataclass(frozen=True)
class CaseHistoryState:
    """What arrived of one case's history: the parts received, of how many (None until the
    first part), or why the sending district could not export it."""

    case_id: UUID
    parts: int | None
    received: int
    unavailable: str | None = None

    @property
    def state(self) -> str:
        if self.unavailable is not None:
            return UNAVAILABLE
        return COMPLETE if self.parts is not None and self.received >= self.parts else ARRIVING


def ended_histories(status: str) -> str | None:
    """What became of the histories of a request that ended (None while it is pending)."""
    if status == ACCEPTED:
        return DELIVERED
    return None if status == PENDING else DROPPED


def histories_state(cases: Iterable[CaseHistoryState], status: str = "pending") -> str:
    """The request's: delivered or dropped once it ended (ended_histories); while pending,
    unavailable if any case is, complete when every part of every case arrived, else
    arriving."""
    if ended := ended_histories(status):
        return ended
    states = {c.state for c in cases}
    if UNAVAILABLE in states:
        return UNAVAILABLE
    return COMPLETE if states <= {COMPLETE} else ARRIVING


def check_histories(cases: Sequence[CaseHistoryState]) -> None:
    """A request is accepted only with every case's whole history in hand (409 otherwise)."""
    state = histories_state(cases)
    if state == UNAVAILABLE:
        n = sum(c.state == UNAVAILABLE for c in cases)
        raise Refused("conflict", f"the sending district could not export {n} of the {len(cases)} cases' histories: "
                                  "the request cannot be accepted as sent; reject it, or ask the sender to cancel it "
                                  "and send again")
    if state == ARRIVING:
        waiting = sum(c.state == ARRIVING for c in cases)
        raise Refused("conflict", f"the histories of {waiting} of the {len(cases)} cases are still arriving from the "
                                  "sending district: try again in a moment")


def check_choices(case_ids: Sequence[UUID], chosen: Sequence[tuple[UUID, UUID | None]],
                  roster: dict[UUID, bool]) -> None:
    """Every case of the request once, each linked to a student of the destination's roster
    (`roster`: student id -> active) or taking the transfer's information (None); 422 naming
    each case otherwise."""
    problems = []
    seen: set[UUID] = set()
    wanted = set(case_ids)
    for case_id, student_id in chosen:
        if case_id not in wanted:
            problems.append({"case_id": str(case_id), "problem": "not a case of this request"})
        elif case_id in seen:
            problems.append({"case_id": str(case_id), "problem": "named twice"})
        elif student_id is not None and not roster.get(student_id, False):
            problems.append({"case_id": str(case_id), "problem": "student_id is no active student of your district's "
                                                                 "roster; link another, or use the transfer's "
                                                                 "information (null)"})
        seen.add(case_id)
    for case_id in case_ids:
        if case_id not in seen:
            problems.append({"case_id": str(case_id), "problem": "missing: say for each case student_id (link to an "
                                                                 "existing student) or null (use transfer info)"})
    if problems:
        raise Refused("invalid", "; ".join(f"case {p['case_id']}: {p['problem']}" for p in problems), problems)


_DELIVERY_NAMESPACE = uuid5(NAMESPACE_URL, "https://caseflow.example.org/transfers/deliveries")


def delivery_event_id(request_id: UUID, case_id: UUID, part: int) -> UUID:
    """CaseDelivered's event id, the same however often an accept is retried or re-sent:
    the destination's cases service applies each part once by it."""
    return uuid5(_DELIVERY_NAMESPACE, f"{request_id}/{case_id}/{part}")


# ---------------------------------------------------------------------------- linking: suggestions


@dataclass(frozen=True)
class Person:
    """Whom a case is about: the transfer's person, or a student of the destination's roster.
    Personal data: never logged."""

    given_name: str
    family_name: str
    birth_date: date | None


def _fold(name: str) -> str:
    return " ".join(name.casefold().split())


def match(person: Person, student: Person) -> str | None:
    """Why a roster student is suggested for the transfer's person, or None: the same names
    and birth date, the same birth date and family name, the same birth date and given name,
    or the same names (birth date unknown on either side)."""
    family = _fold(person.family_name) == _fold(student.family_name)
    given = _fold(person.given_name) == _fold(student.given_name)
    born = person.birth_date is not None and person.birth_date == student.birth_date
    if born and family and given:
        return "name and birth date"
    if born and family:
        return "family name and birth date"
    if born and given:
        return "given name and birth date"
    if family and given and (person.birth_date is None or student.birth_date is None):
        return "name"
    return None


_RANK = {"name and birth date": 0, "family name and birth date": 1, "given name and birth date": 2, "name": 3}
MAX_SUGGESTIONS = 5


def suggestions(person: Person, candidates: Iterable[tuple[UUID, Person]]) -> list[tuple[UUID, str]]:
    """The destination's students to suggest for linking, best first: (student id, matched
    on), at most MAX_SUGGESTIONS."""
    found = [(sid, why) for sid, student in candidates if (why := match(person, student)) is not None]
    found.sort(key=lambda f: (_RANK[f[1]], str(f[0])))
    return found[:MAX_SUGGESTIONS]
