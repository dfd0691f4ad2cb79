"""`tiered-mcp doctor`: for each tier, is a key set, does the endpoint answer, which tools start there."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Mapping

from tiered_mcp.call.routing import ladder_for
from tiered_mcp.core.config import INSTALL_LOCAL, env_value, is_unexpanded, load_config
from tiered_mcp.core.errors import CallError, ModelError
from tiered_mcp.models.local import LocalEngine
from tiered_mcp.serve.server import load_checked_specs, usable_tiers


@dataclass
class TierCheck:
    tier: str
    provider: str
    model: str
    key: str
    endpoint: str = "not checked"
    tools: list[str] = field(default_factory=list)
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None


async def run_checks(config_path: str | None, spec_dirs: tuple[str, ...],
                     env: Mapping[str, str] | None = None) -> tuple[list[TierCheck], dict[str, str]]:
    """Check every configured tier; each endpoint is asked once for its model list (5 s timeout).

    The config and specs are loaded and checked exactly as `serve` does (the same [tools.X] checks, the same
    spec folders, the same idea of which tiers can run), so a config doctor passes is one serve accepts.

    Returns:
        The check of each tier, and the tools that cannot run on any tier, with why.

    Raises:
        SetupError: the config or specs `serve` would refuse.
    """
    from tiered_mcp.models._openai import OpenAIModels

    env = os.environ if env is None else env
    config = load_config(config_path, env)
    specs = load_checked_specs(config, spec_dirs, env)
    local_installed = LocalEngine.installed()
    usable = usable_tiers(config, env, local_installed)

    starts: dict[str, list[str]] = {}
    blocked: dict[str, str] = {}
    for spec in specs:
        try:
            ladder = ladder_for(config, spec, usable=usable)
        except CallError as e:
            blocked[spec.name] = str(e)
            continue
        if ladder:
            starts.setdefault(ladder[0], []).append(spec.name)
    models = OpenAIModels(env)
    listed: dict[str, list[str] | ModelError] = {}
    checks = []
    try:
        for name, tier in config.tiers.items():
            provider = config.providers[tier.provider]
            if provider.kind == "embedded":
                checks.append(await _check_local(name, tier.provider, starts.get(name, []), local_installed))
                continue
            key = "not needed"
            raw = env.get(provider.api_key_env) if provider.api_key_env else None
            if provider.api_key_env:
                key = f"{provider.api_key_env} set" if env_value(env, provider.api_key_env) else (
                    f"{provider.api_key_env} unexpanded {raw!r}" if is_unexpanded(raw) else f"{provider.api_key_env} NOT SET")
            check = TierCheck(name, tier.provider, tier.model, key, tools=starts.get(name, []))
            checks.append(check)
            if provider.api_key_env and not env_value(env, provider.api_key_env):
                check.problem = f"export {provider.api_key_env}=<your key>" + (
                    " (the host passed the text through unexpanded: the variable was unset when it started)"
                    if is_unexpanded(raw) else "")
                continue
            if tier.provider not in listed:
                try:
                    listed[tier.provider] = await models.probe(provider)
                except ModelError as e:
                    listed[tier.provider] = e
            answer = listed[tier.provider]
            if isinstance(answer, ModelError):
                check.endpoint, check.problem = "no answer", str(answer)
            else:
                check.endpoint = f"answers ({len(answer)} models)"
                if answer and tier.model not in answer:
                    check.problem = f"model {tier.model!r} not in the endpoint's model list"
    finally:
        await models.aclose()
    return checks, blocked


async def _check_local(tier: str, provider: str, tools: list[str], installed: bool) -> TierCheck:
    """The local tier: installed or not, and if so, load it and time the load."""
    check = TierCheck(tier, provider, "use-multilingual-v3", "not needed", "in process", tools=tools)
    if not installed:
        check.endpoint, check.problem = "not installed", f"optional: {INSTALL_LOCAL}"
        return check
    engine = LocalEngine()
    try:
        embedder = await engine.embedder()
    except CallError as e:
        check.problem = str(e)
        return check
    check.model = embedder.model_name
    check.endpoint = f"loaded in {embedder.load_seconds:.2f} s"
    return check
