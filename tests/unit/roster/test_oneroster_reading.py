"""Reading a OneRoster file fast reads exactly what csv.reader reads: every record, its
line, and where a file stops being readable."""

from __future__ import annotations

import csv
import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.roster import oneroster
from services.roster.oneroster import CsvRecords

# The characters that make CSV awkward: quotes, separators, each kind of line end, a
# NUL, line separators csv does not split on, and text that is more than one byte.
AWKWARD = st.sampled_from(['a', 'b', 'é', '€', '😀', ',', ',', '"', '\r', '\n', '\r\n', '\r\n', ' ', '\x00',
                           '\u2028', '\x85', '\t'])


def _by_csv_reader(data: bytes) -> list:
    """What Package.values read before CsvRecords: csv.reader through a TextIOWrapper."""
    text = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8-sig", newline="")
    reader = csv.reader(text, strict=True)
    out: list = []
    line = 1
    try:
        for values in reader:
            out.append((line, values))
            line = reader.line_num + 1
    except csv.Error as e:
        out.append(("csv.Error", line, str(e)))
    except UnicodeDecodeError:
        return ["not UTF-8"]  # (the package is refused whole: what was read before does not matter)
    return out


def _by_records(data: bytes, chunk: int = oneroster.CHUNK) -> list:
    records = CsvRecords(io.BytesIO(data), chunk)
    out: list = []
    try:
        out.extend(records)
    except csv.Error as e:
        out.append(("csv.Error", records.line, str(e)))
    except UnicodeDecodeError:
        return ["not UTF-8"]
    return out


@settings(max_examples=600, deadline=None)
@given(parts=st.lists(AWKWARD, max_size=60), bom=st.booleans(), chunk=st.integers(1, 12),
       bad_byte=st.booleans(), limit=st.sampled_from([4, 131072]))
def test_the_fast_reading_reads_every_awkward_file_as_csv_reader_does(parts, bom, chunk, bad_byte, limit):
    data = ("\ufeff" if bom else "").encode() + "".join(parts).encode()
    if bad_byte:
        data = data[: len(data) // 2] + b"\xff" + data[len(data) // 2:]
    before = csv.field_size_limit(limit)  # a line longer than the limit is csv's to refuse
    try:
        assert _by_records(data, chunk) == _by_csv_reader(data)  # (blocks end inside lines, CRLFs, characters)
    finally:
        csv.field_size_limit(before)


@pytest.mark.parametrize("text", [
    "sourcedId,role\r\ne1,student\r\ne2,teacher\r\n",  # CRLF throughout (as csv.writer writes)
    "sourcedId,role\ne1,student\n\ne2,teacher",  # LF, a blank line, no line end at the end
    "sourcedId,role\r\ne1,student\ne2,teacher\r\n",  # CRLF and LF mixed
    "sourcedId,role\re1,student\re2,teacher\r",  # CR alone (old Mac files)
    'sourcedId,role\r\ne1,"stu\r\ndent"\r\ne2,teacher\r\n',  # a quoted line break
    'sourcedId,role\r\ne1,"stu"dent\r\n',  # not CSV: csv.reader's error, on its line
])
def test_the_fast_reading_reads_whole_files_with_one_block_or_many(text):
    data = text.encode()
    expected = _by_csv_reader(data)
    assert _by_records(data) == expected
    assert _by_records(data, 5) == expected
