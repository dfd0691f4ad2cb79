"""A self-contained HTML page (no scripts, no network) a person would rather look at than read.

From the top: where the figures come from (ledger, date range), the totals (calls, cost, flagship baseline, saved),
savings over time, then per tool one sentence saying what to do next and a small chart of cost per call against
quality for each tier, with the 95% interval as a bar. Labels sit in a column beside each chart, spaced so that they
never overprint, with a leader line to their point, so tiers whose points coincide stay readable.
"""

from __future__ import annotations

import html
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Sequence

from tiered_mcp.cli.output import money
from tiered_mcp.evidence.report import ToolReport, wilson

_COLORS = {"local": "#2ca02c", "nano": "#1f77b4", "mini": "#9467bd", "flagship": "#d62728"}
_OTHER = "#555"


def _money(x: float | None) -> str:
    return money(x)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def _e(x: Any) -> str:
    return html.escape(str(x))


@dataclass(frozen=True)
class Point:
    """One tier of one tool on the cost/quality chart."""

    label: str
    tier: str
    cost: float
    quality: float
    low: float | None = None
    high: float | None = None


def points_by_tool(reports: Sequence[ToolReport], evals: Sequence[dict[str, Any]]) -> dict[str, list[Point]]:
    """The chart's points: each shadowed tier (agreement with its interval), its comparison tier (the reference, at
    100%), and each bake-off tier (quality, with a Wilson interval over its cases)."""
    out: dict[str, list[Point]] = defaultdict(list)
    for r in reports:
        if r.agreement is not None and r.cost_per_call is not None:
            lo, hi = r.interval or (None, None)
            out[r.tool].append(Point(f"{r.tier} (shadow)", r.tier, r.cost_per_call, r.agreement, lo, hi))
        if r.comparison_cost_per_call is not None and r.scored:
            out[r.tool].append(Point(f"{r.comparison_tier} (reference)", r.comparison_tier,
                                     r.comparison_cost_per_call, 1.0))
    for e in evals:
        if e.get("quality") is not None and e.get("cost_per_case") is not None:
            n = int(e.get("cases") or 0)
            lo, hi = wilson(round(e["quality"] * n), n) if n else (None, None)
            out[e["tool"]].append(Point(f"{e['tier']} (bake-off)", e["tier"], e["cost_per_case"], e["quality"], lo, hi))
    return dict(out)


def spread_labels(ys: Sequence[float], gap: float, top: float, bottom: float) -> list[float]:
    """Label positions as near as possible to `ys`, at least `gap` apart, within [top, bottom] (SVG y grows down)."""
    order = sorted(range(len(ys)), key=lambda i: ys[i])
    placed = [0.0] * len(ys)
    last = top - gap
    for i in order:
        placed[i] = max(ys[i], last + gap)
        last = placed[i]
    overflow = last - bottom
    if overflow > 0:  # pushed past the bottom: shift everything up, keeping the gaps
        for i in order:
            placed[i] -= overflow
        last = top - gap
        for i in order:  # and keep within the top edge
            placed[i] = max(placed[i], last + gap)
            last = placed[i]
    return placed


