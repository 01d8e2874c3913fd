"""Notices by email (seeds 003 and 004, issue 13), on real Kafka and PostgreSQL, sent to a
real aiosmtpd server on loopback: who gets what, what the messages carry (and never carry),
preferences, a revoked Manage Cases user, redelivery, 451 then 250, 550, a crash between
the server's acceptance and the delivery's commit, an SMTP server that is away, and the
delivery log scoped to the admin's district. Every input event is published by the test."""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage

import httpx
import pytest
from aiosmtpd.controller import Controller

from contracts.cases import CaseOpened, TaskAssigned
from contracts.caseload import AccessGranted, AccessRevoked
from contracts.roster import DistrictUpserted, StaffDeactivated, StaffUpserted
from contracts.transfers import (
    AcceptedCase,
    TransferAccepted,
    TransferCancelled,
    TransferExpired,
    TransferLocked,
    TransferRejected,
    TransferRequested,
)
from services.kit.auth import mint
from services.kit.crash import CRASH_EXIT_CODE
from services.notify import domain
from services.roster.domain import staff_id_for
from tests.support import SECRET, Stack, eventually, free_port

pytestmark = pytest.mark.integration

SENDING, DESTINATION, THIRD = "d-springfield", "d-shelbyville", "d-ogdenville"
NAMES = {SENDING: "Springfield Public Schools", DESTINATION: "Shelbyville Unified", THIRD: "Ogdenville Schools"}
AT = datetime(2026, 9, 1, tzinfo=UTC)
APP = "https://caseflow.test"

# Manage Cases users: two in the destination (one at a school, one district-wide), one in the
# sending district; a district admin without manage_cases; one who left the roster.
DEST_MC_1, DEST_MC_2 = "okafor@shelbyville.example.org", "lee@shelbyville.example.org"
SEND_MC = "rivera@springfield.example.org"
DEST_ADMIN = "admin@shelbyville.example.org"  # district_admin only: no transfer alerts
LEFT_MC = "gone@shelbyville.example.org"  # manage_cases, but left the roster
THIRD_ADMIN = "admin@ogdenville.example.org"
TEACHER = "santos@springfield.example.org"  # assignee, case manager

# What a notice must never carry: the student's name, birth date and ids, free text about
# them (a task's title, a rejection's reason), and anything that looks like the transfer's code.
STUDENT_SIS_ID = "S-ANA-0001"
STUDENT_ID = uuid.uuid4()
NEVER = ("Ana", "Reyes", "2011-04-05", STUDENT_SIS_ID, str(STUDENT_ID))


# ---------------------------------------------------------------------------- the SMTP server


