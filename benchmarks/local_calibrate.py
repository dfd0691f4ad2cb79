"""Fit the local classifier's confidence model (and choose its label prior) on the calibration sets only.

Run: LOCAL_BENCH_CACHE=/tmp/bench python benchmarks/local_calibrate.py [--n 600] [--encoder e5 --skip-prior]
Prints LABEL_PRIOR for local_tasks.py and COEFFICIENTS for local_calibration.py, fitted on movies, chatterbot-a,
aclsum-train, reuters-train and newsgroups-train (local_data.CALIBRATION); local_eval.py reports on the other sets.
Texts are read and labels embedded as classify does (local_tasks.read_text, label_vectors).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "src"))
sys.path.insert(0, str(ROOT))

import local_data  # noqa: E402
import numpy as np  # noqa: E402
from local_eval import run_mode  # noqa: E402

PRIORS = (0.5, 1.0, 2.0, 4.0, 8.0)


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-3, steps: int = 100) -> np.ndarray:
    """Maximum-likelihood logistic regression by Newton steps, with a small ridge on standardised features.

    The ridge acts on features scaled to unit variance (a margin's spread is ~0.03 cosine, so a ridge on raw weights
    would flatten it), and the weights are mapped back to the raw features.
    """
    scale = x.std(axis=0)
    scale[0] = 1.0
    scale[scale == 0] = 1.0
    x = x / scale
    w = fit_raw(x, y, l2, steps)
    return w / scale


def fit_raw(x: np.ndarray, y: np.ndarray, l2: float, steps: int) -> np.ndarray:
    w = np.zeros(x.shape[1])
    ridge = np.full(x.shape[1], l2 * len(y))
    ridge[0] = 0.0
    for _ in range(steps):
        p = 1 / (1 + np.exp(-(x @ w)))
        grad = x.T @ (p - y) + ridge * w
        hess = (x * (p * (1 - p))[:, None]).T @ x + np.diag(ridge)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=600)
    parser.add_argument("--encoder", default="use", choices=["use", "e5"])
    parser.add_argument("--skip-prior", action="store_true", help="only fit the coefficients")
    args = parser.parse_args()
    from tiered_mcp.models.embedder import make_embedder

    embedder = make_embedder(args.encoder)
    embedder.load()
    sets = [local_data.labelled(name, args.n) for name in local_data.CALIBRATION]

    print("label prior (accuracy with 8 examples per label, mean of 3 draws, calibration sets):")
    best_prior, best_acc = None, -1.0
    for prior in () if args.skip_prior else PRIORS:
        accs = []
        for data in sets:
            for seed in range(3):
                rows = run_mode(embedder, data, bool(data.descriptions), 8, seed, prior=prior)
                accs.append(sum(c for _, c, *_ in rows) / len(rows))
        acc = float(np.mean(accs))
        print(f"  prior {prior:4.1f}: {acc:.1%}")
        if acc > best_acc:
            best_prior, best_acc = prior, acc
    print(f"LABEL_PRIOR = {best_prior}  (local_tasks.py must hold this value before fitting the coefficients)")

    zero, examples = ([], []), ([], [])
    for data in sets:
        for described in sorted({False, bool(data.descriptions)}):
            for f, c, *_ in run_mode(embedder, data, described, 0):
                zero[0].append(f)
                zero[1].append(c)
        for k in (8, 32, 128):
            for seed in range(3):
                for f, c, *_ in run_mode(embedder, data, bool(data.descriptions), k, seed):
                    examples[0].append(f)
                    examples[1].append(c)
    prefix = "" if args.encoder == "use" else f"{args.encoder.upper()}_"
    for name, (feats, ys) in ((f"{prefix}ZERO_SHOT_COEFFICIENTS", zero), (f"{prefix}EXAMPLE_COEFFICIENTS", examples)):
        x, y = np.array(feats), np.array(ys, dtype=float)
        w = fit_logistic(x, y)
        # d(logit)/d(margin) must be positive: for the example model it is w1 + w6 * agreement, agreement in 0..1.
        slopes = [w[1]] if len(w) == 4 else [w[1], w[1] + w[6]]
        print(f"{name}: fitted on {len(y)} rows ({y.mean():.1%} correct); d(logit)/d(margin) "
              + ", ".join(f"{s:.1f}" for s in slopes) + ("" if min(slopes) > 0 else "  WARNING: not increasing"))
        print(f"{name} = (" + ", ".join(f"{v:.4f}" for v in w) + ")")


if __name__ == "__main__":
    main()
