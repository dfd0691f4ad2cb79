"""The statistics behind `report`, `eval` and auto-tiering: pure functions, no dependencies, no I/O.

Agreement is a Bernoulli rate: a shadow comparison either agrees with the reference (flagship) answer or not.

- `confidence_sequence`: bounds on that rate that stay valid however often they are looked at (anytime-valid),
  from the beta-binomial mixture martingale (Robbins 1970; Howard, Ramdas, McAuliffe & Sekhon 2021).
- `comparisons_to_decide`: how many more comparisons the bounds need to clear (or fall below) a bar.
- `clear_log_evalue`, `clears_bar`, `comparisons_to_clear`: the one-sided test "the rate is above the bar" that
  auto-tiering steps down on (a mixture of likelihood ratios against the bar, Wald 1945; Robbins 1970).
- `mcnemar_exact`, `paired_difference`: two tiers on the same cases (McNemar 1947; exact binomial form).
- `cost_quality_curve`, `pareto_frontier`, `recommend_threshold`: which confidence threshold to escalate below.
- `recommend_tier`: the cheapest tier of a ladder whose lower bound clears the bar.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable, Literal, Mapping, Sequence

__all__ = [
    "CLEAR_GRID", "Bounds", "CurvePoint", "CurveRow", "Decision", "Paired", "TierChoice", "clear_log_evalue",
    "clears_bar", "comparisons_to_clear", "comparisons_to_decide", "confidence_sequence", "cost_quality_curve", "decide", "log_beta", "mcnemar_exact", "mixture_log_martingale", "paired_difference",
    "pareto_frontier", "prior_for", "recommend_threshold", "recommend_tier",
]

_BISECT_STEPS = 100
"""Halvings of [0, 1]: far below 1e-15, the float resolution near the bounds we care about."""


def log_beta(a: float, b: float) -> float:
    """log B(a, b) = lgamma(a) + lgamma(b) - lgamma(a + b), for real a, b > 0."""
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def prior_for(bar: float, strength: float = 2.0) -> tuple[float, float]:
    """Beta prior parameters with mean `bar` and `a + b = strength` (strength 2 at bar 0.5 is the uniform prior).

    A prior centred on the bar tightens the bounds where decisions are made (Howard et al. 2021 discuss tuning a
    mixture to the sample sizes and rates of interest); any prior fixed before the data keeps the sequence valid.
    """
    if not 0 < bar < 1 or strength <= 0:
        raise ValueError("bar must be in (0, 1) and strength positive")
    return bar * strength, (1 - bar) * strength


def mixture_log_martingale(successes: float, trials: float, p: float, prior: tuple[float, float] = (1.0, 1.0)) -> float:
    """log M_n(p), the beta-binomial mixture likelihood ratio against the rate `p`.

    M_n(p) = B(a + S, b + n - S) / B(a, b) / (p^S (1 - p)^(n - S)) for S successes in n trials and a Beta(a, b)
    mixing prior. Under the true rate p it is a nonnegative martingale starting at 1, so by Ville's inequality
    P(M_n(p) >= 1/alpha for some n) <= alpha (Robbins 1970, "Statistical methods related to the law of the iterated
    logarithm", Ann. Math. Statist.; Howard, Ramdas, McAuliffe & Sekhon 2021, "Time-uniform, nonparametric,
    nonasymptotic confidence sequences", Ann. Statist., the beta-binomial mixture). Real-valued S is allowed (used
    for projections).
    """
    a, b = prior
    fail = trials - successes
    log_lik = 0.0
    for count, q in ((successes, p), (fail, 1 - p)):
        if count > 0:
            if q <= 0:
                return math.inf
            log_lik += count * math.log(q)
    return log_beta(a + successes, b + fail) - log_beta(a, b) - log_lik


@dataclass(frozen=True)
class Bounds:
    """An anytime-valid interval for an agreement rate: `successes` of `trials`, at level `alpha`."""

    lower: float
    upper: float
    successes: int
    trials: int
    alpha: float

    @property
    def rate(self) -> float | None:
        """The observed rate, None with no trials."""
        return self.successes / self.trials if self.trials else None

    def as_dict(self) -> dict[str, Any]:
        """The bounds as plain data (for ledger rows and JSON)."""
        return asdict(self)


def _cs(successes: float, trials: float, alpha: float, prior: tuple[float, float]) -> tuple[float, float]:
    if trials <= 0:
        return 0.0, 1.0
    threshold = math.log(1 / alpha)
    p_hat = successes / trials

    def outside(p: float) -> bool:
        return mixture_log_martingale(successes, trials, p, prior) >= threshold

    # log M_n(p) is convex in p with its minimum at p_hat, where M_n <= 1 < 1/alpha (a mixture never beats the
    # maximum likelihood), so {p : M_n(p) < 1/alpha} is an interval around p_hat: bisect each side.
    lower = 0.0
    if successes > 0 and outside(0.0):
        lo, hi = 0.0, p_hat
        for _ in range(_BISECT_STEPS):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if outside(mid) else (lo, mid)
        lower = hi
    upper = 1.0
    if trials - successes > 0 and outside(1.0):
        lo, hi = p_hat, 1.0
        for _ in range(_BISECT_STEPS):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if outside(mid) else (mid, hi)
        upper = lo
    return lower, upper


@functools.lru_cache(maxsize=1 << 16)  # pure; auto-tiering asks for the same counts on every call
def confidence_sequence(successes: int, trials: int, alpha: float = 0.05,
                        prior: tuple[float, float] = (1.0, 1.0)) -> Bounds:
    """Anytime-valid bounds on a Bernoulli rate: {p : M_n(p) < 1/alpha} (see `mixture_log_martingale`).

    With probability at least 1 - alpha the true rate lies inside the bounds at every n at once, so the bounds may be
    checked after every comparison (daily reports, auto-tiering) without inflating the error rate. Both sides share
    the one alpha. Computed by bisection to ~1e-15.

    Args:
        successes: comparisons that agreed.
        trials: comparisons scored.
        alpha: error probability over the whole sequence.
        prior: the Beta(a, b) mixing prior; see `prior_for`.
    """
    if not 0 <= successes <= trials:
        raise ValueError("need 0 <= successes <= trials")
    if not 0 < alpha < 1:
        raise ValueError("alpha must be in (0, 1)")
    lower, upper = _cs(successes, trials, alpha, prior)
    return Bounds(lower, upper, successes, trials, alpha)


def comparisons_to_decide(successes: int, trials: int, bar: float, alpha: float = 0.05,
                          prior: tuple[float, float] = (1.0, 1.0), limit: int = 1_000_000) -> int | None:
    """How many more comparisons until the bounds decide against `bar`, if the observed rate holds.

    Decided means the lower bound reaches the bar (when the observed rate is above it) or the upper bound falls
    below it (when under). The projection adds m comparisons at the observed rate p_hat, S + p_hat * m successes of
    n + m (real-valued; the mixture formula takes it), and finds the least such m by doubling then bisection.

    Returns:
        0 when already decided; None with no trials, when p_hat equals the bar, or past `limit`.
    """
    if trials == 0:
        return None
    p_hat = successes / trials
    if p_hat == bar:
        return None

    def decided(m: int) -> bool:
        lower, upper = _cs(successes + p_hat * m, trials + m, alpha, prior)
        return lower >= bar if p_hat > bar else upper < bar

    return _least(decided, limit)


def _least(holds: Callable[[int], bool], limit: int) -> int | None:
    """The least m >= 0 for which `holds(m)` (monotone in m), by doubling then bisection; None past `limit`."""
    if holds(0):
        return 0
    hi = 1
    while not holds(hi):
        if hi > limit:
            return None
        hi *= 2
    lo = hi // 2  # does not hold at lo (or lo == 0, checked above)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if holds(mid) else (mid, hi)
    return hi if hi <= limit else None


CLEAR_GRID = 20
"""Alternatives of the one-sided test: the midpoints of CLEAR_GRID equal cells of (bar, 1), equally weighted."""


@functools.lru_cache(maxsize=64)
def _clear_terms(bar: float, grid: int) -> tuple[tuple[float, float, float], ...]:
    qs = [bar + (1 - bar) * (j - 0.5) / grid for j in range(1, grid + 1)]
    return tuple((-math.log(grid), math.log(q / bar), math.log((1 - q) / (1 - bar))) for q in qs)


def clear_log_evalue(successes: float, trials: float, bar: float, grid: int = CLEAR_GRID) -> float:
    """log E_n, the e-value against "the agreement rate is at most `bar`".

    E_n = (1/J) * sum_j (q_j / bar)^S * ((1 - q_j) / (1 - bar))^(n - S), with q_j = bar + (1 - bar)(j - 1/2)/J for
    j = 1..J (J = `grid`): a fixed mixture of Wald's likelihood ratios of "the rate is q_j" against "the rate is the
    bar". Each factor's mean under a true rate p is p q/bar + (1 - p)(1 - q)/(1 - bar), which is 1 at p = bar and
    falls as p falls (q > bar), so under any p <= bar E_n is a nonnegative supermartingale starting at 1 and, by
    Ville's inequality, P(E_n >= 1/alpha at any n) <= alpha. Only the side that matters for a step down is tested,
    so it clears a rate above the bar sooner than the two-sided `confidence_sequence` does at the same alpha.
    Real-valued S is allowed (used for projections).
    """
    if trials <= 0:
        return 0.0
    fail = trials - successes
    logs = [w + successes * up + fail * down for w, up, down in _clear_terms(bar, grid)]
    top = max(logs)
    return top + math.log(sum(math.exp(v - top) for v in logs))


@functools.lru_cache(maxsize=1 << 16)
def clears_bar(successes: int, trials: int, bar: float, alpha: float = 0.05, grid: int = CLEAR_GRID) -> bool:
    """Whether k of n agreeing shows, at level `alpha` over every look, that the rate is above `bar`:
    `clear_log_evalue` >= log(1/alpha). With an observed rate at or under the bar every term is below 1, so it
    never clears there."""
    if not 0 <= successes <= trials:
        raise ValueError("need 0 <= successes <= trials")
    if not 0 < bar < 1 or not 0 < alpha < 1:
        raise ValueError("bar and alpha must be in (0, 1)")
    return clear_log_evalue(successes, trials, bar, grid) >= math.log(1 / alpha)


def comparisons_to_clear(successes: int, trials: int, bar: float, alpha: float = 0.05, limit: int = 1_000_000,
                         grid: int = CLEAR_GRID, rate: float | None = None) -> int | None:
    """How many more comparisons until `clears_bar` holds, if the next ones agree at `rate` (default the observed
    p_hat = k/n): the least m with k + rate * m of n + m clearing. 0 when it holds already; None with no trials,
    a projected rate at or under the bar, or past `limit`."""
    if trials == 0:
        return None
    p_hat, need = successes / trials if rate is None else rate, math.log(1 / alpha)
    if p_hat <= bar:
        return None

    def cleared(m: int) -> bool:
        return clear_log_evalue(successes + p_hat * m, trials + m, bar, grid) >= need

    return _least(cleared, limit)


@dataclass(frozen=True)
class Decision:
    """Where one tier's agreement stands against a bar, in figures and in a sentence for `report`."""

    verdict: Literal["clears", "below", "undecided"]
    bounds: Bounds
    bar: float
    more_needed: int | None
    """Undecided only: comparisons until decided at the observed rate (None: it would not decide)."""
    text: str

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return {"verdict": self.verdict, "bounds": self.bounds.as_dict(), "bar": self.bar,
                "more_needed": self.more_needed, "text": self.text}


