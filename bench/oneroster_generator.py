"""Synthetic OneRoster 1.1 CSV packages, up to New York City size, streamed to disk.

    python bench/oneroster_generator.py OUT_DIR [--students N] [--staff N] [--classes N]
        [--enrollments N] [--schools N] [--seed S] [--mutate SHARE] [--zip]

Defaults are the NYC size: 1,100,000 students, 75,000 staff, 60,000 classes,
8,000,000 enrollments, 1,800 schools. A size left out while --students is given scales
with it (``--students 2000`` alone gives 136 staff, 109 classes, 14,545 enrollments and
3 schools), so small packages keep the NYC proportions.

The package is written school by school: every CSV file is open at once and rows go
straight to csv.writer, so memory stays flat whatever the size (only a per-school plan,
a few integers per school, is held for the whole run). Output is deterministic for a
given seed and sizes.

Shape
-----
* one district org ("nycdoe") and the schools (type=school, parent = the district);
  about 45% elementary (KG-05), 25% middle (06-08), 30% high (09-12), with DBN-like
  codes ("02M104") as identifier;
* academic sessions: the 2026-2027 schoolYear and two terms (fall, spring) under it;
* courses: per school, a catalogue for its grades (elementary: a homeroom course per
  grade plus school-wide specials; middle and high: subject courses per grade);
* classes: homerooms (classType=homeroom, classCode like "3-401") for every grade of
  every elementary school, and scheduled sections (classType=scheduled, classCode like
  "ALG1-02", one period) for the specials of elementary schools and everything in
  middle and high schools; sections are grade-specific when a school has enough of
  them, else they are school-wide (grades = all the school's grades);
* users: students (one grade, orgSourcedIds = their school, 9-digit OSIS-like
  identifier, userIds "{OSIS:...}"), teachers (EIS-like identifier, userIds "{EIS:...}",
  email first.last{n}@schools.example.org, about 3% with no email), and a few aides and
  administrators;
* demographics: one row per student, birthDate consistent with the grade (born in
  2021 - grade, about 5% a year older);
* enrollments: every elementary student exactly one homeroom plus scheduled specials,
  every middle/high student several sections, each class one primary teacher
  (primary=true), teachers left without a class of their own co-teach one
  (primary=false). The per-student number of scheduled sections is tuned so the total
  lands on --enrollments: middle/high students get 7-8 sections while that is enough,
  the rest of the budget goes to elementary specials (up to 7), then back to
  middle/high. The averages used are printed.

Mutated snapshot (--mutate SHARE)
--------------------------------
The same seed regenerates the base package row for row (the base random streams are
consumed identically); a hash of (seed, student number) picks SHARE of the base
students, and a separate per-student random stream decides what changes. Every
changed row gets dateLastModified 2026-09-02T12:00:00.000Z (base rows keep
2026-09-01T12:00:00.000Z). Of the picked students:
  * 40% change grade (+1, or -1 at the top of the school's band): users.csv grade,
    and their enrollments are redrawn for the new grade (new homeroom for elementary;
    new sections where the school's sections are grade-specific); enrollment sourcedIds
    are "enr-{class}-{user}", so a kept class keeps its enrollment id;
  * 30% change name (familyName, or givenName one time in three): users.csv only;
  * 15% move one section: one scheduled enrollment dropped, another section of the same
    pool added (elementary students without specials change homeroom instead);
  * 15% withdraw: absent from users.csv, demographics.csv and enrollments.csv.
On top of that, each school gets about 0.15 * SHARE * its size new students (sourcedIds
after the base range), with users, demographics and enrollment rows.
Staff, orgs, sessions, courses and classes are unchanged.
"""

from __future__ import annotations

import argparse
import csv
import math
import random
import shutil
import sys
import time
import zipfile
from datetime import date
from pathlib import Path

NYC = {
    "students": 1_100_000,
    "staff": 75_000,
    "classes": 60_000,
    "enrollments": 8_000_000,
    "schools": 1_800,
}

DLM = "2026-09-01T12:00:00.000Z"
DLM_CHANGED = "2026-09-02T12:00:00.000Z"
DISTRICT_ID = "nycdoe"
YEAR_ID = "ay-2026-2027"
FALL_ID = "term-2026-fall"
SPRING_ID = "term-2027-spring"
YEAR_START, YEAR_END = "2026-09-10", "2027-06-25"
FALL_END, SPRING_START = "2027-01-29", "2027-02-01"
# term kind -> (termSourcedIds, beginDate, endDate)
TERMS = (
    (f"{FALL_ID},{SPRING_ID}", YEAR_START, YEAR_END),
    (FALL_ID, YEAR_START, FALL_END),
    (SPRING_ID, SPRING_START, YEAR_END),
)

GRADE_LABELS = ["KG", "01", "02", "03", "04", "05", "06", "07", "08", "09", "10", "11", "12"]
BANDS = {"elementary": range(0, 6), "middle": range(6, 9), "high": range(9, 13)}
BOROUGHS = "MXKQR"

