"""Seed 003 (District Transfer Portal) and issue 12: the request's states, the authentication
code, who may do what, what must be in hand before accepting, and whom to suggest."""

from __future__ import annotations

import math
import uuid
from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.kit.identity import Holding, Identity
from services.transfers import domain
from services.transfers.domain import (
    ACCEPTED,
    CODE_ALPHABET,
    CODE_LENGTH,
    FINAL,
    MAX_WRONG_CODES,
    PENDING,
    STATUSES,
    CaseFacts,
    CaseHistoryState,
    Ended,
    Person,
    Refused,
)

AT = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)


def caller(district: str = "d1", *holdings: tuple[str, str | None]) -> Identity:
    return Identity("okafor@d1.example.org", district, tuple(Holding(level, school, "granted") for level, school in holdings))


# ---------------------------------------------------------------------------- states


def test_a_pending_request_may_end_each_way_and_nothing_leaves_a_final_state():
    assert {s for s in STATUSES if domain.may_move(PENDING, s)} == {"accepted", "rejected", "cancelled", "locked",
                                                                    "expired"}
    assert FINAL == {"accepted", "rejected", "cancelled", "locked", "expired"}
    for final in FINAL:
        assert not any(domain.may_move(final, s) for s in STATUSES), final
    assert not domain.may_move(PENDING, PENDING)


@pytest.mark.parametrize("final", sorted(FINAL))
def test_acting_on_a_request_that_ended_is_refused_saying_how_it_ended(final):
    with pytest.raises(Refused) as refused:
        domain.require_pending(final, Ended(final, "x@d2.example.org", AT), "accept")
    assert refused.value.kind == "conflict"
    assert refused.value.message.startswith("cannot accept: the request was ")
    assert "x@d2.example.org" in refused.value.message and AT.isoformat() in refused.value.message
    domain.require_pending(PENDING, Ended(PENDING, None, None), "accept")  # pending: goes on


def test_a_pending_request_is_due_once_its_window_passed():
    expires = domain.expires_at(AT, timedelta(days=14))
    assert expires == AT + timedelta(days=14)
    assert not domain.is_due(PENDING, expires, expires - timedelta(microseconds=1))
    assert domain.is_due(PENDING, expires, expires)
    assert not domain.is_due(ACCEPTED, expires, expires + timedelta(days=1))  # ended: never expires


# ---------------------------------------------------------------------------- the authentication code


def test_the_alphabet_has_no_look_alike_characters():
    for look_alike in "0O1IL":
        assert look_alike not in CODE_ALPHABET
    assert len(set(CODE_ALPHABET)) == len(CODE_ALPHABET) == 31
    assert CODE_ALPHABET == CODE_ALPHABET.upper() and CODE_ALPHABET.isalnum()


def test_a_code_has_at_least_50_bits_of_entropy():
    bits = domain.entropy_bits(CODE_ALPHABET, CODE_LENGTH)
    assert bits == pytest.approx(CODE_LENGTH * math.log2(31))
    assert bits >= domain.MIN_CODE_BITS >= 50
    assert domain.entropy_bits() > 59


def test_new_codes_use_only_the_alphabet_are_grouped_for_reading_and_differ():
    codes = [domain.new_code() for _ in range(2000)]
    for code in codes[:50]:
        assert len(code) == CODE_LENGTH + 2 and code[4] == code[9] == "-"
        assert set(code.replace("-", "")) <= set(CODE_ALPHABET)
    assert len(set(codes)) == len(codes)
    # Every symbol turns up (uniform draws: 24,000 of them, each symbol expected ~774 times).
    assert set("".join(codes).replace("-", "")) == set(CODE_ALPHABET)


@given(st.text(alphabet=CODE_ALPHABET, min_size=CODE_LENGTH, max_size=CODE_LENGTH))
def test_a_code_is_read_in_any_grouping_and_letter_case(raw):
    grouped = f"{raw[:4]}-{raw[4:8]} {raw[8:]}".lower()
    assert domain.normalised_code(grouped) == raw
    assert domain.normalised_code(raw) == raw


@pytest.mark.parametrize("typed", ["", "ABCD", "ABCD-EFGH-JKMN-P", "ABCD-EFGH-JK0N", "ABCD-EFGH-JKLN",
                                   "ABCD-EFGH-JK1N", "ABCD-EFGH-JKÉN"])
def test_what_cannot_be_a_code_is_told_apart_without_a_try(typed):
    assert domain.normalised_code(typed) is None


