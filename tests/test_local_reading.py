"""How classify reads labels and texts: the label templates and the lead of a long text (a recording embedder)."""

from __future__ import annotations

import pytest

np = pytest.importorskip("numpy")

from tiered_mcp.models import local_tasks  # noqa: E402


class RecordingEmbedder:
    """Gives each distinct text a fixed random unit vector and remembers every text it was asked to embed."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self._vectors: dict[str, np.ndarray] = {}

    def embed(self, texts: list[str]) -> np.ndarray:
        self.seen += texts
        rows = []
        for text in texts:
            if text not in self._vectors:
                v = np.random.default_rng(len(self._vectors)).normal(size=16)
                self._vectors[text] = v / np.linalg.norm(v)
            rows.append(self._vectors[text])
        return np.array(rows, dtype=np.float32).reshape(len(texts), 16)


def test_a_bare_label_is_embedded_by_each_label_template() -> None:
    assert local_tasks.LABEL_TEMPLATES == ("{label}", "This article is about {label}.")
    assert local_tasks.label_texts("sports") == ["sports", "This article is about sports."]
    assert local_tasks.label_texts("sports", "  ") == ["sports", "This article is about sports."]


def test_a_described_label_fills_the_described_template_without_a_doubled_full_stop() -> None:
    expected = ["This article is about grain: wheat and corn harvests."]
    assert local_tasks.label_texts("grain", "wheat and corn harvests.") == expected
    assert local_tasks.label_texts("grain", "wheat and corn harvests") == expected


def test_braces_in_a_label_or_description_are_kept_as_text() -> None:
    assert local_tasks.label_texts("{x}", "a {y} thing") == ["This article is about {x}: a {y} thing."]


def test_a_label_vector_is_the_normalised_mean_of_its_template_vectors() -> None:
    embedder = RecordingEmbedder()
    vectors, extra = local_tasks.label_vectors(embedder, ["a", "b"], {"b": "the letter b"}, ["some text"])
    assert embedder.seen == ["a", "This article is about a.", "This article is about b: the letter b.", "some text"]
    reference = RecordingEmbedder()
    a, a_sentence, b, text = reference.embed(embedder.seen)
    mean = (a + a_sentence) / np.linalg.norm(a + a_sentence)
    assert np.allclose(vectors[0], mean, atol=1e-6)
    assert np.allclose(vectors[1], b, atol=1e-6)
    assert np.allclose(extra[0], text, atol=1e-6)


def test_classify_scores_against_the_template_vectors() -> None:
    embedder = RecordingEmbedder()
    result = local_tasks.classify(embedder, "some text", ["a", "b"])
    assert embedder.seen == ["a", "This article is about a.", "b", "This article is about b.", "some text"]
    reference = RecordingEmbedder()
    a, a2, b, b2, text = reference.embed(embedder.seen)
    scores = [float(text @ (a + a2) / np.linalg.norm(a + a2)), float(text @ (b + b2) / np.linalg.norm(b + b2))]
    assert result["label"] == ("a" if scores[0] > scores[1] else "b")
    assert f"{abs(scores[0] - scores[1]):.3f} ahead" in result["reason"]


def test_a_text_longer_than_the_lead_is_read_as_its_first_words_only() -> None:
    text = " ".join(f"w{i}" for i in range(300))
    assert local_tasks.read_text(text, 5) == "w0 w1 w2 w3 w4"
    assert local_tasks.read_text("short text here", 5) == "short text here"  # untouched, spacing and all
    assert local_tasks.read_text(text, None) == text


def test_classify_embeds_texts_and_examples_as_read_text_gives_them() -> None:
    embedder = RecordingEmbedder()
    long_text = " ".join(f"w{i}" for i in range(1000))
    example = " ".join(f"e{i}" for i in range(1000))
    local_tasks.classify_many(embedder, [long_text], ["a", "b"], examples=[{"text": example, "label": "a"}])
    assert local_tasks.read_text(long_text) in embedder.seen
    assert local_tasks.read_text(example) in embedder.seen
    # With a lead set, only the texts' and the examples' first words are embedded.
    embedder = RecordingEmbedder()
    local_tasks.classify_many(embedder, [long_text], ["a", "b"], examples=[{"text": example, "label": "a"}],
                              lead_words=5)
    assert "w0 w1 w2 w3 w4" in embedder.seen and "e0 e1 e2 e3 e4" in embedder.seen
    assert long_text not in embedder.seen and example not in embedder.seen
