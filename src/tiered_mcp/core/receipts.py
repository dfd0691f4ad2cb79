"""Receipts: what one call did, attempt by attempt, and what it cost against the flagship."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from tiered_mcp.core.config import FLAGSHIP, LOCAL, Config
from tiered_mcp.core.prices import cost_of

RECEIPT_META_KEY = "tiered-mcp/receipt"
"""Where a result's receipt lives in its `_meta` (hosts do not pay tokens for `_meta`)."""


@dataclass
class Attempt:
    """One request to a model.

    Attributes:
        reason: why it was made: "first", "retry" (transient failure), "repair" (invalid answer shown back to the
            model) or "escalation" (the tier below gave up; `trigger` says why).
        outcome: "ok", "invalid", "refused", "truncated", "cancelled" or a model error's kind ("rate_limited", ...).
    """

    tier: str
    model: str
    reason: str
    outcome: str = "pending"
    detail: str = ""
    trigger: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = 0.0
    latency_ms: float = 0.0


@dataclass
class Receipt:
    """The whole call. Token and cost totals include failed attempts."""

    tool: str
    tier: str | None = None
    model: str | None = None
    ok: bool = False
    error: str | None = None
    attempts: list[Attempt] = field(default_factory=list)
    latency_ms: float = 0.0
    call_id: int | None = None
    kind: str = "call"
    session: str | None = None
    batch: str | None = None
    cached: bool = False
    budget: dict[str, Any] | None = None

    @property
    def input_tokens(self) -> int:
        return sum(a.input_tokens for a in self.attempts)

    @property
    def output_tokens(self) -> int:
        return sum(a.output_tokens for a in self.attempts)

    @property
    def cost_usd(self) -> float | None:
        costs = [a.cost_usd for a in self.attempts]
        return None if any(c is None for c in costs) else sum(c for c in costs if c is not None)

    def flagship_cost_usd(self, config: Config) -> float | None:
        """What the same tokens would have cost on the flagship tier."""
        return self.tier_cost_usd(config, FLAGSHIP)

    def tier_cost_usd(self, config: Config, tier: str) -> float | None:
        """What the same tokens would have cost on `tier` (None when it is not configured or not priced)."""
        settings = config.tiers.get(tier)
        return None if settings is None else cost_of(settings, self.input_tokens, self.output_tokens)

    def to_dict(self, config: Config) -> dict[str, Any]:
        """The receipt as sent in `_meta` (costs in USD; None means the price is unknown)."""
        cost, flagship = self.cost_usd, self.flagship_cost_usd(config)
        return {
            "tool": self.tool,
            "ok": self.ok,
            "tier": self.tier,
            "model": self.model,
            "attempts": [asdict(a) for a in self.attempts],
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cost_usd": _round(cost),
            "flagship_cost_usd": _round(flagship),
            "saved_usd": _round(flagship - cost) if cost is not None and flagship is not None else None,
            **({"nano_cost_usd": _round(self.tier_cost_usd(config, "nano"))} if self.tier == LOCAL else {}),
            "latency_ms": round(self.latency_ms, 1),
            **({"cached": True} if self.cached else {}),
            **({"budget": self.budget} if self.budget else {}),
            **({"error": self.error} if self.error else {}),
            **({"call_id": self.call_id} if self.call_id is not None else {}),
        }


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 8)
