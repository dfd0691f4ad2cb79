"""How close two answers of the same tool are, 0..1, for shadow comparisons and bake-offs.

The method comes from the spec's `compare` block: `label` (equality of a field, or of label sets), `fields`
(field-level equality under a property), `rank` (Spearman rank correlation of item order), `judge` (a model scores
the candidate against the reference with the spec's rubric; done by the caller, see shadow.py).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Method = Literal["label", "fields", "rank", "judge"]


class Compare(BaseModel):
    """How a spec's answers are compared."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Method
    field: str | None = Field(default=None, description="label: the field compared; fields: the object compared; "
                                                          "rank: the array of {index} items.")
    rubric: str | None = Field(default=None, description="judge: what a good answer does, for the judge model.")
    agree_at: float = Field(default=0.8, ge=0, le=1, description="A score at or above this counts as agreement.")


def _norm(value: Any) -> Any:
    if isinstance(value, str):
        return " ".join(value.casefold().split())
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_norm(v) for v in value]
    if isinstance(value, dict):
        return {k: _norm(v) for k, v in value.items()}
    return value


def label_score(a: Any, b: Any) -> float:
    """1.0 when equal; for lists (multi-label), the Jaccard overlap of the two sets."""
    if isinstance(a, list) and isinstance(b, list):
        sa, sb = {repr(_norm(x)) for x in a}, {repr(_norm(x)) for x in b}
        return 1.0 if not sa and not sb else len(sa & sb) / len(sa | sb)
    return 1.0 if _norm(a) == _norm(b) else 0.0


def fields_score(a: Any, b: Any) -> float:
    """The share of fields (in either object) whose values are equal, after normalising case and spacing."""
    if not isinstance(a, dict) or not isinstance(b, dict):
        return label_score(a, b)
    keys = set(a) | set(b)
    if not keys:
        return 1.0
    return sum(1 for k in keys if k in a and k in b and _norm(a[k]) == _norm(b[k])) / len(keys)


def rank_score(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> float:
    """Spearman correlation of the two orders over the items both ranked, mapped from -1..1 to 0..1."""
    ra = {r["index"]: i for i, r in enumerate(a)}
    rb = {r["index"]: i for i, r in enumerate(b)}
    common = [k for k in ra if k in rb]
    n = len(common)
    if n == 0:
        return 0.0
    if n == 1:
        return 1.0 if a[0]["index"] == b[0]["index"] else 0.0
    # Re-rank within the common items so both orders are permutations of 0..n-1.
    pa = {k: i for i, k in enumerate(sorted(common, key=ra.__getitem__))}
    pb = {k: i for i, k in enumerate(sorted(common, key=rb.__getitem__))}
    d2 = sum((pa[k] - pb[k]) ** 2 for k in common)
    rho = 1 - 6 * d2 / (n * (n * n - 1))
    return (rho + 1) / 2


def score(compare: Compare, candidate: dict[str, Any], reference: dict[str, Any]) -> float:
    """How close `candidate` is to `reference` (1.0 = the same), for every method but judge."""
    a: Any = candidate.get(compare.field) if compare.field else candidate
    b: Any = reference.get(compare.field) if compare.field else reference
    if compare.method == "label":
        return label_score(a, b)
    if compare.method == "fields":
        return fields_score(a, b)
    if compare.method == "rank":
        return rank_score(a or [], b or [])
    raise ValueError("judge scores need a model call; see shadow.judge")
