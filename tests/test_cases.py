"""Data-driven: every case in tests/cases/*.yaml runs through a real in-memory MCP client and server."""

from pathlib import Path

import pytest
import yaml
from mcp import Client

from tiered_mcp.core.receipts import RECEIPT_META_KEY
from tiered_mcp.serve.server import build_server
from tiered_mcp.testing import ScriptedModel, reply

from .test_specs import SHIPPED

pytestmark = pytest.mark.anyio

CASES = [
    pytest.param(path.stem, case, id=f"{path.stem}: {case['name']}")
    for path in sorted((Path(__file__).parent / "cases").glob("*.yaml"))
    for case in yaml.safe_load(path.read_text(encoding="utf-8"))
]


def test_every_shipped_tool_has_a_case():
    assert {tool for tool, _ in (p.values for p in CASES)} == set(SHIPPED)


@pytest.mark.parametrize("tool, case", CASES)
async def test_case(make_runner, specs, tool, case):
    tier = specs.get(tool).tier
    script = [reply(case["model_reply"])] + ([reply(case["repair_reply"])] if "repair_reply" in case else [])
    model = ScriptedModel({tier: script})
    async with Client(build_server(make_runner(model))) as client:
        result = await client.call_tool(tool, case["arguments"])
    assert not result.is_error, result.content[0].text
    if "expect" in case:
        assert result.structured_content == case["expect"]
    for key, value in case.get("expect_fields", {}).items():
        assert result.structured_content[key] == value
    receipt = result.meta[RECEIPT_META_KEY]
    assert [a["outcome"] for a in receipt["attempts"]] == case.get("expect_attempts", ["ok"])
    assert receipt["tier"] == tier
