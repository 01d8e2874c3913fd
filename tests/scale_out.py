"""Scale-out, shared by tests/integration/test_scale_out.py and bench/scale_out.py: loads whose
every effect is known in advance, the checks that each effect happened exactly once, and a
look at a consumer group (who owns which partition, what is committed).

caseload: students in grade 07 are seeded (StudentEnrolled); each round then enrols every
student in one of that round's sections (EnrollmentAdded on roster.enrollments.v1, 12
partitions): one section membership, one change-feed row and one CaseloadMembershipAdded each.
cases: every trigger entry enabled; each round seeds its own students, then sends one trigger
per student (cases.triggers.v1, 12 partitions): one case, two timeline entries (the trigger and
"case opened") and one CaseOpened each.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg
import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment

from contracts.cases import FormSubmitted, PlanCreated, TaskAssigned
from contracts.envelope import Event
from contracts.roster import ClassUpserted, EnrollmentAdded, StaffUpserted, StudentEnrolled
from contracts.topics import CASE_TRIGGERS, CASELOAD_MEMBERSHIPS, CASES, ROSTER_ENROLLMENTS, Topic
from services.kit.outbox import message_for, producer_for
from services.kit.settings import KafkaSettings

SOURCE = "tests.scale-out"
SCHOOL = "07X001"
CASELOAD_GROUP = "caseflow.caseload.roster-enrollments"
CASES_GROUP = "caseflow.cases.triggers"
CASE_KINDS = ("submit_form", "create_plan", "assign_task", "schedule_meeting", "conduct_plan_review", "submit_file")


async def produce(kafka: KafkaSettings, events: list[Event]) -> None:
    """Each event to its registry topic and key, as the services' relays send them."""
    producer = producer_for(kafka)
    await producer.start()
    try:
        pending = []
        for e in events:
            m = message_for(e, source=SOURCE, kafka=kafka)
            pending.append(await producer.send(m.topic, m.payload, key=m.key,
                                               headers=[(k, v.encode()) for k, v in m.headers]))
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


# ---------------------------------------------------------------------------- a consumer group, seen from outside


@dataclass
class GroupState:
    state: str
    members: dict[str, set[int]]  # member id -> partitions of the watched topic

    @property
    def assigned(self) -> set[int]:
        return set().union(*self.members.values()) if self.members else set()


class GroupWatch:
    """One consumer group on one topic: members and their partitions (DescribeGroups),
    committed offsets (OffsetFetch), end offsets."""

    def __init__(self, kafka: KafkaSettings, group: str, topic: Topic) -> None:
        self.group = kafka.topic(group)
        self.topic = kafka.topic(topic.name)
        self.partitions = [TopicPartition(self.topic, p) for p in range(topic.partitions)]
        self._options = kafka.client_options()
        self._admin: AIOKafkaAdminClient | None = None
        self._consumer: AIOKafkaConsumer | None = None

    async def __aenter__(self) -> GroupWatch:
        self._admin = AIOKafkaAdminClient(**self._options)
        await self._admin.start()
        self._consumer = AIOKafkaConsumer(**self._options, enable_auto_commit=False)
        await self._consumer.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self._consumer.stop()
        await self._admin.close()

    async def describe(self) -> GroupState:
        [response] = await self._admin.describe_consumer_groups([self.group])
        _error, _group, state, _ptype, _protocol, members, *_ = response.groups[0]
        out = {}
        for member_id, _client_id, _host, _metadata, assignment, *_ in members:
            parts = set()
            if assignment:
                for topic, partitions in ConsumerProtocolMemberAssignment.decode(assignment).assignment:
                    if topic == self.topic:
                        parts.update(partitions)
            out[member_id] = parts
        return GroupState(state, out)

    async def committed(self) -> dict[int, int]:
        offsets = await self._admin.list_consumer_group_offsets(self.group, partitions=self.partitions)
        return {tp.partition: max(offsets[tp].offset, 0) if tp in offsets else 0 for tp in self.partitions}

    async def ends(self) -> dict[int, int]:
        return {tp.partition: end for tp, end in (await self._consumer.end_offsets(self.partitions)).items()}

    async def lag(self) -> int:
        ends, committed = await self.ends(), await self.committed()
        return sum(ends[p] - committed[p] for p in ends)

    async def settled_with(self, members: int) -> GroupState | None:
        """The group, once it is Stable with this many members and every partition assigned."""
        g = await self.describe()
        if g.state == "Stable" and len(g.members) == members and len(g.assigned) == len(self.partitions):
            return g
        return None


