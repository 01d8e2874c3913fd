"""A bulk transfer (issue 12): 500 cases with 20 timeline entries each, from the request to
every case visible in the destination district's cases service, printed beside the time the
cases service takes to open 500 cases from triggers in the same run.

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:29592 .venv/bin/python bench/transfers.py [--cases 500] [--entries 20] [--link] [--keep]

Real processes on the real broker and database, every guarantee on (inbox, outbox relay,
offsets after the database commit), under their own topic prefix and databases: the cases
service (both districts' side of the portal) and the transfers service. The bench plays
only the roster: StudentEnrolled for both districts' students (source s-<n> at S1,
destination d-<n> at D1) and DistrictUpserted for both districts.

1. Baseline: with Submit a Form enabled, the cases service opens --cases cases from
   FormSubmitted triggers; timed from the first trigger sent to the last CaseOpened read back.
2. Seeding, the real way (not timed): each case gets a note (POST /v1/cases/<id>/notes), a
   task (POST /v1/tasks: its TaskAssigned trigger joins the case) and --entries - 4 more
   FormSubmitted triggers that join it: --entries timeline entries per case with the
   trigger that opened it and "case opened". Checked in the cases database before going on.
3. The transfer: both districts turn the toggle on; one POST /v1/transfers sends every case
   to the destination; the sending district's cases service exports each history
   (CaseHistoryExported on cases.histories.v1) and the transfers service keeps them; once the
   request says every history is in (GET /v1/transfers/<id>, polled) the destination accepts
   with the code, no preview: each case with the transfer's information (student_id null),
   or with --link linked to the destination's roster student d-<n>. Then GET /v1/cases in
   the destination, as its district admin, is polled until every case is there. Printed:
   each stage, from the request and from the stage before, and the total, request -> every
   case visible in the destination, beside the baseline (the ratio) and the target (10 s,
   information only). Afterwards (not timed) the destination's cases are checked whole
   (every entry, the task, the note) and the source's transferred out.

Nothing here asserts a time: the machine is shared; compare the figures of one run.
Backends: KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL if set, else deploy/local/kafka.sh's
broker and an embedded PostgreSQL in .caseflow/bench-transfers-postgres. The topics and the
two databases are deleted at the end unless --keep.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from contextlib import ExitStack
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from harness import backends as shared_backends  # noqa: E402
from harness import dsn_for  # noqa: E402

import asyncpg  # noqa: E402
import httpx  # noqa: E402
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition  # noqa: E402

from contracts import cloudevents  # noqa: E402
from contracts.cases import CaseOpened, CaseTransferredIn, CaseTransferredOut, FormSubmitted  # noqa: E402
from contracts.roster import DistrictUpserted, StudentEnrolled  # noqa: E402
from contracts.topics import partition_key, topic_for  # noqa: E402
from contracts.transfers import CaseDelivered, CaseHistoryExported, TransferAccepted, TransferRequested  # noqa: E402
from services.kit.auth import mint  # noqa: E402
from services.roster.domain import student_id_for  # noqa: E402
from tests.support import SECRET, Stack, eventually  # noqa: E402

SOURCE, DESTINATION = "bench-source", "bench-destination"
COUNSELLOR = "sender@source.example.org"


def _bearer(email: str, district: str, roles: list[str], schools: list[str]) -> dict:
    return {"Authorization": "Bearer " + mint(SECRET, email=email, district_id=district, roles=roles, schools=schools,
                                              ttl_seconds=3600)}


SOURCE_ADMIN = _bearer("admin@source.example.org", SOURCE, ["district_admin", "manage_cases"], [])
SENDER = _bearer(COUNSELLOR, SOURCE, ["manage_cases"], ["S1"])
RECEIVER = _bearer("receiver@dest.example.org", DESTINATION, ["manage_cases"], ["D1"])
DESTINATION_ADMIN = _bearer("admin@dest.example.org", DESTINATION, ["district_admin", "manage_cases"], [])


def _type(cls) -> str:
    return cls.model_fields["event_type"].default


OPENED, TRANSFERRED_IN, TRANSFERRED_OUT = _type(CaseOpened), _type(CaseTransferredIn), _type(CaseTransferredOut)
EXPORTED, DELIVERED = _type(CaseHistoryExported), _type(CaseDelivered)
REQUESTED, ACCEPTED = _type(TransferRequested), _type(TransferAccepted)


class Reader:
    """Reads a topic from its start in the background, keeping each record's event type (its
    ce_type header), value and the moment it was read."""

    def __init__(self, stack: Stack, topic: str) -> None:
        self.stack, self.topic = stack, stack.topic(topic)
        self.seen: dict[str, list[tuple[float, bytes]]] = {}

    async def __aenter__(self) -> Reader:
        # Every partition assigned at once (no consumer group: no join to wait for), from the start.
        self.consumer = AIOKafkaConsumer(bootstrap_servers=self.stack.backends.kafka, enable_auto_commit=False,
                                         max_partition_fetch_bytes=4 * 1024 * 1024)
        await self.consumer.start()
        await self.consumer._client.force_metadata_update()  # noqa: SLF001 - the topic's partitions, fresh
        partitions = [TopicPartition(self.topic, p) for p in self.consumer.partitions_for_topic(self.topic) or ()]
        assert partitions, f"no partitions for {self.topic}"
        self.consumer.assign(partitions)
        await self.consumer.seek_to_beginning(*partitions)

        async def read():
            async for record in self.consumer:
                kind = dict(record.headers).get("ce_type", b"").decode()
                self.seen.setdefault(kind, []).append((time.monotonic(), record.value))

        self.task = asyncio.create_task(read())
        return self

    async def __aexit__(self, *exc) -> None:
        self.task.cancel()
        await self.consumer.stop()

    def count(self, kind: str) -> int:
        return len(self.seen.get(kind, ()))

    async def wait(self, kind: str, n: int, what: str, timeout: float = 600) -> float:
        """When the n-th event of this type was read."""
        async def enough():
            return self.count(kind) >= n

        await eventually(enough, timeout=timeout, interval=0.01, what=what)
        return self.seen[kind][n - 1][0]

    def values(self, kind: str) -> list[bytes]:
        return [value for _, value in self.seen.get(kind, ())]


async def produce(stack: Stack, events: list) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=stack.backends.kafka, linger_ms=5)
    await producer.start()
    try:
        sends = [await producer.send(stack.topic(topic_for(e).name), cloudevents.encode(e),
                                     key=partition_key(e).encode(), headers=cloudevents.headers_for(e, "bench"))
                 for e in events]
        await asyncio.gather(*sends)
    finally:
        await producer.stop()


async def in_parallel(calls, limit: int = 8) -> list:
    gate = asyncio.Semaphore(limit)

    async def one(call):
        async with gate:
            return await call()

    return await asyncio.gather(*(one(c) for c in calls))


async def visible(http: httpx.AsyncClient, url: str) -> int:
    """How many cases the destination's district admin finds with GET /v1/cases, page by page."""
    found, after = 0, None
    while True:
        answer = await http.get(f"{url}/v1/cases", headers=DESTINATION_ADMIN,
                                params={"limit": 500, **({"after": after} if after else {})})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        found += len(body["items"])
        if not body["next_after"]:
            return found
        after = body["next_after"]


