"""Caller schemas are untrusted data: validation that fetches nothing, cannot hang, and never echoes much.

A caller's JSON Schema (extract's `schema`, bound into the output schema) and every value checked against any
schema may come from a prompt-injected host. So:

- `$ref` / `$dynamicRef` resolve only inside the schema: the registry retrieves nothing (jsonschema's deprecated
  default would fetch http and file URLs, synchronously and with no timeout), and `caller_schema_problem` names a
  non-local ref as an argument error before any validation runs.
- a caller schema is bounded: `MAX_SCHEMA_BYTES` of JSON, `MAX_DEPTH` levels, `MAX_KEYWORDS` keys in all.
- `pattern`, `patternProperties`, `additionalProperties` (which consults patternProperties) and `format: regex`
  run on RE2 (linear time: no pattern can backtrack for hours); a pattern RE2 cannot run (lookaround,
  backreferences) runs on the `regex` engine with a `REGEX_TIMEOUT_S` time limit and fails clearly when it is hit.
  `unevaluatedProperties` beside `patternProperties` is refused (jsonschema would run those patterns on `re`).
- messages name the field (a JSON path) and the rule, and quote at most a short excerpt of any value.
"""

from __future__ import annotations

import functools
import json
from contextvars import ContextVar
from typing import Any, Callable, Iterator

import regex
from jsonschema import Draft202012Validator, FormatChecker, validators
from jsonschema.exceptions import SchemaError, ValidationError
from referencing import Registry
from referencing.exceptions import NoSuchResource, Unresolvable

try:  # google-re2: linear-time matching. Without it every pattern runs on `regex` under the time limit.
    import re2 as _re2

    _RE2_OPTIONS = _re2.Options()
    _RE2_OPTIONS.log_errors = False  # a pattern RE2 cannot take is expected (we fall back); not worth a stderr line
except ImportError:  # pragma: no cover - google-re2 is a dependency; kept for platforms without its wheel
    _re2 = None

MAX_SCHEMA_BYTES = 64 * 1024
MAX_DEPTH = 32
MAX_KEYWORDS = 2000
MAX_STEPS = 10_000
"""Most evaluations of the keywords that can fan out ($ref, $dynamicRef, anyOf, oneOf, allOf, not, if, contains,
dependentSchemas) one validation may take: about half a second at worst. Answers are bounded by the tier's
max_output_tokens, so an honest schema and answer come nowhere near it; past it the value is invalid."""
_FAN_OUT = frozenset({"$ref", "$dynamicRef", "anyOf", "oneOf", "allOf", "not", "if", "contains", "dependentSchemas"})
MAX_EXPANDED = 100_000
"""Most nodes a schema may come to with its local refs followed: a few kilobytes of refs that each point twice at
the next ("billion laughs") would otherwise make validation explore millions of branches."""
REGEX_TIMEOUT_S = 0.1
"""Longest one search may run on the backtracking engine (only patterns RE2 cannot run get there). A pattern that
hits it is refused from then on, without running (`_STOPPED`), so repeating it cannot stall the server again."""
MAX_PATTERN_CHARS = 2000
"""Longer patterns are refused: compiling one can take most of a second on the backtracking engine."""
EXCERPT_CHARS = 60
MESSAGE_CHARS = 300


class SlowPattern(Exception):
    """A pattern ran past REGEX_TIMEOUT_S on the backtracking engine (now, or earlier in this process)."""


_STOPPED: dict[str, None] = {}  # patterns that hit the time limit, oldest first (bounded)


# ---- regular expressions ------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1024)
def compile_pattern(pattern: str) -> Callable[[str], bool]:
    """A search function for `pattern` that cannot hang: RE2 when it can run the pattern, else `regex` with a
    time limit (raising SlowPattern).

    Raises:
        ValueError: the pattern is not a valid regular expression for either engine.
    """
    if len(pattern) > MAX_PATTERN_CHARS:
        raise ValueError(f"longer than {MAX_PATTERN_CHARS} characters")
    if _re2 is not None:
        try:
            compiled = _re2.compile(pattern, _RE2_OPTIONS)
        except Exception as e:  # re2.error: syntax RE2 does not support; the backtracking engine may
            if "too large" in str(e) or "repetition size" in str(e):
                # Huge expansions ((a{1000}){1000}) would cost the backtracking engine seconds to compile.
                raise ValueError("too large (its repetitions expand past what can be matched safely)") from None
        else:
            return lambda text: compiled.search(text) is not None
    try:
        slow = regex.compile(pattern)
    except (regex.error, TypeError, ValueError, OverflowError) as e:
        raise ValueError(f"not a valid regular expression: {e}") from None

    def search(text: str) -> bool:
        if pattern in _STOPPED:
            raise SlowPattern(pattern)
        try:
            return slow.search(text, timeout=REGEX_TIMEOUT_S) is not None
        except TimeoutError:
            if len(_STOPPED) >= 1024:
                del _STOPPED[next(iter(_STOPPED))]
            _STOPPED[pattern] = None
            raise SlowPattern(pattern) from None

    return search


