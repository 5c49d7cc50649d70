"""The toy models' knowledge for discovery tests, computed directly with precompute on a few
hundred pictures of the synthetic world (the training distribution): every layer's directions,
mean effects and thresholds (precompute.directions), the world vocabulary's embeddings and the
layer's OMP decompositions over it (precompute.omp), made as the demo makes them. Held-out
one-object pictures, with their object masks, come from another seed."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from precompute.directions import MeanEffects, TopEffects, directions
from precompute.discovery import LayerKnowledge, decompose_layer
from precompute.lens import layer_effects
from precompute.registry import load_embedded
from precompute.text_pools import encode_texts
from precompute.words import world_vocabulary

TRAIN_SEED = 7
HELD_OUT_SEED = 1234
IMAGES = 320
TOP = 16  # the 16th-largest norm over 320 pictures: about the top 5 %, the article's 98th percentile in spirit
TERMS = 8  # terms per decomposition: on the toy models 6-8 name colours and shapes best (32 adds noise words)
NORMALISATION = "per-dimension"  # the authors' dictionary scaling, as the demo's decompose job stores it
LAYERS = {"toy-vit": ("transformer.resblocks.3.mlp", "transformer.resblocks.4.mlp", "transformer.resblocks.5.mlp"),
          "toy-rn": ("layer4",)}
CONCEPT_LAYER = {"toy-vit": "transformer.resblocks.5.mlp", "toy-rn": "layer4"}


@lru_cache(maxsize=None)
def model(arch: str):
    return load_embedded(arch, device="cpu")


def world_pixels(loaded, count: int = IMAGES, seed: int = TRAIN_SEED) -> torch.Tensor:
    from precompute.world import generate

    return torch.stack([loaded.preprocess(generate(seed, i).image) for i in range(count)])


@lru_cache(maxsize=None)
def pool(arch: str) -> tuple[tuple[str, ...], torch.Tensor]:
    loaded = model(arch)
    texts = tuple(world_vocabulary())
    return texts, encode_texts(loaded.model, loaded.tokenizer, texts)


@lru_cache(maxsize=None)
def knowledge(arch: str) -> dict[str, LayerKnowledge]:
    loaded = model(arch)
    pixels = world_pixels(loaded)
    layers = LAYERS[arch]
    batches = [pixels[i:i + 64] for i in range(0, len(pixels), 64)]
    means: dict[str, MeanEffects] = {}
    for batch in batches:
        for name, value in layer_effects(loaded, batch, layers).items():
            means.setdefault(name, MeanEffects(*value.values.shape[1:])).update(value.values)
    tops = {name: TopEffects(acc.mean(), TOP) for name, acc in means.items()}
    position = 0
    for batch in batches:
        for name, value in layer_effects(loaded, batch, layers).items():
            tops[name].update(value.values, np.arange(position, position + len(batch)))
        position += len(batch)
    texts, embeddings = pool(arch)
    out = {}
    for name in layers:
        r, thresholds = directions(tops[name])
        units = np.arange(r.shape[0], dtype=np.int64)
        out[name] = LayerKnowledge(name, units, r, tops[name].mean, thresholds, texts,
                                   decompose_layer(r, embeddings, TERMS, NORMALISATION))
    return out


def held_out_objects(count: int, seed: int = HELD_OUT_SEED):
    """One object of one colour per picture, shapes and colours in turn: (sample, shape, colour)."""
    from precompute.world import COLORS, SHAPES, object_image

    colors, shapes = list(COLORS), list(SHAPES)
    out = []
    for i in range(count):
        shape, color = shapes[i % len(shapes)], colors[(i // len(shapes) + i) % len(colors)]
        out.append(object_image(shape, color, 1, np.random.default_rng([seed, i])))
    return out
