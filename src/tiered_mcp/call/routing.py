"""Which tiers a call may use, cheapest first.

The start is the per-call `tier`, else the config's `[tools.X] tier`, else the spec's; the ladder climbs to the
tool's escalation ceiling. The local tier joins in two cases: the start tier cannot run because its provider's key
is not set (so a newcomer with no key gets real answers at once), or the config starts the tool on `local`. A ladder
that starts on `local` keeps only the tiers above it that can run, so a low-confidence local answer escalates to nano
only where nano has a key.
"""

from __future__ import annotations

from typing import Callable

from tiered_mcp.core.config import INSTALL_LOCAL, LOCAL, TIERS, Config
from tiered_mcp.core.errors import LocalTierError, TierNotAllowed
from tiered_mcp.specs.schema_safety import excerpt
from tiered_mcp.specs.spec import ToolSpec

Usable = Callable[[str], bool]
"""usable(tier) -> whether that tier can run now (its key is set; for local, its packages are installed)."""


def _check_requested(config: Config, spec: ToolSpec, requested: str) -> None:
    if not isinstance(requested, str) or requested not in TIERS:
        raise TierNotAllowed(f"tier: {excerpt(requested)} is not a tier; use one of {', '.join(TIERS)}")
    if TIERS.index(requested) > TIERS.index(config.call_tier_ceiling):
        raise TierNotAllowed(
            f"tier: {requested!r} is above the server's call_tier_ceiling ({config.call_tier_ceiling!r}); "
            f"ask for {config.call_tier_ceiling!r} or lower, or omit tier (the operator can raise "
            "call_tier_ceiling in the config)"
        )
    if requested not in config.tiers:
        raise TierNotAllowed(f"tier: {requested!r} is not configured on this server (configured: {', '.join(config.tiers)})")
    if requested == LOCAL and spec.local_task is None:
        raise TierNotAllowed(f"tier: the local tier does not serve {spec.name}; omit tier or ask for nano or above")


def _no_tier_message(config: Config, spec: ToolSpec, ladder: list[str], usable: Usable) -> str:
    keys = sorted({config.providers[config.tiers[t].provider].api_key_env or "" for t in ladder} - {""})
    set_keys = f"set {' or '.join(keys)}" if keys else "configure a provider for its tiers"
    if spec.local_task and LOCAL in config.tiers and not usable(LOCAL):
        return (f"{spec.name} has no tier that can run: {set_keys} to run it on {ladder[0]}, or run it offline on the "
                f"local tier by installing it: {INSTALL_LOCAL}")
    return (f"{spec.name} needs a model tier: the local tier serves only tools with a local_task (classify, rank, "
            f"summarize). To run {spec.name}, {set_keys}, or point [tiers.{ladder[0]}] at another provider in the "
            "config (examples/config.*.toml); `tiered-mcp doctor` shows what each tier lacks")


def ladder_for(config: Config, spec: ToolSpec, requested: str | None = None,
               usable: Usable = lambda tier: True, lower_ceiling: str | None = None,
               auto_tier: str | None = None) -> list[str]:
    """The tiers this call may use, cheapest first. `lower_ceiling` (a per-call option) can only lower the
    configured escalation ceiling, never raise it. `auto_tier` is an auto tool's current tier (the evidence's
    choice), which takes the place of the configured and spec tier; a per-call `tier` still comes first.

    Raises:
        TierNotAllowed: a per-call tier that is unknown, not configured, above `call_tier_ceiling`, or local for a
            tool the local tier does not serve.
        LocalTierError: no tier on the ladder can run (no key, and no local tier for this tool); the message says
            which key to set, or which pip command adds the local tier.
    """
    settings = config.tools.get(spec.name)
    if requested is not None:
        _check_requested(config, spec, requested)
    start = requested or auto_tier or (settings.tier if settings and settings.tier else spec.tier)
    ceiling: str = (settings.escalation_ceiling if settings and settings.escalation_ceiling else None) or (
        config.escalation_ceiling
    )
    if lower_ceiling is not None and TIERS.index(lower_ceiling) < TIERS.index(ceiling):
        ceiling = lower_ceiling
    if TIERS.index(ceiling) < TIERS.index(start):
        ceiling = start
    ladder = config.ladder(start, ceiling)
    local_ok = spec.local_task is not None and LOCAL in config.tiers and usable(LOCAL)
    if not local_ok:
        ladder = [t for t in ladder if t != LOCAL]
    elif requested is None and ladder and ladder[0] != LOCAL and not usable(ladder[0]):
        ladder = [LOCAL, *ladder]
    if ladder and ladder[0] == LOCAL:
        ladder = [LOCAL, *[t for t in ladder[1:] if usable(t)]]
    if ladder and not any(usable(t) for t in ladder):
        raise LocalTierError(_no_tier_message(config, spec, ladder, usable))
    return ladder