async def relay_leader(urls: list[str]) -> str | None:
    """The URL of the instance whose outbox relay leads (from /readyz), if one does."""
    async with httpx.AsyncClient(timeout=3) as client:
        for url in urls:
            try:
                body = (await client.get(url + "/readyz")).json()
            except (httpx.HTTPError, ValueError):
                continue
            if _find_role(body) == "leader":
                return url
    return None


def _find_role(body) -> str | None:
    if isinstance(body, dict):
        if "outbox_relay" in body and isinstance(body["outbox_relay"], dict):
            return body["outbox_relay"].get("role")
        for value in body.values():
            if (role := _find_role(value)) is not None:
                return role
    return None


async def published(kafka: KafkaSettings, topic: Topic) -> list[dict]:
    """Every record now on a topic, as JSON bodies (read from the start, no group)."""
    consumer = AIOKafkaConsumer(**kafka.client_options(), enable_auto_commit=False)
    await consumer.start()
    try:
        parts = [TopicPartition(kafka.topic(topic.name), p) for p in range(topic.partitions)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        out = []
        while [tp for tp in parts if await consumer.position(tp) < ends[tp]]:
            for records in (await consumer.getmany(timeout_ms=500, max_records=10_000)).values():
                out.extend(json.loads(r.value) for r in records)
        return out
    finally:
        await consumer.stop()


@dataclass
class Verdict:
    """What a load left behind: expected effects missing, effects there more than once (two
    different events, or two rows, for one effect), and records published again with the
    same event id (at-least-once publishing, which consumers' inboxes absorb)."""

    expected: int
    missing: int = 0
    extra: int = 0
    duplicated: int = 0
    republished: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def exact(self) -> bool:
        return not (self.missing or self.extra or self.duplicated)

    def __str__(self) -> str:
        return (f"{self.expected:,} expected effects: {self.missing} missing, {self.extra} unexpected, "
                f"{self.duplicated} duplicated; {self.republished} records published again with the same event id"
                + "".join(f"; {n}" for n in self.notes))


def _republished(records: list[dict]) -> int:
    return sum(n - 1 for n in Counter(r["event_id"] for r in records).values())


# ---------------------------------------------------------------------------- caseload


class CaseloadLoad:
    """One district: `students` grade-07 students; per round, `sections` sections (default:
    one per 30 students, as in a school) each with its own teacher; round r enrols student j
    in section j % sections of round r."""

    def __init__(self, students: int, rounds: int, sections: int | None = None) -> None:
        sections = sections or max(8, students // 30)
        self.district = f"scale-{uuid.uuid4().hex[:6]}"
        self.students = [(uuid.uuid4(), f"S{j:07d}") for j in range(students)]
        self.sections = [[(uuid.uuid4(), f"R{r}X{k:03d}", uuid.uuid4(), f"R{r}T{k:03d}") for k in range(sections)]
                         for r in range(rounds)]

    def _e(self, cls, **fields) -> Event:
        return cls(district_id=self.district, producer=SOURCE, **fields)

    def email(self, teacher_source: str) -> str:
        return f"{teacher_source.lower()}@scale.example.org"

    def people(self) -> list[Event]:
        """Staff, sections, teachers in their sections, students: no membership yet."""
        events: list[Event] = []
        for round_sections in self.sections:
            for class_id, class_source, staff_id, staff_source in round_sections:
                events.append(self._e(StaffUpserted, staff_id=staff_id, source_id=staff_source, role="teacher",
                                      given_name="Scale", family_name=staff_source, email=self.email(staff_source),
                                      school_ids=[SCHOOL], matched=True))
                events.append(self._e(ClassUpserted, class_id=class_id, source_id=class_source, school_id=SCHOOL,
                                      class_type="scheduled", title=f"Section {class_source}",
                                      class_code=f"{class_source}-01", grades=["07"], periods=["1"]))
                events.append(self._e(EnrollmentAdded, person_id=staff_id, role="teacher", class_id=class_id,
                                      class_source_id=class_source, user_source_id=staff_source, school_id=SCHOOL,
                                      primary=True))
        for student_id, source_id in self.students:
            events.append(self._e(StudentEnrolled, student_id=student_id, source_id=source_id, school_id=SCHOOL,
                                  grade="07", given_name="Given", family_name=f"F{source_id}"))
        return events

    @property
    def setup_enrolments(self) -> int:
        """The teachers' EnrollmentAdded among people(), on the load topic."""
        return sum(len(s) for s in self.sections)

    def enrolments(self, r: int, part: slice = slice(None)) -> list[Event]:
        """Round r: every student (or a slice of them) into a section of the round."""
        out = []
        sections = self.sections[r]
        for j, (student_id, source_id) in list(enumerate(self.students))[part]:
            class_id, class_source, _, _ = sections[j % len(sections)]
            out.append(self._e(EnrollmentAdded, person_id=student_id, role="student", class_id=class_id,
                               class_source_id=class_source, user_source_id=source_id, school_id=SCHOOL,
                               primary=False))
        return out

    def expected(self, rounds) -> set[tuple[str, str, str]]:
        """(student_id, owner email, source_ref) of every section membership these rounds cause."""
        out = set()
        for r in rounds:
            sections = self.sections[r]
            for j, (student_id, _) in enumerate(self.students):
                class_id, _, _, staff_source = sections[j % len(sections)]
                out.add((str(student_id), self.email(staff_source), str(class_id)))
        return out

    async def holds(self, conn: asyncpg.Connection) -> int:
        return await conn.fetchval("SELECT count(*) FROM memberships WHERE district_id = $1 AND reason = 'section'",
                                   self.district)

    async def verdict(self, conn: asyncpg.Connection, kafka: KafkaSettings, rounds) -> Verdict:
        expected = self.expected(rounds)
        v = Verdict(len(expected))
        held = {(str(r["student_id"]), r["owner_email"], r["source_ref"]) for r in await conn.fetch(
            "SELECT student_id, owner_email, source_ref FROM memberships WHERE district_id = $1 AND reason = 'section'",
            self.district)}
        v.missing, v.extra = len(expected - held), len(held - expected)
        # The change feed: one row per membership added, however often its cause was delivered.
        v.duplicated += await conn.fetchval(
            """SELECT coalesce(sum(n - 1), 0) FROM (
                   SELECT count(*) AS n FROM membership_changes WHERE district_id = $1
                   GROUP BY student_id, owner_email, source_ref, change HAVING count(*) > 1) d""", self.district)
        # Published: one CaseloadMembershipAdded (one event id) per membership.
        records = [r for r in await published(kafka, CASELOAD_MEMBERSHIPS) if r["district_id"] == self.district]
        ids = {}
        for r in records:
            ids.setdefault((r["event_type"], r["student_id"], r["owner_email"], r["source_ref"]), set()).add(
                r["event_id"])
        added = {k[1:] for k in ids if k[0] == "caseload.membership_added.v1"}
        v.duplicated += sum(len(e) - 1 for e in ids.values())
        if added != expected:
            v.notes.append(f"published: {len(expected - added)} missing, {len(added - expected)} unexpected")
            v.missing += len(expected - added)
        v.republished = _republished(records)
        return v


# ---------------------------------------------------------------------------- cases


class CasesLoad:
    """One district, every trigger entry enabled; round r's students are seeded, then sent
    one trigger each (a new case each), the kinds interleaved."""

    def __init__(self, students_per_round: int, rounds: int) -> None:
        self.district = f"scale-{uuid.uuid4().hex[:6]}"
        self.students = [[(uuid.uuid4(), f"R{r}S{j:07d}") for j in range(students_per_round)] for r in range(rounds)]
        self.triggers: dict[int, list[Event]] = {}

    async def enable_dictionary(self, url: str, token: str) -> None:
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as c:
            for kind in CASE_KINDS:
                (await c.put(f"/v1/dictionary/{kind}", json={"enabled": True})).raise_for_status()

    def seed(self, r: int) -> list[Event]:
        return [StudentEnrolled(district_id=self.district, producer=SOURCE, student_id=student_id,
                                source_id=source_id, school_id=SCHOOL, grade="07", given_name="Given",
                                family_name=f"F{source_id}")
                for student_id, source_id in self.students[r]]

    def round(self, r: int, part: slice = slice(None)) -> list[Event]:
        """Round r's triggers (made once, after the dictionary is enabled: a trigger older
        than its entry opens nothing)."""
        if r not in self.triggers:
            now = datetime.now(UTC)
            out = []
            for j, (_, source_id) in enumerate(self.students[r]):
                common = dict(district_id=self.district, producer=SOURCE, occurred_at=now,
                              student_source_id=source_id, actor_email="counsellor@scale.example.org")
                match j % 3:
                    case 0:
                        out.append(FormSubmitted(**common, form_id=f"f{r}-{j}", form_name="Counseling referral"))
                    case 1:
                        out.append(PlanCreated(**common, plan_id=f"p{r}-{j}", plan_name="Tier 2 reading"))
                    case _:
                        out.append(TaskAssigned(**common, task_id=uuid.uuid4(), title="Call home",
                                                assignee_email="counsellor@scale.example.org", due_date=now.date()))
            self.triggers[r] = out
        return self.triggers[r][part]

    async def holds(self, conn: asyncpg.Connection) -> int:
        return await conn.fetchval("SELECT count(*) FROM cases WHERE district_id = $1", self.district)

    async def seeded(self, conn: asyncpg.Connection) -> int:
        return await conn.fetchval("SELECT count(*) FROM students WHERE district_id = $1", self.district)

    async def verdict(self, conn: asyncpg.Connection, kafka: KafkaSettings, rounds) -> Verdict:
        triggers = {t.event_id: t for r in rounds for t in self.round(r)}
        students = {str(s): src for r in rounds for s, src in self.students[r]}
        v = Verdict(len(triggers))
        cases = Counter(str(r["student_id"]) for r in await conn.fetch(
            "SELECT student_id FROM cases WHERE district_id = $1", self.district))
        v.missing = len(set(students) - set(cases))
        v.extra = len(set(cases) - set(students))
        v.duplicated += sum(n - 1 for n in cases.values() if n > 1)
        # The timeline: the trigger and "case opened", each once per trigger.
        entries = Counter((r["event_id"], r["kind"]) for r in await conn.fetch(
            "SELECT event_id, kind FROM timeline WHERE district_id = $1", self.district))
        per_trigger = Counter(e for e, _ in entries.elements())
        v.duplicated += sum(n - 1 for n in entries.values() if n > 1)
        short = sum(1 for t in triggers if per_trigger.get(t, 0) < 2)
        if short:
            v.notes.append(f"{short} triggers without both timeline entries")
            v.missing += short
        records = [r for r in await published(kafka, CASES) if r["district_id"] == self.district
                   and r["event_type"] == "cases.case_opened.v1"]
        opened: dict[str, set[str]] = {}
        for r in records:
            opened.setdefault(r["student_id"], set()).add(r["event_id"])
        v.duplicated += sum(len(ids) - 1 for ids in opened.values())
        not_published = set(students) - set(opened)
        if not_published:
            v.notes.append(f"{len(not_published)} CaseOpened not published")
            v.missing += len(not_published)
        v.republished = _republished(records)
        return v


__all__ = ["CASES_GROUP", "CASELOAD_GROUP", "CASE_TRIGGERS", "ROSTER_ENROLLMENTS", "CaseloadLoad", "CasesLoad",
           "GroupState", "GroupWatch", "Verdict", "produce", "published", "relay_leader"]
