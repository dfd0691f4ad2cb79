"""Checks a spec can declare on answers, beyond what JSON Schema can say.

    validators:
      - {check: occurs_in, output: /data, argument: text}          every value under /data occurs in the text
      - {check: line_in, output: /findings/*/line, argument: code}  every line number exists in the code (or diff)
      - {check: unique, output: /ranked/*/index}                    no value repeats
      - {check: max_words, output: /summary, argument: max_words}   the string has at most that many words
      - {check: occurs_in, output: /data, argument: text, strict: true}   a failure is never returned as an answer

`output` is a JSON Pointer into the answer in which `*` stands for every item of an array. A failed check is
treated like an invalid answer: one repair on the same tier, then escalation (trigger "validator"). When a check
that is not `strict` still fails on every tier, the runner may return the best schema-valid answer with the values
that failed named (`Verdict.unverified`, `best_answer`); a `strict` check's failure is an error.

What "occurs" means for `occurs_in`. Every string and every number (never a boolean or null, never an object key)
under the pointer is checked against the source text; a value occurs when any of these holds:

1. Its schema allows it by name: the value is in the schema's `enum` or is its `const` (a country code, a label).
2. Text match: after folding both sides, the value is a substring of the text that starts and ends on word
   boundaries ("Smith" occurs in "Smith's" but not in "Smithson"). Folding is Unicode NFKC, case folding,
   accents (combining diacritical marks) removed ("Müller" = "muller"), dashes and quotes mapped to ASCII, and
   every run of whitespace made one space. Word boundaries apply to letters and digits of scripts that space
   their words (not to CJK or Thai, which match as plain substrings).
3. Numbers: a number, or a string that is wholly a number, equals a number written in the text. Text numbers are
   read with thousands separators (`,` `.` space or `'`, in groups of three) and a decimal point or comma; when
   both marks appear the last one is the decimal mark, and a single `,` or `.` before exactly three digits is
   read both ways ("1,250" is 1250 or 1.25). A `-` right before the digits also allows the negative reading.
   Not understood: suffixes ("1.5k"), percentages as fractions, numbers in words.
4. Dates: when the field's schema says `format: date` or `date-time`, or the value is ISO 8601 ("2024-03-03",
   "2024-03", "2024-03-03T14:00Z"), the value's calendar date equals a date written in the text: ISO, Y/M/D,
   D/M/Y or M/D/Y with `/` `.` or `-` (both readings when ambiguous; two-digit years 00-69 are 20xx), "March 3,
   2024", "3 March 2024", "3rd of Mar. 2024", "03-Mar-2024" (English month names, full or short); a year-month
   value matches any such date in that month or "March 2024". The time of a date-time is not checked.

The source text is folded once and its numbers and dates are read at most once (the last few texts are kept, so a
repair or an escalation on the same arguments reuses them); the patterns are fixed (no pattern is built from caller
values), and each value is a linear search.
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from functools import cached_property, lru_cache
from typing import Any, Callable, Iterable, Iterator, Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field

CheckName = Literal["occurs_in", "line_in", "unique", "max_words"]
_NEEDS_ARGUMENT = {"occurs_in", "line_in", "max_words"}
_HUNK = re.compile(r"^@@ -\d+(?:,\d+)? \+(\d+)(?:,(\d+))? @@", re.M)
_PER_CHECK = 5  # problems quoted per validator in a repair prompt


class Validator(BaseModel):
    """One declared check."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    check: CheckName
    output: str = Field(pattern=r"^(/[^/]+)+$", description="JSON Pointer into the answer; * matches every item.")
    argument: str | None = None
    strict: bool = Field(default=False, description="A failure on every tier is an error; otherwise the best "
                                                    "answer is returned with the failing values named.")


@dataclass(frozen=True)
class Verdict:
    """What the validators found in one answer.

    Attributes:
        problems: every problem, each naming the check and the pointer ("output/data (occurs_in): ..."), at most
            five per validator; empty when the answer passed.
        unverified: JSON Pointers (RFC 6901, e.g. "/data/due_date") of the values that failed a non-strict
            validator, each once, in the order found.
        strict_failed: a validator marked `strict` failed.
    """

    problems: list[str] = field(default_factory=list)
    unverified: list[str] = field(default_factory=list)
    strict_failed: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems


