"""stats.py against hand computations (closed forms of the mixture bound at small n, McNemar on known tables, a
6-row cost/quality curve worked by hand) and the anytime-valid property under repeated looks."""

from __future__ import annotations

import math
import random

import pytest

from tiered_mcp.evidence.stats import (
    CurveRow,
    clear_log_evalue,
    clears_bar,
    comparisons_to_clear,
    comparisons_to_decide,
    confidence_sequence,
    cost_quality_curve,
    decide,
    mcnemar_exact,
    mixture_log_martingale,
    paired_counts,
    paired_difference,
    pareto_frontier,
    prior_for,
    recommend_threshold,
    recommend_tier,
)

UNIFORM = (1.0, 1.0)


def test_martingale_value_by_hand() -> None:
    # 2 of 3 agree, uniform prior: B(3, 2) = 1/12, so M(1/2) = (1/12) / (1/2)^3 = 2/3.
    assert mixture_log_martingale(2, 3, 0.5) == pytest.approx(math.log(2 / 3), abs=1e-12)
    assert mixture_log_martingale(0, 0, 0.3) == pytest.approx(0.0, abs=1e-12)
    assert mixture_log_martingale(1, 1, 0.0) == math.inf


def test_cs_all_agree_closed_form() -> None:
    # 3 of 3, uniform: M(p) = B(4, 1) / p^3 = 1 / (4 p^3) >= 20  <=>  p <= 80^(-1/3); the upper side never leaves.
    b = confidence_sequence(3, 3, alpha=0.05)
    assert b.lower == pytest.approx(80 ** (-1 / 3), abs=1e-9)
    assert b.upper == 1.0


def test_cs_one_of_two_closed_form() -> None:
    # 1 of 2, uniform: M(p) = B(2, 2) / (p (1 - p)) = 1 / (6 p (1 - p)) >= 20  <=>  p (1 - p) <= 1/120.
    b = confidence_sequence(1, 2, alpha=0.05)
    root = math.sqrt(1 - 4 / 120)
    assert b.lower == pytest.approx((1 - root) / 2, abs=1e-9)
    assert b.upper == pytest.approx((1 + root) / 2, abs=1e-9)


def test_cs_with_a_non_uniform_prior() -> None:
    # 1 of 1 under Beta(2, 1): M(p) = [B(3, 1) / B(2, 1)] / p = (2/3) / p >= 1/alpha = 10  <=>  p <= 1/15.
    b = confidence_sequence(1, 1, alpha=0.1, prior=(2.0, 1.0))
    assert b.lower == pytest.approx(1 / 15, abs=1e-9)
    assert b.upper == 1.0


def test_cs_no_data_and_bad_input() -> None:
    assert (confidence_sequence(0, 0).lower, confidence_sequence(0, 0).upper) == (0.0, 1.0)
    with pytest.raises(ValueError):
        confidence_sequence(3, 2)
    with pytest.raises(ValueError):
        prior_for(1.0)


def test_cs_is_wider_than_a_fixed_n_interval() -> None:
    # The price of looking every day: at n = 500 the mixture bound is wider than Wilson's 95 % interval.
    from tiered_mcp.evidence.report import wilson
    b = confidence_sequence(485, 500)
    lo, hi = wilson(485, 500)
    assert b.lower < lo and b.upper > hi
    assert b.lower < 485 / 500 < b.upper


def _first_n_all_agree(bar: float, start: int) -> int:
    # N of N agree, uniform prior: lower = (20 (N + 1))^(-1/N) (as in test_cs_all_agree_closed_form).
    n = start
    while (20 * (n + 1)) ** (-1 / n) < bar:
        n += 1
    return n


def test_comparisons_to_decide_matches_the_closed_form() -> None:
    need = _first_n_all_agree(0.9, 5)
    assert comparisons_to_decide(5, 5, bar=0.9) == need - 5
    # Falling below: 0 of N, upper = 1 - (20 (N + 1))^(-1/N) < 1/2 at the same N as "lower >= 1/2" by symmetry.
    need_low = _first_n_all_agree(0.5, 1)
    assert comparisons_to_decide(0, 1, bar=0.5) == need_low - 1
    assert need_low - 1 > 0


def test_comparisons_to_decide_edges() -> None:
    assert comparisons_to_decide(0, 0, bar=0.9) is None
    assert comparisons_to_decide(9, 10, bar=0.9) is None  # the observed rate is the bar: never decides
    assert comparisons_to_decide(1000, 1000, bar=0.9) == 0
    assert comparisons_to_decide(97, 100, bar=0.95, limit=50) is None


