"""Bake-offs: run cases on several tiers and tell, per tool, which is the cheapest tier good enough.

A case is a JSON line `{"tool": ..., "arguments": {...}, "expected": {...}}` (expected is optional). Each case runs
on each tier with no escalation and no cache. Quality is the comparison score against `expected` when a case has
one, else against the strongest tier's answer (see compare.py; judge comparisons are graded by the strongest tier).

`cases_from_ledger` turns stored flagship answers into cases whose reference is that stored answer: the bake-off of
a new model then pays only for the new model's calls, never for the flagship again.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterable

import anyio

from tiered_mcp.call.runner import Runner
from tiered_mcp.core.config import TIERS
from tiered_mcp.core.errors import ArgumentsError, CallError
from tiered_mcp.evidence.shadow import compare_answers


@dataclass(frozen=True)
class Case:
    tool: str
    arguments: dict[str, Any]
    expected: dict[str, Any] | None = None
    # Set when `expected` is an answer this tier gave before (from the ledger): the case does not run on that tier.
    reference_tier: str | None = None


@dataclass
class LedgerCases:
    """Cases built from stored answers, and what was left out and why (printed beside the scores)."""

    cases: list[Case]
    reference_tier: str
    models: dict[str, int]  # the reference answers' models: an answer from an older flagship is still counted
    answers: int  # stored reference answers read
    duplicates: int  # answers to arguments already taken (the newest answer is the reference)
    other_spec: int  # answers given under another version of the tool's spec, not comparable

    def as_dict(self) -> dict[str, Any]:
        return {"reference_tier": self.reference_tier, "cases": len(self.cases), "models": self.models,
                "answers": self.answers, "duplicates": self.duplicates, "other_spec_version": self.other_spec}


def cases_from_ledger(ledger: Any, specs: Any, reference_tier: str, tool: str | None = None,
                      limit: int = 200) -> LedgerCases:
    """Up to `limit` cases: the newest stored answer on `reference_tier` per distinct arguments, for tools that
    still exist, given under the tool's current spec version (an answer to an older prompt or schema is not a
    fair reference for today's)."""
    from tiered_mcp.evidence.shadow import args_key

    rows = ledger.stored_answers(reference_tier, tool=tool, limit=max(limit * 5, limit))
    seen: set[str] = set()
    cases: list[Case] = []
    models: dict[str, int] = {}
    duplicates = other_spec = 0
    for row in rows:
        spec = specs.get(row["tool"])
        if spec is None or not isinstance(row["arguments"], dict) or not isinstance(row["output"], dict):
            continue
        if row["spec_version"] != str(spec.version):
            other_spec += 1
            continue
        key = args_key(spec, row["arguments"])
        if key in seen:
            duplicates += 1
            continue
        if len(cases) >= limit:
            break
        seen.add(key)
        cases.append(Case(row["tool"], row["arguments"], row["output"], reference_tier))
        models[row["model"]] = models.get(row["model"], 0) + 1
    return LedgerCases(cases, reference_tier, models, len(rows), duplicates, other_spec)


@dataclass
class Run:
    """One case on one tier."""

    case: int
    tool: str
    tier: str
    output: dict[str, Any] | None
    cost_usd: float | None
    latency_ms: float
    error: str | None = None
    quality: float | None = None


@dataclass
class TierScore:
    """One tool on one tier, over its cases."""

    tool: str
    tier: str
    cases: int
    quality: float | None
    valid_rate: float
    cost_usd: float | None
    cost_per_case: float | None
    p50_ms: float
    p95_ms: float
    basis: str = field(default="expected")


