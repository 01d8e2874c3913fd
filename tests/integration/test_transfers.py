"""The District Transfer Portal (seed 003, issue 12) on real Kafka and PostgreSQL: the toggle
on both sides, single and bulk sends to one and several districts, the authentication code
(hash at rest, lockout, regenerate, expiry), accepting with a link and with the transfer's
information (every part of every case delivered once), reject, cancel, the accept/cancel
race, a double accept, a crash around the accept's commit, other districts' 404s, and no
code or student name in a log line or a pre-acceptance event.

The cases service's side is played by the test: CaseOpened on cases.v1, and the exported
history parts (CaseHistoryExported) on cases.histories.v1 for each TransferRequested."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, date, datetime, timedelta

import asyncpg
import httpx
import pytest
from argon2 import PasswordHasher

from contracts.caseload import AccessGranted, AccessRevoked
from contracts.cases import CaseOpened, CaseTransferredOut
from contracts.roster import DistrictUpserted, StudentEnrolled
from contracts.transfers import (
    CaseHeader,
    CaseHistoryExported,
    CaseHistoryPart,
    CaseHistoryUnavailable,
    HistoryEntry,
    HistoryNote,
    HistoryTask,
    TransferredStudent,
)
from services.kit.auth import mint
from services.kit.crash import CRASH_EXIT_CODE
from services.transfers.domain import delivery_event_id, normalised_code
from tests.support import SECRET, Stack, eventually

pytestmark = pytest.mark.integration

A, B, C, Z = "d-tx-yonkers", "d-tx-albany", "d-tx-buffalo", "d-tx-elsewhere"
NAMES = {A: "Yonkers Public Schools", B: "Albany City School District", C: "Buffalo Public Schools",
         Z: "Elsewhere Union Free School District"}
AT = datetime(2026, 10, 1, 9, 0, tzinfo=UTC)
# The persons of concern: names no log line or pre-acceptance event may hold.
GIVEN = "Zenobia"
BORN = date(2012, 3, 14)


def family(n: int) -> str:
    return f"Quarrington{n:02d}"


def bearer(email: str, district: str, roles: list[str] | None = None, schools: list[str] | None = None) -> dict:
    return {"Authorization": "Bearer " + mint(SECRET, email=email, district_id=district, roles=roles, schools=schools)}


SENDER = bearer("okafor@yonkers.example.org", A, ["manage_cases", "caseload_viewer"], ["H1", "H2"])
SENDER_H1 = bearer("rivera@yonkers.example.org", A, ["manage_cases"], ["H1"])
TEACHER = bearer("teacher@yonkers.example.org", A, ["caseload_viewer"], ["H1"])
RECEIVER = bearer("lee@albany.example.org", B, ["manage_cases"], ["B1"])
RECEIVER_C = bearer("park@buffalo.example.org", C, ["manage_cases"], ["C1"])
OUTSIDER = bearer("nobody@elsewhere.example.org", Z, ["manage_cases"], ["Z1"])


def email_of(headers: dict) -> str:
    import jwt

    return jwt.decode(headers["Authorization"].split()[1], options={"verify_signature": False})["email"]


class World:
    """The stack, the transfers service's client, and the cases the sending district has."""

    def __init__(self, system: Stack, service) -> None:
        self.system = system
        self.service = service
        self.client = httpx.AsyncClient(base_url=service.url, timeout=30)
        self.cases: dict[uuid.UUID, dict] = {}  # case_id -> number, school, person no.

    async def open_cases(self, n: int, school: str = "H1", district: str = A) -> list[uuid.UUID]:
        events, ids = [], []
        for _ in range(n):
            case_id, k, student_id = uuid.uuid4(), len(self.cases) + 1, uuid.uuid4()
            self.cases[case_id] = {"number": f"26-{k:06d}", "school": school, "person": k, "student": student_id}
            ids.append(case_id)
            events.append(CaseOpened(district_id=district, occurred_at=AT, case_id=case_id,
                                     case_number=f"26-{k:06d}", school_id=school, student_id=student_id,
                                     student_source_id=f"s-{k}", trigger_kind="submit_form",
                                     source_event_id=uuid.uuid4(), source_occurred_at=AT))
        await self.system.publish_all(events)
        return ids

    def part(self, request_id, case_id, n: int, parts: int, district: str = A) -> CaseHistoryExported:
        c = self.cases[case_id]
        return CaseHistoryExported(district_id=district, request_id=request_id, history=CaseHistoryPart(
            case=CaseHeader(case_id=case_id, case_number=c["number"], status="open", school_id=c["school"],
                            trigger_kind="submit_form", opened_at=AT, team_name="Tier 2",
                            case_manager="okafor@yonkers.example.org"),
            student=TransferredStudent(source_id=f"s-{c['person']}", given_name=GIVEN,
                                       family_name=family(c["person"]), birth_date=BORN, grade="08",
                                       school_id=c["school"]),
            part=n, parts=parts,
            timeline=[HistoryEntry(at=AT + timedelta(minutes=10 * n + i), kind="trigger:submit_form",
                                   summary=f"Form submitted: referral {n}.{i}", actor="okafor@yonkers.example.org")
                      for i in range(3)],
            tasks=[HistoryTask(task_id=uuid.uuid4(), title=f"Call home ({n})", assignee_email="okafor@yonkers.example.org",
                               status="open", assigned_at=AT,
                               notes=[HistoryNote(note_id=uuid.uuid4(), author="okafor@yonkers.example.org",
                                                  body="Left a message", written_at=AT)])] if n == 1 else [],
            notes=[HistoryNote(note_id=uuid.uuid4(), author="okafor@yonkers.example.org", body=f"Note {n}",
                               written_at=AT)]))

    async def export(self, request_id, case_ids, parts: int = 2, only: int | None = None) -> list[CaseHistoryExported]:
        """What the sending district's cases service does on TransferRequested: each case's
        history in `parts` parts (`only`: just that part of each)."""
        events = [self.part(request_id, c, n, parts) for c in case_ids for n in range(1, parts + 1)
                  if only is None or n == only]
        await self.system.publish_all(events)
        return events

    async def ready(self, request_id, headers=SENDER) -> dict:
        async def complete():
            body = (await self.client.get(f"/v1/transfers/{request_id}", headers=headers)).json()
            return body if body.get("histories") == "complete" else None

        return await eventually(complete, what="every part of every case's history")

    async def turn(self, headers: dict, active: bool) -> dict:
        answer = await self.client.put("/v1/transfers/activation", json={"active": active}, headers=headers)
        assert answer.status_code == 200, answer.text
        return answer.json()

    async def send(self, case_ids, destinations, notes: str | None = "Moving mid-year; call us", headers=SENDER):
        return await self.client.post("/v1/transfers", headers=headers, json={
            "case_ids": [str(c) for c in case_ids], "destination_district_ids": destinations, "notes": notes})

    async def sent(self, case_ids, destinations, **kw) -> list[dict]:
        answer = await self.send(case_ids, destinations, **kw)
        assert answer.status_code == 201, answer.text
        return answer.json()["requests"]

    async def accept(self, request_id, code: str, choices: dict, headers=RECEIVER) -> httpx.Response:
        return await self.client.post(f"/v1/transfers/{request_id}/accept", headers=headers, json={
            "code": code, "cases": [{"case_id": str(c), "student_id": str(s) if s else None}
                                    for c, s in choices.items()]})

    async def events(self, topic: str) -> list[dict]:
        return [json.loads(r.value) for r in await self.system.records(topic)]


