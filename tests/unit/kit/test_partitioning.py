import os

from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given
from hypothesis import strategies as st

from services.kit.outbox import partition_for


@given(st.binary(max_size=64), st.integers(min_value=1, max_value=64))
def test_the_relay_puts_a_key_on_the_partition_kafkas_default_partitioner_picks(key, count):
    partitions = list(range(count))
    assert partition_for(key, partitions) == DefaultPartitioner()(key, partitions, partitions)


def test_uuid_keys_spread_over_the_partitions():
    seen = {partition_for(str(os.urandom(16).hex()).encode(), list(range(6))) for _ in range(500)}
    assert seen == set(range(6))