# ---- locating values ---------------------------------------------------------------------------------------------


def values_at(document: Any, pointer: str) -> Iterator[Any]:
    """Every value at `pointer` (with `*` for all items of an array); missing parts yield nothing."""
    return (value for _, value in located(document, pointer))


def located(document: Any, pointer: str) -> Iterator[tuple[tuple[str | int, ...], Any]]:
    """(concrete path, value) for every value at `pointer`; `*` expands to each index."""
    nodes: list[tuple[tuple[str | int, ...], Any]] = [((), document)]
    for part in pointer.strip("/").split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        nxt: list[tuple[tuple[str | int, ...], Any]] = []
        for path, node in nodes:
            if part == "*" and isinstance(node, list):
                nxt.extend(((*path, i), v) for i, v in enumerate(node))
            elif isinstance(node, dict) and part in node:
                nxt.append(((*path, part), node[part]))
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                nxt.append(((*path, int(part)), node[int(part)]))
        nodes = nxt
    return iter(nodes)


def pointer(path: Iterable[str | int]) -> str:
    """The JSON Pointer of a concrete path."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in path)


def _expand(schemas: Iterable[Any], defs: dict[str, Any], depth: int = 0) -> list[dict[str, Any]]:
    """The schemas with $ref, anyOf, oneOf and allOf flattened into alternatives."""
    out: list[dict[str, Any]] = []
    for s in schemas:
        if not isinstance(s, dict):
            continue
        for key in ("$defs", "definitions"):
            if isinstance(s.get(key), dict):
                defs.update(s[key])
        out.append(s)
        if depth > 8:
            continue
        if isinstance(s.get("$ref"), str):
            out += _expand([defs.get(s["$ref"].rsplit("/", 1)[-1])], defs, depth + 1)
        for key in ("anyOf", "oneOf", "allOf"):
            if isinstance(s.get(key), list):
                out += _expand(s[key], defs, depth + 1)
    return out


def _child(schemas: list[dict[str, Any]], key: str | int, defs: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[Any] = []
    for s in schemas:
        if isinstance(key, int):
            prefix = s.get("prefixItems")
            if isinstance(prefix, list) and key < len(prefix):
                found.append(prefix[key])
            elif isinstance(s.get("items"), dict):
                found.append(s["items"])
        else:
            props = s.get("properties")
            if isinstance(props, dict) and key in props:
                found.append(props[key])
            elif isinstance(s.get("additionalProperties"), dict):
                found.append(s["additionalProperties"])
    return _expand(found, defs)


def _leaves(value: Any, path: tuple[str | int, ...], schemas: list[dict[str, Any]],
            defs: dict[str, Any]) -> Iterator[tuple[tuple[str | int, ...], Any, list[dict[str, Any]]]]:
    """Every string and number under `value`, with its path and the schemas that describe it."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _leaves(v, (*path, k), _child(schemas, k, defs), defs)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _leaves(v, (*path, i), _child(schemas, i, defs), defs)
    elif isinstance(value, str) or (isinstance(value, (int, float)) and not isinstance(value, bool)):
        yield path, value, schemas


def _schemas_at(schema: Any, path: tuple[str | int, ...], defs: dict[str, Any]) -> list[dict[str, Any]]:
    schemas = _expand([schema], defs)
    for part in path:
        schemas = _child(schemas, part, defs)
    return schemas


# ---- folding, numbers and dates ----------------------------------------------------------------------------------

_PUNCT = str.maketrans({c: "-" for c in "\u2010\u2011\u2012\u2013\u2014\u2015\u2212"}
                       | {c: "'" for c in "\u2018\u2019\u201a\u201b\u2032"}
                       | {c: '"' for c in "\u201c\u201d\u201e\u201f\u2033"})


_ACCENTS = re.compile("[\u0300-\u036f]")  # combining diacritical marks: the accents of Latin, Greek, Cyrillic


def fold(text: str) -> str:
    """The form `occurs_in` compares: NFKC, case-folded, accents removed, ASCII dashes and quotes, one space."""
    text = unicodedata.normalize("NFKC", text).translate(_PUNCT).casefold()
    if not text.isascii():
        text = unicodedata.normalize("NFC", _ACCENTS.sub("", unicodedata.normalize("NFKD", text)))
    return " ".join(text.split())