async def start(system: Stack, **env: str):
    return await system.service("transfers", CASEFLOW_TRANSFERS_EXPIRY_POLL_SECONDS="1", **env).start().ready()


@pytest.fixture
async def world(system: Stack):
    await system.prepare("transfers")
    service = await start(system)
    w = World(system, service)
    await system.publish_all([DistrictUpserted(district_id=d, occurred_at=AT, name=name) for d, name in NAMES.items()])
    # Albany's roster: person 1's namesake (same names and birth date), and others.
    await system.publish_all([
        StudentEnrolled(district_id=B, occurred_at=AT, student_id=uuid.UUID(int=n), source_id=f"alb-{n}",
                        school_id="B1", grade="08", given_name=GIVEN, family_name=family(n), birth_date=BORN)
        for n in (1, 2)] + [
        StudentEnrolled(district_id=B, occurred_at=AT, student_id=uuid.UUID(int=99), source_id="alb-99",
                        school_id="B1", grade="08", given_name="Other", family_name="Person", birth_date=BORN)])
    yield w
    await w.client.aclose()


async def all_on(w: World) -> None:
    for headers in (SENDER, RECEIVER, RECEIVER_C, OUTSIDER):
        await w.turn(headers, True)


# ---------------------------------------------------------------------------- activation


async def test_transfers_are_off_until_turned_on_and_a_district_that_is_off_neither_sends_receives_nor_is_listed(
        world: World, system: Stack):
    w = world
    (case,) = await w.open_cases(1)
    await system.caught_up("transfers")
    body = (await w.client.get("/v1/transfers/activation", headers=SENDER)).json()
    assert (body["active"], body["history"], body["label"]) == (False, [], "Activate Case Transfers Between Districts")
    # Only Manage Cases users toggle it; a teacher is told why.
    refused = await w.client.put("/v1/transfers/activation", json={"active": True}, headers=TEACHER)
    assert refused.status_code == 403 and "Manage Cases" in refused.json()["detail"]

    # Off: the sending district cannot send.
    answer = await w.send([case], [B])
    assert answer.status_code == 409 and "off in your district" in answer.json()["detail"]
    await w.turn(SENDER, True)
    # A destination that is off is not listed, and cannot be sent to.
    assert (await w.client.get("/v1/transfers/destinations", headers=SENDER)).json()["items"] == []
    answer = await w.send([case], [B])
    assert answer.status_code == 422 and answer.json()["problems"][0]["district_id"] == B
    await w.turn(RECEIVER, True)
    await w.turn(RECEIVER_C, True)
    listed = (await w.client.get("/v1/transfers/destinations", headers=SENDER)).json()["items"]
    assert listed == [{"district_id": B, "name": NAMES[B]}, {"district_id": C, "name": NAMES[C]}]  # by name, not itself
    assert [d["district_id"] for d in (await w.client.get("/v1/transfers/destinations",
                                                          headers=RECEIVER)).json()["items"]] == [C, A]

    (request,) = await w.sent([case], [B])
    await w.export(request["request_id"], [case], parts=1)
    await w.ready(request["request_id"])
    # A pending request cannot be opened or accepted while either side is off.
    await w.turn(RECEIVER, False)
    answer = await w.accept(request["request_id"], request["authentication_code"], {case: None})
    assert answer.status_code == 409 and "off in your district" in answer.json()["detail"]
    await w.turn(RECEIVER, True)
    await w.turn(SENDER, False)
    answer = await w.client.post(f"/v1/transfers/{request['request_id']}/preview", headers=RECEIVER,
                                 json={"code": request["authentication_code"]})
    assert answer.status_code == 409 and "off in the sending district" in answer.json()["detail"]
    detail = (await w.client.get(f"/v1/transfers/{request['request_id']}", headers=SENDER)).json()
    assert detail["failed_attempts"] == 0  # refusals before the code is tried cost no try
    await w.turn(SENDER, True)
    answer = await w.accept(request["request_id"], request["authentication_code"], {case: None})
    assert answer.status_code == 200, answer.text

    # Each change is recorded and published once; turning it to what it is changes nothing.
    await w.turn(SENDER, True)
    history = (await w.client.get("/v1/transfers/activation", headers=SENDER)).json()["history"]
    assert [(h["active"], h["changed_by"]) for h in history] == [(True, "okafor@yonkers.example.org"),
                                                                 (False, "okafor@yonkers.example.org"),
                                                                 (True, "okafor@yonkers.example.org")]
    await system.caught_up("transfers")
    changes = [e for e in await w.events("transfers.districts.v1") if e["district_id"] == A]
    assert [(e["active"], e["changed_by"]) for e in changes] == [(True, "okafor@yonkers.example.org"),
                                                                 (False, "okafor@yonkers.example.org"),
                                                                 (True, "okafor@yonkers.example.org")]


