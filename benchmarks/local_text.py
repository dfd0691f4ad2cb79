"""Local summarize against lead baselines (ROUGE) and local rank against BM25, on ACLSum; tuning on train only.

Run: LOCAL_BENCH_CACHE=/tmp/bench python benchmarks/local_text.py [--tune]
(needs `pip install -e '.[local,bench]'`; ACLSum comes from its PyPI wheel, see local_data.py).

summarize: document = a paper's abstract + introduction + conclusion sentences; reference = its three aspect summaries
joined; budget 75 words. Baselines: lead-3 sentences and the lead sentences that fit 75 words. Focus: per aspect,
focus = the aspect's description, 30 words, scored against that aspect's summary alone, with and without focus.
rank: query = a paper's joined summary, items = every paper of the split (first 400 words); MRR of the right one.
Topic retrieval: query = a chatterbot category name, items = chatterbot-b texts; precision of the top 10.
--tune sweeps LEAD_BONUS / LEAD_SPAN / FOCUS_WEIGHT / LEXICAL_WEIGHT on the train split and prints the best.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "src"))
sys.path.insert(0, str(ROOT))

import local_data  # noqa: E402
import numpy as np  # noqa: E402

from tiered_mcp.models import local_tasks  # noqa: E402

BUDGET, ASPECT_BUDGET = 75, 30


def _scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)


def _lead_words(sentences: list[str], budget: int) -> str:
    out, used = [], 0
    for s in sentences:
        n = len(s.split())
        if used + n > budget:
            break
        out.append(s)
        used += n
    return " ".join(out) if out else " ".join(sentences[0].split()[:budget])


def rouge(pairs: list[tuple[str, str]]) -> tuple[float, float, float]:
    scorer = _scorer()
    scores = [scorer.score(ref, hyp) for hyp, ref in pairs]
    return tuple(float(np.mean([s[k].fmeasure for s in scores])) for k in ("rouge1", "rouge2", "rougeL"))


def summaries(embedder, docs, focus: bool = False) -> list[tuple[str, str]]:
    pairs = []
    for sentences, reference, aspects in docs:
        text = "\n\n".join(sentences)
        if focus is False:
            pairs.append((local_tasks.summarize(embedder, text, BUDGET)["summary"], reference))
        else:
            for aspect, summary in aspects.items():
                f = local_data.ASPECT_DESCRIPTIONS[aspect] if focus else None
                pairs.append((local_tasks.summarize(embedder, text, ASPECT_BUDGET, focus=f)["summary"], summary))
    return pairs


def load_docs(split: str):
    rows = local_data._aclsum_rows(split)
    out = []
    for (sentences, reference), row in zip(local_data.aclsum_documents(split), rows):
        out.append((sentences, reference, dict(row["summary"])))
    return out


def mrr(embedder, docs) -> float:
    items = [" ".join(" ".join(s).split()[:400]) for s, _, _ in docs]
    total = 0.0
    for i, (_, reference, _) in enumerate(docs):
        ranked = [r["index"] for r in local_tasks.rank(embedder, reference, items)["ranked"]]
        total += 1.0 / (ranked.index(i) + 1)
    return total / len(docs)


def topic_p10(embedder) -> float:
    data = local_data.labelled("chatterbot-b", None)
    precisions = []
    for label in data.labels:
        ranked = local_tasks.rank(embedder, label, data.texts, top_k=10)["ranked"]
        precisions.append(np.mean([data.gold[r["index"]] == label for r in ranked]))
    return float(np.mean(precisions))


def with_params(**params):
    saved = {k: getattr(local_tasks, k) for k in params}
    for k, v in params.items():
        setattr(local_tasks, k, v)
    return saved


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tune", action="store_true")
    args = parser.parse_args()
    from tiered_mcp.models.embedder import Embedder

    base = Embedder()
    base.load()
    embedder = local_data.CachingEmbedder(base, "aclsum-sentences")
    started = time.perf_counter()
    train, test = load_docs("train"), load_docs("test")
    if args.tune:
        print("tuning on ACLSum train:")
        best = None
        for bonus, span in itertools.product((0.0, 0.05, 0.1, 0.2, 0.4), (3.0, 10.0)):
            saved = with_params(LEAD_BONUS=bonus, LEAD_SPAN=span)
            r1 = rouge(summaries(embedder, train))[0]
            print(f"  LEAD_BONUS {bonus:4.2f} LEAD_SPAN {span:4.1f}: ROUGE-1 {r1:.3f}", flush=True)
            best = max(best or (r1, bonus, span), (r1, bonus, span))
            with_params(**saved)
        print(f"  best: LEAD_BONUS = {best[1]}, LEAD_SPAN = {best[2]}")
        saved = with_params(LEAD_BONUS=best[1], LEAD_SPAN=best[2])
        for weight in (1.0, 2.0, 4.0):
            with_params(FOCUS_WEIGHT=weight)
            print(f"  FOCUS_WEIGHT {weight}: aspect ROUGE-1 {rouge(summaries(embedder, train, focus=True))[0]:.3f}",
                  flush=True)
        with_params(**saved)
        for weight in (0.0, 0.2, 0.4, 0.6):
            saved = with_params(LEXICAL_WEIGHT=weight)
            print(f"  LEXICAL_WEIGHT {weight}: MRR {mrr(embedder, train):.3f}", flush=True)
            with_params(**saved)
        embedder.save()
        return

    print(f"ACLSum test ({len(test)} papers), budget {BUDGET} words; "
          f"LEAD_BONUS={local_tasks.LEAD_BONUS} LEAD_SPAN={local_tasks.LEAD_SPAN} FOCUS_WEIGHT={local_tasks.FOCUS_WEIGHT}")
    rows = [("lead-3 sentences", [(" ".join(s[:3]), ref) for s, ref, _ in test]),
            (f"lead sentences within {BUDGET} words", [(_lead_words(s, BUDGET), ref) for s, ref, _ in test]),
            ("local summarize", summaries(embedder, test))]
    saved = with_params(LEAD_BONUS=0.0)
    rows.append(("local summarize, no lead bonus (before)", summaries(embedder, test)))
    with_params(**saved)
    for name, pairs in rows:
        r1, r2, rl = rouge(pairs)
        words = np.mean([len(h.split()) for h, _ in pairs])
        print(f"  {name:42s} ROUGE-1 {r1:.3f}  ROUGE-2 {r2:.3f}  ROUGE-L {rl:.3f}  ({words:.0f} words)")
    print(f"aspect summaries ({ASPECT_BUDGET} words, scored against that aspect's reference):")
    for name, focus in (("no focus", None), ("focus = aspect description", True)):
        r1, r2, rl = rouge(summaries(embedder, test, focus=focus))
        print(f"  {name:42s} ROUGE-1 {r1:.3f}  ROUGE-2 {r2:.3f}  ROUGE-L {rl:.3f}")
    print(f"rank (LEXICAL_WEIGHT={local_tasks.LEXICAL_WEIGHT}):")
    for name, weight in (("embedding only", 0.0), ("BM25 only", 1.0), ("blend (default)", local_tasks.LEXICAL_WEIGHT)):
        saved = with_params(LEXICAL_WEIGHT=weight)
        print(f"  {name:20s} paper from its summary MRR {mrr(embedder, test):.3f}   "
              f"chatterbot topic P@10 {topic_p10(embedder):.3f}", flush=True)
        with_params(**saved)
    embedder.save()
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
