"""Reading a OneRoster 1.1 CSV package, without I/O beyond the package itself.

A package is a folder or a .zip holding manifest.csv and the entity files. Files are
streamed row by row (never the whole package in memory); headers may come in any order;
UTF-8 with or without BOM; CRLF or LF; quoted fields with commas, quotes and newlines.

Each row is validated on its own and against what it references. A bad row becomes a
Problem (file, line, column, value, reason) and is skipped; the rest proceeds. A package
that cannot be read at all (no manifest, a missing bulk file, unreadable CSV, an unsafe
zip) raises PackageRejected with one clear message.
"""

from __future__ import annotations

import csv
import io
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path, PurePosixPath

from services.roster.domain import class_id_for, staff_id_for, student_id_for

MODES = ("bulk", "delta", "absent")
ENTITY_FILES = ("orgs", "academicSessions", "courses", "classes", "users", "enrollments", "demographics")
GRADES = frozenset(
    ["IT", "PR", "PK", "TK", "KG", "01", "02", "03", "04", "05", "06", "07", "08", "09", "10", "11", "12", "13",
     "PS", "UG", "Other"]
)
STAFF_ROLES = ("teacher", "aide", "administrator")
IGNORED_ROLES = ("guardian", "parent", "proctor", "relative")
ENROLLMENT_ROLES = ("student", "teacher", "aide", "administrator", "proctor")
_ENROLLMENT_ROLE_SET = frozenset(ENROLLMENT_ROLES)



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


@dataclass(frozen=True)
class Limits:
    max_zip_bytes: int = 2 * 1024**3  # the archive itself
    max_unpacked_bytes: int = 20 * 1024**3  # all members, uncompressed
    max_ratio: int = 200  # uncompressed / compressed, per member: beyond it, a zip bomb


# ---------------------------------------------------------------------------- the package


class Package:
    """An opened package: the manifest's modes and a row stream per file."""

    def __init__(self, path: Path, limits: Limits = Limits()) -> None:
        self.path = Path(path)
        self.name = self.path.name
        self._zip: zipfile.ZipFile | None = None
        self._members: dict[str, str] = {}
        if self.path.is_dir():
            self._members = {p.name: str(p) for p in self.path.iterdir() if p.is_file() and p.suffix == ".csv"}
        elif zipfile.is_zipfile(self.path):
            self._zip = _open_safe_zip(self.path, limits)
            self._members = {PurePosixPath(i.filename).name: i.filename for i in self._zip.infolist()
                             if not i.is_dir() and i.filename.endswith(".csv")}
        else:
            raise PackageRejected(f"{self.name} is neither a folder nor a zip archive")
        if "manifest.csv" not in self._members:
            raise PackageRejected("the package has no manifest.csv")
        self.modes = self._read_manifest()
        for entity in ENTITY_FILES:
            if self.modes[entity] != "absent" and f"{entity}.csv" not in self._members:
                raise PackageRejected(f"manifest.csv says file.{entity} is {self.modes[entity]}, "
                                      f"but the package has no {entity}.csv")

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()

    def __enter__(self) -> Package:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def mode(self, entity: str) -> str:
        return self.modes[entity]

    def rows(self, entity: str) -> Iterator[tuple[int, dict[str, str]]]:
        """(line, row) for each record of a file; line is where the record starts (header = 1)."""
        file = f"{entity}.csv"
        raw = self._zip.open(self._members[file]) if self._zip else open(self._members[file], "rb")  # noqa: SIM115
        text = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
        line = 1
        try:
            reader = csv.reader(text, strict=True)
            try:
                header = [h.strip() for h in next(reader)]
            except StopIteration:
                raise PackageRejected(f"{file} is empty: it has no header row") from None
            if len(set(header)) != len(header):
                raise PackageRejected(f"{file} repeats a column in its header")
            line = reader.line_num + 1
            for values in reader:
                if values:  # blank lines are not records
                    if len(values) != len(header):
                        yield line, {"__width__": f"{len(values)} fields where the header has {len(header)}"}
                    else:
                        yield line, dict(zip(header, values, strict=True))
                line = reader.line_num + 1
        except UnicodeDecodeError as e:
            raise PackageRejected(f"{file} is not UTF-8 (byte {e.start} of a line near line {line})") from None
        except csv.Error as e:
            raise PackageRejected(f"{file} is not readable CSV near line {line}: {e}") from None
        finally:
            text.close()

    def _read_manifest(self) -> dict[str, str]:
        modes = dict.fromkeys(ENTITY_FILES, "absent")
        for line, row in self.rows("manifest"):
            name, value = (row.get("propertyName") or "").strip(), (row.get("value") or "").strip().lower()
            if name.startswith("file."):
                entity = name.removeprefix("file.")
                if entity in modes:
                    if value not in MODES:
                        raise PackageRejected(f"manifest.csv line {line}: {name} is {value!r}; "
                                              f"expected bulk, delta or absent")
                    modes[entity] = value
        if all(modes[e] == "absent" for e in ENTITY_FILES):
            raise PackageRejected("manifest.csv names no file: expected file.users, file.enrollments ... = bulk or delta")
        return modes


