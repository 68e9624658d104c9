"""Small server-rendered SVG charts (no JS library): a line chart of series over time and a horizontal bar chart.
Every label is escaped; the output is safe to put in a template as is."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape

from markupsafe import Markup

PALETTE = ("#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563")


def _fmt(value: float) -> str:
    return f"{value:.0f}" if abs(value) >= 10 or value == int(value) else f"{value:.2f}"


def line_chart(
    series: Mapping[str, Sequence[tuple[float, float]]], *, unit: str, width: int = 640, height: int = 200
) -> Markup:
    """One line per series of (time, value) points; x is time (the last minutes), y starts at 0."""
    points = [point for values in series.values() for point in values]
    if not points:
        return Markup('<p class="empty">no samples yet</p>')
    left, right, top, bottom = 48, 130, 10, 24
    t0, t1 = min(p[0] for p in points), max(p[0] for p in points)
    y1 = max(max(p[1] for p in points), 1.0)
    span = max(t1 - t0, 1.0)

    def x(t: float) -> float:
        return left + (t - t0) / span * (width - left - right)

    def y(v: float) -> float:
        return top + (1 - v / y1) * (height - top - bottom)

    parts = [
        f'<svg class="chart" role="img" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'xmlns="http://www.w3.org/2000/svg"><title>{escape(unit)} over the last {span:.0f}s</title>',
        f'<line x1="{left}" y1="{y(0):.1f}" x2="{width - right}" y2="{y(0):.1f}" class="axis"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{y(0):.1f}" class="axis"/>',
        f'<text x="{left - 4}" y="{top + 8}" text-anchor="end">{_fmt(y1)}</text>',
        f'<text x="{left - 4}" y="{y(0):.1f}" text-anchor="end">0</text>',
        f'<text x="{left}" y="{height - 6}">-{span:.0f}s</text>',
        f'<text x="{width - right}" y="{height - 6}" text-anchor="end">now ({escape(unit)})</text>',
    ]
    for index, (name, values) in enumerate(series.items()):
        color = PALETTE[index % len(PALETTE)]
        if not values:
            continue
        path = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in values)
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{path}"/>')
        last_t, last_v = values[-1]
        parts.append(f'<circle cx="{x(last_t):.1f}" cy="{y(last_v):.1f}" r="3" fill="{color}"/>')
        parts.append(
            f'<text x="{width - right + 8}" y="{top + 14 * index + 10}" fill="{color}">'
            f"{escape(name)}: {_fmt(last_v)}</text>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def bar_chart(bars: Sequence[tuple[str, float]], *, unit: str, width: int = 640, bar: int = 18) -> Markup:
    """One horizontal bar per (label, value)."""
    if not bars:
        return Markup('<p class="empty">nothing to show yet</p>')
    left, right = 170, 70
    top = 4
    height = top + len(bars) * (bar + 6) + 4
    high = max(max(value for _, value in bars), 1e-9)
    parts = [
        f'<svg class="chart" role="img" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'xmlns="http://www.w3.org/2000/svg"><title>{escape(unit)}</title>'
    ]
    for index, (label, value) in enumerate(bars):
        y = top + index * (bar + 6)
        length = max(value / high * (width - left - right), 1.0)
        color = PALETTE[index % len(PALETTE)] if len(bars) <= 3 else PALETTE[0]
        parts.append(f'<text x="{left - 6}" y="{y + bar - 5}" text-anchor="end">{escape(label)}</text>')
        parts.append(f'<rect x="{left}" y="{y}" width="{length:.1f}" height="{bar}" fill="{color}" rx="2"/>')
        parts.append(f'<text x="{left + length + 6:.1f}" y="{y + bar - 5}">{_fmt(value)} {escape(unit)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))
