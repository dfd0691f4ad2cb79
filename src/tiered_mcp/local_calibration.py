"""Confidence for the local classifier: a logistic model of P(answer is right) from the label scores.

Features of one text (cosines to each label's vector, or to each label's prototype when it has examples):
the margin between the best two, the best cosine itself, the number of labels and, with examples, how many the
scarcest label has and how many of the text's nearest examples agree with the chosen label. Zero-shot and
example-based answers have a model each. Coefficients are fitted by `benchmarks/local_calibrate.py` on its calibration sets only
(the movie-review sentences, the ACLSum train split and half of the chatterbot corpus; see docs/local-tier.md),
never on the sets `benchmarks/local_eval.py` reports on.

Both models are increasing in the margin (the fit is checked for that, and a test holds it), so a wider lead never
reads as less sure, and the example model is increasing in the neighbours' agreement.
"""

from __future__ import annotations

import math

__all__ = ["EXAMPLE_COEFFICIENTS", "ZERO_SHOT_COEFFICIENTS", "confidence", "features"]

# Zero-shot: (bias, margin, top, log labels). With examples: the same, then log1p(examples of the scarcest label),
# the share of the 10 nearest examples that carry the chosen label, and that share times the margin.
# Fitted by: python benchmarks/local_calibrate.py  (USE multilingual v3; see that script for the data).
ZERO_SHOT_COEFFICIENTS = (0.3236, 2.1146, 1.2155, -0.2712)
EXAMPLE_COEFFICIENTS = (-1.9164, 2.8098, 0.8924, 0.7719, 0.1129, 1.9042, 2.0070)


def features(
    margin: float, top: float, n_labels: int, min_examples: int = 0, agreement: float | None = None
) -> tuple[float, ...]:
    """The calibration features of one classified text.

    Args:
        margin: best score minus the second best (cosine units).
        top: the best score.
        n_labels: how many labels were offered.
        min_examples: examples of the label that has the fewest.
        agreement: share of the nearest examples that carry the chosen label; None when zero-shot.
    """
    base = (1.0, margin, top, math.log(max(2, n_labels)))
    if agreement is None:
        return base
    return (*base, math.log1p(max(0, min_examples)), agreement, agreement * margin)


def confidence(
    margin: float, top: float, n_labels: int, min_examples: int = 0, agreement: float | None = None
) -> float:
    """P(the best label is right), by the fitted logistic model; between 0 and 1."""
    x = features(margin, top, n_labels, min_examples, agreement)
    weights = ZERO_SHOT_COEFFICIENTS if agreement is None else EXAMPLE_COEFFICIENTS
    z = sum(w * v for w, v in zip(weights, x))
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)
