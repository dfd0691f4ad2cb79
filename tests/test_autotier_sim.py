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
    # 40 calls over four tools: no tier has the 88 all-agreeing comparisons a step down needs, so every call is
    # served on the flagship (600 in, 80 out: 600 * 2.50 / 1e6 + 80 * 15 / 1e6 = $0.0027) and probes nano
    # ($0.00022) and mini ($0.00081).
    r = sim.run_through_runner(1, calls=40, drift_at=20)
    assert r.serving == pytest.approx(40 * 0.0027)
    assert r.evidence == pytest.approx(40 * (0.00022 + 0.00081))
    assert r.cost == pytest.approx(0.108 + 0.0412)
    assert r.cheaper == pytest.approx(1 - 0.1492 / 0.108)  # dearer than all-flagship while it learns
    assert r.disagree == 0 and r.switches == [] and r.delay is None
    assert r.static_nano_cost == pytest.approx(40 * 0.00022)


def test_the_breakdown_adds_up_to_the_gap_to_the_oracle_by_hand() -> None:
    sim = load_sim()
    r = sim.run_through_runner(1, calls=40, drift_at=20)
    # The same tool draws as the run: one rng.choice per call from random.Random(seed).
    import random

    rng = random.Random(1)
    tools = [sim.TOOL_NAMES[rng.choice(list(sim.NANO))] for _ in range(40)]
    # The oracle serves tool97 (classify) and tool99 (rank) on nano, the others on mini; after the release at
    # call 20, tool97 on mini: nano $0.00022, mini $0.00081 a call.
    oracle = {name: 0.0 for name in sim.TOOL_NAMES.values()}
    for i, name in enumerate(tools):
        nano = name == "tool99" or (name == "tool97" and i < 20)
        oracle[name] += 0.00022 if nano else 0.00081
    assert r.oracle == pytest.approx(sum(oracle.values()))
    for name in sim.TOOL_NAMES.values():
        n = tools.count(name)
        # Every call is on the flagship proving a tier ($0.0027 a call above the oracle's tier) and probes nano
        # and mini ($0.00103).
        assert r.parts.get((sim.PARTS[0], name), 0.0) == pytest.approx(n * 0.0027 - oracle[name])
        assert r.parts.get((sim.PARTS[5], name), 0.0) == pytest.approx(n * 0.00103)
    assert set(part for part, _ in r.parts) == {sim.PARTS[0], sim.PARTS[5]}
    assert sum(r.parts.values()) == pytest.approx(r.cost - r.oracle)


def test_a_sentinel_set_replay_in_the_policy_only_run() -> None:
    sim = load_sim()
    items = [(3, {"nano": False, "mini": True}), (7, {"nano": True, "mini": True})]
    # Only item 7 agreed on nano when it was kept: it is the one replayed, whatever the draw.
    assert sim.replay(1, "classify", "nano", items, 0.99, released=False) is True  # the model has not changed
    assert sim.replay(1, "classify", "nano", [(3, {"nano": False})], 0.5, released=False) is None
    # After the release classify's nano is a fresh draw per item against 75 %: the hash of seed, tool, tier, item.
    draw = sim.hash_sample("1:replay:classify:nano:7")
    assert sim.replay(1, "classify", "nano", items, 0.0, released=True) is (draw < 0.75)
    # Other tools' nano did not change with the release: a replay keeps agreeing.
    assert sim.replay(1, "rank", "nano", items, 0.0, released=True) is True
    # An item with no baseline on the tier gets one from its first replay, which gives no verdict.
    fresh = [(9, {"mini": True})]
    assert sim.replay(1, "rank", "nano", fresh, 0.0, released=False) is None
    assert fresh[0][1]["nano"] is (sim.hash_sample("1:replay:rank:nano:9:before") < 0.99)