def decide(successes: int, trials: int, bar: float, alpha: float = 0.05,
           prior: tuple[float, float] = (1.0, 1.0)) -> Decision:
    """Judge k of n agreeing against `bar` with the anytime-valid bounds: "clears" when the lower bound reaches
    the bar, "below" when the upper bound is under it, else "undecided" with `comparisons_to_decide`.

    Safe to call after every comparison or every day: the bounds hold at every n at once (see
    `confidence_sequence`).
    """
    b = confidence_sequence(successes, trials, alpha, prior)
    head = (f"{100 * successes / trials:.1f}% of {trials} agree (bounds {100 * b.lower:.1f}-{100 * b.upper:.1f}%)"
            if trials else "no comparisons yet")
    if trials and b.lower >= bar:
        return Decision("clears", b, bar, None, f"{head}: clears the {100 * bar:g}% bar")
    if trials and b.upper < bar:
        return Decision("below", b, bar, None, f"{head}: below the {100 * bar:g}% bar")
    more = comparisons_to_decide(successes, trials, bar, alpha, prior)
    tail = (f"about {more} more comparisons to decide at the observed rate" if more is not None
            else "the observed rate would not decide it")
    return Decision("undecided", b, bar, more, f"{head}: not yet clear against the {100 * bar:g}% bar; {tail}")


