"""A bulk transfer (issue 12): 500 cases with 20 timeline entries each, from the request to
every case's history delivered to the destination, printed beside the time the cases
service takes to open 500 cases from triggers in the same run.

    python bench/transfers.py [--cases 500] [--entries 20] [--http-port-base PORT] [--keep]

Real processes on the real broker and database, every guarantee on (inbox, outbox relay,
offsets after the database commit), under their own topic prefix and databases:

1. Baseline: the cases service with Submit a Form enabled opens --cases cases from
   FormSubmitted triggers (students seeded first); timed from the first trigger sent to the
   last CaseOpened read back. Those CaseOpened feed the transfers service's own copy of
   the cases, as in production.
2. The transfer: both districts turn the toggle on; one POST /v1/transfers sends the cases
   (the answer timed: the argon2id hash of the code and the request written); the bench plays
   the sending district's cases service (until it exports histories itself) and publishes
   each case's history as one part of --entries timeline entries, a task and a note, as soon
   as TransferRequested is out; the destination accepts with the code once the request says
   every history has arrived. Printed: request -> TransferRequested out, parts produced ->
   request complete, the accept's answer, accept -> the last CaseDelivered read back, and
   request -> last delivered (the target: under 10 s). Until the destination's cases service
   applies CaseDelivered, "visible in the destination" is measured at delivery.

Nothing here asserts a time: the machine is shared; compare the two figures of one run.
Backends: KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL if set, else deploy/local/kafka.sh's
broker and an embedded PostgreSQL in .caseflow/bench-transfers-postgres; topics and databases
dropped at the end unless --keep.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from contextlib import ExitStack
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import SECRET, Ports, System, add_port_flag, backends, eventually  # noqa: E402

import httpx  # noqa: E402
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # noqa: E402

from contracts import cloudevents  # noqa: E402
from contracts.cases import FormSubmitted  # noqa: E402
from contracts.roster import DistrictUpserted, StudentEnrolled  # noqa: E402
from contracts.topics import partition_key, topic_for  # noqa: E402
from contracts.transfers import (  # noqa: E402
    CaseHeader,
    CaseHistoryExported,
    CaseHistoryPart,
    HistoryEntry,
    HistoryNote,
    HistoryTask,
    TransferredStudent,
)
from services.kit.auth import mint  # noqa: E402
from services.roster.domain import student_id_for  # noqa: E402

SOURCE, DESTINATION = "bench-source", "bench-destination"
ADMIN = {"Authorization": "Bearer " + mint(SECRET, email="admin@source.example.org", district_id=SOURCE,
                                           roles=["district_admin", "manage_cases"], schools=["S1"])}
SENDER = {"Authorization": "Bearer " + mint(SECRET, email="sender@source.example.org", district_id=SOURCE,
                                            roles=["manage_cases"], schools=["S1"])}
RECEIVER = {"Authorization": "Bearer " + mint(SECRET, email="receiver@dest.example.org", district_id=DESTINATION,
                                              roles=["manage_cases"], schools=["D1"])}


class Reader:
    """Reads a topic from its start in the background, keeping each record's value and the
    moment it was read."""

    def __init__(self, stack: System, topic: str) -> None:
        self.stack, self.topic, self.seen = stack, stack.topic(topic), []

    async def __aenter__(self) -> Reader:
        self.consumer = AIOKafkaConsumer(self.topic, bootstrap_servers=self.stack.backends.kafka,
                                         auto_offset_reset="earliest", enable_auto_commit=False,
                                         group_id=f"bench-{uuid.uuid4()}")
        await self.consumer.start()

        async def read():
            async for record in self.consumer:
                self.seen.append((time.monotonic(), json.loads(record.value)))

        self.task = asyncio.create_task(read())
        return self

    async def __aexit__(self, *exc) -> None:
        self.task.cancel()
        await self.consumer.stop()

    async def wait(self, n: int, what: str, timeout: float = 300) -> float:
        await eventually(lambda: _at_least(self.seen, n), timeout=timeout, interval=0.02, what=what)
        return self.seen[n - 1][0]


async def _at_least(seen: list, n: int) -> bool:
    return len(seen) >= n


async def produce(stack: System, events: list) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=stack.backends.kafka, linger_ms=5)
    await producer.start()
    try:
        sends = [await producer.send(stack.topic(topic_for(e).name), cloudevents.encode(e),
                                     key=partition_key(e).encode(), headers=cloudevents.headers_for(e, "bench"))
                 for e in events]
        await asyncio.gather(*sends)
    finally:
        await producer.stop()


def history(request_id: uuid.UUID, opened: dict, n: int, entries: int) -> CaseHistoryExported:
    at = datetime.fromisoformat(opened["source_occurred_at"])
    return CaseHistoryExported(district_id=SOURCE, request_id=request_id, history=CaseHistoryPart(
        case=CaseHeader(case_id=opened["case_id"], case_number=opened["case_number"], status="open", school_id="S1",
                        trigger_kind="submit_form", opened_at=at),
        student=TransferredStudent(source_id=opened["student_source_id"], given_name="Bench", family_name=f"Student{n}",
                                   birth_date=date(2012, 1, 1) + timedelta(days=n % 365), grade="07", school_id="S1"),
        part=1, parts=1,
        timeline=[HistoryEntry(at=at + timedelta(minutes=i), kind="trigger:submit_form",
                               summary=f"Form submitted: check-in {i}", actor="sender@source.example.org")
                  for i in range(entries)],
        tasks=[HistoryTask(task_id=uuid.uuid4(), title="Call home", assignee_email="sender@source.example.org",
                           status="open", assigned_at=at)],
        notes=[HistoryNote(note_id=uuid.uuid4(), author="sender@source.example.org", body="Doing well",
                           written_at=at)]))


async def run(stack: System, cases: int, entries: int) -> None:
    await stack.prepare("cases", "transfers")
    cases_service = await stack.service("cases").start().ready()
    transfers = await stack.service("transfers").start().ready()
    async with httpx.AsyncClient(timeout=120) as http:
        # 1. The baseline: the cases service opens the cases from triggers.
        await http.put(f"{cases_service.url}/v1/dictionary/submit_form", json={"enabled": True}, headers=ADMIN)
        await produce(stack, [StudentEnrolled(district_id=SOURCE, student_id=student_id_for(SOURCE, f"s-{n}"),
                                              source_id=f"s-{n}", school_id="S1", grade="07", given_name="Bench",
                                              family_name=f"Student{n}") for n in range(cases)]
                      + [DistrictUpserted(district_id=d, name=d.title()) for d in (SOURCE, DESTINATION)])
        await stack.caught_up("cases")
        after = datetime.now(UTC) + timedelta(seconds=1)
        triggers = [FormSubmitted(district_id=SOURCE, occurred_at=after, student_source_id=f"s-{n}",
                                  form_id=f"f-{n}", form_name="Check-in") for n in range(cases)]
        async with Reader(stack, "cases.v1") as opened:
            started = time.monotonic()
            await produce(stack, triggers)
            opening = await opened.wait(cases, "every CaseOpened") - started
        await stack.caught_up("transfers")

        # 2. The transfer.
        for headers in (SENDER, RECEIVER):
            await http.put(f"{transfers.url}/v1/transfers/activation", json={"active": True}, headers=headers)
        case_list = [body for _, body in opened.seen]
        async with Reader(stack, "transfers.requests.v1") as requested, \
                Reader(stack, "transfers.deliveries.v1") as delivered:
            started = time.monotonic()
            answer = await http.post(f"{transfers.url}/v1/transfers", headers=SENDER, json={
                "case_ids": [c["case_id"] for c in case_list], "destination_district_ids": [DESTINATION]})
            answered = time.monotonic()
            assert answer.status_code == 201, answer.text
            (request,) = answer.json()["requests"]
            out = await requested.wait(1, "TransferRequested")
            await produce(stack, [history(uuid.UUID(request["request_id"]), c, n, entries)
                                  for n, c in enumerate(case_list)])
            parts_sent = time.monotonic()

            async def complete():
                body = (await http.get(f"{transfers.url}/v1/transfers/{request['request_id']}",
                                       headers=RECEIVER)).json()
                return body["histories"] == "complete"

            await eventually(complete, timeout=300, interval=0.05, what="every history in")
            ready = time.monotonic()
            accept = await http.post(f"{transfers.url}/v1/transfers/{request['request_id']}/accept", headers=RECEIVER,
                                     json={"code": request["authentication_code"],
                                           "cases": [{"case_id": c["case_id"], "student_id": None} for c in case_list]})
            accepted = time.monotonic()
            assert accept.status_code == 200, accept.text
            last = await delivered.wait(cases, "every CaseDelivered")
            size = max(len(json.dumps(body)) for _, body in delivered.seen)

    print(f"\n{cases} cases, {entries} timeline entries each (largest CaseDelivered {size:,} bytes)")
    print(f"  baseline: the cases service opened {cases} cases from triggers in  {opening:6.2f} s")
    print(f"  send (POST, one request, code hashed)                      {answered - started:6.2f} s")
    print(f"  request -> TransferRequested published                     {out - started:6.2f} s")
    print(f"  histories produced -> request complete                     {ready - parts_sent:6.2f} s")
    print(f"  accept (POST, code checked, {cases} deliveries written)         {accepted - ready:6.2f} s")
    print(f"  accept -> last CaseDelivered read back                     {last - ready:6.2f} s")
    print(f"  request -> every case delivered (excluding the export)     "
          f"{(last - started) - (parts_sent - out):6.2f} s   (target < 10 s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=500)
    parser.add_argument("--entries", type=int, default=20)
    parser.add_argument("--keep", action="store_true", help="keep the topics and databases")
    add_port_flag(parser)
    args = parser.parse_args()
    with ExitStack() as exits:
        b = backends(exits, "bench-transfers-postgres")

        async def go():
            async with System.new(b, "bt", keep=args.keep, ports=Ports(args.http_port_base)) as stack:
                await run(stack, args.cases, args.entries)

        asyncio.run(go())


if __name__ == "__main__":
    main()
