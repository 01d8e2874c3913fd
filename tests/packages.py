"""Writing small OneRoster packages for tests, from plain facts."""

from __future__ import annotations

import csv
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

HEADERS = {
    "orgs": ["sourcedId", "status", "dateLastModified", "name", "type", "identifier", "parentSourcedId"],
    "classes": ["sourcedId", "status", "dateLastModified", "title", "grades", "courseSourcedId", "classCode",
                "classType", "location", "schoolSourcedId", "termSourcedIds", "subjects", "subjectCodes", "periods"],
    "users": ["sourcedId", "status", "dateLastModified", "enabledUser", "orgSourcedIds", "role", "username", "userIds",
              "givenName", "familyName", "middleName", "identifier", "email", "sms", "phone", "agentSourcedIds",
              "grades", "password"],
    "enrollments": ["sourcedId", "status", "dateLastModified", "classSourcedId", "schoolSourcedId", "userSourcedId",
                    "role", "primary", "beginDate", "endDate"],
    "demographics": ["sourcedId", "status", "dateLastModified", "birthDate"],
}


@dataclass
class Roster:
    """A district's roster as a package would state it."""

    schools: dict[str, str] = field(default_factory=dict)  # id -> name
    students: dict[str, dict] = field(default_factory=dict)  # id -> {school, grade, given, family, born}
    teachers: dict[str, dict] = field(default_factory=dict)  # id -> {school, given, family, email}
    classes: dict[str, dict] = field(default_factory=dict)  # id -> {school, type, title}
    enrollments: dict[tuple[str, str], dict] = field(default_factory=dict)  # (class, user) -> {role, primary}
    district_name: str = "District"  # the district org D's name


def write(roster: Roster, out: Path, modes: dict[str, str] | None = None, *, zip_to: Path | None = None,
          deleted: dict[str, list] | None = None) -> Path:
    """Write a bulk package (or delta, with `modes` and `deleted` rows marked tobedeleted)."""
    modes = {"orgs": "bulk", "classes": "bulk", "users": "bulk", "enrollments": "bulk", "demographics": "bulk",
             **(modes or {})}
    deleted = deleted or {}
    out.mkdir(parents=True, exist_ok=True)
    rows = {
        "orgs": [{"sourcedId": "D", "name": roster.district_name, "type": "district"}]
        + [{"sourcedId": sid, "name": name, "type": "school", "parentSourcedId": "D"} for sid, name in roster.schools.items()],
        "classes": [{"sourcedId": cid, "title": c["title"], "classType": c["type"], "schoolSourcedId": c["school"],
                     "grades": c.get("grades", ""), "classCode": c.get("code", "")} for cid, c in roster.classes.items()],
        "users": [{"sourcedId": sid, "orgSourcedIds": s["school"], "role": "student", "givenName": s["given"],
                   "familyName": s["family"], "grades": s["grade"], "identifier": s.get("osis", "")}
                  for sid, s in roster.students.items()]
        + [{"sourcedId": tid, "orgSourcedIds": t["school"], "role": "teacher", "givenName": t["given"],
            "familyName": t["family"], "email": t.get("email") or ""} for tid, t in roster.teachers.items()],
        "enrollments": [{"sourcedId": f"{c}:{u}", "classSourcedId": c, "userSourcedId": u, "role": e["role"],
                         "primary": "true" if e.get("primary") else "false"}
                        for (c, u), e in roster.enrollments.items()],
        "demographics": [{"sourcedId": sid, "birthDate": s["born"]} for sid, s in roster.students.items() if s.get("born")],
    }
    for entity, gone in deleted.items():
        rows[entity] += [{**row, "status": "tobedeleted"} for row in gone]
    with open(out / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["propertyName", "value"])
        w.writerow(["oneroster.version", "1.1"])
        for entity in ("orgs", "academicSessions", "courses", "classes", "users", "enrollments", "demographics"):
            w.writerow([f"file.{entity}", modes.get(entity, "absent")])
    for entity, header in HEADERS.items():
        if modes.get(entity, "absent") == "absent":
            continue
        with open(out / f"{entity}.csv", "w", newline="") as f:
            w = csv.DictWriter(f, header)
            w.writeheader()
            for row in rows[entity]:
                w.writerow({k: row.get(k, "") for k in header})
    if zip_to is not None:
        with zipfile.ZipFile(zip_to, "w", zipfile.ZIP_DEFLATED) as z:
            for p in sorted(out.iterdir()):
                z.write(p, p.name)
        return zip_to
    return out


