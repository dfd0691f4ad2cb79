"""How long the drift alarm takes, by guard share and alert rate (docs/auto-tiering.md, "Why the cost goal...").

A tool on nano with ample evidence (1,000 of 1,000 agreeing) meets a silent release that drops nano to 75 %
agreement. Each run drives the real `Policy` (plan, then observe the guarded comparisons), with its own seeded
draws, and counts the calls nano serves until the step up (capped at 2,000). Printed per setting: the share of runs
past 300 calls, the median and the 95th percentile. Costs as in autotier_sim.py (nano $220e-6, flagship $2,700e-6).

With a sentinel set (the last rows), calls also replay kept items on nano at the policy's replay rate (5.6 %) and
on every call while the detector is up; guard reruns come at guard_share * (2700 - 220) / 2700.

    python benchmarks/drift_delay.py [--runs 1000]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from tiered_mcp.evidence.autotier import AutoTierConfig, Policy, ToolState, Versions  # noqa: E402

COSTS = {"nano": 220e-6, "mini": 810e-6, "flagship": 2700e-6}
V = Versions(models={"nano": "n", "mini": "m", "flagship": "f"}, spec_version="1")
DRIFTED, CAP = 0.75, 2000


SET = 128
"""With a sentinel set: its size. Every item is one nano agreed on before the release (the ones replayed); after
it, each is answered afresh, agreeing with a chance of 75 % fixed per item (a deterministic model)."""


def delay(config: AutoTierConfig, seed: int) -> int:
    rng = random.Random(seed)
    policy = Policy(config, sample=lambda s: rng.random(), clock=lambda: datetime(2026, 12, 1, tzinfo=timezone.utc))
    state = ToolState(tool="t", tier="nano", evidence={V.key("nano"): (1000, 1000), V.key("mini"): (1000, 1000)},
                      set_key=V.key("flagship"), set_size=SET if config.sentinel_set else 0)
    items = [rng.random() < DRIFTED for _ in range(SET)]
    for calls in range(1, CAP + 1):
        state, plan, _ = policy.plan(state, f"k{seed}-{calls}", V, COSTS)
        verdicts = {"nano": rng.random() < DRIFTED} if plan.reference else {}
        replayed = items[int(plan.replay * SET)] if plan.replay is not None else None
        state, events = policy.observe(state, plan, verdicts, V, plan.cost, COSTS, replayed)
        if any(e.kind == "step_up" for e in events):
            return calls
    return CAP


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1000)
    args = ap.parse_args()
    print(f"nano drops to {DRIFTED:.0%}; {args.runs} runs per setting; rerun rate on nano = guard_share * "
          "(2700 - 220) / 2700, sentinels included")
    settings = [(alert, share, 0) for alert in (0.25, 1.0) for share in (0.04, 0.05, 0.06, 0.072)]
    settings += [(1.0, share, SET) for share in (0.0, 0.01)]
    for alert, share, size in settings:
        config = AutoTierConfig(guard_share=share, alert_rate=alert, sentinel_set=size)
        t0, c0 = time.perf_counter(), time.process_time()
        ds = sorted(delay(config, seed) for seed in range(args.runs))
        took, cpu = time.perf_counter() - t0, time.process_time() - c0
        late = sum(d > 300 for d in ds) / len(ds)
        print(f"alert_rate {alert:<4} guard_share {share:<5} sentinel_set {size:<3} "
              f"(reruns {share * 2480 / 2700:.1%} of calls): "
              f"> 300 calls in {late:5.1%}  median {statistics.median(ds):5.0f}  p95 {ds[int(0.95 * len(ds))]:5d}"
              f"   wall {took:5.1f} s  cpu {cpu:5.1f} s  load {os.getloadavg()[0]:.1f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