def _binom_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p), summed in log space (exact to float precision for the n we meet)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    if p <= 0:
        return 1.0
    if p >= 1:
        return 0.0
    lp, lq = math.log(p), math.log1p(-p)
    return min(1.0, sum(math.exp(math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp
                                 + (n - i) * lq) for i in range(k + 1)))


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for paired tiers on the same cases.

    b = cases only the first tier got right (agreed with the reference), c = cases only the second did. Under "the
    two tiers are as good", each discordant case is a fair coin, so b ~ Binomial(b + c, 1/2) and
    p = min(1, 2 * P(X <= min(b, c))) (McNemar 1947, Psychometrika; the exact conditional form reviewed by
    Fagerland, Lydersen & Laake 2013, BMC Med. Res. Methodol., who note it is conservative). 1.0 with no
    discordant case.
    """
    if b < 0 or c < 0:
        raise ValueError("counts must be non-negative")
    n = b + c
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2 ** n)


def paired_counts(first: Sequence[bool], second: Sequence[bool]) -> tuple[int, int, int]:
    """(cases, b, c) from two tiers' verdicts on the same cases, in the same order: b = only the first agreed,
    c = only the second did. The input of `mcnemar_exact` and `paired_difference`."""
    if len(first) != len(second):
        raise ValueError("the two tiers must be judged on the same cases")
    b = sum(1 for x, y in zip(first, second, strict=True) if x and not y)
    c = sum(1 for x, y in zip(first, second, strict=True) if y and not x)
    return len(first), b, c


def _clopper_pearson(k: int, n: int, alpha: float) -> tuple[float, float]:
    """The exact binomial interval (Clopper & Pearson 1934), by bisection on the binomial tails."""
    def solve(f: Any) -> float:
        lo, hi = 0.0, 1.0
        for _ in range(_BISECT_STEPS):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if f(mid) else (lo, mid)
        return (lo + hi) / 2
    lower = 0.0 if k == 0 else solve(lambda p: 1 - _binom_cdf(k - 1, n, p) < alpha / 2)
    upper = 1.0 if k == n else solve(lambda p: _binom_cdf(k, n, p) > alpha / 2)
    return lower, upper


@dataclass(frozen=True)
class Paired:
    """Two tiers on the same `cases`: b = only the first agreed, c = only the second agreed."""

    cases: int
    b: int
    c: int
    difference: float
    """First tier's agreement minus the second's, (b - c) / cases."""
    interval: tuple[float, float]
    p_value: float

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return asdict(self)


def paired_difference(cases: int, b: int, c: int, alpha: float = 0.05) -> Paired:
    """The difference of two tiers' agreement on the same cases, with an interval and the exact McNemar p-value.

    The interval is conditional on the b + c discordant cases: theta = b / (b + c) gets its exact Clopper-Pearson
    interval (Clopper & Pearson 1934), and the difference (b - c) / cases = (b + c) / cases * (2 theta - 1) maps it
    across. It treats b + c as fixed, not as the random count it is, so it is an approximation; prefer the
    McNemar p-value for the decision and this interval for the size of the difference.
    """
    if cases < b + c or min(cases, b, c) < 0:
        raise ValueError("need 0 <= b + c <= cases")
    p = mcnemar_exact(b, c)
    if cases == 0:
        return Paired(0, 0, 0, 0.0, (-1.0, 1.0), 1.0)
    d = b + c
    if d == 0:
        return Paired(cases, b, c, 0.0, (0.0, 0.0), p)
    lo, hi = _clopper_pearson(b, d, alpha)
    scale = d / cases
    return Paired(cases, b, c, (b - c) / cases, (scale * (2 * lo - 1), scale * (2 * hi - 1)), p)


@dataclass(frozen=True)
class CurveRow:
    """One answered call: the cheap tier's confidence, its shadow verdict (None when not compared), the cost of the
    cheap answer, and what escalating it to the flagship would add."""

    confidence: float
    agreed: bool | None
    cheap_cost: float
    escalated_cost: float


@dataclass(frozen=True)
class CurvePoint:
    """The calls at one threshold `t`: answers with confidence < t escalate, the rest are kept.

    `kept_agreement` is the measured agreement of the kept answers that were compared (with anytime-valid bounds
    `kept_lower`/`kept_upper`). `blended` is the agreement of every served answer: kept answers agree at the kept
    rate, escalated ones are flagship answers and count as agreeing, so blended = kept_share * kept_agreement +
    escalated_share (its `blended_lower` uses kept_lower). `cost_per_call` = mean cheap cost + mean escalation cost
    over the escalated share (an escalated call pays for both answers).
    """

    threshold: float
    escalated_share: float
    kept: int
    scored: int
    kept_agreement: float | None
    kept_lower: float
    kept_upper: float
    blended: float | None
    blended_lower: float
    cost_per_call: float

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return asdict(self)


def cost_quality_curve(rows: Iterable[CurveRow], alpha: float = 0.05,
                       prior: tuple[float, float] = (1.0, 1.0)) -> list[CurvePoint]:
    """One point per distinct confidence (escalate what is below it), plus +inf (escalate everything).

    The lowest threshold keeps every answer, +inf escalates all of them. Points come in rising threshold order.
    Unscored rows (agreed None) count in shares and cost, not in agreement.
    """
    data = sorted(rows, key=lambda r: r.confidence)
    n = len(data)
    if n == 0:
        return []
    base = sum(r.cheap_cost for r in data) / n
    thresholds = sorted({r.confidence for r in data}) + [math.inf]
    out = []
    # Sweep: rows before index i have confidence < t and escalate.
    i = 0
    esc_cost = 0.0
    kept_k = sum(1 for r in data if r.agreed)
    kept_n = sum(1 for r in data if r.agreed is not None)
    for t in thresholds:
        while i < n and data[i].confidence < t:
            r = data[i]
            esc_cost += r.escalated_cost
            if r.agreed is not None:
                kept_n -= 1
                kept_k -= 1 if r.agreed else 0
            i += 1
        kept = n - i
        share = i / n
        b = confidence_sequence(kept_k, kept_n, alpha, prior)
        agreement = kept_k / kept_n if kept_n else None
        if kept == 0:
            blended: float | None = 1.0
            blended_lower = 1.0
        else:
            blended = None if agreement is None else (kept / n) * agreement + share
            blended_lower = (kept / n) * b.lower + share
        out.append(CurvePoint(t, share, kept, kept_n, agreement, b.lower, b.upper, blended, blended_lower,
                              base + esc_cost / n))
    return out


def pareto_frontier(points: Sequence[CurvePoint]) -> list[CurvePoint]:
    """The points no other point beats on both cost and blended agreement (ties kept once), cheapest first.

    A point is dominated when another costs no more and agrees no less (point estimates, `blended`), one of them
    strictly. Points without a blended agreement (nothing compared) are left out.
    """
    pts = sorted((p for p in points if p.blended is not None), key=lambda p: (p.cost_per_call, -(p.blended or 0.0)))
    out: list[CurvePoint] = []
    best = -math.inf
    for p in pts:
        assert p.blended is not None
        if p.blended > best:
            out.append(p)
            best = p.blended
    return out


def recommend_threshold(points: Sequence[CurvePoint], bar: float,
                        basis: Literal["blended", "kept"] = "blended") -> CurvePoint | None:
    """The cheapest point whose lower bound meets `bar` (ties: the lower threshold).

    basis "blended" (default) judges what the user receives, kept answers and flagship escalations together
    (`blended_lower`); "kept" asks the kept answers alone to meet the bar (`kept_lower`, stricter). Escalating
    everything always meets the blended bar, so with rows there is always a blended answer.
    """
    def lower(p: CurvePoint) -> float:
        return p.blended_lower if basis == "blended" else (p.kept_lower if p.kept else 1.0)
    ok = [p for p in points if lower(p) >= bar]
    return min(ok, key=lambda p: (p.cost_per_call, p.threshold)) if ok else None


@dataclass(frozen=True)
class TierChoice:
    """The cheapest tier of a ladder whose lower bound clears the bar, and why."""

    tier: str
    bounds: dict[str, Bounds]
    """Every tier's bounds (the reference tier is the reference and has none)."""
    next_cheaper: str | None
    """The next tier down from `tier`, the one more evidence could unlock."""
    more_needed: int | None
    """Comparisons `next_cheaper` needs at its observed rate (None: it never would, or no evidence)."""
    reason: str

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return {"tier": self.tier, "bounds": {k: v.as_dict() for k, v in self.bounds.items()},
                "next_cheaper": self.next_cheaper, "more_needed": self.more_needed, "reason": self.reason}


