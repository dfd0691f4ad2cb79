"""`tiered-mcp serve` settles the garbage collector once start-up is done (serve/heap.py): start-up's objects
frozen, a young-generation threshold that a call's short-lived objects rarely reach."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import tiered_mcp
from tiered_mcp.serve.heap import YOUNG_THRESHOLD, settle_heap

from .conftest import PYTHON


class RecordingCollector:
    """The part of the `gc` module settle_heap uses, recording what was asked of it."""

    def __init__(self) -> None:
        self.threshold: tuple[int, ...] = (700, 10, 10)
        self.frozen = 0
        self.calls: list[str] = []

    def freeze(self) -> None:
        self.calls.append("freeze")
        self.frozen = 12345

    def get_freeze_count(self) -> int:
        return self.frozen

    def get_threshold(self) -> tuple[int, ...]:
        return self.threshold

    def set_threshold(self, *threshold: int) -> None:
        self.calls.append("set_threshold")
        self.threshold = threshold


def test_settle_heap_freezes_start_up_and_raises_only_the_young_threshold(caplog: Any) -> None:
    gc = RecordingCollector()
    gc.threshold = (700, 7, 9)  # older generations' ratios are the process's own and stay
    with caplog.at_level("DEBUG", logger="tiered_mcp.serve.heap"):
        settle_heap(gc)
    assert gc.calls == ["freeze", "set_threshold"]
    assert gc.threshold == (YOUNG_THRESHOLD, 7, 9) and YOUNG_THRESHOLD > 700
    assert "12345 start-up objects frozen" in caplog.text


def test_serve_settles_the_heap_after_start_up(tmp_path: Path) -> None:
    # The child runs this same source (not an installed copy); stdin at EOF: it starts, then ends at once.
    src = str(Path(tiered_mcp.__file__).resolve().parents[1])
    env = {"OPENAI_API_KEY": "sk-test-not-a-key", "PYTHONPATH": src, "XDG_STATE_HOME": str(tmp_path / "state"),
           "XDG_CONFIG_HOME": str(tmp_path / "config")}
    proc = subprocess.run([PYTHON, "-m", "tiered_mcp", "serve", "--ledger", str(tmp_path / "ledger.sqlite3"),
                           "--log-level", "DEBUG"], env=env, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if "garbage collector:" in ln]
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    frozen = int(line.split("garbage collector: ")[1].split()[0])
    assert frozen > 10_000 and f"young-generation threshold {YOUNG_THRESHOLD}" in line  # imports, specs, server
    assert proc.stdout == ""
