"""Notices by email: emails per second through the notify service with every guarantee on,
beside raw aiosmtplib sends to the same SMTP server in the same run.

    .venv/bin/python bench/notify.py [--tasks 5000] [--burst 5000] [--raw 5000] [--concurrency 8]
                                     [--http-port-base PORT] [--keep]

The SMTP server is aiosmtpd (the one `./dev up` runs, accepting every message and keeping
none) in a process of its own on loopback, so neither side shares its interpreter with it.
The notify service is the real one (python -m services.notify), on the real broker and
database, under its own topic prefix and database (dropped at the end unless --keep).

1. raw: --raw messages written once (the notify service's own templates, same size), then
   sent with aiosmtplib over --concurrency connections kept open, each sending one message
   after another. Emails/s = messages / time to the last server acceptance.
2. tasks: --tasks TaskAssigned events (cases.triggers.v1, 12 partitions), each to its own
   assignee, published as fast as one producer goes. Every guarantee on: the inbox claim
   and the delivery row in one transaction, the sender claiming with FOR UPDATE SKIP LOCKED,
   a notice written from the templates per recipient, the delivery recorded sent in the
   claiming transaction. Emails/s = emails / (first publish -> every delivery sent).
3. burst: one TransferRequested whose destination has --burst Manage Cases users (one
   delivery row each, one insert), while a client reads GET /v1/notices/preferences/me
   (an HTTP route reading the database) every 50 ms: its p50/p99 during the burst beside
   idle says whether the burst blocks the HTTP API. One second in, a TaskAssigned on
   another topic: the time until its delivery is written says whether the burst blocks the
   other consumers (its email then waits its turn behind the burst's).

Prints each rate, notify's rate over raw, and the server's count of messages (it must be
exactly raw + tasks + burst + 1: no message lost or doubled). Targets: >= 200 emails/s and >=
half the raw rate. This machine is shared and noisy: compare ratios, repeat; nothing here
asserts a time.

Backends: KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL if set, else Apache Kafka from
deploy/local/kafka.sh and an embedded PostgreSQL in .caseflow/bench-notify-postgres
(bench/harness.py). Service log: .caseflow/bench-logs/<prefix>notify-<port>.log.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
import uuid
from contextlib import ExitStack
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (  # noqa: E402
    ROOT,
    SECRET,
    Ports,
    System,
    add_port_flag,
    backends,
    cpu_seconds,
    free_port,
    pct,
)

import asyncpg  # noqa: E402
import httpx  # noqa: E402
from aiokafka import AIOKafkaProducer  # noqa: E402

from contracts import cloudevents  # noqa: E402
from contracts.cases import TaskAssigned  # noqa: E402
from contracts.caseload import AccessGranted  # noqa: E402
from contracts.envelope import Event  # noqa: E402
from contracts.roster import DistrictUpserted, StaffUpserted  # noqa: E402
from contracts.topics import partition_key, topic_for  # noqa: E402
from contracts.transfers import TransferRequested  # noqa: E402
from services.kit.auth import mint  # noqa: E402
from services.notify import domain  # noqa: E402
from services.notify.mail import NotifyOptions, Outgoing, SmtpSettings, Templates, compose  # noqa: E402

SENDING, DESTINATION = "bench-send", "bench-dest"
AT = datetime(2026, 9, 1, tzinfo=UTC)

SMTP_SERVER = """
import signal, sys, threading
from aiosmtpd.controller import Controller
count = 0
lock = threading.Lock()
class Sink:
    async def handle_DATA(self, server, session, envelope):
        global count
        with lock:
            count += 1
        return "250 Message accepted for delivery"
