"""How many comparisons the step-down test needs, against the two-sided bounds (docs/auto-tiering.md).

For each true agreement rate, 150 seeded Bernoulli streams; each test is checked after every comparison, and the
comparison at which it first claims "above the bar" is recorded (up to 4,000). The step-down test is
stats.clears_bar; the two-sided one is stats.confidence_sequence's lower bound with the auto-tiering prior.
At 0.95 and 0.94 (at or under the bar) the share of streams that ever claim is the false step-down rate.

    python benchmarks/step_down_power.py
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from tiered_mcp.evidence.stats import clears_bar, confidence_sequence, prior_for  # noqa: E402

BAR, ALPHA, STREAMS, LIMIT = 0.95, 0.05, 150, 4000
PRIOR = prior_for(BAR, 20)
TESTS = {
    "step-down test (clears_bar)": lambda k, n: clears_bar(k, n, BAR, ALPHA),
    "two-sided lower bound": lambda k, n: confidence_sequence(k, n, ALPHA, PRIOR).lower >= BAR,
}


def first_claim(rate: float, seed: int, test) -> int | None:
    rng, k = random.Random(seed), 0
    for n in range(1, LIMIT + 1):
        k += rng.random() < rate
        if k / n > BAR and test(k, n):  # at or under the bar neither can claim (speed only)
            return n
    return None


def main() -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()  # no options: --help says what it is
    print(f"bar {BAR}, alpha {ALPHA}, {STREAMS} streams per rate, up to {LIMIT} comparisons")
    for rate in (0.99, 0.97, 0.95, 0.94):
        for name, test in TESTS.items():
            t0, c0 = time.perf_counter(), time.process_time()
            ns = [first_claim(rate, seed, test) for seed in range(STREAMS)]
            hit = [n for n in ns if n is not None]
            took, cpu = time.perf_counter() - t0, time.process_time() - c0
            if rate > BAR:
                filled = sorted(n or LIMIT for n in ns)
                figure = (f"median {statistics.median(filled):.0f}  mean {statistics.fmean(filled):.0f}  "
                          f"p90 {filled[int(0.9 * len(filled))]}")
            else:
                figure = f"claimed in {len(hit)}/{STREAMS} = {len(hit) / STREAMS:.1%} (must be <= {ALPHA:.0%})"
            print(f"rate {rate}  {name:<28} {figure:<44} wall {took:5.1f} s  cpu {cpu:5.1f} s  "
                  f"load {os.getloadavg()[0]:.1f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
