"""Receipts: what one call did, attempt by attempt, what it spent, and what it saved against the flagship.

The accounting rules (docs/accounting.md has them with a worked example; every figure a user reads follows them):

- **Spent** (`cost_usd`): the sum of every attempt's cost, failed attempts included, unrounded. None when a tier's
  price is unknown.
- **Baseline** (`baseline_usd`): what this one call would have cost on the flagship alone. Where the call reached
  the flagship, the cost of its flagship attempts; otherwise the answering attempt's input tokens (cached ones at the
  flagship's cached-input rate) and output tokens at flagship prices, at the service tier the answer was served
  at (like with like: a flex answer against the flagship's flex price). Never the sum of failed attempts. A failed
  call, a cached answer and evidence work (shadow, judge, eval) have a baseline of 0: they save nothing.
- **Saving** (`saved_usd`) = baseline − spent, signed: negative when escalation cost more than the flagship alone,
  and −spent for a failed call. Evidence receipts carry no saving: their spend is evidence spend.
- **Batch API**: an attempt answered through the provider's Batch API (`batch_api`) costs its tokens at the
  tier's prices x `batch_discount`. A call whose first attempt was such a batch item compares like with like: its
  baseline is the basis tokens above at the flagship's batch rate (its prices x its `batch_discount`), as the
  flagship alone would have run the same job through the Batch API too.
- **Estimated**: token counts that no provider reported (the local tier sends no request; some providers send no
  usage) are o200k counts, and the receipt says which figures rest on them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tiered_mcp.core.config import FLAGSHIP, LOCAL, Config
from tiered_mcp.core.prices import batch_cost_of, cost_of

RECEIPT_META_KEY = "tiered-mcp/receipt"
"""Where a result's receipt lives in its `_meta` (hosts do not pay tokens for `_meta`)."""

CALL = "call"
EVIDENCE_KINDS = frozenset({"shadow", "judge", "eval"})
"""Receipt kinds that are evidence work: counted in spend and budgets, never as a saving."""


@dataclass
class Attempt:
    """One request to a model.

    Attributes:
        reason: why it was made: "first", "retry" (transient failure), "repair" (invalid answer shown back to the
            model) or "escalation" (the tier below gave up; `trigger` says why).
        outcome: "ok", "invalid", "validator", "low_confidence", "refused", "truncated", "budget", "cancelled" or a
            model error's kind ("rate_limited", ...).
        cached_input_tokens: of `input_tokens`, those served from the provider's prompt cache.
        reasoning_tokens: of `output_tokens`, those spent on reasoning.
        estimated: the token counts are o200k estimates (no usage was reported).
        service_tier: the provider's service tier: for an answered attempt the one its response reported (None:
            it named none, priced at the standard rates), otherwise the one asked for.
        batch_api: answered (or not) through the provider's Batch API, priced at its batch rate.
    """

    tier: str
    model: str
    reason: str
    outcome: str = "pending"
    detail: str = ""
    trigger: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: float | None = 0.0
    estimated: bool = False
    latency_ms: float = 0.0
    service_tier: str | None = None
    batch_api: bool = False


