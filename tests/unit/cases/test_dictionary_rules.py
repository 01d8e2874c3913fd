"""Seed 004: cases open per the district's Case Management Dictionary, never retroactively,
one open case per student."""

from datetime import UTC, datetime, timedelta

import pytest

from services.cases.domain import DICTIONARY, JOIN, OPEN, RECORD, Entry, case_number, decide

ENABLED_AT = datetime(2026, 9, 8, 9, 0, tzinfo=UTC)
AFTER, BEFORE = ENABLED_AT + timedelta(milliseconds=1), ENABLED_AT - timedelta(milliseconds=1)


@pytest.mark.parametrize("kind", sorted(DICTIONARY))
def test_an_enabled_trigger_opens_a_case_for_a_student_with_none_open(kind):
    assert decide(kind, AFTER, Entry(True, ENABLED_AT), has_open_case=False)[0] == OPEN


@pytest.mark.parametrize("kind", sorted(DICTIONARY))
def test_a_disabled_trigger_opens_nothing(kind):
    assert decide(kind, AFTER, Entry(False, None), has_open_case=False)[0] == RECORD
    assert decide(kind, AFTER, None, has_open_case=False)[0] == RECORD  # a new district starts with all off


@pytest.mark.parametrize("kind", sorted(DICTIONARY))
def test_with_a_case_open_a_trigger_joins_its_timeline(kind):
    assert decide(kind, AFTER, Entry(True, ENABLED_AT), has_open_case=True)[0] == JOIN
    assert decide(kind, AFTER, None, has_open_case=True)[0] == JOIN


def test_cases_are_not_opened_retroactively():
    action, why = decide("create_plan", BEFORE, Entry(True, ENABLED_AT), has_open_case=False)
    assert action == RECORD and "retroactively" in why
    assert decide("create_plan", ENABLED_AT, Entry(True, ENABLED_AT), has_open_case=False)[0] == OPEN
    assert decide("create_plan", AFTER, Entry(True, ENABLED_AT), has_open_case=False)[0] == OPEN


def test_a_case_number_can_be_read_out_on_the_phone():
    assert case_number(2026, 42) == "26-000042"