def _open_safe_zip(path: Path, limits: Limits) -> zipfile.ZipFile:
    size = path.stat().st_size
    if size > limits.max_zip_bytes:
        raise PackageRejected(f"the archive is {size:,} bytes; the limit is {limits.max_zip_bytes:,}")
    archive = zipfile.ZipFile(path)
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


# --------------------------------------------------------------------- validated records


@dataclass(slots=True)
class Known:
    """Ids a row may refer to: those in this package, plus (for files not sent in bulk) those
    the roster already holds. Filled as the files are read, in dependency order."""

    schools: set[str] = field(default_factory=set)
    other_orgs: set[str] = field(default_factory=set)  # the district itself, departments...
    courses: set[str] = field(default_factory=set)
    classes: dict[str, tuple[str, str]] = field(default_factory=dict)  # source_id -> (school_id, class_type)
    users: dict[str, str] = field(default_factory=dict)  # source_id -> role


class Reader:
    """Validates a package's files in dependency order, yielding records ready to stage, and
    collecting problems. One Reader per import."""

    def __init__(self, package: Package, district_id: str, held: Known | None = None, max_problems: int = 100_000):
        self.package = package
        self.district_id = district_id
        self.known = held or Known()
        self.problems: list[Problem] = []
        self.problem_count = 0
        self.max_problems = max_problems
        # Courses are not kept by the roster: a class's course is checked only against a bulk courses file.
        self.check_courses = package.mode("courses") == "bulk"

    # Each method yields tuples in the column order of the staging table the importer copies into.

    def schools(self) -> Iterator[tuple]:
        """orgs.csv: schools (other org types are accepted and ignored)."""
        file = "orgs"
        seen: set[str] = set()
        for line, row in self._rows(file):
            sid = self._required(file, line, row, "sourcedId")
            kind = self._enum(file, line, row, "type", ("school", "district", "department", "local", "state", "national"))
            status = self._status(file, line, row)
            if sid is None or kind is None or status is None or self._duplicate(file, line, sid, seen):
                continue
            if kind != "school":
                self.known.other_orgs.add(sid)
                continue
            if status == "tobedeleted":
                self.known.schools.discard(sid)
                yield (sid, None, None, status)
                continue
            name = self._required(file, line, row, "name")
            if name is None:
                continue
            self.known.schools.add(sid)
            yield (sid, name, _blank(row.get("identifier")), status)

    def courses(self) -> Iterator[tuple]:
        file = "courses"
        seen: set[str] = set()
        for line, row in self._rows(file):
            sid = self._required(file, line, row, "sourcedId")
            status = self._status(file, line, row)
            if sid is None or status is None or self._duplicate(file, line, sid, seen):
                continue
            org = _blank(row.get("orgSourcedId"))
            if org is not None and org not in self.known.schools and not self._is_district_org(org):
                self._problem(file, line, "orgSourcedId", org, "refers to an unknown org")
                continue
            if status == "tobedeleted":
                self.known.courses.discard(sid)
            else:
                self.known.courses.add(sid)
            yield (sid,)

    def classes(self) -> Iterator[tuple]:
        file = "classes"
        seen: set[str] = set()
        for line, row in self._rows(file):
            sid = self._required(file, line, row, "sourcedId")
            status = self._status(file, line, row)
            if sid is None or status is None or self._duplicate(file, line, sid, seen):
                continue
            cid = class_id_for(self.district_id, sid)
            if status == "tobedeleted":
                self.known.classes.pop(sid, None)
                yield (cid, sid, None, None, None, None, None, None, None, status, line)
                continue
            title = self._required(file, line, row, "title")
            class_type = self._enum(file, line, row, "classType", ("homeroom", "scheduled"))
            school = self._required(file, line, row, "schoolSourcedId")
            if title is None or class_type is None or school is None:
                continue
            if school not in self.known.schools:
                self._problem(file, line, "schoolSourcedId", school, "refers to an unknown org")
                continue
            course = _blank(row.get("courseSourcedId"))
            if course is not None and self.check_courses and course not in self.known.courses:
                self._problem(file, line, "courseSourcedId", course, "refers to an unknown course")
                continue
            grades = self._grades(file, line, row, "grades")
            if grades is None:
                continue
            periods = _list(row.get("periods"))
            self.known.classes[sid] = (school, class_type)
            yield (cid, sid, school, class_type, title, _blank(row.get("classCode")), course, grades, periods,
                   status, line)

    def users(self) -> Iterator[tuple[str, tuple]]:
        """users.csv: ("student", row) or ("staff", row); other roles (parents...) are skipped quietly."""
        file = "users"
        seen: set[str] = set()
        for line, row in self._rows(file):
            sid = self._required(file, line, row, "sourcedId")
            role = self._enum(file, line, row, "role", ("student", *STAFF_ROLES, *IGNORED_ROLES))
            status = self._status(file, line, row)
            if sid is None or role is None or status is None or self._duplicate(file, line, sid, seen):
                continue
            if role in IGNORED_ROLES:
                continue
            if status == "tobedeleted":
                self.known.users.pop(sid, None)
                if role == "student":
                    yield "student", (student_id_for(self.district_id, sid), sid, None, None, None, None, None, None,
                                      status, line)
                else:
                    yield "staff", (staff_id_for(self.district_id, sid), sid, role, None, None, None, None, None,
                                    status)
                continue
            given = self._required(file, line, row, "givenName")
            family = self._required(file, line, row, "familyName")
            orgs = _list(row.get("orgSourcedIds"))
            if given is None or family is None:
                continue
            if not orgs:
                self._problem(file, line, "orgSourcedIds", "", "missing required field")
                continue
            unknown = [o for o in orgs if o not in self.known.schools and not self._is_district_org(o)]
            if unknown:
                self._problem(file, line, "orgSourcedIds", ",".join(unknown), "refers to an unknown org")
                continue
            email = _blank(row.get("email"))
            if email is not None and "@" not in email:
                self._problem(file, line, "email", email, "is not an email address")
                continue
            schools = [o for o in orgs if o in self.known.schools]
            if role == "student":
                grades = self._grades(file, line, row, "grades")
                if grades is None:
                    continue
                if len(grades) != 1:
                    self._problem(file, line, "grades", row.get("grades"), "a student needs exactly one grade")
                    continue
                if not schools:
                    self._problem(file, line, "orgSourcedIds", row.get("orgSourcedIds"), "a student needs a school")
                    continue
                self.known.users[sid] = role
                yield "student", (student_id_for(self.district_id, sid), sid, schools[0], grades[0], given, family,
                                  email, _blank(row.get("identifier")), status, line)
            else:
                if email is None and role == "teacher":
                    self._problem(file, line, "email", "", "teacher without email: unmatched, so no caseload",
                                  severity="warning")
                self.known.users[sid] = role
                yield "staff", (staff_id_for(self.district_id, sid), sid, role, given, family, email,
                                _blank(row.get("identifier")), schools, status)

    def birth_dates(self) -> Iterator[tuple]:
        file = "demographics"
        seen: set[str] = set()
        for line, row in self._rows(file):
            sid = self._required(file, line, row, "sourcedId")
            if sid is None or self._duplicate(file, line, sid, seen):
                continue
            raw = _blank(row.get("birthDate"))
            if raw is None:
                continue
            try:
                born = date.fromisoformat(raw)
            except ValueError:
                self._problem(file, line, "birthDate", raw, "is not a date (YYYY-MM-DD)")
                continue
            if self.known.users.get(sid) == "student":
                yield (sid, born)

    def enrollments(self) -> Iterator[tuple]:
        """The largest file (eight million rows for a city): a well-formed row takes the short
        path below; anything unusual goes through the checks that name the problem."""
        file = "enrollments"
        seen: set[str] = set()
        homerooms: dict[tuple[str, str], int] = {}
        classes, users = self.known.classes, self.known.users
        for line, row in self._rows(file):
            sid, status = row.get("sourcedId"), row.get("status")
            class_sid, user_sid, role = row.get("classSourcedId"), row.get("userSourcedId"), row.get("role")
            if not (sid and class_sid and user_sid and role in _ENROLLMENT_ROLE_SET and status in ("", "active")
                    and sid.strip() == sid and class_sid.strip() == class_sid and user_sid.strip() == user_sid):
                # the long way: report exactly what is wrong, or normalise (spaces, tobedeleted)
                sid = self._required(file, line, row, "sourcedId")
                status = self._status(file, line, row)
                class_sid = self._required(file, line, row, "classSourcedId")
                user_sid = self._required(file, line, row, "userSourcedId")
                role = self._enum(file, line, row, "role", ENROLLMENT_ROLES)
                if None in (sid, status, class_sid, user_sid, role):
                    continue
            else:
                status = "active"
            if sid in seen:
                self._problem(file, line, "sourcedId", sid, "duplicate sourcedId")
                continue
            seen.add(sid)
            if status == "tobedeleted":
                yield (class_sid, user_sid, role, False, status)
                continue
            klass = classes.get(class_sid)
            if klass is None:
                self._problem(file, line, "classSourcedId", class_sid, "refers to an unknown class")
                continue
            if user_sid not in users:
                self._problem(file, line, "userSourcedId", user_sid, "refers to an unknown user")
                continue
            primary = row.get("primary") or "false"
            if primary not in ("true", "false"):
                primary = primary.strip().lower()
                if primary not in ("true", "false"):
                    self._problem(file, line, "primary", row.get("primary"), "bad value: expected true or false")
                    continue
            if role == "student" and klass[1] == "homeroom":
                first = homerooms.setdefault((user_sid, klass[0]), line)
                if first != line:
                    self._problem(file, line, "classSourcedId", class_sid,
                                  f"student already in a homeroom at this school (line {first})")
                    continue
            yield (class_sid, user_sid, role, primary == "true", status)

    # ------------------------------------------------------------------------ helpers

    def _rows(self, entity: str) -> Iterator[tuple[int, dict[str, str]]]:
        for line, row in self.package.rows(entity):
            if "__width__" in row:
                self._problem(entity, line, None, None, row["__width__"])
                continue
            yield line, row

    def _problem(self, entity: str, line: int | None, column: str | None, value: str | None, reason: str,
                 severity: str = "error") -> None:
        self.problem_count += 1
        if len(self.problems) < self.max_problems:
            self.problems.append(Problem(severity, f"{entity}.csv", line, column, value, reason))

    def _required(self, entity: str, line: int, row: dict[str, str], column: str) -> str | None:
        value = _blank(row.get(column))
        if value is None:
            self._problem(entity, line, column, "", "missing required field")
        return value

    def _enum(self, entity: str, line: int, row: dict[str, str], column: str, allowed: tuple[str, ...]) -> str | None:
        value = _blank(row.get(column))
        if value is None:
            self._problem(entity, line, column, "", "missing required field")
            return None
        if value not in allowed:
            self._problem(entity, line, column, value, f"bad value: expected one of {', '.join(allowed)}")
            return None
        return value

    def _status(self, entity: str, line: int, row: dict[str, str]) -> str | None:
        value = (row.get("status") or "").strip().lower() or "active"
        if value not in ("active", "tobedeleted"):
            self._problem(entity, line, "status", row.get("status"), "bad value: expected active or tobedeleted")
            return None
        if value == "tobedeleted" and self.package.mode(entity) == "bulk":
            self._problem(entity, line, "status", value, "tobedeleted belongs in a delta file; a bulk file "
                          "removes a row by leaving it out")
            return None
        return value

    def _grades(self, entity: str, line: int, row: dict[str, str], column: str) -> list[str] | None:
        grades = _list(row.get(column))
        bad = [g for g in grades if g not in GRADES]
        if bad:
            self._problem(entity, line, column, ",".join(bad), "bad grade: expected PK, KG, 01..12 and the like")
            return None
        return grades

    def _duplicate(self, entity: str, line: int, source_id: str, seen: set[str]) -> bool:
        if source_id in seen:
            self._problem(entity, line, "sourcedId", source_id, "duplicate sourcedId")
            return True
        seen.add(source_id)
        return False

    def _is_district_org(self, org: str) -> bool:
        return org in self.known.other_orgs


def _blank(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    return value or None


def _list(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]
