"""How soon the other services enforce an access level the caseload service grants or
revokes (issue 11: "a revoked caller answers 403/404 within seconds, across services"),
beside a raw Kafka round trip measured in the same run.

    python bench/access_lag.py [--rounds 20] [--poll-ms 20] [--http-port-base PORT] [--keep]

The roster, caseload and cases services run as real processes (python -m services.<name>,
every guarantee on: outbox relay, inbox, offsets committed after the database commit) on
the real broker and database, under their own topic prefix and databases. A small district
goes in through the SIS topics (one administrator at school E1 with a login email, one
student at E1) and reaches the caseload and cases services through the roster's events.

Each round, the district's first admin (CASEFLOW_DISTRICT_ADMINS, an identity-only token)
grants the administrator school_admin at E1 (POST /v1/access/grants), then, once every
service enforces it, revokes it (POST /v1/access/revocations). From the moment the caseload
API answers, the administrator's own identity-only token polls each service every
--poll-ms until it answers as the new access says:
- roster: GET /v1/students/{id}, 200 after the grant, 403 after the revoke;
- cases: GET /v1/students/{id}/timeline, 200 after the grant, 404 after the revoke;
- caseload (the owner, which applies the change in the transaction that publishes it):
  GET /v1/students/{id}, 200 / 403: expected on its first poll;
and a bare consumer of caseload.access.v1 (this process, assigned to every partition)
notes when the event is on the topic (the caseload outbox relay's part of the lag).
A service's time is when the answer that showed the change arrived: it includes up to one
poll interval and the request itself. One warm-up round comes first and is not counted.

Baseline, same broker, same run, same number of rounds: one small record produced by a bare
aiokafka producer (acks=all, linger 5 ms, as the services' relay) and read back by a bare
consumer in this process (getmany, 100 ms batch timeout, as the services' consumers).

Printed: median, p90 and max per service for grant and revoke, and each median over the
baseline's. This machine is noisy (2 cores shared by three services, the broker, PostgreSQL
and the poller): compare ratios, repeat. Nothing here asserts a time.

Backends: KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL if set, else the real Apache Kafka from
deploy/local/kafka.sh and an embedded PostgreSQL in .caseflow/bench-access-postgres.
Topics and databases are dropped at the end unless --keep. Service logs:
.caseflow/bench-logs/<prefix><service>-<port>.log.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from contextlib import AsyncExitStack, ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import SECRET, Backends, Ports, System, add_port_flag, backends, eventually, pct  # noqa: E402

import httpx  # noqa: E402
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition  # noqa: E402
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # noqa: E402

from contracts.sis import SisStaffUpserted, SisStudentEnrolled  # noqa: E402
from contracts.topics import CASELOAD_ACCESS  # noqa: E402
from services.kit.auth import mint  # noqa: E402
from services.roster.domain import student_id_for  # noqa: E402

DISTRICT = "bench-access"
ADMIN = "it.admin@bench.example.org"  # the district's first admin, by configuration
STAFF = "grace@bench.example.org"  # an administrator at E1: no access until granted
SERVICES = ("roster", "caseload", "cases")
ROUND_TIMEOUT = 120.0  # a change no service enforces by then is a failure to look into, not a figure


def who(email: str) -> dict:
    """An identity-only token: the person and district, no roles (as an SSO provider sends it)."""
    return {"Authorization": "Bearer " + mint(SECRET, email=email, district_id=DISTRICT)}


# ---------------------------------------------------------------------------- the raw baseline


async def baseline(kafka: str, topic: str, rounds: int) -> list[float]:
    """One small record at a time: bare producer -> bare consumer, seconds each."""
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 1, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=kafka, acks="all", linger_ms=5)
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka, enable_auto_commit=False)
    await producer.start()
    await consumer.start()
    try:
        partition = TopicPartition(topic, 0)

        async def assigned():
            await consumer._client.force_metadata_update()  # noqa: SLF001 - the topic was just created
            return consumer.partitions_for_topic(topic)

        await eventually(assigned, 30, what="the baseline topic's metadata")
        consumer.assign([partition])
        await consumer.seek_to_end(partition)
        await consumer.position(partition)  # resolve "end" now: before the first record, not after it
        out = []
        for n in range(rounds + 1):  # the first is a warm-up
            value = json.dumps({"n": n, "staff_email": STAFF}).encode()
            started = time.perf_counter()
            await producer.send_and_wait(topic, value, key=STAFF.encode())
            while not any(r.value == value for recs in (await consumer.getmany(timeout_ms=100)).values()
                          for r in recs):
                if time.perf_counter() - started > 60:
                    raise RuntimeError("the baseline's record was not read back within 60 s")
            if n:
                out.append(time.perf_counter() - started)
        return out
    finally:
        await consumer.stop()
        await producer.stop()


# ---------------------------------------------------------------------------- the services


class TopicWatch:
    """A bare consumer of caseload.access.v1: when each event type for STAFF is read."""

    def __init__(self, kafka: str, topic: str) -> None:
        self.consumer = AIOKafkaConsumer(bootstrap_servers=kafka, enable_auto_commit=False)
        self.topic = topic
        self.seen: asyncio.Queue[tuple[str, float]] = asyncio.Queue()

    async def start(self) -> None:
        await self.consumer.start()
        await self.consumer._client.force_metadata_update()  # noqa: SLF001
        partitions = [TopicPartition(self.topic, p) for p in range(CASELOAD_ACCESS.partitions)]
        self.consumer.assign(partitions)
        await self.consumer.seek_to_end(*partitions)
        for tp in partitions:
            await self.consumer.position(tp)  # resolve "end" now, before any round
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while True:
            batch = await self.consumer.getmany(timeout_ms=100)
            now = time.perf_counter()
            for recs in batch.values():
                for r in recs:
                    body = json.loads(r.value)
                    if body["staff_email"] == STAFF:
                        self.seen.put_nowait((body["event_type"], now))

    async def next(self, event_type: str) -> float:
        while True:
            seen_type, at = await self.seen.get()
            if seen_type == event_type:
                return at

    async def stop(self) -> None:
        self.task.cancel()
        await self.consumer.stop()


LAST: dict[str, str] = {}  # each probe's last answer, for a round that never ends


async def answers(client: httpx.AsyncClient, path: str, headers: dict, want: int, poll: float) -> float:
    """Poll until the service answers `want`; the moment that answer arrived."""
    while True:
        sent = time.perf_counter()
        answer = await client.get(path, headers=headers)
        LAST[f"{client.base_url}{path}"] = f"{answer.status_code} {answer.text[:200]}"
        if answer.status_code == want:
            return time.perf_counter()
        if answer.status_code not in (200, 403, 404):
            raise RuntimeError(f"{path}: {answer.status_code} {answer.text}")
        await asyncio.sleep(max(0.0, poll - (time.perf_counter() - sent)))


async def measure(backends_: Backends, rounds: int, poll: float, keep: bool, ports: Ports) -> None:
    system = System.new(backends_, "ba", keep=keep, ports=ports)
    student = str(student_id_for(DISTRICT, "s-1"))
    probes = {  # service: (path, its answer once granted and once revoked)
        "caseload": (f"/v1/students/{student}", {"grant": 200, "revoke": 403}),
        "roster": (f"/v1/students/{student}", {"grant": 200, "revoke": 403}),
        "cases": (f"/v1/students/{student}/timeline", {"grant": 200, "revoke": 404}),
    }
    lags: dict[tuple[str, str], list[float]] = {}
    async with AsyncExitStack() as stack:
        stack.push_async_callback(system.close)
        await system.prepare(*SERVICES)
        clients = {}
        for name in SERVICES:
            env = {"CASEFLOW_DISTRICT_ADMINS": f"{DISTRICT}={ADMIN}"} if name == "caseload" else {}
            service = await system.service(name, **env).start().ready(120)
            clients[name] = await stack.enter_async_context(httpx.AsyncClient(base_url=service.url, timeout=30))
        await system.publish_all([
            SisStaffUpserted(district_id=DISTRICT, source_id="p-1", role="administrator", given_name="Grace",
                             family_name="Hopper", email=STAFF, school_ids=["E1"]),
            SisStudentEnrolled(district_id=DISTRICT, source_id="s-1", school_id="E1", grade="03", given_name="Ana",
                               family_name="Reyes"),
        ], source="bench.sis")
        await system.caught_up(*SERVICES, timeout=180)
        base = await baseline(backends_.kafka, system.topic("bench.access-roundtrip"), rounds)
        watch = TopicWatch(backends_.kafka, system.topic(CASELOAD_ACCESS.name))
        await watch.start()
        stack.push_async_callback(watch.stop)
        staff = who(STAFF)
        body = {"staff_email": STAFF, "level": "school_admin", "schools": ["E1"]}
        for n in range(rounds + 1):  # round 0 is a warm-up
            for change, path, event_type in (("grant", "/v1/access/grants", "caseload.access_granted.v1"),
                                             ("revoke", "/v1/access/revocations", "caseload.access_revoked.v1")):
                answer = await clients["caseload"].post(path, json=body, headers=who(ADMIN))
                answered = time.perf_counter()
                if answer.status_code != 200 or answer.json()["changes"][0]["outcome"] not in ("granted", "revoked"):
                    raise RuntimeError(f"{change}: {answer.status_code} {answer.text}")
                waits = {"published": asyncio.create_task(watch.next(event_type))}
                waits |= {s: asyncio.create_task(answers(clients[s], probe, staff, expected[change], poll))
                          for s, (probe, expected) in probes.items()}
                await asyncio.wait(waits.values(), timeout=ROUND_TIMEOUT)
                late = [name for name, task in waits.items() if not task.done()]
                for task in waits.values():
                    task.cancel()
                if late:
                    raise RuntimeError(f"round {n}, {change}: not seen within {ROUND_TIMEOUT:.0f} s by "
                                       f"{', '.join(late)}; last answers: {LAST}")
                if n:
                    for name, task in waits.items():
                        lags.setdefault((change, name), []).append(task.result() - answered)
            if n:
                print(f"  round {n}: " + ", ".join(f"{change} {name} {lags[(change, name)][-1] * 1000:.0f} ms"
                                                   for change in ("grant", "revoke") for name in ("roster", "cases")),
                      flush=True)
    report(rounds, poll, base, lags)


def report(rounds: int, poll: float, base: list[float], lags: dict[tuple[str, str], list[float]]) -> None:
    floor = statistics.median(base)
    print(f"\naccess lag over {rounds} rounds, from the caseload API's answer (polled every {poll * 1000:.0f} ms)")
    print(f"  {'':58s} {'median':>8s} {'p90':>8s} {'max':>8s}   median / baseline")
    print(f"  {'raw baseline: 1 record produce -> consume, Kafka alone':58s} {floor * 1000:8.1f} "
          f"{pct(base, 90) * 1000:8.1f} {max(base) * 1000:8.1f}")
    words = {"published": "on caseload.access.v1 (read by a bare consumer)",
             "caseload": "caseload enforces it (the owner)", "roster": "roster enforces it",
             "cases": "cases enforces it"}
    for change in ("grant", "revoke"):
        for name in ("published", "caseload", "roster", "cases"):
            values = lags[(change, name)]
            median = statistics.median(values)
            print(f"  {change + ': ' + words[name]:58s} {median * 1000:8.1f} {pct(values, 90) * 1000:8.1f} "
                  f"{max(values) * 1000:8.1f}   {median / floor:6.1f}x")
    print("  (ms; a service's time includes up to one poll interval and the request)")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20, help="grant + revoke rounds (default 20)")
    parser.add_argument("--poll-ms", type=float, default=20.0, help="each service polled every (default 20 ms)")
    parser.add_argument("--keep", action="store_true", help="keep the topics and databases")
    add_port_flag(parser)
    args = parser.parse_args()
    with ExitStack() as stack:
        b = backends(stack, "bench-access-postgres")
        print(f"{' '.join(sys.argv)}: roster, caseload and cases on {b.kafka}", flush=True)
        await measure(b, args.rounds, args.poll_ms / 1000, args.keep, Ports(args.http_port_base))


if __name__ == "__main__":
    asyncio.run(main())
