"""A store for /discover's tests: the shipped toy-vit registered, a small world dataset, and the
directions, thresholds and world-pool decompositions of its last three MLP layers, computed with
precompute on world pictures (tests.discovery_world), written through the store's own writers."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from store.blobs import BlobStore
from store.directions import LayerDirections, save_layer_directions
from store.repository import get_layer, unit_ids, update_unit_statistics
from store.session import make_engine, make_sessionmaker
from tests.discovery_world import LAYERS, knowledge, model
from tests.workers.precompute_helpers import register_random, register_synthetic

MODEL = "toy-vit"
POOL = "world"


def prepare_discover_store(url: str, folder: Path, *, means: bool = True) -> None:
    from precompute.words import WORLD_VOCABULARY_SOURCE
    from store.text_pools import add_pool, replace_decompositions

    loaded = model(MODEL)
    register_random(url, MODEL, MODEL, loaded)
    register_synthetic(url, folder, "world", 6)
    known = knowledge(MODEL)
    engine = make_engine(url)
    with make_sessionmaker(engine)() as session:
        blobs = BlobStore(str(folder / "blobs"))
        texts = next(iter(known.values())).texts
        add_pool(session, POOL, list(texts), WORLD_VOCABULARY_SOURCE)
        for name in LAYERS[MODEL]:
            k = known[name]
            layer = get_layer(session, MODEL, name)
            save_layer_directions(session, blobs, layer.id, LayerDirections(
                k.units, k.directions, k.mean_effects, k.thresholds, "second-order+direct", "world", 320))
            ids = unit_ids(session, layer.id)
            rows = []
            for i, unit in enumerate(k.units):
                nonzero = np.nonzero(k.coefficients[i])[0]
                ranked = sorted(nonzero, key=lambda j: (-abs(float(k.coefficients[i, j])), j))
                rows += [{"unit_id": ids[int(unit)], "rank": rank, "text": texts[j], "coefficient": float(k.coefficients[i, j]),
                          "score": None} for rank, j in enumerate(ranked)]
            replace_decompositions(session, POOL, list(ids.values()), rows)
            if means:
                update_unit_statistics(session, [{"id": ids[u], "mean": 0.01 * (u % 7)} for u in ids])
        session.commit()
    engine.dispose()
