"""`tiered-mcp report`: per tool, how often the cheap tier agrees with the comparison tier, what each costs, and
what to do about it. The figures come from the shadow comparisons in the ledger.

A tier is judged on the evidence of its *current* model and the tool's current spec version only: after a tier is
pointed at a new model (or a spec's prompt changes), the report starts afresh and says how much older evidence
exists. Agreement is k/n over scored comparisons. The decision (keep, move, keep sampling and about how many more
comparisons it needs) uses anytime-valid bounds (evidence/stats.py, a confidence sequence), so reading the report
every day does not inflate its error rate; the Wilson 95% interval is shown beside it for one look. Skipped and
failed shadow runs are counted apart and never scored. Where answers carry a confidence, the cost/quality curve
says, per confidence threshold, what share would escalate, how often the kept answers agree and what a call costs;
the recommended threshold is the cheapest whose served answers' lower bound meets the bar (docs/auto-tiering.md).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import mean
from typing import Any

from tiered_mcp.core.config import Config
from tiered_mcp.evidence.stats import CurveRow, cost_quality_curve, decide, pareto_frontier, recommend_threshold
from tiered_mcp.ledger.base import LedgerStore, ShadowRow
from tiered_mcp.specs.spec import Specs

KEEP_AT = 0.9
"""Agreement a tier must show (the whole 95% interval) to be kept."""


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
    decision: str = "undecided"  # "clears", "below" or "undecided", on the anytime-valid bounds
    bounds: tuple[float, float] | None = None  # the anytime-valid bounds on agreement
    more_needed: int | None = None  # about how many more comparisons would decide it, at the observed rate
    threshold: float | None = None  # the recommended confidence threshold (None: no confidences recorded)
    threshold_escalated_share: float | None = None
    threshold_cost_per_call: float | None = None
    frontier: tuple[dict[str, Any], ...] = ()  # the cost/quality Pareto frontier, cheapest first

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


FAR = 10_000
"""Past this many more comparisons, the report says "over 10,000" rather than a figure nobody will wait for."""


def _recommend(tool: str, tier: str, comparison: str, scored: int, k: int, keep_at: float) -> tuple[str, Any]:
    if scored == 0:
        return f"{tool}: no scored shadow comparisons yet; set [tools.{tool}] shadow_rate in the config", None
    rate = k / scored
    lo, hi = wilson(k, scored)
    pm = round(100 * (hi - lo) / 2)
    head = f"{tool}: {tier} agrees {100 * rate:.0f}% ± {pm} with {comparison} over {scored} calls"
    d = decide(k, scored, keep_at)
    bounds = f"anytime-valid bounds {100 * d.bounds.lower:.0f}-{100 * d.bounds.upper:.0f}%"
    if d.verdict == "clears":
        return f"{head} ({bounds}): keep {tier}", d
    if d.verdict == "below":
        return f"{head} ({bounds}): move to {comparison}, or improve the prompt", d
    if d.more_needed is None:
        more = "at this rate more comparisons would not decide it"
    elif d.more_needed > FAR:
        more = f"over {FAR:,} more comparisons at this rate: it is too close to the bar to decide soon"
    else:
        more = f"about {d.more_needed} more comparisons would decide it"
    return f"{head} ({bounds}): not yet clear against the {100 * keep_at:.0f}% bar; keep sampling ({more})", d


def _finite(x: float) -> float | None:
    # The curve's last point escalates everything (threshold +inf); JSON has no infinity, so it is None here.
    return x if math.isfinite(x) else None


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
        if row.status == "replay":  # an auto tool's sentinel-set replay: a fixed sample's repeat, not traffic
            continue
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
        # An auto tool is judged against its own quality bar, not the report's keep_at: the table and the tool's
        # auto line then apply one bar (the policy's evidence is still its own: since its last alarm, its prior).
        settings = config.tools.get(tool) if config is not None else None
        bar = settings.quality_bar if settings is not None and settings.auto else keep_at
        recommendation, decision = _recommend(tool, tier, comparison, len(scored), k, bar)
        if bar != keep_at:
            recommendation += f" (auto tool: against its quality_bar {100 * bar:g}%; its auto line is the policy's)"
        curve = cost_quality_curve(CurveRow(r.confidence, r.agree, r.cost_usd or 0.0, r.comparison_cost_usd or 0.0)
                                   for r in scored if r.confidence is not None)
        best = recommend_threshold(curve, bar) if curve else None
        if best is not None and 0 < best.escalated_share < 1:
            recommendation += (f"; at confidence threshold {best.threshold:g}, {100 * best.escalated_share:.0f}% "
                               f"would escalate and the answers served would still meet the bar")
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
            decision=decision.verdict if decision else "undecided",
            bounds=(decision.bounds.lower, decision.bounds.upper) if decision else None,
            more_needed=decision.more_needed if decision else None,
            threshold=_finite(best.threshold) if best else None,
            threshold_escalated_share=best.escalated_share if best else None,
            threshold_cost_per_call=best.cost_per_call if best else None,
            frontier=tuple({**p.as_dict(), "threshold": _finite(p.threshold)} for p in pareto_frontier(curve)),
        ))
    return out
