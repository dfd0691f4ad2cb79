"""Every benchmark script starts: its imports resolve and its options parse (`--help`), so a refactor that breaks a
benchmark (a moved helper, a renamed module) fails here rather than on the next person to measure."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
NOT_ENTRY_POINTS = {"fast_upstream.py", "local_data.py"}  # a process the others start; a module of data loaders
SCRIPTS = sorted(p for p in BENCHMARKS.glob("*.py") if not p.name.startswith("_") and p.name not in NOT_ENTRY_POINTS)


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_the_benchmark_starts(script):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(BENCHMARKS.parent / "src"),
                                                        os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120,
                          env=env, cwd=BENCHMARKS.parent)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout
