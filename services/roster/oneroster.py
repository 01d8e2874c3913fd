"""Reading a OneRoster CSV package (1.1, and 1.2 as ClassLink and Microsoft School Data
Sync export it), without I/O beyond the package itself.

A package is a folder or a .zip holding manifest.csv and the entity files. Files are
streamed row by row (never the whole package in memory); headers may come in any order
and any letter case; UTF-8 with or without BOM; CRLF or LF; quoted fields with commas,
quotes and newlines; extension columns (metadata.*) are ignored.

A package that cannot be read as a whole is refused with one clear message
(PackageRejected): no manifest, a file the manifest declares missing, a file that is not
UTF-8 (with the line of the first bad byte), not CSV, without a column the reader needs
(saying when the header looks `;`-separated), an unsafe zip. Nothing of it is read row by
row. Each row of a readable package is checked on its own and against the files it
refers to. A bad row becomes a Problem (file, line, sourcedId, column, value, reason) and
is skipped; since its sourcedId was in the file, what the roster holds for that record is
kept as it is (`Reader.rejected`): a record that is present but rejected is not absent.
Unambiguous spellings (grade `3`, role `Teacher`, status `Active`) are read and said once
per file, as a warning.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import difflib
import io
import operator
import sys
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path, PurePosixPath

from contracts.envelope import not_an_email, not_an_id
from services.roster.domain import (
    ENROLLMENT_ROLES,
    OTHER_ROLES,
    ROLE_OF,
    STAFF_ROLES,
    class_id_text,
    class_span,
    enrolment_role_fits,
    login_email,
    normalise_choice,
    normalise_grade,
    parse_file_date,
    staff_id_text,
    student_id_text,
)

MODES = ("bulk", "delta", "absent")
ENTITY_FILES = ("orgs", "academicSessions", "courses", "classes", "roles", "users", "enrollments", "demographics",
                "userProfiles")
USER_ROLES_11 = ("student", "teacher", "aide", "administrator", "guardian", "parent", "proctor", "relative")
USER_ROLES_12 = tuple(ROLE_OF)
_USER_ROLES_ANY = tuple(dict.fromkeys(USER_ROLES_11 + USER_ROLES_12))  # each once, 1.1's first

# The columns the reader needs in each file (OneRoster 1.1 and 1.2 CSV bindings); a file
# without one of them is refused whole. 1.2's users.csv carries no role nor orgs: roles.csv does.
REQUIRED = {
    "orgs": ("sourcedId", "name", "type"),
    "academicSessions": ("sourcedId", "type", "startDate", "endDate"),
    "courses": ("sourcedId",),
    "classes": ("sourcedId", "title", "classType", "schoolSourcedId"),
    "roles": ("userSourcedId", "roleType", "role", "orgSourcedId"),
    "users": ("sourcedId", "givenName", "familyName", "grades"),
    "users@1.1": ("sourcedId", "role", "orgSourcedIds", "givenName", "familyName", "grades"),
    "enrollments": ("sourcedId", "classSourcedId", "userSourcedId", "role"),
    "demographics": ("sourcedId",),
    "userProfiles": (),
}
# The columns the reader reads in each file: a header with a near miss of one of them (and
# without it) is refused whole, since every row would be read without it.
READ_BY_FILE = {
    "orgs": {"sourcedId", "status", "name", "type", "identifier", "parentSourcedId"},
    "academicSessions": {"sourcedId", "status", "title", "type", "startDate", "endDate", "parentSourcedId"},
    "courses": {"sourcedId", "status", "title", "orgSourcedId"},
    "classes": {"sourcedId", "status", "title", "classCode", "classType", "schoolSourcedId", "termSourcedIds",
                "courseSourcedId", "periods"},
    "users": {"sourcedId", "status", "orgSourcedIds", "role", "givenName", "familyName", "identifier", "email",
              "grades", "primaryOrgSourcedId"},
    "roles": {"userSourcedId", "roleType", "role", "orgSourcedId", "beginDate", "endDate"},
    "enrollments": {"sourcedId", "status", "classSourcedId", "schoolSourcedId", "userSourcedId", "role", "primary",
                    "beginDate", "endDate"},
    "demographics": {"sourcedId", "status", "birthDate"},
}
# Every column of the two bindings, so a header in another letter case is read as the standard one.
KNOWN_COLUMNS = {
    "sourcedId", "status", "dateLastModified", "name", "type", "identifier", "parentSourcedId", "title", "startDate",
    "endDate", "schoolYear", "courseCode", "grades", "orgSourcedId", "subjects", "subjectCodes", "classCode",
    "classType", "location", "schoolSourcedId", "termSourcedIds", "periods", "courseSourcedId", "enabledUser",
    "orgSourcedIds", "role", "username", "userIds", "givenName", "familyName", "middleName", "email", "sms", "phone",
    "agentSourcedIds", "password", "classSourcedId", "userSourcedId", "primary", "beginDate", "birthDate", "sex",
    "roleType", "userProfileSourcedId", "primaryOrgSourcedId", "userMasterIdentifier", "preferredGivenName",
    "preferredMiddleName", "preferredFamilyName", "pronouns", "resourceSourcedIds", "gradeLevel",
    "schoolYearSourcedId", "americanIndianOrAlaskaNative", "asian", "blackOrAfricanAmerican",
    "nativeHawaiianOrOtherPacificIslander", "white", "demographicRaceTwoOrMoreRaces", "hispanicOrLatinoEthnicity",
    "countryOfBirthCode", "stateOfBirthAbbreviation", "cityOfBirth", "publicSchoolResidenceStatus", "profileType",
    "vendorId", "applicationId", "description", "credentialType", "resourceSourcedId", "courseCode",
}
_CANONICAL = {c.casefold(): c for c in KNOWN_COLUMNS}


class PackageRejected(Exception):
    """The whole package is refused; nothing is changed."""


@dataclass(frozen=True, slots=True)
class Problem:
    severity: str  # "error": the row was skipped; "warning": kept, but someone should look
    file: str
    line: int | None
    column: str | None
    value: str | None
    reason: str
    source_id: str | None = None  # the record's sourcedId: how a district finds the row in its SIS


@dataclass(frozen=True)
class Limits:
    max_zip_bytes: int = 2 * 1024**3  # the archive itself
    max_unpacked_bytes: int = 20 * 1024**3  # all members, uncompressed
    max_ratio: int = 200  # uncompressed / compressed, per member: beyond it, a zip bomb


# ---------------------------------------------------------------------------- the package


class Package:
    """An opened, readable package: the manifest's modes and version, and a row stream per
    file. Opening it checks everything that can be checked without reading rows: the
    archive, the manifest, the declared files and each file's header."""

    def __init__(self, path: Path, limits: Limits = Limits(), name: str | None = None) -> None:
        self.path = Path(path)
        self.name = name or self.path.name  # how messages name it
        self._zip: zipfile.ZipFile | None = None
        self._members: dict[str, str] = {}
        self._headers: dict[str, list[str]] = {}
        self.renamed_columns: dict[str, dict[str, str]] = {}  # file -> {as written: as read}
        if self.path.is_dir():
            self._members = {p.name: str(p) for p in self.path.iterdir() if p.is_file() and p.suffix == ".csv"}
        elif zipfile.is_zipfile(self.path):
            self._zip = _open_safe_zip(self.path, limits)
            self._members = {PurePosixPath(i.filename).name: i.filename for i in self._zip.infolist()
                             if not i.is_dir() and i.filename.endswith(".csv")}
        elif self.path.exists():
            raise PackageRejected(f"{self.name} is neither a folder nor a zip archive")
        else:
            raise PackageRejected(f"{self.name} does not exist")
        try:
            if "manifest.csv" not in self._members:
                raise PackageRejected("the package has no manifest.csv")
            self.version = "1.1"
            self.modes = self._read_manifest()
            for entity in ENTITY_FILES:
                if self.modes[entity] != "absent" and f"{entity}.csv" not in self._members:
                    raise PackageRejected(f"manifest.csv says file.{entity} is {self.modes[entity]}, "
                                          f"but the package has no {entity}.csv")
            if self.version == "1.2" and self.modes["users"] == "bulk" and self.modes["roles"] == "absent":
                raise PackageRejected("a OneRoster 1.2 package sending users.csv in bulk needs roles.csv "
                                      "(each user's roles and orgs); the manifest says file.roles is absent")
            for entity in ENTITY_FILES:
                if self.modes[entity] != "absent":
                    self._check_header(entity)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()

    def __enter__(self) -> Package:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def mode(self, entity: str) -> str:
        return self.modes[entity]

    def _open(self, file: str):
        return self._zip.open(self._members[file]) if self._zip else open(self._members[file], "rb")  # noqa: SIM115

    def rows(self, entity: str) -> Iterator[tuple[int, dict[str, str]]]:
        """(line, row) for each record of a file; line is where the record starts (header = 1)."""
        records = self.values(entity)
        _, header = next(records)
        for line, values in records:
            yield line, values if isinstance(values, dict) else dict(zip(header, values))

    def values(self, entity: str) -> Iterator[tuple[int, list[str] | dict[str, str]]]:
        """rows, without a dict per row (for the largest files): first (1, the header as
        read), then (line, values in the header's order) for each record as wide as the
        header, and (line, {"__width__": why, "sourcedId": ...}) for one that is not."""
        file = f"{entity}.csv"
        raw = self._open(file)
        records = CsvRecords(raw)
        try:
            stream = iter(records)
            first = next(stream, None)
            if first is None:
                raise PackageRejected(f"{file} is empty: it has no header row")
            header = [self._column(file, h) for h in first[1]]
            yield 1, header
            width = len(header)
            at = header.index("sourcedId") if "sourcedId" in header else width
            for line, values in stream:
                if values:  # blank lines are not records
                    if len(values) != width:
                        yield line, {"__width__": f"{len(values)} fields where the header has {width}",
                                     "sourcedId": values[at] if at < len(values) else ""}
                    else:
                        yield line, values
        except UnicodeDecodeError:
            raise PackageRejected(self._not_utf8(file)) from None
        except csv.Error as e:
            raise PackageRejected(f"{file} is not readable CSV near line {records.line}: {e}") from None
        except DAMAGED as e:
            raise _damaged(file, e) from None
        finally:
            with contextlib.suppress(*DAMAGED):  # closing a damaged member checks it again
                raw.close()

    def _column(self, file: str, written: str) -> str:
        name = written.strip()
        standard = _CANONICAL.get(name.casefold(), name)
        if standard != name:
            self.renamed_columns.setdefault(file, {})[written] = standard
        return standard

    def _check_header(self, entity: str) -> None:
        """Refuse a file whose header lacks a column the reader needs, saying why if it can."""
        file = f"{entity}.csv"
        try:
            with self._open(file) as raw:
                first = raw.readline(1024 * 1024)
        except DAMAGED as e:
            raise _damaged(file, e) from None
        try:
            text = first.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise PackageRejected(self._not_utf8(file)) from None
        try:
            header = [self._column(file, h) for h in next(csv.reader([text.rstrip("\r\n")]))]
        except (StopIteration, csv.Error):
            raise PackageRejected(f"{file} is empty: it has no header row") from None
        if len(set(header)) != len(header):
            raise PackageRejected(f"{file} repeats a column in its header")
        for written, meant in _misspelt(entity, header):
            raise PackageRejected(
                f"{file} has a column {written} where OneRoster names one {meant}: rename it and send the file again "
                f"(read as it is, every row's {meant} would be empty)")
        key = f"{entity}@1.1" if entity == "users" and self.version != "1.2" else entity
        missing = [c for c in REQUIRED[key] if c not in header]
        if missing:
            hint = _separator_hint(text)
            columns = ", ".join(missing)
            raise PackageRejected(
                f"{file} has no column {columns}{hint}" if hint else
                f"{file} has no column {columns}" + (
                    "; OneRoster 1.2 exports (users.csv without role and orgSourcedIds, with roles.csv) need "
                    "oneroster.version 1.2 in manifest.csv" if entity == "users" and "role" in missing else ""))
        self._headers[entity] = header

    def _not_utf8(self, file: str) -> str:
        """Where the first byte that is not UTF-8 is: the physical line, and the byte in it."""
        decoder = codecs.getincrementaldecoder("utf-8")()
        with contextlib.suppress(*DAMAGED), self._open(file) as raw:
            for number, line in enumerate(raw, start=1):
                try:
                    decoder.decode(line.removeprefix(b"\xef\xbb\xbf") if number == 1 else line)
                except UnicodeDecodeError as e:
                    return (f"{file} is not UTF-8: line {number} has a byte that is not (byte {e.start + 1} of the "
                            f"line); save the file as UTF-8 and send it again")
        return f"{file} is not UTF-8; save it as UTF-8 and send it again"

    def _read_manifest(self) -> dict[str, str]:
        modes = dict.fromkeys(ENTITY_FILES, "absent")
        for line, row in self.rows("manifest"):
            name, value = (row.get("propertyName") or "").strip(), (row.get("value") or "").strip().lower()
            if name == "oneroster.version":
                if value not in ("1.0", "1.1", "1.2"):
                    raise PackageRejected(f"manifest.csv line {line}: oneroster.version is {value!r}; "
                                          f"expected 1.1 or 1.2")
                self.version = "1.2" if value == "1.2" else "1.1"
            elif name.startswith("file."):
                entity = name.removeprefix("file.")
                if entity in modes:
                    if value not in MODES:
                        raise PackageRejected(f"manifest.csv line {line}: {name} is {value!r}; "
                                              f"expected bulk, delta or absent")
                    modes[entity] = value
        if all(modes[e] == "absent" for e in ENTITY_FILES):
            raise PackageRejected("manifest.csv names no file: expected file.users, file.enrollments ... = bulk or delta")
        return modes

    def district_orgs(self) -> list[tuple[str, str, str, int]]:
        """(sourcedId, identifier, name, line) of each org of type district in orgs.csv."""
        if self.modes["orgs"] == "absent":
            return []
        return [(r.get("sourcedId", "").strip(), (r.get("identifier") or "").strip(), (r.get("name") or "").strip(),
                 line) for line, r in self.rows("orgs") if (r.get("type") or "").strip().casefold() == "district"]