async def run(stack: Stack, cases: int, entries: int, link: bool) -> None:
    await stack.prepare("cases", "transfers")
    cases_service = await stack.service("cases").start().ready()
    transfers = await stack.service("transfers").start().ready()
    k, t = cases_service.url, transfers.url
    async with httpx.AsyncClient(timeout=300) as http, Reader(stack, "cases.v1") as case_events:
        # The roster, played: both districts and their students.
        await produce(stack, [DistrictUpserted(district_id=d, name=d.title()) for d in (SOURCE, DESTINATION)]
                      + [StudentEnrolled(district_id=SOURCE, student_id=student_id_for(SOURCE, f"s-{n}"),
                                         source_id=f"s-{n}", school_id="S1", grade="07", given_name="Bench",
                                         family_name=f"Student{n}") for n in range(cases)]
                      + [StudentEnrolled(district_id=DESTINATION, student_id=student_id_for(DESTINATION, f"d-{n}"),
                                         source_id=f"d-{n}", school_id="D1", grade="07", given_name="Bench",
                                         family_name=f"Student{n}") for n in range(cases)])
        body = (await http.put(f"{k}/v1/dictionary/submit_form", json={"enabled": True}, headers=SOURCE_ADMIN)).json()
        enabled_at = next(datetime.fromisoformat(e["enabled_at"]) for e in body["items"]
                          if e["trigger_kind"] == "submit_form")
        await stack.caught_up("cases", "transfers", timeout=300)

        # 1. The baseline: the cases service opens the cases from triggers.
        at = enabled_at + timedelta(seconds=1)
        started = time.monotonic()
        await produce(stack, [FormSubmitted(district_id=SOURCE, occurred_at=at, student_source_id=f"s-{n}",
                                            form_id=f"f-{n}-0", form_name="Check-in 0", actor_email=COUNSELLOR)
                              for n in range(cases)])
        opening = await case_events.wait(OPENED, cases, "every CaseOpened") - started
        opened = [CaseOpened.model_validate_json(v) for v in case_events.values(OPENED)]

        # 2. Each case seeded to --entries timeline entries through the cases service.
        seeding = time.monotonic()
        notes = await in_parallel([
            (lambda c=c: http.post(f"{k}/v1/cases/{c.case_id}/notes", headers=SENDER,
                                   json={"body": "Doing well; family moving in the spring"})) for c in opened])
        tasks = await in_parallel([
            (lambda c=c: http.post(f"{k}/v1/tasks", headers=SENDER, json={
                "student_id": str(c.student_id), "title": "Send records", "assignee_email": COUNSELLOR}))
            for c in opened])
        assert {a.status_code for a in notes} == {201} and {a.status_code for a in tasks} == {202}, \
            [a.text for a in notes + tasks if a.status_code not in (201, 202)][:3]
        await produce(stack, [FormSubmitted(district_id=SOURCE, occurred_at=at + timedelta(minutes=i),
                                            student_source_id=f"s-{n}", form_id=f"f-{n}-{i}",
                                            form_name=f"Check-in {i}", actor_email=COUNSELLOR)
                              for i in range(1, entries - 3) for n in range(cases)])
        await stack.caught_up("cases", "transfers", timeout=600)
        conn = await stack.db("cases")
        try:
            shape = await conn.fetchrow(
                """SELECT count(*) AS cases, min(e) AS min_entries, max(e) AS max_entries, sum(tk) AS tasks,
                          sum(nt) AS notes FROM (
                       SELECT c.case_id, (SELECT count(*) FROM timeline t WHERE t.case_id = c.case_id) AS e,
                              (SELECT count(*) FROM tasks t WHERE t.case_id = c.case_id) AS tk,
                              (SELECT count(*) FROM notes n WHERE n.case_id = c.case_id) AS nt
                       FROM cases c WHERE c.district_id = $1) x""", SOURCE)
        finally:
            await conn.close()
        assert tuple(shape) == (cases, entries, entries, cases, cases), dict(shape)
        seeding = time.monotonic() - seeding

        # 3. The transfer.
        for headers in (SENDER, RECEIVER):
            answer = await http.put(f"{t}/v1/transfers/activation", json={"active": True}, headers=headers)
            assert answer.status_code == 200, answer.text
        async with Reader(stack, "transfers.requests.v1") as requests, \
                Reader(stack, "cases.histories.v1") as histories, \
                Reader(stack, "transfers.deliveries.v1") as deliveries:
            started = time.monotonic()
            answer = await http.post(f"{t}/v1/transfers", headers=SENDER, json={
                "case_ids": [str(c.case_id) for c in opened], "destination_district_ids": [DESTINATION]})
            answered = time.monotonic()
            assert answer.status_code == 201, answer.text
            (request,) = answer.json()["requests"]
            rid = request["request_id"]

            async def complete():
                body = (await http.get(f"{t}/v1/transfers/{rid}", headers=RECEIVER)).json()
                assert body["histories"] != "unavailable", body
                return body["histories"] == "complete"

            await eventually(complete, timeout=600, interval=0.05, what="every history in")
            kept = time.monotonic()
            choices = [{"case_id": str(c.case_id),
                        "student_id": str(student_id_for(DESTINATION, f"d-{c.student_source_id[2:]}")) if link else None}
                       for c in opened]
            accept = await http.post(f"{t}/v1/transfers/{rid}/accept", headers=RECEIVER,
                                     json={"code": request["authentication_code"], "cases": choices})
            accepted = time.monotonic()
            assert accept.status_code == 200, accept.text
            parts = sum(c["parts"] for c in accept.json()["cases"])

            async def all_visible():
                return await visible(http, k) >= cases

            await eventually(all_visible, timeout=600, interval=0.1, what="every case visible in the destination")
            seen = time.monotonic()

            # When each event was read back (the readers run beside the polling).
            out = await requests.wait(REQUESTED, 1, "TransferRequested")
            exported = await histories.wait(EXPORTED, parts, "every CaseHistoryExported")
            first_exported = histories.seen[EXPORTED][0][0]
            accepted_out = await requests.wait(ACCEPTED, 1, "TransferAccepted")
            delivered = await deliveries.wait(DELIVERED, parts, "every CaseDelivered")
            first_delivered = deliveries.seen[DELIVERED][0][0]
            transferred_in = await case_events.wait(TRANSFERRED_IN, cases, "every CaseTransferredIn")
            transferred_out = await case_events.wait(TRANSFERRED_OUT, cases, "every CaseTransferredOut")
            largest = max(len(v) for v in deliveries.values(DELIVERED))

        # Not timed: the destination's cases whole, the source's transferred out.
        conn = await stack.db("cases")
        try:
            arrived = await conn.fetchrow(
                """SELECT count(*) AS cases, min(e) AS min_entries, max(e) AS max_entries, sum(tk) AS tasks,
                          sum(nt) AS notes FROM (
                       SELECT c.case_id, (SELECT count(*) FROM timeline t WHERE t.case_id = c.case_id) AS e,
                              (SELECT count(*) FROM tasks t WHERE t.case_id = c.case_id) AS tk,
                              (SELECT count(*) FROM notes n WHERE n.case_id = c.case_id) AS nt
                       FROM cases c WHERE c.district_id = $1 AND c.transferred_in_from = $2) x""",
                DESTINATION, SOURCE)
            gone = await conn.fetchval("SELECT count(*) FROM cases WHERE district_id = $1 "
                                       "AND status = 'transferred_out'", SOURCE)
        finally:
            await conn.close()
        # Each case: its entries and "Case transferred in from ..."; its task; its note.
        assert tuple(arrived) == (cases, entries + 1, entries + 1, cases, cases), dict(arrived)
        assert gone == cases, gone

    total = seen - started
    how = "linked to the destination's roster students" if link else "with the transfer's information (student_id null)"

    def line(what: str, at: float, before: float) -> None:
        print(f"    {what:<72} {at - started:6.2f} s  (+{at - before:5.2f})")

    print(f"\n{cases} cases, {entries} timeline entries, a task and a note each ({parts} history parts, largest "
          f"CaseDelivered {largest:,} bytes); accepted {how}; seeding took {seeding:.1f} s (not timed)")
    print(f"  {f'baseline: the cases service opens {cases} cases from triggers':<74} {opening:6.2f} s")
    print("  the transfer, from the request (+ from the line before):")
    line("POST /v1/transfers answered (code hashed, request written)", answered, started)
    line("TransferRequested read back", out, answered)
    line("first CaseHistoryExported read back (cases service exporting)", first_exported, out)
    line(f"last of {parts} CaseHistoryExported read back", exported, first_exported)
    line("the transfers service has them all (GET: histories complete)", kept, exported)
    line(f"accept answered (code checked, {parts} CaseDelivered written)", accepted, kept)
    line("TransferAccepted read back", accepted_out, accepted)
    line("first CaseDelivered read back", first_delivered, accepted)
    line(f"last of {parts} CaseDelivered read back", delivered, first_delivered)
    line(f"last of {cases} CaseTransferredIn read back (destination's cases service)", transferred_in, delivered)
    line("every case visible in the destination (GET /v1/cases, polled)", seen, transferred_in)
    line(f"(the source: last of {cases} CaseTransferredOut read back, + from the accept)", transferred_out, accepted)
    print(f"  request -> every case visible in the destination: {total:.2f} s = {total / opening:.1f}x the baseline "
          f"({opening:.2f} s); target < 10 s (information only)")