def test_decide_verdicts_and_sentences() -> None:
    d = decide(200, 200, bar=0.9)
    assert d.verdict == "clears" and d.bounds.lower == pytest.approx((20 * 201) ** (-1 / 200), abs=1e-9)
    assert d.text == "100.0% of 200 agree (bounds 95.9-100.0%): clears the 90% bar"
    assert decide(50, 100, bar=0.9).verdict == "below"
    d = decide(96, 100, bar=0.9)
    assert d.verdict == "undecided" and d.more_needed == comparisons_to_decide(96, 100, bar=0.9) > 0
    assert f"about {d.more_needed} more comparisons" in d.text
    d = decide(0, 0, bar=0.9)
    assert d.verdict == "undecided" and d.more_needed is None and d.text.startswith("no comparisons yet")


def test_mcnemar_known_tables() -> None:
    assert mcnemar_exact(1, 6) == pytest.approx(2 * (1 + 7) / 128)  # 0.125
    assert mcnemar_exact(2, 8) == pytest.approx(2 * (1 + 10 + 45) / 1024)  # 0.109375
    assert mcnemar_exact(0, 5) == pytest.approx(2 / 32)
    assert mcnemar_exact(8, 2) == mcnemar_exact(2, 8)
    assert mcnemar_exact(5, 5) == 1.0
    assert mcnemar_exact(0, 0) == 1.0


def test_paired_counts() -> None:
    assert paired_counts([True, True, False, False, True], [True, False, True, False, False]) == (5, 2, 1)
    with pytest.raises(ValueError):
        paired_counts([True], [])


def test_paired_difference_by_hand() -> None:
    # b = 0 of 5 discordant: Clopper-Pearson for theta is [0, 1 - 0.025^(1/5)]; the difference scales by 5/10.
    p = paired_difference(10, 0, 5)
    assert p.difference == pytest.approx(-0.5)
    assert p.interval[0] == pytest.approx(-0.5, abs=1e-9)
    assert p.interval[1] == pytest.approx(0.5 * (2 * (1 - 0.025 ** 0.2) - 1), abs=1e-9)
    assert p.p_value == pytest.approx(0.0625)
    assert paired_difference(10, 0, 0).interval == (0.0, 0.0)
    with pytest.raises(ValueError):
        paired_difference(3, 2, 2)


ROWS = [
    CurveRow(0.2, False, 1.0, 10.0),
    CurveRow(0.4, True, 1.0, 10.0),
    CurveRow(0.4, False, 1.0, 10.0),
    CurveRow(0.6, True, 1.0, 10.0),
    CurveRow(0.8, None, 1.0, 10.0),
    CurveRow(0.9, True, 1.0, 10.0),
]


def test_curve_by_hand() -> None:
    pts = cost_quality_curve(reversed(ROWS))  # order of the rows must not matter
    assert [p.threshold for p in pts] == [0.2, 0.4, 0.6, 0.8, 0.9, math.inf]
    assert [p.escalated_share for p in pts] == pytest.approx([0, 1 / 6, 3 / 6, 4 / 6, 5 / 6, 1])
    assert [p.kept for p in pts] == [6, 5, 3, 2, 1, 0]
    assert [p.scored for p in pts] == [5, 4, 2, 1, 1, 0]
    assert pts[0].kept_agreement == pytest.approx(0.6)
    assert pts[1].kept_agreement == pytest.approx(0.75)
    assert pts[5].kept_agreement is None
    # blended = kept share * kept agreement + escalated share
    assert [p.blended for p in pts] == pytest.approx([0.6, 5 / 6 * 0.75 + 1 / 6, 1.0, 1.0, 1.0, 1.0])
    # cost = cheap cost for every call + escalation cost for the escalated share
    assert [p.cost_per_call for p in pts] == pytest.approx([1, 1 + 10 / 6, 6, 1 + 40 / 6, 1 + 50 / 6, 11])
    # kept bounds by hand: 2 of 2 -> p^2 <= 1/60; 1 of 1 -> p <= 1/40 (uniform prior, alpha 0.05)
    assert pts[2].kept_lower == pytest.approx(math.sqrt(1 / 60), abs=1e-9)
    assert pts[3].kept_lower == pytest.approx(1 / 40, abs=1e-9)
    assert pts[4].blended_lower == pytest.approx(1 / 6 * 1 / 40 + 5 / 6, abs=1e-9)
    assert pts[5].blended_lower == 1.0
    # 3 of 4 -> p^3 (1 - p) <= B(4, 2) / 20 = 1/400
    lo = pts[1].kept_lower
    assert lo ** 3 * (1 - lo) == pytest.approx(1 / 400, abs=1e-12)