# ---------------------------------------------------------------------------- sending and the code at rest


async def test_single_and_bulk_sends_to_one_and_several_districts_each_with_a_code_kept_only_as_its_argon2id_hash(
        world: World, system: Stack):
    w = world
    await all_on(w)
    one = await w.open_cases(1)
    bulk = await w.open_cases(3)
    at_h2 = await w.open_cases(1, school="H2")
    elsewhere = await w.open_cases(1, district=B)
    gone = await w.open_cases(1)
    await system.publish(CaseTransferredOut(district_id=A, occurred_at=AT + timedelta(days=1), case_id=gone[0],
                                            case_number=w.cases[gone[0]]["number"],
                                            student_id=w.cases[gone[0]]["student"],  # its key: after CaseOpened
                                            destination_district_id=C, request_id=uuid.uuid4()))
    await system.caught_up("transfers")

    (single,) = await w.sent(one, [B], notes=None)
    several = await w.sent(bulk, [B, C], notes="Family moved; please call")
    assert [(r["destination_district_id"], r["destination_name"], r["case_count"]) for r in several] == [
        (B, NAMES[B], 3), (C, NAMES[C], 3)]
    requests = [single, *several]
    codes = [r["authentication_code"] for r in requests]
    assert len(set(codes)) == 3 and all(normalised_code(c) for c in codes)
    assert datetime.fromisoformat(single["expires_at"]) - datetime.fromisoformat(single["requested_at"]) == \
        timedelta(days=14)

    # Cases that cannot be sent are named, each with its rule; nothing is sent.
    answer = await w.send([*one, *at_h2, *elsewhere, *gone, uuid.uuid4()], [B], headers=SENDER_H1)
    assert answer.status_code == 422
    rules = {p["case_id"]: p["rule"] for p in answer.json()["problems"]}
    assert rules == {str(at_h2[0]): "unknown_case",  # rivera has nothing at H2
                     str(elsewhere[0]): "unknown_case", str(gone[0]): "transferred_out",
                     **{k: "unknown_case" for k in rules if k not in map(str, [*at_h2, *elsewhere, *gone])}}
    answer = await w.send(one, [A])
    assert answer.status_code == 422 and "itself" in answer.json()["detail"]

    # The outgoing list (the sender's), the incoming lists (each destination's): nothing of the cases.
    outgoing = (await w.client.get("/v1/transfers/outgoing", headers=SENDER)).json()["items"]
    assert sorted((o["destination_district_id"], o["case_count"], o["status"]) for o in outgoing) == [
        (B, 1, "pending"), (B, 3, "pending"), (C, 3, "pending")]
    incoming = (await w.client.get("/v1/transfers/incoming", headers=RECEIVER)).json()["items"]
    assert sorted((i["source_district_id"], i["source_name"], i["case_count"], i["notes"]) for i in incoming) == [
        (A, NAMES[A], 1, None), (A, NAMES[A], 3, "Family moved; please call")]
    assert [i["case_count"] for i in (await w.client.get("/v1/transfers/incoming",
                                                         headers=RECEIVER_C)).json()["items"]] == [3]
    seen_by_b = (await w.client.get(f"/v1/transfers/{several[0]['request_id']}", headers=RECEIVER)).json()
    assert seen_by_b["cases"] is None and seen_by_b["direction"] == "incoming"
    assert "authentication_code" not in json.dumps(incoming) + json.dumps(seen_by_b)
    seen_by_a = (await w.client.get(f"/v1/transfers/{several[0]['request_id']}", headers=SENDER)).json()
    assert [c["case_id"] for c in seen_by_a["cases"]] == [str(c) for c in bulk]
    assert [h["action"] for h in seen_by_a["history"]] == ["requested"]

    # Published: TransferRequested per request, keyed by request, with the case ids: no code.
    await system.caught_up("transfers")
    published = [e for e in await w.events("transfers.requests.v1")]
    assert sorted((e["request_id"], e["destination_district_id"], e["case_count"]) for e in published) == sorted(
        (r["request_id"], r["destination_district_id"], r["case_count"]) for r in requests)
    raw = json.dumps(published)
    for code in codes:
        assert normalised_code(code) not in raw.replace("-", "") and code not in raw

    # At rest: an argon2id hash per request, which the code verifies; the code in no column of any table.
    conn = await system.db("transfers")
    try:
        rows = {str(r["request_id"]): r["code_hash"] for r in await conn.fetch(
            "SELECT request_id, code_hash FROM transfer_requests")}
        for r in requests:
            assert rows[r["request_id"]].startswith("$argon2id$v=19$")
            assert PasswordHasher().verify(rows[r["request_id"]], normalised_code(r["authentication_code"]))
        await assert_nowhere_in_the_database(conn, [c for code in codes for c in (code, normalised_code(code))])
        with pytest.raises(asyncpg.CheckViolationError):  # the column holds nothing but an argon2id hash
            await conn.execute("UPDATE transfer_requests SET code_hash = 'K7QM3RTX9HWD'")
    finally:
        await conn.close()


