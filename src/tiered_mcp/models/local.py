"""The embedded local tier: runs a spec's `local_task` in process on the sentence embedder, off the event loop.

The embedder loads once, lazily, on the first local call (never at server start-up) and is shared by every call.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable

import anyio

from tiered_mcp.core.config import INSTALL_LOCAL
from tiered_mcp.core.errors import ArgumentsError, LocalTierError

# Arguments each task takes, by their names in the shipped specs (a user spec with a local_task uses the same names).
_TASK_ARGS = {
    "classify": ("text", "labels", "descriptions", "multi_label"),
    "rank": ("query", "items", "top_k"),
    "summarize": ("text", "max_words", "style", "focus"),
}


class LocalEngine:
    """Runs local tasks.

    Args:
        embedder_factory: builds the embedder on first use (default: the packaged USE multilingual model).
        installed: whether the local extra counts as installed (default: look for its packages, without
            importing them).
    """

    def __init__(self, embedder_factory: Callable[[], Any] | None = None, installed: bool | None = None) -> None:
        self._factory = embedder_factory
        self._embedder: Any = None
        self._lock = anyio.Lock()
        self.is_installed = self.installed() if installed is None else installed

    @staticmethod
    def installed() -> bool:
        """Whether the local extra is installed (checked without importing it)."""
        from tiered_mcp.models.embedder import embedder_available

        return embedder_available()

    @property
    def model_name(self) -> str:
        return self._embedder.model_name if self._embedder is not None else "use-multilingual-v3 (not loaded)"

    async def embedder(self) -> Any:
        """The shared embedder, loaded on first use in a worker thread."""
        async with self._lock:
            if self._embedder is None:
                from tiered_mcp.models.embedder import Embedder, LocalTierUnavailable

                embedder = self._factory() if self._factory else Embedder()
                try:
                    await anyio.to_thread.run_sync(embedder.load)
                except LocalTierUnavailable as e:
                    raise LocalTierError(f"{e} (or: {INSTALL_LOCAL})") from None
                self._embedder = embedder
        return self._embedder

    async def run(self, task: str, arguments: dict[str, Any]) -> dict[str, Any]:
        """Run `task` with the tool's (validated) arguments.

        Raises:
            LocalTierError: the local packages are missing or failed to load.
            ArgumentsError: the task cannot take these arguments (e.g. repeated labels).
        """
        from tiered_mcp.models import local_tasks

        embedder = await self.embedder()
        kwargs = {k: arguments[k] for k in _TASK_ARGS[task] if arguments.get(k) is not None}
        fn = getattr(local_tasks, task)
        try:
            return await anyio.to_thread.run_sync(partial(fn, embedder, **kwargs))
        except ValueError as e:
            raise ArgumentsError(f"arguments: {e}") from None

