"""The HTML report page: totals, savings over time, per-tool next steps, charts whose labels never overprint, and
(where Debian's chromium is installed) a real headless render with no console errors and a picture that is not blank.
"""

import shutil
import struct
import subprocess
import zlib

import pytest

from tiered_mcp.cli.html_report import (
    Point,
    cost_quality_chart,
    daily,
    next_step,
    render_html,
    spread_labels,
)
from tiered_mcp.evidence.report import ToolReport


def report(tool, tier, calls, scored, agreement, interval, cost, comparison_cost, recommendation):
    return ToolReport(tool=tool, tier=tier, comparison_tier="flagship", model=f"gpt-5.4-{tier}",
                      comparison_model="gpt-5.4", spec_version="1", calls=calls, shadowed=scored, scored=scored,
                      skipped=0, failed=0, older=0, agreement=agreement, interval=interval, mean_score=agreement,
                      cost_per_call=cost, comparison_cost_per_call=comparison_cost, recommendation=recommendation)


REPORTS = [
    report("classify", "nano", 120, 40, 0.95, (0.83, 0.99), 0.00006, 0.0008,
           "classify: nano agrees 95% ± 8 with flagship over 40 calls: keep nano"),
    report("summarize", "mini", 30, 10, 0.6, (0.31, 0.83), 0.0002, 0.0009,
           "summarize: mini agrees 60% ± 26 with flagship over 10 calls: too few comparisons to decide; keep sampling"),
]
# A day whose only call cost more than the flagship alone would have (2026-11-22) shows as a loss, never as zero.
CALLS = [{"ts": f"2026-11-{d:02d}T10:00:00+00:00", "kind": k, "cost_usd": c, "baseline_usd": f}
         for d, k, c, f in [(20, "call", 0.001, 0.01), (20, "call", 0.0, 0.002), (21, "shadow", 0.002, 0.0),
                            (22, "call", 0.003, 0.001), (23, "call", 0.002, 0.02)]]
EVALS = [{"tool": "extract", "tier": t, "cases": 20, "quality": q, "valid_rate": 1.0, "cost_usd": c * 20,
          "cost_per_case": c, "p50_ms": 300, "p95_ms": 900, "basis": "expected"}
         for t, q, c in [("nano", 0.9, 0.0001), ("mini", 0.92, 0.0004), ("flagship", 0.93, 0.002)]]


def page() -> str:
    return render_html(REPORTS, calls=CALLS, ledger="/home/me/.local/state/tiered-mcp/ledger.sqlite3",
                       generated="2026-12-01T21:00:00+00:00", tools=["classify", "summarize", "draft"])


def test_labels_are_spread_apart_even_when_points_coincide():
    ys = spread_labels([100, 100, 100, 101, 30], 13, 20, 220)
    ordered = sorted(ys)
    assert all(b - a >= 13 - 1e-9 for a, b in zip(ordered, ordered[1:], strict=False))
    assert min(ys) >= 20 and max(ys) <= 220
    crowded = spread_labels([215, 216, 217, 218], 13, 20, 220)
    assert max(crowded) <= 220 and sorted(crowded)[1] - sorted(crowded)[0] >= 13 - 1e-9


def test_coinciding_points_get_separate_labels():
    svg = cost_quality_chart("classify", [Point("nano (shadow)", "nano", 0.001, 0.9, 0.8, 0.95),
                                          Point("mini (bake-off)", "mini", 0.001, 0.9)])
    import re

    label_ys = [float(m) for m in re.findall(r'<text x="[\d.]+" y="([\d.]+)" font-size="11"', svg)]
    assert len(label_ys) == 2 and abs(label_ys[0] - label_ys[1]) >= 13


def test_the_page_has_totals_dates_ledger_savings_and_a_next_step_per_tool():
    html = page()
    assert "/home/me/.local/state/tiered-mcp/ledger.sqlite3" in html
    assert "calls from 2026-11-20 to 2026-11-23" in html
    assert "<b>4</b><span>calls from hosts" in html  # the shadow run is evidence, not work
    # saved = (0.01 - 0.001) + (0.002 - 0) + (0.001 - 0.003) + (0.02 - 0.002) = 0.027; net of 0.002 evidence: 0.025
    assert "<b>$0.0270</b><span>saved" in html and "<b>$0.0250</b><span>net of evidence" in html and "Savings over time" in html and "running total" in html
    assert "keep nano." in html and "keep sampling." in html
    assert "[tools.draft] shadow_rate = 0.05" in html  # a tool with no evidence is told how to get some
    assert "http" not in html.split("<body>")[0]  # self-contained: nothing fetched


def test_daily_counts_host_calls_only():
    assert daily(CALLS) == [("2026-11-20", 0.001, pytest.approx(0.011)), ("2026-11-22", 0.003, pytest.approx(-0.002)),
                            ("2026-11-23", 0.002, pytest.approx(0.018))]


def test_the_bake_off_page_does_not_claim_there_is_nothing():
    html = render_html([], EVALS, "tiered-mcp bake-off")
    assert "No shadow comparisons yet" not in html and "Bake-off" in html
    assert "nano comes within 5 points" in next_step("extract", [], EVALS)


def _png_is_not_blank(data: bytes) -> bool:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        if kind == b"IDAT":
            idat += data[pos + 8:pos + 8 + length]
        pos += 12 + length
    raw = zlib.decompress(idat)
    return len(set(raw)) > 16 and sum(1 for b in raw if b not in (0, 255)) > len(raw) // 200


def test_the_page_renders_in_a_real_browser(tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium; .ci/run installs it)")
    f = tmp_path / "report.html"
    f.write_text(page(), encoding="utf-8")
    shot = tmp_path / "shot.png"
    flags = ["--headless=new", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}",
             "--enable-logging=stderr", "--v=0", "--hide-scrollbars", "--window-size=1100,1600"]
    out = subprocess.run([browser, *flags, f"--screenshot={shot}", f.as_uri()], capture_output=True, text=True,
                         timeout=120)
    assert shot.exists(), out.stderr[-2000:]
    console = [ln for ln in out.stderr.splitlines() if ":CONSOLE" in ln]
    assert console == []
    assert _png_is_not_blank(shot.read_bytes())
    dom = subprocess.run([browser, *flags, "--dump-dom", f.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.stdout.count("<svg") >= 3 and "Per tool: what to do next" in dom.stdout
