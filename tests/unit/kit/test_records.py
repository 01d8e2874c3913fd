"""services/kit/records.py reads a v2 record batch as aiokafka's own reader does, and also
one aiokafka refuses (a header name that is not UTF-8)."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st
from aiokafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder

from services.kit.records import LenientMemoryRecords, read_batch

CODECS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}

records = st.lists(
    st.tuples(
        st.one_of(st.none(), st.binary(max_size=40)),
        st.one_of(st.none(), st.binary(max_size=200)),
        st.lists(st.tuples(st.text(max_size=10), st.one_of(st.none(), st.binary(max_size=20))), max_size=3),
        st.integers(min_value=0, max_value=10_000),
    ),
    min_size=1, max_size=20,
)


def build(rows, codec: int, base_offset: int = 0) -> bytes:
    builder = DefaultRecordBatchBuilder(magic=2, compression_type=codec, is_transactional=0, producer_id=-1,
                                        producer_epoch=-1, base_sequence=-1, batch_size=10_000_000)
    for offset, (key, value, headers, time_delta) in enumerate(rows):
        builder.append(offset, timestamp=1_700_000_000_000 + time_delta, key=key, value=value, headers=headers)
    data = bytearray(builder.build())
    data[0:8] = base_offset.to_bytes(8, "big")
    return bytes(data)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(rows=records, codec=st.sampled_from(sorted(CODECS.values())), base=st.integers(0, 2**40))
def test_a_batch_reads_as_aiokafka_reads_it(rows, codec, base):
    raw = build(rows, codec, base)
    ours = [(r.offset, r.timestamp, r.key, r.value, list(r.headers)) for r in read_batch(raw)]
    theirs = [(r.offset, r.timestamp, r.key, r.value, list(r.headers)) for r in DefaultRecordBatch(raw)]
    assert ours == theirs


class _NotUtf8Name(str):
    def encode(self, *args, **kwargs) -> bytes:  # noqa: ARG002
        return b"ce_\xff"


def test_a_batch_aiokafka_refuses_part_way_is_read_to_its_end():
    from aiokafka.record.default_records import _DefaultRecordBatchBuilderPy

    builder = _DefaultRecordBatchBuilderPy(magic=2, compression_type=CODECS["zstd"], is_transactional=0,
                                           producer_id=-1, producer_epoch=-1, base_sequence=-1, batch_size=10**6)
    builder.append(0, timestamp=1, key=b"a", value=b"1", headers=[])
    builder.append(1, timestamp=2, key=b"b", value=b"2", headers=[(_NotUtf8Name("x"), b"v")])
    builder.append(2, timestamp=3, key=b"c", value=b"3", headers=[("ce_id", None)])
    batch = LenientMemoryRecords(bytes(builder.build())).next_batch()
    read = [(r.offset, r.key, r.value, list(r.headers)) for r in batch]
    assert read == [
        (0, b"a", b"1", []),
        (1, b"b", b"2", [("ce_\udcff", b"v")]),  # the name's bytes kept, escaped
        (2, b"c", b"3", [("ce_id", None)]),
    ]
