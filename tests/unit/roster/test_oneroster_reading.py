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
        fast, reference = _by_records(data, chunk), _by_csv_reader(data)  # (blocks end inside lines, CRLFs...)
    finally:
        csv.field_size_limit(before)
    if ["not UTF-8"] in (fast, reference):
        # Bytes that are not UTF-8 refuse the file whole, as a record csv cannot read does: a
        # file with both may be refused for either (csv.reader decodes 8 KiB ahead, CsvRecords a block).
        assert _refused(fast) and _refused(reference)
    else:
        assert fast == reference


def _refused(read: list) -> bool:
    return read == ["not UTF-8"] or (bool(read) and read[-1][0] == "csv.Error")


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


# ---------------------------------------------------------------------- enrollments.csv

def _roster():
    from tests.packages import Roster

    return Roster(
        schools={"s1": "One", "s2": "Two"},
        students={"u1": {"school": "s1", "grade": "03", "given": "A", "family": "B"},
                  "u2": {"school": "s2", "grade": "04", "given": "C", "family": "D"}},
        teachers={"t1": {"school": "s1", "given": "E", "family": "F", "email": "e@x.org"}},
        classes={"c1": {"school": "s1", "type": "homeroom", "title": "H"},
                 "c2": {"school": "s1", "type": "homeroom", "title": "H2"},
                 "c3": {"school": "s2", "type": "scheduled", "title": "S"}},
    )


ENROLMENT_VALUES = {
    "sourcedId": ["e1", "e2", "e3", "e1", " e4", "e\x015", "E6", "", "e\u00a07", "e8\n"],
    "status": ["", "active", "", "Active", " active", "tobedeleted", "gone"],
    "classSourcedId": ["c1", "c2", "c3", "c1 ", "c9", ""],
    "schoolSourcedId": ["", "s1", "s2", " s1", "s9"],
    "userSourcedId": ["u1", "u2", "t1", " u1", "nobody", ""],
    "role": ["student", "teacher", "Student", "aide", "proctor", "administrator", "guardian", " student", ""],
    "primary": ["", "true", "false", "TRUE", "yes"],
    "beginDate": ["", "2026-09-01", "2026-9-1", "2027-01-01T00:00:00Z", " 2026-09-01", "2027-02-30"],
    "endDate": ["", "2027-06-30", "2026-08-01", "bad", "2026-09-01"],
}


@settings(max_examples=150, deadline=None)
@given(rows=st.lists(st.fixed_dictionaries({c: st.sampled_from(v) for c, v in ENROLMENT_VALUES.items()}),
                     max_size=25),
       left_out=st.sets(st.sampled_from(["status", "schoolSourcedId", "primary", "beginDate", "endDate"])),
       mode=st.sampled_from(["bulk", "delta"]))
def test_an_enrolment_row_is_read_alike_the_short_way_and_the_long_way(rows, left_out, mode):
    import tempfile
    from pathlib import Path

    from services.roster.oneroster import Package, Reader
    from tests.packages import HEADERS, write

    with tempfile.TemporaryDirectory() as folder:
        path = write(_roster(), Path(folder), {"enrollments": mode})
        header = [c for c in HEADERS["enrollments"] if c not in left_out]
        with open(path / "enrollments.csv", "w", newline="", encoding="utf-8") as f:
            out = csv.writer(f)
            out.writerow(header)
            out.writerows([[row.get(c, "") for c in header] for row in rows])
        read = []
        for short_way in (True, False):
            with Package(path) as package:
                reader = Reader(package, "d")
                reader.short_way = short_way
                for _ in reader.schools():
                    pass
                for _ in reader.classes():
                    pass
                for _ in reader.users():
                    pass
                records = list(reader.enrollments())
                reader.finish()
                read.append((records, reader.problems, reader.rejected, reader.rows_read, reader.rows_skipped))
    assert read[0] == read[1]


def test_an_enrolment_whose_sourced_id_holds_a_control_character_is_reported_however_well_formed(tmp_path):
    from services.roster.oneroster import Package, Reader
    from tests.packages import HEADERS, write

    path = write(_roster(), tmp_path)
    with open(path / "enrollments.csv", "w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(HEADERS["enrollments"])
        out.writerow(["e\x011", "active", "", "c1", "s1", "u1", "student", "true", "", ""])
    with Package(path) as package:
        reader = Reader(package, "d")
        for read in (reader.schools, reader.classes, reader.users):
            for _ in read():
                pass
        assert list(reader.enrollments()) == []
    assert [(p.line, p.column, p.reason) for p in reader.problems] == [
        (2, "sourcedId", "sourcedId holds a control character (U+0001), which an id cannot hold")]
    assert ("enrollment", "e\x011") in reader.rejected


DEMOGRAPHICS_VALUES = {
    "sourcedId": ["u1", "u2", "u1", "t1", "nobody", " u2", "u\x011", "", "u\u00a02"],
    "status": ["", "active"],
    "birthDate": ["", "2015-03-01", "2015-3-1", "2015-03-01T00:00:00Z", " 2015-03-01", "2015-02-30", "soon"],
}


@settings(max_examples=150, deadline=None)
@given(rows=st.lists(st.fixed_dictionaries({c: st.sampled_from(v) for c, v in DEMOGRAPHICS_VALUES.items()}),
                     max_size=15),
       without_birth_date=st.booleans(), users=st.sampled_from(["bulk", "delta"]))
def test_a_demographics_row_is_read_alike_the_short_way_and_the_long_way(rows, without_birth_date, users):
    import tempfile
    from pathlib import Path

    from services.roster.oneroster import Package, Reader
    from tests.packages import HEADERS, write

    with tempfile.TemporaryDirectory() as folder:
        path = write(_roster(), Path(folder), {"users": users})
        header = [c for c in HEADERS["demographics"] if not (without_birth_date and c == "birthDate")]
        with open(path / "demographics.csv", "w", newline="", encoding="utf-8") as f:
            out = csv.writer(f)
            out.writerow(header)
            out.writerows([[row.get(c, "") for c in header] for row in rows] + [["only", "one"]])
        read = []
        for short_way in (True, False):
            with Package(path) as package:
                reader = Reader(package, "d")
                reader.short_way = short_way
                for _ in reader.schools():
                    pass
                for _ in reader.classes():
                    pass
                for _ in reader.users():
                    pass
                records = list(reader.birth_dates())
                reader.finish()
                read.append((records, reader.problems, reader.rejected, reader.rows_read, reader.rows_skipped))
    assert read[0] == read[1]
