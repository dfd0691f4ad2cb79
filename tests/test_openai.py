"""The real openai client against the loopback upstream: request shape and the error boundary."""

import pytest

from tiered_mcp.core.config import config_from_dict
from tiered_mcp.core.errors import (
    MissingKey,
    RateLimited,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
    UpstreamUnreachable,
)
from tiered_mcp.models._openai import OpenAIModels, scrub
from tiered_mcp.models.base import ModelRequest
from tiered_mcp.testing import FakeResponse

from .conftest import SECRET

pytestmark = pytest.mark.anyio

SCHEMA = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"], "additionalProperties": False}


def request(upstream, tier="nano", strict=True, **provider):
    cfg = config_from_dict({"providers": {"openai": {"base_url": upstream.base_url, **provider}}})
    return ModelRequest(tier=tier, settings=cfg.tiers[tier], provider=cfg.providers["openai"],
                        messages=[{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"}],
                        schema=SCHEMA, schema_name="t", strict=strict)


@pytest.fixture
async def models():
    m = OpenAIModels({"OPENAI_API_KEY": SECRET})
    yield m
    await m.aclose()


async def test_structured_output_request_and_reply(upstream, models):
    upstream.push("gpt-5.4-nano", FakeResponse(content={"a": "b"}, usage=(11, 7)))
    r = await models.complete(request(upstream))
    assert (r.content, r.finish_reason, r.input_tokens, r.output_tokens) == ('{"a": "b"}', "stop", 11, 7)
    [seen] = upstream.completions()
    assert seen.body["response_format"] == {"type": "json_schema",
                                            "json_schema": {"name": "t", "schema": SCHEMA, "strict": True}}
    assert seen.body["max_completion_tokens"] == 4096 and seen.body["model"] == "gpt-5.4-nano"
    assert seen.headers["authorization"] == f"Bearer {SECRET}"


async def test_json_object_mode_puts_the_schema_in_the_system_message(upstream, models):
    await models.complete(request(upstream, structured_output="json_object", max_tokens_param="max_tokens"))
    [seen] = upstream.completions()
    assert seen.body["response_format"] == {"type": "json_object"}
    assert '"required":["a"]' in seen.body["messages"][0]["content"]
    assert seen.body["max_tokens"] == 4096 and "max_completion_tokens" not in seen.body


async def test_a_custom_key_header_carries_the_key_and_bearer_does_not(upstream):
    m = OpenAIModels({"AZ_KEY": SECRET})
    await m.complete(request(upstream, api_key_env="AZ_KEY", api_key_header="api-key",
                             default_query={"api-version": "2025-01-01"}))
    await m.aclose()
    [seen] = upstream.completions()
    assert seen.headers["api-key"] == SECRET and SECRET not in seen.headers["authorization"]
    assert "api-version=2025-01-01" in seen.path


async def test_429_carries_retry_after(upstream, models):
    upstream.push("gpt-5.4-nano", FakeResponse(status=429, headers={"Retry-After": "2"}))
    with pytest.raises(RateLimited) as err:
        await models.complete(request(upstream))
    assert err.value.retry_after == 2.0


async def test_500_is_transient(upstream, models):
    upstream.push("gpt-5.4-nano", FakeResponse(status=500))
    with pytest.raises(UpstreamUnavailable, match="HTTP 500"):
        await models.complete(request(upstream))


async def test_timeout(upstream, models):
    upstream.push("gpt-5.4-nano", FakeResponse(delay_s=2))
    with pytest.raises(UpstreamTimeout):
        await models.complete(request(upstream, timeout_s=0.2))


async def test_connection_refused(models):
    cfg = config_from_dict({"providers": {"openai": {"base_url": "http://127.0.0.1:9/v1"}}})
    req = ModelRequest(tier="nano", settings=cfg.tiers["nano"], provider=cfg.providers["openai"],
                       messages=[{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
                       schema=SCHEMA, schema_name="t", strict=True)
    with pytest.raises(UpstreamUnreachable, match="cannot connect"):
        await models.complete(req)


async def test_401_is_permanent_and_never_echoes_the_key(upstream, models):
    body = {"error": {"message": f"Incorrect API key provided: {SECRET}. Find yours at ..."}}
    upstream.push("gpt-5.4-nano", FakeResponse(status=401, json_body=body))
    with pytest.raises(UpstreamRejected) as err:
        await models.complete(request(upstream))
    assert SECRET not in str(err.value) and "api_key_env" in str(err.value)


async def test_truncation_and_refusal_come_through(upstream, models):
    upstream.push("gpt-5.4-nano", FakeResponse(content='{"a": "tr', finish_reason="length"),
                  FakeResponse(refusal="No.", content=None))
    assert (await models.complete(request(upstream))).finish_reason == "length"
    assert (await models.complete(request(upstream))).refusal == "No."


async def test_a_missing_key_names_the_variable(upstream):
    m = OpenAIModels({})
    with pytest.raises(MissingKey, match="OPENAI_API_KEY is not set"):
        await m.complete(request(upstream))
    assert upstream.completions() == []


def test_scrub_removes_keys():
    assert "sk-abc" not in scrub("key sk-abcdefghijkl and sk-proj-XYZ123456", ())
    assert scrub("the key is hunter2hunter2", ("hunter2hunter2",)) == "the key is ***"
