"""A quick yes for the common case: does an answer meet its output schema?

Every model answer is validated against the tool's output schema, and jsonschema's general machinery costs about
0.1 ms per answer, a noticeable share of a batch item's own work. The specs' output schemas use a small subset of
JSON Schema (type, properties, required, additionalProperties, items, enum of strings, minimum, maximum, anyOf and
annotations), so `compile_check` turns such a schema into nested closures that answer "valid" or "not sure".

It is only ever a shortcut to *valid*: an answer it does not pass (invalid, or a schema or value outside the
subset) goes to the full validator (`schema_safety.schema_problems`), which also words the errors. A schema with any
other keyword (patterns, formats, refs, a caller's schema bound into the spec) compiles to None and always takes
the full validator, so the bounded regex engine and the ref rules stay where they are. `tests/test_fastcheck.py`
checks it against jsonschema on generated answers: it must never pass what jsonschema rejects.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

Check = Callable[[Any], bool]

_ANNOTATIONS = frozenset({"description", "title", "default", "examples", "$comment"})
_KEYWORDS = frozenset({"type", "properties", "required", "additionalProperties", "items", "enum", "minimum",
                       "maximum", "anyOf"}) | _ANNOTATIONS


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


_TYPES: dict[str, Check] = {
    "object": lambda x: isinstance(x, dict),
    "array": lambda x: isinstance(x, list),
    "string": lambda x: isinstance(x, str),
    "boolean": lambda x: isinstance(x, bool),
    "null": lambda x: x is None,
    "number": _is_number,
    # JSON Schema counts 2.0 as an integer; the shortcut does not need to, it only has to be right when it says yes.
    "integer": lambda x: isinstance(x, int) and not isinstance(x, bool),
}


def _any(checks: tuple[Check, ...]) -> Check:
    return lambda x: any(c(x) for c in checks)


def _all(checks: tuple[Check, ...]) -> Check:
    return lambda x: all(c(x) for c in checks)


def _bound(bound: float, lower: bool) -> Check:
    if lower:
        return lambda x: not _is_number(x) or x >= bound
    return lambda x: not _is_number(x) or x <= bound


def _each(item: Check) -> Check:
    return lambda x: not isinstance(x, list) or all(item(v) for v in x)


def compile_check(schema: Any) -> Check | None:
    """A check that returns True only for instances the schema accepts; None when the schema is outside the subset."""
    if schema is True:
        return lambda x: True
    if not isinstance(schema, dict) or not set(schema) <= _KEYWORDS:
        return None
    checks: list[Check] = []
    kind = schema.get("type")
    if kind is not None:
        names = [kind] if isinstance(kind, str) else kind
        if not isinstance(names, list) or not names or not all(isinstance(n, str) and n in _TYPES for n in names):
            return None
        tests = tuple(_TYPES[n] for n in names)
        checks.append(tests[0] if len(tests) == 1 else _any(tests))
    if "enum" in schema:
        values = schema["enum"]
        if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
            return None
        allowed = frozenset(values)
        checks.append(lambda x: isinstance(x, str) and x in allowed)
    for key, lower in (("minimum", True), ("maximum", False)):
        if key in schema:
            bound = schema[key]
            if not _is_number(bound):
                return None
            checks.append(_bound(bound, lower))
    if "anyOf" in schema:
        options = schema["anyOf"]
        if not isinstance(options, list) or not options:
            return None
        compiled = [compile_check(o) for o in options]
        known = tuple(c for c in compiled if c is not None)
        if len(known) != len(compiled):
            return None
        checks.append(_any(known))
    if "items" in schema:
        item = compile_check(schema["items"])
        if item is None:
            return None
        checks.append(_each(item))
    object_check = _object(schema)
    if object_check is False:
        return None
    if callable(object_check):
        checks.append(object_check)
    return _all(tuple(checks))


def _object(schema: dict[str, Any]) -> Check | None | Literal[False]:
    """The object keywords' check; None when there are none, False when they are outside the subset."""
    props, required, extra = schema.get("properties"), schema.get("required"), schema.get("additionalProperties")
    if props is None and required is None and extra is None:
        return None
    props = {} if props is None else props
    if not isinstance(props, dict) or not all(isinstance(k, str) for k in props):
        return False
    maybe = {k: compile_check(v) for k, v in props.items()}
    compiled = {k: c for k, c in maybe.items() if c is not None}
    if len(compiled) != len(maybe):
        return False
    needed = () if required is None else required
    if not isinstance(needed, list) or not all(isinstance(k, str) for k in needed):
        return False
    rest: Check | None
    if extra is None or extra is True:
        rest = None
    elif extra is False:
        rest = _never
    else:
        rest = compile_check(extra)
        if rest is None:
            return False

    def check(x: Any) -> bool:
        if not isinstance(x, dict):
            return True
        for k in needed:
            if k not in x:
                return False
        for k, v in x.items():
            c = compiled.get(k)
            if c is not None:
                if not c(v):
                    return False
            elif rest is not None and not rest(v):
                return False
        return True

    return check


def _never(x: Any) -> bool:
    return False


_MEMO: dict[int, tuple[Any, Check | None]] = {}


def quick_valid(schema: dict[str, Any], instance: Any) -> bool:
    """True only when `instance` surely meets `schema` (see the module docstring); False means "ask jsonschema".

    Memoised by identity, as `schema_safety.safe_validator` is: the schemas passed here live as long as their specs.
    """
    hit = _MEMO.get(id(schema))
    if hit is None or hit[0] is not schema:
        if len(_MEMO) > 2048:
            _MEMO.clear()
        hit = _MEMO[id(schema)] = (schema, compile_check(schema))
    check = hit[1]
    try:
        return check is not None and check(instance)
    except RecursionError:  # a deeply nested answer: the full validator says so in words
        return False


__all__ = ["compile_check", "quick_valid"]