def _spaced(c: str) -> bool:
    """A letter or digit of a script that writes spaces between words (so a match must not cut a word)."""
    o = ord(c)
    return c.isalnum() and (o < 0x0E00 or 0x1E00 <= o < 0x2E80)


def _contains(haystack: str, needle: str) -> bool:
    start_open, end_open = not _spaced(needle[0]), not _spaced(needle[-1])
    i = haystack.find(needle)
    while i >= 0:
        end = i + len(needle)
        if ((start_open or i == 0 or not _spaced(haystack[i - 1]))
                and (end_open or end == len(haystack) or not _spaced(haystack[end]))):
            return True
        i = haystack.find(needle, i + 1)
    return False


_NUM_BODY = r"\d{1,3}(?:(?P<sep>[,.' ])\d{3}(?:(?P=sep)\d{3})*)(?:[.,]\d+)?|\d+(?:[.,]\d+)?"
_NUMBER = re.compile(rf"(?<![\d.,])(?P<minus>-?)(?P<num>{_NUM_BODY})(?!\d)")
_WHOLE_NUMBER = re.compile(rf"[-+]?(?:{_NUM_BODY})")


def number_readings(token: str) -> set[Decimal]:
    """Every value a written number can mean ("1,250" -> {1250, 1.25}; "1.250,5" -> {1250.5})."""
    sign = -1 if token.startswith("-") else 1
    t = token.lstrip("+-").replace(" ", "").replace("'", "")
    marks = [c for c in t if c in ",."]
    if not marks:
        readings = [t]
    elif len(set(marks)) == 2:
        dec = marks[-1]
        thousands = "," if dec == "." else "."
        readings = [t.replace(thousands, "").replace(dec, ".")]
    elif len(marks) > 1:
        readings = [t.replace(marks[0], "")]
    else:
        whole, frac = t.split(marks[0])
        readings = [f"{whole}.{frac}"]
        if len(frac) == 3 and whole != "0" and len(whole) <= 3:
            readings.append(whole + frac)
    out = set()
    for r in readings:
        try:
            out.add(sign * Decimal(r))
        except InvalidOperation:
            pass
    return out


def _as_decimal(value: int | float) -> Decimal | None:
    try:
        return Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    except InvalidOperation:
        return None


_MONTHS = {m: i for i, names in enumerate(
    [("january", "jan"), ("february", "feb"), ("march", "mar"), ("april", "apr"), ("may",), ("june", "jun"),
     ("july", "jul"), ("august", "aug"), ("september", "sep", "sept"), ("october", "oct"), ("november", "nov"),
     ("december", "dec")], start=1) for m in names}
_MON = (r"(?=[adfjmnos])(jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?"
        r"|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)\.?")
_ORD = r"(\d{1,2})(?:st|nd|rd|th)?"
_Y = r"(\d{4})"
_DATE_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"(?<!\d)(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})(?!\d)"), "ymd"),
    (re.compile(r"(?<![\d.])(\d{1,2})[-/.](\d{1,2})[-/.](\d{4}|\d{2})(?![\d])"), "dmy|mdy"),
    (re.compile(rf"\b{_MON}\s+{_ORD},?\s+{_Y}(?!\d)"), "mdy"),
    (re.compile(rf"(?<!\d){_ORD}(?:\s+of)?\s+{_MON},?\s+{_Y}(?!\d)"), "dmy"),
    (re.compile(rf"(?<!\d)(\d{{1,2}})[-/ ]{_MON}[-/ ](\d{{4}}|\d{{2}})(?!\d)"), "dmy"),
]
_MONTH_YEAR = re.compile(rf"\b{_MON},?\s+{_Y}(?!\d)")
_ISO_VALUE = re.compile(r"^(\d{4})-(\d{2})(?:-(\d{2})(?:[t ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:z|[+-]\d{2}:?\d{2})?)?)?$")


def _month(s: str) -> int:
    return int(s) if s.isdigit() else _MONTHS.get(s.rstrip("."), 0)


def _year(s: str) -> int:
    y = int(s)
    return y if len(s) == 4 else (2000 + y if y < 70 else 1900 + y)


def _date(y: int, m: int, d: int) -> str | None:
    try:
        return dt.date(y, m, d).isoformat()
    except ValueError:
        return None


