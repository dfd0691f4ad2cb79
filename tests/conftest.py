"""Shared fixtures. Every test runs under the network guard: a request that leaves loopback fails the test."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

import pytest

from tiered_mcp.config import Config, config_from_dict
from tiered_mcp.ledger import Ledger
from tiered_mcp.runner import Runner
from tiered_mcp.specs import Specs, load_specs
from tiered_mcp.testing import FakeUpstream, ScriptedModel, network_guard

SECRET = "sk-test-DoNotLeak-0123456789abcdef"


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    # A real key or endpoint from the developer's shell must never reach a test.
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "TIERED_MCP_CONFIG", "OPENROUTER_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    with network_guard() as blocked:
        yield
    assert not blocked, f"a test tried to reach the network: {blocked}"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def specs() -> Specs:
    return load_specs()


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    led = Ledger(tmp_path / "ledger.sqlite3")
    yield led
    led.close()


class Sleeps(list):
    """Records the pauses the runner asks for instead of taking them."""

    async def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def make_runner(specs: Specs, ledger: Ledger, sleeps: Sleeps) -> Callable[..., Runner]:
    """make_runner(model, **config) -> a Runner over the shipped specs, a temp ledger and recorded sleeps.

    Extra keyword arguments of the returned function that are Runner options (sample, session) go to the Runner.
    """

    def make(model: Any = None, *, runner_options: dict[str, Any] | None = None, **config: Any) -> Runner:
        runner_options = runner_options or {}
        # Unit tests repeat arguments with different scripts; the cache would answer them. Its own tests turn it on.
        cfg: Config = config_from_dict({"cache_ttl_s": 0, **config})
        return Runner(cfg, specs, model if model is not None else ScriptedModel(), ledger,
                      env={"OPENAI_API_KEY": "sk-test"}, sleep=sleeps, jitter=lambda: 1.0, **runner_options)

    return make


@pytest.fixture
def upstream() -> FakeUpstream:
    with FakeUpstream() as up:
        yield up


def server_env(upstream: FakeUpstream, tmp_path: Path, **extra: str) -> dict[str, str]:
    """Environment for a server child process talking to the fake upstream."""
    return {"OPENAI_API_KEY": SECRET, "OPENAI_BASE_URL": upstream.base_url,
            "XDG_STATE_HOME": str(tmp_path / "state"), **extra}


PYTHON = sys.executable
