"""`tiered-mcp report`: per tool, how often the cheap tier agrees with the comparison tier, what each costs, and
what to do about it. The figures come from the shadow comparisons in the ledger.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import mean
from typing import Any

from tiered_mcp.ledger.sqlite import Ledger

KEEP_AT = 0.9
"""Agreement a tier must show (the whole 95% interval) to be kept."""
MIN_SCORED = 20
"""Fewer comparisons than this decide nothing."""


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval for k successes in n trials (95% by default)."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class ToolReport:
    """One tool's line of the report (one row per bound tier and comparison tier pair)."""

    tool: str
    tier: str
    comparison_tier: str
    calls: int
    shadowed: int
    scored: int
    agreement: float | None
    interval: tuple[float, float] | None
    mean_score: float | None
    cost_per_call: float | None
    comparison_cost_per_call: float | None
    recommendation: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _recommend(tool: str, tier: str, comparison: str, scored: int, k: int, keep_at: float) -> str:
    if scored == 0:
        return f"{tool}: no scored shadow comparisons yet; set [tools.{tool}] shadow_rate in the config"
    rate = k / scored
    lo, hi = wilson(k, scored)
    pm = round(100 * (hi - lo) / 2)
    head = f"{tool}: {tier} agrees {100 * rate:.0f}% ± {pm} with {comparison} over {scored} calls"
    if scored < MIN_SCORED:
        return f"{head}: too few comparisons to decide; keep sampling"
    if lo >= keep_at:
        return f"{head}: keep {tier}"
    if hi < keep_at:
        return f"{head}: move to {comparison}, or improve the prompt"
    return f"{head}: not yet clear against the {100 * keep_at:.0f}% bar; keep sampling"


def build_report(ledger: Ledger, since: str | None = None, keep_at: float = KEEP_AT) -> list[ToolReport]:
    """Group the ledger's shadow comparisons by tool and tier pair and judge each."""
    calls = ledger.call_counts(since)
    groups: dict[tuple[str, str, str], list[Any]] = {}
    for row in ledger.shadows(since):
        groups.setdefault((row.tool, row.tier, row.comparison_tier), []).append(row)
    out = []
    for (tool, tier, comparison), rows in sorted(groups.items()):
        scored = [r for r in rows if r.agree is not None]
        k = sum(1 for r in scored if r.agree)

        def avg(values: list[float | None]) -> float | None:
            known = [v for v in values if v is not None]
            return mean(known) if known else None

        out.append(ToolReport(
            tool=tool, tier=tier, comparison_tier=comparison, calls=calls.get(tool, 0), shadowed=len(rows),
            scored=len(scored), agreement=k / len(scored) if scored else None,
            interval=wilson(k, len(scored)) if scored else None,
            mean_score=avg([r.score for r in scored]),
            cost_per_call=avg([r.cost_usd for r in rows]),
            comparison_cost_per_call=avg([r.comparison_cost_usd for r in rows]),
            recommendation=_recommend(tool, tier, comparison, len(scored), k, keep_at),
        ))
    return out
