"""`tiered-mcp report`: per tool, how often the cheap tier agrees with the comparison tier, what each costs, and
what to do about it. The figures come from the shadow comparisons in the ledger.

A tier is judged on the evidence of its *current* model and the tool's current spec version only: after a tier is
pointed at a new model (or a spec's prompt changes), the report starts afresh and says how much older evidence
exists. Agreement is k/n over scored comparisons with a Wilson 95% interval; skipped and failed shadow runs are
counted apart and never scored.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import mean
from typing import Any

from tiered_mcp.core.config import Config
from tiered_mcp.ledger.base import LedgerStore, ShadowRow
from tiered_mcp.specs.spec import Specs

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
    """One tool's line of the report: a bound tier and comparison tier pair, on their current models."""

    tool: str
    tier: str
    comparison_tier: str
    model: str | None
    comparison_model: str | None
    spec_version: str | None
    calls: int
    shadowed: int
    scored: int
    skipped: int
    failed: int
    older: int
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


def _avg(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return mean(known) if known else None


def build_report(ledger: LedgerStore, since: str | None = None, keep_at: float = KEEP_AT,
                 config: Config | None = None, specs: Specs | None = None) -> list[ToolReport]:
    """Group the ledger's shadow comparisons by tool and tier pair and judge each on its current evidence.

    With `config` and `specs`, only rows of the tiers' configured models and the tools' current spec versions
    count (the others are `older`); without them, each group is judged on its newest model and spec version.
    """
    calls = ledger.call_counts(since)
    groups: dict[tuple[str, str, str], list[ShadowRow]] = {}
    for row in ledger.shadows(since):
        groups.setdefault((row.tool, row.tier, row.comparison_tier), []).append(row)
    out = []
    for (tool, tier, comparison), rows in sorted(groups.items()):
        if config is not None and tier in config.tiers and comparison in config.tiers:
            current: tuple[str | None, str | None] = (config.tiers[tier].model, config.tiers[comparison].model)
        else:
            current = (rows[-1].model, rows[-1].comparison_model)
        spec = specs.get(tool) if specs is not None else None
        version = str(spec.version) if spec is not None else rows[-1].spec_version
        now = [r for r in rows if (r.model, r.comparison_model) == current and r.spec_version == version]
        scored = [r for r in now if r.status == "scored" and r.agree is not None]
        k = sum(1 for r in scored if r.agree)
        recommendation = _recommend(tool, tier, comparison, len(scored), k, keep_at)
        older = len(rows) - len(now)
        if older:
            recommendation += (f" ({older} comparisons of earlier models or spec versions are not counted)")
        out.append(ToolReport(
            tool=tool, tier=tier, comparison_tier=comparison, model=current[0], comparison_model=current[1],
            spec_version=version, calls=calls.get(tool, 0), shadowed=len(now), scored=len(scored),
            skipped=sum(1 for r in now if r.status == "skipped"), failed=sum(1 for r in now if r.status == "failed"),
            older=older, agreement=k / len(scored) if scored else None,
            interval=wilson(k, len(scored)) if scored else None,
            mean_score=_avg([r.score for r in scored]),
            cost_per_call=_avg([r.cost_usd for r in scored]),
            comparison_cost_per_call=_avg([r.comparison_cost_usd for r in scored]),
            recommendation=recommendation,
        ))
    return out
