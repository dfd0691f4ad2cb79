"""Measure the local tier in one run: cold load, zero-shot accuracy, classify throughput, rank and summarize checks.

Run: python benchmarks/local_tier.py [--n 2000]   (needs `pip install 'tiered-mcp[local]'`)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "src"))  # run from a checkout without installing

from tiered_mcp.models import local_tasks
from tiered_mcp.models.embedder import Embedder, embedder_available

EVAL = ROOT / "data" / "local_classify_eval.jsonl"
COLD = (
    "import sys, time; t = time.perf_counter(); sys.path.insert(0, sys.argv[1]);"
    "from tiered_mcp.models.embedder import Embedder; e = Embedder(); e.load();"
    "print(time.perf_counter() - t, e.load_seconds)"
)
DOCUMENT = """The city council met on Tuesday to debate the new public transport plan.
The plan adds three tram lines and doubles the number of night buses by 2027.
Council members argued for hours about the cost, which is estimated at 450 million euros.
Supporters said the trams would cut car traffic in the centre by a fifth.
Opponents warned that ticket prices might rise to pay for the construction.
Outside the hall, a small group of cyclists asked for more bike lanes.
In the end the council approved the plan by 31 votes to 12.
Construction of the first tram line is due to start next spring."""


def cold_load() -> tuple[float, float]:
    """Import + load + warm-up in a fresh interpreter, so nothing is already cached in this process."""
    out = subprocess.run(
        [sys.executable, "-c", COLD, str(ROOT.parent / "src")], capture_output=True, text=True, check=True
    ).stdout.split()
    return float(out[0]), float(out[1])


def accuracy(embedder: Embedder) -> None:
    cases = [json.loads(line) for line in EVAL.read_text(encoding="utf-8").splitlines() if line.strip()]
    per_set: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    confidence: dict[bool, list[float]] = {True: [], False: []}
    for case in cases:
        result = local_tasks.classify(embedder, case["text"], case["labels"], case.get("descriptions"))
        right = result["label"] == case["expected"]
        per_set[case["set"]][0] += right
        per_set[case["set"]][1] += 1
        confidence[right].append(float(result["confidence"]))
    print(f"\naccuracy on {EVAL.relative_to(ROOT.parent)} ({len(cases)} cases, {len(per_set)} label sets)")
    for name, (right, total) in per_set.items():
        print(f"  {name:24s} {right:3d}/{total:<3d} {right / total:6.1%}")
    right = sum(r for r, _ in per_set.values())
    print(f"  {'overall':24s} {right:3d}/{len(cases):<3d} {right / len(cases):6.1%}")
    mean = {k: sum(v) / len(v) if v else float("nan") for k, v in confidence.items()}
    low = sum(c < 0.6 for c in confidence[False])
    print(
        f"  mean confidence: right {mean[True]:.2f}, wrong {mean[False]:.2f}; wrong answers under 0.6: "
        f"{low}/{len(confidence[False])}"
    )


def throughput(embedder: Embedder, n: int) -> None:
    cases = [json.loads(line) for line in EVAL.read_text(encoding="utf-8").splitlines() if line.strip()]
    texts = [cases[i % len(cases)]["text"] for i in range(n)]
    labels = ["sports", "politics", "technology", "business", "health", "science"]
    words = sum(len(t.split()) for t in texts) / len(texts)
    started = time.perf_counter()
    local_tasks.classify_many(embedder, texts, labels)
    batched = n / (time.perf_counter() - started)
    one_by_one = texts[:200]
    started = time.perf_counter()
    for text in one_by_one:
        local_tasks.classify(embedder, text, labels)
    single = len(one_by_one) / (time.perf_counter() - started)
    print(f"\nclassify throughput ({n} short texts, {words:.0f} words on average, 6 labels)")
    print(f"  batched (classify_many):  {batched:7.0f} texts/s   goal >= 200: {'met' if batched >= 200 else 'MISSED'}")
    print(f"  one call per text:        {single:7.0f} texts/s   ({1000 / single:.1f} ms per call)")


def checks(embedder: Embedder) -> None:
    print("\nmulti-label")
    for text in (
        "The team won the championship final last night. Meanwhile, the company's shares fell after weak earnings.",
        "Parliament passed the budget bill after a late-night vote.",
    ):
        result = local_tasks.classify(
            embedder, text, ["sports", "politics", "technology", "business", "health", "science"], multi_label=True
        )
        print(f"  {result['labels']} conf {result['confidence']:.2f} <- {text[:60]}")

    print("\nrank")
    items = [
        "How to bake sourdough bread at home",
        "Quarterly earnings of European banks",
        "Réparer une crevaison de vélo",  # French: fixing a bike puncture
        "Python asyncio tutorial for beginners",
        "Cómo cambiar la rueda pinchada de una bicicleta",  # Spanish: changing a punctured bike wheel
    ]
    query = "my bicycle tyre is flat, how do I fix it?"
    ranked = local_tasks.rank(embedder, query, items, top_k=3)["ranked"]
    print(f"  query: {query}")
    for row in ranked:
        print(f"  {row['score']:.3f}  [{row['index']}] {items[row['index']]}")

    print("\nsummarize")
    sentences = local_tasks.split_sentences(DOCUMENT)
    for style, max_words in (("paragraph", 45), ("bullets", 45), ("headline", 12)):
        result = local_tasks.summarize(embedder, DOCUMENT, max_words=max_words, style=style)
        picked = [s for s in sentences if s in result["summary"]]
        in_order = [sentences.index(s) for s in picked] == sorted(sentences.index(s) for s in picked)
        print(
            f"  {style} (max {max_words} words): {len(result['summary'].split())} words, "
            f"method {result['method']}, original order kept: {in_order}"
        )
        print("    " + result["summary"].replace("\n", "\n    "))
    focused = local_tasks.summarize(embedder, DOCUMENT, max_words=25, focus="cost and ticket prices")
    print(f"  focus 'cost and ticket prices' (max 25): {focused['summary']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="texts for the throughput run")
    args = parser.parse_args()
    if not embedder_available():
        print("the local tier is not installed: pip install 'tiered-mcp[local]'", file=sys.stderr)
        return 1

    total, load = cold_load()
    embedder = Embedder()
    embedder.load()
    print(f"model: {embedder.model_name}, {embedder.threads} BLAS threads")
    print(f"cold load in a fresh process: {total:.2f} s with imports ({load:.2f} s model load and warm-up)")
    accuracy(embedder)
    throughput(embedder, args.n)
    checks(embedder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