FIXTURES = Path(__file__).resolve().parent / "fixtures" / "oneroster"


class Edited:
    """A copy of a fixture package (tests/fixtures/oneroster/<base>), edited as a district's
    exporter might have written it: rows changed, added or removed by sourcedId, files
    made delta or left out. Files are rewritten as plain UTF-8 CSV."""

    def __init__(self, base: str, to: Path) -> None:
        import shutil

        self.path = to
        if to.exists():
            shutil.rmtree(to)
        shutil.copytree(FIXTURES / base, to)

    def _read(self, file: str) -> tuple[list[str], list[dict[str, str]]]:
        with open(self.path / file, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            return list(reader.fieldnames or []), list(reader)

    def _write(self, file: str, header: list[str], rows: list[dict[str, str]]) -> None:
        with open(self.path / file, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, header)
            w.writeheader()
            for row in rows:
                w.writerow({k: row.get(k, "") for k in header})

    def edit(self, file: str, sourced_id: str, *, key: str = "sourcedId", **changes: str) -> Edited:
        header, rows = self._read(file)
        found = [r for r in rows if r[key] == sourced_id]
        assert found, f"{sourced_id} not in {file}"
        for r in found:
            r.update(changes)
        self._write(file, header, rows)
        return self

    def rename_column(self, file: str, column: str, to: str) -> Edited:
        """The file with one header name written another way (its rows as they are)."""
        header, rows = self._read(file)
        self._write(file, [to if h == column else h for h in header], [{(to if k == column else k): v
                                                                      for k, v in r.items()} for r in rows])
        return self

    def add(self, file: str, line: str) -> Edited:
        """Append one CSV line, in the file's own column order."""
        with open(self.path / file, "a", newline="", encoding="utf-8") as f:
            f.write(line.rstrip("\r\n") + "\n")
        return self

    def remove(self, file: str, sourced_id: str) -> Edited:
        header, rows = self._read(file)
        self._write(file, header, [r for r in rows if r["sourcedId"] != sourced_id])
        return self

    def only(self, file: str, rows: list[dict[str, str]]) -> Edited:
        """Replace a file's rows (a delta's rows)."""
        header, _ = self._read(file)
        self._write(file, header, rows)
        return self

    def row(self, file: str, sourced_id: str) -> dict[str, str]:
        return next(r for r in self._read(file)[1] if r["sourcedId"] == sourced_id)

    def delta_of(self, entity: str) -> Edited:
        """A delta package of one file (every other file absent)."""
        others = ("orgs", "academicSessions", "courses", "classes", "users", "enrollments", "demographics")
        return self.manifest(**{e: "absent" for e in others if e != entity}, **{entity: "delta"})

    def manifest(self, version: str | None = None, **modes: str) -> Edited:
        """Set oneroster.version and file.<entity> modes; a file made absent is deleted."""
        header, rows = self._read("manifest.csv")
        props = {r["propertyName"]: r["value"] for r in rows}
        if version:
            props["oneroster.version"] = version
        for entity, mode in modes.items():
            props[f"file.{entity}"] = mode
            if mode == "absent":
                (self.path / f"{entity}.csv").unlink(missing_ok=True)
        self._write("manifest.csv", header, [{"propertyName": k, "value": v} for k, v in props.items()])
        return self
