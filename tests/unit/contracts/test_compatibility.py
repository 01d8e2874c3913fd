import json
from typing import Literal

import pytest
from pydantic import BaseModel, Field

from contracts import schemas_export
from contracts.compatibility import breaking_changes
from contracts.topics import EVENT_TYPES

BASELINES = schemas_export.BASELINES
BASELINED = sorted(p.name.removesuffix(".json") for p in BASELINES.glob("*.json"))


def current_schema(event_type: str) -> dict:
    return json.loads(schemas_export.rendered()[f"{event_type}.json"])


# The published contracts against their baselines

@pytest.mark.parametrize("event_type", BASELINED)
def test_a_published_contract_only_grows(event_type):
    assert event_type in EVENT_TYPES, (
        f"{event_type} has a baseline but no model in contracts.topics.EVENT_TYPES: a published event type "
        "stays until it is retired on purpose (then delete its baseline in the same change)"
    )
    baseline = json.loads((BASELINES / f"{event_type}.json").read_text())
    problems = breaking_changes(baseline, current_schema(event_type))
    assert problems == [], (
        f"{event_type} breaks its published contract (contracts/baselines/{event_type}.json):\n  "
        + "\n  ".join(problems)
        + "\na v1 contract may only grow: add a field as optional, or publish a v2 event type"
    )


def test_every_event_type_has_a_baseline():
    missing = sorted(set(EVENT_TYPES) - set(BASELINED))
    assert missing == [], f"event types without a baseline: {missing}; run `caseflow contracts baseline` and commit them"


def test_a_baseline_is_written_once_and_never_overwritten(tmp_path):
    (tmp_path / "sis.student_enrolled.v1.json").write_text("as first released\n")
    written, kept = schemas_export.write_missing_baselines(tmp_path)
    assert kept == ["sis.student_enrolled.v1"]
    assert set(written) == set(EVENT_TYPES) - {"sis.student_enrolled.v1"}
    assert (tmp_path / "sis.student_enrolled.v1.json").read_text() == "as first released\n"
    assert json.loads((tmp_path / "roster.student_enrolled.v1.json").read_text()) == current_schema(
        "roster.student_enrolled.v1")
    assert schemas_export.write_missing_baselines(tmp_path) == ([], sorted(EVENT_TYPES))


# The rules, on small hand-written models

def changes(old: type[BaseModel], new: type[BaseModel]) -> list[str]:
    return breaking_changes(old.model_json_schema(mode="serialization"), new.model_json_schema(mode="serialization"))


class Student(BaseModel):
    student_id: str
    grade: str
    nickname: str | None = None
    status: Literal["active", "withdrawn", "transferred"]


def test_an_unchanged_contract_has_no_breaking_changes():
    assert changes(Student, Student) == []


def test_a_removed_field_breaks_the_contract():
    class New(BaseModel):
        student_id: str
        nickname: str | None = None
        status: Literal["active", "withdrawn", "transferred"]

    assert changes(Student, New) == ["grade: removed (consumers read it)"]


def test_a_field_whose_type_changes_breaks_the_contract():
    class New(Student):
        grade: int

    assert changes(Student, New) == ["grade: type changed from string to integer"]


def test_an_optional_field_that_becomes_required_breaks_the_contract():
    class New(Student):
        nickname: str

    problems = changes(Student, New)
    assert "nickname: now required (old producers and events already published may omit it)" in problems
    assert all(p.startswith("nickname: ") for p in problems)


def test_adding_an_optional_field_is_growth():
    class New(Student):
        homeroom: str | None = Field(default=None, description="The student's homeroom.")
        ell: bool = False

    assert changes(Student, New) == []


def test_a_new_required_field_breaks_the_contract():
    class New(Student):
        school_id: str

    assert changes(Student, New) == ["school_id: added as required without a default (old producers do not send it)"]


def test_narrowing_an_enum_breaks_the_contract():
    class New(Student):
        status: Literal["active", "withdrawn"]

    assert changes(Student, New) == ["status: no longer allows 'transferred'"]


def test_widening_an_enum_is_growth():
    class New(Student):
        status: Literal["active", "withdrawn", "transferred", "graduated"]

    assert changes(Student, New) == []


def test_a_field_that_may_now_be_null_breaks_the_contract():
    class New(Student):
        grade: str | None

    assert changes(Student, New) == ["grade: may now be null"]


def test_a_nested_model_is_compared_field_by_field():
    class Address(BaseModel):
        street: str
        zip_code: str

    class NewAddress(BaseModel):
        street: str
        zip_code: int
        city: str | None = None

    class Old(BaseModel):
        home: Address
        previous: list[Address]

    class New(BaseModel):
        home: NewAddress
        previous: list[NewAddress]

    assert changes(Old, New) == [
        "home.zip_code: type changed from string to integer",
        "previous[].zip_code: type changed from string to integer",
    ]


def test_list_items_and_formats_are_part_of_the_type():
    from uuid import UUID

    class Old(BaseModel):
        school_ids: list[str]
        case_id: UUID

    class New(BaseModel):
        school_ids: list[int]
        case_id: str

    assert changes(Old, New) == [
        "school_ids[]: type changed from string to integer",
        "case_id: type changed from string (uuid) to string",
    ]


def test_a_recursive_model_is_compared_without_looping():
    class Node(BaseModel):
        name: str
        children: list["Node"] = []

    class NewNode(BaseModel):
        name: int
        children: list["NewNode"] = []

    assert changes(Node, NewNode) == ["name: type changed from string to integer"]
