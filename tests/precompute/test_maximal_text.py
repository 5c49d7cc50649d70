"""Maximal text on the shipped toy-vit, for the colour units of figures.json (their directions
computed from world pictures by tests.discovery_world): the batched climb against the
one-neuron climb, every score against the model's own `encode_text`, and the found texts
against every word of the world's vocabulary."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from precompute.discovery import maximal_text, maximal_texts
from tests.discovery_world import knowledge, model

MODEL = "toy-vit"
LAYER = "transformer.resblocks.5.mlp"
FIGURES = Path(__file__).resolve().parents[2] / "precompute" / "toy" / "checkpoints" / "figures.json"


def _colour_units() -> dict[str, int]:
    return {colour: entry["unit"] for colour, entry in json.loads(FIGURES.read_text())[MODEL]["multimodal_units"].items()}


@pytest.fixture(scope="module")
def colour_results():
    loaded = model(MODEL)
    colours = _colour_units()
    directions = knowledge(MODEL)[LAYER].directions[list(colours.values())]
    return loaded, colours, directions, maximal_texts(loaded, directions)


def _encode(loaded, texts: list[str]) -> torch.Tensor:
    with torch.inference_mode():
        return F.normalize(loaded.model.encode_text(loaded.tokenizer(texts)).float(), dim=-1)


def test_scores_are_the_text_embeddings_against_the_directions(colour_results):
    loaded, _, directions, results = colour_results
    again = (_encode(loaded, [r.text for r in results]) * torch.from_numpy(directions)).sum(1)
    assert again.numpy() == pytest.approx([r.score for r in results], abs=1e-4)
    starts = (_encode(loaded, [r.start_text for r in results]) * torch.from_numpy(directions)).sum(1)
    assert starts.numpy() == pytest.approx([r.start_score for r in results], abs=1e-4)
    assert all(len(r.tokens) == 3 and 1 <= r.steps <= 20 for r in results)


def test_the_found_text_beats_every_word_of_the_vocabulary(colour_results):
    loaded, _, directions, results = colour_results
    vocabulary = list(loaded.tokenizer.vocabulary)
    words = _encode(loaded, vocabulary) @ torch.from_numpy(directions).T  # [words, units]
    best = words.max(0)
    for i, result in enumerate(results):
        assert result.score >= float(best.values[i]) - 1e-5
        assert result.start_text == vocabulary[int(best.indices[i])]
        assert result.score > result.start_score + 0.05  # the climb adds words that matter


def test_most_colour_units_name_their_colour(colour_results):
    _, colours, _, results = colour_results
    named = [colour for colour, result in zip(colours, results) if colour in result.text.split()]
    # measured: 6 of the 8 (all but red and blue, whose texts are "story umbrella egg" and "famous cry little")
    assert len(named) >= 5, [r.text for r in results]


def test_one_neuron_at_a_time_finds_the_same_texts(colour_results):
    loaded, _, directions, results = colour_results
    for i in (3, 6):
        alone = maximal_text(loaded, directions[i])
        assert (alone.tokens, alone.steps) == (results[i].tokens, results[i].steps)
        assert alone.score == pytest.approx(results[i].score, abs=1e-5)


def test_the_causal_prefix_encodes_as_the_whole_context():
    from precompute.discovery import _encode as encode_prefix
    from precompute.discovery import _sequence_ids

    loaded = model(MODEL)
    sequences = torch.randint(3, 3 + len(loaded.tokenizer.vocabulary), (64, 3), generator=torch.Generator().manual_seed(0))
    short = _sequence_ids(loaded, sequences)
    assert short.shape == (64, 5)
    full = torch.zeros(64, loaded.model.positional_embedding.shape[0], dtype=torch.long)
    full[:, :5] = short
    with torch.inference_mode():
        whole = F.normalize(loaded.model.encode_text(full).float(), dim=-1)
        assert torch.allclose(encode_prefix(loaded, short), whole, atol=1e-5)


def test_a_single_word_that_beats_every_longer_text_is_the_answer():
    loaded = model(MODEL)
    vocabulary = list(loaded.tokenizer.vocabulary)
    e = _encode(loaded, vocabulary)
    direction = e[vocabulary.index("cross")]  # the word's own embedding: no other text reaches cosine 1
    (result,) = maximal_texts(loaded, direction[None].numpy(), length=2, steps=3)
    assert result.text == "cross" and result.tokens == (vocabulary.index("cross") + 3,)
    assert result.score == pytest.approx(1.0, abs=1e-5) and result.score == result.start_score


def test_no_directions_no_texts():
    assert maximal_texts(model(MODEL), np.zeros((0, 128), dtype=np.float32)) == []
