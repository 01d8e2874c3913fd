"""Scale-out: three instances of a service in one consumer group, one SIGKILLed mid-load. Its
partitions move to the other two, nothing is lost and no effect happens twice.

The load is produced in two parts: the first before the kill (being consumed when it comes),
the second after it, so every partition the killed instance held has records that only the
survivors can consume. The killed instance is the outbox relay's leader, so relay leadership
moves too. No durations are asserted: after a SIGKILL the group waits for the dead member's
session to time out (KAFKA_SESSION_TIMEOUT_MS, 10 s) before it rebalances; the deadlines
here are generous. The load and its checks are in tests/scale_out.py (bench/scale_out.py
times the same thing).
"""

from __future__ import annotations

import signal

import pytest

from contracts.topics import CASE_TRIGGERS, ROSTER_ENROLLMENTS
from tests.scale_out import CASELOAD_GROUP, CASES_GROUP, CaseloadLoad, CasesLoad, GroupWatch, produce, relay_leader
from tests.support import Stack, eventually, token

pytestmark = pytest.mark.integration


async def _start(system: Stack, service: str, n: int):
    instances = [system.service(service).start() for _ in range(n)]
    for instance in instances:
        await instance.ready(timeout=120)
    return instances


async def _kill_the_relay_leader(instances):
    leader = await eventually(lambda: relay_leader([i.url for i in instances]), 60, what="a relay leader")
    victim = next(i for i in instances if i.url == leader)
    victim.proc.send_signal(signal.SIGKILL)
    victim.proc.wait()
    return victim


async def _took_over(group: GroupWatch, before, committed_at_kill: dict[int, int]) -> set[int]:
    """After the kill: the group settles with the two survivors, they hold every partition,
    and every partition the killed member held is committed to its end by them. Returns the
    killed member's partitions: the member missing after the rebalance held them (survivors
    keep their member ids; should one have rejoined under a new id, every partition is held
    to the same check)."""
    after = await eventually(lambda: group.settled_with(2), 90, what="the group to settle with two members")
    assert after.assigned == set(range(len(group.partitions)))
    gone = set(before.members) - set(after.members)
    killed_partitions = (before.members[gone.pop()] if len(gone) == 1
                         else set(range(len(group.partitions))))
    assert killed_partitions, before.members

    async def consumed_to_the_end():
        ends, committed = await group.ends(), await group.committed()
        return all(committed[p] == ends[p] for p in ends) and (ends, committed)

    ends, committed = await eventually(consumed_to_the_end, 180, interval=0.5, what="the group to consume everything")
    for p in killed_partitions:  # records produced after the kill, consumed by a survivor
        assert ends[p] > committed_at_kill[p], (p, ends[p], committed_at_kill[p])
    return killed_partitions


async def test_three_caseload_instances_one_killed_mid_load_lose_nothing_and_apply_each_effect_once(system):
    await system.prepare("caseload")
    kafka = system.kafka_settings
    load = CaseloadLoad(students=600, rounds=2)
    instances = await _start(system, "caseload", 3)
    conn = await system.db("caseload")
    try:
        async with GroupWatch(kafka, CASELOAD_GROUP, ROSTER_ENROLLMENTS) as group:
            await eventually(lambda: group.settled_with(3), 60, what="three members sharing the partitions")
            await produce(kafka, load.people())

            async def students_known():
                return await conn.fetchval("SELECT count(*) FROM students WHERE district_id = $1",
                                           load.district) == len(load.students) and await group.lag() == 0

            await eventually(students_known, 180, interval=0.5, what="the students and sections")

            await produce(kafka, load.enrolments(0))
            handled = load.setup_enrolments + 100

            async def under_way():
                return await conn.fetchval("SELECT count(*) FROM inbox WHERE consumer = $1", CASELOAD_GROUP) >= handled

            await eventually(under_way, 180, what="the load to be under way")
            before = await eventually(lambda: group.settled_with(3), 30, what="three members")
            committed_at_kill = await group.committed()
            await _kill_the_relay_leader(instances)
            await produce(kafka, load.enrolments(1))

            await _took_over(group, before, committed_at_kill)

        expected = len(load.expected([0, 1]))

        async def all_published():
            return (await load.holds(conn) >= expected
                    and await conn.fetchval("SELECT count(*) FROM outbox") == 0)

        await eventually(all_published, 180, interval=0.5, what="every membership, published")
        verdict = await load.verdict(conn, kafka, [0, 1])
        assert verdict.exact, str(verdict)
        inbox = await conn.fetchval("SELECT count(*) FROM inbox WHERE consumer = $1", CASELOAD_GROUP)
        assert inbox == load.setup_enrolments + expected
    finally:
        await conn.close()


async def test_three_cases_instances_one_killed_mid_load_lose_nothing_and_open_each_case_once(system):
    await system.prepare("cases")
    kafka = system.kafka_settings
    load = CasesLoad(students_per_round=500, rounds=2)
    instances = await _start(system, "cases", 3)
    conn = await system.db("cases")
    try:
        await load.enable_dictionary(instances[0].url, token(load.district, ["district_admin"]))
        await produce(kafka, load.seed(0) + load.seed(1))

        async def seeded():
            return await load.seeded(conn) == 1000

        await eventually(seeded, 180, interval=0.5, what="the students")
        async with GroupWatch(kafka, CASES_GROUP, CASE_TRIGGERS) as group:
            await eventually(lambda: group.settled_with(3), 60, what="three members sharing the partitions")
            await produce(kafka, load.round(0))

            async def under_way():
                return await conn.fetchval("SELECT count(*) FROM inbox WHERE consumer = $1", CASES_GROUP) >= 100

            await eventually(under_way, 180, what="the load to be under way")
            before = await eventually(lambda: group.settled_with(3), 30, what="three members")
            committed_at_kill = await group.committed()
            await _kill_the_relay_leader(instances)
            await produce(kafka, load.round(1))

            await _took_over(group, before, committed_at_kill)

        async def all_published():
            return await load.holds(conn) >= 1000 and await conn.fetchval("SELECT count(*) FROM outbox") == 0

        await eventually(all_published, 180, interval=0.5, what="every case, published")
        verdict = await load.verdict(conn, kafka, [0, 1])
        assert verdict.exact, str(verdict)
    finally:
        await conn.close()