# Characters of a file decoded and split at a time (CsvRecords).
CHUNK = 1024 * 1024


class CsvRecords:
    """The records of a CSV byte stream (UTF-8, with or without a BOM), each as (line, fields)
    where line is the physical line it starts on (1 for the header) and a blank line is a
    record of no fields: exactly what csv.reader(strict=True) reads through
    io.TextIOWrapper(stream, "utf-8-sig", newline=""), and as fast as splitting allows.

    A stretch of text without a quote, without a carriage return but in CRLF and without a
    line longer than csv's field limit holds one record per line and one field per comma:
    it is split on its line feeds and commas (str.split, several times csv.reader's speed).
    From the first stretch that has one of them, csv.reader reads the rest of the file.
    Raises UnicodeDecodeError (not UTF-8) and csv.Error (`line` is then where the record it
    could not read starts)."""

    def __init__(self, raw, chunk: int = CHUNK) -> None:
        self.raw = raw
        self.chunk = chunk  # characters (bytes) decoded at a time
        self.line = 1  # where the next record starts

    def __iter__(self) -> Iterator[tuple[int, list[str]]]:
        decoder = codecs.getincrementaldecoder("utf-8-sig")()
        limit = csv.field_size_limit()
        tail = ""
        while True:
            block = self.raw.read(self.chunk)
            text = tail + decoder.decode(block, final=not block)
            tail = ""
            if block:
                cut = text.rfind("\n") + 1
                text, tail = text[:cut], text[cut:]
            if '"' in text or len(tail) > limit:
                break
            if "\r" not in text:
                lines = text.split("\n")
            else:
                lines = text.split("\r\n")
                ends = len(lines) - 1
                if text.count("\r") != ends or text.count("\n") != ends:  # not CRLF throughout
                    if text.count("\r") != text.count("\r\n"):  # a carriage return alone ends a line
                        break
                    lines = text.replace("\r\n", "\n").split("\n")
            if not lines[-1]:
                lines.pop()  # after the last line feed
            if lines and max(map(len, lines)) > limit:
                break
            line = self.line
            for text_line in lines:
                yield line, text_line.split(",") if text_line else []
                line += 1
            self.line = line
            if not block:
                return
        yield from self._by_csv(text, tail, decoder)

    def _by_csv(self, text: str, tail: str, decoder) -> Iterator[tuple[int, list[str]]]:
        def lines() -> Iterator[str]:  # as TextIOWrapper(newline="") reads them: CR, LF or CRLF end a line
            yield from io.StringIO(text, newline="")
            pending = tail
            while block := self.raw.read(self.chunk):
                chunk = pending + decoder.decode(block)
                # (up to the last line end that cannot be the CR of a CRLF split between blocks)
                cut = max(chunk.rfind("\n"), chunk.rfind("\r", 0, len(chunk) - 1)) + 1
                yield from io.StringIO(chunk[:cut], newline="")
                pending = chunk[cut:]
            yield from io.StringIO(pending + decoder.decode(b"", final=True), newline="")

        before = self.line - 1  # lines already read
        reader = csv.reader(lines(), strict=True)
        for fields in reader:
            line = self.line
            self.line = before + reader.line_num + 1
            yield line, fields