def recommend_tier(evidence: Mapping[str, tuple[int, int]], ladder: Sequence[str], bar: float, alpha: float = 0.05,
                   prior: tuple[float, float] = (1.0, 1.0)) -> TierChoice:
    """The cheapest tier whose anytime-valid lower bound on agreement with the reference clears `bar`.

    Args:
        evidence: tier -> (agreed, compared) against the reference tier.
        ladder: tiers cheapest first; the last is the reference and always qualifies. The walk goes up one rung at
            a time, so mini is chosen before flagship.
        bar: the quality bar (share of answers that must agree with the reference).
    """
    if not ladder:
        raise ValueError("empty ladder")
    bounds = {t: confidence_sequence(*evidence.get(t, (0, 0)), alpha=alpha, prior=prior) for t in ladder[:-1]}
    chosen = next((t for t in ladder[:-1] if bounds[t].lower >= bar), ladder[-1])
    idx = list(ladder).index(chosen)
    below = ladder[idx - 1] if idx > 0 else None
    more = comparisons_to_decide(*evidence.get(below, (0, 0)), bar=bar, alpha=alpha, prior=prior) if below else None
    if chosen == ladder[-1]:
        reason = f"no cheaper tier's lower bound clears {bar:g}"
    else:
        reason = f"{chosen}'s lower bound {bounds[chosen].lower:.3f} clears {bar:g}"
    if below is not None:
        b = bounds[below]
        if more is None or (b.rate is not None and b.rate <= bar):
            reason += f"; {below} is not expected to clear it"
            more = None
        else:
            reason += f"; {below} needs about {more} more comparisons"
    return TierChoice(chosen, bounds, below, more, reason)