HEADERS = {
    "orgs.csv": "sourcedId,status,dateLastModified,name,type,identifier,parentSourcedId",
    "academicSessions.csv": "sourcedId,status,dateLastModified,title,type,startDate,endDate,"
    "parentSourcedId,schoolYear",
    "courses.csv": "sourcedId,status,dateLastModified,schoolYearSourcedId,title,courseCode,"
    "grades,orgSourcedId,subjects,subjectCodes",
    "classes.csv": "sourcedId,status,dateLastModified,title,grades,courseSourcedId,classCode,"
    "classType,location,schoolSourcedId,termSourcedIds,subjects,subjectCodes,periods",
    "users.csv": "sourcedId,status,dateLastModified,enabledUser,orgSourcedIds,role,username,"
    "userIds,givenName,familyName,middleName,identifier,email,sms,phone,agentSourcedIds,"
    "grades,password",
    "demographics.csv": "sourcedId,status,dateLastModified,birthDate,sex,"
    "americanIndianOrAlaskaNative,asian,blackOrAfricanAmerican,"
    "nativeHawaiianOrOtherPacificIslander,white,demographicRaceTwoOrMoreRaces,"
    "hispanicOrLatinoEthnicity,countryOfBirthCode,stateOfBirthAbbreviation,cityOfBirth,"
    "publicSchoolResidenceStatus",
    "enrollments.csv": "sourcedId,status,dateLastModified,classSourcedId,schoolSourcedId,"
    "userSourcedId,role,primary,beginDate,endDate",
}
FILES = ["manifest.csv", *HEADERS]

GIVEN = (
    "Aaliyah Abdul Adriana Ahmed Aiden Alejandro Alexander Amara Amir Ana Angel Anthony Aria "
    "Ariana Ashley Ava Ayesha Brandon Brianna Camila Carlos Chloe Christopher Daniel David "
    "Dylan Elijah Emily Emma Ethan Fatima Gabriel Genesis Giovanni Grace Hailey Hannah Ibrahim "
    "Isabella Isaiah Jacob Jada Jason Jayden Jennifer Jessica Joel John Jose Joshua Juan Julia "
    "Justin Kayla Kevin Khadija Kimberly Leah Liam Lucas Luis Madison Malik Maria Mariam "
    "Matthew Mei Mia Michael Miguel Mohammed Moshe Nathan Nia Noah Olivia Omar Priya Rachel "
    "Rafael Ryan Samantha Samuel Sarah Sebastian Sofia Stephanie Tatiana Tenzin Tyler Valentina "
    "Victoria Wei William Xavier Yael Yusuf Zainab Zoe"
).split()
FAMILY = (
    "Rodriguez Garcia Martinez Hernandez Lopez Gonzalez Perez Sanchez Ramirez Torres Rivera "
    "Cruz Reyes Morales Ortiz Diaz Gomez Vasquez Jimenez Castillo Santos Pena Nunez Batista "
    "Williams Johnson Brown Jones Smith Davis Jackson Thomas Harris Robinson Thompson White "
    "Lewis Walker Young Allen King Wright Scott Green Baker Adams Nelson Campbell Mitchell "
    "Chen Wang Li Zhang Liu Lin Huang Wu Zhou Yang Kim Lee Park Choi Nguyen Tran Patel Shah "
    "Singh Khan Ali Rahman Hossain Islam Ahmed Begum Chowdhury Uddin Cohen Levy Friedman "
    "Goldberg Katz Schwartz Murphy O'Brien Sullivan Kelly Russo Romano Esposito Ivanova "
    "Petrov Kowalski Jean-Baptiste Pierre Joseph Charles Mensah Okafor Diallo Traore Tenzing"
).split()
MIDDLE = list("ABCDEFGHJKLMNPRST")