def _separator_hint(header_line: str) -> str:
    counts = {sep: header_line.count(sep) for sep in (";", "\t", "|")}
    sep, n = max(counts.items(), key=lambda kv: kv[1])
    if n and n >= header_line.count(","):
        shown = {"\t": "tab"}.get(sep, f"`{sep}`")
        return f"; its header looks {shown}-separated (OneRoster files are comma-separated)"
    return ""


# What reading a zip member raises when the archive's headers do not match its contents
# (sizes, CRC) or its compressed data is damaged.
DAMAGED = (zipfile.BadZipFile, zlib.error, EOFError)


def _damaged(file: str, error: Exception) -> PackageRejected:
    return PackageRejected(f"{file} in the archive is damaged ({error or type(error).__name__}): the archive's "
                           f"headers do not match what it holds; make the zip again and send it")


def _open_safe_zip(path: Path, limits: Limits) -> zipfile.ZipFile:
    size = path.stat().st_size
    if size > limits.max_zip_bytes:
        raise PackageRejected(f"the archive is {size:,} bytes; the limit is {limits.max_zip_bytes:,}")
    try:
        archive = zipfile.ZipFile(path)
    except DAMAGED as e:
        raise PackageRejected(f"the archive is damaged ({e}); make the zip again and send it") from None
    total = 0
    for info in archive.infolist():
        name = PurePosixPath(info.filename)
        if name.is_absolute() or ".." in name.parts or "\\" in info.filename or info.filename.startswith("/"):
            archive.close()
            raise PackageRejected(f"unsafe path in the archive: {info.filename!r}")
        if (info.external_attr >> 16) & 0o170000 == 0o120000:
            archive.close()
            raise PackageRejected(f"the archive holds a symbolic link: {info.filename!r}")
        if info.flag_bits & 0x1:
            archive.close()
            raise PackageRejected(f"{info.filename} is encrypted")
        total += info.file_size
        if info.compress_size and info.file_size / info.compress_size > limits.max_ratio and info.file_size > 1024**2:
            archive.close()
            raise PackageRejected(f"{info.filename} expands {info.file_size // info.compress_size}x: refused as a zip bomb")
    if total > limits.max_unpacked_bytes:
        archive.close()
        raise PackageRejected(f"the archive unpacks to {total:,} bytes; the limit is {limits.max_unpacked_bytes:,}")
    return archive