@dataclass
class Receipt:
    """The whole call. Token and cost totals include failed attempts.

    Attributes:
        answered_by: the index in `attempts` of the attempt whose answer was returned (None: no answer).
        unverified: JSON paths of answer values that failed a non-strict validator on every tier.
    """

    tool: str
    kind: str = CALL
    tier: str | None = None
    model: str | None = None
    ok: bool = False
    error: str | None = None
    attempts: list[Attempt] = field(default_factory=list)
    latency_ms: float = 0.0
    call_id: str | None = None
    session: str | None = None
    batch: str | None = None
    cached: bool = False
    budget: dict[str, Any] | None = None
    spec_version: str | None = None
    caller: str | None = None
    answered_by: int | None = None
    unverified: list[str] | None = None
    error_kind: str | None = None  # what kind of CallError ended the call ("arguments", "budget", ...)
    day: str | None = None  # the UTC day whose budgets the call's spend counts against
    holds: list[str] = field(default_factory=list)  # budget holds to drop when the row is written
    batch_item: int | None = None  # a Batch API item's index in its batch: its row books that batch answer

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

    @property
    def evidence(self) -> bool:
        return self.kind in EVIDENCE_KINDS

    @property
    def answer(self) -> Attempt | None:
        """The attempt whose answer was returned (by default the last one that ended "ok")."""
        if not self.ok or self.cached:
            return None
        if self.answered_by is not None:
            return self.attempts[self.answered_by]
        return next((a for a in reversed(self.attempts) if a.outcome == "ok"), None)

    def _basis(self) -> list[Attempt]:
        """The attempts the baseline is priced from (empty: the baseline is 0)."""
        answer = self.answer
        if self.evidence or answer is None:
            return []
        if answer.tier != FLAGSHIP:
            return [answer]  # a lower tier answered: its answer's tokens at flagship prices
        return [a for a in self.attempts if a.tier == FLAGSHIP]  # the flagship's own attempts (its repair included)

    @property
    def batch_api(self) -> bool:
        """The call went through the provider's Batch API (its first attempt was a batch item)."""
        return bool(self.attempts) and self.attempts[0].batch_api

    def baseline_usd(self, config: Config) -> float | None:
        """What this call would have cost on the flagship alone (see the module docstring); None when unknown."""
        basis = self._basis()
        if not basis:
            return 0.0
        if self.batch_api:
            flagship = config.tiers.get(FLAGSHIP)
            if flagship is None:
                return None
            costs = [batch_cost_of(flagship, a.input_tokens, a.output_tokens, a.cached_input_tokens) for a in basis]
            return None if any(c is None for c in costs) else sum(c for c in costs if c is not None)
        if basis[0].tier == FLAGSHIP:
            costs = [a.cost_usd for a in basis]
            return None if any(c is None for c in costs) else sum(c for c in costs if c is not None)
        return self.would_cost_usd(config, FLAGSHIP)

    def would_cost_usd(self, config: Config, tier: str) -> float | None:
        """The answering attempt's tokens priced on `tier` at the service tier the answer was served at (None: no
        answer, or the tier is unconfigured or unpriced at that service tier)."""
        settings, a = config.tiers.get(tier), self.answer
        if settings is None or a is None:
            return None
        return cost_of(settings, a.input_tokens, a.output_tokens, a.cached_input_tokens, service_tier=a.service_tier)

    def saved_usd(self, config: Config) -> float | None:
        """Baseline − spent (signed); None for evidence receipts and where either figure is unknown."""
        if self.evidence:
            return None
        cost, baseline = self.cost_usd, self.baseline_usd(config)
        return None if cost is None or baseline is None else baseline - cost

    @property
    def cost_estimated(self) -> bool:
        """Some spend rests on estimated tokens (a paid provider that sent no usage)."""
        return any(a.estimated and (a.cost_usd or 0) > 0 for a in self.attempts)

    @property
    def estimated(self) -> bool:
        """Spend or baseline rests on estimated token counts."""
        return self.cost_estimated or any(a.estimated for a in self._basis())

    def to_dict(self, config: Config) -> dict[str, Any]:
        """The receipt as sent in `_meta` (costs in USD, unrounded; None means the price is unknown)."""
        out: dict[str, Any] = {
            "tool": self.tool,
            "kind": self.kind,
            "ok": self.ok,
            "tier": self.tier,
            "model": self.model,
            "attempts": [_attempt_dict(a) for a in self.attempts],
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cost_usd": self.cost_usd,
        }
        if self.evidence:
            out["evidence_usd"] = self.cost_usd
        else:
            out["baseline_usd"] = self.baseline_usd(config)
            out["saved_usd"] = self.saved_usd(config)
        if self.estimated:
            out["estimated"] = True
        answer = self.answer
        if answer is not None and answer.service_tier is not None:
            out["service_tier"] = answer.service_tier  # what the provider reports it served the answer at
        if self.batch_api:
            out["batch_api"] = True
        if self.tier == LOCAL and self.ok and not self.cached:
            # Shown apart: no request was sent, so these are what the answer's o200k tokens would have cost.
            out["would_have_cost_usd"] = {t: self.would_cost_usd(config, t) for t in ("nano", FLAGSHIP)
                                          if t in config.tiers}
        out["latency_ms"] = round(self.latency_ms, 1)
        for key in ("cached", "budget", "error", "error_kind", "call_id", "spec_version", "caller", "unverified"):
            value = getattr(self, key)
            if value:
                out[key] = value
        return out


def _attempt_dict(a: Attempt) -> dict[str, Any]:
    # Every field of an attempt is a scalar: a shallow copy is what asdict's deep one would give, faster.
    out = dict(vars(a))
    if not a.batch_api:
        del out["batch_api"]  # said only where it is true
    return out