controller = Controller(Sink(), hostname="127.0.0.1", port=int(sys.argv[1]))
controller.start()
print("ready", flush=True)
done = threading.Event()
signal.signal(signal.SIGTERM, lambda *a: done.set())
done.wait()
controller.stop()
print(count, flush=True)
"""


class SmtpServerProcess:
    def __init__(self) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, "-c", SMTP_SERVER, str(self.port)], stdout=subprocess.PIPE,
                                     text=True, cwd=ROOT)
        assert self.proc.stdout.readline().strip() == "ready"

    def stop(self) -> int:
        """The number of messages it accepted."""
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=30)
        return int(out.strip().splitlines()[-1])


def staff(district: str, n: int, kind: str) -> tuple[str, StaffUpserted]:
    email = f"{kind}{n:06d}@{district}.example.org"
    return email, StaffUpserted(district_id=district, occurred_at=AT, staff_id=uuid.uuid5(uuid.NAMESPACE_URL, email),
                                source_id=f"{kind}{n}", role="counselor", given_name="Pat", family_name=f"No{n}",
                                email=email, school_ids=["H1"], matched=True)


async def publish(kafka: str, prefix: str, events: list[Event]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=kafka, linger_ms=5, max_batch_size=256 * 1024)
    await producer.start()
    try:
        sent = [await producer.send(prefix + topic_for(e).name, cloudevents.encode(e), key=partition_key(e).encode(),
                                    headers=cloudevents.headers_for(e, "bench.notify")) for e in events]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


async def count(dsn: str, sql: str, *args) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


async def wait_sent(dsn: str, n: int, started: float, timeout: float = 900) -> float:
    """Seconds from `started` until n deliveries are sent (none failed)."""
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + timeout
        while True:
            sent, failed = await conn.fetchrow(
                "SELECT count(*) FILTER (WHERE status = 'sent'), count(*) FILTER (WHERE status = 'failed') "
                "FROM deliveries")
            if failed:
                raise RuntimeError(f"{failed} deliveries failed")
            if sent >= n:
                return time.perf_counter() - started
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {sent} of {n} sent after {timeout}s")
            await asyncio.sleep(0.05)
    finally:
        await conn.close()


async def eventually_row(dsn: str, event_id: uuid.UUID, since: float, timeout: float = 120) -> float:
    """Seconds from `since` until the event's delivery row exists (its consumer handled it)."""
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + timeout
        while not await conn.fetchval("SELECT count(*) FROM deliveries WHERE event_id = $1", event_id):
            if time.monotonic() > deadline:
                raise RuntimeError(f"no delivery for {event_id} after {timeout}s")
            await asyncio.sleep(0.01)
        return time.perf_counter() - since
    finally:
        await conn.close()


def sample_message(i: int) -> Outgoing:
    event_id = uuid.uuid4()
    content = domain.contents_for(TaskAssigned(district_id=SENDING, student_source_id="S-1", task_id=uuid.uuid4(),
                                               title="t", assignee_email="x@example.org", due_date=date(2026, 11, 20)),
                                  ["task_assigned"], {})["task_assigned"]
    recipient = f"raw{i:06d}@example.org"
    return Outgoing(delivery_id=i, event_id=str(event_id), notice="task_assigned", recipient=recipient,
                    message_id=domain.message_id(event_id, recipient), attempts=0, subject=content.subject,
                    context=content.context, sender_name="Caseflow")


async def raw_sends(port: int, n: int, concurrency: int) -> float:
    """Emails/s: aiosmtplib alone, same messages, same number of connections kept open."""
    import aiosmtplib

    options = NotifyOptions()
    templates = Templates()
    messages = [compose(sample_message(i), templates, options) for i in range(n)]
    settings = SmtpSettings(host="127.0.0.1", port=port)
    waiting = list(reversed(messages))

    async def connection() -> None:
        client: aiosmtplib.SMTP = settings.client()
        await client.connect()
        try:
            while waiting:
                await client.send_message(waiting.pop())
        finally:
            await client.quit()

    started = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(concurrency)))
    return n / (time.perf_counter() - started)


async def http_latencies(url: str, headers: dict, stop: asyncio.Event) -> list[float]:
    out = []
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        while not stop.is_set():
            t = time.perf_counter()
            answer = await client.get("/v1/notices/preferences/me", headers=headers)
            assert answer.status_code == 200, answer.text
            out.append((time.perf_counter() - t) * 1000)
            await asyncio.sleep(0.05)
    return out