def test_pareto_by_hand() -> None:
    front = pareto_frontier(cost_quality_curve(ROWS))
    # 0.8, 0.9 and inf agree no more than 0.6 does (1.0) and cost more: dominated.
    assert [p.threshold for p in front] == [0.2, 0.4, 0.6]


def test_recommend_threshold_by_hand() -> None:
    pts = cost_quality_curve(ROWS)
    # blended lower bounds: 0.6 -> 0.5 + 0.5 * 0.129 = 0.565; 0.8 -> 0.675; 0.9 -> 0.8375; inf -> 1.
    assert recommend_threshold(pts, 0.8).threshold == 0.9
    assert recommend_threshold(pts, 0.9).threshold == math.inf
    # kept basis: 3 of 4 has lower 0.1428 >= 0.12, while 3 of 5 (threshold 0.2) does not reach it.
    assert pts[0].kept_lower < 0.12 <= pts[1].kept_lower
    assert recommend_threshold(pts, 0.12, basis="kept").threshold == 0.4
    assert recommend_threshold([], 0.9) is None


def test_recommend_tier_climbs_one_rung_at_a_time() -> None:
    ladder = ("nano", "mini", "flagship")
    mini_ok = (200, 200)  # lower = (20 * 201)^(-1/200) = 0.9594
    assert confidence_sequence(*mini_ok).lower == pytest.approx((20 * 201) ** (-1 / 200), abs=1e-9)
    c = recommend_tier({"nano": (50, 100), "mini": mini_ok}, ladder, bar=0.9)
    assert c.tier == "mini" and c.next_cheaper == "nano" and c.more_needed is None
    assert recommend_tier({"nano": (50, 100)}, ladder, bar=0.9).tier == "flagship"
    assert recommend_tier({"nano": (1000, 1000), "mini": (0, 0)}, ladder, bar=0.9).tier == "nano"
    c = recommend_tier({"nano": (96, 100), "mini": mini_ok}, ladder, bar=0.9)
    assert c.tier == "mini" and c.more_needed == comparisons_to_decide(96, 100, bar=0.9) and c.more_needed > 0
    assert f"about {c.more_needed} more" in c.reason


def _ever_claims(rate: float, bar: float, n: int, rng: random.Random, check) -> bool:
    k = 0
    for i in range(1, n + 1):
        k += rng.random() < rate
        # lower <= k/i always, so only a rate above the bar can be a claim; skip the rest (speed only).
        if k / i > bar and check(k, i):
            return True
    return False


@pytest.mark.parametrize("prior", [UNIFORM, prior_for(0.95, 20)])
def test_anytime_valid_under_repeated_looks(prior: tuple[float, float]) -> None:
    """True agreement just below the bar, the bound checked after every comparison: it claims the bar rarely."""
    from tiered_mcp.evidence.report import wilson
    runs, n, bar, alpha = 200, 400, 0.95, 0.05
    cs = lambda k, i: confidence_sequence(k, i, alpha, prior).lower >= bar  # noqa: E731
    naive = lambda k, i: wilson(k, i)[0] >= bar  # noqa: E731
    for truth in (0.94, 0.95):
        claims = sum(_ever_claims(truth, bar, n, random.Random(seed), cs) for seed in range(runs))
        assert claims / runs < alpha, (truth, claims)
    # The check has teeth: a fixed-n interval looked at after every comparison claims more often.
    naive_claims = sum(_ever_claims(0.95, bar, n, random.Random(seed), naive) for seed in range(runs))
    cs_claims = sum(_ever_claims(0.95, bar, n, random.Random(seed), cs) for seed in range(runs))
    assert naive_claims > cs_claims


def test_clear_evalue_by_hand() -> None:
    # Two alternatives at bar 0.9: q = 0.925 and 0.975, weight 1/2 each.
    # One agreement: (0.925/0.9 + 0.975/0.9) / 2 = 1.05556.
    assert math.exp(clear_log_evalue(1, 1, 0.9, grid=2)) == pytest.approx((0.925 / 0.9 + 0.975 / 0.9) / 2)
    # 3 of 4: (q/0.9)^3 ((1-q)/0.1) averaged: 0.925 -> 1.08566 * 0.75 = 0.81424; 0.975 -> 1.27141 * 0.25 = 0.31785; mean 0.56605.
    want = ((0.925 / 0.9) ** 3 * 0.075 / 0.1 + (0.975 / 0.9) ** 3 * 0.025 / 0.1) / 2
    assert want == pytest.approx(0.56605, abs=1e-5)
    assert math.exp(clear_log_evalue(3, 4, 0.9, grid=2)) == pytest.approx(want)
    assert clear_log_evalue(0, 0, 0.9) == 0.0
    # Large counts stay finite (log-sum-exp).
    assert math.isfinite(clear_log_evalue(9_700, 10_000, 0.95))


