"""Reading every Kafka record, also one the Kafka client refuses.

aiokafka's record reader (its C extension) raises on a record whose header name is not
UTF-8, and it raises again on every later fetch: the record, and every record after it in
its batch, can never be consumed, and the consume loop fails on it for good. A foreign
producer can write such a record (Kafka itself does not check header names).

`install()` gives aiokafka's fetcher a record reader that reads batches as before and,
when a batch fails part way, reads the rest of that batch again with the format spelt out
here (record batch v2, https://kafka.apache.org/documentation/#recordbatch): each record as
it is, a header name that is not UTF-8 kept with its bytes escaped (surrogateescape), so
the record reaches Caseflow's decode and is dead-lettered there with its reason and its
original key and value. Batches that read well cost one generator step per record.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

import aiokafka.consumer.fetcher as _fetcher
from aiokafka.codec import gzip_decode, lz4_decode, snappy_decode, zstd_decode
from aiokafka.errors import CorruptRecordException
from aiokafka.record.memory_records import MemoryRecords

_BATCH_HEADER = struct.Struct(">qiibIhiqqqhii")  # record batch v2, 61 bytes
_DECOMPRESS = {1: gzip_decode, 2: snappy_decode, 3: lz4_decode, 4: zstd_decode}


def install() -> None:
    """Make aiokafka's consumers read batches through `LenientMemoryRecords` (idempotent)."""
    _fetcher.MemoryRecords = LenientMemoryRecords


@dataclass(frozen=True, slots=True)
class Record:
    """One record as aiokafka's fetcher expects it (offset, timestamp, key, value, headers)."""

    offset: int
    timestamp: int
    timestamp_type: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]
    checksum: None = None


class LenientMemoryRecords:
    """aiokafka's MemoryRecords, whose batches fall back to `read_batch` when they fail."""

    def __init__(self, data: bytes) -> None:
        self._records = MemoryRecords(data)
        self._data = memoryview(data)
        self._pos = 0

    def size_in_bytes(self) -> int:
        return self._records.size_in_bytes()

    def has_next(self) -> bool:
        return self._records.has_next()

    def next_batch(self):
        batch = self._records.next_batch()
        if batch is None:
            return None
        start = self._pos
        (length,) = struct.unpack_from(">i", self._data, start + 8)
        self._pos = start + 12 + length
        return _Batch(batch, self._data[start:self._pos])


class _Batch:
    __slots__ = ("_batch", "_raw")

    def __init__(self, batch, raw: memoryview) -> None:
        self._batch = batch
        self._raw = raw

    def __getattr__(self, name: str):
        return getattr(self._batch, name)

    def __iter__(self) -> Iterator:
        try:
            records = list(self._batch)  # read whole by the client's reader: no Python step per record
        except CorruptRecordException:
            raise
        except Exception:
            if self._raw[16] != 2:  # only the v2 format has headers; anything else is the client's
                raise
            return read_batch(bytes(self._raw))  # every record of the batch, as it is
        return iter(records)


def read_batch(raw: bytes) -> Iterator[Record]:
    """The records of one v2 record batch, header names decoded with surrogateescape.

    Raises CorruptRecordException when the bytes do not follow the format."""
    try:
        (base_offset, _length, _epoch, _magic, _crc, attributes, _last_delta, base_time, max_time,
         _producer, _producer_epoch, _sequence, count) = _BATCH_HEADER.unpack_from(raw, 0)
        body = raw[_BATCH_HEADER.size:]
        codec = attributes & 0x07
        if codec:
            body = _DECOMPRESS[codec](bytes(body))
        log_append_time = bool(attributes & 0x08)
        pos = 0
        for _ in range(count):
            size, pos = _varint(body, pos)
            end = pos + size
            pos += 1  # record attributes, unused
            time_delta, pos = _varint(body, pos)
            offset_delta, pos = _varint(body, pos)
            key, pos = _bytes(body, pos)
            value, pos = _bytes(body, pos)
            header_count, pos = _varint(body, pos)
            headers = []
            for _ in range(header_count):
                name, pos = _bytes(body, pos)
                header_value, pos = _bytes(body, pos)
                headers.append(((name or b"").decode("utf-8", "surrogateescape"), header_value))
            if pos != end:
                raise CorruptRecordException(f"record at offset {base_offset + offset_delta} has {end - pos} bytes left")
            yield Record(
                offset=base_offset + offset_delta,
                timestamp=max_time if log_append_time else base_time + time_delta,
                timestamp_type=1 if log_append_time else 0,
                key=key, value=value, headers=headers,
            )
    except (struct.error, IndexError, KeyError, ValueError) as e:
        raise CorruptRecordException(f"record batch does not follow the v2 format: {e!r}") from None


def _varint(buffer: bytes, pos: int) -> tuple[int, int]:
    """A zigzag varint (Kafka's record fields): the value and the next position."""
    shift = result = 0
    while True:
        b = buffer[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return (result >> 1) ^ -(result & 1), pos
        shift += 7
        if shift > 63:
            raise ValueError("varint out of range")


def _bytes(buffer: bytes, pos: int) -> tuple[bytes | None, int]:
    size, pos = _varint(buffer, pos)
    if size < 0:
        return None, pos
    return bytes(buffer[pos:pos + size]), pos + size
