"""How the local classifier should read labels and long texts: label templates x text readings, chosen on train sets.

Run: LOCAL_BENCH_CACHE=/tmp/bench python benchmarks/local_reading.py [--encoder e5] [--n 600]
(`--sets`, `--templates`, `--readings` take comma lists to run a part.)

Zero-shot accuracy (and AUROC of the raw margin) for each label template (bare labels, and described labels) and each
reading of the text (whole, the first N words, the mean of N-word chunks). The choosing sets are the train / calibration
sets (local_data.CALIBRATION and amazon-docs); the reporting sets are printed after them and were not used to choose.
CPU ms per text of each reading is timed on 100 news-length texts (the first 400 words of ACLSum test papers).
"""

from __future__ import annotations

import argparse
import os
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

CHOOSE = ("movies", "chatterbot-a", "aclsum-train", "amazon-docs", "reuters-train", "newsgroups-train")
REPORT = ("tweets", "amazon", "nyt", "chatterbot-b", "aclsum-test", "nyt-docs", "reuters-test", "newsgroups-test")
# (name, bare template, described template); {label} and {description} are filled in.
TEMPLATES = {
    "label": ("{label}", "{label}: {description}"),
    "text-about": ("This text is about {label}.", "This text is about {label}: {description}."),
    "article-about": ("This article is about {label}.", "This article is about {label}: {description}."),
    "topic": ("Topic: {label}.", "Topic: {label}. {description}."),
    "description-only": ("{label}", "{description}"),
    "mean": ("mean", "mean"),  # the mean of the unit vectors of "label" and "text-about"
    "mean-article": ("mean", "mean"),  # the mean of the unit vectors of "label" and "article-about"
    # "label" / "article-about" scored minus each label's cosine to a content-free text (contextual calibration)
    "label-debiased": ("{label}", "{label}: {description}"),
    "article-debiased": ("This article is about {label}.", "This article is about {label}: {description}."),
}
CONTENT_FREE = ("This article is about something.", "N/A", "text")
READINGS = ("whole", "lead-32", "lead-64", "lead-128", "lead-256", "chunks-64", "chunks-128")


def lead_words(text: str, n: int) -> str:
    return " ".join(text.split()[:n])


def word_chunks(text: str, size: int) -> list[str]:
    words = text.split()
    return [" ".join(words[i : i + size]) for i in range(0, len(words), size)] or [text]


def embed_with(embedder, texts: list[str], reading: str) -> np.ndarray:
    if reading == "whole":
        return embedder.embed(texts)
    kind, n = reading.split("-")
    if kind == "lead":
        return embedder.embed([lead_words(t, int(n)) for t in texts])
    parts = [word_chunks(t, int(n)) for t in texts]
    flat = embedder.embed([c for p in parts for c in p])
    out, start = [], 0
    for p in parts:
        out.append(flat[start : start + len(p)].mean(axis=0))
        start += len(p)
    return local_tasks._unit(np.stack(out))


def label_vectors(embedder, data: local_data.LabelledSet, template: str, described: bool) -> np.ndarray:
    if template.startswith("mean"):
        a = label_vectors(embedder, data, "label", described)
        b = label_vectors(embedder, data, "text-about" if template == "mean" else "article-about", described)
        return local_tasks._unit(a + b)
    form = TEMPLATES[template][1 if described else 0]
    texts = [form.format(label=x, description=data.descriptions.get(x, "").rstrip(".")) for x in data.labels]
    return local_tasks._unit(embedder.embed(texts))


def score(vectors: np.ndarray, labels: np.ndarray, data: local_data.LabelledSet,
          bias: np.ndarray | None = None) -> tuple[float, float]:
    sims = vectors @ labels.T - (0 if bias is None else bias)
    ordered = np.sort(sims, axis=1)
    correct = [data.labels[int(b)] == g for b, g in zip(np.argmax(sims, axis=1), data.gold)]
    return float(np.mean(correct)), local_eval.auroc(list(ordered[:, -1] - ordered[:, -2]), correct)


def label_bias(embedder, labels: np.ndarray) -> np.ndarray:
    """Each label's mean cosine to a few content-free texts (subtracted from its scores when debiasing)."""
    return (local_tasks._unit(embedder.embed(list(CONTENT_FREE))) @ labels.T).mean(axis=0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--encoder", default="use", choices=["use", "e5"])
    parser.add_argument("--n", type=int, default=600)
    parser.add_argument("--sets", default=",".join(CHOOSE + REPORT))
    parser.add_argument("--templates", default=",".join(TEMPLATES))
    parser.add_argument("--readings", default=",".join(READINGS))
    parser.add_argument("--no-cpu", action="store_true", help="skip the CPU timing")
    args = parser.parse_args()
    from tiered_mcp.models.embedder import make_embedder

    inner = make_embedder(args.encoder)
    inner.load()
    readings = args.readings.split(",")
    print(f"encoder {inner.model_name}; load average {os.getloadavg()[0]:.2f}")
    if not args.no_cpu:
        news = [f"({i}) " + " ".join(" ".join(s).split()[:400])
                for i, (s, _) in enumerate(local_data.aclsum_documents("test"))]
        print("CPU per news-length text (400 words, 100 texts; wall beside it):")
        for reading in readings:
            cpu, wall = time.process_time(), time.perf_counter()
            embed_with(inner, news, reading)
            print(f"  {reading:10s} {1000 * (time.process_time() - cpu) / len(news):6.1f} CPU ms/text "
                  f"{1000 * (time.perf_counter() - wall) / len(news):6.1f} wall ms/text "
                  f"(load {os.getloadavg()[0]:.2f})", flush=True)
    embedder = local_data.CachingEmbedder(inner, "reading")
    print("zero-shot accuracy (AUROC of the raw margin); 'choose' sets first, then 'report' sets")
    for name in args.sets.split(","):
        data = local_data.labelled(name, args.n)
        long = np.mean([len(t.split()) for t in data.texts]) > 60
        role = "choose" if name in CHOOSE else "report"
        print(f"{name} [{role}] ({len(data.texts)} texts, ~{np.mean([len(t.split()) for t in data.texts]):.0f} words,"
              f" {len(data.labels)} labels):")
        for reading in readings if long else ["whole"]:
            vectors = local_tasks._unit(embed_with(embedder, data.texts, reading))
            cells = []
            for template in args.templates.split(","):
                for described in (False, True) if data.descriptions else (False,):
                    if template == "description-only" and not described:
                        continue
                    labels = label_vectors(embedder, data, template, described)
                    bias = label_bias(embedder, labels) if template.endswith("-debiased") else None
                    acc, auc = score(vectors, labels, data, bias)
                    cells.append(f"{template}{'+d' if described else ''} {acc:.1%} ({auc:.2f})")
            print(f"  {reading:10s} " + " | ".join(cells), flush=True)
        embedder.save()
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
