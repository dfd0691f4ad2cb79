"""Shared fixtures. Every test runs under the network guard: a request that leaves loopback fails the test."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

from tiered_mcp.call.runner import Runner
from tiered_mcp.core.config import Config, config_from_dict
from tiered_mcp.evidence.shadow import Shadows
from tiered_mcp.ledger.base import LedgerStore, open_ledger
from tiered_mcp.specs.spec import Specs, load_specs
from tiered_mcp.testing import FakeUpstream, ScriptedModel, network_guard

SECRET = "sk-test-DoNotLeak-0123456789abcdef"


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    # A real key or endpoint from the developer's shell must never reach a test.
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "TIERED_MCP_CONFIG", "TIERED_MCP_SPECS", "OPENROUTER_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    # Nor may the developer's own config file (the default location is looked up when no config is named).
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    with network_guard() as blocked:
        yield
    assert not blocked, f"a test tried to reach the network: {blocked}"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def specs() -> Specs:
    return load_specs()


# Tests whose subject is storage (the ledger, its migrations, budgets, accounting sums, load on a shared ledger) run
# once on each backend; every other test that needs a ledger uses SQLite only, since a second run would test
# nothing new.
LEDGER_BACKENDS = ("sqlite", "postgresql")
STORAGE_MODULES = {"test_ledger", "test_migrations", "test_spend", "test_load", "test_accounting", "test_one_path",
                   "test_wiring", "test_autotier_shared"}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if ("ledger_target" in metafunc.fixturenames
            and metafunc.module.__name__.rsplit(".", 1)[-1] in STORAGE_MODULES
            and not any("ledger_target" in m.args[0] for m in metafunc.definition.iter_markers("parametrize"))):
        metafunc.parametrize("ledger_target", LEDGER_BACKENDS, indirect=True)


@pytest.fixture(scope="session")
def pg_dsn() -> str:
    """A PostgreSQL server for the session (see tests/pg_server.py); skips, or fails under $TIERED_MCP_REQUIRE_PG,
    when none can be had."""
    from . import pg_server

    try:
        with pg_server.server() as dsn:
            yield dsn
    except pg_server.Unavailable as e:
        if os.environ.get(pg_server.ENV_REQUIRE):
            pytest.fail(f"PostgreSQL is required (${pg_server.ENV_REQUIRE}) but unavailable: {e}", pytrace=False)
        pytest.skip(f"PostgreSQL cases skipped: {e}")


@pytest.fixture
def pg_url(pg_dsn: str) -> str:
    """A URL on the test server whose tables land in a fresh schema, dropped after the test."""
    from . import pg_server

    with pg_server.schema_url(pg_dsn) as url:
        yield url


@pytest.fixture
def ledger_target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where the test's ledger lives: a SQLite file, or a postgresql:// URL (parametrized by LEDGER_BACKENDS)."""
    if getattr(request, "param", "sqlite") == "sqlite":
        return str(tmp_path / "ledger.sqlite3")
    return request.getfixturevalue("pg_url")


@pytest.fixture
def ledger(ledger_target: str) -> LedgerStore:
    led = open_ledger(ledger_target)
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
def make_runner(specs: Specs, ledger: LedgerStore, sleeps: Sleeps) -> Callable[..., Runner]:
    """make_runner(model, **config) -> a Runner over the shipped specs, a temp ledger and recorded sleeps.

    Extra keyword arguments of the returned function that are Runner options (sample, session) go to the Runner.
    """

    def make(model: Any = None, *, runner_options: dict[str, Any] | None = None, **config: Any) -> Runner:
        runner_options = runner_options or {}
        # Unit tests repeat arguments with different scripts; the cache would answer them. Its own tests turn it on.
        cfg: Config = config_from_dict({"cache_ttl_s": 0, **config})
        return Runner(cfg, specs, model if model is not None else ScriptedModel(), ledger,
                      env={"OPENAI_API_KEY": "sk-test"}, sleep=sleeps, jitter=lambda: 1.0, observers=(Shadows(),),
                      **runner_options)

    return make


@pytest.fixture
def replica_set(pg_url: str, tmp_path: Path) -> Callable[..., Any]:
    """Start replicas behind haproxy on this test's PostgreSQL schema (see tests/replicas.py): call it as
    `with replica_set(upstream.base_url, config=TOML) as rs:`. Skips without haproxy, or fails under
    $TIERED_MCP_REQUIRE_HAPROXY (as .ci/run sets)."""
    from . import replicas

    try:
        replicas.haproxy_binary()
    except replicas.Unavailable as e:
        if os.environ.get(replicas.ENV_REQUIRE):
            pytest.fail(f"haproxy is required (${replicas.ENV_REQUIRE}) but unavailable: {e}", pytrace=False)
        pytest.skip(f"replica tests skipped: {e}")

    def start(upstream_base_url: str, n: int = 3, **kwargs: Any) -> Any:
        return replicas.replica_set(pg_url, upstream_base_url, tmp_path / "replicas", n, api_key=SECRET, **kwargs)

    return start


@pytest.fixture
def upstream() -> FakeUpstream:
    with FakeUpstream() as up:
        yield up


def server_env(upstream: FakeUpstream, tmp_path: Path, **extra: str) -> dict[str, str]:
    """Environment for a server child process talking to the fake upstream."""
    return {"OPENAI_API_KEY": SECRET, "OPENAI_BASE_URL": upstream.base_url,
            "XDG_STATE_HOME": str(tmp_path / "state"), "XDG_CONFIG_HOME": str(tmp_path / "config"), **extra}


PYTHON = sys.executable