def _search(pattern: str, text: str) -> bool | str:
    """True/False, or a problem message when the pattern cannot be run."""
    try:
        return compile_pattern(pattern)(text)
    except ValueError as e:
        return f"pattern {excerpt(pattern)} is {e}"
    except SlowPattern:
        return _SLOW.format(excerpt(pattern), REGEX_TIMEOUT_S)


_SLOW = ("pattern {} took over {:g} s and was stopped; it is refused from now on (lookaround and backreferences "
         "run on a backtracking engine: simplify it, or drop them so it runs in linear time)")


# ---- excerpts -----------------------------------------------------------------------------------------------------


def excerpt(value: Any, limit: int = EXCERPT_CHARS) -> str:
    """A short, readable stand-in for a value: its repr when short, else its start and its size."""
    if isinstance(value, (list, tuple)) and len(value) > 3:
        return f"[{len(value)} items]"
    if isinstance(value, dict) and len(value) > 3:
        return f"{{object of {len(value)} keys}}"
    text = repr(value)
    if len(text) <= limit:
        return text
    size = f"{len(value)} chars" if isinstance(value, str) else f"{len(text)} chars as text"
    return f"{text[:limit]}… ({size})"


def _message(error: ValidationError | SchemaError) -> str:
    """jsonschema's message with the instance and the rule's value shortened (its own repeats both whole)."""
    msg = error.message
    if len(msg) > 120:
        for value in (error.instance, error.validator_value):
            text = repr(value)
            if len(text) > EXCERPT_CHARS:
                msg = msg.replace(text, excerpt(value))
    if len(msg) > MESSAGE_CHARS:
        msg = msg[:MESSAGE_CHARS] + "…"
    return msg


# ---- the validator ------------------------------------------------------------------------------------------------


def _retrieve_nothing(uri: str) -> Any:
    raise NoSuchResource(ref=uri)  # type: ignore[call-arg]  # an attrs class mypy cannot see through


REGISTRY: Registry = Registry(retrieve=_retrieve_nothing)  # type: ignore[call-arg]
"""Resolves refs inside the schema being validated only; anything else is unresolvable, never fetched."""


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "string"):
        return
    found = _search(pattern, instance)
    if isinstance(found, str):
        yield ValidationError(found)
    elif not found:
        yield ValidationError(f"{excerpt(instance)} does not match {excerpt(pattern)}")


def _matching(pattern: str, key: str, problems: list[str]) -> bool:
    found = _search(pattern, key)
    if isinstance(found, str):
        problems.append(found)
        return False
    return found


def _pattern_properties(validator: Any, patterns: dict[str, Any], instance: Any, schema: Any
                        ) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    problems: list[str] = []
    for pattern, subschema in patterns.items():
        for key, value in instance.items():
            if _matching(pattern, key, problems):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)
    for p in dict.fromkeys(problems):
        yield ValidationError(p)


def _additional_properties(validator: Any, additional: Any, instance: Any, schema: Any) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    properties = schema.get("properties", {})
    patterns = list(schema.get("patternProperties", {}))
    problems: list[str] = []
    extras = [k for k in instance if k not in properties and not any(_matching(p, k, problems) for p in patterns)]
    for p in dict.fromkeys(problems):
        yield ValidationError(p)
    if validator.is_type(additional, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], additional, path=extra)
    elif not additional and extras:
        names = ", ".join(excerpt(k) for k in sorted(extras)[:5]) + (f" and {len(extras) - 5} more"
                                                                     if len(extras) > 5 else "")
        yield ValidationError(f"Additional properties are not allowed ({names} unexpected)")


FORMATS = FormatChecker(formats=())


@FORMATS.checks("regex", raises=ValueError)
def _is_regex(instance: object) -> bool:
    if isinstance(instance, str):
        compile_pattern(instance)
    return True


class TooManySteps(Exception):
    """Validation evaluated more than MAX_STEPS keywords."""