def date_mentions(text: str) -> list[tuple[int, str]]:
    """(position, ISO date) for every date written in `text` (already folded) in a form `occurs_in` reads."""
    found: list[tuple[int, str]] = []
    for pattern, order in _DATE_PATTERNS:
        for m in pattern.finditer(text):
            a, b, c = m.groups()
            if order == "ymd":
                candidates = [(int(a), _month(b), int(c))]
            elif order == "mdy":
                candidates = [(_year(c), _month(a), int(b))]
            elif order == "dmy":
                candidates = [(_year(c), _month(b), int(a))]
            else:
                candidates = [(_year(c), int(b), int(a)), (_year(c), int(a), int(b))]
            found += [(m.start(), d) for d in (_date(*x) for x in candidates) if d]
    return sorted(found)


def dates_in(text: str) -> set[str]:
    """ISO dates (YYYY-MM-DD) written in `text` (already folded) in any form `occurs_in` reads."""
    return {d for _, d in date_mentions(text)}


def iso_date_value(value: str) -> str | None:
    """The date part of an ISO 8601 date, year-month or date-time ("2024-03-03T14:00Z" -> "2024-03-03")."""
    m = _ISO_VALUE.match(value.strip().casefold())
    if not m:
        return None
    y, mo, d = m.groups()
    if d is None:
        return f"{y}-{mo}" if 1 <= int(mo) <= 12 else None
    return _date(int(y), int(mo), int(d))


class Source:
    """A source text, folded once, with its numbers and dates read on first use."""

    def __init__(self, text: Any) -> None:
        self.text = fold(text if isinstance(text, str) else str(text or ""))

    @cached_property
    def numbers(self) -> set[Decimal]:
        out: set[Decimal] = set()
        for m in _NUMBER.finditer(self.text):
            num = m.group("num")
            for part in [num] + (num.split(" ") if m.group("sep") == " " else []):
                readings = number_readings(part)
                out |= readings
                if m.group("minus"):
                    out |= {-r for r in readings}
        return out

    @cached_property
    def dates(self) -> set[str]:
        days = dates_in(self.text)
        months = {d[:7] for d in days}
        for m in _MONTH_YEAR.finditer(self.text):
            months.add(f"{m.group(2)}-{_month(m.group(1)):02d}")
        return days | months

    def has(self, value: str | int | float, schemas: Sequence[dict[str, Any]] = ()) -> bool:
        """Whether `value` occurs in this text, as the module docstring defines it."""
        for s in schemas:
            if "const" in s and s["const"] == value:
                return True
            if isinstance(s.get("enum"), list) and value in s["enum"]:
                return True
        if not isinstance(value, str):
            number = _as_decimal(value)
            return number is not None and number in self.numbers
        folded = fold(value)
        if not folded or _contains(self.text, folded):
            return True
        if _WHOLE_NUMBER.fullmatch(folded) and number_readings(folded) & self.numbers:
            return True
        iso = iso_date_value(folded)
        if iso is not None:
            return iso in self.dates
        if any(s.get("format") in ("date", "date-time") for s in schemas):
            return bool(dates_in(folded) & self.dates)
        return False


_source = lru_cache(maxsize=16)(Source)


# ---- the checks --------------------------------------------------------------------------------------------------

Found = list[tuple[tuple[str | int, ...], str]]  # (path of the failing value, what is wrong)


@dataclass
class _Call:
    """What one `check` call shares between validators: the arguments, the schema, the folded sources."""

    arguments: dict[str, Any]
    schema: Any
    sources: dict[str, Source] = field(default_factory=dict)

    def source(self, name: str) -> Source:
        if name not in self.sources:
            value = self.arguments.get(name)
            self.sources[name] = _source(value if isinstance(value, str) else str(value or ""))
        return self.sources[name]


def _occurs_in(v: Validator, output: Any, call: _Call) -> Found:
    if not v.argument:
        return []
    defs: dict[str, Any]
    source, defs = call.source(v.argument), {}
    out: Found = []
    for path, value in located(output, v.output):
        schemas = _schemas_at(call.schema, path, defs) if call.schema is not None else []
        for leaf_path, leaf, leaf_schemas in _leaves(value, path, schemas, defs):
            if not source.has(leaf, leaf_schemas):
                out.append((leaf_path, f"{leaf!r} does not occur in the source text"))
    return out


