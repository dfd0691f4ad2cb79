"""The effective configuration: providers, tiers, per-tool settings and paths.

Loaded once from built-in defaults, deep-merged with the user's TOML file, validated and frozen. Loading reads
files only; it creates nothing and reads no API key (keys are read from the environment when a call is made).
"""

from __future__ import annotations

import os
import re
import sys
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tiered_mcp.core.errors import ConfigError

TIERS: tuple[str, ...] = ("local", "nano", "mini", "flagship")
FLAGSHIP: Final = "flagship"
"""Every tier name, cheapest first; the escalation ladder climbs in this order."""

TierName = Literal["local", "nano", "mini", "flagship"]
ServiceTier = Literal["auto", "default", "flex", "priority", "scale", "fast"]
"""A provider's service tier (OpenAI's `service_tier`): how the request is processed and priced."""
STANDARD_SERVICE_TIERS = frozenset({"auto", "default"})
"""Service tiers priced at the tier's own (standard) prices; a response that names none is priced there too."""
FLEX_TIMEOUT_S = 900.0
"""A flex tier's request timeout unless it sets `timeout_s` (OpenAI advises 15 minutes for flex processing)."""
Trigger = Literal["invalid", "low_confidence", "refused", "truncated", "validator"]
TRIGGERS: tuple[str, ...] = ("invalid", "low_confidence", "refused", "truncated", "validator")
"""What makes a call climb to the next tier. Transport failures (429, 5xx, timeouts) always move on."""
CONFIG_ENV = "TIERED_MCP_CONFIG"
SPECS_ENV = "TIERED_MCP_SPECS"
"""Extra spec folders, separated like PATH (os.pathsep), loaded after the config's `specs` and before --specs."""
POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def install_extra_hint(extra: str) -> str:
    """The command that adds an optional extra (`local`, `postgres`, `otel`) to this installation; the package is
    not on PyPI yet, so `pip install 'tiered-mcp[X]'` would fail.

    From a source checkout (an editable install) it is this Python's pip with the checkout's path; otherwise a
    reinstall from the clone with the extra, by whichever tool installed this copy.
    """
    root = Path(__file__).resolve().parents[3]
    if (root / "pyproject.toml").is_file() and (root / "src" / "tiered_mcp").is_dir():
        return f"{Path(sys.executable)} -m pip install -e '{root}[{extra}]'"
    prefix = sys.prefix.replace("\\", "/")
    if "/uv/tools/" in prefix:
        return f"uv tool install --force 'PATH-TO-CLONE[{extra}]'"
    if "/pipx/venvs/" in prefix:
        return f"pipx install --force 'PATH-TO-CLONE[{extra}]'"
    return f"{Path(sys.executable)} -m pip install 'PATH-TO-CLONE[{extra}]' (or the wheel: 'tiered_mcp-*.whl[{extra}]')"


def install_local_hint() -> str:
    """`install_extra_hint("local")`: how to add the embedded local tier."""
    return install_extra_hint("local")


INSTALL_LOCAL = install_local_hint()
"""How to add the embedded local tier (named in messages that need it)."""

_UNEXPANDED = re.compile(r"^\$(\{[A-Za-z_][A-Za-z0-9_]*(:-[^}]*)?\}|[A-Za-z_][A-Za-z0-9_]*)$")


def is_unexpanded(value: str | None) -> bool:
    """Whether `value` is a variable reference a host passed through unexpanded (`${OPENAI_API_KEY}`, `$KEY`).

    Hosts hand the literal text to the server when the variable is unset; such a value is no key and no URL.
    """
    return value is not None and bool(_UNEXPANDED.match(value.strip()))


def env_value(env: Mapping[str, str], name: str | None) -> str | None:
    """The variable's value, or None when it is unset, empty, or an unexpanded `${...}` reference."""
    if not name:
        return None
    value = env.get(name)
    return None if not value or is_unexpanded(value) else value


def unexpanded_variables(config: Config, env: Mapping[str, str]) -> list[str]:
    """Names of the config's key and URL variables whose values are unexpanded `${...}` references (warn on these)."""
    names = {n for p in config.providers.values() for n in (p.api_key_env, p.base_url_env) if n}
    names |= {CONFIG_ENV, SPECS_ENV}
    return sorted(n for n in names if is_unexpanded(env.get(n)))