class SmtpServer:
    """aiosmtpd on loopback, in its own thread: keeps every accepted message; a reply can be
    scripted per recipient (`replies[email] = ["451 ...", ...]`, given first, then 250)."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.accepted: list[tuple[list[str], str, EmailMessage]] = []
        self.replies: dict[str, list[str]] = defaultdict(list)
        self.attempts: dict[str, int] = defaultdict(int)
        self.controller: Controller | None = None
        self.delay = 0.0  # seconds before each reply to DATA

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: N802 - aiosmtpd's name
        await asyncio.sleep(self.delay)
        recipient = envelope.rcpt_tos[0].lower()
        self.attempts[recipient] += 1
        script = self.replies.get(recipient)
        reply = script.pop(0) if script else "250 Message accepted for delivery"
        if reply.startswith("250"):
            message = message_from_bytes(envelope.original_content or envelope.content, policy=policy.default)
            self.accepted.append((list(envelope.rcpt_tos), envelope.mail_from, message))
        return reply

    def start(self) -> SmtpServer:
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self.controller.start()
        return self

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    def to(self, email: str) -> list[EmailMessage]:
        return [m for rcpts, _, m in self.accepted if email in rcpts]

    def recipients(self) -> set[str]:
        return {r for rcpts, _, _ in self.accepted for r in rcpts}


def subject(message: EmailMessage) -> str:
    """The subject as a reader sees it (a long one is folded after "Subject:", which the
    stdlib's parser keeps as a leading space)."""
    return str(message["Subject"]).strip()


def parts(message: EmailMessage) -> tuple[str, str]:
    return message.get_body(("plain",)).get_content(), message.get_body(("html",)).get_content()


def assert_carries_nothing_about_the_student(message: EmailMessage) -> None:
    text, html = parts(message)
    headers = "\n".join(f"{k}: {v}" for k, v in message.items())
    for where in (headers, text, html):
        for word in NEVER:
            assert word not in where, (word, where[:300])


# ---------------------------------------------------------------------------- the world


def who(email: str, district: str, roles: list[str] | None = None) -> dict:
    return {"Authorization": "Bearer " + mint(SECRET, email=email, district_id=district, roles=roles)}


def staff(district: str, email: str, given: str, family: str) -> StaffUpserted:
    source = email.split("@")[0]
    return StaffUpserted(district_id=district, occurred_at=AT, staff_id=staff_id_for(district, source),
                         source_id=source, role="counselor", given_name=given, family_name=family, email=email,
                         school_ids=["H1"], matched=True)


def grant(district: str, email: str, level: str, school: str | None = "H1") -> AccessGranted:
    return AccessGranted(district_id=district, occurred_at=AT, grant_id=uuid.uuid5(uuid.NAMESPACE_URL,
                         f"{district}/{email}/{level}/{school}"), staff_email=email, level=level, school_id=school,
                         basis="granted", granted_by="it@example.org")


def revoke(district: str, email: str, level: str, school: str | None = "H1") -> AccessRevoked:
    return AccessRevoked(district_id=district, occurred_at=AT + timedelta(days=1),
                         grant_id=uuid.uuid5(uuid.NAMESPACE_URL, f"{district}/{email}/{level}/{school}"),
                         staff_email=email, level=level, school_id=school, basis="granted",
                         revoked_by="it@example.org", reason="revoked by an admin")


WORLD = [
    DistrictUpserted(district_id=SENDING, occurred_at=AT, name=NAMES[SENDING]),
    DistrictUpserted(district_id=DESTINATION, occurred_at=AT, name=NAMES[DESTINATION]),
    DistrictUpserted(district_id=THIRD, occurred_at=AT, name=NAMES[THIRD]),
    staff(DESTINATION, DEST_MC_1, "Ngozi", "Okafor"),
    staff(DESTINATION, DEST_MC_2, "Min", "Lee"),
    staff(DESTINATION, LEFT_MC, "Gone", "Away"),
    staff(SENDING, SEND_MC, "Luis", "Rivera"),
    staff(SENDING, TEACHER, "Maria", "Santos"),
    StaffDeactivated(district_id=DESTINATION, occurred_at=AT + timedelta(hours=1),
                     staff_id=staff_id_for(DESTINATION, "gone"), source_id="gone"),
    grant(DESTINATION, DEST_MC_1, "manage_cases"),
    grant(DESTINATION, DEST_MC_2, "manage_cases", None),
    grant(DESTINATION, LEFT_MC, "manage_cases"),
    grant(DESTINATION, DEST_ADMIN, "district_admin", None),
    grant(SENDING, SEND_MC, "manage_cases"),
    grant(SENDING, TEACHER, "caseload_viewer"),
]



def transfer_requested(**extra) -> TransferRequested:
    return TransferRequested(district_id=SENDING, request_id=uuid.uuid4(), destination_district_id=DESTINATION,
                             case_ids=[uuid.uuid4(), uuid.uuid4(), uuid.uuid4()], case_count=3,
                             notes="Call our counsellor before the first meeting.", requested_by=SEND_MC,
                             expires_at=AT + timedelta(days=7), **extra)


def task(**extra) -> TaskAssigned:
    return TaskAssigned(district_id=SENDING, student_source_id=STUDENT_SIS_ID, task_id=uuid.uuid4(),
                        title="Call Ana Reyes's mother", assignee_email=TEACHER, due_date=date(2026, 11, 20),
                        actor_email=SEND_MC, **extra)


def case_opened(case_manager: str | None) -> CaseOpened:
    return CaseOpened(district_id=SENDING, case_id=uuid.uuid4(), case_number="26-000042", school_id="H1",
                      student_id=STUDENT_ID, student_source_id=STUDENT_SIS_ID, trigger_kind="submit_form",
                      source_event_id=uuid.uuid4(), source_occurred_at=AT, case_manager=case_manager)


@pytest.fixture
async def smtp():
    server = SmtpServer().start()
    yield server
    server.stop()


def notify_env(smtp_port: int, **extra: str) -> dict[str, str]:
    return {"CASEFLOW_SMTP_HOST": "127.0.0.1", "CASEFLOW_SMTP_PORT": str(smtp_port), "CASEFLOW_NOTIFY_APP_URL": APP,
            "CASEFLOW_NOTIFY_POLL_SECONDS": "0.2", "CASEFLOW_NOTIFY_RETRY_FIRST_SECONDS": "1",
            "CASEFLOW_SMTP_FROM": "notices@caseflow.test", **extra}


async def start_notify(system: Stack, smtp_port: int, *, ready: bool = True, seed: bool = True, **extra: str):
    await system.prepare("notify")
    service = system.service("notify", **notify_env(smtp_port, **extra)).start()
    if ready:
        await service.ready()
    if seed:
        await system.publish_all(WORLD)
        await system.caught_up("notify")
    service.client = httpx.AsyncClient(base_url=service.url)
    return service


@pytest.fixture
async def notify(system: Stack, smtp: SmtpServer):
    service = await start_notify(system, smtp.port)
    yield service
    await service.client.aclose()


async def deliveries_of(system: Stack, event_id: uuid.UUID) -> list[dict]:
    conn = await system.db("notify")
    try:
        rows = await conn.fetch("SELECT recipient, district_id, notice, status, attempts, last_reply, message_id "
                                "FROM deliveries WHERE event_id = $1 ORDER BY recipient", event_id)
    finally:
        await conn.close()
    return [dict(r) for r in rows]


async def settled(system: Stack, event_id: uuid.UUID, n: int) -> list[dict]:
    """The event's n deliveries, once none is pending."""
    async def done():
        rows = await deliveries_of(system, event_id)
        return rows if len(rows) == n and all(r["status"] != "pending" for r in rows) else None

    return await eventually(done, timeout=60, what=f"{n} deliveries of {event_id} sent or failed")


# ---------------------------------------------------------------------------- who gets what


async def test_a_transfer_request_alerts_the_destinations_manage_cases_users_and_the_senders(
        system: Stack, smtp: SmtpServer, notify):
    named = await notify.client.put("/v1/notices/sender", json={"sender_name": "Shelbyville Caseflow"},
                                    headers=who(DEST_ADMIN, DESTINATION))
    assert named.status_code == 200, named.text
    event = transfer_requested()
    await system.publish(event)
    rows = await settled(system, event.event_id, 3)
    assert {(r["recipient"], r["district_id"], r["notice"], r["status"]) for r in rows} == {
        (DEST_MC_1, DESTINATION, "transfer_incoming", "sent"), (DEST_MC_2, DESTINATION, "transfer_incoming", "sent"),
        (SEND_MC, SENDING, "transfer_outgoing", "sent")}
    # Not the district admin without manage_cases, not the one who left the roster.
    assert smtp.recipients() == {DEST_MC_1, DEST_MC_2, SEND_MC}

    for email in (DEST_MC_1, DEST_MC_2):
        (message,) = smtp.to(email)
        text, html = parts(message)
        assert subject(message) == f"Transfer request: 3 cases from {NAMES[SENDING]} await your acceptance"
        assert message["To"] == email
        assert message["Message-ID"] == domain.message_id(event.event_id, email)
        assert message["From"].addresses[0].display_name == "Shelbyville Caseflow"
        assert message["From"].addresses[0].addr_spec == "notices@caseflow.test"
        for part in (text, html):
            assert NAMES[SENDING] in part and "3 cases" in part
            assert "Call our counsellor before the first meeting." in part
            assert "authentication code" in part and "Accept" in part
            assert f"{APP}/transfers/{event.request_id}" in part
        assert_carries_nothing_about_the_student(message)
    assert f"Requested by Luis Rivera ({SEND_MC})" in parts(smtp.to(DEST_MC_1)[0])[0]  # named as the roster names them

    (outgoing,) = smtp.to(SEND_MC)
    assert subject(outgoing) == f"Transfer pending: 3 cases to {NAMES[DESTINATION]}"
    assert outgoing["From"].addresses[0].display_name == "Caseflow"  # the sending district named none
    assert "pending transfer out" in parts(outgoing)[0]
    assert_carries_nothing_about_the_student(outgoing)


async def test_how_a_transfer_ends_reaches_both_sides_manage_cases_users(system: Stack, smtp: SmtpServer, notify):
    request_id = uuid.uuid4()
    common = dict(district_id=SENDING, request_id=request_id, destination_district_id=DESTINATION)
    endings = [
        TransferAccepted(**common, accepted_by=DEST_MC_1, cases=[AcceptedCase(case_id=uuid.uuid4())]),
        TransferRejected(**common, rejected_by=DEST_MC_1, reason="Ana Reyes never enrolled here (born 2011-04-05)"),
        TransferCancelled(**common, cancelled_by=SEND_MC),
        TransferLocked(**common, failed_attempts=5),
        TransferExpired(**common),
    ]
    await system.publish_all(endings)
    for event in endings:
        rows = await settled(system, event.event_id, 3)
        assert {(r["recipient"], r["notice"], r["status"]) for r in rows} == {
            (DEST_MC_1, "transfer_ended", "sent"), (DEST_MC_2, "transfer_ended", "sent"),
            (SEND_MC, "transfer_ended", "sent")}
    for email in (DEST_MC_1, DEST_MC_2, SEND_MC):
        messages = smtp.to(email)
        assert sorted(subject(m).split(":")[0] for m in messages) == [  # sent side by side: in any order
            "Transfer accepted", "Transfer cancelled", "Transfer expired", "Transfer locked", "Transfer rejected"]
        for m in messages:
            assert_carries_nothing_about_the_student(m)
    (locked,) = [m for m in smtp.to(SEND_MC) if subject(m).startswith("Transfer locked")]
    assert "5 wrong authentication codes" in parts(locked)[0]


async def test_a_task_goes_to_its_assignee_and_a_case_to_its_case_manager_and_staff_may_turn_them_off(
        system: Stack, smtp: SmtpServer, notify):
    assigned, opened, unmanaged = task(), case_opened(TEACHER), case_opened(None)
    await system.publish_all([assigned, opened, unmanaged])
    await settled(system, assigned.event_id, 1)
    await settled(system, opened.event_id, 1)
    await system.caught_up("notify")
    assert await deliveries_of(system, unmanaged.event_id) == []  # no case manager: no one
    task_mail, case_mail = sorted(smtp.to(TEACHER), key=lambda m: not subject(m).startswith("A task"))
    assert subject(task_mail) == "A task was assigned to you (due 2026-11-20)"
    assert f"{APP}/tasks/{assigned.task_id}" in parts(task_mail)[0]
    assert subject(case_mail) == "Case 26-000042 opened: you are its case manager"
    assert f"{APP}/cases/{opened.case_id}" in parts(case_mail)[1]
    for m in (task_mail, case_mail):
        assert_carries_nothing_about_the_student(m)  # the task's title names the student: it stays behind the link
        assert "turn this notice off" in parts(m)[0].lower()

    # The teacher turns task notices off; transfer alerts cannot be.
    me = who(TEACHER, SENDING)
    off = await notify.client.put("/v1/notices/preferences/me", json={"task_assigned": False}, headers=me)
    assert off.status_code == 200, off.text
    assert {n["notice"]: n["enabled"] for n in off.json()["notices"]}["task_assigned"] is False
    refused = await notify.client.put("/v1/notices/preferences/me", json={"transfer_incoming": False},
                                      headers=who(DEST_MC_1, DESTINATION))
    assert refused.status_code == 422
    assert refused.json()["detail"]["rule"] == "transfer_alerts_required"
    again, another_case = task(), case_opened(TEACHER)
    await system.publish_all([again, another_case])
    await settled(system, another_case.event_id, 1)
    await system.caught_up("notify")
    assert await deliveries_of(system, again.event_id) == []
    assert len(smtp.to(TEACHER)) == 3  # the case notice still comes
    mine = (await notify.client.get("/v1/notices/preferences/me", headers=me)).json()
    assert [(n["notice"], n["enabled"], n["required"]) for n in mine["notices"]] == [
        ("transfer_incoming", True, True), ("transfer_outgoing", True, True), ("transfer_ended", True, True),
        ("task_assigned", False, False), ("case_opened", True, False)]


async def test_a_manage_cases_user_whose_access_is_revoked_stops_receiving_alerts(
        system: Stack, smtp: SmtpServer, notify):
    first = transfer_requested()
    await system.publish(first)
    await settled(system, first.event_id, 3)
    await system.publish(revoke(DESTINATION, DEST_MC_1, "manage_cases"))
    await system.caught_up("notify")
    second = transfer_requested()
    await system.publish(second)
    rows = await settled(system, second.event_id, 2)
    assert {r["recipient"] for r in rows} == {DEST_MC_2, SEND_MC}
    assert len(smtp.to(DEST_MC_1)) == 1 and len(smtp.to(DEST_MC_2)) == 2


# ---------------------------------------------------------------------------- exactly once per (event, recipient)


async def test_a_redelivered_event_sends_one_message_per_recipient(system: Stack, smtp: SmtpServer, notify):
    event = transfer_requested()
    await system.publish(event)
    await system.publish(event)  # the same event id again, as a producer's retry would
    await settled(system, event.event_id, 3)
    await system.caught_up("notify")
    await asyncio.sleep(1.5)  # a second copy would have been sent by now
    assert sorted(r for rcpts, _, _ in smtp.accepted for r in rcpts) == sorted([DEST_MC_1, DEST_MC_2, SEND_MC])


async def test_451_is_retried_until_delivered_once_and_550_is_recorded_failed_and_never_retried(
        system: Stack, smtp: SmtpServer, notify):
    smtp.replies[DEST_MC_1] = ["451 4.7.1 Greylisted, try again later"]
    smtp.replies[DEST_MC_2] = ["550 5.1.1 No such mailbox here"]
    event = transfer_requested()
    await system.publish(event)
    rows = {r["recipient"]: r for r in await settled(system, event.event_id, 3)}
    assert (rows[DEST_MC_1]["status"], rows[DEST_MC_1]["attempts"]) == ("sent", 2)
    assert (rows[DEST_MC_2]["status"], rows[DEST_MC_2]["attempts"]) == ("failed", 1)
    assert rows[DEST_MC_2]["last_reply"].startswith("550") and "No such mailbox" in rows[DEST_MC_2]["last_reply"]
    assert len(smtp.to(DEST_MC_1)) == 1 and smtp.attempts[DEST_MC_1] == 2
    await asyncio.sleep(3)  # beyond the first retries' waits: a 550 is never tried again
    assert smtp.attempts[DEST_MC_2] == 1 and smtp.to(DEST_MC_2) == []
    # As the district's admin reads it in the delivery log.
    log = (await notify.client.get("/v1/deliveries", params={"event_id": str(event.event_id)},
                                   headers=who(DEST_ADMIN, DESTINATION))).json()
    assert {(i["recipient"], i["status"], i["attempts"]) for i in log["items"]} == {
        (DEST_MC_1, "sent", 2), (DEST_MC_2, "failed", 1)}


async def test_a_delivery_that_cannot_be_written_fails_alone_and_the_sender_goes_on(
        system: Stack, smtp: SmtpServer, notify):
    conn = await system.db("notify")
    broken = uuid.uuid4()
    try:  # a notice whose fields its template does not know (as a bug would leave one)
        await conn.execute("INSERT INTO notices (event_id, notice, event_type, subject, context) "
                           "VALUES ($1, 'task_assigned', 'cases.task_assigned.v1', 'broken', '{}'::jsonb)", broken)
        await conn.execute("INSERT INTO deliveries (event_id, notice, recipient, district_id, message_id) "
                           "VALUES ($1, 'task_assigned', $2, $3, '<broken@caseflow.notify>')", broken, TEACHER, SENDING)
    finally:
        await conn.close()
    event = transfer_requested()
    await system.publish(event)
    assert {r["status"] for r in await settled(system, event.event_id, 3)} == {"sent"}
    (row,) = await settled(system, broken, 1)
    assert row["status"] == "failed" and "could not be written" in row["last_reply"]
    assert (await notify.client.get("/readyz")).status_code == 200


async def test_killed_between_the_servers_acceptance_and_the_delivery_commit_it_sends_once_more_with_the_same_message_id(
        system: Stack, smtp: SmtpServer):
    crashing = await start_notify(system, smtp.port, CASEFLOW_CRASH_AT="notify.after_smtp_accepted")
    event = task()
    await system.publish(event)
    assert await crashing.exited() == CRASH_EXIT_CODE
    await crashing.client.aclose()
    assert len(smtp.to(TEACHER)) == 1  # the server has it; the delivery is still pending
    assert [r["status"] for r in await deliveries_of(system, event.event_id)] == ["pending"]

    await start_notify(system, smtp.port, seed=False)
    (row,) = await settled(system, event.event_id, 1)
    assert (row["status"], row["attempts"]) == ("sent", 1)
    first, second = smtp.to(TEACHER)  # at most one duplicate, recognisable by its Message-ID
    assert first["Message-ID"] == second["Message-ID"] == domain.message_id(event.event_id, TEACHER)


async def test_a_service_stopped_in_the_middle_of_a_pass_records_what_was_sent_and_sends_nothing_twice(
        system: Stack, smtp: SmtpServer):
    stopping = await start_notify(system, smtp.port, CASEFLOW_NOTIFY_SEND_CONCURRENCY="1")
    smtp.delay = 1.5  # the pass of three deliveries takes 4.5 s, one after the other
    event = transfer_requested()
    await system.publish(event)

    async def first_accepted():
        return len(smtp.accepted) >= 1

    await eventually(first_accepted, what="the first message accepted")
    stopping.stop()  # SIGTERM in the middle of the pass
    await stopping.client.aclose()
    assert '"service stopped"' in stopping.log()  # the runtime stopped: the sender's pass was let finish
    assert {r["status"] for r in await deliveries_of(system, event.event_id)} == {"sent"}
    smtp.delay = 0.0
    restarted = await start_notify(system, smtp.port, seed=False)
    await system.caught_up("notify")
    await asyncio.sleep(1.5)  # a delivery left pending would be sent by now
    assert sorted(r for rcpts, _, _ in smtp.accepted for r in rcpts) == sorted([DEST_MC_1, DEST_MC_2, SEND_MC])
    await restarted.client.aclose()


async def test_while_the_smtp_server_is_away_readiness_says_so_and_the_notices_go_out_when_it_returns(
        system: Stack):
    server = SmtpServer()  # not started yet
    notify = await start_notify(system, server.port)
    event = task()
    await system.publish(event)

    async def not_ready():
        answer = await notify.client.get("/readyz")
        check = answer.json()["checks"].get("send_deliveries", {})
        return answer.status_code == 503 and "cannot reach the SMTP server" in (check.get("error") or "")

    await eventually(not_ready, what="/readyz to name the sender")
    server.start()
    try:
        (row,) = await settled(system, event.event_id, 1)
        assert row["status"] == "sent" and row["attempts"] >= 2
        assert len(server.to(TEACHER)) == 1
        await eventually(lambda: _ready(notify), what="ready again")
    finally:
        server.stop()
        await notify.client.aclose()


async def _ready(service) -> bool:
    return (await service.client.get("/readyz")).status_code == 200


# ---------------------------------------------------------------------------- the delivery log


async def test_the_delivery_log_shows_a_district_admin_their_districts_deliveries_only(
        system: Stack, smtp: SmtpServer, notify):
    await system.publish(grant(THIRD, THIRD_ADMIN, "district_admin", None))
    event = transfer_requested()
    await system.publish(event)
    await settled(system, event.event_id, 3)
    await system.caught_up("notify")
    client = notify.client
    mine = await client.get("/v1/deliveries", params={"event_id": str(event.event_id)},
                            headers=who(DEST_ADMIN, DESTINATION))
    assert mine.status_code == 200, mine.text
    items = mine.json()["items"]
    assert {i["recipient"] for i in items} == {DEST_MC_1, DEST_MC_2}  # the sending district's are not theirs
    assert set(items[0]) == {"delivery_id", "event_id", "event_type", "notice", "recipient", "subject", "status",
                             "attempts", "created_at", "next_attempt_at", "sent_at", "last_reply", "message_id"}
    assert items[0]["subject"].startswith("Transfer request: 3 cases")
    # Filters and pages.
    one = await client.get("/v1/deliveries", params={"recipient": DEST_MC_1.upper(), "status": "sent", "limit": 1},
                           headers=who(DEST_ADMIN, DESTINATION))
    assert [i["recipient"] for i in one.json()["items"]] == [DEST_MC_1]
    assert (await client.get("/v1/deliveries", params={"status": "failed"},
                             headers=who(DEST_ADMIN, DESTINATION))).json()["items"] == []
    page = (await client.get("/v1/deliveries", params={"limit": 1}, headers=who(DEST_ADMIN, DESTINATION))).json()
    rest = (await client.get("/v1/deliveries", params={"limit": 1, "after": page["next_after"]},
                             headers=who(DEST_ADMIN, DESTINATION))).json()
    assert {page["items"][0]["recipient"], rest["items"][0]["recipient"]} == {DEST_MC_1, DEST_MC_2}
    # Another district's admin: nothing of it, and its deliveries are not found.
    other = await client.get("/v1/deliveries", params={"event_id": str(event.event_id)},
                             headers=who(THIRD_ADMIN, THIRD))
    assert other.status_code == 200 and other.json()["items"] == []
    one_of_them = items[0]["delivery_id"]
    assert (await client.get(f"/v1/deliveries/{one_of_them}", headers=who(DEST_ADMIN, DESTINATION))).status_code == 200
    assert (await client.get(f"/v1/deliveries/{one_of_them}", headers=who(THIRD_ADMIN, THIRD))).status_code == 404
    # Not a district admin: no log at all.
    assert (await client.get("/v1/deliveries", headers=who(DEST_MC_1, DESTINATION))).status_code == 403
    assert (await client.put("/v1/notices/sender", json={"sender_name": "Mine"},
                             headers=who(DEST_MC_1, DESTINATION))).status_code == 403
    bad = await client.put("/v1/notices/sender", json={"sender_name": "Caseflow\r\nBcc: x@example.org"},
                           headers=who(DEST_ADMIN, DESTINATION))
    assert bad.status_code == 422 and bad.json()["detail"]["rule"] == "sender_name"
