"""Tool specs: the ToolSpec model, loading and checking spec files, and prompt rendering.

A tool is a YAML file. At start-up every file is checked against `ToolSpec` (unknown keys are errors), its schemas
against the JSON Schema meta-schema, and its template variables against its input schema; the first problem stops
start-up with the file, the field and what is wrong.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Literal

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from tiered_mcp.core.errors import SpecError
from tiered_mcp.specs.compare import Compare
from tiered_mcp.specs.validators import Validator, needs_argument

RESERVED_ARGUMENTS = frozenset({"tier"})
"""Arguments the server adds to every tool's published input schema; specs may not declare them."""


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Prompt(_Frozen):
    """The prompt: fixed system text, and a user template that receives the arguments."""

    system: str = Field(description="System message. Fixed text: arguments never go here.")
    user: str = Field(
        description="User message template: {{name}} inserts an argument (non-strings as JSON), "
        "{{#name}}...{{/name}} renders only when the argument is given, {{^name}}...{{/name}} only when it is not."
    )


class Annotations(_Frozen):
    """MCP tool annotations (hints for hosts)."""

    read_only: bool = True
    destructive: bool = False
    idempotent: bool = True
    open_world: bool = False


class Binding(_Frozen):
    """Ties part of the output schema to an argument of the call.

    `schema` puts the argument (a JSON Schema the caller supplied) at `at`; `enum` makes the argument (a list) the
    allowed values at `at`; `index` limits the integer at `at` to a valid position in the argument (a list);
    `max_items` caps the array at `at` to the argument (an integer). Bound schemas are sent to the model and
    enforced on its answer.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    argument: str
    at: str = Field(pattern=r"^(/[^/]+)+$", description="JSON Pointer into output_schema, e.g. /properties/data")
    as_: Literal["schema", "enum", "index", "max_items"] = Field(alias="as")


class Batch(_Frozen):
    """The tool also takes `items`: a list of values for `argument`, each run as its own call, concurrently."""

    argument: str
    max_items: int = Field(default=1000, ge=1, le=100_000)


class ToolSpec(_Frozen):
    """One tool, as declared in a spec file."""

    _memo: dict[str, Any] = PrivateAttr(default_factory=dict)

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,63}$", description="Tool name as published over MCP.")
    title: str = Field(min_length=1, max_length=80)
    description: str = Field(min_length=1, max_length=400, description="One short line; hosts pay for it every turn.")
    tier: Literal["local", "nano", "mini", "flagship"] = Field(description="Tier the tool runs on by default.")
    version: int = Field(default=1, ge=1, description="Bump when the prompt or schemas change meaningfully.")
    input_schema: dict[str, Any]
    output_schema: dict[str, Any]
    prompt: Prompt
    annotations: Annotations = Field(default_factory=Annotations)
    bindings: list[Binding] = Field(default_factory=list)
    local_task: Literal["classify", "rank", "summarize"] | None = Field(
        default=None, description="The embedded local tier can serve this tool with this task (same argument names)."
    )
    confidence_field: str | None = Field(default=None, description="Output property holding a 0..1 confidence.")
    confidence_threshold: float = Field(
        default=0.6, ge=0, le=1, description="An answer less confident than this escalates when a tier is left."
    )
    validators: list[Validator] = Field(default_factory=list, description="Checks on answers beyond the schema.")
    batch: Batch | None = None
    compare: Compare | None = Field(default=None, description="How two answers are scored (shadow and eval).")

    def model_output_schema(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """The output schema for this call: the spec's, with every binding applied.

        Memoised on the bound arguments' values (the same dict comes back for the same values, e.g. for every
        item of a batch); treat the result as read-only.
        """
        if not self.bindings:
            return self.output_schema
        key = json.dumps([arguments.get(b.argument) for b in self.bindings], sort_keys=True)
        memo = self._memo
        if key in memo:
            return memo[key]
        if len(memo) > 256:
            memo.clear()
        memo[key] = schema = self._bind(arguments)
        return schema

    def _bind(self, arguments: dict[str, Any]) -> dict[str, Any]:
        schema = json.loads(json.dumps(self.output_schema))
        for b in self.bindings:
            *parents, last = b.at.strip("/").split("/")
            node = schema
            for part in parents:
                node = node[part]
            value = arguments.get(b.argument)
            if b.as_ == "schema":
                node[last] = value
            elif value is None:
                continue
            elif b.as_ == "enum":
                node[last] = {**node[last], "enum": list(value)}
            elif b.as_ == "index":
                node[last] = {**node[last], "maximum": len(value) - 1}
            else:
                node[last] = {**node[last], "maxItems": value}
        return schema

    def render(self, arguments: dict[str, Any]) -> list[dict[str, str]]:
        """Chat messages for these (already validated) arguments."""
        return [
            {"role": "system", "content": self.prompt.system},
            {"role": "user", "content": render_template(self.prompt.user, arguments)},
        ]


# ---- templates ---------------------------------------------------------------------------------------------------

_SECTION = re.compile(r"\{\{([#^])\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}(.*?)\{\{/\s*\2\s*\}\}", re.S)
_VAR = re.compile(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}")
_ANY_TAG = re.compile(r"\{\{\s*[#^/]?\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}")
_CLOSING_TAG = re.compile(r"</([A-Za-z_][A-Za-z0-9_-]*)>")


def template_variables(template: str) -> set[str]:
    """Every argument name a template refers to."""
    return set(_ANY_TAG.findall(template))


def _present(value: Any) -> bool:
    # False counts as absent: a boolean filled in from its schema default `false` is not "on".
    return value is not None and value is not False and value != "" and value != [] and value != {}


@functools.lru_cache(maxsize=256)  # a spec's few templates, rendered once per call or batch item
def _closer_pattern(template: str) -> re.Pattern[str] | None:
    """Any spelling of the template's closing tags that a model might read as one: any case, spaces anywhere
    (`</TEXT>`, `</text >`, `</ text>`)."""
    tags = sorted(set(_CLOSING_TAG.findall(template)))
    if not tags:
        return None
    return re.compile(r"<(\s*)/(\s*(?:" + "|".join(map(re.escape, tags)) + r")\s*)>", re.I)


def render_template(template: str, arguments: dict[str, Any]) -> str:
    """Fill a template. Inserted text cannot close the template's own delimiter tags (e.g. `</text>`), whatever
    its case or spacing: such a tag inside an argument is written `<\\/text>`."""
    closers = _closer_pattern(template)

    def section(m: re.Match[str]) -> str:
        shown = _present(arguments.get(m.group(2)))
        return m.group(3) if shown == (m.group(1) == "#") else ""

    def value(m: re.Match[str]) -> str:
        v = arguments.get(m.group(1))
        text = v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)
        if closers is not None:
            text = closers.sub(lambda t: f"<{t.group(1)}\\/{t.group(2)}>", text)
        return text

    out = _SECTION.sub(section, template)
    return _VAR.sub(value, out).strip()


# ---- strict structured output ------------------------------------------------------------------------------------

_NOT_STRICT_KEYS = frozenset(
    {"oneOf", "allOf", "not", "if", "then", "else", "patternProperties", "dependentRequired", "dependentSchemas",
     "unevaluatedProperties", "propertyNames", "minProperties", "maxProperties", "contains", "uniqueItems"}
)


def strict_compatible(schema: Any) -> bool:
    """Whether OpenAI's strict structured output can enforce this schema exactly.

    Strict mode needs every object closed (additionalProperties false) with all its properties required, and
    supports only a subset of keywords; anything else is sent non-strict and validated by us.
    """
    if isinstance(schema, list):
        return all(strict_compatible(s) for s in schema)
    if not isinstance(schema, dict):
        return True
    if _NOT_STRICT_KEYS & schema.keys():
        return False
    types = schema.get("type")
    if types == "object" or (isinstance(types, list) and "object" in types):
        props = schema.get("properties")
        if not props or schema.get("additionalProperties") is not False or set(schema.get("required", [])) != set(props):
            return False
    return all(strict_compatible(v) for k, v in schema.items() if k not in ("enum", "const", "default", "examples"))


# ---- loading -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Specs:
    """The loaded tools, by name, with the file each came from."""

    tools: dict[str, ToolSpec]
    sources: dict[str, str] = field(default_factory=dict)

    def __iter__(self):
        return iter(self.tools.values())

    def __len__(self) -> int:
        return len(self.tools)

    def get(self, name: str) -> ToolSpec | None:
        return self.tools.get(name)


def default_specs_dir() -> Path:
    """The shipped tool_specs folder: inside the installed package, or at the top of a source checkout."""
    packaged = Path(str(resources.files("tiered_mcp"))) / "tool_specs"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[3] / "tool_specs"


def _check_schema(source: str, field_name: str, schema: dict[str, Any]) -> None:
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as e:
        where = ".".join(str(p) for p in e.absolute_path)
        raise SpecError(source, f"{field_name}{'.' + where if where else ''}", f"not a valid JSON Schema: {e.message}") from None
    if schema.get("type") != "object":
        raise SpecError(source, f"{field_name}.type", 'must be "object" (MCP requires an object at the root)')
    problems = schema_portability_problems(schema, field_name)
    if problems:
        raise SpecError(source, problems[0][0], problems[0][1])


# JSON Schema 2020-12 keywords a spec's schemas may use. Anything else is an error: a YAML slip such as
# `{description: e.g. friendly, formal}` turns words into keywords, and strict validators (ajv) reject the tool.
_KEYWORDS = frozenset({
    "$schema", "$id", "$ref", "$defs", "$comment", "$anchor", "$dynamicRef", "$dynamicAnchor", "$vocabulary",
    "type", "enum", "const", "title", "description", "default", "examples", "deprecated", "readOnly", "writeOnly",
    "format", "contentMediaType", "contentEncoding", "contentSchema",
    "properties", "required", "additionalProperties", "patternProperties", "propertyNames", "minProperties",
    "maxProperties", "dependentRequired", "dependentSchemas", "unevaluatedProperties",
    "items", "prefixItems", "contains", "minContains", "maxContains", "minItems", "maxItems", "uniqueItems",
    "unevaluatedItems", "minLength", "maxLength", "pattern", "minimum", "maximum", "exclusiveMinimum",
    "exclusiveMaximum", "multipleOf", "anyOf", "oneOf", "allOf", "not", "if", "then", "else",
})
_ONE_SCHEMA = ("additionalProperties", "propertyNames", "items", "contains", "unevaluatedItems",
               "unevaluatedProperties", "not", "if", "then", "else", "contentSchema")
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "dependentSchemas")
_SCHEMA_LISTS = ("prefixItems", "anyOf", "oneOf", "allOf")


def schema_portability_problems(schema: Any, where: str = "") -> list[tuple[str, str]]:
    """Problems hosts would have with a published schema: unknown keywords, and `type` lists (some hosts and
    Inspector's strict mode handle `["integer", "null"]` badly; `anyOf` says the same portably).

    Returns:
        (path, problem) pairs, in document order.
    """
    if not isinstance(schema, dict):
        return []
    out: list[tuple[str, str]] = []
    here = where + "." if where else ""
    for key, value in schema.items():
        if key not in _KEYWORDS:
            hint = " (a YAML flow mapping splits text at commas: quote the description)" if value is None else ""
            out.append((f"{here}{key}", f"is not a JSON Schema keyword{hint}"))
        elif key == "type" and isinstance(value, list):
            alts = ", ".join("{type: %s}" % json.dumps(t) for t in value)
            out.append((f"{here}type", f"a list of types is handled badly by some hosts; write anyOf: [{alts}]"))
        elif key == "description" and not isinstance(value, str):
            out.append((f"{here}description", "must be text"))
        elif key in _ONE_SCHEMA:
            out += schema_portability_problems(value, f"{here}{key}")
        elif key in _SCHEMA_MAPS and isinstance(value, dict):
            for name, sub in value.items():
                out += schema_portability_problems(sub, f"{here}{key}.{name}")
        elif key in _SCHEMA_LISTS and isinstance(value, list):
            for i, sub in enumerate(value):
                out += schema_portability_problems(sub, f"{here}{key}.{i}")
    return out


def check_spec(spec: ToolSpec, source: str) -> None:
    """Check what the model alone cannot: embedded schemas and template variables.

    Raises:
        SpecError: naming the file, the field and the problem.
    """
    _check_schema(source, "input_schema", spec.input_schema)
    _check_schema(source, "output_schema", spec.output_schema)
    props = spec.input_schema.get("properties", {})
    reserved = RESERVED_ARGUMENTS & props.keys()
    if reserved:
        raise SpecError(source, f"input_schema.properties.{min(reserved)}", "is reserved: the server adds it to every tool")
    unknown = template_variables(spec.prompt.user) - props.keys()
    if unknown:
        raise SpecError(
            source, "prompt.user",
            f"uses {', '.join('{{' + u + '}}' for u in sorted(unknown))}, which the input schema does not define "
            f"(defined: {', '.join(sorted(props)) or 'none'})",
        )
    if template_variables(spec.prompt.system):
        raise SpecError(source, "prompt.system", "must be fixed text: arguments go in prompt.user, never the system message")
    if spec.confidence_field and spec.output_schema.get("properties", {}).get(spec.confidence_field, {}).get(
            "type") != "number":
        raise SpecError(source, "confidence_field", f"{spec.confidence_field!r} is not a number property of the output")
    for i, v in enumerate(spec.validators):
        if needs_argument(v.check) and v.argument not in props:
            raise SpecError(source, f"validators.{i}.argument", f"{v.check} needs an input property, got {v.argument!r}")
    if spec.batch and spec.batch.argument not in props:
        raise SpecError(source, "batch.argument", f"{spec.batch.argument!r} is not an input property")
    if spec.batch and "items" in props:
        raise SpecError(source, "input_schema.properties.items", "is reserved for batches (batch: is set)")
    if spec.compare and spec.compare.method == "judge" and not spec.compare.rubric:
        raise SpecError(source, "compare.rubric", "a judge comparison needs a rubric")
    for i, b in enumerate(spec.bindings):
        if b.argument not in props:
            raise SpecError(source, f"bindings.{i}.argument", f"{b.argument!r} is not an input property")
        node: Any = spec.output_schema
        for part in b.at.strip("/").split("/"):
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            raise SpecError(source, f"bindings.{i}.at", f"{b.at} does not point at a schema inside output_schema")


def parse_spec(text: str, source: str) -> ToolSpec:
    """Parse and check one spec file's text."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else ""
        raise SpecError(source, where, f"not valid YAML: {getattr(e, 'problem', None) or e}") from None
    if not isinstance(data, dict):
        raise SpecError(source, "", "must be a YAML mapping with name, title, description, tier, schemas and prompt")
    try:
        spec = ToolSpec.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        msg = "unknown key (see tool-spec.schema.json)" if err["type"] == "extra_forbidden" else err["msg"]
        raise SpecError(source, ".".join(str(p) for p in err["loc"]), msg) from None
    check_spec(spec, source)
    return spec


def load_specs(extra_dirs: Iterable[str | Path] = (), include_defaults: bool = True) -> Specs:
    """Load the shipped specs, then each extra folder in order; a later spec of the same name replaces an earlier one.

    Raises:
        SpecError: the first problem found, naming its file.
    """
    dirs = ([default_specs_dir()] if include_defaults else []) + [Path(d).expanduser() for d in extra_dirs]
    tools: dict[str, ToolSpec] = {}
    sources: dict[str, str] = {}
    for d in dirs:
        if not d.is_dir():
            raise SpecError(str(d), "", "is not a folder (pass --specs a folder of *.yaml files)")
        seen: dict[str, str] = {}
        for path in sorted([*d.glob("*.yaml"), *d.glob("*.yml")]):
            spec = parse_spec(path.read_text(encoding="utf-8"), str(path))
            if spec.name in seen:
                raise SpecError(str(path), "name", f"{spec.name!r} is also declared in {seen[spec.name]}")
            seen[spec.name] = str(path)
            tools[spec.name] = spec
            sources[spec.name] = str(path)
    return Specs(tools=tools, sources=sources)


def spec_json_schema() -> dict[str, Any]:
    """The JSON Schema of a spec file, for editors (published as tool_specs/tool-spec.schema.json)."""
    schema = ToolSpec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "tiered-mcp tool spec"
    return schema
