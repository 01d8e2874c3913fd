"""JSON Schema files for every event, in contracts/schemas/ (`caseflow contracts export`).

A test fails when the committed files differ from the models, so the published contract
never drifts from the code."""

from __future__ import annotations

import json
from pathlib import Path

from contracts.topics import EVENT_TYPES, TOPICS

SCHEMAS = Path(__file__).parent / "schemas"
BASELINES = Path(__file__).parent / "baselines"


def rendered() -> dict[str, str]:
    files = {}
    for event_type, cls in sorted(EVENT_TYPES.items()):
        schema = cls.model_json_schema(mode="serialization")
        schema["$id"] = f"https://caseflow.schemas/{event_type}.json"
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        files[f"{event_type}.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    registry = {
        name: {
            "key": t.key_field,
            "partitions": t.partitions,
            "dead_letter_topic": t.dead_letter,
            "event_types": [cls.model_fields["event_type"].default for cls in t.events],
            "description": t.description,
        }
        for name, t in sorted(TOPICS.items())
    }
    files["topics.json"] = json.dumps(registry, indent=2, sort_keys=True) + "\n"
    return files


def export() -> list[str]:
    SCHEMAS.mkdir(exist_ok=True)
    wanted = rendered()
    for stale in SCHEMAS.glob("*.json"):
        if stale.name not in wanted:
            stale.unlink()
    for name, text in wanted.items():
        (SCHEMAS / name).write_text(text)
    return sorted(wanted)


def stale() -> list[str]:
    """Names of schema files that are missing, differ, or should not be there."""
    wanted = rendered()
    present = {p.name: p.read_text() for p in SCHEMAS.glob("*.json")}
    return sorted(
        [n for n, text in wanted.items() if present.get(n) != text] + [n for n in present if n not in wanted]
    )


def write_missing_baselines(folder: Path = BASELINES) -> tuple[list[str], list[str]]:
    """Freeze, as `<event_type>.json`, the schema of every event type that has no baseline yet.

    A baseline is the contract as first released (contracts/compatibility.py checks the
    models against it), so an existing one is never overwritten. Returns (written, kept)."""
    folder.mkdir(exist_ok=True)
    schemas = rendered()
    written, kept = [], []
    for event_type in sorted(EVENT_TYPES):
        try:
            with (folder / f"{event_type}.json").open("x") as f:
                f.write(schemas[f"{event_type}.json"])
        except FileExistsError:
            kept.append(event_type)
        else:
            written.append(event_type)
    return written, kept