def cost_quality_chart(tool: str, points: Sequence[Point]) -> str:
    """An SVG: x = cost per call (log scale), y = quality 0..100% with interval bars; labels in a column at the right."""
    w, h, left, right_col, pad = 760, 220, 48, 270, 22
    plot_w = w - left - right_col
    costs = [p.cost for p in points if p.cost > 0]
    if not points:
        return ""
    lo = math.log10(min(costs)) - 0.3 if costs else -6
    hi = math.log10(max(costs)) + 0.3 if costs else -3
    if hi - lo < 1:
        lo, hi = lo - 0.5, hi + 0.5

    def x(cost: float) -> float:
        v = math.log10(cost) if cost > 0 else lo  # a free tier sits at the left edge
        return left + plot_w * (v - lo) / (hi - lo)

    def y(q: float) -> float:
        return pad + (h - 2 * pad) * (1 - q)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" '
             f'aria-label="{_e(tool)}: cost per call against quality">']
    for frac in (0, 0.5, 0.9, 1):
        style = 'stroke="#bbb" stroke-dasharray="4 3"' if frac == 0.9 else 'stroke="#eee"'
        parts.append(f'<line x1="{left}" y1="{y(frac):.1f}" x2="{left + plot_w}" y2="{y(frac):.1f}" {style}/>')
        parts.append(f'<text x="{left - 6}" y="{y(frac) + 4:.1f}" text-anchor="end" font-size="10" fill="#666">'
                     f'{frac:.0%}</text>')
    for e in range(math.ceil(lo), math.floor(hi) + 1):
        parts.append(f'<text x="{x(10 ** e):.1f}" y="{h - 6}" text-anchor="middle" font-size="10" fill="#666">'
                     f'{_money(10.0 ** e)}</text>')
    parts.append(f'<line x1="{left}" y1="{h - pad}" x2="{left + plot_w}" y2="{h - pad}" stroke="#999"/>')
    ys = [y(p.quality) for p in points]
    label_ys = spread_labels(ys, 13, pad, h - pad)
    for p, ly in zip(points, label_ys, strict=True):
        color = _COLORS.get(p.tier, _OTHER)
        px, py = x(p.cost), y(p.quality)
        if p.low is not None and p.high is not None:
            parts.append(f'<line x1="{px:.1f}" y1="{y(p.high):.1f}" x2="{px:.1f}" y2="{y(p.low):.1f}" '
                         f'stroke="{color}" stroke-width="2" opacity="0.6"/>')
        parts.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="4.5" fill="{color}"><title>{_e(tool)} on '
                     f'{_e(p.label)}: {_money(p.cost)} per call, {_pct(p.quality)}'
                     f'{f" (95%: {_pct(p.low)}–{_pct(p.high)})" if p.low is not None else ""}</title></circle>')
        lx = left + plot_w + 12
        parts.append(f'<polyline points="{px + 5:.1f},{py:.1f} {lx - 4:.1f},{ly:.1f}" fill="none" stroke="{color}" '
                     'stroke-width="0.7" opacity="0.6"/>')
        parts.append(f'<text x="{lx:.1f}" y="{ly + 3.5:.1f}" font-size="11" fill="{color}">{_e(p.label)} '
                     f'{_pct(p.quality)} · {_money(p.cost)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def savings_chart(days: Sequence[tuple[str, float, float]]) -> str:
    """An SVG of what was spent and saved per day (bars), with the running total saved (line)."""
    if not days:
        return ""
    w, h, left, pad = 760, 220, 64, 24
    n = len(days)
    peak = max(max(c + max(s, 0.0) for _, c, s in days), 1e-9)
    cumulative, run = [], 0.0
    for _, _, s in days:
        run += s
        cumulative.append(run)
    top_cum = max(max(abs(c) for c in cumulative), 1e-9)
    bw = min(48.0, (w - left - 20) / n)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" '
             'aria-label="spent and saved per day">']
    base = h - pad
    for i, (day, cost, saved) in enumerate(days):
        x0 = left + i * bw + bw * 0.15
        hc = (h - 2 * pad) * cost / peak
        hs = (h - 2 * pad) * max(saved, 0.0) / peak  # a day's loss draws no bar; its title says the figure
        parts.append(f'<rect x="{x0:.1f}" y="{base - hc:.1f}" width="{bw * 0.7:.1f}" height="{hc:.1f}" fill="#999">'
                     f'<title>{_e(day)}: spent {_money(cost)}</title></rect>')
        parts.append(f'<rect x="{x0:.1f}" y="{base - hc - hs:.1f}" width="{bw * 0.7:.1f}" height="{hs:.1f}" '
                     f'fill="#2ca02c"><title>{_e(day)}: saved {_money(saved)}</title></rect>')
    step = max(1, n // 8)
    for i in range(0, n, step):
        parts.append(f'<text x="{left + (i + 0.5) * bw:.1f}" y="{h - 6}" text-anchor="middle" font-size="10" '
                     f'fill="#666">{_e(days[i][0][5:])}</text>')
    line = " ".join(f"{left + (i + 0.5) * bw:.1f},{base - (h - 2 * pad) * max(c, 0.0) / top_cum:.1f}"
                    for i, c in enumerate(cumulative))
    parts.append(f'<polyline points="{line}" fill="none" stroke="#1f77b4" stroke-width="2"/>')
    parts.append(f'<text x="{left - 6}" y="{pad + 4}" text-anchor="end" font-size="10" fill="#666">'
                 f'{_money(peak)}</text>')
    parts.append(f'<text x="{w - 20}" y="{pad - 8}" text-anchor="end" font-size="11" fill="#1f77b4">running total '
                 f'saved: {_money(cumulative[-1])}</text>')
    parts.append(f'<line x1="{left}" y1="{base}" x2="{w - 20}" y2="{base}" stroke="#999"/></svg>')
    return "".join(parts)


def daily(calls: Sequence[dict[str, Any]]) -> list[tuple[str, float, float]]:
    """(day, spent, saved) per UTC day over the calls hosts made (shadow and eval runs are evidence, not work)."""
    per: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for c in calls:
        if (c.get("kind") or "call") != "call":
            continue
        day = str(c.get("ts") or "")[:10]
        cost, baseline = c.get("cost_usd"), c.get("baseline_usd")
        per[day][0] += float(cost or 0)
        if cost is not None and baseline is not None and not c.get("estimated"):
            per[day][1] += float(baseline) - float(cost)  # signed: a day the ladder lost money shows as a loss
    return [(d, v[0], v[1]) for d, v in sorted(per.items())]


def next_step(tool: str, reports: Sequence[ToolReport], evals: Sequence[dict[str, Any]]) -> str:
    """One sentence per tool: what the evidence says to do now."""
    mine = [r for r in reports if r.tool == tool]
    if mine:
        return " ".join(r.recommendation.split(": ", 1)[-1].rstrip(".") + "." for r in mine)
    scored = [e for e in evals if e["tool"] == tool and e.get("quality") is not None]
    if scored:
        best = max(e["quality"] for e in scored)
        good = sorted((e for e in scored if e["quality"] >= best - 0.05), key=lambda e: e.get("cost_per_case") or 0)
        pick = good[0]
        return (f"In the bake-off {pick['tier']} comes within 5 points of the best quality ({_pct(best)}) at "
                f"{_money(pick.get('cost_per_case'))} a case: `tiered-mcp eval ... --min-quality Q --write-config "
                f"FILE` sets it; then shadow a share of real calls to confirm.")
    return (f"No evidence yet: set [tools.{tool}] shadow_rate = 0.05 in the config to compare a share of real calls "
            "with the flagship, or run a bake-off with `tiered-mcp eval`.")


_STYLE = ("body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1000px;color:#222;padding:0 1em}"
          "h1{margin-bottom:.2em}.meta{color:#666;margin-top:0}.cards{display:flex;gap:1em;flex-wrap:wrap;margin:1em 0}"
          ".card{border:1px solid #ddd;border-radius:8px;padding:.7em 1em;min-width:9em}.card b{display:block;"
          "font-size:1.5em}.card span{color:#666;font-size:.9em}.saved b{color:#2ca02c}table{border-collapse:collapse;"
          "margin:1em 0;font-size:13px}td,th{border:1px solid #ddd;padding:4px 8px;text-align:left}th{background:#f6f6f6}"
          ".tool{border-top:1px solid #eee;padding-top:.5em;margin-top:1.5em}.next{background:#f3f8f1;border-left:4px "
          "solid #2ca02c;padding:.5em .8em}.legend span{margin-right:1em}")


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(reports: Sequence[ToolReport], evals: Sequence[dict[str, Any]] = (), title: str = "tiered-mcp report",
                *, calls: Sequence[dict[str, Any]] = (), ledger: str | None = None, generated: str | None = None,
                tools: Sequence[str] = ()) -> str:
    """The page.

    Args:
        reports: shadow comparisons per tool and tier (`evidence.report.build_report`).
        evals: bake-off scores (`TierScore` as dicts), for the bake-off page.
        title: the page's title.
        calls: the ledger's call rows, for the totals, the date range and savings over time.
        ledger: where the figures come from (a URL's password masked).
        generated: when the page was made (ISO), shown in the header.
        tools: tools to give a next step even without evidence (the loaded specs).
    """
    work = [c for c in calls if (c.get("kind") or "call") == "call"]
    days = daily(work)
    spent = sum(float(c.get("cost_usd") or 0) for c in work)
    flagship = sum(float(c.get("baseline_usd") or 0) for c in work if not c.get("estimated"))
    measured = [c for c in work if not c.get("estimated") and c.get("cost_usd") is not None
                and c.get("baseline_usd") is not None]
    estimated = sum(float(c["baseline_usd"]) - float(c["cost_usd"]) for c in work if c.get("estimated")
                    and c.get("cost_usd") is not None and c.get("baseline_usd") is not None)
    evidence = sum(float(c.get("cost_usd") or 0) for c in calls if (c.get("kind") or "call") != "call")
    stamps = sorted(str(c.get("ts"))[:10] for c in calls if c.get("ts"))
    meta = []
    if ledger:
        meta.append(f"ledger <code>{_e(ledger)}</code>")
    if stamps:
        meta.append(f"calls from {_e(stamps[0])} to {_e(stamps[-1])} (UTC)")
    if generated:
        meta.append(f"made {_e(generated[:16].replace('T', ' '))} UTC")
    parts = ["<!doctype html><html lang='en'><head><meta charset='utf-8'>",
             "<meta name='viewport' content='width=device-width, initial-scale=1'>",
             f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body>",
             f"<h1>{_e(title)}</h1>", f"<p class='meta'>{' · '.join(meta)}</p>" if meta else ""]
    if calls:
        # Signed, measured only (docs/accounting.md): estimated savings of the local tier are shown apart.
        saved = sum(float(c["baseline_usd"]) - float(c["cost_usd"]) for c in measured)
        pct = f" ({100 * saved / flagship:.0f}%)" if flagship else ""
        parts.append("<div class='cards'>"
                     f"<div class='card'><b>{len(work):,}</b><span>calls from hosts</span></div>"
                     f"<div class='card'><b>{_money(spent)}</b><span>spent</span></div>"
                     f"<div class='card'><b>{_money(flagship)}</b><span>on the flagship it would have been</span></div>"
                     f"<div class='card saved'><b>{_money(saved)}</b><span>saved{_e(pct)}</span></div>"
                     f"<div class='card'><b>{_money(evidence)}</b><span>spent on evidence (shadow, bake-offs)</span>"
                     f"</div><div class='card'><b>{_money(saved - evidence)}</b><span>net of evidence</span></div>"
                     + (f"<div class='card'><b>~{_money(estimated)}</b><span>estimated, local tier (not in the "
                        "saving)</span></div>" if estimated else "") + "</div>")
        if days:
            parts += ["<h2>Savings over time</h2>",
                      "<p class='legend'><span style='color:#999'>■ spent</span><span style='color:#2ca02c'>■ saved"
                      "</span><span style='color:#1f77b4'>— running total saved</span></p>", savings_chart(days)]
    charts = points_by_tool(reports, evals)
    names = sorted({*tools, *(r.tool for r in reports), *(e["tool"] for e in evals)})
    if names:
        parts.append("<h2>Per tool: what to do next</h2>")
        parts.append("<p class='meta'>Each chart: cost per call (log scale) against quality — agreement with the "
                     "reference tier for shadow runs, the score for bake-offs — with the 95% interval as a bar; the "
                     "dashed line is 90%.</p>")
    for tool in names:
        parts.append(f"<div class='tool'><h3>{_e(tool)}</h3><p class='next'>{_e(next_step(tool, reports, evals))}</p>")
        if tool in charts:
            parts.append(cost_quality_chart(tool, charts[tool]))
        parts.append("</div>")
    if reports:
        parts += ["<h2>Shadow comparisons</h2>", _table(
            ["tool", "tier", "compared with", "calls", "shadowed", "agreement", "95% interval", "cost/call",
             "comparison cost/call", "recommendation"],
            [(r.tool, r.tier, r.comparison_tier, r.calls, r.shadowed, _pct(r.agreement),
              "-" if r.interval is None else f"{_pct(r.interval[0])}–{_pct(r.interval[1])}",
              _money(r.cost_per_call), _money(r.comparison_cost_per_call), r.recommendation) for r in reports])]
    elif not evals:
        parts.append("<p>No shadow comparisons yet: set <code>shadow_rate</code> under <code>[tools.NAME]</code> in the "
                     "config, or run a bake-off with <code>tiered-mcp eval</code>.</p>")
    if evals:
        parts += ["<h2>Bake-off</h2>", _table(
            ["tool", "tier", "cases", "quality", "basis", "schema-valid", "cost", "cost/case", "p50 ms", "p95 ms"],
            [(e["tool"], e["tier"], e["cases"], _pct(e["quality"]), e.get("basis", ""), _pct(e["valid_rate"]),
              _money(e["cost_usd"]), _money(e.get("cost_per_case")), f"{e['p50_ms']:.0f}", f"{e['p95_ms']:.0f}")
             for e in evals])]
    parts.append("</body></html>")
    return "\n".join(p for p in parts if p)
