"""The fake upstream answers from the request's text: schema-valid, validator-passing answers for every shipped tool
and for every example in README.md, through the real openai client; scripted answers still win."""

import json
import re
from pathlib import Path

import pytest

from tiered_mcp.call.runner import Runner
from tiered_mcp.core.config import config_from_dict
from tiered_mcp.models._openai import OpenAIModels
from tiered_mcp.specs.validators import check
from tiered_mcp.testing import FakeResponse, answer_from_text, value_from_text

from .conftest import SECRET

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[1]


def readme_calls() -> list[tuple[str, dict]]:
    """Every `tiered-mcp call TOOL --args '{...}'` in README.md's code blocks."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```bash\n(.*?)```", readme, re.S)
    calls = re.findall(r"tiered-mcp call (\w+) --args '([^']*)'", "\n".join(blocks))
    return [(tool, json.loads(args)) for tool, args in calls]


def example_cases() -> list[tuple[str, dict]]:
    cases = []
    for path in sorted((ROOT / "examples" / "cases").glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                case = json.loads(line)
                cases.append((case["tool"], case["arguments"]))
    return cases


def answer(specs, tool, args):
    spec = specs.get(tool)
    args = {k: v for k, v in args.items()}
    for key, prop in spec.input_schema.get("properties", {}).items():
        if "default" in prop:
            args.setdefault(key, prop["default"])
    schema = spec.model_output_schema(args)
    out = answer_from_text(schema, spec.render(args))
    return spec, schema, args, out


def test_readme_has_the_examples_this_file_checks():
    tools = [tool for tool, _ in readme_calls()]
    assert "extract" in tools and "classify" in tools  # README "The two commands" and "Batches"


CASES = [c for c in example_cases() + readme_calls() if "items" not in c[1] or c[0] == "rank"]


@pytest.mark.parametrize("tool, args", CASES, ids=[f"{t}-{i}" for i, (t, _) in enumerate(CASES)])
def test_answers_are_schema_valid_and_pass_the_validators(specs, tool, args):
    from jsonschema import Draft202012Validator

    spec, schema, args, out = answer(specs, tool, args)
    assert Draft202012Validator(schema).is_valid(out), out
    assert check(spec.validators, out, args, schema).ok, out
    assert answer(specs, tool, args)[3] == out  # deterministic


def test_every_shipped_tool_has_an_example(specs):
    assert {tool for tool, _ in CASES} == set(specs.tools)


async def test_every_readme_example_passes_end_to_end(upstream, specs, tmp_path):
    """README.md "The two commands", "Per-call options" and "Batches": each answered on its first attempt."""
    cfg = config_from_dict({"cache_ttl_s": 0, "providers": {"openai": {"base_url": upstream.base_url}}})
    models = OpenAIModels({"OPENAI_API_KEY": SECRET})
    try:
        runner = Runner(cfg, specs, models, None, env={"OPENAI_API_KEY": SECRET}, jitter=lambda: 1.0)
        for tool, args in readme_calls():
            result = await runner.call(tool, args)
            receipts = result.receipt.get("per_item", [result.receipt])
            for receipt in receipts:
                assert [(a["reason"], a["outcome"]) for a in receipt["attempts"]] == [("first", "ok")], receipt
            assert result.output.get("failed", 0) == 0
    finally:
        await models.aclose()


def test_readme_extract_example_draws_its_values_from_the_text(specs):
    args = dict(readme_calls())["extract"]  # README "The two commands": the invoice
    _, _, _, out = answer(specs, "extract", args)
    assert out == {"data": {"invoice": "INV-204", "total": 1250.0}, "missing": []}


def test_extract_formats_and_missing_fields(specs):
    schema = {"type": "object", "properties": {
        "due": {"type": "string", "format": "date"}, "email": {"type": "string", "format": "email"},
        "site": {"type": "string", "format": "uri"}, "count": {"type": "integer"}, "country": {"enum": ["DE", "FR"]}},
        "required": ["due"]}
    text = "Order of 3 boxes, due March 3, 2024 to Dana (dana@example.org) in France (FR)."
    _, _, _, out = answer(specs, "extract", {"text": text, "schema": schema})
    assert out == {"data": {"due": "2024-03-03", "email": "dana@example.org", "count": 3, "country": "FR"},
                   "missing": ["site"]}


def test_value_from_text_prefers_the_words_after_the_name():
    assert value_from_text({"type": "string"}, "room", "Meet in room B2; bring the figures.") == (True, "B2")
    assert value_from_text({"type": "number"}, "total", "Item 3, total 1,250.00 EUR") == (True, 1250.0)
    assert value_from_text({"type": "integer", "maximum": 10}, "n", "20 or 7") == (True, 7)


def test_classify_picks_the_named_label(specs):
    args = {"text": "Is this a billing question or a bug?", "labels": ["feature", "bug", "billing question"]}
    assert answer(specs, "classify", args)[3]["label"] == "bug"
    multi = answer(specs, "classify", {**args, "multi_label": True})[3]
    assert multi["labels"] == ["bug", "billing question"]


def test_summarize_keeps_within_the_limit_and_style(specs):
    text = "One two three. Four five six seven. Eight nine."
    assert answer(specs, "summarize", {"text": text, "max_words": 7})[3]["summary"] == "One two three. Four five six seven."
    assert answer(specs, "summarize", {"text": text, "max_words": 5, "style": "bullets"})[3]["summary"] == "- One two three."
    assert answer(specs, "summarize", {"text": "Long words here.", "max_words": 5, "style": "headline"})[3][
        "summary"] == "Long words here"


def test_rank_orders_by_shared_words(specs):
    out = answer(specs, "rank", {"query": "refund policy", "items": ["shipping", "refund", "our refund policy"],
                                 "top_k": 2})[3]
    assert out == {"ranked": [{"index": 2, "score": 1.0}, {"index": 1, "score": 0.5}]}


async def test_scripted_answers_still_win(upstream):
    from openai import AsyncOpenAI

    upstream.push("gpt-5.4-nano", FakeResponse(content={"label": "scripted"}))
    client = AsyncOpenAI(api_key=SECRET, base_url=upstream.base_url)
    try:
        r = await client.chat.completions.create(model="gpt-5.4-nano", messages=[{"role": "user", "content": "hi"}])
        assert json.loads(r.choices[0].message.content) == {"label": "scripted"}
        schema = {"type": "object", "properties": {"a": {"type": "string", "pattern": "^z+$"}}, "required": ["a"]}
        r = await client.chat.completions.create(
            model="gpt-5.4-nano", messages=[{"role": "user", "content": "<text>\nhello\n</text>"}],
            response_format={"type": "json_schema", "json_schema": {"name": "t", "schema": schema}})
        assert json.loads(r.choices[0].message.content) == {"a": "x"}  # unsatisfiable from the text: sample_for
    finally:
        await client.close()
