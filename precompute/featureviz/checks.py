"""Measures the Done bars of feature visualization are checked with (tests and reports):
the objective against the dataset's maximum, a visualization's dominant colour, diversity as
Gram-matrix cosine, facet probe scores. Pure compute on rendered images."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from precompute.capture import capture, unit_maxima
from precompute.featureviz.objectives import gram_cosines, positions_of
from precompute.featureviz.render import rgb_batch_to_model
from precompute.registry import LoadedModel


def dataset_maxima(loaded: LoadedModel, layer: str, images: torch.Tensor, units: Sequence[int],
                   batch_size: int = 100) -> dict[str, np.ndarray]:
    """Each unit's maximum over preprocessed `images`, two ways: the spatial maximum (how the
    examples job ranks, before the final ReLU) and the channel value (mean over positions,
    the objective's own measure)."""
    spec = loaded.spec.layer(layer)
    spatial, channel = [], []
    for start in range(0, images.shape[0], batch_size):
        chunk = images[start : start + batch_size]
        pre = capture(loaded, chunk, [layer], pre_activation=True)[layer]
        spatial.append(unit_maxima(pre, spec)[0][:, list(units)].float().max(dim=0).values)
        post = capture(loaded, chunk, [layer])[layer]
        channel.append(positions_of(post.float(), spec)[:, list(units)].mean(dim=2).max(dim=0).values)
    return {"spatial": torch.stack(spatial).max(dim=0).values.numpy(), "channel": torch.stack(channel).max(dim=0).values.numpy()}


def _hsv(pixels: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 RGB -> (n, 3) hue, saturation, value in [0, 1] (PIL's conversion)."""
    flat = np.ascontiguousarray(pixels, dtype=np.uint8).reshape(1, -1, 3)
    return np.asarray(Image.fromarray(flat).convert("HSV"), np.float32).reshape(-1, 3) / 255.0


def _hue_features(hsv: np.ndarray) -> np.ndarray:
    # Hue on the unit circle; value enters at a quarter weight, enough to tell apart palette
    # colours of one hue (brown is a dark orange) and too little to outweigh a change of hue
    # (at most as much as 14 degrees).
    angle = hsv[:, 0] * 2 * np.pi
    return np.stack([np.cos(angle), np.sin(angle), 0.25 * hsv[:, 2]], axis=1)


def dominant_colour(pixels: np.ndarray, palette: dict[str, tuple[int, int, int]], min_saturation: float = 0.35,
                    min_value: float = 0.25) -> str | None:
    """The palette colour whose hue most of an image's saturated pixels have; None if the
    image has (almost) no saturated pixels.

    Hue, not RGB distance: a visualization shades its colour from dark to bright, and by RGB
    distance every dim saturated pixel, whatever its hue, is nearest the palette's one dark
    colour (brown)."""
    hsv = _hsv(pixels)
    keep = (hsv[:, 1] >= min_saturation) & (hsv[:, 2] >= min_value)
    if keep.sum() < 0.01 * len(hsv):
        return None
    names = list(palette)
    colours = _hue_features(_hsv(np.asarray([palette[n] for n in names], np.uint8)))
    nearest = ((_hue_features(hsv[keep])[:, None, :] - colours[None]) ** 2).sum(axis=2).argmin(axis=1)
    return names[int(np.bincount(nearest, minlength=len(names)).argmax())]


def mean_pairwise_gram_cosine(loaded: LoadedModel, layer: str, pixels: np.ndarray) -> float:
    """Mean over pairs of the Gram-matrix cosine of images (n, h, w, 3) on `layer`."""
    captured = capture(loaded, rgb_batch_to_model(loaded, pixels), [layer])[layer]
    cos = gram_cosines(positions_of(captured.float(), loaded.spec.layer(layer))).numpy()
    n = len(pixels)
    return float((cos.sum() - np.trace(cos)) / (n * (n - 1)))


def probe_scores(loaded: LoadedModel, probe, pixels: np.ndarray) -> np.ndarray:
    captured = capture(loaded, rgb_batch_to_model(loaded, pixels), [probe.layer])[probe.layer]
    mean = positions_of(captured.float(), loaded.spec.layer(probe.layer)).mean(dim=2)
    return probe.score(mean).numpy()
