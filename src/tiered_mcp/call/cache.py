"""The answer cache: an in-memory front over the ledger's cache table.

An answer is cached only when it passed every check with the tiers able to climb (see `Runner`), under a key that
names everything the answer depends on: the tool and its spec version, the models of the ladder it could climb, the
effective checks (triggers, threshold, validators), the caller (unless the config shares the cache), and the
arguments. Reads look in memory first, then the ledger (in a worker thread): while the server runs, the misses of
concurrent calls wait together and are looked up in one query (one thread hop for all of them, rather than one per
call); otherwise each is looked up at once. Writes ride along with the call's own ledger transaction. Expired
entries are swept now and then, not on every write.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from typing import Any

import anyio

from tiered_mcp.ledger.base import CacheEntry, LedgerStore, off_loop

Found = tuple[dict[str, Any], str, str]

MEMORY_ENTRIES = 4096


def key_json(value: Any) -> str:
    """The canonical JSON a cache key hashes."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)


def cache_key(parts: list[Any], arguments: dict[str, Any]) -> str:
    """A key for `arguments` under everything else the answer depends on (`parts`)."""
    return keyed(key_json(parts), arguments)


def keyed(parts_json: str, arguments: dict[str, Any]) -> str:
    """`cache_key` with the parts already encoded by `key_json`: the same key, without re-encoding per call what
    every call of a tool on one ladder shares."""
    return hashlib.sha256(f"[{parts_json},{key_json(arguments)}]".encode()).hexdigest()


class _Lookup:
    def __init__(self, key: str, now: float) -> None:
        self.key, self.now = key, now
        self.done = anyio.Event()
        self.found: Found | None = None
        self.error: BaseException | None = None


class Cache:
    """Cached answers: (output, tier, model) by key, until they expire."""

    def __init__(self, ledger: LedgerStore | None) -> None:
        self.ledger = ledger
        self._memory: OrderedDict[str, CacheEntry] = OrderedDict()
        self._waiting: list[_Lookup] | None = None  # while `run` reads for everyone
        self._wake = anyio.Event()

    async def get(self, key: str, now: float) -> Found | None:
        entry = self._memory.get(key)
        if entry is not None:
            if entry.expires > now:
                self._memory.move_to_end(key)
                return entry.output, entry.tier, entry.model
            del self._memory[key]
        if self.ledger is None:
            return None
        if self._waiting is None:
            return await off_loop(self.ledger.cache_get, key, now)
        lookup = _Lookup(key, now)
        self._waiting.append(lookup)
        self._wake.set()
        await lookup.done.wait()
        if lookup.error is not None:
            raise lookup.error
        return lookup.found

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Look up, one query at a time, whatever misses have gathered meanwhile (the runner's task group runs
        this until the server stops)."""
        assert self.ledger is not None
        self._waiting = []
        batch: list[_Lookup] = []
        task_status.started()
        try:
            while True:
                await self._wake.wait()
                self._wake = anyio.Event()
                batch, self._waiting = self._waiting, []
                if not batch:
                    continue
                try:
                    # The latest `now` of the batch: an entry that expires within the batch's few milliseconds
                    # counts as expired for all of it (a miss asks the model; serving a stale answer would be wrong).
                    found = await off_loop(self.ledger.cache_get_many, list({b.key: 0 for b in batch}),
                                           max(b.now for b in batch))
                except Exception as e:  # each caller sees the ledger's error, as a lookup of its own would
                    for b in batch:
                        b.error = e
                else:
                    for b in batch:
                        b.found = found.get(b.key)
                for b in batch:
                    b.done.set()
        finally:
            pending, self._waiting = self._waiting or [], None
            for b in [*batch, *pending]:  # the server is stopping: a miss only means the model is asked
                b.done.set()

    def entry(self, key: str, output: dict[str, Any], tier: str, model: str, expires: float) -> CacheEntry:
        """Remember an answer in memory; returns the entry to write with the call."""
        entry = CacheEntry(key, output, tier, model, expires)
        self._memory[key] = entry
        self._memory.move_to_end(key)
        while len(self._memory) > MEMORY_ENTRIES:
            self._memory.popitem(last=False)
        return entry

    async def sweep(self, now: float) -> int:
        for key in [k for k, e in self._memory.items() if e.expires <= now]:
            del self._memory[key]
        return 0 if self.ledger is None else await off_loop(self.ledger.cache_sweep, now)
