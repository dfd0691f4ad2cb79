"""The real openai client against the loopback upstream: request shape and the error boundary."""

import pytest

from tiered_mcp.core.config import config_from_dict
from tiered_mcp.core.errors import (
    MissingKey,
    ModelError,
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


async def test_json_object_mode_puts_the_schema_in_a_user_message_never_the_system_message(upstream, models):
    await models.complete(request(upstream, structured_output="json_object", max_tokens_param="max_tokens"))
    [seen] = upstream.completions()
    assert seen.body["response_format"] == {"type": "json_object"}
    system, schema, user = seen.body["messages"]
    assert '"required"' not in system["content"] and "JSON" in system["content"]
    assert schema["role"] == "user" and '"required":["a"]' in schema["content"] and user["content"] == "hi"
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


# ---- every upstream failure has a name ----------------------------------------------------------------------------

@pytest.mark.parametrize("response, error, words", [
    (FakeResponse(raw=b"<!DOCTYPE html><html><body>502 Bad Gateway (proxy)</body></html>", content_type="text/html"),
     "UpstreamNotAPI", "an HTML page"),
    (FakeResponse(raw=b"{not json", content_type="application/json"), "UpstreamMalformed", "not valid JSON"),
    (FakeResponse(json_body=[1, 2]), "UpstreamMalformed", "not a chat completion"),
    (FakeResponse(json_body={"id": "x", "object": "chat.completion", "choices": []}), "UpstreamMalformed", "no choices"),
    (FakeResponse(json_body={"error": {"message": "provider Foo is down", "code": 502}}), "UpstreamErrorObject",
     "provider Foo is down"),
    (FakeResponse(json_body={"error": {"message": "context too long", "code": 400}}), "UpstreamRejected",
     "context too long"),
    (FakeResponse(hang_up=True), "UpstreamDisconnected", "closed the connection"),
    (FakeResponse(status=429, headers={"Retry-After": "soon, maybe"}), "RateLimited", "HTTP 429"),
])
async def test_each_upstream_failure_has_a_name(upstream, models, response, error, words):
    upstream.push("gpt-5.4-nano", response)
    with pytest.raises(ModelError) as err:
        await models.complete(request(upstream))
    assert type(err.value).__name__ == error and words in str(err.value)
    if error == "RateLimited":
        assert err.value.retry_after is None  # a malformed Retry-After is ignored, not raised


async def test_usage_details_fill_the_reply(upstream, models):
    body = {"id": "x", "object": "chat.completion", "created": 0, "model": "gpt-5.4-nano",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "{}"}}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 150,
                      "prompt_tokens_details": {"cached_tokens": 64},
                      "completion_tokens_details": {"reasoning_tokens": 20}}}
    upstream.push("gpt-5.4-nano", FakeResponse(json_body=body), FakeResponse(json_body={**body, "usage": None}))
    r = await models.complete(request(upstream))
    assert (r.input_tokens, r.cached_input_tokens, r.output_tokens, r.reasoning_tokens) == (100, 64, 50, 20)
    assert r.usage_reported is True
    assert (await models.complete(request(upstream))).usage_reported is False


async def test_credentials_in_the_base_url_go_as_basic_auth_and_never_into_a_message(upstream):
    url = upstream.base_url.replace("http://", "http://gateway-user:s3cret-Passw0rd@")
    m = OpenAIModels({})
    try:
        await m.complete(request(upstream, base_url=url, api_key_env=None))
        [seen] = upstream.completions()
        assert seen.headers["authorization"].startswith("Basic ")
        upstream.push("gpt-5.4-nano", FakeResponse(status=401, echo_headers=True))
        with pytest.raises(UpstreamRejected) as err:
            await m.complete(request(upstream, base_url=url, api_key_env=None))
        assert "s3cret" not in str(err.value) and seen.headers["authorization"][6:] not in str(err.value)
    finally:
        await m.aclose()
    both = OpenAIModels({"OPENAI_API_KEY": SECRET})
    with pytest.raises(ModelError, match="carries credentials") as err:
        await both.complete(request(upstream, base_url=url))
    assert "s3cret" not in str(err.value)
    await both.aclose()
