"""The garbage collector set for a long-running server: `tiered-mcp serve` calls `settle_heap` once, after start-up.

Why: with CPython's default thresholds (a young collection every 700 net allocations), a server with many calls in
flight collects young objects every few milliseconds. Each call's objects live as long as its model request (tens
to hundreds of milliseconds), so they survive those collections, are promoted, and are scanned again in the older
generations together with everything start-up imported (~100,000 objects of modules, schemas and models that live
as long as the process). At 64 concurrent callers over HTTP that was 0.6 ms of CPU per call, a fifth of the
server's, most of it in full collections (docs/benchmarks.md). Two changes, neither of which frees less:

- `gc.freeze()` moves what start-up built into the permanent generation, so no collection scans it again (what is
  garbage at that moment is a few dozen objects, kept).
- A young-generation threshold of `YOUNG_THRESHOLD` net allocations: a call's objects are mostly freed by reference
  counting before a collection sees them, so few are promoted. Reference cycles are still collected, later: at
  most that many objects wait, a few MB.

Only the server does this: a library must not retune its host application's collector, so the CLI calls it,
never `build_server` or the runner.
"""

from __future__ import annotations

import gc
import logging
from typing import Any

log = logging.getLogger(__name__)

YOUNG_THRESHOLD = 20_000
"""Net allocations of container objects between young collections (CPython's default is 700)."""


def settle_heap(collector: Any = gc) -> None:
    """Freeze what start-up built and raise the young-generation threshold (older generations keep their ratios).

    Args:
        collector: the `gc` module, or a double of it in tests.
    """
    collector.freeze()
    _, older, oldest = collector.get_threshold()
    collector.set_threshold(YOUNG_THRESHOLD, older, oldest)
    log.debug("garbage collector: %d start-up objects frozen; young-generation threshold %d",
              collector.get_freeze_count(), YOUNG_THRESHOLD)
