"""Per-call routing options, sent by programmatic clients in the request's `_meta` (hosts' models never pay tokens
for them, unlike a tool argument):

    {"_meta": {"tiered-mcp/options": {"escalate_on": ["invalid"], "confidence_threshold": 0.8,
                                       "escalation_ceiling": "mini", "cache": false}}}

Options may only make a call cheaper, never dearer than the operator's config allows (`effective`): the stricter of
the two escalation ceilings, the lower of the two confidence thresholds, the intersection of the escalation
triggers. `cache: false` is honoured: skipping the cache costs one ordinary call, which a caller could get anyway by
changing a byte of its arguments, and which the ceiling and the budgets still bound.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tiered_mcp.core.config import TIERS, TRIGGERS, Config, TierName, Trigger
from tiered_mcp.core.errors import ArgumentsError

if TYPE_CHECKING:
    from tiered_mcp.specs.spec import ToolSpec

OPTIONS_META_KEY = "tiered-mcp/options"


class CallOptions(BaseModel):
    """Overrides for one call."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    escalate_on: list[Trigger] | None = None
    confidence_threshold: float | None = Field(default=None, ge=0, le=1)
    escalation_ceiling: TierName | None = None
    cache: bool = True


def parse_options(meta: Any) -> CallOptions:
    """The options in a request's `_meta`, or the defaults.

    Raises:
        ArgumentsError: naming the option and the rule it breaks.
    """
    raw = (meta or {}).get(OPTIONS_META_KEY) if isinstance(meta, dict) else None
    if raw is None:
        return CallOptions()
    try:
        return CallOptions.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise ArgumentsError(f"_meta.{OPTIONS_META_KEY}.{where}: {err['msg']}") from None


@dataclass(frozen=True)
class Effective:
    """What governs one call once the caller's options are combined with the config (see `effective`).

    Attributes:
        triggers: the outcomes that make the call climb a tier.
        threshold: an answer less confident than this escalates (when low_confidence is a trigger).
        ceiling: the highest tier the call may climb to (the config's for the tool, or lower).
        cache: whether the call may be answered from, and stored in, the cache.
    """

    triggers: frozenset[str]
    threshold: float
    ceiling: str
    cache: bool


def effective(config: Config, spec: ToolSpec, options: CallOptions | None = None) -> Effective:
    """Combine per-call options with the config so that options can only make the call cheaper: the stricter
    ceiling, the lower threshold, the intersection of triggers."""
    options = options or CallOptions()
    settings = config.tools.get(spec.name)
    triggers = frozenset(settings.escalate_on if settings and settings.escalate_on is not None else TRIGGERS)
    if options.escalate_on is not None:
        triggers &= frozenset(options.escalate_on)
    threshold = (settings.confidence_threshold if settings and settings.confidence_threshold is not None
                 else spec.confidence_threshold)
    if options.confidence_threshold is not None:
        threshold = min(threshold, options.confidence_threshold)
    ceiling = (settings.escalation_ceiling if settings and settings.escalation_ceiling else None) or (
        config.escalation_ceiling)
    if options.escalation_ceiling is not None and TIERS.index(options.escalation_ceiling) < TIERS.index(ceiling):
        ceiling = options.escalation_ceiling
    return Effective(triggers=triggers, threshold=threshold, ceiling=ceiling, cache=options.cache)
