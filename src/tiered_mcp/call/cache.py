"""The answer cache: an in-memory front over the ledger's cache table.

An answer is cached only when it passed every check with the tiers able to climb (see `Runner`), under a key that
names everything the answer depends on: the tool and its spec version, the models of the ladder it could climb, the
effective checks (triggers, threshold, validators), the caller (unless the config shares the cache), and the
arguments. Reads look in memory first, then the ledger (in a worker thread); writes ride along with the call's own
ledger transaction. Expired entries are swept now and then, not on every write.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from typing import Any

from tiered_mcp.ledger.base import CacheEntry, LedgerStore, off_loop

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


class Cache:
    """Cached answers: (output, tier, model) by key, until they expire."""

    def __init__(self, ledger: LedgerStore | None) -> None:
        self.ledger = ledger
        self._memory: OrderedDict[str, CacheEntry] = OrderedDict()

    async def get(self, key: str, now: float) -> tuple[dict[str, Any], str, str] | None:
        entry = self._memory.get(key)
        if entry is not None:
            if entry.expires > now:
                self._memory.move_to_end(key)
                return entry.output, entry.tier, entry.model
            del self._memory[key]
        if self.ledger is None:
            return None
        return await off_loop(self.ledger.cache_get, key, now)

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