def valid_lines(code: str) -> set[int]:
    """Line numbers a finding may cite: 1..n for code, the new-file lines of each hunk for a unified diff."""
    hunks = _HUNK.findall(code)
    if not hunks:
        return set(range(1, code.count("\n") + 2))
    lines: set[int] = set()
    for start, count in hunks:
        lines.update(range(int(start), int(start) + int(count or 1)))
    return lines


def _line_in(v: Validator, output: Any, call: _Call) -> Found:
    code = str(call.arguments.get(v.argument or "") or "")
    lines = valid_lines(code)
    is_diff = bool(_HUNK.search(code))
    hi = max(lines, default=0)
    return [(path, f"line {n} is in no hunk of the diff" if is_diff else f"line {n} is not in the code (valid: 1..{hi})")
            for path, n in located(output, v.output)
            if isinstance(n, int) and not isinstance(n, bool) and n not in lines]


def _unique(v: Validator, output: Any, call: _Call) -> Found:
    seen, dup = set(), []
    for path, value in located(output, v.output):
        key = repr(value)
        if key in seen:
            dup.append((path, f"{value!r} appears more than once"))
        seen.add(key)
    return dup


def word_count(text: str) -> int:
    """Words as a reader counts them: bullet dashes and other bare punctuation are not words."""
    return sum(1 for w in text.split() if any(c.isalnum() for c in w))


def _max_words(v: Validator, output: Any, call: _Call) -> Found:
    limit = call.arguments.get(v.argument or "")
    if not isinstance(limit, int):
        return []
    return [(path, f"{word_count(s)} words, over the limit of {limit}") for path, s in located(output, v.output)
            if isinstance(s, str) and word_count(s) > limit]


_CHECKS: dict[str, Callable[[Validator, Any, _Call], Found]] = {
    "occurs_in": _occurs_in, "line_in": _line_in, "unique": _unique, "max_words": _max_words,
}


def check(validators: Sequence[Validator], output: Any, arguments: dict[str, Any],
          schema: Any = None) -> Verdict:
    """Run every validator on one answer.

    Args:
        validators: the spec's validators.
        output: the answer, already valid against `schema`.
        arguments: the call's arguments (validated, defaults applied).
        schema: the output schema of this call with bindings applied (`ToolSpec.model_output_schema`); `occurs_in`
            reads `enum`, `const` and `format` from it. Without it those tolerances do not apply.

    Returns:
        The Verdict; `unverified` names the values that failed a validator not marked strict.
    """
    call = _Call(arguments, schema)
    problems: list[str] = []
    unverified: dict[str, None] = {}
    strict_failed = False
    for v in validators:
        found = _CHECKS[v.check](v, output, call)
        if not found:
            continue
        problems += [f"output{v.output} ({v.check}): {msg}" for _, msg in found[:_PER_CHECK]]
        if v.strict:
            strict_failed = True
        else:
            unverified.update((pointer(path), None) for path, _ in found)
    return Verdict(problems, list(unverified), strict_failed)


def run_validators(validators: Sequence[Validator], output: Any, arguments: dict[str, Any],
                   schema: Any = None) -> list[str]:
    """Problems found in `output`, each naming the check and the pointer ("output/data: ..."); see `check`."""
    return check(validators, output, arguments, schema).problems


def needs_argument(check: str) -> bool:
    return check in _NEEDS_ARGUMENT


# ---- choosing among answers that failed --------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """A schema-valid answer from one attempt, with its verdict; `tier` is informative only."""

    output: dict[str, Any]
    verdict: Verdict
    tier: str = ""


def best_answer(candidates: Sequence[Candidate]) -> Candidate | None:
    """The answer to return when no attempt passed every validator, or None when none may be returned.

    Candidates come in the order they were tried (lowest tier first). A candidate that failed a strict validator
    is never chosen; among the rest the one with the fewest unverified values wins, and a tie goes to the latest,
    i.e. the highest tier.
    """
    best: Candidate | None = None
    for c in candidates:
        if c.verdict.strict_failed:
            continue
        if best is None or len(c.verdict.unverified) <= len(best.verdict.unverified):
            best = c
    return best
