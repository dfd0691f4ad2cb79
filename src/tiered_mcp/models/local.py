"""The embedded local tier: runs a spec's `local_task` in process on the sentence embedder, off the event loop.

The embedder loads once, lazily, on the first local call (never at server start-up) and is shared by every call.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial
from typing import Any

import anyio

from tiered_mcp.core.config import INSTALL_LOCAL
from tiered_mcp.core.errors import ArgumentsError, LocalTierError
from tiered_mcp.models import local_tasks
from tiered_mcp.models.local_examples import ExampleStore, MemoryExampleStore, label_set_key

# Arguments each task takes, by their names in the shipped specs (a user spec with a local_task uses the same names).
_TASK_ARGS = {
    "classify": ("text", "labels", "descriptions", "multi_label", "examples"),
    "rank": ("query", "items", "top_k"),
    "summarize": ("text", "max_words", "style", "focus"),
}
# At most this many queued calls go into one gathered batch (bounds the wait of the calls behind it).
_MAX_GATHER = 256
# Tools whose answers become labelled examples (by the names of their local tasks).
_LEARNS = ("classify",)


class LocalEngine:
    """Runs local tasks, alone (`run`) or many in one batched pass (`run_many`), and learns from other tiers' answers.

    Args:
        embedder_factory: builds the embedder on first use (default: `embedder.make_embedder()`, the packaged USE
            multilingual model unless TIERED_MCP_LOCAL_ENCODER=e5).
        installed: whether the local extra counts as installed (default: look for its packages, without
            importing them).
        store: where learnt examples are kept (default: in this process's memory).
        store_inputs: keep the texts of learnt examples too (default: only their embeddings and labels).
    """

    def __init__(
        self,
        embedder_factory: Callable[[], Any] | None = None,
        installed: bool | None = None,
        store: ExampleStore | None = None,
        store_inputs: bool = False,
    ) -> None:
        self._factory = embedder_factory
        self._embedder: Any = None
        self._lock = anyio.Lock()
        self.is_installed = self.installed() if installed is None else installed
        self.store: ExampleStore = store if store is not None else MemoryExampleStore()
        self.store_inputs = store_inputs
        self._pending: dict[str, list[_Job]] = {}
        self._leading: set[str] = set()

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
        if self._embedder is not None:
            return self._embedder
        async with self._lock:
            if self._embedder is None:
                from tiered_mcp.models.embedder import LocalTierUnavailable, make_embedder

                try:
                    embedder = self._factory() if self._factory else make_embedder()
                except ValueError as e:  # a bad TIERED_MCP_LOCAL_ENCODER
                    raise LocalTierError(str(e)) from None
                try:
                    await anyio.to_thread.run_sync(embedder.load)
                except LocalTierUnavailable as e:
                    raise LocalTierError(f"{e} (or: {INSTALL_LOCAL})") from None
                self._embedder = embedder
        return self._embedder

    def _key(self, embedder: Any, labels: list[str]) -> str:
        return label_set_key(labels, getattr(embedder, "model_name", type(embedder).__name__))

    async def run(self, task: str, arguments: dict[str, Any]) -> dict[str, Any]:
        """Run `task` with the tool's (validated) arguments.

        Calls that arrive while another batch is in the model are gathered and run together by `run_many`, so many
        concurrent single calls (or a batch fanned out into single calls) share forward passes instead of queueing
        one by one on the model. Each still gets exactly its own answer.

        Raises:
            LocalTierError: the local packages are missing or failed to load.
            ArgumentsError: the task cannot take these arguments (e.g. repeated labels).
        """
        job = _Job(arguments)
        self._pending.setdefault(task, []).append(job)
        while job.result is None:
            if task in self._leading:  # another call is running a batch: wait for this answer or for our turn
                job.wake = anyio.Event()
                try:
                    await job.wake.wait()
                except BaseException:
                    job.abandoned = True
                    self._promote(task)  # in case this call had just been woken to lead
                    raise
                continue
            self._leading.add(task)
            try:
                while job.result is None:
                    queue = self._pending[task]
                    batch, self._pending[task] = queue[:_MAX_GATHER], queue[_MAX_GATHER:]
                    batch = [j for j in batch if not j.abandoned or j is job]
                    # Shielded: the calls gathered here wait on this batch even if this call is cancelled.
                    with anyio.CancelScope(shield=True):
                        try:
                            results = await self.run_many(task, [j.arguments for j in batch])
                        except Exception as e:  # noqa: BLE001 (failed to load: every call in the batch gets it)
                            results = [e] * len(batch)
                    for j, r in zip(batch, results):
                        j.result = r
                        j.wake.set()
            finally:
                self._leading.discard(task)
                self._promote(task)
        if isinstance(job.result, Exception):
            raise job.result
        return job.result

    def _promote(self, task: str) -> None:
        """Wake the first waiting call to lead the next batch (no-op when nothing waits or someone leads)."""
        if task in self._leading:
            return
        queue = self._pending.get(task, [])
        while queue and queue[0].abandoned:
            queue.pop(0)
        if queue:
            queue[0].wake.set()

    async def run_many(self, task: str, items: list[dict[str, Any]]) -> list[dict[str, Any] | Exception]:
        """Run `task` for many argument dicts in one worker-thread pass.

        For classify, items that share labels, descriptions, multi_label and examples form one group whose labels
        and examples are embedded once; the texts of every group go through the model in batched forward passes.
        Each item's answer equals what `run` gives it alone.

        Args:
            task: the spec's local_task.
            items: the tool's (validated) arguments, one dict per call.

        Returns:
            One entry per item, in order: the output dict, or the ArgumentsError that item raised.

        Raises:
            LocalTierError: the local packages are missing or failed to load (for the whole batch).
        """
        embedder = await self.embedder()
        calls = [{k: a[k] for k in _TASK_ARGS[task] if a.get(k) is not None} for a in items]
        if task == "classify":
            return await anyio.to_thread.run_sync(partial(self._classify_batch, embedder, calls))
        return await anyio.to_thread.run_sync(partial(_each, getattr(local_tasks, task), embedder, calls))

    def _classify_batch(self, embedder: Any, calls: list[dict[str, Any]]) -> list[dict[str, Any] | Exception]:
        groups: dict[str, list[int]] = {}
        for i, call in enumerate(calls):
            shape = {k: call.get(k) for k in ("labels", "descriptions", "multi_label", "examples")}
            groups.setdefault(json.dumps(shape, sort_keys=True, default=str), []).append(i)
        results: list[dict[str, Any] | Exception] = [None] * len(calls)  # type: ignore[list-item]
        # Every text of the batch in one embed call (the embedder splits it into forward passes of its batch size).
        texts = [str(call.get("text", "")) for call in calls]
        nonempty = [i for i, text in enumerate(texts) if text.strip()]
        vectors = embedder.embed([local_tasks.read_text(texts[i]) for i in nonempty]) if nonempty else None
        row = {i: r for r, i in enumerate(nonempty)}
        for members in groups.values():
            first = calls[members[0]]
            kwargs = {k: first[k] for k in ("labels", "descriptions", "multi_label", "examples") if k in first}
            stored = self.store.fetch("classify", self._key(embedder, list(first.get("labels", []))))
            good = [i for i in members if i in row]
            for i in members:
                if i not in row:
                    results[i] = ArgumentsError("arguments: text is empty")
            if not good:
                continue
            assert vectors is not None  # `good` texts are non-empty, so they were embedded
            try:
                out = local_tasks.classify_many(
                    embedder, [texts[i] for i in good], stored=stored, text_vectors=vectors[[row[i] for i in good]],
                    **kwargs,
                )
            except (ValueError, TypeError, KeyError) as e:
                for i in good:
                    results[i] = ArgumentsError(f"arguments: {e}")
                continue
            for i, result in zip(good, out):
                results[i] = result
        return results

    async def learn(self, task: str, arguments: dict[str, Any], output: dict[str, Any]) -> bool:
        """Keep a higher tier's answer as a labelled example for the local tier.

        Call it with the answer of any tier other than local (an escalation, a shadow run) for a tool whose spec
        has a `local_task`. Only single-label classify answers whose label is one of the offered labels are kept;
        the text's embedding and the label go to the store (the text too when `store_inputs`).

        Returns:
            Whether an example was kept.

        Raises:
            LocalTierError: the local packages are missing or failed to load.
        """
        if task not in _LEARNS or arguments.get("multi_label"):
            return False
        labels = list(arguments.get("labels") or [])
        label, text = output.get("label"), arguments.get("text")
        if label not in labels or not isinstance(label, str) or not isinstance(text, str) or not text.strip():
            return False
        embedder = await self.embedder()

        def keep() -> None:
            vector = embedder.embed([local_tasks.read_text(text)])[0]
            self.store.add(task, self._key(embedder, labels), vector, label, text if self.store_inputs else None)

        await anyio.to_thread.run_sync(keep)
        return True


class _Job:
    __slots__ = ("abandoned", "arguments", "result", "wake")

    def __init__(self, arguments: dict[str, Any]) -> None:
        self.arguments = arguments
        self.wake = anyio.Event()
        self.result: Any = None
        self.abandoned = False


def _each(fn: Callable[..., dict[str, Any]], embedder: Any, calls: list[dict[str, Any]]) -> list[Any]:
    results: list[Any] = []
    for kwargs in calls:
        try:
            results.append(fn(embedder, **kwargs))
        except ValueError as e:
            results.append(ArgumentsError(f"arguments: {e}"))
    return results
