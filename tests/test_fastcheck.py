"""The quick output-schema check (specs/fastcheck.py) may only ever say "valid" where jsonschema agrees: checked
against jsonschema's own verdict on answers generated from the shipped specs' output schemas (as bound for a call)
and mutated at random, and on schemas outside its subset, which it must leave to the full validator."""

from __future__ import annotations

import copy
import random
from typing import Any

from jsonschema import Draft202012Validator

from tiered_mcp.specs.fastcheck import compile_check, quick_valid
from tiered_mcp.specs.spec import load_specs
from tiered_mcp.testing import sample_for

ODD_VALUES: list[Any] = [None, True, False, 0, 1, -1, 2.5, -0.5, 1e9, float("inf"), "", "x", "bug", [], [1], {},
                         {"a": 1}, ["bug"], 1.0, 100, 0.0]


def mutate(value: Any, rng: random.Random) -> Any:
    """One random change somewhere in `value`: a replaced, dropped or added member, or a new leaf."""
    if isinstance(value, dict) and value and rng.random() < 0.7:
        key = rng.choice(list(value))
        out = dict(value)
        roll = rng.random()
        if roll < 0.2:
            del out[key]
        elif roll < 0.35:
            out["extra_" + str(rng.randint(0, 3))] = rng.choice(ODD_VALUES)
        else:
            out[key] = mutate(value[key], rng)
        return out
    if isinstance(value, list) and value and rng.random() < 0.7:
        out = list(value)
        i = rng.randrange(len(out))
        if rng.random() < 0.2:
            del out[i]
        else:
            out[i] = mutate(out[i], rng)
        return out
    return copy.deepcopy(rng.choice(ODD_VALUES))


def bound_schemas() -> list[dict[str, Any]]:
    specs = load_specs()
    out = []
    for spec in specs:
        out.append(spec.output_schema)
        out.append(spec.model_output_schema({"labels": ["bug", "feature", "billing question"], "multi_label": True}))
    return out


def test_it_never_passes_what_jsonschema_rejects_on_the_shipped_schemas() -> None:
    rng = random.Random(20261203)
    passed = rejected = 0
    schemas = [s for s in bound_schemas() if compile_check(s) is not None]
    # extract's schema holds the caller's schema (bound per call): outside the subset, always fully validated.
    assert len(schemas) >= 10
    for schema in schemas:
        validator = Draft202012Validator(schema)
        base = sample_for(schema)
        assert quick_valid(schema, base) and validator.is_valid(base)
        for _ in range(3000):
            instance = base
            for _ in range(rng.randint(1, 3)):
                instance = mutate(instance, rng)
            quick, full = quick_valid(schema, instance), validator.is_valid(instance)
            assert not quick or full, (schema, instance)
            passed += quick
            rejected += not full
    # Both sides are exercised: many mutants pass the shortcut, many are rejected by jsonschema.
    assert passed > 1000 and rejected > 5000


def test_schemas_outside_the_subset_always_take_the_full_validator() -> None:
    for schema in [{"type": "string", "pattern": "^a"}, {"$ref": "#/$defs/x", "$defs": {"x": {}}},
                   {"type": "string", "format": "email"}, {"enum": [1, 2]}, {"type": "object", "properties":
                   {"a": {"type": "string", "maxLength": 3}}}, {"oneOf": [{"type": "string"}]}, {"type": "decimal"}]:
        assert compile_check(schema) is None
        assert quick_valid(schema, "a") is False


def test_the_subsets_rules_by_hand() -> None:
    schema = {"type": "object", "required": ["label", "score"], "additionalProperties": False, "properties": {
        "label": {"type": "string", "enum": ["bug", "feature"]},
        "score": {"type": "number", "minimum": 0, "maximum": 1},
        "tags": {"type": "array", "items": {"type": "string"}},
        "note": {"anyOf": [{"type": "string"}, {"type": "null"}]}}}
    assert quick_valid(schema, {"label": "bug", "score": 0.5, "tags": ["a"], "note": None})
    for bad in [{"label": "bug"}, {"label": "other", "score": 0.5}, {"label": "bug", "score": 1.5},
                {"label": "bug", "score": True}, {"label": "bug", "score": 0.5, "more": 1},
                {"label": "bug", "score": 0.5, "tags": [1]}, {"label": "bug", "score": 0.5, "note": 3}, ["bug"]]:
        assert not quick_valid(schema, bad)
        assert not Draft202012Validator(schema).is_valid(bad)
