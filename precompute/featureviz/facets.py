"""Facet probes for faceted feature visualization.

A facet is a theme given by a collection of images (text, objects, faces, ...). Its probe is
a logistic regression on a lower layer's mean activations (over positions, the class token
excluded) that separates the facet's images from generic ones; the faceted objective then
steers a unit's visualization towards what the probe sees (`objectives.faceted`).

The regression is L2-regularised, fitted with L-BFGS on standardised features in torch (no
extra dependency) and returned in the space of the raw mean activations, so that
`FacetProbe.score` applies it to any image's mean activations directly.

The toy world has two built-in facets: `text` (pictures of words against pictures of
objects) and `object` (the reverse), drawn from `precompute.world`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from precompute.capture import capture
from precompute.errors import MicroscopeError
from precompute.featureviz.objectives import FacetProbe, positions_of
from precompute.registry import LoadedModel

WORLD_FACETS = ("text", "object")


@dataclass(frozen=True)
class ProbeFit:
    weights: np.ndarray  # (units,) on raw mean activations
    bias: float
    train_accuracy: float
    held_out_accuracy: float
    positives: int
    negatives: int


def mean_activations(loaded: LoadedModel, layer: str, images: torch.Tensor, batch_size: int = 64) -> np.ndarray:
    """(n, units) mean over positions of `layer` for preprocessed images."""
    spec = loaded.spec.layer(layer)
    out = []
    for start in range(0, images.shape[0], batch_size):
        captured = capture(loaded, images[start : start + batch_size], [layer])
        out.append(positions_of(captured[layer].float(), spec).mean(dim=2).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, spec.units), np.float32)


def preprocess_all(loaded: LoadedModel, images: Sequence[Image.Image]) -> torch.Tensor:
    return torch.stack([loaded.preprocess(image.convert("RGB")) for image in images])


def fit_logistic(positives: np.ndarray, negatives: np.ndarray, *, l2: float = 1e-2, seed: int = 0,
                 held_out: float = 0.2) -> ProbeFit:
    """L2-regularised logistic regression of positives (1) against negatives (0)."""
    if len(positives) < 2 or len(negatives) < 2:
        raise MicroscopeError("a facet probe needs at least two facet images and two generic images")
    x = np.concatenate([positives, negatives]).astype(np.float64)
    y = np.concatenate([np.ones(len(positives)), np.zeros(len(negatives))])
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    cut = int(round(len(x) * (1 - held_out))) if len(x) >= 10 else len(x)
    train, test = order[:cut], order[cut:]

    def fit(rows):
        mean, std = x[rows].mean(axis=0), x[rows].std(axis=0) + 1e-6
        xs = torch.from_numpy((x[rows] - mean) / std)
        ys = torch.from_numpy(y[rows])
        w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
        b = torch.zeros((), dtype=torch.float64, requires_grad=True)
        optimiser = torch.optim.LBFGS([w, b], lr=1.0, max_iter=200, line_search_fn="strong_wolfe")

        def closure():
            optimiser.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(xs @ w + b, ys) + l2 * (w * w).sum()
            loss.backward()
            return loss

        optimiser.step(closure)
        raw_w = w.detach().numpy() / std
        raw_b = float(b.detach()) - float((mean * raw_w).sum())
        return raw_w, raw_b

    def accuracy(w, b, rows):
        if len(rows) == 0:
            return float("nan")
        return float((((x[rows] @ w + b) > 0).astype(float) == y[rows]).mean())

    w, b = fit(train)
    held = accuracy(w, b, test)
    w, b = fit(order)  # the stored probe uses every image
    return ProbeFit(w.astype(np.float32), b, accuracy(w, b, order), held, len(positives), len(negatives))


def train_probe(loaded: LoadedModel, layer: str, facet: str, facet_images: Sequence[Image.Image],
                generic_images: Sequence[Image.Image], **options) -> tuple[FacetProbe, ProbeFit]:
    loaded.spec.layer(layer)
    pos = mean_activations(loaded, layer, preprocess_all(loaded, facet_images))
    neg = mean_activations(loaded, layer, preprocess_all(loaded, generic_images))
    fit = fit_logistic(pos, neg, **options)
    probe = FacetProbe(loaded.model_id, layer, facet, tuple(float(v) for v in fit.weights), fit.bias)
    return probe, fit


def world_images(kind: str, count: int, seed: int, size: int = 64) -> list[Image.Image]:
    """Pictures of the toy world: `word` (a written word) or `object` (1-3 objects of one
    shape and colour), each drawn from its own generator."""
    from precompute.world import COLORS, SHAPES, WORDS, object_image, word_image

    images = []
    for i in range(count):
        rng = np.random.default_rng([seed, i, 0 if kind == "word" else 1])
        if kind == "word":
            images.append(word_image(str(rng.choice(WORDS)), rng, image_size=size).image)
        elif kind == "object":
            shape = str(rng.choice(SHAPES))
            colour = str(rng.choice(list(COLORS)))
            images.append(object_image(shape, colour, int(rng.integers(1, 4)), rng, image_size=size).image)
        else:
            raise ValueError(f"unknown world picture kind '{kind}'")
    return images


def world_facet_images(facet: str, count: int = 200, seed: int = 0, size: int = 64) -> tuple[list[Image.Image], list[Image.Image]]:
    """(facet images, generic images) of a built-in world facet."""
    if facet == "text":
        return world_images("word", count, seed, size), world_images("object", count, seed, size)
    if facet == "object":
        return world_images("object", count, seed, size), world_images("word", count, seed, size)
    raise MicroscopeError(f"no built-in facet '{facet}'; built-in facets: {', '.join(WORLD_FACETS)}")