def _misspelt(entity: str, header: list[str]) -> list[tuple[str, str]]:
    """(written, meant) for each column that is no OneRoster column but nearly one the
    reader reads in this file and the header lacks ("grade" for grades, "emial" for
    email): read as it is, that column would be read empty in every row. Extension
    columns (metadata.*) are left."""
    absent = READ_BY_FILE.get(entity, set()) - set(header)
    out = []
    for column in header:
        if column in KNOWN_COLUMNS or column.casefold().startswith("metadata."):
            continue
        meant = difflib.get_close_matches(column, absent, n=1, cutoff=0.8) or difflib.get_close_matches(
            column.casefold(), {c.casefold(): c for c in absent}, n=1, cutoff=0.8)
        if meant:
            out.append((column, {c.casefold(): c for c in absent}.get(meant[0], meant[0])))
    return out


# What a rejected row said, named as an accepted row's is (the reconcile view compares them).
_SAID_AS = {  # entity -> file column -> (name, is a list)
    "user": {"grades": ("grade", False), "orgSourcedIds": ("school_ids", True)},
    "class": {"schoolSourcedId": ("school_id", False), "classType": ("class_type", False), "grades": ("grades", True)},
}


def _again(first_line: int) -> str:
    return f"duplicate sourcedId: already on line {first_line} (this row is skipped)"


# --------------------------------------------------------------------- validated records


@dataclass(slots=True)
class Known:
    """Ids a row may refer to: those in this package, plus (for files not sent in bulk, and
    for rows of this package that were rejected) those the roster already holds. Filled as
    the files are read, in dependency order."""

    schools: set[str] = field(default_factory=set)
    other_orgs: set[str] = field(default_factory=set)  # the district itself, departments...
    courses: set[str] = field(default_factory=set)
    sessions: dict[str, tuple[date | None, date | None]] = field(default_factory=dict)  # term -> (start, end)
    classes: dict[str, tuple[str, str]] = field(default_factory=dict)  # source_id -> (school_id, class_type)
    users: dict[str, str] = field(default_factory=dict)  # source_id -> role (student, teacher, ..., proctor)
    user_schools: dict[str, str | frozenset[str]] = field(default_factory=dict)  # students' schools (a warning)


@dataclass(slots=True)
class Rejected:
    """A row whose sourcedId is in the file but which was not read: what the roster holds for
    it stays as it is. `data` is what the row said (no names), for the reconcile view."""

    entity: str  # org, session, class, user, enrollment, demographic
    source_id: str
    line: int
    data: dict
    reasons: list[str]


