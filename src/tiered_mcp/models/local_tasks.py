"""The local tier's tools, computed from sentence embeddings alone: classify, rank and an extractive summarize.

Each function takes an embedder (anything with `embed(list[str]) -> array (n, d)`) and returns a plain dict in the
shape of the tool's output schema. Nothing here loads a model or keeps state; numpy is imported when a call needs it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "SupportsEmbed",
    "classify",
    "classify_many",
    "label_texts",
    "label_vectors",
    "prototypes",
    "rank",
    "read_text",
    "split_sentences",
    "summarize",
]

# Temperature of the multi-label softmax over label cosines (cosine units), fitted on the 90 hand-made cases of
# benchmarks/data/local_classify_eval.jsonl. Single-label confidence no longer uses it (see local_calibration).
TEMPERATURE = 0.05
# Multi-label keeps every label whose score reaches this: the label's softmax share for the whole text, or for one
# sentence weighted by that sentence's cosine to the whole. Best of 0.2 to 0.5 on 17 hand-made multi-label cases.
DEFAULT_THRESHOLD = 0.3
# With examples, a label's prototype is the sum of its examples' unit vectors plus the label's own vector counted as
# this many examples: a few examples nudge the zero-shot answer, many outweigh it. Chosen on the calibration sets
# by benchmarks/local_calibrate.py (accuracy at 8 examples per label, among 0.5, 1, 2, 4, 8; 4 since the topic train
# splits joined the calibration sets, 2 before).
LABEL_PRIOR = 4.0
# Extractive summary: a sentence's score is its cosine to the document's centre (pulled toward `focus` with this
# weight) plus LEAD_BONUS / (1 + position / LEAD_SPAN). Tuned on the ACLSum train split, reported on its test split
# (benchmarks/local_text.py).
FOCUS_WEIGHT = 2.0
# rank: the weight of the BM25 score beside the embedding cosine (tuned in benchmarks/local_text.py on ACLSum train).
LEXICAL_WEIGHT = 0.3
LEAD_BONUS = 0.4
LEAD_SPAN = 10.0
# With examples, confidence also weighs how many of a text's nearest examples carry the label it was given.
NEIGHBOURS = 10
# How a label is put to the encoder: the texts (str.format with {label}, and {description} where the caller gives
# one) whose unit vectors are averaged into the label's vector. Chosen on the train sets by
# benchmarks/local_reading.py (docs/local-tier.md, "Reading labels and long texts"): both won on all six choosing
# sets (bare: +0.1 to +6.0 points over the label alone; described: +1.5 to +4.8 over "label: description").
LABEL_TEMPLATES = ("{label}", "This article is about {label}.")
DESCRIBED_TEMPLATES = ("This article is about {label}: {description}.",)
# classify reads at most this many words of a text (None: all of it); chosen by the same benchmark.
LEAD_WORDS: int | None = None


class SupportsEmbed(Protocol):
    """What the local tasks need from an embedder."""

    def embed(self, texts: list[str]) -> np.ndarray: ...


def _unit(vectors: np.ndarray) -> np.ndarray:
    import numpy as np

    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


def label_texts(label: str, description: str | None = None) -> list[str]:
    """The texts a label is embedded as (their unit vectors are averaged): LABEL_TEMPLATES, or DESCRIBED_TEMPLATES
    where the caller describes the label. A description's own final full stop is dropped (the template ends it).
    """
    described = (description or "").strip().rstrip(".").strip()
    if described:
        return [form.format(label=label, description=described) for form in DESCRIBED_TEMPLATES]
    return [form.format(label=label) for form in LABEL_TEMPLATES]


def label_vectors(
    embedder: SupportsEmbed, labels: Sequence[str], descriptions: dict[str, str] | None = None,
    extra: Sequence[str] = (),
) -> tuple[np.ndarray, np.ndarray]:
    """The labels' unit vectors (the mean of their `label_texts`' unit vectors), in one embed call with `extra`.

    Returns:
        ((k, d) label vectors, (len(extra), d) unit vectors of the extra texts).
    """
    import numpy as np

    descriptions = descriptions or {}
    forms = [label_texts(label, descriptions.get(label)) for label in labels]
    flat = [text for texts in forms for text in texts]
    vectors = _unit(embedder.embed(flat + list(extra)))
    owner = np.repeat(np.arange(len(forms)), [len(texts) for texts in forms])
    sums = np.zeros((len(forms), vectors.shape[1]), dtype=np.float32)
    np.add.at(sums, owner, vectors[: len(flat)])
    return _unit(sums), vectors[len(flat) :]


_DEFAULT_LEAD: Any = object()


def read_text(text: str, max_words: int | None = _DEFAULT_LEAD) -> str:
    """What classify embeds of a text: its first `max_words` words (default LEAD_WORDS; None: the whole text).

    A text within the limit is returned unchanged.
    """
    limit = LEAD_WORDS if max_words is _DEFAULT_LEAD else max_words
    if limit is None:
        return text
    words = text.split()
    return text if len(words) <= limit else " ".join(words[:limit])


def _softmax(similarities: np.ndarray) -> np.ndarray:
    import numpy as np

    z = (similarities - similarities.max(axis=-1, keepdims=True)) / TEMPERATURE
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _check_labels(labels: Sequence[str]) -> None:
    if len(labels) < 2:
        raise ValueError("classify needs at least two labels")
    if len(set(labels)) != len(labels):
        raise ValueError("labels must be unique")


def _decide(
    label_names: Sequence[str],
    similarities: np.ndarray,
    sentence_scores: np.ndarray | None,
    multi_label: bool,
    threshold: float,
    sure: float,
    n_examples: int,
) -> dict[str, object]:
    import numpy as np

    order = np.argsort(-similarities, kind="stable")
    best, second = int(order[0]), int(order[1])
    margin = float(similarities[best] - similarities[second])
    basis = f"nearest to {label_names[best]!r}" + (f" among {n_examples} labelled examples" if n_examples else "")
    reason = f"{basis} (cosine {similarities[best]:.2f}), {margin:.3f} ahead of {label_names[second]!r}"
    chosen = [label_names[best]]
    if multi_label:
        scores = _softmax(similarities)
        if sentence_scores is not None:
            scores = np.maximum(scores, sentence_scores.max(axis=0))
        chosen += [label_names[i] for i in order[1:] if scores[i] >= threshold]
        if len(chosen) > 1:
            reason += f"; also above the {threshold:g} threshold: {', '.join(chosen[1:])}"
    return {"label": label_names[best], "labels": chosen, "confidence": round(sure, 4), "reason": reason}


def prototypes(
    label_vectors: np.ndarray,
    labels: Sequence[str],
    example_vectors: np.ndarray | None,
    example_labels: Sequence[str],
    prior: float | None = None,
) -> tuple[np.ndarray, int]:
    """Each label's vector pulled toward its examples (nearest-centroid classification with a zero-shot prior).

    Args:
        label_vectors: (k, d) unit vectors of the label texts.
        labels: the k labels, in the same order.
        example_vectors: (n, d) unit vectors of labelled examples, or None.
        example_labels: the n examples' labels; examples whose label is not in `labels` are ignored.
        prior: how many examples the label's own vector counts as (default LABEL_PRIOR).

    Returns:
        (k, d) unit prototypes, and the example count of the label with the fewest.
    """
    import numpy as np

    if example_vectors is None or not len(example_labels):
        return label_vectors, 0
    prior = LABEL_PRIOR if prior is None else prior
    index = {label: i for i, label in enumerate(labels)}
    sums = label_vectors * prior
    counts = np.zeros(len(labels), dtype=np.int64)
    for vector, label in zip(example_vectors, example_labels):
        i = index.get(label)
        if i is not None:
            sums[i] += vector
            counts[i] += 1
    return _unit(sums), int(counts.min())


def neighbour_agreement(
    text_vectors: np.ndarray,
    predicted: Sequence[str],
    example_vectors: np.ndarray,
    example_labels: Sequence[str],
    k: int = NEIGHBOURS,
) -> np.ndarray:
    """For each text, the share of its k nearest examples whose label is the predicted one (0..1)."""
    import numpy as np

    k = min(k, len(example_labels))
    sims = text_vectors @ example_vectors.T
    nearest = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    names = np.asarray(list(example_labels), dtype=object)
    return np.array([float(np.mean(names[row] == label)) for row, label in zip(nearest, predicted)])


def score_texts(
    text_vectors: np.ndarray,
    label_vectors: np.ndarray,
    labels: Sequence[str],
    example_vectors: np.ndarray | None = None,
    example_labels: Sequence[str] = (),
    calibration: str = "use",
) -> dict[str, Any]:
    """Scores behind a classification: cosines to each label's prototype, the best label, its confidence.

    `calibration` names the encoder whose fitted confidence model applies (an embedder's `calibration` attribute).

    Returns:
        {"similarities": (n, k), "best": (n,) label indices, "margin", "top": (n,), "min_examples": int,
        "agreement": (n,) or None, "confidence": (n,) calibrated P(right)}.
    """
    import numpy as np

    from tiered_mcp.models.local_calibration import confidence

    protos, min_examples = prototypes(label_vectors, labels, example_vectors, example_labels)
    similarities = text_vectors @ protos.T
    ordered = np.sort(similarities, axis=1)
    top, margin = ordered[:, -1], ordered[:, -1] - ordered[:, -2]
    best = np.argmax(similarities, axis=1)
    agreement = None
    if example_vectors is not None and len(example_labels):
        agreement = neighbour_agreement(text_vectors, [labels[i] for i in best], example_vectors, example_labels)
    sure = np.array([
        confidence(float(m), float(t), len(labels), min_examples, None if agreement is None else float(agreement[i]),
                   calibration)
        for i, (m, t) in enumerate(zip(margin, top))
    ])
    return {"similarities": similarities, "prototypes": protos, "best": best, "margin": margin, "top": top,
            "min_examples": min_examples, "agreement": agreement, "confidence": sure}


def _check_examples(examples: Sequence[dict[str, str]] | None, labels: Sequence[str]) -> list[dict[str, str]]:
    examples = list(examples or [])
    known = set(labels)
    for example in examples:
        if example.get("label") not in known:
            raise ValueError(f"example label {example.get('label')!r} is not one of the labels")
        if not str(example.get("text", "")).strip():
            raise ValueError("an example's text is empty")
    return examples


def classify_many(
    embedder: SupportsEmbed,
    texts: Sequence[str],
    labels: Sequence[str],
    descriptions: dict[str, str] | None = None,
    multi_label: bool = False,
    threshold: float | None = None,
    examples: Sequence[dict[str, str]] | None = None,
    stored: tuple[np.ndarray, Sequence[str]] | None = None,
    text_vectors: np.ndarray | None = None,
    lead_words: int | None = _DEFAULT_LEAD,
) -> list[dict[str, object]]:
    """Classify many texts against one label set, embedding the labels once and the texts in batches.

    Zero-shot, each text goes to the label whose vector (`label_vectors`) is nearest. With
    labelled examples (passed in the call, or learnt from a higher tier's answers), each label's vector is pulled
    toward the centroid of its examples (see `prototypes`). Confidence is the calibrated P(right) of
    `local_calibration.confidence`.

    Args:
        embedder: gives unit-length sentence embeddings.
        texts: the texts to label.
        labels: two or more distinct labels.
        descriptions: optional label -> what it means; a described label is embedded by DESCRIBED_TEMPLATES.
        multi_label: when true, also keep every other label whose score reaches `threshold`: its softmax share for
            the whole text, or for one sentence weighted by that sentence's cosine to the whole text.
        threshold: the multi-label score (0..1) a label needs; default 0.3.
        examples: labelled examples given in the call, each {"text": ..., "label": one of labels}.
        stored: (embeddings, labels) of examples kept from earlier answers.
        text_vectors: the embeddings of the texts as `read_text` gives them, when the caller has them already
            (skips embedding the texts).
        lead_words: read only this many first words of each text and example (default LEAD_WORDS; None: all).

    Returns:
        One `classify` result per text, in order.

    Raises:
        ValueError: fewer than two labels, repeated labels, an empty text, a threshold outside 0..1, or an example
            whose label is not one of the labels.
    """
    import numpy as np

    _check_labels(labels)
    threshold = DEFAULT_THRESHOLD if threshold is None else threshold
    if not 0.0 <= threshold <= 1.0:
        raise ValueError("threshold must be between 0 and 1")
    if any(not text.strip() for text in texts):
        raise ValueError("text is empty")
    given = _check_examples(examples, labels)
    descriptions = descriptions or {}
    own = [] if text_vectors is not None else [read_text(text, lead_words) for text in texts]
    label_vecs, vectors = label_vectors(embedder, labels, descriptions,
                                        [read_text(e["text"], lead_words) for e in given] + own)
    given_vectors = vectors[: len(given)]
    text_vectors = _unit(text_vectors) if text_vectors is not None else vectors[len(given) :]

    example_parts = [given_vectors] if len(given) else []
    example_labels = [e["label"] for e in given]
    if stored is not None and len(stored[1]):
        example_parts.insert(0, _unit(stored[0]))
        example_labels = list(stored[1]) + example_labels
    example_vectors = np.concatenate(example_parts) if example_parts else None
    scored = score_texts(text_vectors, label_vecs, labels, example_vectors, example_labels,
                         getattr(embedder, "calibration", "use"))
    similarities, label_vecs = scored["similarities"], scored["prototypes"]

    sentence_scores: list[np.ndarray | None] = [None] * len(texts)
    if multi_label:
        # A text about two topics usually gives each its own sentence, and the whole-text vector blurs them, so each
        # sentence also votes: its label scores, scaled by how much of the text it stands for (its cosine to the
        # whole), which keeps "Thanks in advance." from adding a label. On 17 hand-made multi-label cases this got
        # 13 exactly right against 12 for the whole text alone, with 3 missed labels instead of 5.
        split = [split_sentences(text) for text in texts]
        flat = [sentence for sentences in split for sentence in sentences if len(sentences) > 1]
        if flat:
            flat_vectors = _unit(embedder.embed(flat))
            flat_scores = _softmax(flat_vectors @ label_vecs.T)
            start = 0
            for i, sentences in enumerate(split):
                if len(sentences) > 1:
                    end = start + len(sentences)
                    weight = np.clip(flat_vectors[start:end] @ text_vectors[i], 0.0, 1.0)
                    sentence_scores[i] = flat_scores[start:end] * weight[:, None]
                    start = end
    n_examples = len(example_labels)
    return [
        _decide(list(labels), similarities[i], sentence_scores[i], multi_label, threshold,
                float(scored["confidence"][i]), n_examples)
        for i in range(len(texts))
    ]


def classify(
    embedder: SupportsEmbed,
    text: str,
    labels: list[str],
    descriptions: dict[str, str] | None = None,
    multi_label: bool = False,
    threshold: float | None = None,
    examples: Sequence[dict[str, str]] | None = None,
    stored: tuple[np.ndarray, Sequence[str]] | None = None,
) -> dict[str, object]:
    """Label a text by its embedding's similarity to each label's (zero-shot, or pulled toward labelled examples).

    Confidence is a calibrated probability that the label is right (see `local_calibration`), fitted on public
    labelled data held out from the sets the benchmarks report on.

    Args:
        embedder: gives unit-length sentence embeddings.
        text: the text to label.
        labels: two or more distinct labels.
        descriptions: optional label -> what it means; used instead of the bare label where given.
        multi_label: also keep other labels whose score reaches `threshold` (see `classify_many`).
        threshold: multi-label score (0..1) a label needs; default 0.3.
        examples: labelled examples, each {"text": ..., "label": ...}.
        stored: (embeddings, labels) of examples kept from earlier answers.

    Returns:
        {"label": best label, "labels": [chosen labels, best first], "confidence": 0..1, "reason": short text}.

    Raises:
        ValueError: fewer than two labels, repeated labels, an empty text, a threshold outside 0..1, or a bad example.
    """
    return classify_many(embedder, [text], labels, descriptions, multi_label, threshold, examples, stored)[0]


_WORD = re.compile(r"\w+", re.UNICODE)


# Function words carry no topic; with the few items of a typical rank call their BM25 weight would be large.
_STOPWORDS = frozenset(
    """a an and are as at be been but by can could did do does for from had has have how i if in into is it its
    me my no not of on or our so than that the their them then there these they this to was we were what when where
    which who why will with would you your
    le la les un une des et est en du au aux pour pas par sur qui que dans ce il elle je vous nous
    der die das ein eine und ist nicht zu den dem des mit von im auf für wie ich sie es
    el los las una y es en del por para con que se lo como""".split()
)


def _terms(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if (len(w) > 1 or w.isdigit()) and w not in _STOPWORDS]


def lexical_scores(query: str, items: Sequence[str], k1: float = 1.2, b: float = 0.75) -> np.ndarray:
    """Okapi BM25 of each item for the query, with document frequencies taken from the items themselves."""
    import numpy as np

    docs = [_terms(item) for item in items]
    n = len(docs)
    avg = max(1.0, sum(len(d) for d in docs) / max(1, n))
    df: dict[str, int] = {}
    for d in docs:
        for term in set(d):
            df[term] = df.get(term, 0) + 1
    scores = np.zeros(n, dtype=np.float32)
    for term in set(_terms(query)):
        if term not in df:
            continue
        idf = np.log(1.0 + (n - df[term] + 0.5) / (df[term] + 0.5))
        for i, d in enumerate(docs):
            tf = d.count(term)
            if tf:
                scores[i] += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len(d) / avg))
    return scores


def rank(embedder: SupportsEmbed, query: str, items: list[str], top_k: int | None = None) -> dict[str, object]:
    """Order items by the cosine of their embeddings to the query's, blended with a BM25 score.

    The score is (1 - LEXICAL_WEIGHT) * cosine + LEXICAL_WEIGHT * BM25 / (the best BM25 in the list): words the
    query shares with an item (names, rare terms) count beside what the embeddings see.

    Args:
        embedder: gives unit-length sentence embeddings.
        query: what the items are ranked against.
        items: the strings to rank.
        top_k: keep only this many (default all).

    Returns:
        {"ranked": [{"index": position in items, "score": 0..1}]}, best first; equal scores keep their input order.

    Raises:
        ValueError: top_k below 1.
    """
    import numpy as np

    if top_k is not None and top_k < 1:
        raise ValueError("top_k must be at least 1")
    if not items:
        return {"ranked": []}
    vectors = _unit(embedder.embed([query, *items]))
    scores = np.clip(vectors[1:] @ vectors[0], 0.0, 1.0)
    if LEXICAL_WEIGHT > 0 and len(items) > 1:
        lexical = lexical_scores(query, items)
        if lexical.max() > 0:
            scores = (1 - LEXICAL_WEIGHT) * scores + LEXICAL_WEIGHT * lexical / lexical.max()
    order = np.argsort(-scores, kind="stable")[: top_k or len(items)]
    return {"ranked": [{"index": int(i), "score": round(float(scores[i]), 4)} for i in order]}


# Words that end in a full stop without ending a sentence (compared lower-case, without the stop). Words that also end
# sentences as ordinary words ("no", "est", "mar") are left out on purpose.
_ABBREVIATIONS = frozenset(
    {
        # en
        "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc", "cf", "al", "fig", "vol", "pp", "approx",
        "inc", "ltd", "corp", "dept", "jan", "feb", "apr", "jun", "jul", "aug", "sept", "oct", "nov", "dec",
        # fr, de, es
        "mme", "mlle", "env", "bzw", "usw", "nr", "sra", "dña", "ud", "uds",
    }
)  # fmt: skip
# A sentence ends at . ! ? … (with any closing quotes or brackets) before whitespace; CJK stops need no space.
_BOUNDARY = re.compile(r"[.!?…]+[\"'”’»)\]]*(?=\s)|[。！？]+")
_BULLET = re.compile(r"^\s*(?:[-*•·‣◦]|\d{1,3}[.)])\s+")
_TERMINAL = (".", "!", "?", "…", ":", ";", "。", "！", "？")


def _ends_in_abbreviation(chunk: str) -> bool:
    words = chunk.rstrip(" \"'”’»)]").split()
    if not words:
        return False
    last = words[-1]
    if not last.endswith("."):
        return False
    token = last[:-1].lstrip("(\"'“‘«[").lower()
    # A single letter is an initial ("J. Smith"); short letter groups joined by dots are "e.g.", "U.S.", "z.B.",
    # unlike "3.11." or "example.com." which do end sentences.
    parts = token.split(".")
    return (
        token in _ABBREVIATIONS
        or all(0 < len(part) <= 2 and part.isalpha() for part in parts)
        and (len(parts) > 1 or len(token) == 1)
    )


def _lines_to_units(text: str) -> list[str]:
    """Paragraphs and list items, with hard-wrapped lines joined back together."""
    units: list[str] = []
    for paragraph in re.split(r"\n\s*\n", text.replace("\r\n", "\n").replace("\r", "\n")):
        current: list[str] = []
        for line in paragraph.split("\n"):
            stripped = line.strip()
            if not stripped:
                continue
            bullet = _BULLET.match(line)
            # A list item, or a short line without a full stop before a new line (a heading), stands on its own;
            # any other line break is a hard wrap inside a sentence.
            previous = current[-1] if current else ""
            heading_before = (
                bool(previous)
                and not previous.endswith(_TERMINAL)
                and len(previous.split()) <= 8
                and stripped[0].isupper()
            )
            if bullet or heading_before:
                if current:
                    units.append(" ".join(current))
                current = [line[bullet.end() :].strip() if bullet else stripped]
            else:
                current.append(stripped)
        if current:
            units.append(" ".join(current))
    return units


def split_sentences(text: str) -> list[str]:
    """Split text into sentences on . ! ? … (and CJK stops), paragraph breaks, list items and headings.

    Common abbreviations ("e.g.", "Dr.", "z.B."), initials and decimal numbers do not end a sentence, and
    hard-wrapped lines are joined back together.

    Args:
        text: any plain text.

    Returns:
        The sentences in order, stripped, none empty.
    """
    sentences: list[str] = []
    for unit in _lines_to_units(text):
        start = 0
        for match in _BOUNDARY.finditer(unit):
            chunk = unit[start : match.end()]
            following = unit[match.end() :].lstrip()[:1]
            # A lower-case word next means the stop was not the end ("approx. five", "etc. and").
            if _ends_in_abbreviation(chunk) or following.islower():
                continue
            if chunk.strip():
                sentences.append(chunk.strip())
            start = match.end()
        if unit[start:].strip():
            sentences.append(unit[start:].strip())
    return sentences


def _words(text: str) -> list[str]:
    return text.split()


def _trim(text: str, max_words: int) -> str:
    words = _words(text)
    return text if len(words) <= max_words else " ".join(words[:max_words]).rstrip(",;:") + "…"


def summarize(
    embedder: SupportsEmbed,
    text: str,
    max_words: int = 120,
    style: Literal["bullets", "paragraph", "headline"] = "paragraph",
    focus: str | None = None,
) -> dict[str, object]:
    """Summarize by extraction: the sentences nearest the document's centre, in their original order.

    The centre is the mean of the sentence embeddings (pulled halfway toward the focus text when one is given).
    Sentences are taken by closeness to it while they fit in max_words, skipping near-repeats of one already taken.

    Args:
        embedder: gives unit-length sentence embeddings.
        text: the document.
        max_words: the summary's word limit; a single sentence longer than that is cut (ending in "…").
        style: "paragraph" (sentences joined), "bullets" (one "- " line per sentence) or "headline" (the most
            central sentence alone, without its final full stop).
        focus: optional text the summary should lean toward.

    Returns:
        {"summary": text within max_words, "key_points": up to 5 most central sentences in original order,
        "method": "extractive"}.

    Raises:
        ValueError: max_words below 1 or an unknown style.
    """
    import numpy as np

    if max_words < 1:
        raise ValueError("max_words must be at least 1")
    if style not in ("bullets", "paragraph", "headline"):
        raise ValueError(f"unknown style {style!r}; use bullets, paragraph or headline")
    sentences = split_sentences(text)
    if not sentences:
        return {"summary": "", "key_points": [], "method": "extractive"}
    embedded = sentences + ([focus] if focus and focus.strip() else [])
    vectors = _unit(embedder.embed(embedded))
    sentence_vectors = vectors[: len(sentences)]
    centre = _unit(sentence_vectors.mean(axis=0))
    if len(embedded) > len(sentences):
        centre = _unit(centre + FOCUS_WEIGHT * vectors[-1])
    # Documents put their point first: an early sentence gets a bonus that fades with its position.
    position = np.arange(len(sentences), dtype=np.float32)
    closeness = sentence_vectors @ centre + LEAD_BONUS / (1.0 + position / LEAD_SPAN)
    by_closeness = [int(i) for i in np.argsort(-closeness, kind="stable")]

    if style == "headline":
        chosen = [by_closeness[0]]
    else:
        # "- " counts as a word when the returned string is split on spaces: budget one per bullet so the string
        # itself stays within max_words.
        overhead = 1 if style == "bullets" else 0
        chosen, used = [], 0
        for i in by_closeness:
            cost = len(_words(sentences[i])) + overhead
            if used + cost > max_words:
                continue
            # Near-repeats add words without adding content.
            if any(float(sentence_vectors[i] @ sentence_vectors[j]) > 0.9 for j in chosen):
                continue
            chosen.append(i)
            used += cost
        if not chosen:  # even the most central sentence is too long: cut it
            chosen = [by_closeness[0]]
    chosen.sort()

    budget = max_words - (1 if style == "bullets" else 0)
    picked = [_trim(sentences[i], budget) if len(chosen) == 1 else sentences[i] for i in chosen]
    if style == "headline":
        summary = picked[0].rstrip(".。")
    elif style == "bullets":
        summary = "\n".join(f"- {sentence}" for sentence in picked)
    else:
        summary = " ".join(picked)
    key_points = [sentences[i] for i in sorted(by_closeness[:5])]
    return {"summary": summary, "key_points": key_points, "method": "extractive"}
