"""`tiered-mcp doctor`: for each tier, is a key set, does the endpoint answer, which tools start there."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Mapping

from .config import load_config
from .errors import ModelError
from .runner import ladder_for
from .specs import load_specs


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
                     env: Mapping[str, str] | None = None) -> list[TierCheck]:
    """Check every configured tier; each endpoint is asked once for its model list (5 s timeout)."""
    from ._openai import OpenAIModels

    env = os.environ if env is None else env
    config = load_config(config_path, env)
    specs = load_specs(spec_dirs)
    starts: dict[str, list[str]] = {}
    for spec in specs:
        ladder = ladder_for(config, spec)
        if ladder:
            starts.setdefault(ladder[0], []).append(spec.name)
    models = OpenAIModels(env)
    listed: dict[str, list[str] | ModelError] = {}
    checks = []
    try:
        for name, tier in config.tiers.items():
            provider = config.providers[tier.provider]
            key = "not needed"
            if provider.api_key_env:
                key = f"{provider.api_key_env} set" if env.get(provider.api_key_env) else f"{provider.api_key_env} NOT SET"
            check = TierCheck(name, tier.provider, tier.model, key, tools=starts.get(name, []))
            checks.append(check)
            if provider.api_key_env and not env.get(provider.api_key_env):
                check.problem = f"export {provider.api_key_env}=<your key>"
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
    return checks
