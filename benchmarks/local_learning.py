"""The learning curve through the engine's public API: LocalEngine.learn (a stand-in flagship's answers) then run_many.

Run: LOCAL_BENCH_CACHE=/tmp/bench python benchmarks/local_learning.py [--sets tweets,chatterbot-b,aclsum-test]
For each held-out set: a fresh engine with a SQLite example store; k answers per label from a stand-in flagship
(the set's gold labels) go through `learn`, in rounds up to 0, 8, 32, 128 per label; after each round every item not
learnt from is classified with `run_many` (bare labels). Prints accuracy, share escalated (confidence < 0.6) and
accuracy of the answers kept. Same draws as local_eval.py's seed 0 (its table averages 3 draws). Embeddings are
cached on disk by text, so this measures behaviour, not speed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "src"))
sys.path.insert(0, str(ROOT))

import local_data  # noqa: E402
from local_eval import split_examples  # noqa: E402

from tiered_mcp.models.local import LocalEngine  # noqa: E402
from tiered_mcp.models.local_examples import SQLiteExampleStore  # noqa: E402


class _Cached(local_data.CachingEmbedder):
    calibration = "use"

    def load(self) -> None:
        self.inner.load()


async def curve(name: str, embedder, store_dir: str) -> None:
    data = local_data.labelled(name, 600)
    engine = LocalEngine(embedder_factory=lambda: embedder, installed=True,
                         store=SQLiteExampleStore(Path(store_dir) / f"{name}.sqlite3"))
    learnt: set[int] = set()
    for k in (0, 8, 32, 128):
        chosen, _ = split_examples(data.gold, k, seed=0) if k else ([], None)
        for i in chosen:
            if i not in learnt:
                await engine.learn("classify", {"text": data.texts[i], "labels": data.labels},
                                   {"label": data.gold[i], "labels": [data.gold[i]], "confidence": 1.0, "reason": ""})
                learnt.add(i)
        rest = [i for i in range(len(data.texts)) if i not in learnt]
        out = await engine.run_many("classify", [{"text": data.texts[i], "labels": data.labels} for i in rest])
        correct = [o["label"] == data.gold[i] for o, i in zip(out, rest)]
        kept = [c for c, o in zip(correct, out) if o["confidence"] >= 0.6]
        print(f"  {name:13s} {k:3d} flagship examples/label: {len(rest):4d} scored, acc {sum(correct) / len(rest):6.1%}"
              f", escalated {1 - len(kept) / len(rest):6.1%}, kept acc "
              f"{(sum(kept) / len(kept)) if kept else float('nan'):6.1%}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sets", default="tweets,chatterbot-b,aclsum-test")
    args = parser.parse_args()
    from tiered_mcp.models.embedder import Embedder

    embedder = _Cached(Embedder(), "learning")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.sets.split(","):
            asyncio.run(curve(name, embedder, tmp))
    embedder.save()


if __name__ == "__main__":
    main()
