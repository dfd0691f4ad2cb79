"""Per-call routing options, sent by programmatic clients in the request's `_meta` (hosts' models never pay tokens
for them, unlike a tool argument):

    {"_meta": {"tiered-mcp/options": {"escalate_on": ["invalid"], "confidence_threshold": 0.8,
                                       "escalation_ceiling": "mini", "cache": false}}}

`escalation_ceiling` may only lower the config's ceiling for the tool, never raise it.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tiered_mcp.core.config import TierName, Trigger
from tiered_mcp.core.errors import ArgumentsError

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