_STEPS: ContextVar[list[int] | None] = ContextVar("tiered_mcp_schema_steps", default=None)


def _counted(keyword: Callable[..., Any]) -> Callable[..., Any]:
    """The keyword, counting each evaluation against the running validation's step budget."""

    def counted(validator: Any, value: Any, instance: Any, schema: Any) -> Any:
        box = _STEPS.get()
        if box is not None:
            box[0] += 1
            if box[0] > MAX_STEPS:
                raise TooManySteps
        return keyword(validator, value, instance, schema)

    return counted


_KEYWORDS = {**Draft202012Validator.VALIDATORS, "pattern": _pattern, "patternProperties": _pattern_properties,
             "additionalProperties": _additional_properties}
SafeValidator = validators.extend(
    Draft202012Validator,
    validators={name: _counted(fn) if name in _FAN_OUT else fn for name, fn in _KEYWORDS.items()})
"""Draft 2020-12 with the pattern keywords on the safe engines, and the keywords that fan out counted against a
step budget (schema_problems sets it): refs that fan out, recursive or not, cannot make one validation run for
minutes."""


_VALIDATORS: dict[int, tuple[Any, Any]] = {}


def safe_validator(schema: dict[str, Any]) -> Any:
    """A validator for `schema` that fetches no ref and runs every pattern on an engine that cannot hang.

    Memoised by identity (the schema is kept alive beside it): specs' schemas live as long as the specs and bound
    schemas are memoised per spec, so a batch of a thousand items builds one validator, not a thousand.
    """
    hit = _VALIDATORS.get(id(schema))
    if hit is None or hit[0] is not schema:
        if len(_VALIDATORS) > 2048:
            _VALIDATORS.clear()
        hit = _VALIDATORS[id(schema)] = (schema, SafeValidator(schema, registry=REGISTRY, format_checker=FORMATS))
    return hit[1]


# ---- checks on a caller's schema ----------------------------------------------------------------------------------


def _walk(node: Any, depth: int, counts: list[int], found: dict[str, Any]) -> str | None:
    if depth > MAX_DEPTH:
        return f"nested deeper than {MAX_DEPTH} levels"
    if isinstance(node, dict):
        counts[0] += len(node)
        if counts[0] > MAX_KEYWORDS:
            return f"has more than {MAX_KEYWORDS} keys in all"
        for key in ("$ref", "$dynamicRef"):
            ref = node.get(key)
            if isinstance(ref, str) and not ref.startswith("#"):
                return (f"{key} {excerpt(ref)} points outside the schema; only refs inside it (\"#/$defs/...\") "
                        "are followed, nothing is fetched")
        for key in ("patternProperties", "unevaluatedProperties"):
            if key in node:
                found[key] = True
        for value in node.values():
            problem = _walk(value, depth + 1, counts, found)
            if problem:
                return problem
    elif isinstance(node, list):
        counts[0] += len(node)
        if counts[0] > MAX_KEYWORDS:
            return f"has more than {MAX_KEYWORDS} keys and items in all"
        for value in node:
            problem = _walk(value, depth + 1, counts, found)
            if problem:
                return problem
    return None