async def assert_nowhere_in_the_database(conn, needles: list[str]) -> None:
    tables = [r["tablename"] for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
    for table in tables:
        text = " ".join(r[0] for r in await conn.fetch(f'SELECT row_to_json(t)::text FROM "{table}" t'))
        for needle in needles:
            assert needle not in text, f"found in {table}"
        for needle in needles:
            assert needle.encode().hex() not in text, f"found as bytes in {table}"


# ---------------------------------------------------------------------------- accepting


async def test_accepting_with_a_link_and_with_the_transfer_info_delivers_every_part_of_every_case_once(
        world: World, system: Stack):
    w = world
    await all_on(w)
    cases = await w.open_cases(2)
    await system.caught_up("transfers")
    (request,) = await w.sent(cases, [B])
    rid, code = request["request_id"], request["authentication_code"]

    # Not every part yet: the request cannot be accepted, and no try is spent.
    exported = await w.export(rid, cases[:1], parts=3)
    exported += await w.export(rid, cases[1:], parts=2, only=1)

    async def first_parts_in():
        body = (await w.client.get(f"/v1/transfers/{rid}", headers=SENDER)).json()
        return [c["history"] for c in body["cases"]] == ["complete", "arriving"]

    await eventually(first_parts_in, what="case 1 whole, case 2 in part")
    answer = await w.accept(rid, code, {cases[0]: None, cases[1]: None})
    assert answer.status_code == 409 and "still arriving" in answer.json()["detail"]

    # Opening it with the code: each case's person, and roster students to link.
    preview = await w.client.post(f"/v1/transfers/{rid}/preview", headers=RECEIVER, json={"code": code.lower()})
    assert preview.status_code == 200, preview.text
    first, second = preview.json()["cases"]
    assert first["person"] == {"given_name": GIVEN, "family_name": family(1), "birth_date": BORN.isoformat(),
                               "grade": "08"}
    assert [(s["student_id"], s["matched_on"]) for s in first["suggestions"]] == [
        (str(uuid.UUID(int=1)), "name and birth date"), (str(uuid.UUID(int=2)), "given name and birth date")]
    assert second["person"]["family_name"] == family(2) and second["history"] == "arriving"

    exported += await w.export(rid, cases[1:], parts=2, only=2)
    await w.ready(rid)
    answer = await w.accept(rid, code, {cases[0]: uuid.UUID(int=1), cases[1]: None})
    assert answer.status_code == 200, answer.text
    accepted = answer.json()
    assert accepted["status"] == "accepted" and accepted["accepted_by"] == "lee@albany.example.org"
    assert [(c["case_id"], c["student_id"], c["link"], c["parts"]) for c in accepted["cases"]] == [
        (str(cases[0]), str(uuid.UUID(int=1)), "existing_student", 3), (str(cases[1]), None, "transfer_info", 2)]

    # TransferAccepted, and each part of each case once as CaseDelivered for Albany.
    await system.caught_up("transfers")
    (done,) = [e for e in await w.events("transfers.requests.v1") if e["event_type"] == "transfers.transfer_accepted.v1"]
    assert (done["district_id"], done["destination_district_id"], done["accepted_by"]) == (
        A, B, "lee@albany.example.org")
    assert done["cases"] == [{"case_id": str(cases[0]), "student_id": str(uuid.UUID(int=1))},
                             {"case_id": str(cases[1]), "student_id": None}]
    delivered = await w.events("transfers.deliveries.v1")
    assert_each_part_once(delivered, rid, {cases[0]: 3, cases[1]: 2})
    for d in delivered:
        assert d["district_id"] == B and d["source_district_id"] == A and d["request_id"] == rid
        assert d["student_id"] == (str(uuid.UUID(int=1)) if d["history"]["case"]["case_id"] == str(cases[0]) else None)
    # The history arrives as exported, entry by entry.
    sent = {(str(e.history.case.case_id), e.history.part): json.loads(e.history.model_dump_json()) for e in exported}
    got = {(d["history"]["case"]["case_id"], d["history"]["part"]): d["history"] for d in delivered}
    assert got == sent

    # Both sides read who did what; the destination now sees the cases; the parts are no longer kept.
    for headers in (SENDER, RECEIVER):
        body = (await w.client.get(f"/v1/transfers/{rid}", headers=headers)).json()
        assert body["status"] == "accepted"
        assert [(h["action"], h["actor"]) for h in body["history"]] == [
            ("requested", "okafor@yonkers.example.org"), ("opened", "lee@albany.example.org"),
            ("accepted", "lee@albany.example.org")]
    assert [c["link"] for c in (await w.client.get(f"/v1/transfers/{rid}", headers=RECEIVER)).json()["cases"]] == [
        "existing_student", "transfer_info"]
    conn = await system.db("transfers")
    try:
        assert await conn.fetchval("SELECT count(*) FROM history_parts") == 0
    finally:
        await conn.close()

    # The same accept again answers the same and publishes nothing; another choice is refused.
    again = await w.accept(rid, code, {cases[0]: uuid.UUID(int=1), cases[1]: None})
    assert again.status_code == 200 and again.json() == accepted
    other = await w.accept(rid, code, {cases[0]: None, cases[1]: None})
    assert other.status_code == 409 and "accepted by lee@albany.example.org" in other.json()["detail"]
    await system.caught_up("transfers")
    assert len(await w.events("transfers.deliveries.v1")) == len(delivered)
    assert len([e for e in await w.events("transfers.requests.v1")
                if e["event_type"] == "transfers.transfer_accepted.v1"]) == 1


def assert_each_part_once(delivered: list[dict], request_id: str, parts: dict) -> None:
    """Every part of every case is there, under one event id each (the deterministic one): a
    re-sent copy carries the same id, and the cases service applies it once."""
    ids_by_part: dict[tuple, set] = {}
    for d in delivered:
        key = (d["history"]["case"]["case_id"], d["history"]["part"])
        ids_by_part.setdefault(key, set()).add(d["event_id"])
    assert set(ids_by_part) == {(str(c), n) for c, count in parts.items() for n in range(1, count + 1)}
    for (case_id, part), ids in ids_by_part.items():
        assert ids == {str(delivery_event_id(uuid.UUID(request_id), uuid.UUID(case_id), part))}


async def test_a_case_the_sending_district_could_not_export_makes_the_request_unacceptable_and_both_sides_are_told(
        world: World, system: Stack):
    w = world
    await all_on(w)
    cases = await w.open_cases(2)
    await system.caught_up("transfers")
    (request,) = await w.sent(cases, [B])
    rid = request["request_id"]
    await w.export(rid, cases[:1], parts=1)
    await system.publish(CaseHistoryUnavailable(district_id=A, request_id=rid, case_id=cases[1],
                                                reason="already transferred out"))
    # History events that cannot belong to this request are dead-lettered with the reason.
    stranger = (await w.open_cases(1))[0]
    await system.publish(w.part(rid, stranger, 1, 1))
    await system.publish(w.part(rid, cases[0], 1, 1, district=C))
    await system.publish(w.part(uuid.uuid4(), cases[0], 1, 1))
    await system.caught_up("transfers")
    dead = await system.records("cases.histories.v1.DLT")
    reasons = sorted(dict(r.headers)["dlt_reason"].decode() for r in dead)
    assert len(reasons) == 3
    assert any("is not a case of transfer request" in r for r in reasons)
    assert any("was not sent by d-tx-buffalo" in r for r in reasons)
    assert any("no transfer request" in r for r in reasons)
    for r in reasons:
        assert GIVEN not in r and "Quarrington" not in r

    for headers in (SENDER, RECEIVER):
        body = (await w.client.get(f"/v1/transfers/{rid}", headers=headers)).json()
        assert (body["histories"], body["unavailable_cases"]) == ("unavailable", 1)
        assert ("history_unavailable", A) in [(h["action"], h["district_id"]) for h in body["history"]]
    sender_view = (await w.client.get(f"/v1/transfers/{rid}", headers=SENDER)).json()
    assert [c["unavailable_reason"] for c in sender_view["cases"]] == [None, "already transferred out"]
    answer = await w.accept(rid, request["authentication_code"], {cases[0]: None, cases[1]: None})
    assert answer.status_code == 409 and "could not export 1 of the 2" in answer.json()["detail"]
    # The destination may turn it down.
    rejected = await w.client.post(f"/v1/transfers/{rid}/reject", headers=RECEIVER,
                                   json={"reason": "Incomplete: please send again"})
    assert rejected.status_code == 200 and rejected.json()["status"] == "rejected"


# ---------------------------------------------------------------------------- reject, cancel, races


async def test_reject_cancel_and_an_accept_racing_a_cancel_have_one_winner_and_a_double_accept_is_one(
        world: World, system: Stack):
    w = world
    await all_on(w)
    cases = await w.open_cases(6)
    await system.caught_up("transfers")
    requests = [(await w.sent([c], [B]))[0] for c in cases]
    for r, c in zip(requests, cases, strict=True):
        await w.export(r["request_id"], [c], parts=2)
    for r in requests:
        await w.ready(r["request_id"])
    rejected, cancelled, *raced, doubled = requests

    answer = await w.client.post(f"/v1/transfers/{rejected['request_id']}/reject", headers=RECEIVER,
                                 json={"reason": "The student did not enrol here"})
    assert answer.status_code == 200
    body = (await w.client.get(f"/v1/transfers/{rejected['request_id']}", headers=SENDER)).json()
    assert (body["status"], body["reason"], body["ended_by"]) == ("rejected", "The student did not enrol here",
                                                                 "lee@albany.example.org")
    assert (await w.client.post(f"/v1/transfers/{rejected['request_id']}/cancel", headers=SENDER)).status_code == 409

    answer = await w.client.post(f"/v1/transfers/{cancelled['request_id']}/cancel", headers=SENDER)
    assert answer.status_code == 200 and answer.json()["status"] == "cancelled"
    answer = await w.accept(cancelled["request_id"], cancelled["authentication_code"], {cases[1]: None})
    assert answer.status_code == 409
    assert answer.json()["detail"].startswith("cannot accept: the request was cancelled by okafor@yonkers.example.org at ")

    # An accept and a cancel at once: exactly one wins; the other is told who did what, when.
    for r, c in zip(raced, cases[2:5], strict=True):
        accepting, cancelling = await asyncio.gather(
            w.accept(r["request_id"], r["authentication_code"], {c: None}),
            w.client.post(f"/v1/transfers/{r['request_id']}/cancel", headers=SENDER))
        assert sorted([accepting.status_code, cancelling.status_code]) == [200, 409], (accepting.text, cancelling.text)
        loser = accepting if accepting.status_code == 409 else cancelling
        won = "cancelled by okafor@yonkers.example.org" if accepting.status_code == 409 else \
            "accepted by lee@albany.example.org"
        assert won in loser.json()["detail"]
        final = (await w.client.get(f"/v1/transfers/{r['request_id']}", headers=SENDER)).json()["status"]
        assert final == ("accepted" if accepting.status_code == 200 else "cancelled")

    # A double click: two accepts at once are one accept.
    first, second = await asyncio.gather(*[w.accept(doubled["request_id"], doubled["authentication_code"],
                                                    {cases[5]: None}) for _ in range(2)])
    assert (first.status_code, second.status_code) == (200, 200) and first.json() == second.json()

    await system.caught_up("transfers")
    events = await w.events("transfers.requests.v1")
    ended = {}
    for e in events:
        if e["event_type"] != "transfers.transfer_requested.v1":
            ended.setdefault(e["request_id"], []).append(e["event_type"].split(".")[1])
    assert ended[rejected["request_id"]] == ["transfer_rejected"]
    assert ended[cancelled["request_id"]] == ["transfer_cancelled"]
    assert ended[doubled["request_id"]] == ["transfer_accepted"]
    for r in raced:
        assert len(ended[r["request_id"]]) == 1  # one way or the other, once
    delivered = await w.events("transfers.deliveries.v1")
    accepted_ids = {rid for rid, how in ended.items() if how == ["transfer_accepted"]}
    assert {d["request_id"] for d in delivered} == accepted_ids
    for rid in accepted_ids:
        case = next(c for r, c in zip(requests, cases, strict=True) if r["request_id"] == rid)
        assert_each_part_once([d for d in delivered if d["request_id"] == rid], rid, {case: 2})


# ---------------------------------------------------------------------------- the code: lockout, regenerate


async def test_five_wrong_codes_lock_the_request_and_a_regenerated_code_voids_the_old_one(world: World, system: Stack):
    w = world
    await all_on(w)
    (case,) = await w.open_cases(1)
    await system.caught_up("transfers")
    (request,) = await w.sent([case], [B])
    rid, old = request["request_id"], request["authentication_code"]
    await w.export(rid, [case], parts=1)
    await w.ready(rid)

    # Only the sender regenerates; the old code no longer opens the request.
    assert (await w.client.post(f"/v1/transfers/{rid}/code", headers=RECEIVER)).status_code == 404
    regenerated = await w.client.post(f"/v1/transfers/{rid}/code", headers=SENDER)
    assert regenerated.status_code == 200 and regenerated.headers["cache-control"] == "no-store"
    new = regenerated.json()["authentication_code"]
    assert normalised_code(new) != normalised_code(old)
    assert regenerated.json()["expires_at"] == request["expires_at"]
    answer = await w.client.post(f"/v1/transfers/{rid}/preview", headers=RECEIVER, json={"code": old})
    assert answer.status_code == 422 and "4 tries left" in answer.json()["detail"]
    assert (await w.client.post(f"/v1/transfers/{rid}/preview", headers=RECEIVER, json={"code": new})).status_code == 200

    # What cannot be a code is refused without a try.
    answer = await w.client.post(f"/v1/transfers/{rid}/preview", headers=RECEIVER, json={"code": "hello"})
    assert answer.status_code == 422 and "not an authentication code" in answer.json()["detail"]
    body = (await w.client.get(f"/v1/transfers/{rid}", headers=SENDER)).json()
    assert body["failed_attempts"] == 1

    wrong = "2222-3333-4444"
    answers = [await w.client.post(f"/v1/transfers/{rid}/preview", headers=RECEIVER, json={"code": wrong})
               for _ in range(3)]
    assert [a.status_code for a in answers] == [422, 422, 422]
    assert "1 try left" in answers[-1].json()["detail"]
    fifth = await w.accept(rid, wrong, {case: None})
    assert fifth.status_code == 422 and "locked the request" in fifth.json()["detail"]
    # Locked for good: the right code does nothing now, and the sender sees it locked.
    answer = await w.accept(rid, new, {case: None})
    assert answer.status_code == 409 and "locked after too many wrong authentication codes" in answer.json()["detail"]
    assert (await w.client.post(f"/v1/transfers/{rid}/code", headers=SENDER)).status_code == 409
    (mine,) = (await w.client.get("/v1/transfers/outgoing", headers=SENDER)).json()["items"]
    assert (mine["status"], mine["failed_attempts"]) == ("locked", 5)
    for a in [*answers, fifth, answer]:  # never echoed
        assert normalised_code(new) not in a.text.replace("-", "") and wrong not in a.text

    await system.caught_up("transfers")
    (locked,) = [e for e in await w.events("transfers.requests.v1") if e["event_type"] == "transfers.transfer_locked.v1"]
    assert (locked["request_id"], locked["failed_attempts"], locked["district_id"]) == (rid, 5, A)
    actions = [h["action"] for h in (await w.client.get(f"/v1/transfers/{rid}", headers=RECEIVER)).json()["history"]]
    assert actions == ["requested", "code_regenerated", "wrong_code", "opened", *["wrong_code"] * 4, "locked"]
    assert await w.events("transfers.deliveries.v1") == []


# ---------------------------------------------------------------------------- expiry


async def test_requests_expire_at_accept_time_and_by_the_job_which_survives_a_request_it_cannot_expire(
        system: Stack):
    await system.prepare("transfers")
    ttl = {"CASEFLOW_TRANSFERS_CODE_TTL_DAYS": str(4 / 86400)}  # four seconds
    service = await system.service("transfers", CASEFLOW_TRANSFERS_EXPIRY_POLL_SECONDS="3600", **ttl).start().ready()
    w = World(system, service)
    try:
        await all_on(w)
        cases = await w.open_cases(3)
        await system.caught_up("transfers")
        requests = [(await w.sent([c], [B]))[0] for c in cases]
        for r, c in zip(requests, cases, strict=True):
            await w.export(r["request_id"], [c], parts=1)
        await w.ready(requests[0]["request_id"])
        await asyncio.sleep(max(0.0, (datetime.fromisoformat(requests[-1]["expires_at"])
                                      - datetime.now(UTC)).total_seconds()) + 0.5)
        # Past its window, the job has not come by (it passes hourly here): accepting expires it.
        answer = await w.accept(requests[0]["request_id"], requests[0]["authentication_code"], {cases[0]: None})
        assert answer.status_code == 409 and "expired at" in answer.json()["detail"]

        # One request the job cannot expire (its row spoilt: the event would break its contract).
        conn = await system.db("transfers")
        await conn.execute("UPDATE transfer_requests SET destination_district_id = repeat('x', 100) "
                           "WHERE request_id = $1", uuid.UUID(requests[2]["request_id"]))
        service.stop()
        service = system.service("transfers", CASEFLOW_TRANSFERS_EXPIRY_POLL_SECONDS="1", **ttl).start()
        await w.client.aclose()
        w.client = httpx.AsyncClient(base_url=service.url, timeout=30)

        async def job_failing_in_part():
            try:
                answer = await w.client.get("/readyz")
            except httpx.HTTPError:
                return None
            check = answer.json().get("checks", {}).get("expire_transfer_requests", {})
            return answer.status_code == 503 and "could not be expired" in (check.get("error") or "")

        await eventually(job_failing_in_part, what="the expiry job reporting the request it cannot expire")
        body = (await w.client.get(f"/v1/transfers/{requests[1]['request_id']}", headers=SENDER)).json()
        assert body["status"] == "expired" and body["history"][-1]["action"] == "expired"  # the others went on
        await conn.execute("UPDATE transfer_requests SET destination_district_id = $2 WHERE request_id = $1",
                           uuid.UUID(requests[2]["request_id"]), B)
        await conn.close()
        await service.ready()  # the next pass expires it, and the job is ready again
        body = (await w.client.get(f"/v1/transfers/{requests[2]['request_id']}", headers=RECEIVER)).json()
        assert body["status"] == "expired"
        await system.caught_up("transfers")
        expired = [e["request_id"] for e in await w.events("transfers.requests.v1")
                   if e["event_type"] == "transfers.transfer_expired.v1"]
        assert sorted(expired) == sorted(r["request_id"] for r in requests)
    finally:
        await w.client.aclose()


# ---------------------------------------------------------------------------- a crash around the accept


async def test_a_service_killed_just_before_or_just_after_an_accept_commits_loses_and_duplicates_no_delivery(
        system: Stack):
    await system.prepare("transfers")
    first = await start(system, CASEFLOW_CRASH_AT="transfers.accept.before_commit")
    w = World(system, first)
    try:
        await all_on(w)
        cases = await w.open_cases(3)
        await system.caught_up("transfers")
        (request,) = await w.sent(cases, [B])
        rid, code = request["request_id"], request["authentication_code"]
        await w.export(rid, cases, parts=3)
        await w.ready(rid)
        choices = {cases[0]: uuid.UUID(int=1), cases[1]: None, cases[2]: None}
        await system.publish(StudentEnrolled(district_id=B, occurred_at=AT, student_id=uuid.UUID(int=1),
                                             source_id="alb-1", school_id="B1", grade="08", given_name=GIVEN,
                                             family_name=family(1), birth_date=BORN))
        await system.caught_up("transfers")

        # Killed inside the accept's transaction: nothing of it happened.
        with pytest.raises(httpx.HTTPError):
            await w.accept(rid, code, choices)
        assert await first.exited() == CRASH_EXIT_CODE
        second = await start(system, CASEFLOW_CRASH_AT="transfers.accept.after_commit")
        await w.client.aclose()
        w.client = httpx.AsyncClient(base_url=second.url, timeout=30)
        assert (await w.client.get(f"/v1/transfers/{rid}", headers=RECEIVER)).json()["status"] == "pending"
        assert await w.events("transfers.deliveries.v1") == []

        # Killed the moment the accept committed, before answering: it happened, whole.
        with pytest.raises(httpx.HTTPError):
            await w.accept(rid, code, choices)
        assert await second.exited() == CRASH_EXIT_CODE
        third = await start(system)
        await w.client.aclose()
        w.client = httpx.AsyncClient(base_url=third.url, timeout=30)
        retried = await w.accept(rid, code, choices)  # the user clicks again: the same accept
        assert retried.status_code == 200 and retried.json()["status"] == "accepted"
        await system.caught_up("transfers")
        delivered = await w.events("transfers.deliveries.v1")
        assert_each_part_once(delivered, rid, {c: 3 for c in cases})
        assert len([e for e in await w.events("transfers.requests.v1")
                    if e["event_type"] == "transfers.transfer_accepted.v1"]) == 1
    finally:
        await w.client.aclose()


# ---------------------------------------------------------------------------- access


async def test_other_districts_get_404_and_manage_cases_comes_from_grants_too(world: World, system: Stack):
    w = world
    await all_on(w)
    (case,) = await w.open_cases(1)
    await system.caught_up("transfers")
    (request,) = await w.sent([case], [B])
    rid, code = request["request_id"], request["authentication_code"]
    body_for = {"preview": {"code": code}, "accept": {"code": code, "cases": [{"case_id": str(case),
                                                                               "student_id": None}]},
                "reject": {"reason": "no"}, "cancel": None, "code": None}

    async def call(action: str, headers: dict) -> httpx.Response:
        return await w.client.post(f"/v1/transfers/{rid}/{action}", headers=headers, json=body_for[action])

    # Another district: the request does not exist for it, whatever it tries.
    assert (await w.client.get(f"/v1/transfers/{rid}", headers=OUTSIDER)).status_code == 404
    for action in body_for:
        assert (await call(action, OUTSIDER)).status_code == 404, action
    assert (await w.client.get("/v1/transfers/incoming", headers=OUTSIDER)).json()["items"] == []
    # Each side does only its own side's actions.
    for action in ("preview", "accept", "reject"):
        assert (await call(action, SENDER)).status_code == 404, action
    for action in ("cancel", "code"):
        assert (await call(action, RECEIVER)).status_code == 404, action
    assert (await w.client.get(f"/v1/transfers/{uuid.uuid4()}", headers=SENDER)).status_code == 404
    # Without Manage Cases: 403, saying what is needed.
    for path in ("/v1/transfers/outgoing", "/v1/transfers/incoming", "/v1/transfers/destinations",
                 f"/v1/transfers/{rid}"):
        answer = await w.client.get(path, headers=TEACHER)
        assert answer.status_code == 403 and "Manage Cases" in answer.json()["detail"], path
    assert (await w.client.get("/v1/transfers/outgoing")).status_code == 401

    # Manage Cases granted in Caseflow (caseload.access.v1), to someone whose token says only who they are.
    staff = "new.counselor@albany.example.org"
    who = bearer(staff, B)
    assert (await w.client.get("/v1/transfers/incoming", headers=who)).status_code == 403
    grant = AccessGranted(district_id=B, grant_id=uuid.uuid4(), staff_email=staff, level="manage_cases",
                          school_id="B1", basis="granted", granted_by="admin@albany.example.org")
    await system.publish(grant)

    async def granted():
        return (await w.client.get("/v1/transfers/incoming", headers=who)).status_code == 200

    await eventually(granted, what="the grant in the transfers service's own copy")
    assert [i["request_id"] for i in (await w.client.get("/v1/transfers/incoming", headers=who)).json()["items"]] \
        == [rid]
    await system.publish(AccessRevoked(district_id=B, grant_id=grant.grant_id, staff_email=staff,
                                       level="manage_cases", school_id="B1", basis="granted",
                                       revoked_by="admin@albany.example.org", reason="revoked by an admin",
                                       occurred_at=datetime.now(UTC) + timedelta(seconds=1)))

    async def revoked():
        return (await w.client.get("/v1/transfers/incoming", headers=who)).status_code == 403

    await eventually(revoked, what="the revoke in the transfers service's own copy")


# ---------------------------------------------------------------------------- personal data


async def test_no_code_and_no_student_name_in_any_log_line_or_any_event_before_acceptance(system: Stack):
    await system.prepare("transfers")
    service = await start(system, CASEFLOW_LOG_LEVEL="DEBUG")
    w = World(system, service)
    try:
        await all_on(w)
        await system.publish_all([
            StudentEnrolled(district_id=B, occurred_at=AT, student_id=uuid.UUID(int=n), source_id=f"alb-{n}",
                            school_id="B1", grade="08", given_name=GIVEN, family_name=family(n), birth_date=BORN)
            for n in (1, 2, 3)])
        cases = await w.open_cases(3)
        await system.caught_up("transfers")
        sent = await w.sent(cases, [B, C])
        codes = [r["authentication_code"] for r in sent]
        for r in sent:
            await w.export(r["request_id"], cases, parts=2)
            await w.ready(r["request_id"])
        to_b, to_c = sent
        regenerated = (await w.client.post(f"/v1/transfers/{to_b['request_id']}/code", headers=SENDER)).json()
        codes.append(regenerated["authentication_code"])
        # Wrong codes, a lock, previews, a bad history event: all that may log.
        for _ in range(5):
            await w.client.post(f"/v1/transfers/{to_c['request_id']}/preview", headers=RECEIVER_C,
                                json={"code": codes[0]})
        await w.client.post(f"/v1/transfers/{to_b['request_id']}/preview", headers=RECEIVER,
                            json={"code": regenerated["authentication_code"]})
        await system.publish(w.part(uuid.uuid4(), cases[0], 1, 1))
        await system.caught_up("transfers")
        assert await w.events("transfers.deliveries.v1") == []  # nothing delivered before acceptance
        # What the transfers service published (a dead letter keeps the cases service's original
        # record, which carries names to this service by contract: only its reason is this service's).
        before = [*await system.records("transfers.requests.v1"), *await system.records("transfers.districts.v1")]
        (dead,) = await system.records("cases.histories.v1.DLT")
        reason = dict(dead.headers)["dlt_reason"].decode()
        answer = await w.accept(to_b["request_id"], regenerated["authentication_code"],
                                {cases[0]: uuid.UUID(int=1), cases[1]: None, cases[2]: None})
        assert answer.status_code == 200, answer.text
        await system.caught_up("transfers")
        after = await system.records("transfers.requests.v1")
        assert len(after) > 3
    finally:
        await w.client.aclose()
        service.stop()

    log = service.log()
    assert len(log.splitlines()) > 20
    names = [GIVEN, *(family(n) for n in range(1, 4)), BORN.isoformat()]
    secrets = [c for code in codes for c in (code, normalised_code(code))]
    for line in log.splitlines():
        for needle in names + secrets:
            assert needle not in line, f"{needle!r} logged: {line[:300]}"
    for needle in names + secrets:
        assert needle not in reason
    for record in [*before, *after]:
        text = (record.value or b"").decode(errors="replace") + repr(record.headers)
        for needle in names + secrets:
            assert needle not in text, f"{needle!r} published on {record.topic}"
