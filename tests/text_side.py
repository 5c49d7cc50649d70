"""A store for the text side's tests: the shipped toy-vit registered, a tiny world dataset,
the world's vocabulary as a text pool, and a direction set for the last MLP layer whose
directions are the (centred) text embeddings of known words plus noise, so that their
decompositions and the prompt search have a known right answer.

The embeddings are computed here with the model's own text tower, independently of the code
under test (precompute.text_pools, precompute.omp)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from store.blobs import BlobStore
from store.directions import LayerDirections, save_layer_directions
from store.repository import get_layer
from store.session import make_engine, make_sessionmaker
from tests.workers.precompute_helpers import register_random, register_synthetic

MODEL = "toy-vit"
LAYER = "transformer.resblocks.5.mlp"
POOL = "world"
PLANTED = {3: "red", 10: "blue", 11: "circle", 40: "star", 41: "green", 42: "heart", 100: "yellow", 200: "square",
           201: "three", 300: "purple", 301: "triangle", 302: "pink", 400: "orange", 450: "cross", 500: "two",
           511: "brown"}
SILENT = 42  # a unit whose direction is zero (it never fired): no terms


def world_texts() -> list[str]:
    from precompute.world import WORDS

    return list(dict.fromkeys(WORDS))


def world_embeddings(loaded) -> torch.Tensor:
    with torch.inference_mode():
        return F.normalize(loaded.model.encode_text(loaded.tokenizer(world_texts())).float(), dim=-1)


def planted_directions(loaded, noise: float = 0.35, seed: int = 0) -> np.ndarray:
    texts, vectors = world_texts(), world_embeddings(loaded)
    centred = vectors - vectors.mean(0)
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for unit, word in PLANTED.items():
        atom = F.normalize(centred[texts.index(word)], dim=0)
        jitter = F.normalize(torch.randn(atom.shape, generator=generator), dim=0)
        rows.append(torch.zeros_like(atom) if unit == SILENT else F.normalize(atom + noise * jitter, dim=0))
    return torch.stack(rows).numpy()


def prepare_planted_store(url: str, folder: Path, loaded) -> None:
    """Register toy-vit and the dataset, store the planted direction set, add the world pool."""
    from store.text_pools import add_pool
    from precompute.words import WORLD_VOCABULARY_SOURCE

    register_random(url, MODEL, MODEL, loaded)
    register_synthetic(url, folder, "world", 2)
    directions = planted_directions(loaded)
    value = LayerDirections(units=np.array(list(PLANTED), dtype=np.int64), directions=directions,
                            mean_effects=np.zeros_like(directions), thresholds=np.ones(len(PLANTED), dtype=np.float32),
                            paths="second-order+direct", dataset_id="world", image_count=2)
    engine = make_engine(url)
    with make_sessionmaker(engine)() as session:
        save_layer_directions(session, BlobStore(str(folder / "blobs")), get_layer(session, MODEL, LAYER).id, value)
        add_pool(session, POOL, world_texts(), WORLD_VOCABULARY_SOURCE)
        session.commit()
    engine.dispose()
