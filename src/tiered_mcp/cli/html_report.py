"""A self-contained HTML page with the report's tables and a chart of cost against agreement per tool and tier."""

from __future__ import annotations

import html
import math
from typing import Any, Sequence

from tiered_mcp.evidence.report import ToolReport

_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"]


def _money(x: float | None) -> str:
    return "unknown" if x is None else f"${x:.6f}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def _chart(points: Sequence[tuple[str, str, float, float]]) -> str:
    """An SVG scatter: x = cost per call (log scale), y = agreement; one colour per tool, labelled by tier."""
    w, h, pad = 640, 360, 56
    costs = [c for _, _, c, _ in points if c > 0]
    if not costs:
        return "<p>No priced comparisons to chart yet.</p>"
    lo, hi = math.log10(min(costs)) - 0.3, math.log10(max(costs)) + 0.3

    def x(cost: float) -> float:
        return pad + (w - 2 * pad) * (math.log10(max(cost, 10 ** lo)) - lo) / (hi - lo)

    def y(agree: float) -> float:
        return h - pad - (h - 2 * pad) * agree

    tools = sorted({t for t, *_ in points})
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img" '
             'aria-label="cost per call against agreement">',
             f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="#333"/>',
             f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{h - pad}" stroke="#333"/>',
             f'<text x="{w / 2}" y="{h - 14}" text-anchor="middle" font-size="12">cost per call (USD, log scale)</text>',
             f'<text x="16" y="{h / 2}" transform="rotate(-90 16 {h / 2})" text-anchor="middle" font-size="12">'
             'agreement with the comparison tier</text>']
    for frac in (0, 0.5, 0.9, 1):
        parts.append(f'<text x="{pad - 6}" y="{y(frac) + 4}" text-anchor="end" font-size="11">{frac:.0%}</text>')
        parts.append(f'<line x1="{pad}" y1="{y(frac)}" x2="{w - pad}" y2="{y(frac)}" stroke="#ddd"/>')
    for e in range(math.ceil(lo), math.floor(hi) + 1):
        parts.append(f'<text x="{x(10 ** e)}" y="{h - pad + 16}" text-anchor="middle" font-size="11">1e{e}</text>')
    for tool, tier, cost, agree in points:
        color = _COLORS[tools.index(tool) % len(_COLORS)]
        parts.append(f'<circle cx="{x(cost):.1f}" cy="{y(agree):.1f}" r="6" fill="{color}"><title>'
                     f'{html.escape(tool)} on {html.escape(tier)}: {_money(cost)} per call, {agree:.0%}</title></circle>')
        parts.append(f'<text x="{x(cost) + 8:.1f}" y="{y(agree) - 8:.1f}" font-size="11" fill="{color}">'
                     f'{html.escape(tool)} · {html.escape(tier)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(reports: Sequence[ToolReport], evals: Sequence[dict[str, Any]] = (), title: str = "tiered-mcp report") -> str:
    """The page: shadow agreement per tool, bake-off results when given, and the chart of both."""
    points = []
    for r in reports:
        if r.agreement is not None and r.cost_per_call is not None:
            points.append((r.tool, r.tier, r.cost_per_call, r.agreement))
        if r.comparison_cost_per_call is not None and r.scored:
            points.append((r.tool, r.comparison_tier, r.comparison_cost_per_call, 1.0))
    for e in evals:
        if e.get("quality") is not None and e.get("cost_per_case"):
            points.append((e["tool"], e["tier"] + " (eval)", e["cost_per_case"], e["quality"]))
    shadow_rows = [(r.tool, r.tier, r.comparison_tier, r.calls, r.shadowed, _pct(r.agreement),
                    "-" if r.interval is None else f"{_pct(r.interval[0])}–{_pct(r.interval[1])}",
                    _money(r.cost_per_call), _money(r.comparison_cost_per_call), r.recommendation) for r in reports]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;"
        "margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;font-size:14px}"
        "th{background:#f4f4f4}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        "<h2>Shadow comparisons</h2>",
        _table(["tool", "tier", "compared with", "calls", "shadowed", "agreement", "95% interval",
                "cost/call", "comparison cost/call", "recommendation"], shadow_rows)
        if shadow_rows else "<p>No shadow comparisons yet: set <code>shadow_rate</code> for a tool in the config.</p>",
    ]
    if evals:
        parts += ["<h2>Bake-off</h2>", _table(
            ["tool", "tier", "cases", "quality", "schema-valid", "cost", "p50 ms", "p95 ms"],
            [(e["tool"], e["tier"], e["cases"], _pct(e["quality"]), _pct(e["valid_rate"]), _money(e["cost_usd"]),
              f"{e['p50_ms']:.0f}", f"{e['p95_ms']:.0f}") for e in evals])]
    parts += ["<h2>Cost against agreement</h2>", _chart(points), "</body></html>"]
    return "\n".join(parts)
