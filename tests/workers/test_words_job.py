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
from tests.workers.reference_activations import reference_values
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
    expected = reference_values(loaded.model, "toy-vit", layer, images)  # (words, units)
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


@pytest.mark.slow
def test_world_vocabulary_ranks_as_the_toy_eval_and_keeps_beside_another_list(migrated_url, tmp_path):
    from precompute.toy.evaluate import final_layer_maxima
    from precompute.world import WORDS, render_text
    from precompute.words import WORLD_VOCABULARY_SOURCE, world_vocabulary

    loaded = register_random(migrated_url, "toy-rn", "toy-rn")
    store = store_config(migrated_url, tmp_path)
    words = world_vocabulary()
    assert words == list(dict.fromkeys(WORDS))

    def request(chosen, source):
        return WordsRequest(model_id="toy-rn", layers=("layer4",), words=tuple(chosen), source=source, top=5, batch_size=64)

    summary = run_words(store, request(words, WORLD_VOCABULARY_SOURCE), show_progress=False, loaded=loaded)
    world_list = summary["word_list"]
    assert summary["status"] == "done" and world_list == "synthetic-world-vocabulary.dejavusans-bold.auto.64px"
    # What `microscope toy eval` ranks: the eval's own rendering and reading of the words.
    expected = final_layer_maxima(loaded, [render_text(word) for word in words]).numpy()  # (words, units)
    engine = make_engine(migrated_url)
    with make_sessionmaker(engine)() as session:
        stored = session.get(WordList, world_list)
        assert stored.words == words and stored.image_size == 64 and stored.font_size is None
        rows = session.execute(
            select(Unit.index, WordActivation.word, WordActivation.activation)
            .join(Unit, Unit.id == WordActivation.unit_id)
            .where(WordActivation.word_list_id == world_list).order_by(Unit.index, WordActivation.rank)
        ).all()
    engine.dispose()
    assert len(rows) == 768 * 5
    for index, word, activation in rows:
        assert activation == pytest.approx(float(expected[words.index(word), index]), rel=1e-3, abs=1e-5)
    tops = {}
    for index, word, _ in rows:
        tops.setdefault(index, []).append(word)
    order = np.argsort(-expected, axis=0, kind="stable")[:5].T
    agree = sum(tops[u] == [words[i] for i in order[u]] for u in range(768))
    assert agree >= 765, agree  # float noise between batch sizes may swap a near-tie, nothing more

    # A second list on the same layer is stored beside the first; asking for the first again
    # finds it done instead of recomputing it (as the demo does on every run).
    english = run_words(store, request(common_words(40), "wordfreq:en:40"), show_progress=False, loaded=loaded)
    assert english["status"] == "done" and english["word_list"] != world_list
    before = snapshot(migrated_url)
    lists = {row[1] for row in before["word_activations"]}
    assert {world_list, english["word_list"]} <= lists
    for chosen, source in ((words, WORLD_VOCABULARY_SOURCE), (common_words(40), "wordfreq:en:40")):
        assert run_words(store, request(chosen, source), show_progress=False, loaded=loaded)["status"] == "already done"
    assert_same_store(before, snapshot(migrated_url))
