"""How the local classifier should read long texts: whole, lead only, or as pooled chunks. Accuracy and CPU.

Run: LOCAL_BENCH_CACHE=/tmp/bench python benchmarks/local_long.py
Sets: amazon-docs (choose) and nyt-docs (report): whole reviews / editorials rebuilt from the vaderSentiment
snippets, ~180 words, positive / negative. CPU is also timed on 100 news-length texts (the first 400 words of
ACLSum papers), since that is where the cost is.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "src"))
sys.path.insert(0, str(ROOT))

import local_data  # noqa: E402
import local_eval  # noqa: E402
import numpy as np  # noqa: E402

from tiered_mcp.models import local_tasks  # noqa: E402


def lead_words(text: str, n: int) -> str:
    return " ".join(text.split()[:n])


def chunks(text: str, size: int) -> list[str]:
    out, current = [], []
    for sentence in local_tasks.split_sentences(text):
        if current and len(" ".join(current + [sentence]).split()) > size:
            out.append(" ".join(current))
            current = []
        current.append(sentence)
    if current:
        out.append(" ".join(current))
    return out or [text]


def embed_with(embedder, texts: list[str], strategy: str) -> np.ndarray:
    if strategy == "whole":
        return embedder.embed(texts)
    if strategy.startswith("lead-"):
        return embedder.embed([lead_words(t, int(strategy.split("-")[1])) for t in texts])
    size = int(strategy.split("-")[1])
    parts = [chunks(t, size) for t in texts]
    flat = embedder.embed([c for p in parts for c in p])
    out, start = [], 0
    for p in parts:
        out.append(flat[start : start + len(p)].mean(axis=0))
        start += len(p)
    return local_tasks._unit(np.stack(out))


STRATEGIES = ("whole", "lead-64", "lead-128", "chunks-40", "chunks-80")


def main() -> None:
    from tiered_mcp.models.embedder import Embedder

    embedder = Embedder()
    embedder.load()
    news = [f"({i}) " + " ".join(" ".join(s).split()[:400]) for i, (s, _) in
            enumerate(local_data.aclsum_documents("test"))]
    print("CPU per news-length text (400 words, 100 texts):")
    for strategy in STRATEGIES:
        cpu = time.process_time()
        embed_with(embedder, news, strategy)
        print(f"  {strategy:10s} {1000 * (time.process_time() - cpu) / len(news):6.1f} CPU ms/text", flush=True)
    for name in ("amazon-docs", "nyt-docs"):
        data = local_data.labelled(name, None)
        print(f"{name} ({len(data.texts)} texts, ~{np.mean([len(t.split()) for t in data.texts]):.0f} words):")
        for strategy in STRATEGIES:
            vectors = local_tasks._unit(embed_with(embedder, data.texts, strategy))
            cells = []
            for described in (False, True):
                desc = data.descriptions if described else {}
                labels = local_tasks._unit(embedder.embed([local_tasks._label_text(x, desc.get(x)) for x in data.labels]))
                scored = local_tasks.score_texts(vectors, labels, data.labels)
                correct = [data.labels[int(b)] == g for b, g in zip(scored["best"], data.gold)]
                cells.append(f"{'described' if described else 'bare'} {np.mean(correct):.1%} "
                             f"(AUROC {local_eval.auroc(list(scored['confidence']), correct):.2f})")
            print(f"  {strategy:10s} " + "   ".join(cells), flush=True)


if __name__ == "__main__":
    main()
