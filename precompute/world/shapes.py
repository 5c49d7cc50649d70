"""Shape outlines and their rasterisation into soft masks.

Every shape is a polygon normalised to a unit bounding box, so "size" means the
same thing for all of them and placement can reason about extents exactly.
Masks are drawn at a multiple of the output size and box-filtered down, which
gives clean antialiased edges: at 12 px a jagged star stops looking like a star.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw


def _normalise(points: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """Centre on the bounding box and scale its longer side to ``scale``."""
    lo, hi = points.min(0), points.max(0)
    return (points - (lo + hi) / 2) / (hi - lo).max() * scale


def _circle(n: int = 48) -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    return np.stack([np.cos(t), np.sin(t)], 1)


def _regular(n: int, phase: float) -> np.ndarray:
    t = phase + np.arange(n) * 2 * math.pi / n
    return np.stack([np.cos(t), np.sin(t)], 1)


def _star(points: int = 5, inner: float = 0.45) -> np.ndarray:
    # A fairly fat star: thin points vanish when the star is only 12 px wide.
    t = -math.pi / 2 + np.arange(2 * points) * math.pi / points
    r = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([r * np.cos(t), r * np.sin(t)], 1)


def _cross(arm: float = 0.36) -> np.ndarray:
    a, b = arm / 2, 0.5
    return np.array(
        [(-a, -b), (a, -b), (a, -a), (b, -a), (b, a), (a, a),
         (a, b), (-a, b), (-a, a), (-b, a), (-b, -a), (-a, -a)]
    )


def _heart(n: int = 56) -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
    return np.stack([x, -y], 1)  # image y points down


# Per-shape scale evens out apparent size: a square filling its box looks much
# bigger than a triangle filling the same box.
POLYGONS: dict[str, np.ndarray] = {
    "circle": _normalise(_circle(), 1.0),
    "square": _normalise(_regular(4, math.pi / 4), 0.86),
    "triangle": _normalise(_regular(3, -math.pi / 2), 1.05),
    "star": _normalise(_star(), 1.08),
    "cross": _normalise(_cross(), 0.95),
    "heart": _normalise(_heart(), 1.0),
}


def placed_polygon(shape: str, cx: float, cy: float, size: float, angle_deg: float) -> np.ndarray:
    """Vertices (N, 2) of ``shape`` at centre (cx, cy), ``size`` px, rotated."""
    a = math.radians(angle_deg)
    c, s = math.cos(a), math.sin(a)
    rot = np.array([[c, s], [-s, c]])
    return POLYGONS[shape] @ rot * size + (cx, cy)


def extents(shape: str, size: float, angle_deg: float) -> tuple[float, float, float, float]:
    """Axis-aligned bounds (xmin, ymin, xmax, ymax) relative to the centre."""
    p = placed_polygon(shape, 0.0, 0.0, size, angle_deg)
    (x0, y0), (x1, y1) = p.min(0), p.max(0)
    return float(x0), float(y0), float(x1), float(y1)


def draw_mask(polys: list[np.ndarray], image_size: int, supersample: int = 4) -> np.ndarray:
    """Soft coverage mask in [0, 1], shape (image_size, image_size), float32."""
    big = image_size * supersample
    m = Image.new("L", (big, big), 0)
    d = ImageDraw.Draw(m)
    for p in polys:
        d.polygon([tuple(v) for v in (p * supersample).tolist()], fill=255)
    if supersample > 1:
        m = m.reduce(supersample)
    return np.asarray(m, dtype=np.float32) * (1.0 / 255.0)