def load_cases(path: str | Path) -> list[Case]:
    """Read a JSONL case file.

    Raises:
        ArgumentsError: naming the line and what is wrong with it.
    """
    cases = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            raw = json.loads(line)
            cases.append(Case(tool=raw["tool"], arguments=raw["arguments"], expected=raw.get("expected")))
        except (ValueError, KeyError, TypeError) as e:
            raise ArgumentsError(f"{path}:{n}: each line must be a JSON object with tool and arguments "
                                 f"(and optionally expected): {e}") from None
    return cases


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def run_eval(runner: Runner, cases: list[Case], tiers: Iterable[str], concurrency: int = 8,
                   progress: Callable[[int, int], Awaitable[None] | None] | None = None,
                   warm_up: bool = True) -> tuple[list[TierScore], list[Run]]:
    """Run every case on every tier, concurrently, and score each tool on each tier (after one untimed warm-up run
    per tier).

    Raises:
        ArgumentsError: an unknown tool or tier.
    """
    tiers = sorted(set(tiers), key=TIERS.index)
    for t in tiers:
        if t not in runner.config.tiers:
            raise ArgumentsError(f"--tiers: {t!r} is not configured (configured: {', '.join(runner.config.tiers)})")
    # A tier whose every case carries its stored answer is not run at all (it needs no key, and costs nothing).
    stored = {c.reference_tier for c in cases}
    if len(stored) == 1 and None not in stored:
        tiers = [t for t in tiers if t not in stored]
        if not tiers:
            raise ArgumentsError("--tiers: only the reference tier was given; name the tiers to compare with it")
    idle = [t for t in tiers if not runner.usable(t)]
    if idle:
        raise ArgumentsError(f"--tiers: {', '.join(idle)} cannot run here (no key for its provider, or the local "
                             "extra is not installed); `tiered-mcp doctor` says what each tier lacks")
    for c in cases:
        if runner.specs.get(c.tool) is None:
            raise ArgumentsError(f"unknown tool {c.tool!r} in the cases; tools: {', '.join(sorted(runner.specs.tools))}")
    strongest = tiers[-1]
    runs: list[Run] = []
    limiter = anyio.CapacityLimiter(concurrency)
    total, done = len(cases) * len(tiers), 0

    async def one(i: int, case: Case, tier: str) -> None:
        nonlocal done
        spec = runner.specs.get(case.tool)
        assert spec is not None
        async with limiter:
            try:
                r = await runner.run_eval(spec, case.arguments, tier)
                run = Run(i, case.tool, tier, r.output, r.receipt["cost_usd"], r.receipt["latency_ms"])
            except CallError as e:
                receipt = e.receipt or {}
                run = Run(i, case.tool, tier, None, receipt.get("cost_usd"), receipt.get("latency_ms") or 0.0,
                          error=str(e))
        runs.append(run)
        done += 1
        if progress is not None:
            maybe = progress(done, total)
            if maybe is not None:
                await maybe

    # One untimed run per tier first, so that the server's own cold start (a connection pool, the local model's
    # load) is not timed as the first case's latency. Its cost is evidence spend like the rest; it is not scored.
    async def warm(tier: str) -> None:
        if tier == cases[0].reference_tier:
            return
        spec = runner.specs.get(cases[0].tool)
        assert spec is not None
        try:
            await runner.run_eval(spec, cases[0].arguments, tier)
        except CallError:
            pass

    if cases and warm_up:
        async with anyio.create_task_group() as tg:
            for tier in tiers:
                tg.start_soon(warm, tier)

    async with anyio.create_task_group() as tg:
        for i, case in enumerate(cases):
            for tier in tiers:
                if tier != case.reference_tier:
                    tg.start_soon(one, i, case, tier)

    by_case = {(r.case, r.tier): r for r in runs}

    async def grade(run: Run) -> None:
        case = cases[run.case]
        spec = runner.specs.get(case.tool)
        assert spec is not None
        reference = case.expected if case.expected is not None else (by_case.get((run.case, strongest)) or run).output
        if run.output is None:
            run.quality = 0.0
        elif reference is None:
            run.quality = None
        elif case.expected is None and run.tier == strongest:
            run.quality = 1.0
        else:
            async with limiter:
                # A stored answer is still a tier's answer: a judge must be neither it nor the candidate.
                other = case.reference_tier if case.expected is not None else strongest
                arms = (run.tier,) if other is None else (run.tier, other)
                run.quality = (await compare_answers(runner, spec, arms, case.arguments, run.output,
                                                      reference)).score

    async with anyio.create_task_group() as tg:
        for run in runs:
            tg.start_soon(grade, run)
    return summarize(runs, cases), runs