def test_the_fifth_wrong_code_locks_the_request():
    count, outcomes = 0, []
    for _ in range(MAX_WRONG_CODES):
        wrong = domain.after_wrong_code(count)
        count = wrong.failed_attempts
        outcomes.append(wrong.locks)
    assert MAX_WRONG_CODES == 5
    assert outcomes == [False, False, False, False, True]
    assert "1 try left" in domain.wrong_code_message(domain.after_wrong_code(3))
    assert "locked" in domain.wrong_code_message(domain.after_wrong_code(4))


# ---------------------------------------------------------------------------- who may do what


def test_every_portal_action_needs_manage_cases_in_the_district():
    assert domain.uses_portal(caller("d1", ("manage_cases", "H1")))
    assert domain.uses_portal(caller("d1", ("manage_cases", None)))
    assert not domain.uses_portal(caller("d1", ("caseload_editor", "H1")))
    assert not domain.uses_portal(caller("d1", ("district_admin", None)))  # an admin grants themself Manage Cases
    with pytest.raises(Refused) as refused:
        domain.require_portal(caller("d1", ("caseload_viewer", "H1")))
    assert refused.value.kind == "forbidden"


def case(case_id, district="d1", school="H1", transferred_out=False) -> CaseFacts:
    return CaseFacts(case_id, district, school, "26-000001", transferred_out)


def test_sending_a_case_needs_manage_cases_at_its_school_and_a_case_of_the_district_not_transferred_out():
    ids = [uuid.uuid4() for _ in range(6)]
    known = {ids[0]: case(ids[0]), ids[1]: case(ids[1], school="H2"), ids[2]: case(ids[2], district="d2"),
             ids[3]: case(ids[3], transferred_out=True), ids[4]: case(ids[4], school="E9")}
    who = caller("d1", ("manage_cases", "H1"), ("caseload_viewer", "H2"))
    refused = {uuid.UUID(r["case_id"]): r["rule"] for r in domain.refusals_to_send(who, ids, known)}
    assert refused == {ids[1]: "needs_manage_cases",  # sees H2, does not manage its cases
                       ids[2]: "unknown_case",  # another district's: never said to exist
                       ids[3]: "transferred_out",
                       ids[4]: "unknown_case",  # a school the caller has nothing at
                       ids[5]: "unknown_case"}  # unknown here
    assert domain.refusals_to_send(who, [ids[0]], known) == []


def test_a_case_without_a_school_is_sent_by_manage_cases_district_wide_only():
    cid = uuid.uuid4()
    known = {cid: case(cid, school=None)}
    assert domain.refusals_to_send(caller("d1", ("manage_cases", None)), [cid], known) == []
    assert [r["rule"] for r in domain.refusals_to_send(caller("d1", ("manage_cases", "H1")), [cid], known)] == [
        "needs_manage_cases"]


def test_a_district_sees_its_outgoing_requests_and_those_addressed_to_it_only():
    assert domain.side_of(caller("d1"), "d1", "d2") == domain.SENDER
    assert domain.side_of(caller("d2"), "d1", "d2") == domain.DESTINATION
    assert domain.side_of(caller("d3"), "d1", "d2") is None


def test_destinations_are_other_districts_with_the_toggle_on():
    domain.check_destinations("d1", ["d2", "d3"], ["d1", "d2", "d3"])
    with pytest.raises(Refused) as refused:
        domain.check_destinations("d1", ["d1", "d2", "d4"], ["d1", "d2"])
    assert refused.value.kind == "invalid"
    assert [p["district_id"] for p in refused.value.problems] == ["d1", "d4"]


@pytest.mark.parametrize(("source", "destination", "says"), [(True, False, "in your district"),
                                                             (False, True, "in the sending district"),
                                                             (False, False, "in your district")])
def test_a_request_is_accepted_only_while_both_sides_are_on(source, destination, says):
    domain.check_both_sides_on(True, True)
    with pytest.raises(Refused) as refused:
        domain.check_both_sides_on(source, destination)
    assert refused.value.kind == "conflict" and says in refused.value.message


# ---------------------------------------------------------------------------- histories and choices