async def drop_databases(stack: Stack) -> None:
    conn = await asyncpg.connect(dsn_for(stack.backends.postgres, "postgres"))
    try:
        for service in ("cases", "transfers"):
            await conn.execute(f'DROP DATABASE IF EXISTS "{stack.prefix.rstrip(".")}_{service}" WITH (FORCE)')
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=500)
    parser.add_argument("--entries", type=int, default=20, help="timeline entries per case (at least 4)")
    parser.add_argument("--link", action="store_true",
                        help="accept linking each case to a destination roster student (default: transfer info)")
    parser.add_argument("--keep", action="store_true", help="keep the topics and the databases")
    args = parser.parse_args()
    if args.entries < 4:
        parser.error("--entries: at least 4 (the opening trigger, case opened, the task's trigger, the note)")
    with ExitStack() as exits:
        stack = Stack(shared_backends(exits, "bench-transfers-postgres"))

        async def go():
            try:
                await run(stack, args.cases, args.entries, args.link)
            finally:
                for proc in stack.processes:
                    proc.stop()
                if args.keep:
                    print(f"kept: topics {stack.prefix}*, databases {stack.database_url('cases')} and "
                          f"{stack.database_url('transfers')}; logs in {ROOT / '.caseflow' / 'test-logs'}")
                else:
                    await stack.delete_topics()
                    await drop_databases(stack)

        asyncio.run(go())


if __name__ == "__main__":
    main()