def test_clears_bar_threshold_and_edges() -> None:
    # All agreeing at bar 0.95 (grid 20): E_n = mean_j (q_j/0.95)^n first reaches 20 at n = 88.
    qs = [0.95 + 0.05 * (j - 0.5) / 20 for j in range(1, 21)]
    assert sum((q / 0.95) ** 87 for q in qs) / 20 < 20 <= sum((q / 0.95) ** 88 for q in qs) / 20
    assert not clears_bar(87, 87, 0.95) and clears_bar(88, 88, 0.95)
    # At or under the bar every likelihood ratio is below 1: it never clears, however many comparisons.
    assert not clears_bar(95_000, 100_000, 0.95) and not clears_bar(90, 100, 0.95)
    with pytest.raises(ValueError):
        clears_bar(5, 4, 0.95)
    with pytest.raises(ValueError):
        clears_bar(1, 1, 1.0)


def test_comparisons_to_clear_is_the_least_m() -> None:
    assert comparisons_to_clear(88, 88, 0.95) == 0
    assert comparisons_to_clear(0, 0, 0.95) is None and comparisons_to_clear(95, 100, 0.95) is None
    m = comparisons_to_clear(50, 50, 0.95)
    assert m == 88 - 50  # all agreeing keeps agreeing: 88 in all
    m = comparisons_to_clear(97, 100, 0.95)
    assert m is not None
    p = 0.97
    need = math.log(20)
    assert clear_log_evalue(97 + p * m, 100 + m, 0.95) >= need > clear_log_evalue(97 + p * (m - 1), 99 + m, 0.95)
    # A projected rate given explicitly: 99 % clears sooner than the observed 97 %.
    fast = comparisons_to_clear(97, 100, 0.95, rate=0.99)
    assert fast is not None and fast < m
    assert comparisons_to_clear(97, 100, 0.95, rate=0.95) is None


def _first_clear(rate: float, n: int, rng: random.Random, check) -> int | None:
    k = 0
    for i in range(1, n + 1):
        k += rng.random() < rate
        if k / i > 0.95 and check(k, i):  # at or under the bar neither test can clear (speed only)
            return i
    return None


def test_the_step_down_test_holds_its_level_under_repeated_looks() -> None:
    """The simulated false step-down rate: the true rate at or just under the bar, the test checked after every
    comparison for 1,000 comparisons, over 300 runs: it clears in at most alpha of them (here well under)."""
    runs, n, alpha = 300, 1000, 0.05
    test = lambda k, i: clears_bar(k, i, 0.95, alpha)  # noqa: E731
    for truth in (0.95, 0.94):
        claims = sum(_first_clear(truth, n, random.Random(seed), test) is not None for seed in range(runs))
        assert claims / runs <= alpha, (truth, claims)
    # The check has teeth: the best single alternative picked after seeing the data (the largest likelihood ratio
    # on the same grid instead of their fixed average) is not an e-process, and it claims more often than alpha.
    grid = [0.95 + 0.05 * (j - 0.5) / 20 for j in range(1, 21)]
    picked = lambda k, i: max(k * math.log(q / 0.95) + (i - k) * math.log((1 - q) / 0.05)  # noqa: E731
                              for q in grid) >= math.log(1 / alpha)
    claims = sum(_first_clear(0.95, n, random.Random(seed), picked) is not None for seed in range(runs))
    assert claims / runs > alpha


def test_the_step_down_test_clears_a_good_tier_sooner_than_the_two_sided_bound() -> None:
    prior = prior_for(0.95, 20)
    two_sided = lambda k, i: confidence_sequence(k, i, 0.05, prior).lower >= 0.95  # noqa: E731
    one_sided = lambda k, i: clears_bar(k, i, 0.95, 0.05)  # noqa: E731
    for truth in (0.99, 0.97):
        a = [_first_clear(truth, 2000, random.Random(seed), one_sided) or 2000 for seed in range(15)]
        b = [_first_clear(truth, 2000, random.Random(seed), two_sided) or 2000 for seed in range(15)]
        assert sum(a) < sum(b), truth
