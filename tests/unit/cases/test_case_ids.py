"""A case a trigger opens takes a time-ordered id (domain.time_ordered_id, UUID version 7)."""

from __future__ import annotations

import os
from datetime import UTC, datetime

import pytest

from services.cases import domain


def test_a_new_case_id_is_a_version_7_uuid_that_carries_its_millisecond():
    at = datetime(2026, 12, 7, 15, 4, 5, 678000, tzinfo=UTC)
    ms = int(at.timestamp() * 1000)
    case_id = domain.time_ordered_id(ms, os.urandom(10))
    assert case_id.version == 7 and case_id.variant == "specified in RFC 4122"
    assert case_id.int >> 80 == ms
    assert datetime.fromtimestamp((case_id.int >> 80) / 1000, UTC) == at


def test_new_case_ids_sort_by_their_moment_and_keep_74_random_bits():
    ids = [domain.time_ordered_id(ms, os.urandom(10)) for ms in range(1_765_000_000_000, 1_765_000_000_050)]
    assert ids == sorted(ids) and len({str(i) for i in ids}) == 50
    lowest, highest = domain.time_ordered_id(5, bytes(10)), domain.time_ordered_id(5, b"\xff" * 10)
    assert str(lowest) == "00000000-0005-7000-8000-000000000000"
    assert str(highest) == "00000000-0005-7fff-bfff-ffffffffffff"
    same_ms = {domain.time_ordered_id(5, os.urandom(10)) for _ in range(1000)}
    assert len(same_ms) == 1000


@pytest.mark.parametrize("ms, random", [(-1, bytes(10)), (1 << 48, bytes(10)), (5, bytes(9)), (5, bytes(11))])
def test_a_moment_outside_48_bits_or_randomness_not_10_bytes_is_refused(ms, random):
    with pytest.raises(ValueError):
        domain.time_ordered_id(ms, random)
