"""Labelled examples the local tier learns from: a text's embedding and the label a higher tier (or the caller) gave.

A label set is keyed by `label_set_key(labels, model)`: the same labels in any order, embedded by the same model,
share their examples; another model's vectors never mix in. The store keeps embeddings and labels only; the text
is kept only when the engine is told to (`store_inputs`).

Two stores: `MemoryExampleStore` (per process) and `SQLiteExampleStore` (a file; its calls block, so run them in a
worker thread, as `LocalEngine` does). Each keeps at most `per_label` examples per label (the newest).
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from collections import defaultdict, deque
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np

__all__ = ["ExampleStore", "MemoryExampleStore", "SQLiteExampleStore", "label_set_key"]

PER_LABEL = 512


def label_set_key(labels: Sequence[str], model: str) -> str:
    """The key under which a label set's examples are kept: order-free in the labels, specific to the model."""
    digest = hashlib.sha256("\x1f".join(sorted(labels)).encode("utf-8")).hexdigest()[:24]
    return f"{model}|{digest}"


@runtime_checkable
class ExampleStore(Protocol):
    """Where labelled examples are kept."""

    def add(self, tool: str, label_set: str, embedding: np.ndarray, label: str, text: str | None = None) -> None:
        """Keep one example (a unit-length float vector and its label); drop the label's oldest beyond the cap."""

    def fetch(self, tool: str, label_set: str) -> tuple[np.ndarray, list[str]]:
        """All examples of a label set: embeddings (n, d) float32, oldest first, and their labels."""


def _empty() -> np.ndarray:
    import numpy as np

    return np.zeros((0, 0), dtype=np.float32)


class MemoryExampleStore:
    """Examples in this process's memory (lost at exit). Thread-safe."""

    def __init__(self, per_label: int = PER_LABEL) -> None:
        self.per_label = per_label
        self._lock = threading.Lock()
        self._data: dict[tuple[str, str], dict[str, deque]] = defaultdict(dict)

    def add(self, tool: str, label_set: str, embedding: np.ndarray, label: str, text: str | None = None) -> None:
        import numpy as np

        vector = np.asarray(embedding, dtype=np.float32).reshape(-1).copy()
        with self._lock:
            by_label = self._data[(tool, label_set)]
            by_label.setdefault(label, deque(maxlen=self.per_label)).append(vector)

    def fetch(self, tool: str, label_set: str) -> tuple[np.ndarray, list[str]]:
        import numpy as np

        with self._lock:
            by_label = {k: list(v) for k, v in self._data.get((tool, label_set), {}).items()}
        labels = [label for label, vectors in by_label.items() for _ in vectors]
        if not labels:
            return _empty(), []
        return np.stack([v for vectors in by_label.values() for v in vectors]), labels


class SQLiteExampleStore:
    """Examples in a SQLite file (created on first use). Blocking: call it from a worker thread.

    Args:
        path: the database file.
        per_label: examples kept per label (the newest).
    """

    _SCHEMA = (
        (
            "CREATE TABLE IF NOT EXISTS local_examples ("
            " id INTEGER PRIMARY KEY AUTOINCREMENT, tool TEXT NOT NULL, label_set TEXT NOT NULL,"
            " label TEXT NOT NULL, embedding BLOB NOT NULL, text TEXT)"
        ),
        "CREATE INDEX IF NOT EXISTS local_examples_set ON local_examples (tool, label_set, label, id)",
    )

    def __init__(self, path: str | Path, per_label: int = PER_LABEL) -> None:
        self.path = Path(path)
        self.per_label = per_label
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            for statement in self._SCHEMA:
                conn.execute(statement)
            self._conn = conn
        return self._conn

    def add(self, tool: str, label_set: str, embedding: np.ndarray, label: str, text: str | None = None) -> None:
        import numpy as np

        blob = np.asarray(embedding, dtype=np.float32).reshape(-1).tobytes()
        with self._lock:
            conn = self._connect()
            with conn:
                conn.execute("BEGIN")
                conn.execute(
                    "INSERT INTO local_examples (tool, label_set, label, embedding, text) VALUES (?, ?, ?, ?, ?)",
                    (tool, label_set, label, blob, text),
                )
                conn.execute(
                    "DELETE FROM local_examples WHERE tool = ? AND label_set = ? AND label = ? AND id NOT IN"
                    " (SELECT id FROM local_examples WHERE tool = ? AND label_set = ? AND label = ?"
                    "  ORDER BY id DESC LIMIT ?)",
                    (tool, label_set, label, tool, label_set, label, self.per_label),
                )

    def fetch(self, tool: str, label_set: str) -> tuple[np.ndarray, list[str]]:
        import numpy as np

        with self._lock:
            rows = self._connect().execute(
                "SELECT label, embedding FROM local_examples WHERE tool = ? AND label_set = ? ORDER BY id",
                (tool, label_set),
            ).fetchall()
        if not rows:
            return _empty(), []
        return np.stack([np.frombuffer(blob, dtype=np.float32) for _, blob in rows]), [label for label, _ in rows]

    def close(self) -> None:
        """Close the connection (a later call opens it again)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
