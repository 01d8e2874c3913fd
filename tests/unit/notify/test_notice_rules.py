"""Who gets which notice (seeds 003 and 004), what it may say, preferences, the sender
name, Message-IDs and retries: the notify service's rules, without I/O."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, date, datetime, timedelta
from email import message_from_bytes, policy

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contracts.cases import CaseOpened, TaskAssigned
from contracts.transfers import (
    AcceptedCase,
    TransferAccepted,
    TransferCancelled,
    TransferExpired,
    TransferLocked,
    TransferRejected,
    TransferRequested,
)
from services.notify import domain
from services.notify.domain import Holder, Recipient
from services.notify.mail import NotifyOptions, Outgoing, Templates, Writer, compose

SENDING, DESTINATION = "d-send", "d-dest"
AT = datetime(2026, 11, 2, 9, tzinfo=UTC)
REQUEST = uuid.uuid4()


def requested(**extra) -> TransferRequested:
    return TransferRequested(district_id=SENDING, occurred_at=AT, request_id=REQUEST,
                             destination_district_id=DESTINATION, case_ids=[uuid.uuid4(), uuid.uuid4()], case_count=2,
                             notes="Please call our counsellor first.", requested_by="sender@send.example.org",
                             expires_at=AT + timedelta(days=7), **extra)


ENDINGS = [
    TransferAccepted(district_id=SENDING, request_id=REQUEST, destination_district_id=DESTINATION,
                     accepted_by="boss@dest.example.org", cases=[AcceptedCase(case_id=uuid.uuid4())]),
    TransferRejected(district_id=SENDING, request_id=REQUEST, destination_district_id=DESTINATION,
                     rejected_by="boss@dest.example.org", reason="Ana Reyes is not enrolled here"),
    TransferCancelled(district_id=SENDING, request_id=REQUEST, destination_district_id=DESTINATION,
                      cancelled_by="sender@send.example.org"),
    TransferLocked(district_id=SENDING, request_id=REQUEST, destination_district_id=DESTINATION, failed_attempts=5),
    TransferExpired(district_id=SENDING, request_id=REQUEST, destination_district_id=DESTINATION),
]
MANAGE_CASES = {DESTINATION: ["a@dest.example.org", "b@dest.example.org"], SENDING: ["c@send.example.org"]}


def test_a_transfer_request_alerts_the_destinations_manage_cases_users_incoming_and_the_senders_outgoing():
    got = domain.recipients_for(requested(), MANAGE_CASES)
    assert got == [Recipient("a@dest.example.org", DESTINATION, "transfer_incoming"),
                   Recipient("b@dest.example.org", DESTINATION, "transfer_incoming"),
                   Recipient("c@send.example.org", SENDING, "transfer_outgoing")]
    assert domain.districts_to_ask(requested()) == (DESTINATION, SENDING)


@pytest.mark.parametrize("event", ENDINGS, ids=lambda e: type(e).__name__)
def test_how_a_transfer_ends_goes_to_both_sides_manage_cases_users(event):
    got = domain.recipients_for(event, MANAGE_CASES)
    assert {(r.email, r.district_id, r.notice) for r in got} == {
        ("a@dest.example.org", DESTINATION, "transfer_ended"), ("b@dest.example.org", DESTINATION, "transfer_ended"),
        ("c@send.example.org", SENDING, "transfer_ended")}


def test_someone_on_both_sides_of_a_transfer_gets_one_notice_the_destinations():
    both = {DESTINATION: ["x@both.example.org"], SENDING: ["x@both.example.org"]}
    assert domain.recipients_for(requested(), both) == [Recipient("x@both.example.org", DESTINATION,
                                                                  "transfer_incoming")]


def test_manage_cases_users_are_the_holders_the_roster_has_or_never_knew_not_those_who_left():
    holders = [Holder("on@d.org", True), Holder("left@d.org", False), Holder("configured@d.org", None)]
    assert domain.manage_cases_users(holders) == ["configured@d.org", "on@d.org"]
    assert domain.MANAGE_CASES_LEVELS == ("manage_cases",)  # district_admin alone is not Manage Cases


def test_a_task_goes_to_its_assignee_and_a_case_to_its_case_manager_when_set():
    task = TaskAssigned(district_id=SENDING, student_source_id="S-1", task_id=uuid.uuid4(), title="Call home",
                        assignee_email=" Okafor@D.example.org ", due_date=date(2026, 11, 20))
    assert domain.recipients_for(task, {}) == [Recipient("okafor@d.example.org", SENDING, "task_assigned")]
    opened = case_opened(case_manager="Manager@D.example.org")
    assert domain.recipients_for(opened, {}) == [Recipient("manager@d.example.org", SENDING, "case_opened")]
    assert domain.recipients_for(case_opened(case_manager=None), {}) == []
    # Someone the roster says has left gets nothing.
    assert domain.recipients_for(task, {}, {(SENDING, "okafor@d.example.org"): False}) == []


def case_opened(**extra) -> CaseOpened:
    return CaseOpened(district_id=SENDING, case_id=uuid.uuid4(), case_number="26-000042", school_id="H1",
                      student_id=uuid.uuid4(), student_source_id="S-SECRET-1", trigger_kind="submit_form",
                      source_event_id=uuid.uuid4(), source_occurred_at=AT, **extra)


def test_only_task_and_case_notices_can_be_turned_off():
    recipients = [Recipient("a@d.org", SENDING, "task_assigned"), Recipient("a@d.org", SENDING, "transfer_ended"),
                  Recipient("b@d.org", SENDING, "case_opened")]
    off = {(SENDING, "a@d.org", "task_assigned"), (SENDING, "a@d.org", "transfer_ended"),
           (SENDING, "b@d.org", "case_opened")}
    assert domain.wanted(recipients, off) == [Recipient("a@d.org", SENDING, "transfer_ended")]
    assert domain.preference_changes({"task_assigned": False, "case_opened": None, "transfer_incoming": True}) == \
        {"task_assigned": False}
    for required in ("transfer_incoming", "transfer_outgoing", "transfer_ended"):
        with pytest.raises(domain.Refused) as refused:
            domain.preference_changes({required: False})
        assert refused.value.rule == "transfer_alerts_required"
    assert [(p["notice"], p["enabled"]) for p in domain.preferences(["task_assigned"])
            if not p["required"]] == [("task_assigned", False), ("case_opened", True)]


def test_the_message_id_is_derived_from_the_event_and_the_recipient():
    event_id = uuid.UUID("00000000-0000-0000-0000-000000000001")
    first = domain.message_id(event_id, "a@d.org")
    assert first == domain.message_id(str(event_id), "a@d.org")
    assert re.fullmatch(r"<[0-9a-f]{32}@caseflow\.notify>", first)
    assert first != domain.message_id(event_id, "b@d.org")
    assert first != domain.message_id(uuid.uuid4(), "a@d.org")


@given(st.uuids(), st.emails())
def test_message_ids_are_valid_header_values_for_any_event_and_recipient(event_id, email):
    assert re.fullmatch(r"<[0-9a-f]{32}@caseflow\.notify>", domain.message_id(event_id, email))


def test_smtp_replies_2xx_sent_4xx_and_no_reply_retried_with_backoff_5xx_failed_for_good():
    assert domain.outcome_of(250) == domain.SENT
    assert domain.outcome_of(451) == domain.outcome_of(421) == domain.outcome_of(None) == domain.RETRY
    assert domain.outcome_of(550) == domain.outcome_of(554) == domain.FAILED
    policy = domain.RetryPolicy(first_seconds=10, max_seconds=60, max_attempts=5)
    waits = [domain.after_attempt(domain.RETRY, n, AT, policy) for n in range(1, 6)]
    assert [(s, (t - AT).total_seconds() if t else None) for s, t in waits] == [
        ("pending", 10), ("pending", 20), ("pending", 40), ("pending", 60), ("failed", None)]
    assert domain.after_attempt(domain.FAILED, 1, AT, policy) == ("failed", None)
    assert domain.after_attempt(domain.SENT, 3, AT, policy) == ("sent", None)


def test_a_sender_name_a_header_cannot_carry_is_refused():
    assert domain.sender_name_problem("NYC Schools Caseflow") is None
    assert domain.sender_name_problem("Caseflow\r\nBcc: everyone@example.org")
    assert domain.sender_name_problem("   ")
    assert domain.sender_name_problem("x" * 101)


# ---------------------------------------------------------------------------- what the messages say

STUDENT_WORDS = ("Ana", "Reyes", "S-SECRET-1", "2011-04-05")


STAFF = {(SENDING, "sender@send.example.org"): "Luis Rivera"}


def written(event, notice: str, recipient: str = "a@dest.example.org") -> tuple[str, str, str]:
    """(subject, text, html) of the message one recipient gets, as the sender sends it."""
    content = domain.contents_for(event, [notice], {SENDING: "Springfield Public Schools",
                                                    DESTINATION: "Shelbyville <District> & Co"}, STAFF)[notice]
    out = Outgoing(delivery_id=1, event_id=str(event.event_id), notice=notice, recipient=recipient,
                   message_id=domain.message_id(event.event_id, recipient), attempts=0,
                   subject=content.subject, context=content.context, sender_name='Dest "Caseflow"')
    wire = Writer(Templates(), NotifyOptions()).wire(out)
    sent = wire.data if isinstance(wire.data, bytes) else bytes(wire.data)
    message = message_from_bytes(sent, policy=policy.default)
    whole = compose(out, Templates(), NotifyOptions())  # the same message, written whole
    text = message.get_body(("plain",)).get_content().replace("\r\n", "\n")  # CRLF on the wire
    html = message.get_body(("html",)).get_content().replace("\r\n", "\n")
    assert (text, html) == (whole.get_body(("plain",)).get_content(), whole.get_body(("html",)).get_content())
    for header in ("Subject", "From", "To", "Message-ID", "Auto-Submitted", "X-Caseflow-Notice"):
        assert str(message[header]).strip() == str(whole[header]), header
    assert (wire.sender, wire.recipient) == ("notices@caseflow.example.org", recipient)
    assert message["Message-ID"] == out.message_id
    assert message["From"].addresses[0].display_name == 'Dest "Caseflow"'
    return str(message["Subject"]).strip(), text, html


def test_the_incoming_alert_says_who_sends_how_many_the_notes_and_how_to_accept_never_the_code():
    subject, text, html = written(requested(), "transfer_incoming")
    assert subject == "Transfer request: 2 cases from Springfield Public Schools await your acceptance"
    for part in (text, html):
        assert "Springfield Public Schools" in part and "2 cases" in part
        assert "Please call our counsellor first." in part
        assert "authentication code" in part and "Accept" in part
        assert f"http://127.0.0.1:8080/transfers/{REQUEST}" in part
        assert "Requested by Luis Rivera (sender@send.example.org)" in part
    assert "Shelbyville &lt;District&gt; &amp; Co" in html  # escaped in HTML, as is in text
    assert "Shelbyville <District> & Co" in text


@pytest.mark.parametrize("event", ENDINGS, ids=lambda e: type(e).__name__)
def test_the_ending_notices_name_no_student_and_carry_no_free_text_about_one(event):
    subject, text, html = written(event, "transfer_ended")
    outcome = domain.TRANSFER_ENDINGS[type(event)]
    assert subject.startswith(f"Transfer {outcome}:")
    for part in (subject, text, html):
        assert not any(word in part for word in STUDENT_WORDS)


def test_a_recipient_whose_address_a_header_cannot_carry_as_it_is_gets_a_message_written_whole():
    subject, text, _ = written(requested(), "transfer_incoming", recipient="josé@dest.example.org")
    assert subject.startswith("Transfer request:") and "Springfield Public Schools" in text
    with pytest.raises(ValueError):  # a line break in an address: refused, never written into a header
        written(requested(), "transfer_incoming", recipient="a@dest.example.org\r\nBcc: all@example.org")


def test_task_and_case_notices_carry_the_case_number_and_links_not_the_title_or_the_student():
    task = TaskAssigned(district_id=SENDING, student_source_id="S-SECRET-1", task_id=uuid.uuid4(),
                        title="Call Ana Reyes's home", assignee_email="a@d.org", due_date=date(2026, 11, 20))
    subject, text, html = written(task, "task_assigned")
    assert subject == "A task was assigned to you (due 2026-11-20)"
    assert f"/tasks/{task.task_id}" in text and "turn this notice off" in text.lower()
    opened = case_opened(case_manager="m@d.org")
    subject2, text2, html2 = written(opened, "case_opened")
    assert subject2 == "Case 26-000042 opened: you are its case manager"
    assert f"/cases/{opened.case_id}" in html2
    for part in (subject, text, html, subject2, text2, html2):
        assert not any(word in part for word in STUDENT_WORDS)
