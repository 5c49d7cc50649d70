"""Rastered words end to end: top words per unit and image-based word embeddings."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sqlalchemy import select

from store.blobs import BlobStore
from store.models import Layer, Unit, WordActivation, WordList
from store.session import make_engine, make_sessionmaker
from precompute.errors import MicroscopeError
from precompute.examples import ranking_values
from precompute.words import common_words, render_word
from tests.workers.precompute_helpers import assert_same_store, register_random, single_thread, snapshot, store_config
from workers.words_job import WordsRequest, load_word_embeddings, run_words


@pytest.fixture(autouse=True)
def _one_thread():
    yield from single_thread()


def words_request(words, source, **options) -> WordsRequest:
    return WordsRequest(model_id="toy-vit", layers=options.pop("layers", ("transformer.resblocks.5.mlp", "transformer.resblocks.5")),
                        words=tuple(words), source=source, top=options.pop("top", 5), batch_size=16, **options)


@pytest.mark.slow
def test_words_top_units_and_embeddings(migrated_url, tmp_path):
    loaded = register_random(migrated_url, "toy-vit", "toy-vit")
    store = store_config(migrated_url, tmp_path)
    words = common_words(60)
    summary = run_words(store, words_request(words, "wordfreq:en:60"), show_progress=False, loaded=loaded)
    list_id = summary["word_list"]
    assert summary["status"] == "done" and list_id == "wordfreq-en-60.dejavusans-bold.auto.64px"

    layer = "transformer.resblocks.5.mlp"
    images = torch.stack([loaded.preprocess(render_word(w, 64)) for w in words])
    expected = ranking_values(loaded, images, [layer])[layer][0].numpy()  # (words, units)
    engine = make_engine(migrated_url)
    with make_sessionmaker(engine)() as session:
        stored = session.get(WordList, list_id)
        assert stored.words == words and stored.font == "DejaVuSans-Bold.ttf" and stored.image_size == 64
        rows = session.execute(
            select(Unit.index, WordActivation.rank, WordActivation.word, WordActivation.activation)
            .join(Unit, Unit.id == WordActivation.unit_id).join(Layer, Layer.id == Unit.layer_id)
            .where(Layer.name == layer).order_by(Unit.index, WordActivation.rank)
        ).all()
        assert len(rows) == 512 * 5
        for index, rank, word, activation in rows:
            column = expected[:, index]
            assert activation == pytest.approx(float(column[words.index(word)]), rel=1e-3, abs=1e-5)
            if rank == 0:
                assert activation == pytest.approx(float(column.max()), rel=1e-3, abs=1e-5)
        embedding = load_word_embeddings(session, BlobStore(store.blob_url), "toy-vit", layer, list_id)
    engine.dispose()
    assert embedding.vectors.shape == (60, 512)
    np.testing.assert_allclose(embedding.vectors.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(embedding.vectors, expected - expected.mean(0), rtol=1e-3, atol=1e-4)
    assert embedding.nearest("time", 1)[0][0] == "time"
    assert {w for w, _ in embedding.arithmetic(["the", "and"], ["to"], 5)}.isdisjoint({"the", "and", "to"})

    # Done is done; a custom list is another word list, stored beside the first.
    before = snapshot(migrated_url)
    assert run_words(store, words_request(words, "wordfreq:en:60"), show_progress=False, loaded=loaded)["status"] == "already done"
    assert_same_store(before, snapshot(migrated_url))
    custom = tmp_path / "colours.txt"
    custom.write_text("red\ngreen\nblue\nyellow\n")
    other = run_words(store, words_request(["red", "green", "blue", "yellow"], str(custom), layers=(layer,), font_size=20),
                      show_progress=False, loaded=loaded)
    assert other["word_list"].endswith(".20.64px")
    after = snapshot(migrated_url)
    assert len(after["word_activations"]) == len(before["word_activations"]) + 512 * 4
    with pytest.raises(MicroscopeError, match="other words"):
        run_words(store, words_request(["red"], str(custom), layers=(layer,), font_size=20), show_progress=False, loaded=loaded)
