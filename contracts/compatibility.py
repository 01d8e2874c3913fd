"""Is a new JSON Schema of an event a compatible growth of the old one?

A published v1 contract may only grow: consumers must still read every event, old or
new, and producers written against the old contract must still be understood. So a field
may not disappear, change its type (nor start or stop allowing null), lose enum values,
become required, or be added as required; adding an optional field, or an enum value, is
fine. A breaking change needs a v2 event type.

`breaking_changes(baseline, current)` compares two schemas as pydantic writes them:
`$ref`s into `$defs` are followed (nested models compared field by field, as
`parent.child`), `Optional[X]` (`anyOf` with null) is X that may be null, array items and
map values are compared as `field[]` and `field{}`.
"""

from __future__ import annotations

_ANY: dict = {}


def breaking_changes(old_schema: dict, new_schema: dict) -> list[str]:
    """Human-readable problems, each naming its field; [] when new only grows old."""
    roots = (old_schema, new_schema)
    return _value_changes("", old_schema, new_schema, roots, frozenset())


def _object_changes(prefix: str, old: dict, new: dict, roots: tuple[dict, dict], seen: frozenset) -> list[str]:
    problems = []
    old_props, new_props = old.get("properties", {}), new.get("properties", {})
    old_required, new_required = set(old.get("required", ())), set(new.get("required", ()))
    for name, old_prop in old_props.items():
        field = prefix + name
        if name not in new_props:
            problems.append(f"{field}: removed (consumers read it)")
            continue
        if name in new_required and name not in old_required:
            problems.append(f"{field}: now required (old producers and events already published may omit it)")
        problems += _value_changes(field, old_prop, new_props[name], roots, seen)
    for name, new_prop in new_props.items():
        if name not in old_props and name in new_required and "default" not in new_prop:
            problems.append(f"{prefix + name}: added as required without a default (old producers do not send it)")
    return problems


def _value_changes(field: str, old: dict, new: dict, roots: tuple[dict, dict], seen: frozenset) -> list[str]:
    old, old_nullable = _without_null(old)
    new, new_nullable = _without_null(new)
    refs = (old.get("$ref"), new.get("$ref"))
    if refs != (None, None) and refs in seen:  # a recursive model, already being compared
        return []
    seen = seen | {refs}
    old, new = _resolve(old, roots[0]), _resolve(new, roots[1])

    problems = []
    if old_nullable != new_nullable:
        problems.append(f"{field}: may {'now' if new_nullable else 'no longer'} be null")
    if _kind(old) != _kind(new):
        problems.append(f"{field}: type changed from {_describe(old)} to {_describe(new)}")
    else:  # the same kind: a union's variants are compared one by one
        for old_variant, new_variant in zip(old.get("anyOf", ()), new.get("anyOf", ())):
            problems += _value_changes(field, old_variant, new_variant, roots, seen)

    # v1 enums may widen (consumers must expect values they don't know yet) but not narrow: published events keep them.
    old_values, new_values = _allowed_values(old), _allowed_values(new)
    if new_values is not None:
        if old_values is None:
            problems.append(f"{field}: now limited to {new_values}")
        elif dropped := [v for v in old_values if v not in new_values]:
            problems.append(f"{field}: no longer allows {', '.join(map(repr, dropped))}")

    if "items" in old or "items" in new:
        problems += _value_changes(f"{field}[]", old.get("items", _ANY), new.get("items", _ANY), roots, seen)
    if isinstance(old.get("additionalProperties"), dict) and isinstance(new.get("additionalProperties"), dict):
        problems += _value_changes(f"{field}{{}}", old["additionalProperties"], new["additionalProperties"],
                                   roots, seen)
    if "properties" in old or "properties" in new:
        problems += _object_changes(f"{field}." if field else "", old, new, roots, seen)
    return problems


def _without_null(schema: dict) -> tuple[dict, bool]:
    """`X | None` as (X, True): whether a field may be null is compared apart from its type."""
    variants = schema.get("anyOf")
    if variants and {"type": "null"} in variants:
        rest = [v for v in variants if v != {"type": "null"}]
        inner = rest[0] if len(rest) == 1 else {"anyOf": rest}
        return {**{k: v for k, v in schema.items() if k != "anyOf"}, **inner}, True
    types = schema.get("type")
    if isinstance(types, list) and "null" in types:
        rest = [t for t in types if t != "null"]
        return {**schema, "type": rest[0] if len(rest) == 1 else rest}, True
    return schema, False


def _resolve(schema: dict, root: dict) -> dict:
    """The `$defs` entry a `$ref` points to (with the ref's own keywords, e.g. its description)."""
    while "$ref" in schema:
        target = root["$defs"][schema["$ref"].removeprefix("#/$defs/")]
        schema = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
    return schema


def _allowed_values(schema: dict) -> list | None:
    """The values a Literal or Enum allows; None when any value of the type will do."""
    if "const" in schema:
        return [schema["const"]]
    return schema.get("enum")


def _kind(schema: dict) -> tuple:
    return schema.get("type"), schema.get("format"), len(schema.get("anyOf", ()))


def _describe(schema: dict) -> str:
    if "$ref" in schema:
        return schema["$ref"].removeprefix("#/$defs/")
    if "anyOf" in schema:
        return " | ".join(_describe(v) for v in schema["anyOf"])
    kind = schema.get("type", "any")
    if isinstance(kind, list):
        kind = " | ".join(kind)
    return f"{kind} ({schema['format']})" if "format" in schema else str(kind)