class Reader:
    """Validates a package's files in dependency order, yielding records ready to stage, and
    collecting problems. One Reader per import."""

    # Whether a well-formed enrolment or demographics row takes the short way (a test sends
    # every row the long way, which checks each column by name, and expects the very same reading).
    short_way = True

    def __init__(self, package: Package, district_id: str, held: Known | None = None, max_problems: int = 100_000):
        self.package = package
        self.district_id = district_id
        self.known = held or Known()
        self.problems: list[Problem] = []
        self.problem_count = 0
        self.max_problems = max_problems
        self.rejected: dict[tuple[str, str], Rejected] = {}  # (entity, sourcedId) -> the rejected row
        self.rows_read: dict[str, int] = {}  # file -> records
        self.rows_skipped: dict[str, set[int]] = {}  # file -> lines skipped for an error
        self._normalised: dict[tuple[str, str, str, str], list] = {}  # (file, column, raw, read) -> [n, line, sid]
        self._ignored: dict[tuple[str, str], list] = {}  # (file, why) -> [n, line, sid]
        self.user_roles: dict[str, tuple[str, list[str]]] = {}  # 1.2: user -> (role, orgs) from roles.csv
        # Courses are not kept by the roster: a class's course is checked only against a bulk courses file.
        self.check_courses = package.mode("courses") == "bulk"
        for file, renamed in package.renamed_columns.items():
            for written, standard in renamed.items():
                self._problem(file.removesuffix(".csv"), 1, standard, written,
                              f"column {written!r} read as {standard!r}", severity="warning")

    @property
    def rows_skipped_count(self) -> int:
        return sum(len(lines) for lines in self.rows_skipped.values())

    # Each method yields tuples in the column order of the staging table the importer copies into.

    def schools(self) -> Iterator[tuple]:
        """orgs.csv: schools (other org types are accepted and remembered, not kept)."""
        file = "orgs"
        for line, row, sid, status in self._records(file):
            kind = self._choice(file, line, row, "type", ("school", "district", "department", "local", "state",
                                                           "national"), sid)
            if kind is None or status is None:
                self._reject("org", sid, line, row, ("type", "status"))
                continue
            if kind != "school":
                self.known.other_orgs.add(sid)
                continue
            if status == "tobedeleted":
                self.known.schools.discard(sid)
                yield (sid, None, None, status)
                continue
            name = self._required(file, line, row, "name", sid)
            if name is None:
                self._reject("org", sid, line, row, ("type", "status"))
                continue
            self.known.schools.add(sid)
            yield (sid, name, _blank(row.get("identifier")), status)

    def sessions(self) -> Iterator[tuple]:
        """academicSessions.csv: terms and school years, whose dates give a class its dates."""
        file = "academicSessions"
        for line, row, sid, status in self._records(file):
            if status == "tobedeleted":
                self.known.sessions.pop(sid, None)
                yield (sid, None, None, None, None, status)
                continue
            kind = self._choice(file, line, row, "type", ("schoolYear", "term", "semester", "gradingPeriod"), sid)
            start = self._date(file, line, row, "startDate", sid, required=True)
            end = self._date(file, line, row, "endDate", sid, required=True)
            if status is None or kind is None or start is False or end is False:
                self._reject("session", sid, line, row, ("type", "startDate", "endDate", "status"))
                continue
            if start and end and end < start:
                self._problem(file, line, "endDate", row.get("endDate"), "ends before it starts", sid=sid)
                self._reject("session", sid, line, row, ("startDate", "endDate"))
                continue
            self.known.sessions[sid] = (start, end)
            yield (sid, kind, start, end, _blank(row.get("parentSourcedId")), status)

    def courses(self) -> Iterator[tuple]:
        file = "courses"
        for line, row, sid, status in self._records(file):
            if status is None:
                continue
            org = _blank(row.get("orgSourcedId"))
            if org is not None and org not in self.known.schools and not self._is_district_org(org):
                self._problem(file, line, "orgSourcedId", org, "refers to an unknown org", sid=sid)
                continue
            if status == "tobedeleted":
                self.known.courses.discard(sid)
            else:
                self.known.courses.add(sid)
            yield (sid,)

    def classes(self) -> Iterator[tuple]:
        file = "classes"
        for line, row, sid, status in self._records(file):
            cid = class_id_text(self.district_id, sid)
            if status == "tobedeleted":
                self.known.classes.pop(sid, None)
                yield (cid, sid, None, None, None, None, None, None, None, None, None, None, status, line)
                continue
            title = self._required(file, line, row, "title", sid)
            class_type = self._choice(file, line, row, "classType", ("homeroom", "scheduled"), sid)
            school = self._required(file, line, row, "schoolSourcedId", sid)
            grades = self._grades(file, line, row, "grades", sid)
            ok = None not in (status, title, class_type, school, grades)
            if ok and school not in self.known.schools:
                self._problem(file, line, "schoolSourcedId", school, self._unknown("org", school), sid=sid)
                ok = False
            course = _blank(row.get("courseSourcedId"))
            if ok and course is not None and self.check_courses and course not in self.known.courses:
                self._problem(file, line, "courseSourcedId", course, "refers to an unknown course", sid=sid)
                ok = False
            if not ok:
                self._reject("class", sid, line, row, ("schoolSourcedId", "classType", "title", "grades", "status"))
                continue
            terms = _list(row.get("termSourcedIds"))
            unknown_terms = [t for t in terms if t not in self.known.sessions]
            if unknown_terms and self.package.mode("academicSessions") != "absent":
                self._problem(file, line, "termSourcedIds", ",".join(unknown_terms),
                              "refers to an unknown academic session: the class's dates come from its enrolments",
                              severity="warning", sid=sid)
            starts, ends = class_span(terms, self.known.sessions)
            self.known.classes[sid] = (school, class_type)
            yield (cid, sid, school, class_type, title, _blank(row.get("classCode")), course, grades,
                   _list(row.get("periods")), terms, starts, ends, status, line)

    def roles(self) -> None:
        """roles.csv (OneRoster 1.2): each user's roles at orgs. The primary role is the user's
        role; their orgs are every org of that kind of role (a student's schools)."""
        file = "roles"
        collected: dict[str, list[tuple[str, str, str]]] = {}
        for line, row in self._rows(file):
            user = self._required(file, line, row, "userSourcedId", _blank(row.get("sourcedId")))
            status = self._status(file, line, row, user)
            role = self._choice(file, line, row, "role", USER_ROLES_12, user)
            kind = self._choice(file, line, row, "roleType", ("primary", "secondary"), user)
            org = self._required(file, line, row, "orgSourcedId", user)
            if None in (user, status, role, kind, org) or status == "tobedeleted":
                continue
            collected.setdefault(user, []).append((kind, ROLE_OF[role], org))
        for user, rows in collected.items():
            primary = [r for r in rows if r[0] == "primary"] or rows
            role = primary[0][1]
            same_kind = [org for _, r, org in rows if (r == "student") == (role == "student")]
            self.user_roles[user] = (role, list(dict.fromkeys(same_kind)))

    def users(self) -> Iterator[tuple[str, tuple]]:
        """users.csv: ("student", row) or ("staff", row); guardians, proctors and other roles
        are remembered (their enrolments are not "unknown users") but not kept."""
        file = "users"
        v12 = self.package.version == "1.2"
        for line, row, sid, status in self._records(file):
            if v12:
                role, orgs = self.user_roles.get(sid, (None, []))
                if role is None and status != "tobedeleted" and self.package.mode("roles") != "absent":
                    self._problem(file, line, "sourcedId", sid, "has no role in roles.csv", sid=sid)
                    self._reject("user", sid, line, row, ("status",))
                    continue
                if role is None:
                    role = self.known.users.get(sid)
                    if role is None and status != "tobedeleted":
                        self._problem(file, line, "sourcedId", sid, "has no role: roles.csv is not in this package "
                                      "and the roster does not hold this user", sid=sid)
            else:
                raw_role = self._choice(file, line, row, "role", _USER_ROLES_ANY, sid)
                role = ROLE_OF.get(raw_role) if raw_role else None
                orgs = _list(row.get("orgSourcedIds"))
            if status == "tobedeleted":
                self.known.users.pop(sid, None)
                kept = role if role is not None else None
                if kept == "student":
                    yield "student", (student_id_text(self.district_id, sid), sid, None, None, None, None, None,
                                      None, None, status, line)
                elif kept in STAFF_ROLES:
                    yield "staff", (staff_id_text(self.district_id, sid), sid, kept, None, None, None, None, None,
                                    status, line)
                continue
            given = self._required(file, line, row, "givenName", sid)
            family = self._required(file, line, row, "familyName", sid)
            if None in (status, role, given, family):
                self._reject("user", sid, line, row, ("role", "orgSourcedIds", "grades", "status"))
                continue
            if role in OTHER_ROLES:
                self.known.users[sid] = role
                continue
            if not orgs:
                self._problem(file, line, "orgSourcedIds", "", "missing required field orgSourcedIds", sid=sid)
                self._reject("user", sid, line, row, ("role", "orgSourcedIds", "grades", "status"))
                continue
            unknown = [o for o in orgs if o not in self.known.schools and not self._is_district_org(o)]
            if unknown:
                self._problem(file, line, "orgSourcedIds", ",".join(unknown), self._unknown("org", unknown[0]),
                              sid=sid)
                self._reject("user", sid, line, row, ("role", "orgSourcedIds", "grades", "status"))
                continue
            raw_email = row.get("email")
            email = login_email(raw_email)
            if email is not None and (problem := not_an_email(email)):
                self._problem(file, line, "email", email, f"is not an email address: it {problem}", sid=sid)
                self._reject("user", sid, line, row, ("role", "orgSourcedIds", "grades", "status"))
                continue
            schools = (orgs if len(orgs) == 1 and orgs[0] in self.known.schools else
                       list(dict.fromkeys(o for o in orgs if o in self.known.schools)))
            if role == "student":
                grades = self._grades(file, line, row, "grades", sid)
                if grades is not None and len(grades) != 1:
                    self._problem(file, line, "grades", row.get("grades"), "a student needs exactly one grade",
                                  sid=sid)
                    grades = None
                if grades is not None and not schools:
                    self._problem(file, line, "orgSourcedIds", row.get("orgSourcedIds"), "a student needs a school",
                                  sid=sid)
                    grades = None
                if grades is None:
                    self._reject("user", sid, line, row, ("role", "orgSourcedIds", "grades", "status"))
                    continue
                primary = _blank(row.get("primaryOrgSourcedId"))
                self.known.users[sid] = role
                # A city has a million students: one interned school id each, a set only for the few in two.
                self.known.user_schools[sid] = sys.intern(schools[0]) if len(schools) == 1 else frozenset(schools)
                yield "student", (student_id_text(self.district_id, sid), sid, schools,
                                  primary if primary in schools else None, grades[0], given, family, email,
                                  _blank(row.get("identifier")), status, line)
            else:
                if email is None and role == "teacher":
                    self._problem(file, line, "email", "", "teacher without email: unmatched, so no caseload",
                                  severity="warning", sid=sid)
                self.known.users[sid] = role
                yield "staff", (staff_id_text(self.district_id, sid), sid, role, given, family, email,
                                _blank(row.get("identifier")), schools, status, line)

    def birth_dates(self) -> Iterator[tuple]:
        """demographics.csv: (sourcedId, birth date, read): a row whose birthDate cannot be
        read keeps the birth date the roster holds (read false); a blank one clears it."""
        file = "demographics"
        seen: dict[str, int] = {}  # sourcedId -> the line it was first read on
        born_on: dict[str, date | None] = {}  # a birth date as written -> as read (each read once)
        # The rows as lists (as enrollments' are): a dict only for a sourcedId to report on.
        records = self.package.values(file)
        _, header = next(records)
        width = len(header)
        at_sid, at_born = (header.index(c) if c in header else width for c in ("sourcedId", "birthDate"))
        short = self.short_way
        count = 0
        for line, values in records:
            count += 1
            if isinstance(values, dict):
                self._misshapen(file, line, values)
                continue
            sid = values[at_sid] if at_sid < width else None
            if not (short and sid and sid.strip() == sid and sid.isprintable()):
                sid = self._sid(file, line, dict(zip(header, values)))
            if sid is None or self._duplicate(file, line, sid, seen):
                continue
            raw = _blank(values[at_born]) if at_born < width else None
            role = self.known.users.get(sid)
            if role is not None and role != "student":
                self._ignore(file, line, sid, "demographics rows of users who are not students are not kept")
                continue
            if role is None and self.package.mode("users") == "bulk" and ("user", sid) not in self.rejected:
                self._ignore(file, line, sid, "demographics rows of users not in users.csv are not kept")
                continue
            if raw is None:
                yield (sid, None, True)
                continue
            born = born_on.get(raw, _UNREAD)
            if born is _UNREAD:
                born = born_on[raw] = parse_file_date(raw)
            if born is None:
                self._problem(file, line, "birthDate", raw, "is not a date (YYYY-MM-DD)", sid=sid)
                yield (sid, None, False)
                continue
            yield (sid, born, True)
        self.rows_read[f"{file}.csv"] = count

    def enrollments(self) -> Iterator[tuple]:
        """The largest file (eight million rows for a city): a well-formed row takes the short
        path below; anything unusual goes through the checks that name the problem."""
        file = "enrollments"
        seen: dict[str, int] = {}  # sourcedId -> the line it was first read on
        homerooms: dict[tuple[str, str], int] = {}
        classes, users, user_schools = self.known.classes, self.known.users, self.known.user_schools
        # A file has few distinct dates: each is read once (None: the file has no such column).
        dates: dict[str | None, date | None] = {"": None, None: None}
        # The rows as lists, not dicts: a row of a file without a column the reader reads gets
        # a None at its end, read for that column (as row.get would), and a dict only on the
        # long way. (A rejected enrolment keeps nothing of what its row said: it is rejected with {}.)
        records = self.package.values(file)
        _, header = next(records)
        at = {column: i for i, column in enumerate(header)}
        columns = ("sourcedId", "status", "classSourcedId", "userSourcedId", "role", "schoolSourcedId", "primary",
                   "beginDate", "endDate")
        pick = operator.itemgetter(*(at.get(column, len(header)) for column in columns))
        pad = not all(column in at for column in columns)
        short = self.short_way
        count = 0
        for line, values in records:
            count += 1
            if isinstance(values, dict):
                self._misshapen(file, line, values)
                continue
            if pad:
                values.append(None)
            sid, status, class_sid, user_sid, role, school, primary, raw_begin, raw_end = pick(values)
            # (the short way's sourcedId is printable: one with a control character is the long way's to report)
            if not (short and sid and class_sid and user_sid and role in _ENROLLMENT_ROLE_SET and status in ("", "active")
                    and sid.strip() == sid and class_sid.strip() == class_sid and user_sid.strip() == user_sid
                    and sid.isprintable()):
                # the long way: report exactly what is wrong, or normalise (spaces, case, tobedeleted)
                row = dict(zip(header, values))
                sid = self._sid(file, line, row)
                if sid is None:
                    continue
                status = self._status(file, line, row, sid)
                if status == "tobedeleted":
                    if sid in seen:
                        self._problem(file, line, "sourcedId", sid, _again(seen[sid]), sid=sid)
                        continue
                    seen[sid] = line
                    yield (sid, _blank(row.get("classSourcedId")), _blank(row.get("userSourcedId")), None, None,
                           None, None, status)
                    continue
                class_sid = self._required(file, line, row, "classSourcedId", sid)
                user_sid = self._required(file, line, row, "userSourcedId", sid)
                role = self._choice(file, line, row, "role", ENROLLMENT_ROLES, sid)
                if None in (status, class_sid, user_sid, role):
                    if sid not in seen:
                        seen[sid] = line
                        self._reject("enrollment", sid, line, row, ())
                    continue
            else:
                status = "active"
            first = seen.setdefault(sid, line)
            if first != line:
                self._problem(file, line, "sourcedId", sid, _again(first), sid=sid)
                continue
            klass = classes.get(class_sid)
            if klass is None:
                self._problem(file, line, "classSourcedId", class_sid, self._unknown("class", class_sid), sid=sid)
                self._reject("enrollment", sid, line, {}, ())
                continue
            user_role = users.get(user_sid)
            if user_role is None:
                self._problem(file, line, "userSourcedId", user_sid, self._unknown("user", user_sid), sid=sid)
                self._reject("enrollment", sid, line, {}, ())
                continue
            if role != user_role and not enrolment_role_fits(role, user_role):
                self._problem(file, line, "role", role, f"role {role}, but users.csv says {user_role}"
                              if self.package.mode("users") != "absent" else
                              f"role {role}, but the roster holds {user_sid} as {user_role}", sid=sid)
                self._reject("enrollment", sid, line, {}, ())
                continue
            if role == "proctor" or user_role in OTHER_ROLES:
                self._ignore(file, line, sid, "enrolments of proctors are not kept (Caseflow keeps students, "
                                              "teachers, aides and administrators in classes)")
                continue
            if school and school != klass[0] and school.strip() != klass[0]:
                self._problem(file, line, "schoolSourcedId", school,
                              f"the class {class_sid} is at {klass[0]} (classes.csv)", sid=sid)
                self._reject("enrollment", sid, line, {}, ())
                continue
            primary = primary or "false"
            if primary not in ("true", "false"):
                read = normalise_choice(primary, ("true", "false"))
                if read is None:
                    self._problem(file, line, "primary", primary, "bad value: expected true or false", sid=sid)
                    self._reject("enrollment", sid, line, {}, ())
                    continue
                self._normalise(file, "primary", primary, read, line, sid)
                primary = read
            begin = dates.get(raw_begin, _UNREAD)
            if begin is _UNREAD:
                begin = self._date_once(dates, file, line, dict(zip(header, values)), "beginDate", sid)
            end = dates.get(raw_end, _UNREAD)
            if end is _UNREAD:
                end = self._date_once(dates, file, line, dict(zip(header, values)), "endDate", sid)
            if begin is False or end is False:
                self._reject("enrollment", sid, line, {}, ())
                continue
            if begin and end and end < begin:
                self._problem(file, line, "endDate", raw_end, "ends before it begins", sid=sid)
                self._reject("enrollment", sid, line, {}, ())
                continue
            if role == "student":
                if klass[1] == "homeroom":
                    first = homerooms.setdefault((user_sid, klass[0]), line)
                    if first != line:
                        self._problem(file, line, "classSourcedId", class_sid,
                                      f"student already in a homeroom at this school (line {first})", sid=sid)
                        self._reject("enrollment", sid, line, {}, ())
                        continue
                schools = user_schools.get(user_sid)
                if schools is not None and (klass[0] != schools if isinstance(schools, str) else klass[0] not in schools):
                    self._ignore(file, line, sid, "students enrolled in a class at a school their orgSourcedIds do "
                                                  "not list (kept: the student is in the class)")
            yield (sid, class_sid, user_sid, role, primary == "true", begin, end, status)
        self.rows_read[f"{file}.csv"] = count

    def finish(self) -> None:
        """Say once per file what was normalised or left aside."""
        for (file, column, raw, read), (n, line, sid) in self._normalised.items():
            more = f" (and {n - 1:,} more rows like it)" if n > 1 else ""
            self._problem(file, line, column, raw, f"read as {read!r}{more}", severity="warning", sid=sid)
        for (file, why), (n, line, sid) in self._ignored.items():
            self._problem(file, line, None, None, f"{n:,} {why}; the first on this line", severity="warning", sid=sid)
        self._normalised.clear()
        self._ignored.clear()

    # ------------------------------------------------------------------------ helpers

    def _records(self, entity: str) -> Iterator[tuple[int, dict[str, str], str, str | None]]:
        """(line, row, sourcedId, status) of each row with a sourcedId, once per sourcedId (a
        repeat is reported and skipped); status is None when it cannot be read (reported)."""
        seen: dict[str, int] = {}  # sourcedId -> the line it was first read on
        for line, row in self._rows(entity):
            sid = self._sid(entity, line, row)
            status = self._status(entity, line, row, sid)
            if sid is None or self._duplicate(entity, line, sid, seen):
                continue
            yield line, row, sid, status

    def _rows(self, entity: str) -> Iterator[tuple[int, dict[str, str]]]:
        count = 0
        for line, row in self.package.rows(entity):
            count += 1
            if "__width__" in row:
                self._misshapen(entity, line, row)
                continue
            yield line, row
        self.rows_read[f"{entity}.csv"] = count

    def _misshapen(self, entity: str, line: int, row: dict[str, str]) -> None:
        """A row not as wide as its header (Package.rows says why): reported, and skipped."""
        sid = _blank(row.get("sourcedId"))
        self._problem(entity, line, None, None, row["__width__"], sid=sid)
        if sid:
            self._reject(_ENTITY_OF[entity], sid, line, {}, ())

    def _problem(self, entity: str, line: int | None, column: str | None, value: str | None, reason: str,
                 severity: str = "error", sid: str | None = None) -> None:
        self.problem_count += 1
        file = f"{entity}.csv"
        if severity == "error" and line is not None:
            self.rows_skipped.setdefault(file, set()).add(line)
        if len(self.problems) < self.max_problems:
            self.problems.append(Problem(severity, file, line, column, value, reason, sid))

    def _reject(self, entity: str, sid: str, line: int, row: dict[str, str], keep: tuple[str, ...]) -> None:
        """The row's record stays as the roster holds it; remember what the row said."""
        if (entity, sid) in self.rejected:
            return
        file = f"{_FILE_OF[entity]}.csv"
        self.rows_skipped.setdefault(file, set()).add(line)
        reasons = [p.reason for p in self.problems[-5:] if p.line == line and p.file == file]
        named = _SAID_AS.get(entity, {})
        said = {}
        for k in keep:
            if k in row:
                name, is_list = named.get(k, (k, False))
                said[name] = _list(row[k]) if is_list else row[k]
        self.rejected[(entity, sid)] = Rejected(entity, sid, line, said, reasons)

    def _sid(self, entity: str, line: int, row: dict[str, str]) -> str | None:
        """The row's sourcedId; None when blank, or when it holds a control character (the
        roster derives ids from sourcedIds with line breaks between the parts: a student
        "staff\\nT-1" would be given staff member T-1's id). That row is reported, and its
        record, if held, stays as held (as a misshapen row's)."""
        sid = self._required(entity, line, row, "sourcedId", None)
        if sid is not None and (problem := not_an_id(sid)):
            self._problem(entity, line, "sourcedId", sid.encode("unicode_escape").decode("ascii"),
                          f"sourcedId {problem}", sid=sid)
            self._reject(_ENTITY_OF[entity], sid, line, {}, ())
            return None
        return sid

    def _required(self, entity: str, line: int, row: dict[str, str], column: str, sid: str | None) -> str | None:
        value = _blank(row.get(column))
        if value is None:
            self._problem(entity, line, column, "", f"missing required field {column}", sid=sid)
        return value

    def _choice(self, entity: str, line: int, row: dict[str, str], column: str, allowed: tuple[str, ...],
                sid: str | None) -> str | None:
        raw = row.get(column)
        value = _blank(raw)
        if value is None:
            self._problem(entity, line, column, "", f"missing required field {column}", sid=sid)
            return None
        read = normalise_choice(value, allowed)
        if read is None:
            self._problem(entity, line, column, value, f"bad value: expected one of {', '.join(allowed)}", sid=sid)
            return None
        if read != raw:
            self._normalise(entity, column, raw, read, line, sid)
        return read

    def _status(self, entity: str, line: int, row: dict[str, str], sid: str | None) -> str | None:
        raw = row.get("status") or ""
        value = normalise_choice(raw, ("active", "tobedeleted")) if raw.strip() else "active"
        if value is None:
            self._problem(entity, line, "status", raw, "bad value: expected active or tobedeleted", sid=sid)
            return None
        if raw.strip() and value != raw:
            self._normalise(entity, "status", raw, value, line, sid)
        if value == "tobedeleted" and self.package.mode(entity) == "bulk":
            self._problem(entity, line, "status", value, "tobedeleted belongs in a delta file; a bulk file "
                          "removes a row by leaving it out", sid=sid)
            return None
        return value

    def _grades(self, entity: str, line: int, row: dict[str, str], column: str, sid: str | None) -> list[str] | None:
        grades = []
        bad = []
        for raw in _list(row.get(column)):
            read = normalise_grade(raw)
            if read is None:
                bad.append(raw)
            else:
                if read != raw:
                    self._normalise(entity, column, raw, read, line, sid)
                grades.append(read)
        if bad:
            self._problem(entity, line, column, ",".join(bad), "bad grade: expected PK, KG, 01..12 and the like",
                          sid=sid)
            return None
        return grades

    def _date(self, entity: str, line: int, row: dict[str, str], column: str, sid: str | None,
              required: bool = False) -> date | None | bool:
        """The date, None when blank (and allowed), False when it cannot be read (reported)."""
        raw = _blank(row.get(column))
        if raw is None:
            if required:
                self._problem(entity, line, column, "", f"missing required field {column}", sid=sid)
                return False
            return None
        read = parse_file_date(raw)
        if read is None:
            self._problem(entity, line, column, raw, "is not a date (YYYY-MM-DD)", sid=sid)
            return False
        return read

    def _date_once(self, dates: dict, entity: str, line: int, row: dict[str, str], column: str,
                   sid: str | None) -> date | None | bool:
        """_date, remembering a date that reads (a bad one is reported on each of its rows)."""
        read = self._date(entity, line, row, column, sid)
        if read is not False:
            dates[row.get(column) or ""] = read
        return read

    def _normalise(self, entity: str, column: str, raw: str, read: str, line: int, sid: str | None) -> None:
        seen = self._normalised.get((entity, column, raw, read))
        if seen is None:
            self._normalised[(entity, column, raw, read)] = [1, line, sid]
        else:
            seen[0] += 1

    def _ignore(self, entity: str, line: int, sid: str | None, why: str) -> None:
        seen = self._ignored.get((entity, why))
        if seen is None:
            self._ignored[(entity, why)] = [1, line, sid]
        else:
            seen[0] += 1

    def _unknown(self, entity: str, sid: str) -> str:
        rejected = self.rejected.get((entity, sid))
        if rejected is not None:
            return f"refers to {entity} {sid}, whose row in {_FILE_OF[entity]}.csv was rejected (line {rejected.line})"
        return f"refers to an unknown {entity}"

    def _duplicate(self, entity: str, line: int, source_id: str, seen: dict[str, int]) -> bool:
        if source_id in seen:
            self._problem(entity, line, "sourcedId", source_id, _again(seen[source_id]), sid=source_id)
            return True
        seen[source_id] = line
        return False

    def _is_district_org(self, org: str) -> bool:
        return org in self.known.other_orgs


_ENROLLMENT_ROLE_SET = frozenset(ENROLLMENT_ROLES)
_UNREAD = object()  # a date not read yet
_FILE_OF = {"org": "orgs", "session": "academicSessions", "class": "classes", "user": "users",
            "enrollment": "enrollments", "demographic": "demographics", "course": "courses", "role": "roles"}
_ENTITY_OF = {file: entity for entity, file in _FILE_OF.items()}


def _blank(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    return value or None


def _list(value: str | None) -> list[str]:
    if not value:
        return []
    if "," not in value:  # most lists in a file have one item
        value = value.strip()
        return [value] if value else []
    return [v.strip() for v in value.split(",") if v.strip()]
