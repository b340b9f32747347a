"""The report's inline SVG charts (accessguard.investigate.report): lines and bars, escaped.

Drawn here, with no script, font or style sheet from anywhere; every string
goes through ``html.escape``.
"""

from __future__ import annotations

import datetime as dt
import html
from collections.abc import Sequence

OUTLIER = "#c92a2a"


def e(value: object) -> str:
    """``html.escape`` of the text of ``value`` (quotes too)."""
    return html.escape(str(value), quote=True)


def nice(top: float) -> float:
    """The smallest 1, 2 or 5 times a power of ten at or above ``top`` (1 for nothing)."""
    if top <= 0:
        return 1.0
    scale = 10.0 ** (len(str(int(top))) - 1)
    return next(m * scale for m in (1, 2, 5, 10) if m * scale >= top)


def num(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.1f}"


# ---------------------------------------------------------------------- charts


def anchor(i: int, n: int) -> str:
    return "middle" if n == 1 or 0 < i < n - 1 else ("start" if i == 0 else "end")


def svg_open(kind: str, width: int, height: int, label: str) -> str:
    return (
        f'<svg class="chart {kind}" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{e(label)}"><title>{e(label)}</title>'
    )


def line_chart(
    buckets: Sequence[dt.datetime],
    series: Sequence[tuple[str, str, Sequence[int], bool]],
    *,
    label: str,
) -> str:
    """An SVG line chart: one (name, colour, values per bucket, emphasised) per series."""
    width, height, left, right, top, bottom = 1080, 240, 56, 20, 14, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = nice(max((max(v, default=0) for _, _, v, _ in series), default=0))
    n = len(buckets)

    def x(i: int) -> float:
        return left + (plot_w / 2 if n == 1 else plot_w * i / (n - 1))

    def y(v: float) -> float:
        return top + plot_h * (1 - v / peak)

    parts = [svg_open("line", width, height, label)]
    for k in range(5):
        v = peak * k / 4
        parts.append(
            f'<line class="grid" x1="{left}" x2="{width - right}" y1="{y(v):.1f}" '
            f'y2="{y(v):.1f}"/><text x="{left - 8}" y="{y(v) + 4:.1f}" '
            f'text-anchor="end">{e(num(v))}</text>'
        )
    parts.append(
        f'<line class="axis" x1="{left}" x2="{width - right}" y1="{y(0):.1f}" y2="{y(0):.1f}"/>'
    )
    step = max(1, -(-n // 7))
    parts.extend(
        f'<text x="{x(i):.1f}" y="{height - 14}" text-anchor="{anchor(i, n)}">'
        f"{e(buckets[i].astimezone(dt.UTC).strftime('%m-%d %H:%M'))}</text>"
        for i in range(0, n, step)
    )
    for name, colour, values, strong in sorted(series, key=lambda s: s[3]):  # outliers on top
        points = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(values))
        stroke = 3.2 if strong else 1.8
        cls = "series outlier" if strong else "series"
        parts.append(
            f'<g class="{cls}" data-user="{e(name)}"><title>{e(name)}</title>'
            f'<polyline fill="none" stroke="{colour}" stroke-width="{stroke}" '
            f'stroke-linejoin="round" points="{points}"/>'
        )
        if n <= 48:
            parts.extend(
                f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="{3.6 if strong else 2.6}" '
                f'fill="{colour}"/>'
                for i, v in enumerate(values)
            )
        parts.append("</g>")
    parts.append("</svg>")
    return "".join(parts)


def bar_chart(
    bars: Sequence[tuple[str, float]],
    *,
    label: str,
    colour: str = "#2f6fdf",
    strong: frozenset[str] = frozenset(),
    marks: dict[str, float] | None = None,
) -> str:
    """A horizontal SVG bar chart; ``strong`` bars in the outlier colour, ``marks`` as ticks."""
    if not bars:
        return '<p class="note">None in this period.</p>'
    width, row, left, right = 560, 26, 170, 60
    height = row * len(bars) + 10
    peak = nice(max(v for _, v in bars))
    scale = (width - left - right) / peak
    parts = [svg_open("bar", width, height, label)]
    for i, (name, value) in enumerate(bars):
        top = 5 + i * row
        fill = OUTLIER if name in strong else colour
        parts.append(
            f'<text x="{left - 8}" y="{top + 16}" text-anchor="end">{e(name)}</text>'
            f'<rect x="{left}" y="{top + 4}" width="{max(value * scale, 1):.1f}" '
            f'height="{row - 9}" rx="3" fill="{fill}">'
            f"<title>{e(name)}: {e(num(value))}</title></rect>"
            f'<text x="{left + value * scale + 6:.1f}" y="{top + 16}">{e(num(value))}</text>'
        )
        mark = (marks or {}).get(name)
        if mark is not None:
            mx = left + mark * scale
            parts.append(
                f'<line x1="{mx:.1f}" x2="{mx:.1f}" y1="{top + 1}" y2="{top + row - 2}" '
                f'stroke="#1f2933" stroke-width="2" stroke-dasharray="3 2">'
                f"<title>peer baseline {e(num(mark))}</title></line>"
            )
    parts.append("</svg>")
    return "".join(parts)