def test_a_request_is_ready_once_every_part_of_every_case_arrived():
    a, b = uuid.uuid4(), uuid.uuid4()
    arriving = [CaseHistoryState(a, 2, 2), CaseHistoryState(b, None, 0)]
    assert domain.histories_state(arriving) == domain.ARRIVING
    with pytest.raises(Refused, match="still arriving"):
        domain.check_histories(arriving)
    assert domain.histories_state([CaseHistoryState(a, 2, 1), CaseHistoryState(b, 1, 1)]) == domain.ARRIVING
    complete = [CaseHistoryState(a, 2, 2), CaseHistoryState(b, 1, 1)]
    assert domain.histories_state(complete) == domain.COMPLETE
    domain.check_histories(complete)
    unavailable = [CaseHistoryState(a, 2, 2), CaseHistoryState(b, None, 0, "not a case of the district")]
    assert domain.histories_state(unavailable) == domain.UNAVAILABLE
    with pytest.raises(Refused, match="could not export 1 of the 2"):
        domain.check_histories(unavailable)


def test_once_a_request_ends_its_histories_were_delivered_or_dropped_not_still_arriving():
    # The parts kept for a request go when it ends: what is left says nothing of arriving.
    gone = [CaseHistoryState(uuid.uuid4(), 2, 0)]
    assert domain.histories_state(gone, "accepted") == domain.DELIVERED
    for status in ("rejected", "cancelled", "locked", "expired"):
        assert domain.histories_state(gone, status) == domain.DROPPED
    assert domain.histories_state(gone, "pending") == domain.ARRIVING


def test_accepting_chooses_for_every_case_once_a_roster_student_or_the_transfer_info():
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    student, withdrawn = uuid.uuid4(), uuid.uuid4()
    roster = {student: True, withdrawn: False}
    domain.check_choices([a, b], [(a, student), (b, None)], roster)
    with pytest.raises(Refused) as refused:
        domain.check_choices([a, b], [(a, withdrawn), (a, None), (c, None)], roster)
    problems = {(p["case_id"], p["problem"].split(":")[0].split(" ")[0]) for p in refused.value.problems}
    assert problems == {(str(a), "student_id"), (str(a), "named"), (str(c), "not"), (str(b), "missing")}


def test_each_delivered_part_has_an_event_id_of_its_own_the_same_every_time():
    r, c = uuid.uuid4(), uuid.uuid4()
    ids = {domain.delivery_event_id(r, c, part) for part in (1, 2, 3)}
    assert len(ids) == 3
    assert domain.delivery_event_id(r, c, 2) == domain.delivery_event_id(r, c, 2)
    assert domain.delivery_event_id(uuid.uuid4(), c, 2) not in ids


# ---------------------------------------------------------------------------- suggestions


def test_roster_students_are_suggested_by_name_and_birth_date_best_first():
    person = Person("Ana", "Reyes", date(2011, 4, 3))
    same = (uuid.UUID(int=1), Person("ana", " REYES ", date(2011, 4, 3)))
    family_born = (uuid.UUID(int=2), Person("Anita", "Reyes", date(2011, 4, 3)))
    given_born = (uuid.UUID(int=3), Person("Ana", "Cruz", date(2011, 4, 3)))
    other_birthday = (uuid.UUID(int=4), Person("Ana", "Reyes", date(2012, 1, 1)))
    stranger = (uuid.UUID(int=5), Person("Li", "Park", date(2011, 4, 3)))
    unknown_birth = (uuid.UUID(int=6), Person("Ana", "Reyes", None))
    found = domain.suggestions(person, [stranger, other_birthday, given_born, family_born, unknown_birth, same])
    assert found == [(same[0], "name and birth date"), (family_born[0], "family name and birth date"),
                     (given_born[0], "given name and birth date"), (unknown_birth[0], "name")]


def test_at_most_five_suggestions():
    person = Person("Ana", "Reyes", date(2011, 4, 3))
    many = [(uuid.uuid4(), Person("Ana", "Reyes", date(2011, 4, 3))) for _ in range(9)]
    assert len(domain.suggestions(person, many)) == domain.MAX_SUGGESTIONS == 5


# ---------------------------------------------------------------------------- settings


def test_the_code_window_is_14_days_unless_configured_and_must_be_a_positive_number():
    from services.transfers.options import TransfersOptions

    assert TransfersOptions.from_env({}).code_ttl == timedelta(days=14)
    assert TransfersOptions.from_env({"CASEFLOW_TRANSFERS_CODE_TTL_DAYS": "7"}).code_ttl == timedelta(days=7)
    assert TransfersOptions.from_env({"CASEFLOW_TRANSFERS_CODE_TTL_DAYS": "0.5"}).code_ttl == timedelta(hours=12)
    for bad in ("0", "-1", "nan", "inf", "fortnight", "99999"):
        with pytest.raises(ValueError, match="CASEFLOW_TRANSFERS_CODE_TTL_DAYS"):
            TransfersOptions.from_env({"CASEFLOW_TRANSFERS_CODE_TTL_DAYS": bad})