def is_postgres_url(target: str | Path | None) -> bool:
    """True when the ledger target names a PostgreSQL database rather than a SQLite file."""
    return isinstance(target, str) and target.lower().startswith(POSTGRES_SCHEMES)


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Provider(_Frozen):
    """An OpenAI-compatible endpoint and where its key lives, or (kind "embedded") the in-process local model."""

    kind: Literal["openai", "embedded"] = "openai"
    base_url: str = "https://api.openai.com/v1"
    base_url_env: str | None = None
    api_key_env: str | None = None
    api_key_header: str | None = None
    default_query: dict[str, str] = Field(default_factory=dict)
    default_headers: dict[str, str] = Field(default_factory=dict)
    structured_output: Literal["json_schema", "json_object"] = "json_schema"
    max_tokens_param: Literal["max_completion_tokens", "max_tokens"] = "max_completion_tokens"
    timeout_s: float = Field(default=60.0, gt=0)
    max_retries: int = Field(default=2, ge=0, le=10)
    max_concurrency: int = Field(default=32, ge=1, le=1024, description="Answers in flight to this provider at once.")
    evidence_concurrency: int | None = Field(
        default=None, ge=1, le=1024, description="Evidence requests (shadow, judge, eval) in flight to this provider "
        "at once, in a share of their own that never takes an answer's slot (default: max_concurrency / 4).")

    def evidence_slots(self) -> int:
        return self.evidence_concurrency or max(1, self.max_concurrency // 4)

    def effective_base_url(self, env: Mapping[str, str]) -> str:
        """The base URL, taking `base_url_env` from `env` when that variable is set."""
        return env_value(env, self.base_url_env) or self.base_url

    def has_key(self, env: Mapping[str, str]) -> bool:
        """Whether a call could authenticate: the provider needs no key, or its variable is set (an unexpanded
        `${...}` counts as unset)."""
        return not self.api_key_env or env_value(env, self.api_key_env) is not None

    def api_key(self, env: Mapping[str, str]) -> str | None:
        """The key from `env`, or None when the provider needs none or it is not set (or is an unexpanded `${...}`)."""
        return env_value(env, self.api_key_env)


class ServicePrice(_Frozen):
    """A tier's prices (USD per million tokens) when the provider serves it at one service tier."""

    input_price: float = Field(ge=0)
    output_price: float = Field(ge=0)
    cached_input_price: float | None = Field(default=None, ge=0)


class Tier(_Frozen):
    """A model on a provider, with its call parameters and prices (USD per million tokens)."""

    provider: str
    model: str
    max_output_tokens: int = Field(default=4096, gt=0)
    temperature: float | None = Field(default=None, ge=0, le=2)
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    input_price: float | None = Field(default=None, ge=0)
    output_price: float | None = Field(default=None, ge=0)
    cached_input_price: float | None = Field(
        default=None, ge=0, description="USD per million input tokens served from the provider's prompt cache "
                                        "(default: the input price).")
    batch_api: bool = Field(default=False, description="Batch calls run as MCP tasks send this tier's first "
                            "attempts through the provider's Batch API (/v1/files + /v1/batches), at batch prices.")
    batch_discount: float = Field(default=0.5, gt=0, le=1, description="Batch API price as a share of this tier's "
                                  "prices (OpenAI's Batch API: half).")
    service_tier: ServiceTier | None = Field(
        default=None, description="Sent as the request's service_tier (e.g. \"flex\": slower, cheaper); each "
        "attempt is priced at the service tier the response reports (docs/accounting.md).")
    service_tier_prices: dict[ServiceTier, ServicePrice] = Field(
        default_factory=dict, description="Prices per reported service tier (default for flex on gpt-5 models: "
        "half the tier's prices; otherwise unknown).")
    service_tier_fallback: ServiceTier | None = Field(
        default=None, description="When the service tier has no capacity (429 resource_unavailable) after the "
        "tier's retries, make the request once more on this one (e.g. \"default\") instead of moving on.")
    timeout_s: float | None = Field(default=None, gt=0, description="Request timeout (default: the provider's; "
                                    "with service_tier flex, 900 s).")
    max_retries: int | None = Field(default=None, ge=0, le=10, description="Retries of transient failures "
                                    "(default: the provider's).")

    def request_timeout_s(self, provider: Provider, service_tier: str | None) -> float:
        """The timeout of one request on this tier at `service_tier`: `timeout_s`, else the provider's (at
        least 900 s on flex)."""
        if self.timeout_s is not None:
            return self.timeout_s
        return max(provider.timeout_s, FLEX_TIMEOUT_S) if service_tier == "flex" else provider.timeout_s


class ToolSettings(_Frozen):
    """Per-tool overrides of the spec's defaults."""

    tier: TierName | None = None
    escalation_ceiling: TierName | None = None
    confidence_threshold: float | None = Field(default=None, ge=0, le=1)
    escalate_on: list[Trigger] | None = None
    daily_usd: float | None = Field(default=None, ge=0)
    shadow_rate: float = Field(default=0.0, ge=0, le=1)
    shadow_tier: TierName = FLAGSHIP
    judge_tier: TierName | None = Field(
        default=None, description="Who grades free-text answers (compare: judge). Never one of the two tiers it "
        "grades; default: the strongest configured model tier that is neither.")
    auto: bool = Field(default=False, description="Let the evidence choose the tier (docs/auto-tiering.md).")
    quality_bar: float = Field(default=0.95, gt=0.5, lt=1, description="With auto: the share of answers that must "
                               "agree with the flagship's for a cheaper tier to serve the tool.")
    guard_share: float | None = Field(default=None, ge=0, le=1, description="With auto: the share of a cheaper "
                                      "tier's saving spent on rerunning its calls on the flagship (guards and "
                                      "sentinels); default 0.05, or 0.01 with a sentinel_set.")
    sentinel_set: int = Field(default=0, ge=0, le=10_000, description="With auto: keep the first N calls served on "
                              "the flagship (their arguments and answer, in the ledger) as a fixed sentinel set, and "
                              "replay them on the serving tier to catch a new release cheaply; 0: no set (no "
                              "arguments are stored for it).")
    evidence_daily_usd: float | None = Field(default=None, ge=0, description="USD of this tool's evidence work "
                                             "(shadow runs, auto guards and probes, judge calls) per UTC day; a "
                                             "request that could pass it is refused and the run skipped.")
    service_tier: ServiceTier | None = Field(default=None, description="Run this tool's requests on this service "
                                             "tier whatever tier serves them (e.g. \"flex\" for a latency-tolerant "
                                             "tool); overrides the tier's own service_tier.")
    batch_api: bool = Field(default=True, description="false: this tool's tasks never use the provider's Batch API, "
                            "even on a tier with batch_api = true.")


class Retry(_Frozen):
    """Backoff for transient upstream failures: base * 2**n with full jitter, capped."""

    base_s: float = Field(default=0.5, ge=0)
    max_s: float = Field(default=8.0, ge=0)
    max_retry_after_s: float = Field(default=30.0, ge=0)


class Budgets(_Frozen):
    """USD caps, enforced before each model request from its worst-case cost. None means no cap."""

    daily_usd: float | None = Field(default=None, ge=0, description="All tools, per UTC day.")
    session_usd: float | None = Field(default=None, ge=0, description="This server process.")


class Shadow(_Frozen):
    """Background comparisons of a tool's tier against a comparison tier."""

    max_pending: int = Field(default=4, ge=1, le=256, description="Shadow runs in flight at once; more are skipped.")
    drain_s: float = Field(default=10.0, ge=0, description="At shutdown, how long pending shadow runs may finish.")


class BatchApi(_Frozen):
    """How batches sent through a provider's Batch API are waited for (`[tiers.X] batch_api = true` opts in)."""

    poll_s: float = Field(default=30.0, gt=0, description="Seconds between looks at a submitted batch's status.")
    completion_window: Literal["24h"] = "24h"
    max_requests: int = Field(default=50_000, gt=0, description="Requests in one provider batch (OpenAI: 50,000); "
                                                                "a task with more sends several batches.")
    max_bytes: int = Field(default=190 * 1024 * 1024, gt=0,
                           description="Bytes of one batch's input file (OpenAI: 200 MB); a task with more sends "
                                       "several batches.")


class Config(_Frozen):
    """The whole configuration. Build it with `load_config`."""

    store_inputs: bool = False
    ledger: str | None = Field(default=None, description="A SQLite file, or a postgresql:// URL that replicas share.")
    ledger_durable: bool = Field(
        default=False, description="Answer a call only once its ledger row (its spend, its cache entry) is committed; "
                                   "a row that cannot be committed turns the answer into an error. Default: answers "
                                   "go out while their rows wait in the writer's queue.")
    call_tier_ceiling: TierName = "mini"
    escalation_ceiling: TierName = FLAGSHIP
    retry: Retry = Field(default_factory=Retry)
    budgets: Budgets = Field(default_factory=Budgets)
    cache_ttl_s: float = Field(default=3600.0, ge=0, description="Identical calls are answered from the cache this long.")
    share_across_callers: bool = Field(
        default=False, description="On a team server with named tokens: one cache and one tiered://usage for every "
                                   "caller (default: each caller has its own).")
    shadow: Shadow = Field(default_factory=Shadow)
    batch_api: BatchApi = Field(default_factory=BatchApi)
    providers: dict[str, Provider]
    if TYPE_CHECKING:  # keys are validated as TierName; the code looks tiers up by plain str names (ladders, attempts)
        tiers: dict[str, Tier]
    else:
        tiers: dict[TierName, Tier]
    tools: dict[str, ToolSettings] = Field(default_factory=dict)
    specs: list[str] = Field(default_factory=list, description="Extra spec folders (relative to the config file).")
    source: str = "built-in defaults"

    @model_validator(mode="after")
    def _providers_exist(self) -> Config:
        for name, tier in self.tiers.items():
            if tier.provider not in self.providers:
                known = ", ".join(sorted(self.providers)) or "none"
                raise ValueError(
                    f"tiers.{name}.provider is {tier.provider!r}, which is not a [providers.*] table (known: {known})"
                )
        return self

    @model_validator(mode="after")
    def _auto_tools(self) -> Config:
        for name, tool in self.tools.items():
            if not tool.auto:
                continue
            if tool.tier is not None:
                raise ValueError(f"tools.{name}.tier: auto = true chooses the tier itself; remove tier (or auto)")
            if tool.shadow_rate:
                raise ValueError(f"tools.{name}.shadow_rate: auto = true samples its own evidence (probes, guards, "
                                 "sentinels); remove shadow_rate (or auto)")
            if len(self.auto_ladder(name)) < 2:
                raise ValueError(f"tools.{name}.auto: needs at least two configured model tiers up to its shadow_tier "
                                 f"({tool.shadow_tier}), cheapest first; configured: {', '.join(self.tiers)}")
        return self

    def auto_ladder(self, tool: str) -> list[str]:
        """An auto tool's ladder: the configured model tiers (never the embedded local tier) up to its
        `shadow_tier`, the reference every agreement is measured against."""
        settings = self.tools.get(tool) or ToolSettings()
        top = TIERS.index(settings.shadow_tier)
        return [t for t in TIERS[: top + 1] if t in self.tiers
                and self.providers[self.tiers[t].provider].kind != "embedded"]

    def ladder(self, start: str, ceiling: str) -> list[str]:
        """Configured tiers from `start` up to `ceiling`, cheapest first."""
        lo, hi = TIERS.index(start), TIERS.index(ceiling)
        return [t for t in TIERS[lo : hi + 1] if t in self.tiers]

    def ledger_path(self, env: Mapping[str, str] | None = None) -> Path:
        """Where a SQLite ledger lives: the config's `ledger`, else the user's state directory."""
        if self.ledger:
            return Path(self.ledger).expanduser()
        return default_state_dir(os.environ if env is None else env) / "ledger.sqlite3"

    def ledger_target(self, env: Mapping[str, str] | None = None) -> str:
        """Where the ledger lives, as `storage.open_ledger` takes it: a postgresql:// URL as given, else a path."""
        if is_postgres_url(self.ledger):
            return str(self.ledger)
        return str(self.ledger_path(env))


LOCAL: Final = "local"

DEFAULTS: dict[str, Any] = {
    "providers": {
        "embedded": {"kind": "embedded"},
        "openai": {
            "base_url": "https://api.openai.com/v1",
            "base_url_env": "OPENAI_BASE_URL",
            "api_key_env": "OPENAI_API_KEY",
        }
    },
    "tiers": {
        "local": {"provider": "embedded", "model": "use-multilingual-v3", "input_price": 0.0, "output_price": 0.0},
        "nano": {"provider": "openai", "model": "gpt-5.4-nano", "input_price": 0.20, "output_price": 1.25,
                 "cached_input_price": 0.02},
        "mini": {"provider": "openai", "model": "gpt-5.4-mini", "input_price": 0.75, "output_price": 4.50,
                 "cached_input_price": 0.075},
        "flagship": {"provider": "openai", "model": "gpt-5.4", "input_price": 2.50, "output_price": 15.00,
                     "cached_input_price": 0.25},
    },
}


def default_state_dir(env: Mapping[str, str]) -> Path:
    """The per-user state directory for tiered-mcp, following each platform's convention."""
    if sys.platform == "win32":
        base = env.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / "tiered-mcp"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "tiered-mcp"
    base = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "tiered-mcp"


def default_config_path(env: Mapping[str, str]) -> Path:
    """Where the config is looked for when neither --config nor TIERED_MCP_CONFIG names one.

    Linux and other Unix: $XDG_CONFIG_HOME/tiered-mcp/config.toml (~/.config/...); macOS:
    ~/Library/Application Support/tiered-mcp/config.toml; Windows: %APPDATA%\\tiered-mcp\\config.toml.
    """
    if sys.platform == "win32":
        base = env.get("APPDATA") or str(Path.home() / "AppData" / "Roaming")
        return Path(base) / "tiered-mcp" / "config.toml"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "tiered-mcp" / "config.toml"
    base = env_value(env, "XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "tiered-mcp" / "config.toml"


def spec_dirs(config: Config, cli_dirs: tuple[str, ...] | list[str] = (), env: Mapping[str, str] | None = None
              ) -> tuple[str, ...]:
    """Every extra spec folder, in loading order: the config's `specs`, then TIERED_MCP_SPECS, then --specs."""
    env = os.environ if env is None else env
    from_env = [d for d in (env_value(env, SPECS_ENV) or "").split(os.pathsep) if d.strip()]
    return (*config.specs, *from_env, *cli_dirs)


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _merge_config(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge, except that a tier naming its own provider or model replaces the default tier whole:
    prices and parameters belong to a model and must not leak onto another one."""
    merged = _merge(base, over)
    for name, tier in (over.get("tiers") or {}).items():
        if isinstance(tier, Mapping) and ("provider" in tier or "model" in tier):
            default = base.get("tiers", {}).get(name, {})
            merged["tiers"][name] = {"provider": default.get("provider"), **tier} if "provider" not in tier else dict(tier)
    return merged


def _describe(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check its spelling against the config reference in the README)"
        lines.append(f"{where}: {msg}")
    return "; ".join(lines)


def load_config(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Load the effective config.

    Args:
        path: a TOML file; when None, `TIERED_MCP_CONFIG` from `env` if set, else the default location
            (`default_config_path`) if that file exists, else built-in defaults only.
        env: the environment to read `TIERED_MCP_CONFIG` from (defaults to os.environ).

    Raises:
        ConfigError: the file is missing, is not TOML, or breaks the config schema; the message names the key.
    """
    env = os.environ if env is None else env
    path = path or env_value(env, CONFIG_ENV) or None
    if path is None and default_config_path(env).is_file():
        path = default_config_path(env)
    data: dict[str, Any] = {}
    source = "built-in defaults"
    if path is not None:
        p = Path(path).expanduser()
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {p} does not exist (set --config or {CONFIG_ENV} to an existing file)") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {p} is not valid TOML: {e}") from None
        source = str(p)
        if isinstance(data.get("specs"), list):  # relative folders are relative to the config file
            data["specs"] = [str((p.parent / Path(d).expanduser()) if isinstance(d, str) else d) for d in data["specs"]]
    return config_from_dict(data, source=source)


def config_from_dict(data: Mapping[str, Any], source: str = "built-in defaults") -> Config:
    """Build a Config from a mapping laid out like the TOML file, over the built-in defaults."""
    merged = _merge_config(DEFAULTS, data)
    merged["source"] = source
    try:
        return Config.model_validate(merged)
    except ValidationError as e:
        raise ConfigError(f"config {source}: {_describe(e)}") from None
