"""Checks a spec can declare on answers, beyond what JSON Schema can say.

    validators:
      - {check: occurs_in, output: /data, argument: text}          every string under /data occurs in the text
      - {check: line_in, output: /findings/*/line, argument: code}  every line number exists in the code (or diff)
      - {check: unique, output: /ranked/*/index}                    no value repeats
      - {check: max_words, output: /summary, argument: max_words}   the string has at most that many words

`output` is a JSON Pointer into the answer in which `*` stands for every item of an array. A failed check is
treated like an invalid answer: one repair on the same tier, then escalation (trigger "validator").
"""

from __future__ import annotations

import re
from typing import Any, Callable, Iterator, Literal

from pydantic import BaseModel, ConfigDict, Field

CheckName = Literal["occurs_in", "line_in", "unique", "max_words"]
_NEEDS_ARGUMENT = {"occurs_in", "line_in", "max_words"}
_HUNK = re.compile(r"^@@ -\d+(?:,\d+)? \+(\d+)(?:,(\d+))? @@", re.M)


class Validator(BaseModel):
    """One declared check."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    check: CheckName
    output: str = Field(pattern=r"^(/[^/]+)+$", description="JSON Pointer into the answer; * matches every item.")
    argument: str | None = None


def values_at(document: Any, pointer: str) -> Iterator[Any]:
    """Every value at `pointer` (with `*` for all items of an array); missing parts yield nothing."""
    nodes = [document]
    for part in pointer.strip("/").split("/"):
        nxt = []
        for node in nodes:
            if part == "*" and isinstance(node, list):
                nxt.extend(node)
            elif isinstance(node, dict) and part in node:
                nxt.append(node[part])
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                nxt.append(node[int(part)])
        nodes = nxt
    return iter(nodes)


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def _norm(text: str) -> str:
    return " ".join(text.casefold().split())


def _occurs_in(values: list[Any], source: Any) -> list[str]:
    haystack = _norm(str(source or ""))
    return [f"{s!r} does not occur in the source text" for v in values for s in _strings(v)
            if s.strip() and _norm(s) not in haystack]


def valid_lines(code: str) -> set[int]:
    """Line numbers a finding may cite: 1..n for code, the new-file lines of each hunk for a unified diff."""
    hunks = _HUNK.findall(code)
    if not hunks:
        return set(range(1, code.count("\n") + 2))
    lines: set[int] = set()
    for start, count in hunks:
        lines.update(range(int(start), int(start) + int(count or 1)))
    return lines


def _line_in(values: list[Any], code: Any) -> list[str]:
    lines = valid_lines(str(code or ""))
    hi = max(lines, default=0)
    return [f"line {v} is not in the code (valid: 1..{hi})" if not _HUNK.search(str(code or ""))
            else f"line {v} is in no hunk of the diff" for v in values if isinstance(v, int) and v not in lines]


def _unique(values: list[Any], _: Any) -> list[str]:
    seen, dup = set(), []
    for v in values:
        key = repr(v)
        if key in seen:
            dup.append(f"{v!r} appears more than once")
        seen.add(key)
    return dup


def word_count(text: str) -> int:
    """Words as a reader counts them: bullet dashes and other bare punctuation are not words."""
    return sum(1 for w in text.split() if any(c.isalnum() for c in w))


def _max_words(values: list[Any], limit: Any) -> list[str]:
    if not isinstance(limit, int):
        return []
    return [f"{word_count(v)} words, over the limit of {limit}" for v in values
            if isinstance(v, str) and word_count(v) > limit]


_CHECKS: dict[str, Callable[[list[Any], Any], list[str]]] = {
    "occurs_in": _occurs_in, "line_in": _line_in, "unique": _unique, "max_words": _max_words,
}


def run_validators(validators: list[Validator], output: Any, arguments: dict[str, Any]) -> list[str]:
    """Problems found in `output`, each naming the check and the pointer ("output/data: ...")."""
    problems = []
    for v in validators:
        found = _CHECKS[v.check](list(values_at(output, v.output)), arguments.get(v.argument) if v.argument else None)
        problems += [f"output{v.output} ({v.check}): {p}" for p in found[:5]]
    return problems


def needs_argument(check: str) -> bool:
    return check in _NEEDS_ARGUMENT