ELEM_SPECIALS = (  # code, title, subject, SCED-like subject code
    ("ART", "Visual Arts", "Arts", "05154"),
    ("MUS", "Music", "Music", "05110"),
    ("PE", "Physical Education", "Physical Education", "08001"),
    ("SCI", "Science Cluster", "Science", "03001"),
    ("LIB", "Library", "Library Media", "22001"),
    ("TECH", "Technology", "Computer Science", "10001"),
    ("DANCE", "Dance", "Arts", "05051"),
    ("SPAN", "Spanish", "World Languages", "06101"),
)
MIDDLE_COURSES = (  # code prefix, title prefix, subject, code; suffixed with the grade
    ("ELA", "English Language Arts", "English Language Arts", "01001"),
    ("MATH", "Mathematics", "Mathematics", "02001"),
    ("SCI", "Science", "Science", "03001"),
    ("SS", "Social Studies", "Social Studies", "04001"),
    ("PE", "Physical Education", "Physical Education", "08001"),
    ("ART", "Visual Arts", "Arts", "05154"),
    ("MUS", "Music", "Music", "05110"),
    ("SPAN", "Spanish", "World Languages", "06101"),
    ("TECH", "Technology", "Computer Science", "10001"),
)
HIGH_COURSES = {
    9: (("ELA9", "English 9", "English Language Arts", "01001"),
        ("ALG1", "Algebra I", "Mathematics", "02052"),
        ("LIVENV", "Living Environment", "Science", "03051"),
        ("GLOB1", "Global History and Geography I", "Social Studies", "04051"),
        ("SPAN1", "Spanish I", "World Languages", "06101"),
        ("PE9", "Physical Education 9", "Physical Education", "08001"),
        ("ART9", "Visual Arts 9", "Arts", "05154"),
        ("HLTH", "Health", "Health", "08051"),
        ("CS9", "Intro to Computer Science", "Computer Science", "10001")),
    10: (("ELA10", "English 10", "English Language Arts", "01002"),
         ("GEOM", "Geometry", "Mathematics", "02072"),
         ("EARTH", "Earth Science", "Science", "03001"),
         ("GLOB2", "Global History and Geography II", "Social Studies", "04052"),
         ("SPAN2", "Spanish II", "World Languages", "06102"),
         ("PE10", "Physical Education 10", "Physical Education", "08001"),
         ("MUS10", "Chorus", "Music", "05110"),
         ("DRAMA", "Theater", "Arts", "05051"),
         ("BIO", "Biology Honors", "Science", "03051")),
    11: (("ELA11", "English 11", "English Language Arts", "01003"),
         ("ALG2", "Algebra II", "Mathematics", "02056"),
         ("CHEM", "Chemistry", "Science", "03101"),
         ("USHIST", "United States History and Government", "Social Studies", "04101"),
         ("SPAN3", "Spanish III", "World Languages", "06103"),
         ("PE11", "Physical Education 11", "Physical Education", "08001"),
         ("APLANG", "AP English Language", "English Language Arts", "01005"),
         ("PSYCH", "Psychology", "Social Studies", "04254"),
         ("CSP", "AP Computer Science Principles", "Computer Science", "10019")),
    12: (("ELA12", "English 12", "English Language Arts", "01004"),
         ("PRECALC", "Precalculus", "Mathematics", "02110"),
         ("PHYS", "Physics", "Science", "03151"),
         ("GOVT", "Participation in Government", "Social Studies", "04151"),
         ("ECON", "Economics", "Social Studies", "04201"),
         ("PE12", "Physical Education 12", "Physical Education", "08001"),
         ("APCALC", "AP Calculus AB", "Mathematics", "02124"),
         ("APLIT", "AP English Literature", "English Language Arts", "01006"),
         ("FORENS", "Forensic Science", "Science", "03999")),
}
NAMESAKES = (
    "Harriet Tubman", "Frederick Douglass", "Robert Clemente", "Fiorello LaGuardia",
    "Shirley Chisholm", "Langston Hughes", "Eleanor Roosevelt", "Walt Whitman",
    "Jackie Robinson", "Thurgood Marshall", "Emma Lazarus", "Duke Ellington",
    "Sonia Sotomayor", "Maya Angelou", "Albert Einstein", "Rachel Carson",
)
HS_FOCUS = (
    "Health Professions", "Law and Justice", "Arts and Technology", "Environmental Studies",
    "International Studies", "Math, Science and Engineering", "Media and Communications",
    "Public Service", "Global Citizenship", "Architecture and Design",
)

# race/ethnicity mix (approximate NYC public school shares):
# AIAN, asian, black, NHPI, white, two-or-more, hispanic
_RACES = (
    (41, ("false", "false", "false", "false", "true", "false", "true")),
    (20, ("false", "false", "true", "false", "false", "false", "false")),
    (18, ("false", "true", "false", "false", "false", "false", "false")),
    (16, ("false", "false", "false", "false", "true", "false", "false")),
    (3, ("false", "true", "false", "false", "true", "true", "false")),
    (1, ("true", "false", "false", "false", "false", "false", "false")),
    (1, ("false", "false", "false", "true", "false", "false", "false")),
)
RACE_TABLE = [fields for weight, fields in _RACES for _ in range(weight)]
_BIRTHPLACES = (
    (70, ("US", "NY", "New York")),
    (5, ("US", "NJ", "Newark")),
    (3, ("US", "FL", "Miami")),
    (2, ("US", "PR", "San Juan")),
    (5, ("DO", "", "Santo Domingo")),
    (3, ("CN", "", "Fuzhou")),
    (2, ("MX", "", "Puebla")),
    (2, ("EC", "", "Cuenca")),
    (2, ("BD", "", "Dhaka")),
    (2, ("JM", "", "Kingston")),
    (2, ("HT", "", "Port-au-Prince")),
    (1, ("VE", "", "Caracas")),
    (1, ("UA", "", "Kyiv")),
)
BIRTH_TABLE = [fields for weight, fields in _BIRTHPLACES for _ in range(weight)]
RESIDENCE = "01652"  # CEDS: resident of administrative unit and usual attendance area

HOMEROOM_SIZE = 25
TEACHER_SHARE, AIDE_SHARE = 0.90, 0.06  # of staff; the rest are administrators
NO_EMAIL_SHARE = 0.03
MUT_GRADE, MUT_NAME, MUT_MOVE = 0.40, 0.70, 0.85  # cumulative; the rest withdraw
NEW_SHARE = 0.15  # new students per school, as a share of SHARE * size


def _mix(seed: int, n: int) -> float:
    """Stable hash of (seed, n) to [0, 1): splitmix64."""
    z = (seed * 0x9E3779B97F4A7C15 + n + 0x632BE59BD9B4E019) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return ((z ^ (z >> 31)) >> 11) / 9007199254740992.0


