"""Property-based tests of every service's HTTP edge from its own OpenAPI document
(schemathesis): requests generated from the schema, valid ones and invalid ones, sent with
a signed token to the real services on Kafka and PostgreSQL. Whatever arrives, no answer
is a 5xx, each answer is one the document lists, in its content type and shape, invalid
requests are refused, and nothing reaches the database unvalidated (issue 9, defect 4).

Deterministic (derandomized, no example database) and bounded (max_examples per operation),
so CI runs it in a minute or two."""

from __future__ import annotations

from collections import Counter

import httpx
import hypothesis
import hypothesis.errors
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from contracts.sis import SisStudentEnrolled
from services.kit.auth import ROLES, mint
from services.roster.domain import student_id_for
from tests.support import SECRET, Stack, eventually

pytestmark = pytest.mark.integration

DISTRICT = "d-fuzz"
SCHOOL = "02M001"
STUDENT = str(student_id_for(DISTRICT, "S-1"))
# Every role: the requests get past the role checks to the inputs and the database.
AUTH = {"Authorization": "Bearer " + mint(SECRET, email="fuzz@d.example.org", district_id=DISTRICT,
                                           schools=[SCHOOL], roles=sorted(ROLES), ttl_seconds=3600)}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          negative_data_rejection]
EXAMPLES = {GenerationMode.POSITIVE: 12, GenerationMode.NEGATIVE: 8}


@pytest.fixture
async def services(system: Stack):
    names = ("roster", "caseload", "cases", "transfers", "notify")
    await system.prepare(*names)
    running = {name: await system.service(name).start().ready() for name in names}  # one after the other
    await system.publish(SisStudentEnrolled(district_id=DISTRICT, source_id="S-1", school_id=SCHOOL, grade="10",
                                            given_name="Ana", family_name="Reyes"))

    async def known():
        async with httpx.AsyncClient() as client:
            answers = [await client.get(f"{running['caseload'].url}/v1/students/{STUDENT}", headers=AUTH),
                       await client.get(f"{running['cases'].url}/v1/students/{STUDENT}/timeline", headers=AUTH)]
            return all(a.status_code == 200 for a in answers)

    await eventually(known, what="the student in caseload and cases")
    return running


def fuzz(url: str) -> tuple[int, list[str], Counter]:
    """Run every operation of the service's OpenAPI document: (operations, failures, how
    many answers of each status)."""
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    failures: list[str] = []
    statuses: Counter = Counter()
    operations = 0
    session = requests.Session()
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        # Random ids find nothing; the one student the services know takes the routes deeper.
        known = {"student_id": STUDENT} if any(p.name == "student_id" for p in operation.path_parameters) else None
        for mode, examples in EXAMPLES.items():
            for path_parameters in ([None, known] if known and mode.is_positive else [None]):
                strategy = operation.as_strategy(generation_mode=mode, path_parameters=path_parameters)

                @hypothesis.settings(max_examples=examples, derandomize=True, database=None, deadline=None,
                                     phases=[Phase.generate, Phase.shrink], print_blob=False,
                                     suppress_health_check=list(HealthCheck))
                @hypothesis.given(case=strategy)
                def run(case) -> None:
                    response = case.call(base_url=url, session=session, headers=AUTH, timeout=30)
                    statuses[response.status_code] += 1
                    case.validate_response(response, checks=CHECKS, headers=AUTH)

                try:
                    run()
                except hypothesis.errors.Unsatisfiable:
                    assert not mode.is_positive, operation.label  # nothing in it can be made invalid
                except (AssertionError, BaseExceptionGroup) as e:  # collected: one run reports every failing operation
                    failures.append(f"{operation.label} ({mode.value}): {str(e)[:1500]}")
    return operations, failures, statuses


async def test_no_generated_request_gets_a_server_error_or_an_answer_its_document_does_not_list(services):
    failures, operations, statuses = [], {}, {}
    for name, service in services.items():
        operations[name], found, statuses[name] = fuzz(service.url)
        failures += [f"{name} {f}" for f in found]
    assert failures == [], "\n\n".join(failures)
    # Transfers and notify serve health only, outside their documents.
    assert operations == {"roster": 11, "caseload": 24, "cases": 14, "transfers": 0, "notify": 0}
    for name in ("roster", "caseload", "cases"):  # the requests reached the routes: some answered, some refused
        assert sum(n for s, n in statuses[name].items() if s < 300) and statuses[name][422], (name, statuses[name])
    for service in services.values():
        assert "input reached the database unvalidated" not in service.log()
        assert "Traceback" not in service.log()
