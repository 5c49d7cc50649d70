"""The decompose job end to end on the shipped toy-vit: directions built from the text
embeddings of known words (plus noise) must decompose back into those words."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from precompute.errors import MicroscopeError
from precompute.registry import load_embedded
from precompute.text_pools import pool_texts
from store.models import Decomposition, Layer, TextEmbedding, Unit
from store.session import make_engine, make_sessionmaker
from store.text_pools import add_pool
from tests.text_side import LAYER, PLANTED, SILENT, prepare_planted_store
from tests.workers.precompute_helpers import single_thread, snapshot, store_config
from workers.decompose_job import DecomposeRequest, run_decompose


@pytest.fixture(autouse=True)
def _one_thread():
    yield from single_thread()


@pytest.fixture(scope="module")
def toy_vit():
    return load_embedded("toy-vit")


def _prepare(url, folder, loaded):
    prepare_planted_store(url, folder, loaded)
    return PLANTED


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
    silent = SILENT
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


def test_the_demo_step_decomposes_the_layers_with_directions_and_says_which_have_none(migrated_url, tmp_path, toy_vit):
    from workers.decompose_job import decompose_layers

    _prepare(migrated_url, tmp_path, toy_vit)
    lines = list(decompose_layers(store_config(migrated_url, tmp_path),
                                  {"toy-vit": [LAYER, "transformer.resblocks.4.mlp"]}, terms=4,
                                  loaded={"toy-vit": toy_vit}, show_progress=False))
    assert lines[0].startswith("text pool world:") and lines[0].endswith("(already there)")
    assert lines[1].startswith(f"toy-vit {LAYER}: decompositions over world, 4 terms") and "done" in lines[1]
    assert "no decompositions" in lines[2] and "has no neuron directions" in lines[2]
    found, _ = _decompositions(migrated_url)
    assert len(found) == len(PLANTED) - 1 and all(len(terms) == 4 for terms in found.values())