def _patterns(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "pattern" and isinstance(value, str):
                yield value
            elif key == "patternProperties" and isinstance(value, dict):
                yield from value
            if key not in ("enum", "const", "default", "examples"):
                yield from _patterns(value)
    elif isinstance(node, list):
        for value in node:
            yield from _patterns(value)


def _pointer(root: Any, ref: str, anchors: dict[str, Any]) -> Any:
    """The node a local ref points at, or None."""
    from urllib.parse import unquote

    fragment = unquote(ref[1:])
    if fragment and not fragment.startswith("/"):
        return anchors.get(fragment)
    node = root
    for part in fragment.split("/")[1:]:
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def _anchors(node: Any, found: dict[str, Any]) -> dict[str, Any]:
    if isinstance(node, dict):
        for key in ("$anchor", "$dynamicAnchor"):
            if isinstance(node.get(key), str):
                found.setdefault(node[key], node)
        for value in node.values():
            _anchors(value, found)
    elif isinstance(node, list):
        for value in node:
            _anchors(value, found)
    return found


def expanded_size(schema: Any, limit: int = MAX_EXPANDED) -> int:
    """How many nodes `schema` comes to with its local refs followed (each cycle counted once), stopping past
    `limit`."""
    anchors = _anchors(schema, {})
    memo: dict[int, int] = {}
    active: set[int] = set()

    def size(node: Any) -> int:
        if not isinstance(node, (dict, list)):
            return 1
        key = id(node)
        if key in memo:
            return memo[key]
        if key in active:
            return 1  # a recursive schema: bounded by the instance, not by the schema
        active.add(key)
        total = 1
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for k, v in items:
            if k in ("enum", "const", "default", "examples"):
                continue
            if k in ("$ref", "$dynamicRef") and isinstance(v, str) and v.startswith("#"):
                target = _pointer(schema, v, anchors)
                total += size(target) if target is not None else 1
            else:
                total += size(v)
            if total > limit:
                break
        active.discard(key)
        memo[key] = total = min(total, limit + 1)
        return total

    return size(schema)


def _limits_problem(schema: Any, text: str) -> str | None:
    if len(text.encode()) > MAX_SCHEMA_BYTES:
        return f"is {len(text.encode())} bytes of JSON, over the limit of {MAX_SCHEMA_BYTES}"
    found: dict[str, Any] = {}
    problem = _walk(schema, 0, [0], found)
    if problem:
        return problem
    if expanded_size(schema) > MAX_EXPANDED:
        return (f"comes to over {MAX_EXPANDED} nodes with its $refs followed (refs that fan out to refs); "
                "define each part once")
    if found.get("patternProperties") and found.get("unevaluatedProperties"):
        return "uses unevaluatedProperties together with patternProperties, which is not supported here"
    for pattern in _patterns(schema):
        try:
            compile_pattern(pattern)
        except ValueError as e:
            return f"pattern {excerpt(pattern)} is {e}"
        if pattern in _STOPPED:
            return _SLOW.format(excerpt(pattern), REGEX_TIMEOUT_S)
    return None


@functools.lru_cache(maxsize=256)
def _problem(text: str) -> str | None:
    schema = json.loads(text)
    problem = _limits_problem(schema, text)
    if problem:
        return problem
    try:
        SafeValidator.check_schema(schema)
    except SchemaError as e:
        return _message(e)
    return None


def caller_schema_problem(schema: Any) -> str | None:
    """Why a caller's schema cannot be used (too big or deep, a non-local ref, a bad pattern, not a valid JSON
    Schema), or None. Memoised on its canonical JSON: a host tends to send the same schema call after call."""
    try:
        text = json.dumps(schema, sort_keys=True)
    except (TypeError, ValueError, RecursionError):
        return "is not plain JSON"
    if len(text) > MAX_SCHEMA_BYTES * 4:  # do not even parse or memoise something this far over the limit
        return f"is {len(text)} characters of JSON, over the limit of {MAX_SCHEMA_BYTES} bytes"
    return _problem(text)


# ---- validation ---------------------------------------------------------------------------------------------------


def json_path(parts: Any) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts)


def schema_problems(schema: dict[str, Any], instance: Any, what: str, limit: int = 5,
                    validator: Any = None) -> list[str]:
    """Readable validation errors, each naming the field (a JSON path under `what`), the message with at most a
    short excerpt of any value, and the rule it breaks."""
    validator = validator if validator is not None else safe_validator(schema)
    steps = _STEPS.set([0])
    try:
        errors = sorted(validator.iter_errors(instance), key=lambda e: list(map(str, e.path)))
    except TooManySteps:
        return [f"{what}: validation took over {MAX_STEPS} steps and was stopped (the schema's refs fan out "
                "too much for this value)"]
    except Unresolvable as exc:
        ref = getattr(exc, "ref", None) or getattr(getattr(exc, "_wrapped", None), "ref", "")
        return [f"{what}: $ref {excerpt(ref)} cannot be resolved (only refs inside the schema are followed)"]
    except RecursionError:
        return [f"{what}: nested too deeply to validate"]
    finally:
        _STEPS.reset(steps)
    out = []
    for e in errors[:limit]:
        path = json_path(e.path)
        if len(path) > 120:
            path = path[:120] + "…"
        out.append(f"{what}{path}: {_message(e)} (rule: {e.validator})")
    if len(errors) > limit:
        out.append(f"{what}: {len(errors) - limit} more problems")
    return out


__all__ = ["MAX_DEPTH", "MAX_KEYWORDS", "MAX_SCHEMA_BYTES", "REGEX_TIMEOUT_S", "REGISTRY", "SafeValidator",
           "SlowPattern", "caller_schema_problem", "compile_pattern", "excerpt", "safe_validator", "schema_problems"]