def _split(total: int, weights: list[float], minimum: list[int] | None = None) -> list[int]:
    """Split total into integers proportional to weights (largest remainder), with minima."""
    n = len(weights)
    base = list(minimum) if minimum else [0] * n
    rest = total - sum(base)
    if rest < 0:  # not enough for the minima: plain proportional split of total
        base, rest = [0] * n, total
    wsum = sum(weights) or 1.0
    raw = [rest * w / wsum for w in weights]
    out = [int(r) for r in raw]
    left = rest - sum(out)
    order = sorted(range(n), key=lambda i: raw[i] - out[i], reverse=True)
    for i in order[:left]:
        out[i] += 1
    return [b + o for b, o in zip(base, out)]


class _Plan:
    """Per-school numbers for the whole run: a few integers per school."""

    def __init__(self, *, students, staff, classes, enrollments, schools, seed):
        if schools < 1 or students < schools:
            raise ValueError("need at least one school and one student per school")
        rng = random.Random(f"plan:{seed}")
        self.seed = seed
        n_elem = round(schools * 0.45)
        n_mid = round(schools * 0.25)
        if schools >= 3:
            n_elem, n_mid = max(n_elem, 1), max(n_mid, 1)
        n_high = schools - n_elem - n_mid
        kinds = ["elementary"] * n_elem + ["middle"] * n_mid + ["high"] * n_high
        rng.shuffle(kinds)
        self.kind = kinds
        size_factor = {"elementary": 1.0, "middle": 1.0, "high": 1.15}
        weights = [size_factor[k] * rng.uniform(0.5, 1.5) for k in kinds]
        self.size = _split(students, weights, [1] * schools)
        # DBN-like codes, unique
        used: set[str] = set()
        self.dbn: list[str] = []
        self.name: list[str] = []
        for s, kind in enumerate(kinds):
            while True:
                district = rng.randint(1, 32)
                boro = BOROUGHS[min(4, (district - 1) // 7)]
                num = {"elementary": rng.randint(1, 399), "middle": rng.randint(100, 399),
                       "high": rng.randint(400, 699)}[kind]
                dbn = f"{district:02d}{boro}{num:03d}"
                if dbn not in used:
                    used.add(dbn)
                    break
            self.dbn.append(dbn)
            hero = NAMESAKES[rng.randrange(len(NAMESAKES))]
            if kind == "elementary":
                self.name.append(f"P.S. {num} {hero}")
            elif kind == "middle":
                self.name.append(f"{'I.S.' if num % 2 else 'M.S.'} {num} {hero}")
            else:
                self.name.append(f"High School for {HS_FOCUS[rng.randrange(len(HS_FOCUS))]}")
        # grade counts per school (even split)
        self.grade_counts: list[list[tuple[int, int]]] = []
        for s, kind in enumerate(kinds):
            band = list(BANDS[kind])
            counts = _split(self.size[s], [1.0] * len(band))
            self.grade_counts.append(list(zip(band, counts)))
        elem = sum(self.size[s] for s in range(schools) if kinds[s] == "elementary")
        sec = students - elem
        self.elem_students, self.sec_students = elem, sec
        # homerooms
        hr_size = HOMEROOM_SIZE
        while True:
            hr = [
                [math.ceil(c / hr_size) if c else 0 for _, c in self.grade_counts[s]]
                if kinds[s] == "elementary" else []
                for s in range(schools)
            ]
            total_hr = sum(sum(h) for h in hr)
            if total_hr <= max(classes * 0.6, 1) or hr_size > 10_000:
                break
            hr_size = math.ceil(hr_size * 1.25)
        self.homerooms = hr
        self.homeroom_size = hr_size
        sections_total = max(0, classes - total_hr)
        # staff
        n_teach = max(1, round(staff * TEACHER_SHARE))
        n_aide = round(staff * AIDE_SHARE)
        n_admin = max(0, staff - n_teach - n_aide)
        # first pass: estimate teacher enrollments to size the student budget
        teacher_enr = max(classes, n_teach)
        self._tune(enrollments - teacher_enr)
        volume = [
            self.size[s] * (self.x_elem if kinds[s] == "elementary" else self.k_sec)
            for s in range(schools)
        ]
        minima = [
            (math.ceil(self.x_elem if kinds[s] == "elementary" else self.k_sec) + 1)
            if volume[s] > 0 else 0
            for s in range(schools)
        ]
        self.sections = _split(sections_total, volume, minima) if sections_total else [0] * schools
        n_classes = [sum(hr[s]) + self.sections[s] for s in range(schools)]
        self.teachers = _split(n_teach, [max(c, 0.01) for c in n_classes], [1] * schools)
        self.aides = _split(n_aide, [float(x) for x in self.size])
        self.admins = _split(n_admin, [1.0] * schools)
        self.teacher_enrollments = sum(
            max(n_classes[s], self.teachers[s]) if n_classes[s] else 0 for s in range(schools)
        )
        self._tune(enrollments - self.teacher_enrollments)
        self.n_classes = n_classes

    def _tune(self, budget: int) -> None:
        """Average scheduled sections per student: x_elem (plus the homeroom), k_sec."""
        elem, sec = self.elem_students, self.sec_students
        rem = max(0, budget - elem)
        if sec == 0:
            self.x_elem, self.k_sec = min(rem / elem, 7.0) if elem else 0.0, 0.0
            return
        if elem == 0:
            self.x_elem, self.k_sec = 0.0, rem / sec
            return
        k = 7.5
        x = (rem - k * sec) / elem
        if x < 0:
            x, k = 0.0, rem / sec
        elif x > 2:
            k = min(8.0, max(7.5, (rem - 2 * elem) / sec))
            x = (rem - k * sec) / elem
            if x > 7:
                x = 7.0
                k = (rem - x * elem) / sec
        self.x_elem, self.k_sec = x, k


def _school_catalogue(kind: str) -> dict[int, list[tuple[str, str, str, str]]]:
    if kind == "elementary":
        return {-1: list(ELEM_SPECIALS)}
    if kind == "middle":
        return {
            g: [(f"{c}{g}", f"{t} {g}", subj, code) for c, t, subj, code in MIDDLE_COURSES]
            for g in BANDS["middle"]
        }
    return {g: list(HIGH_COURSES[g]) for g in BANDS["high"]}


def _pick_k(rng: random.Random, avg: float, cap: int) -> int:
    k = int(avg)
    if rng.random() < avg - k:
        k += 1
    return min(k, cap)


def _open(out_dir: Path, name: str):
    fh = open(out_dir / name, "w", newline="", encoding="utf-8")
    w = csv.writer(fh)
    w.writerow(HEADERS[name].split(","))
    return fh, w


def generate(
    out_dir: Path,
    *,
    students: int = NYC["students"],
    staff: int = NYC["staff"],
    classes: int = NYC["classes"],
    enrollments: int = NYC["enrollments"],
    schools: int = NYC["schools"],
    seed: int = 1,
    mutate: float = 0.0,
) -> dict[str, int]:
    """Write a OneRoster 1.1 bulk CSV package into out_dir; return data rows per file.

    Extra keys: "users.student", "users.teacher", "users.aide", "users.administrator",
    "users.teacher_no_email", "enrollments.student", "enrollments.teacher",
    "classes.homeroom", "classes.scheduled", and with mutate > 0 "mutated.grade",
    "mutated.name", "mutated.move", "mutated.withdrawn", "mutated.new".
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plan = _Plan(students=students, staff=staff, classes=classes, enrollments=enrollments,
                 schools=schools, seed=seed)
    counts = {name: 0 for name in FILES}
    extra = dict.fromkeys(
        ["users.student", "users.teacher", "users.aide", "users.administrator",
         "users.teacher_no_email", "enrollments.student", "enrollments.teacher",
         "classes.homeroom", "classes.scheduled"], 0)
    mut = dict.fromkeys(["mutated.grade", "mutated.name", "mutated.move",
                         "mutated.withdrawn", "mutated.new"], 0)

    with open(out_dir / "manifest.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        rows = [
            ("propertyName", "value"), ("manifest.version", "1.0"), ("oneroster.version", "1.1"),
            ("file.academicSessions", "bulk"), ("file.categories", "absent"),
            ("file.classes", "bulk"), ("file.classResources", "absent"),
            ("file.courses", "bulk"), ("file.courseResources", "absent"),
            ("file.demographics", "bulk"), ("file.enrollments", "bulk"),
            ("file.lineItems", "absent"), ("file.orgs", "bulk"), ("file.results", "absent"),
            ("file.users", "bulk"), ("source.systemName", "Caseflow Synthetic SIS"),
            ("source.systemCode", "caseflow-oneroster-generator"),
        ]
        w.writerows(rows)
        counts["manifest.csv"] = len(rows) - 1

    fh_o, w_o = _open(out_dir, "orgs.csv")
    w_o.writerow([DISTRICT_ID, "active", DLM, "New York City Department of Education",
                  "district", "NYCDOE", ""])
    for s in range(schools):
        w_o.writerow([f"sch-{plan.dbn[s]}", "active", DLM, plan.name[s], "school",
                      plan.dbn[s], DISTRICT_ID])
    fh_o.close()
    counts["orgs.csv"] = schools + 1

    fh_a, w_a = _open(out_dir, "academicSessions.csv")
    w_a.writerows([
        [YEAR_ID, "active", DLM, "2026-2027", "schoolYear", YEAR_START, YEAR_END, "", "2027"],
        [FALL_ID, "active", DLM, "Fall 2026", "term", YEAR_START, FALL_END, YEAR_ID, "2027"],
        [SPRING_ID, "active", DLM, "Spring 2027", "term", SPRING_START, YEAR_END, YEAR_ID,
         "2027"],
    ])
    fh_a.close()
    counts["academicSessions.csv"] = 3

    handles = {name: _open(out_dir, name) for name in
               ("courses.csv", "classes.csv", "users.csv", "demographics.csv",
                "enrollments.csv")}
    w_c = handles["courses.csv"][1]
    w_k = handles["classes.csv"][1]
    w_u = handles["users.csv"][1]
    w_d = handles["demographics.csv"][1]
    w_e = handles["enrollments.csv"][1]

    n_given, n_family, n_mid = len(GIVEN), len(FAMILY), len(MIDDLE)
    n_race, n_birth = len(RACE_TABLE), len(BIRTH_TABLE)
    # ordinal of Jan 1 of each birth year, and days in it
    year_ord = {y: (date(y, 1, 1).toordinal(), 366 if y % 4 == 0 else 365)
                for y in range(2000, 2024)}
    fromordinal = date.fromordinal
    student_num = 0
    staff_num = 0
    class_num = 0
    new_num = students  # new students (mutate) are numbered after the base range
    email_seq: dict[str, int] = {}

    for s in range(schools):
        rng = random.Random(f"school:{seed}:{s}")
        kind = plan.kind[s]
        dbn = plan.dbn[s]
        ssid = f"sch-{dbn}"
        band = list(BANDS[kind])
        all_grades = ",".join(GRADE_LABELS[g] for g in band)

        # ---- courses
        catalogue = _school_catalogue(kind)
        course_rows = []
        if kind == "elementary":
            for g in band:
                label = GRADE_LABELS[g]
                title = "Kindergarten Homeroom" if g == 0 else f"Grade {int(label)} Homeroom"
                course_rows.append([f"crs-{dbn}-HR{label}", "active", DLM, YEAR_ID, title,
                                    f"HR{label}", label, ssid, "Homeroom", ""])
            for code, title, subj, scode in ELEM_SPECIALS:
                course_rows.append([f"crs-{dbn}-{code}", "active", DLM, YEAR_ID, title, code,
                                    all_grades, ssid, subj, scode])
        else:
            for g, items in catalogue.items():
                for code, title, subj, scode in items:
                    course_rows.append([f"crs-{dbn}-{code}", "active", DLM, YEAR_ID, title,
                                        code, GRADE_LABELS[g], ssid, subj, scode])
        w_c.writerows(course_rows)
        counts["courses.csv"] += len(course_rows)

        # ---- classes: homerooms[g] = [class sid], pools[g or -1] = [(sid, term kind)]
        class_rows = []
        class_ids: list[str] = []
        homerooms: dict[int, list[str]] = {}
        if kind == "elementary":
            room_seq = 100
            for (g, _), n_hr in zip(plan.grade_counts[s], plan.homerooms[s]):
                label = GRADE_LABELS[g]
                short = "K" if g == 0 else str(g)
                homerooms[g] = []
                for _ in range(n_hr):
                    room_seq += 1
                    if room_seq % 100 > 30:
                        room_seq = (room_seq // 100 + 1) * 100 + 1
                    code = f"{short}-{room_seq}"
                    csid = f"cls-{class_num:06d}"
                    class_num += 1
                    class_rows.append([csid, "active", DLM, f"Class {code}", label,
                                       f"crs-{dbn}-HR{label}", code, "homeroom",
                                       f"Room {room_seq}", ssid, TERMS[0][0], "Homeroom", "",
                                       ""])
                    homerooms[g].append(csid)
                    class_ids.append(csid)
            extra["classes.homeroom"] += len(class_ids)
        n_sec = plan.sections[s]
        k_avg = plan.x_elem if kind == "elementary" else plan.k_sec
        k_max = math.ceil(k_avg)
        grade_specific = kind != "elementary" and n_sec >= len(band) * (k_max + 1)
        pools: dict[int, list[tuple[str, int]]] = {}
        section_no: dict[str, int] = {}
        for j in range(n_sec):
            if grade_specific:
                g = band[j % len(band)]
                items = catalogue[g]
                code, title, subj, scode = items[(j // len(band)) % len(items)]
                grades_field = GRADE_LABELS[g]
                pool_key = g
            else:
                if kind == "elementary":
                    items = catalogue[-1]
                    code, title, subj, scode = items[j % len(items)]
                else:  # too few sections for grade-specific pools: cycle all courses
                    g = band[j % len(band)]
                    items = catalogue[g]
                    code, title, subj, scode = items[(j // len(band)) % len(items)]
                grades_field = all_grades
                pool_key = -1
            section_no[code] = section_no.get(code, 0) + 1
            ccode = f"{code}-{section_no[code]:02d}"
            r = rng.random()
            term = 0 if r < 0.8 else (1 if r < 0.9 else 2)
            period = str(1 + j % 9)
            csid = f"cls-{class_num:06d}"
            class_num += 1
            class_rows.append([csid, "active", DLM, f"{title} - Section {section_no[code]:02d}",
                               grades_field, f"crs-{dbn}-{code}", ccode, "scheduled",
                               f"Room {100 * (1 + j % 5) + 1 + (j // 5) % 40}", ssid,
                               TERMS[term][0], subj, scode, period])
            pools.setdefault(pool_key, []).append((csid, term))
            class_ids.append(csid)
        extra["classes.scheduled"] += n_sec
        w_k.writerows(class_rows)
        counts["classes.csv"] += len(class_rows)
        del class_rows
        class_term = {}
        for pool in pools.values():
            for csid, term in pool:
                class_term[csid] = term

        # ---- staff
        user_rows = []
        enr_rows = []
        teacher_ids = []
        for role, n in (("teacher", plan.teachers[s]), ("aide", plan.aides[s]),
                        ("administrator", plan.admins[s])):
            for _ in range(n):
                usid = f"stf-{staff_num:06d}"
                eis = 1_000_000 + (staff_num * 7_919 + 104_729) % 8_999_999
                staff_num += 1
                given = GIVEN[rng.randrange(n_given)]
                family = FAMILY[rng.randrange(n_family)]
                local = f"{given}.{family}".lower().replace("'", "").replace("-", "")
                seq = email_seq.get(local, 0) + 1
                email_seq[local] = seq
                local = f"{local}{seq}"
                email = f"{local}@schools.example.org"
                if role == "teacher" and rng.random() < NO_EMAIL_SHARE:
                    email = ""
                    extra["users.teacher_no_email"] += 1
                user_rows.append([usid, "active", DLM, "true", ssid, role, local,
                                  f"{{EIS:{eis}}}", given, family, "", str(eis), email, "",
                                  "", "", "", ""])
                extra[f"users.{role}"] += 1
                if role == "teacher":
                    teacher_ids.append(usid)
        # teacher enrollments: one primary per class, spare teachers co-teach one class
        n_cls, n_t = len(class_ids), len(teacher_ids)
        if n_cls:
            for j, csid in enumerate(class_ids):
                tsid = teacher_ids[j % n_t]
                _, b, e = TERMS[class_term.get(csid, 0)]
                enr_rows.append([f"enr-{csid[4:]}-{tsid}", "active", DLM, csid, ssid, tsid,
                                 "teacher", "true", b, e])
            for t in range(n_cls, n_t):
                csid = class_ids[t % n_cls]
                tsid = teacher_ids[t]
                _, b, e = TERMS[class_term.get(csid, 0)]
                enr_rows.append([f"enr-{csid[4:]}-{tsid}", "active", DLM, csid, ssid, tsid,
                                 "teacher", "false", b, e])
            extra["enrollments.teacher"] += len(enr_rows)
        w_u.writerows(user_rows)
        counts["users.csv"] += len(user_rows)
        w_e.writerows(enr_rows)
        counts["enrollments.csv"] += len(enr_rows)

        # ---- students
        def pools_for(g: int):
            return pools.get(g if grade_specific else -1, [])

        def draw_classes(r: random.Random, g: int, idx_in_grade: int | None) -> list[str]:
            got = []
            if kind == "elementary":
                hrs = homerooms[g]
                got.append(hrs[idx_in_grade % len(hrs)] if idx_in_grade is not None
                           else hrs[r.randrange(len(hrs))])
            pool = pools_for(g)
            k = _pick_k(r, k_avg, len(pool))
            if k:
                got.extend(pool[i][0] for i in r.sample(range(len(pool)), k))
            return got

        def emit_student(num, g, given, family, middle, osis, birth, sex, race, place,
                         cls, user_dlm=DLM, dem_dlm=DLM, base_cls=None):
            # base_cls: the classes of the base package; enrollments outside it are new
            usid = f"stu-{num:07d}"
            label = GRADE_LABELS[g]
            user_rows.append([usid, "active", user_dlm, "true", ssid, "student", str(osis),
                              f"{{OSIS:{osis}}}", given, family, middle, str(osis), "", "",
                              "", "", label, ""])
            dem_rows.append([usid, "active", dem_dlm, birth, sex, *race, *place, RESIDENCE])
            for csid in cls:
                _, b, e = TERMS[class_term.get(csid, 0)]
                dlm = DLM if base_cls is None or csid in base_cls else DLM_CHANGED
                enr_rows.append([f"enr-{csid[4:]}-{usid}", "active", dlm, csid, ssid, usid,
                                 "student", "false", b, e])

        user_rows = []
        dem_rows = []
        enr_rows = []
        n_written = 0
        for g, n_g in plan.grade_counts[s]:
            for i in range(n_g):
                num = student_num
                student_num += 1
                # base draws: always consumed, mutated or not
                given = GIVEN[rng.randrange(n_given)]
                family = FAMILY[rng.randrange(n_family)]
                middle = MIDDLE[rng.randrange(n_mid)] if rng.random() < 0.3 else ""
                osis = 100_000_000 + (num * 48_271 + 7 * seed + 12_345) % 900_000_000
                r = rng.random()
                byear = 2021 - g - (1 if r < 0.05 else 0)
                o, ndays = year_ord[byear]
                birth = fromordinal(o + rng.randrange(ndays)).isoformat()
                sex = "female" if rng.random() < 0.49 else "male"
                race = RACE_TABLE[rng.randrange(n_race)]
                place = BIRTH_TABLE[rng.randrange(n_birth)]
                cls = draw_classes(rng, g, i)
                user_dlm = DLM
                base_cls = None
                if mutate and _mix(seed, num) < mutate:
                    mr = random.Random(seed * 1_000_003 + num)
                    what = mr.random()
                    base_cls = set(cls)
                    if what < MUT_GRADE:
                        g2 = g + 1 if g + 1 in BANDS[kind] else g - 1
                        mut["mutated.grade"] += 1
                        cls = draw_classes(mr, g2, None)
                        emit_student(num, g2, given, family, middle, osis, birth, sex, race,
                                     place, cls, DLM_CHANGED, DLM, base_cls)
                        n_written += 1
                        continue
                    if what < MUT_NAME:
                        user_dlm = DLM_CHANGED
                        mut["mutated.name"] += 1
                        if mr.random() < 1 / 3:
                            given = GIVEN[(GIVEN.index(given) + 1 + mr.randrange(n_given - 1))
                                          % n_given]
                        else:
                            family = FAMILY[(FAMILY.index(family) + 1
                                             + mr.randrange(n_family - 1)) % n_family]
                    elif what < MUT_MOVE:
                        mut["mutated.move"] += 1
                        pool = pools_for(g)
                        sched = cls[1:] if kind == "elementary" else cls
                        spare = [c for c, _ in pool if c not in cls]
                        if sched and spare:
                            drop = sched[mr.randrange(len(sched))]
                            cls = [c for c in cls if c != drop] + [spare[mr.randrange(len(spare))]]
                        elif kind == "elementary" and len(homerooms[g]) > 1:
                            others = [c for c in homerooms[g] if c != cls[0]]
                            cls = [others[mr.randrange(len(others))], *cls[1:]]
                    else:
                        mut["mutated.withdrawn"] += 1
                        continue
                emit_student(num, g, given, family, middle, osis, birth, sex, race, place,
                             cls, user_dlm, DLM, base_cls)
                n_written += 1
            if len(enr_rows) > 20_000:
                w_u.writerows(user_rows)
                w_d.writerows(dem_rows)
                w_e.writerows(enr_rows)
                counts["users.csv"] += len(user_rows)
                counts["demographics.csv"] += len(dem_rows)
                counts["enrollments.csv"] += len(enr_rows)
                extra["enrollments.student"] += len(enr_rows)
                user_rows, dem_rows, enr_rows = [], [], []
        if mutate:
            nr = random.Random(f"new:{seed}:{s}")
            expected = plan.size[s] * mutate * NEW_SHARE
            n_new = int(expected) + (1 if nr.random() < expected - int(expected) else 0)
            for _ in range(n_new):
                num = new_num
                new_num += 1
                g = band[nr.randrange(len(band))]
                osis = 100_000_000 + (num * 48_271 + 7 * seed + 12_345) % 900_000_000
                byear = 2021 - g
                o, ndays = year_ord[byear]
                emit_student(
                    num, g, GIVEN[nr.randrange(n_given)], FAMILY[nr.randrange(n_family)], "",
                    osis, fromordinal(o + nr.randrange(ndays)).isoformat(),
                    "female" if nr.random() < 0.49 else "male",
                    RACE_TABLE[nr.randrange(n_race)], BIRTH_TABLE[nr.randrange(n_birth)],
                    draw_classes(nr, g, None), DLM_CHANGED, DLM_CHANGED, set())
                n_written += 1
            mut["mutated.new"] += n_new
        w_u.writerows(user_rows)
        w_d.writerows(dem_rows)
        w_e.writerows(enr_rows)
        counts["users.csv"] += len(user_rows)
        counts["demographics.csv"] += len(dem_rows)
        counts["enrollments.csv"] += len(enr_rows)
        extra["enrollments.student"] += len(enr_rows)
        extra["users.student"] += n_written

    for fh, _ in handles.values():
        fh.close()
    counts.update(extra)
    if mutate:
        counts.update(mut)
    counts["plan.elementary_specials_avg"] = round(plan.x_elem, 3)  # type: ignore[assignment]
    counts["plan.secondary_sections_avg"] = round(plan.k_sec, 3)  # type: ignore[assignment]
    counts["plan.homeroom_size"] = plan.homeroom_size
    return counts


def zip_package(out_dir: Path) -> Path:
    """Pack out_dir's CSV files into OUT_DIR.zip (files at the archive root)."""
    target = out_dir.with_suffix(".zip")
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for name in FILES:
            if (out_dir / name).exists():
                zf.write(out_dir / name, name)
    return target


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out_dir", type=Path)
    for key in NYC:
        p.add_argument(f"--{key}", type=int, default=None,
                       help=f"default {NYC[key]:,} (scaled with --students if that is given)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--mutate", "--change-share", dest="mutate", type=float, default=0.0,
                   help="share of students changed vs the same seed's base package")
    p.add_argument("--zip", action="store_true",
                   help="pack into OUT_DIR.zip and remove the folder")
    a = p.parse_args(argv)
    scale = (a.students / NYC["students"]) if a.students else 1.0
    sizes = {k: getattr(a, k) if getattr(a, k) is not None else max(1, round(v * scale))
             for k, v in NYC.items()}
    t0 = time.perf_counter()
    counts = generate(a.out_dir, seed=a.seed, mutate=a.mutate, **sizes)
    t1 = time.perf_counter()
    where = a.out_dir
    if a.zip:
        where = zip_package(a.out_dir)
        shutil.rmtree(a.out_dir)
    t2 = time.perf_counter()
    try:
        import resource
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    except ImportError:  # pragma: no cover - not on POSIX
        rss_mb = float("nan")
    print("requested: " + ", ".join(f"{k}={v:,}" for k, v in sizes.items()))
    for k, v in counts.items():
        print(f"  {k:32} {v:>12,}" if isinstance(v, int) else f"  {k:32} {v:>12}")
    print(f"wrote {where} in {t1 - t0:.1f}s" + (f" (+{t2 - t1:.1f}s zip)" if a.zip else "")
          + f"; peak RSS {rss_mb:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
