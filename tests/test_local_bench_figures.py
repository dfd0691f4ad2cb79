"""The figures the local-tier docs quote (AUROC, ECE, escalated share, kept accuracy), against hand computations."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("numpy")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import local_eval  # noqa: E402


def test_auroc_is_the_share_of_right_wrong_pairs_ranked_right_with_ties_half() -> None:
    # Right answers at 0.9, 0.6, 0.4; wrong at 0.6, 0.2. Pairs (right, wrong): (0.9, 0.6) 1, (0.9, 0.2) 1,
    # (0.6, 0.6) 1/2, (0.6, 0.2) 1, (0.4, 0.6) 0, (0.4, 0.2) 1 -> 4.5 of 6.
    scores = [0.9, 0.6, 0.4, 0.6, 0.2]
    correct = [True, True, True, False, False]
    assert local_eval.auroc(scores, correct) == pytest.approx(4.5 / 6)
    assert local_eval.auroc([0.1, 0.9], [True, False]) == 0.0
    assert local_eval.auroc([0.5, 0.5], [True, True]) != local_eval.auroc([0.5, 0.5], [True, True])  # nan: no wrong


def test_ece_weighs_each_bins_gap_between_confidence_and_accuracy_by_its_share() -> None:
    # Bin [0.9, 1.0]: 0.95, 0.95 with one right -> |0.95 - 0.5| = 0.45, share 2/4. Bin [0.2, 0.3): 0.25, 0.25, both
    # wrong -> |0.25 - 0| = 0.25, share 2/4. ECE = 0.5 * 0.45 + 0.5 * 0.25 = 0.35.
    assert local_eval.ece([0.95, 0.95, 0.25, 0.25], [True, False, False, False]) == pytest.approx(0.35)
    assert local_eval.ece([1.0, 1.0], [True, True]) == pytest.approx(0.0)  # 1.0 falls in the last bin


def test_escalated_share_and_kept_accuracy_follow_the_threshold() -> None:
    rows = [((), True), ((), False), ((), True), ((), True)]
    stats = local_eval.summarize_rows(rows, [0.9, 0.7, 0.3, 0.59])  # 0.3 and 0.59 are under 0.6: escalated
    assert stats["escalated"] == pytest.approx(0.5)
    assert stats["kept_acc"] == pytest.approx(0.5)  # kept: 0.9 (right), 0.7 (wrong)
    assert stats["acc"] == pytest.approx(0.75)