def summarize(runs: list[Run], cases: list[Case]) -> list[TierScore]:
    """Per tool and tier: mean quality, schema-valid rate, cost and latency percentiles."""
    out = []
    for tool, tier in sorted({(r.tool, r.tier) for r in runs}, key=lambda k: (k[0], TIERS.index(k[1]))):
        rs = [r for r in runs if r.tool == tool and r.tier == tier]
        qualities = [r.quality for r in rs if r.quality is not None]
        costs = [r.cost_usd for r in rs]
        cost = None if any(c is None for c in costs) else sum(c for c in costs if c is not None)
        latencies = [r.latency_ms for r in rs]
        out.append(TierScore(
            tool=tool, tier=tier, cases=len(rs),
            quality=statistics.mean(qualities) if qualities else None,
            valid_rate=sum(1 for r in rs if r.output is not None) / len(rs),
            cost_usd=cost, cost_per_case=None if cost is None else cost / len(rs),
            p50_ms=_percentile(latencies, 0.5), p95_ms=_percentile(latencies, 0.95),
            basis=_basis([cases[r.case] for r in rs]),
        ))
    return out


def _basis(cases: list[Case]) -> str:
    if all(c.reference_tier is not None for c in cases):
        return f"stored {cases[0].reference_tier}"
    return "expected" if all(c.expected is not None for c in cases) else "agreement"


def _reaches(quality: float | None, bar: float) -> bool:
    return quality is not None and quality >= bar


def pairwise(runs: list[Run], cases: list[Case], agree_at: dict[str, float]) -> list[dict[str, Any]]:
    """Per tool, each pair of tiers compared on the same cases: a case counts for a tier when its quality reaches
    the tool's `agree_at`; b = cases only the cheaper tier got, c = cases only the dearer one did; the exact
    McNemar p-value says whether the two differ beyond chance, and the paired difference how much (stats.py)."""
    from tiered_mcp.evidence.stats import paired_difference

    out = []
    for tool in sorted({r.tool for r in runs}):
        by = {(r.case, r.tier): r for r in runs if r.tool == tool}
        tiers = sorted({t for _, t in by}, key=TIERS.index)
        for i, first in enumerate(tiers):
            for second in tiers[i + 1:]:
                both = sorted(c for c, t in by if t == first and (c, second) in by)
                got = {(c, t): _reaches(by[(c, t)].quality, agree_at.get(tool, 0.8)) for c in both
                       for t in (first, second)}
                b = sum(1 for c in both if got[(c, first)] and not got[(c, second)])
                c_ = sum(1 for c in both if got[(c, second)] and not got[(c, first)])
                if both:
                    out.append({"tool": tool, "first": first, "second": second,
                                **paired_difference(len(both), b, c_).as_dict()})
    return out


def cheapest_meeting(scores: list[TierScore], min_quality: float) -> dict[str, str | None]:
    """Per tool, the tier with the lowest measured cost per case whose quality reaches `min_quality`, or None.

    Measured, not assumed from the ladder's order: a "mini" that answers in fewer tokens can cost less than "nano".
    A tier whose cost is unknown (unpriced) ranks after every priced one; ties go to the lower tier.
    """
    best: dict[str, str | None] = {}
    rank = {s.tool: [] for s in scores}  # type: dict[str, list[TierScore]]
    for s in scores:
        rank[s.tool].append(s)
    for tool, rows in rank.items():
        good = [s for s in rows if s.quality is not None and s.quality >= min_quality]
        good.sort(key=lambda s: (s.cost_per_case is None, s.cost_per_case or 0.0, TIERS.index(s.tier)))
        best[tool] = good[0].tier if good else None
    return best


def config_snippet(choice: dict[str, str | None], min_quality: float) -> str:
    """TOML that starts each tool on its chosen tier, to merge into a config file."""
    lines = [f"# Written by `tiered-mcp eval --min-quality {min_quality:g}`: the cheapest tier that met it, per tool."]
    for tool, tier in sorted(choice.items()):
        if tier is None:
            lines += ["", f"# {tool}: no tier met {min_quality:g}; left unchanged"]
        else:
            lines += ["", f"[tools.{tool}]", f'tier = "{tier}"']
    return "\n".join(lines) + "\n"
