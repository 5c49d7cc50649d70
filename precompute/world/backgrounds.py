"""Neutral, textured backgrounds.

Backgrounds vary a lot (so the models cannot key on a flat backdrop) but are
always grey or barely tinted: if a background could be red, "red" in a caption
would no longer pin down the object's colour, and colour neurons would learn
backgrounds instead of objects.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

# name -> sampling weight. Plain backgrounds are named by their tone, textured
# ones by their pattern; every name is a word a caption can use as
# "on a {name} background".
BACKGROUNDS: dict[str, float] = {
    "white": 0.12,
    "grey": 0.08,
    "dark": 0.08,
    "black": 0.05,
    "beige": 0.07,
    "striped": 0.12,
    "checkered": 0.12,
    "dotted": 0.12,
    "noisy": 0.12,
    "gradient": 0.12,
}
PLAIN_TONES = {"white": "light", "grey": "mid", "dark": "dark", "black": "dark", "beige": "light"}
TEXTURED = ("striped", "checkered", "dotted", "noisy", "gradient")

# Warm (beige, paper) and cool (slate) tints. Small multiples of these keep the
# saturation far below that of any object colour.
_WARM = np.array([1.0, 0.45, -0.8], dtype=np.float32)
_COOL = np.array([-0.5, 0.0, 1.0], dtype=np.float32)


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    return x, y


def _neutral(rng: np.random.Generator, tone: str) -> np.ndarray:
    level = {"light": (200, 250), "mid": (110, 170), "dark": (12, 70)}[tone]
    base = rng.uniform(*level)
    amp = rng.uniform(0, 10 if tone != "dark" else 5)
    tint = _WARM if rng.random() < 0.6 else _COOL
    return np.clip(base + amp * tint, 0, 255).astype(np.float32)


def _second(rng: np.random.Generator, a: np.ndarray, tone: str) -> np.ndarray:
    """A second tone of the same tint, moved towards the middle grey: patterns
    stay visible but never compete with the object for contrast."""
    delta = rng.uniform(14, 38)
    sign = -1.0 if tone == "light" else 1.0 if tone == "dark" else rng.choice((-1.0, 1.0))
    return np.clip(a + sign * delta, 0, 255)


def _mix(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    return a + (b - a) * t[..., None]


def make_background(
    kind: str, rng: np.random.Generator, size: int, tone: str | None = None
) -> np.ndarray:
    """An (size, size, 3) float32 RGB array in [0, 255].

    ``tone`` ('light', 'mid', 'dark') only applies to textured kinds; plain kinds
    carry their tone in their name. Text renderers pass a tone so that the ink
    they chose stays legible.
    """
    if kind in PLAIN_TONES:
        if kind == "white":
            c = np.full(3, rng.uniform(236, 255), np.float32) + rng.uniform(0, 3) * _WARM
        elif kind == "black":
            c = np.full(3, rng.uniform(0, 24), np.float32) + rng.uniform(0, 2) * _COOL
        elif kind == "beige":
            c = np.full(3, rng.uniform(222, 242), np.float32) + rng.uniform(8, 14) * _WARM
        elif kind == "grey":
            c = _neutral(rng, "mid" if rng.random() < 0.6 else "light")
        else:  # dark
            c = _neutral(rng, "dark")
        c = np.clip(c, 0, 255)
        return np.broadcast_to(c, (size, size, 3)).copy()

    tone = tone or rng.choice(("light", "light", "mid", "dark"))
    a = _neutral(rng, tone)
    b = _second(rng, a, tone)
    x, y = _grid(size)
    s = size / 64.0
    if kind == "striped":
        ang = rng.choice((0.0, 45.0, 90.0, 135.0)) + rng.uniform(-10, 10)
        period = rng.uniform(5, 12) * s
        u = x * math.cos(math.radians(ang)) + y * math.sin(math.radians(ang))
        # Clipped sine: a square wave with ~1 px soft edges, so no aliasing.
        t = np.clip(np.sin(u * (2 * math.pi / period) + rng.uniform(0, 6.3)) * (period / 2.5), -1, 1)
        return _mix(a, b, 0.5 + 0.5 * t)
    if kind == "checkered":
        cell = rng.uniform(5, 11) * s
        ox, oy = rng.uniform(0, 2 * cell, 2)
        t = np.sin((x + ox) * math.pi / cell) * np.sin((y + oy) * math.pi / cell)
        return _mix(a, b, 0.5 + 0.5 * np.clip(t * cell, -1, 1))
    if kind == "dotted":
        sp = rng.uniform(6, 11) * s
        r = rng.uniform(1.1, 2.4) * s
        ox, oy = rng.uniform(0, sp, 2)
        yy = (y + oy) / sp
        stagger = (np.floor(yy) % 2) * 0.5 * sp if rng.random() < 0.5 else 0.0
        dx = np.mod(x + ox + stagger, sp) - sp / 2
        dy = (np.mod(yy, 1.0) - 0.5) * sp
        t = np.clip(r - np.sqrt(dx * dx + dy * dy) + 0.5, 0, 1)
        return _mix(a, b, t)
    if kind == "noisy":
        sigma = rng.uniform(5, 14)
        n = rng.normal(0, sigma, (size, size, 1)).astype(np.float32)
        n = n + rng.normal(0, sigma * 0.25, (size, size, 3)).astype(np.float32)
        return np.clip(a + n, 0, 255)
    if kind == "gradient":
        ang = math.radians(rng.uniform(0, 360))
        u = (x - size / 2) * math.cos(ang) + (y - size / 2) * math.sin(ang)
        t = np.clip(u / size + 0.5, 0, 1)
        return _mix(a, b, t)
    raise ValueError(f"unknown background {kind!r}; known: {sorted(BACKGROUNDS)}")


def pick_background(rng: np.random.Generator) -> str:
    names = list(BACKGROUNDS)
    w = np.array([BACKGROUNDS[n] for n in names])
    return names[int(rng.choice(len(names), p=w / w.sum()))]


def luminance(rgb) -> np.ndarray:
    rgb = np.asarray(rgb, dtype=np.float32)
    return rgb[..., 0] * 0.2126 + rgb[..., 1] * 0.7152 + rgb[..., 2] * 0.0722
