"""Inline SVG for the pages: activation histograms, the conditional-probability strip and
spatial activation maps. Plain strings, no plotting library; each figure carries a <title>
and an aria-label so it reads as text too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape
from typing import Any

from markupsafe import Markup


def _num(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 100 or abs(value) < 0.01:
        return f"{value:.3g}"
    return f"{value:.2f}"


def normalise_histogram(histogram: dict[str, Any] | None) -> dict[str, Any] | None:
    """The stored histogram as {"edges": [n+1], "counts": [n]}, whatever shape it came in.

    Accepted: {"edges", "counts"} (numpy.histogram's output, and what the examples job writes,
    with "underflow"/"overflow" counts outside the edges, kept), {"bins", "counts"} with bins
    as edges, or {"low", "high", "counts"} for equal-width bins. Anything else is None.
    """
    if not isinstance(histogram, dict):
        return None
    counts = histogram.get("counts")
    if not isinstance(counts, list) or not counts:
        return None
    edges = histogram.get("edges", histogram.get("bins"))
    if edges is None and "low" in histogram and "high" in histogram:
        low, high, n = float(histogram["low"]), float(histogram["high"]), len(counts)
        edges = [low + (high - low) * i / n for i in range(n + 1)]
    if not isinstance(edges, list) or len(edges) != len(counts) + 1:
        return None
    try:
        out: dict[str, Any] = {"edges": [float(e) for e in edges], "counts": [float(c) for c in counts]}
        for key in ("underflow", "overflow"):  # values outside the edges, as the examples job counts them
            if isinstance(histogram.get(key), (int, float)):
                out[key] = float(histogram[key])
        return out
    except (TypeError, ValueError):
        return None


def histogram_svg(histogram: dict[str, Any], width: int = 560, height: int = 140, marks: Sequence[float] = ()) -> Markup:
    """Bars on a log scale (activations pile up at zero), with the range underneath and
    optional vertical marks (e.g. the top dataset examples' activations)."""
    edges, counts = histogram["edges"], histogram["counts"]
    lo, hi = edges[0], edges[-1]
    span = (hi - lo) or 1.0
    pad_b, pad_t = 20, 6
    plot_h = height - pad_b - pad_t
    top = math.log1p(max(counts)) or 1.0

    def x(v: float) -> float:
        return (v - lo) / span * width

    bars = []
    for left, right, count in zip(edges, edges[1:], counts):
        h = math.log1p(count) / top * plot_h if count > 0 else 0
        bars.append(
            f'<rect x="{x(left):.1f}" y="{pad_t + plot_h - h:.1f}" width="{max(x(right) - x(left) - 0.5, 0.5):.1f}" '
            f'height="{h:.1f}"><title>{_num(left)} to {_num(right)}: {int(count)}</title></rect>'
        )
    lines = [
        f'<line class="mark" x1="{x(m):.1f}" x2="{x(m):.1f}" y1="{pad_t}" y2="{pad_t + plot_h}"/>' for m in marks if lo <= m <= hi
    ]
    zero = ""
    if lo < 0 < hi:
        zero = f'<line class="zero" x1="{x(0):.1f}" x2="{x(0):.1f}" y1="{pad_t}" y2="{pad_t + plot_h}"/>'
    total = int(sum(counts) + histogram.get("underflow", 0) + histogram.get("overflow", 0))
    label = f"Histogram of activations from {_num(lo)} to {_num(hi)} over {total} values, log scale"
    return Markup(
        f'<svg class="histogram" viewBox="0 0 {width} {height}" role="img" aria-label="{escape(label)}" '
        f'preserveAspectRatio="none"><title>{escape(label)}</title>'
        f'<g class="bars">{"".join(bars)}</g>{zero}{"".join(lines)}'
        f'<line class="axis" x1="0" x2="{width}" y1="{pad_t + plot_h}" y2="{pad_t + plot_h}"/>'
        f'<text x="0" y="{height - 4}">{_num(lo)}</text>'
        f'<text x="{width}" y="{height - 4}" text-anchor="end">{_num(hi)}</text>'
        + (f'<text x="{x(0):.1f}" y="{height - 4}" text-anchor="middle">0</text>' if lo < 0 < hi and 0.08 < -lo / span < 0.92 else "")
        + "</svg>"
    )


def strip_svg(buckets: Sequence[dict[str, Any]], cell: int = 44, gap: int = 4, missing_url: str = "") -> Markup:
    """The conditional-probability strip: one column of sampled images per activation bucket,
    strongest bucket on the right, each labelled with its activation range. A sample whose
    image is missing from the blob store (a null URL) shows `missing_url`, a placeholder."""
    if not buckets:
        return Markup("")
    rows = max(len(b["samples"]) for b in buckets) or 1
    col_w = cell + gap
    width = col_w * len(buckets) + gap
    label_h = 30
    height = rows * (cell + gap) + gap + label_h
    parts = []
    for i, bucket in enumerate(buckets):
        x0 = gap + i * col_w
        for j, sample in enumerate(bucket["samples"]):
            y = gap + (rows - 1 - j) * (cell + gap)  # stacked from the bottom up, like a bar
            parts.append(
                f'<image href="{escape(sample["image_url"] or missing_url)}" x="{x0}" y="{y}" width="{cell}" height="{cell}" '
                f'preserveAspectRatio="xMidYMid slice"><title>activation {_num(sample["activation"])}</title></image>'
            )
        base = rows * (cell + gap) + gap
        parts.append(
            f'<text x="{x0 + cell / 2:.1f}" y="{base + 12}" text-anchor="middle">{_num(bucket["low"])}</text>'
            f'<text class="muted" x="{x0 + cell / 2:.1f}" y="{base + 25}" text-anchor="middle">{_num(bucket["high"])}</text>'
        )
    label = f"{len(buckets)} activation buckets from {_num(buckets[0]['low'])} to {_num(buckets[-1]['high'])}, sampled images in each"
    return Markup(
        f'<svg class="strip" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        f'aria-label="{escape(label)}"><title>{escape(label)}</title>{"".join(parts)}</svg>'
    )


def heatmap_svg(grid: Sequence[Sequence[float]], scale: float) -> Markup:
    """A spatial activation map as a grid of translucent cells, to lay over the image.

    `scale` is the value drawn fully opaque (the unit's maximum on this image); negative
    values draw nothing.
    """
    h = len(grid)
    w = len(grid[0]) if h else 0
    scale = scale if scale > 0 else 1.0
    cells = []
    for r, row in enumerate(grid):
        for c, value in enumerate(row):
            alpha = max(0.0, min(1.0, value / scale))
            if alpha < 0.02:
                continue
            cells.append(f'<rect x="{c}" y="{r}" width="1" height="1" fill-opacity="{alpha * 0.75:.3f}"><title>{_num(value)}</title></rect>')
    return Markup(
        f'<svg class="heatmap" viewBox="0 0 {w} {h}" preserveAspectRatio="none" aria-hidden="true">{"".join(cells)}</svg>'
    )
