"""The decompose job end to end on the shipped toy-vit: directions built from the text
embeddings of known words (plus noise) must decompose back into those words."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sqlalchemy import select

from precompute.errors import MicroscopeError
from precompute.registry import load_embedded
from precompute.text_pools import pool_texts
from store.blobs import BlobStore
from store.directions import LayerDirections, save_layer_directions
from store.models import Decomposition, Layer, TextEmbedding, Unit
from store.repository import get_layer
from store.session import make_engine, make_sessionmaker
from store.text_pools import add_pool
from tests.workers.precompute_helpers import register_random, register_synthetic, single_thread, snapshot, store_config
from workers.decompose_job import DecomposeRequest, run_decompose

LAYER = "transformer.resblocks.5.mlp"
PLANTED = ["red", "blue", "circle", "star", "green", "heart", "yellow", "square", "three", "purple",
           "triangle", "pink", "orange", "cross", "two", "brown"]


@pytest.fixture(autouse=True)
def _one_thread():
    yield from single_thread()


@pytest.fixture(scope="module")
def toy_vit():
    return load_embedded("toy-vit")


def _world_embeddings(loaded) -> tuple[list[str], torch.Tensor]:
    """The world's words through the text tower, computed here independently of the job."""
    texts = list(pool_texts("world").texts)
    with torch.inference_mode():
        vectors = F.normalize(loaded.model.encode_text(loaded.tokenizer(texts)).float(), dim=-1)
    return texts, vectors


def _prepare(url, folder, loaded, units=(3, 10, 11, 40, 41, 42, 100, 200, 201, 300, 301, 302, 400, 450, 500, 511)):
    register_random(url, "toy-vit", "toy-vit", loaded)
    register_synthetic(url, folder, "world", 2)
    texts, vectors = _world_embeddings(loaded)
    centred = vectors - vectors.mean(0)
    generator = torch.Generator().manual_seed(0)
    rows = []
    for word in PLANTED:
        atom = F.normalize(centred[texts.index(word)], dim=0)
        rows.append(F.normalize(atom + 0.35 * F.normalize(torch.randn(atom.shape, generator=generator), dim=0), dim=0))
    directions = torch.stack(rows).numpy()
    directions[5] = 0  # a unit that never fired: no terms
    value = LayerDirections(units=np.array(units, dtype=np.int64), directions=directions,
                            mean_effects=np.zeros_like(directions), thresholds=np.ones(len(units), dtype=np.float32),
                            paths="second-order+direct", dataset_id="world", image_count=2)
    engine = make_engine(url)
    with make_sessionmaker(engine)() as session:
        save_layer_directions(session, BlobStore(str(folder / "blobs")), get_layer(session, "toy-vit", LAYER).id, value)
        world = pool_texts("world")
        add_pool(session, "world", world.texts, world.source)
        session.commit()
    engine.dispose()
    return dict(zip(units, PLANTED))


def _decompositions(url):
    engine = make_engine(url)
    with make_sessionmaker(engine)() as session:
        rows = session.execute(
            select(Unit.index, Decomposition.rank, Decomposition.text, Decomposition.coefficient, Decomposition.score)
            .join(Unit, Unit.id == Decomposition.unit_id).join(Layer, Layer.id == Unit.layer_id)
            .where(Layer.name == LAYER, Decomposition.pool_id == "world").order_by(Unit.index, Decomposition.rank)
        ).all()
        cached = session.execute(select(TextEmbedding)).scalars().all()
    engine.dispose()
    out: dict[int, list] = {}
    for index, rank, text, coefficient, score in rows:
        out.setdefault(index, []).append((rank, text, coefficient, score))
    return out, cached


def request(**options) -> DecomposeRequest:
    return DecomposeRequest(model_id="toy-vit", layer=options.pop("layer", LAYER), pool_id=options.pop("pool_id", "world"),
                            terms=options.pop("terms", 8), units_per_batch=options.pop("units_per_batch", 5), **options)


def test_planted_words_come_back_first(migrated_url, tmp_path, toy_vit):
    planted = _prepare(migrated_url, tmp_path, toy_vit)
    store = store_config(migrated_url, tmp_path)
    summary = run_decompose(store, request(), show_progress=False, loaded=toy_vit)
    assert summary["status"] == "done" and summary["units"] == 16 and summary["units_decomposed"] == 16
    found, cached = _decompositions(migrated_url)
    assert len(cached) == 1 and cached[0].dimension == toy_vit.model.text_projection.shape[1]
    silent = list(planted)[5]
    assert silent not in found  # a zero direction has no terms
    hits = 0
    for unit, word in planted.items():
        if unit == silent:
            continue
        terms = found[unit]
        assert [rank for rank, *_ in terms] == list(range(8))
        coefficients = [abs(c) for _, _, c, _ in terms]
        assert coefficients == sorted(coefficients, reverse=True)
        score = terms[0][3]
        assert all(s == score for *_, s in terms) and 0.5 < score <= 1.0
        hits += terms[0][1] == word
    assert hits >= 14, hits

    # Done is done; other terms re-plan the layer and replace its rows.
    before = snapshot(migrated_url)
    assert run_decompose(store, request(), show_progress=False, loaded=toy_vit)["status"] == "already done"
    assert snapshot(migrated_url) == before
    run_decompose(store, request(terms=3), show_progress=False, loaded=toy_vit)
    fewer, cached_again = _decompositions(migrated_url)
    assert {unit: len(terms) for unit, terms in fewer.items()} == {unit: 3 for unit in found}
    assert [c.blob_uri for c in cached_again] == [c.blob_uri for c in cached]  # embeddings computed once
    for unit in fewer:  # fewer terms fit worse
        assert fewer[unit][0][3] < found[unit][0][3] + 1e-6


def test_bad_requests_are_refused_before_any_work(migrated_url, tmp_path, toy_vit):
    _prepare(migrated_url, tmp_path, toy_vit)
    store = store_config(migrated_url, tmp_path)
    with pytest.raises(MicroscopeError, match="no text pool 'nope'; known pools: world"):
        run_decompose(store, request(pool_id="nope"), show_progress=False, loaded=toy_vit)
    with pytest.raises(MicroscopeError, match="--terms must be between 1 and 128"):
        run_decompose(store, request(terms=0), show_progress=False, loaded=toy_vit)
    small = tmp_path / "few.txt"
    small.write_text("red\nblue\ngreen\n")
    engine = make_engine(migrated_url)
    with make_sessionmaker(engine)() as session:
        few = pool_texts("file", path=small)
        add_pool(session, "few", few.texts, few.source)
        session.commit()
    engine.dispose()
    with pytest.raises(MicroscopeError, match="more than pool 'few' holds \\(3 texts\\)"):
        run_decompose(store, request(pool_id="few", terms=4), show_progress=False, loaded=toy_vit)
    with pytest.raises(MicroscopeError, match="has no neuron directions"):
        run_decompose(store, request(layer="transformer.resblocks.4.mlp"), show_progress=False, loaded=toy_vit)
    assert _decompositions(migrated_url)[0] == {}
