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


def test_a_bare_label_is_embedded_by_the_label_template() -> None:
    assert local_tasks.label_text("sports") == local_tasks.LABEL_TEMPLATE.format(label="sports")
    assert local_tasks.label_text("sports", "  ") == local_tasks.LABEL_TEMPLATE.format(label="sports")


def test_a_described_label_fills_the_described_template_without_a_doubled_full_stop() -> None:
    expected = local_tasks.DESCRIBED_TEMPLATE.format(label="grain", description="wheat and corn harvests")
    assert local_tasks.label_text("grain", "wheat and corn harvests.") == expected
    assert local_tasks.label_text("grain", "wheat and corn harvests") == expected
    assert local_tasks.DESCRIBED_TEMPLATE == "This article is about {label}: {description}."
    assert expected == "This article is about grain: wheat and corn harvests."


def test_braces_in_a_label_or_description_are_kept_as_text() -> None:
    assert "{x}" in local_tasks.label_text("{x}", "a {y} thing")
    assert "a {y} thing" in local_tasks.label_text("{x}", "a {y} thing")


def test_classify_embeds_the_templated_labels() -> None:
    embedder = RecordingEmbedder()
    local_tasks.classify(embedder, "some text", ["a", "b"], {"b": "the letter b"})
    assert embedder.seen[:2] == [local_tasks.label_text("a"), "This article is about b: the letter b."]


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
    if local_tasks.LEAD_WORDS is not None:
        assert long_text not in embedder.seen
        assert len(local_tasks.read_text(long_text).split()) == local_tasks.LEAD_WORDS
