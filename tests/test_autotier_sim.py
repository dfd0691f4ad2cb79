"""The simulation's figures through the runner, on a workload small enough to compute by hand."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_sim():
    spec = importlib.util.spec_from_file_location("autotier_sim", ROOT / "benchmarks" / "autotier_sim.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("autotier_sim", module)
    spec.loader.exec_module(module)
    return module


def test_the_cold_start_costs_what_a_hand_computation_says() -> None:
    sim = load_sim()
    # 40 calls over four tools: no tier has the 93 all-agreeing comparisons a step down needs, so every call is
    # served on the flagship (600 in, 80 out: 600 * 2.50 / 1e6 + 80 * 15 / 1e6 = $0.0027) and probes nano
    # ($0.00022) and mini ($0.00081).
    r = sim.run_through_runner(1, calls=40, drift_at=20)
    assert r.serving == pytest.approx(40 * 0.0027)
    assert r.evidence == pytest.approx(40 * (0.00022 + 0.00081))
    assert r.cost == pytest.approx(0.108 + 0.0412)
    assert r.cheaper == pytest.approx(1 - 0.1492 / 0.108)  # dearer than all-flagship while it learns
    assert r.disagree == 0 and r.switches == [] and r.delay is None
    assert r.static_nano_cost == pytest.approx(40 * 0.00022)
