"""Word lists, rasters, top words and image-based word embeddings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from precompute.errors import MicroscopeError
from precompute.words import (
    WordEmbeddings,
    common_words,
    embeddings,
    read_word_file,
    render_word,
    top_words,
    word_list_id,
)


def test_common_words_are_alphabetic_distinct_and_ranked():
    words = common_words(10_000)
    assert len(words) == 10_000 == len(set(words))
    assert words[:3] == ["the", "to", "and"]
    assert all(w.isalpha() for w in words)
    assert common_words(50) == words[:50]


def test_word_file(tmp_path):
    path = tmp_path / "words.txt"
    path.write_text("# colours\nred\n\nblue\nred\n  green  \n", encoding="utf-8")
    assert read_word_file(path) == ["red", "blue", "green"]
    with pytest.raises(MicroscopeError):
        read_word_file(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(MicroscopeError):
        read_word_file(tmp_path / "empty.txt")


def test_rasters_are_black_on_white_and_deterministic():
    image = render_word("microscope", 64)
    pixels = np.asarray(image)
    assert image.size == (64, 64) and pixels.max() == 255 and pixels.min() < 50
    assert (pixels[0] == 255).all()  # white border: the word fits
    assert np.array_equal(pixels, np.asarray(render_word("microscope", 64)))
    assert word_list_id("wordfreq:en:10000", None, None, 288) == "wordfreq-en-10000.dejavusans-bold.auto.288px"


def test_top_words_break_ties_by_word_order():
    activations = torch.tensor([[1.0, 0.0], [3.0, 0.0], [3.0, 0.0], [-1.0, 0.0]])
    index, values = top_words(activations, 3)
    assert index[0].tolist() == [1, 2, 0] and values[0].tolist() == [3.0, 3.0, 1.0]
    assert index[1].tolist() == [0, 1, 2]


def test_embeddings_nearest_neighbours_and_arithmetic():
    rng = np.random.default_rng(0)
    words = ["king", "man", "woman", "queen", "apple"]
    base = rng.standard_normal((5, 16)).astype(np.float32)
    base[3] = base[0] - base[1] + base[2] + 0.01 * rng.standard_normal(16)
    activations = base + 5.0  # the shared "text on white" component
    vectors, mean = embeddings(activations)
    np.testing.assert_allclose(vectors.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(vectors + mean, activations, atol=1e-5)
    emb = WordEmbeddings(words, vectors)
    assert emb.nearest("apple", 1)[0] == ("apple", pytest.approx(1.0))
    assert emb.arithmetic(["king", "woman"], ["man"], 1)[0][0] == "queen"
    assert "king" not in [w for w, _ in emb.arithmetic(["king", "woman"], ["man"])]
    with pytest.raises(MicroscopeError):
        emb.vector("pear")