async def main(args) -> None:
    with ExitStack() as stack:
        b = backends(stack, "bench-notify-postgres")
        kafka = b.kafka
        system = System.new(b, "bn", keep=args.keep, ports=Ports(args.http_port_base))
        smtp = SmtpServerProcess()
        stack.callback(lambda: smtp.proc.poll() is None and smtp.proc.kill())
        dsn = system.database_url("notify")
        try:
            await system.prepare("notify")
            service = system.service("notify", CASEFLOW_SMTP_HOST="127.0.0.1", CASEFLOW_SMTP_PORT=str(smtp.port),
                                     CASEFLOW_NOTIFY_SEND_CONCURRENCY=str(args.concurrency),
                                     CASEFLOW_CONSUMER_BATCH_SIZE="2000").start()
            await service.ready()
            print(f"notify ready; prefix {system.prefix}; log {service.log_path}")

            # The projection: assignees, and the destination's Manage Cases users.
            assignees = [staff(SENDING, i, "teacher") for i in range(args.tasks)]
            managers = [staff(DESTINATION, i, "manager") for i in range(args.burst)]
            world: list[Event] = [DistrictUpserted(district_id=SENDING, occurred_at=AT, name="Bench Sending"),
                                  DistrictUpserted(district_id=DESTINATION, occurred_at=AT, name="Bench Destination")]
            world += [e for _, e in assignees + managers]
            world += [AccessGranted(district_id=DESTINATION, occurred_at=AT, grant_id=uuid.uuid4(), staff_email=email,
                                    level="manage_cases", school_id="H1", basis="granted") for email, _ in managers]
            await publish(kafka, system.prefix, world)
            await system.caught_up("notify", timeout=600)
            print(f"projection: {len(assignees) + len(managers)} staff, {len(managers)} Manage Cases users")

            # 1. raw
            raw = await raw_sends(smtp.port, args.raw, args.concurrency) if args.raw else float("nan")
            print(f"raw aiosmtplib        {args.raw:>7,} emails  {raw:8.0f} emails/s  ({args.concurrency} connections)")

            # 2. tasks: one event, one email each
            rate_tasks = float("nan")
            if args.tasks:
                events = [TaskAssigned(district_id=SENDING, student_source_id=f"S-{i}", task_id=uuid.uuid4(),
                                       title="Call home", assignee_email=email, due_date=date(2026, 11, 20))
                          for i, (email, _) in enumerate(assignees)]
                cpu = cpu_seconds(service.proc.pid)
                started = time.perf_counter()
                await publish(kafka, system.prefix, events)
                published = time.perf_counter() - started
                elapsed = await wait_sent(dsn, args.tasks, started)
                cpu = cpu_seconds(service.proc.pid) - cpu
                rate_tasks = args.tasks / elapsed
                print(f"notify, tasks         {args.tasks:>7,} emails  {rate_tasks:8.0f} emails/s  "
                      f"(published in {published:.1f}s, all sent {elapsed:.1f}s after the first publish; "
                      f"notify's CPU {cpu / args.tasks * 1000:.2f} ms per email)")

            # 3. burst: one event, --burst emails; the HTTP API read meanwhile
            rate_burst = float("nan")
            if args.burst:
                me = {"Authorization": "Bearer " + mint(SECRET, email=managers[0][0], district_id=DESTINATION)}
                stop = asyncio.Event()
                idle_task = asyncio.create_task(http_latencies(service.url, me, stop))
                await asyncio.sleep(3)
                stop.set()
                idle = await idle_task
                stop = asyncio.Event()
                during_task = asyncio.create_task(http_latencies(service.url, me, stop))
                before = await count(dsn, "SELECT count(*) FROM deliveries WHERE status = 'sent'")
                event = TransferRequested(district_id=SENDING, request_id=uuid.uuid4(),
                                          destination_district_id=DESTINATION, case_ids=[uuid.uuid4()], case_count=1,
                                          requested_by="sender@example.org", expires_at=AT + timedelta(days=7))
                cpu = cpu_seconds(service.proc.pid)
                started = time.perf_counter()
                await publish(kafka, system.prefix, [event])
                # Another topic's event in the middle of the burst: its consumer is not held up.
                await asyncio.sleep(1.0)
                other = TaskAssigned(district_id=SENDING, student_source_id="S-other", task_id=uuid.uuid4(),
                                     title="Call home", assignee_email="other@bench-send.example.org")
                other_at = time.perf_counter()
                await publish(kafka, system.prefix, [other])
                handled = await eventually_row(dsn, other.event_id, other_at)
                elapsed = await wait_sent(dsn, before + args.burst + 1, started)
                cpu = cpu_seconds(service.proc.pid) - cpu
                stop.set()
                during = await during_task
                rate_burst = args.burst / elapsed
                print(f"notify, burst         {args.burst:>7,} emails  {rate_burst:8.0f} emails/s  "
                      f"(one TransferRequested; all sent {elapsed:.1f}s after it was published; "
                      f"notify's CPU {cpu / args.burst * 1000:.2f} ms per email, the HTTP reads included)")
                print(f"  a TaskAssigned published 1 s into the burst (cases.triggers.v1): its delivery written "
                      f"{handled * 1000:.0f} ms after publishing (the burst took {elapsed:.1f} s to send)")
                print(f"  GET /v1/notices/preferences/me  idle p50 {pct(idle, 50):.0f} ms p99 {pct(idle, 99):.0f} ms; "
                      f"during the burst p50 {pct(during, 50):.0f} ms p99 {pct(during, 99):.0f} ms "
                      f"max {max(during):.0f} ms ({len(during)} requests)")
            service.stop()
        finally:
            accepted = smtp.stop()
            await system.close()
        expected = args.raw + args.tasks + args.burst + (1 if args.burst else 0)
        print(f"SMTP server accepted {accepted:,} messages (expected {expected:,}: "
              f"{'exact' if accepted == expected else 'MISMATCH'})")
        rates = [r for r in (rate_tasks, rate_burst) if r == r]
        if rates and raw == raw:
            print(f"notify / raw: tasks {rate_tasks / raw:.2f}, burst {rate_burst / raw:.2f} "
                  f"(target >= 0.5, and >= 200 emails/s: median {statistics.median(rates):.0f})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=5000, help="TaskAssigned events, one email each")
    parser.add_argument("--burst", type=int, default=5000, help="Manage Cases users of one TransferRequested")
    parser.add_argument("--raw", type=int, default=5000, help="raw aiosmtplib sends")
    parser.add_argument("--concurrency", type=int, default=8, help="SMTP connections, for notify and raw alike")
    parser.add_argument("--keep", action="store_true", help="keep the topics and the database")
    add_port_flag(parser)
    asyncio.run(main(parser.parse_args()))
